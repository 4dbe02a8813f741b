"""``nanobard run``: the whole study as one ordered table of stages, into one folder.

    corpus -> scratch -> finetune -> evaluate -> attention -> interpret -> samples -> figures
    -> report

Each stage is a function of the study's ``Context`` that returns a record (records.py); ``STAGES``
lists them in order, and ``run_study`` runs that table: a finished stage's record lands in
``StudyState`` (the field of the same name) and in ``stages.json``, so running again with the same
``--out`` skips the stages already done and resumes an interrupted training stage from its
checkpoint; ``force=True`` redoes everything. The ``quick`` study gives its two training stages a
wall-time budget each, so it takes about the same time on any machine and the report says what
each budget bought.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, overload

from nanobard import config as C
from nanobard.config import (
    SHAKESPEARE_PROMPTS,
    FinetuneConfig,
    ModelConfig,
    StudyPreset,
    TrainConfig,
)
from nanobard.data.corpus import CorpusChanged, check_fits, check_same_corpus
from nanobard.data.prompts import (
    SHAKESPEARE_ATTENTION_TEXT,
    attention_text,
    corpus_prompts,
    is_shakespeare,
)
from nanobard.data.tokens import TokenCorpus, load_tokens
from nanobard.errors import NanobardError
from nanobard.files import WriteFailed, write_text
from nanobard.hardware import OutOfMemory
from nanobard.hf.finetune import FinetuneResult, Sample, finetune, make_samples
from nanobard.hf.pretrained import load_pretrained, scratch_generator
from nanobard.interp import attention as A
from nanobard.interp.analysis import analyse
from nanobard.interp.circuits import record_head_scores
from nanobard.interp.lens import Lens, make_lens
from nanobard.interp.patching import (
    PatchingError,
    PatchingResult,
    activation_patching,
    induction_pair,
)
from nanobard.model.checkpoint import atomic_save, load_model
from nanobard.model.evaluate import score_scratch
from nanobard.records import TornRecord
from nanobard.rundir import RunDir, command_line
from nanobard.study import figures
from nanobard.study.records import (
    AttentionStudy,
    CorpusInfo,
    Headline,
    InterpretStudy,
    Scores,
    ScratchConfig,
    StudyConfig,
    StudyState,
    headline,
)
from nanobard.study.report import machine_info, samples_markdown, write_report
from nanobard.train.loop import TrainingInterrupted, TrainResult, train
from nanobard.train.tracking import Tracker, check_tracker, flat_config, tracking

logger = logging.getLogger(__name__)

ANALYSIS_CHARS = 200_000  # validation characters the analyses may read (they use far fewer)


@dataclass
class Context:
    """What every stage reads: the run folder, the resolved configs, the corpus, the state so
    far."""

    run: RunDir
    preset: StudyPreset
    model_cfg: ModelConfig
    train_cfg: TrainConfig
    ft_cfg: FinetuneConfig
    corpus_name: str
    data_path: str | None
    user_prompts: tuple[str, ...] | None
    force: bool
    progress: bool
    report_to: str = "none"  # the experiment tracker of the two training stages
    state: StudyState = field(default_factory=StudyState)
    _tokens: TokenCorpus | None = None

    def corpus(self) -> TokenCorpus:
        """The corpus as token ids, from the token cache (encoded on the first run)."""
        if self._tokens is None:
            self._tokens = load_tokens(self.corpus_name, self.data_path)
        return self._tokens

    def score_text(self) -> str:
        """The validation characters every model is scored on."""
        return self.corpus().val_text(self.ft_cfg.score_chars or None)

    def tracker(self, track: str, resume: bool, *configs: Any) -> AbstractContextManager[Tracker]:
        """The ``--report-to`` tracker of a training stage, grouped under the study's name."""
        return tracking(self.report_to, self.run.path, track, group=self.run.path.name,
                        config=flat_config(*configs), resume=resume)  # fmt: skip

    @overload
    def done(self, stage: Literal["corpus"]) -> CorpusInfo: ...
    @overload
    def done(self, stage: Literal["scratch"]) -> TrainResult: ...
    @overload
    def done(self, stage: Literal["finetune"]) -> FinetuneResult: ...
    @overload
    def done(self, stage: Literal["evaluate"]) -> Scores: ...
    @overload
    def done(self, stage: Literal["attention"]) -> AttentionStudy: ...
    @overload
    def done(self, stage: Literal["interpret"]) -> InterpretStudy: ...
    @overload
    def done(self, stage: Literal["samples"]) -> list[Sample]: ...
    @overload
    def done(self, stage: Literal["figures"]) -> list[str]: ...
    @overload
    def done(self, stage: Literal["report"]) -> str: ...
    @overload
    def done(self, stage: str) -> object: ...
    def done(self, stage: str) -> object:
        """The record of a stage that has run (the table's order guarantees it has): the value of
        the StudyState field of that name."""
        record = getattr(self.state, stage)
        assert record is not None, f"stage {stage!r} has not run"
        return record


