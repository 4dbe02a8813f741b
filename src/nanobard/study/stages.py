"""The study's analysis stages, each a function from the run folder and the state so far to a record
(pipeline.py runs them in order): attention maps, what each head does, and the figures."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from nanobard.rundir import RunDir

if TYPE_CHECKING:
    from nanobard.data.tokens import TokenCorpus
    from nanobard.study.records import AttentionStudy, Headline, InterpretStudy, StudyState

logger = logging.getLogger(__name__)

VAL_CHARS_FOR_ANALYSIS = 200_000  # validation characters the analyses may read (they use far fewer)


def attention_stage(run: RunDir, state: StudyState) -> AttentionStudy:
    """Both models' attention on the study's attention text: statistics, findings, causality."""
    from nanobard.hf.pretrained import load_pretrained
    from nanobard.interp import attention as A
    from nanobard.model.checkpoint import load_model
    from nanobard.study.records import AttentionStudy

    text = state.corpus.attention_text
    model, tok, _ = load_model(run / RunDir.BEST)
    if tok.unknown(text):  # e.g. a user's prompt override: fall back to the corpus's own text
        from nanobard.data.prompts import attention_text

        text = attention_text(text, tok.chars)
    maps_s = A.scratch_attention(model, tok, text)
    pre = load_pretrained(str(run / RunDir.FINETUNED), attn="eager")
    maps_h = A.hf_attention(pre.model, pre.tokenizer, text)
    torch.save(
        {"scratch": maps_s.weights, "pretrained": maps_h.weights}, run / RunDir.ATTENTION_WEIGHTS
    )
    study = AttentionStudy(
        text=text,
        scratch=A.analyse_attention(model, maps_s, "scratch", "from scratch"),
        pretrained=A.analyse_attention(
            pre.model, maps_h, "hf", f"{state.finetune.model_name} fine-tuned"
        ),
    )
    study.save(run / RunDir.ATTENTION_ANALYSIS)
    return study


def interpret_stage(
    run: RunDir, state: StudyState, corpus: TokenCorpus, base_model: str
) -> InterpretStudy:
    """Induction heads, head ablation, the logit lens and loss by position for the from-scratch
    model and for the pretrained model after and before fine-tuning, on the same validation text
    (the characters the from-scratch vocabulary has, so both read the same slice)."""
    from nanobard.hf.pretrained import load_pretrained
    from nanobard.interp.analysis import analyse
    from nanobard.interp.lens import make_lens
    from nanobard.model.checkpoint import load_model
    from nanobard.study.records import InterpretStudy

    val = corpus.val_text(VAL_CHARS_FOR_ANALYSIS)
    model, tok, _ = load_model(run / RunDir.BEST)
    scratch = analyse(make_lens(model, tok, "from scratch"), val, vocab_chars=tok.chars)
    name = state.finetune.model_name
    after = load_pretrained(str(run / RunDir.FINETUNED))
    pretrained = analyse(
        make_lens(after.model, after.tokenizer, f"{name} fine-tuned"), val, vocab_chars=tok.chars
    )
    del after
    before = load_pretrained(name)
    pretrained_before = analyse(
        make_lens(before.model, before.tokenizer, f"{name} before fine-tuning"),
        val,
        vocab_chars=tok.chars,
    )
    study = InterpretStudy(
        scratch=scratch, pretrained=pretrained, pretrained_before=pretrained_before
    )
    study.save(run / RunDir.INTERPRET)
    return study


def figures_stage(run: RunDir, state: StudyState, head: Headline) -> list[str]:
    """Every figure of the study as a PNG in the run folder; returns their file names."""
    from nanobard.study import plots, plots_interpret

    s, f, a = state.scratch, state.finetune, state.attention
    made = [
        plots.training_progress(
            s.history,
            f"From-scratch GPT ({s.num_params:,} parameters)",
            run / RunDir.FIG_TRAINING_SCRATCH,
        ),
        plots.training_progress(
            f.history,
            f"Fine-tuning {f.model_name} ({f.num_params:,} parameters)",
            run / RunDir.FIG_TRAINING_HF,
        ),
        plots.model_comparison(head, run / RunDir.FIG_COMPARISON),
    ]
    w = torch.load(run / RunDir.ATTENTION_WEIGHTS, weights_only=True)
    for key, fig, analysis in (
        ("scratch", RunDir.FIG_ATTENTION_SCRATCH, a.scratch),
        ("pretrained", RunDir.FIG_ATTENTION_HF, a.pretrained),
    ):
        layer = analysis.strongest_previous_token_layer
        heads = w[key].shape[1]
        shown = f"all {heads} heads" if heads <= 8 else f"8 of {heads} heads"
        made.append(
            plots.attention_heads(
                w[key],
                analysis.tokens,
                layer,
                f"{analysis.model}: {shown} of layer {layer} (the layer of its strongest "
                "previous-token head)",
                run / fig,
            )
        )
    made += plots_interpret.interpretability_figures(state.interpret, s.history, run.path)
    return [p.name for p in made]