# --------------------------------------------------------------------------------------------
# the stages, in the order they run


def corpus_stage(ctx: Context) -> CorpusInfo:
    """Read and encode the corpus; choose the sample prompts and the text the attention maps read;
    write the study's config.json."""
    c = ctx.corpus()
    check_fits(c, ctx.model_cfg.block_size)
    val = c.val_text(ANALYSIS_CHARS)
    if ctx.user_prompts:
        prompts = list(ctx.user_prompts)
    elif is_shakespeare(c.name):
        prompts = list(SHAKESPEARE_PROMPTS)
    else:  # openings of validation lines, in the corpus's own characters: any language works
        prompts = corpus_prompts(val, c.tokenizer.chars, n=3)
    if is_shakespeare(c.name):
        text = SHAKESPEARE_ATTENTION_TEXT
    else:
        text = attention_text(val, c.tokenizer.chars)
    scratch = ScratchConfig(ctx.model_cfg, ctx.train_cfg)
    finetune = C.resolve(ctx.ft_cfg, {"prompts": tuple(prompts)})  # what finetune_stage runs with
    corpus = ctx.data_path or ctx.corpus_name
    ctx.run.write_config(
        StudyConfig(ctx.preset.name, corpus, scratch, finetune, prompts, text, command_line())
    )
    n = len(ctx.score_text())
    return CorpusInfo(c.name, len(c.train), len(c.val), n, c.tokenizer.vocab_size, prompts, text,
                      c.sha256)  # fmt: skip


def scratch_stage(ctx: Context) -> TrainResult:
    """Train the from-scratch GPT, recording every head's scores at each evaluation."""
    resume = not ctx.force and (ctx.run / RunDir.LAST).exists()
    try:
        with ctx.tracker("scratch", resume, ctx.model_cfg, ctx.train_cfg) as tracker:
            # the tracker last: it logs the rows with their head scores
            return train(ctx.model_cfg, ctx.train_cfg, ctx.corpus(), ctx.run.path, resume=resume,
                         progress=ctx.progress, config_name=RunDir.CONFIG_SCRATCH,
                         on_eval=[record_head_scores, tracker.on_eval])  # fmt: skip
    except TrainingInterrupted as e:  # the study resumes by itself: no --resume to pass
        raise e.resumed_by(AGAIN) from None


def finetune_stage(ctx: Context) -> FinetuneResult:
    """Fine-tune the pretrained model, scoring it before and after on the same text."""
    resume = not ctx.force and (ctx.run / RunDir.BEFORE).exists()
    cfg = C.resolve(ctx.ft_cfg, {"prompts": tuple(ctx.done("corpus").prompts)})
    # keep_checkpoints=False: the Trainer's resumable state is 1.6 GB for a 135M model
    with ctx.tracker("finetune", resume, cfg) as tracker:
        return finetune(cfg, ctx.corpus(), ctx.run.path, resume=resume, progress=ctx.progress,
                        keep_checkpoints=False, tracker=tracker)  # fmt: skip


def evaluate_stage(ctx: Context) -> Scores:
    """The from-scratch model on the validation text the pretrained model was scored on."""
    model, tok, _ = load_model(ctx.run / RunDir.BEST)
    text = ctx.score_text()
    score = score_scratch(model, tok, text, "from scratch", progress=ctx.progress)
    ft: FinetuneResult = ctx.done("finetune")
    return Scores(score, ft.before, ft.after, len(text))


def attention_stage(ctx: Context) -> AttentionStudy:
    """Both models' attention on the study's attention text: statistics, findings, causality."""
    text = ctx.done("corpus").attention_text
    model, tok, _ = load_model(ctx.run / RunDir.BEST)
    if tok.unknown(text):  # e.g. a user's prompt override: fall back to the corpus's own text
        text = attention_text(text, tok.chars)
    scratch = make_lens(model, tok, "from scratch")
    pre = load_pretrained(str(ctx.run / RunDir.FINETUNED), attn="eager")
    pretrained = make_lens(
        pre.model, pre.tokenizer, f"{ctx.done('finetune').model_name} fine-tuned"
    )
    maps_s = A.attention_maps(scratch, text)
    maps_h = A.attention_maps(pretrained, text, max_tokens=A.HF_MAP_TOKENS)
    weights = {"scratch": maps_s.weights, "pretrained": maps_h.weights}
    atomic_save(weights, ctx.run / RunDir.ATTENTION_WEIGHTS)
    scratch_attention = A.analyse_attention(scratch, maps_s)
    study = AttentionStudy(text, scratch_attention, A.analyse_attention(pretrained, maps_h))
    study.save(ctx.run / RunDir.ATTENTION_ANALYSIS)
    return study


def interpret_stage(ctx: Context) -> InterpretStudy:
    """Induction heads, head ablation, the logit lens and loss by position for the from-scratch
    model and for the pretrained model after and before fine-tuning, on the same validation text
    (the characters the from-scratch vocabulary has, so both read the same slice)."""
    val = ctx.corpus().val_text(ANALYSIS_CHARS)
    model, tok, _ = load_model(ctx.run / RunDir.BEST)
    lens = make_lens(model, tok, "from scratch")
    scratch = analyse(lens, val, vocab_chars=tok.chars)
    patch_scratch = _patching(lens, val)
    name = ctx.done("finetune").model_name
    after = load_pretrained(str(ctx.run / RunDir.FINETUNED))
    lens = make_lens(after.model, after.tokenizer, f"{name} fine-tuned")
    pretrained = analyse(lens, val, vocab_chars=tok.chars)
    patch_pretrained = _patching(lens, val)
    del after, lens  # one 135M model in memory at a time
    before = load_pretrained(name)
    lens = make_lens(before.model, before.tokenizer, f"{name} before fine-tuning")
    study = InterpretStudy(scratch, pretrained, analyse(lens, val, vocab_chars=tok.chars),
                           patch_scratch, patch_pretrained)  # fmt: skip
    study.save(ctx.run / RunDir.INTERPRET)
    return study


def _patching(lens: Lens, val: str) -> PatchingResult | None:
    """Activation patching of an induction pair from the validation text: every layer of a small
    model; of a big one (over 12 layers) every sixth and the last (each site costs a pass)."""
    char = lens.kind == "scratch"
    L = lens.n_layers
    layers = None if L <= 12 else sorted({*range(0, L, 6), L - 1})
    try:
        clean, corrupt, target = induction_pair(
            lens, val[:20_000], span=16 if char else 8, filler=32 if char else 16,
            tries=8 if L <= 12 else 4,
        )  # fmt: skip
        return activation_patching(lens, clean, corrupt, target, layers=layers)
    except PatchingError as e:  # e.g. a corpus too short for a pair: the report says so
        logger.warning("no activation patching for %s: %s", lens.name, e)
        return None


def samples_stage(ctx: Context) -> list[Sample]:
    """The from-scratch model's samples beside the pretrained model's (samples.md)."""
    gen = scratch_generator(ctx.run / RunDir.BEST)
    prompts = tuple(ctx.done("corpus").prompts)
    rows = make_samples(gen, "scratch", ctx.preset.sample_tokens, prompts)
    rows += ctx.done("finetune").samples
    write_text(ctx.run / RunDir.SAMPLES, samples_markdown(rows))
    return rows


def figures_stage(ctx: Context) -> list[str]:
    """The headline (metrics.json) and every figure of the study as a PNG; their file names."""
    head = headline(ctx.state)
    head.save(ctx.run / RunDir.HEADLINE)
    return figures.study_figures(ctx.run, ctx.state, head)


def report_stage(ctx: Context) -> str:
    """The self-contained report.html."""
    return str(write_report(ctx.run, ctx.state, headline(ctx.state), machine_info()))


@dataclass(frozen=True)
class Stage:
    name: str  # also the StudyState field that keeps its record
    run: Callable[[Context], object]  # returns the stage's record


STAGES: tuple[Stage, ...] = (
    Stage("corpus", corpus_stage),
    Stage("scratch", scratch_stage),
    Stage("finetune", finetune_stage),
    Stage("evaluate", evaluate_stage),
    Stage("attention", attention_stage),
    Stage("interpret", interpret_stage),
    Stage("samples", samples_stage),
    Stage("figures", figures_stage),
    Stage("report", report_stage),
)
assert [s.name for s in STAGES] == [f.name for f in fields(StudyState)][: len(STAGES)]


# --------------------------------------------------------------------------------------------
# running the table


@dataclass
class StudyOutcome:
    state: StudyState
    headline: Headline
    report: str


def run_study(
    out: str | os.PathLike,
    preset: str = "quick",
    corpus: str = "shakespeare",
    data_path: str | None = None,
    scratch_overrides: dict[str, Any] | None = None,
    finetune_overrides: dict[str, Any] | None = None,
    force: bool = False,
    progress: bool = True,
    on_stage: Callable[[int, str], None] | None = None,
    prompts: tuple[str, ...] | None = None,
    report_to: str = "none",
) -> StudyOutcome:
    """Run every stage of ``STAGES`` not yet done in ``out`` (all with ``force``); ``on_stage(i,
    name)`` is called before each, done or not. ``report_to``: the experiment tracker of the two
    training stages (train/tracking.py), their runs grouped under the study folder's name."""
    check_tracker(report_to)  # a tracker that is not installed fails before any stage
    with RunDir(Path(out)).writer_lock("nanobard run"):
        return _run_study(out, preset, corpus, data_path, scratch_overrides, finetune_overrides,
                          force, progress, on_stage, prompts, report_to)  # fmt: skip


def _run_study(
    out: str | os.PathLike,
    preset: str,
    corpus: str,
    data_path: str | None,
    scratch_overrides: dict[str, Any] | None,
    finetune_overrides: dict[str, Any] | None,
    force: bool,
    progress: bool,
    on_stage: Callable[[int, str], None] | None,
    prompts: tuple[str, ...] | None,
    report_to: str,
) -> StudyOutcome:
    ctx = _context(Path(out), C.get_study_preset(preset), corpus, data_path,
                   scratch_overrides or {}, finetune_overrides or {}, force, progress,
                   prompts)  # fmt: skip
    ctx.report_to = report_to
    stages_path = ctx.run.ensure() / RunDir.STAGES
    if force:
        stages_path.unlink(missing_ok=True)
    ctx.state = _done_so_far(ctx, stages_path)
    for i, stage in enumerate(STAGES):
        if on_stage is not None:
            on_stage(i, stage.name)
        if getattr(ctx.state, stage.name) is not None:
            logger.info("stage %s already done; skipping (use --force to redo)", stage.name)
            continue
        t = time.perf_counter()
        try:
            record = stage.run(ctx)
        except (CorpusChanged, OutOfMemory, WriteFailed) as e:  # say how the study goes on
            raise _for_the_study(e) from None
        setattr(ctx.state, stage.name, record)
        ctx.state.seconds[stage.name] = round(time.perf_counter() - t, 2)
        ctx.state.save(stages_path)
    return StudyOutcome(ctx.state, headline(ctx.state), ctx.done("report"))


AGAIN = "run the same nanobard run command again (finished stages are kept)"
NEW_TEXT = "pass --force to redo every stage on the new text, or another --out for a new study"


def _for_the_study(e: CorpusChanged | OutOfMemory | WriteFailed) -> NanobardError:
    """A stage's one-line error with the study's own way on: its flags, not train's."""
    if isinstance(e, CorpusChanged):
        return e.with_hint(NEW_TEXT)
    if isinstance(e, OutOfMemory):
        return e.with_hint(
            "choose a smaller --preset (quick is the smallest), fine-tune LoRA adapters only "
            "(--lora-r 8) or a smaller --pretrained model"
        )
    return e.with_hint(f"free some space, then {AGAIN}")


def _done_so_far(ctx: Context, stages_path: Path) -> StudyState:
    """The stages a previous run of this folder finished, if it ran on the same text: a torn
    stages.json is redone (with a warning), another text is refused (``--force`` redoes it all)."""
    if not stages_path.exists():
        return StudyState()
    try:
        state = StudyState.load(stages_path)
    except TornRecord as e:
        logger.warning("%s; redoing every stage (a finished training resumes from its checkpoint)",
                       str(e).split("; delete")[0])  # fmt: skip
        return StudyState()
    if state.corpus is not None:
        check_same_corpus(state.corpus.identity, ctx.corpus().identity, stages_path, NEW_TEXT)
    return state


def _context(
    out: Path,
    preset: StudyPreset,
    corpus: str,
    data_path: str | None,
    scratch_overrides: dict[str, Any],
    finetune_overrides: dict[str, Any],
    force: bool,
    progress: bool,
    prompts: tuple[str, ...] | None,
) -> Context:
    """The study's configs: the preset's, its scratch time budget, then the user's overrides."""
    sp = C.get_preset(preset.scratch)
    train_cfg = sp.train
    if preset.scratch_time:
        train_cfg = C.resolve(train_cfg, {"max_time": preset.scratch_time})
    return Context(
        run=RunDir(out),
        preset=preset,
        model_cfg=C.resolve(sp.model, scratch_overrides),
        train_cfg=C.resolve(train_cfg, scratch_overrides),
        ft_cfg=C.resolve(preset.finetune, finetune_overrides),
        corpus_name=corpus,
        data_path=data_path,
        user_prompts=prompts,
        force=force,
        progress=progress,
    )
