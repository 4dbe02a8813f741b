"""The self-contained HTML report: the study's records rendered with ``templates/report.html.j2``.

Images are embedded as base64 PNG, style and script are inline, nothing is fetched. Jinja2's
autoescape escapes every string that comes from the corpus, a prompt or a model; the attention
explorer's data is JSON inside ``<script type=application/json>`` with ``<``, ``>`` and ``&``
escaped, and the page inserts its strings with ``textContent``, so text such as ``<script>``
shows as text and never runs.
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

import jinja2
import torch
from markupsafe import Markup

from nanobard import files
from nanobard.hf.finetune import FinetuneResult, Sample
from nanobard.interp.analysis import Analysis
from nanobard.interp.circuits import circuit_findings
from nanobard.interp.patching import patching_findings
from nanobard.records import EvalRow, read_json
from nanobard.rundir import RunDir
from nanobard.study.records import (
    AttentionStudy,
    Headline,
    InterpretStudy,
    StudyConfig,
    StudyState,
)

TEMPLATES = Path(__file__).resolve().parent / "templates"
TEMPLATE = "report.html.j2"
SAMPLE_COLUMNS = ("scratch", "before", "after")  # Sample.model, in column order
FIGURES = (
    (
        RunDir.FIG_TRAINING_SCRATCH,
        "From-scratch training: loss by step and by tokens, learning rate",
    ),
    (RunDir.FIG_TRAINING_HF, "Fine-tuning: loss by step and by tokens, learning rate"),
    (
        RunDir.FIG_COMPARISON,
        "Side by side: size, bits per character, loss reduction, training time",
    ),
    (RunDir.FIG_ATTENTION_SCRATCH, "Attention of the from-scratch GPT"),
    (RunDir.FIG_ATTENTION_HF, "Attention of the fine-tuned pretrained model"),
)


def write_report(run: RunDir, state: StudyState, head: Headline, machine: dict[str, Any]) -> Path:
    """Render the report of a finished study (every stage up to the figures) to
    ``run/report.html``."""
    path = run / RunDir.REPORT
    files.write_text(path, render_report(run, state, head, machine))
    return path


def render_report(run: RunDir, state: StudyState, head: Headline, machine: dict[str, Any]) -> str:
    """The report's HTML (see ``write_report``)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    e, a = state.evaluate, state.attention
    assert state.corpus and e and a, "the report needs the corpus, the scores and the attention"
    return env.get_template(TEMPLATE).render(
        corpus=state.corpus,
        head=head,
        machine=machine,
        run_rows=run_rows(run, state, head),
        run_folder=str(run.path),
        budget_rows=budget_rows(state),
        config=_config_text(run),
        comparison_rows=comparison_rows(state, head),
        figures=[f for f in (_figure(run, n, c) for n, c in FIGURES) if f],
        samples=sample_tables(state),
        attention=a,
        top_heads=[
            (x.model, sorted(x.heads_stats, key=lambda h: -h.previous_token)[:6])
            for x in (a.scratch, a.pretrained)
        ],
        sections=interpret_sections(run, state),
        score_chars=e.score_chars,
        explorer_json=Markup(json_for_script(explorer_data(run, a, state.interpret))),
    )


# ---------------------------------------------------------------------------------------------
# what was run


def _config(run: RunDir) -> StudyConfig | None:
    p = run / RunDir.CONFIG
    return StudyConfig.load(p) if p.exists() else None


def _config_text(run: RunDir) -> str:
    p = run / RunDir.CONFIG
    return json.dumps(read_json(p) if p.exists() else {}, indent=2, ensure_ascii=False)


def run_rows(run: RunDir, state: StudyState, head: Headline) -> list[list[Any]]:
    """The two tracks side by side: model, corpus, size, steps, time."""
    s, p, c = head.scratch, head.pretrained, state.corpus
    assert c and state.attention, "the rows need the corpus and the attention stage"
    cfg, a = _config(run), state.attention.scratch
    if cfg is not None:
        m = cfg.scratch.model
        scratch_model = (f"character GPT, {m.n_layer} layers, {m.n_head} heads, "
                         f"{m.n_embd} dims, context {m.block_size}")  # fmt: skip
    else:
        scratch_model = f"character GPT, {a.layers} layers, {a.heads} heads"
    return [
        ["model", scratch_model, f"{p.name} ({p.reason})" if p.reason else p.name],
        [
            "corpus",
            f"{c.name}: {c.train_chars:,} training and {c.val_chars:,} validation characters, "
            f"{c.distinct_chars} distinct",
            "the same text, through the model's own tokenizer",
        ],
        ["parameters", f"{s.num_params:,}", f"{p.num_params:,}"],
        ["optimizer steps", f"{s.steps:,}", f"{p.steps:,}"],
        ["training wall time", f"{s.train_seconds:.1f} s", f"{p.train_seconds:.1f} s"],
        ["tokens/s", f"{s.tokens_per_s:,.0f}", f"{p.tokens_per_s:,.0f}"],
    ]


def _around_training(f: FinetuneResult) -> str:
    """What the fine-tuning stage spent besides training, part by part (its budget covers them)."""
    if not f.phases:  # a study from before the parts were timed
        return " (scoring and samples before and after included in the time)"
    rest = {k: v for k, v in f.phases.items() if k != "train"}
    parts = ", ".join(f"{k.replace('_', ' ')} {v:.1f} s" for k, v in rest.items())
    return (
        f"; {f.phases.get('train', 0.0):.0f} s training and {sum(rest.values()):.0f} s around it "
        f"({parts}; scored in {f.after.precision})"
    )


def budget_rows(state: StudyState) -> list[list[str]]:
    """One row per finished stage, in study order: its wall-time budget (the training stages),
    the time it took (StudyState.seconds), and what that time bought; then the total."""
    s, f, e, i = state.scratch, state.finetune, state.evaluate, state.interpret
    budgets = {"scratch": s and s.time_budget_s, "finetune": f and f.time_budget_s}
    bought = {
        "corpus": state.corpus
        and f"{state.corpus.train_chars + state.corpus.val_chars:,} characters read",
        "scratch": s
        and (
            f"{s.steps:,} steps, {s.tokens:,} tokens, {s.tokens_per_s:,.0f} tokens/s"
            + (f"; {e.scratch.bits_per_char:.3f} bits/char" if e else "")
        ),
        "finetune": f
        and (
            f"{f.steps:,} steps, {f.tokens:,} tokens, {f.tokens_per_s:,.0f} tokens/s; "
            f"{f.before.bits_per_char:.3f} -> {f.after.bits_per_char:.3f} bits/char"
            + _around_training(f)
        ),
        "evaluate": e and f"the from-scratch model scored on {e.score_chars:,} characters",
        "attention": state.attention
        and "attention maps, head statistics and the causality check of both models",
        "interpret": i
        and "induction, head ablation, logit lens and loss by position of "
        f"{3 if i.pretrained_before else 2} models",
        "samples": state.samples and f"{len(state.samples)} samples",
        "figures": state.figures and f"{len(state.figures)} figures",
    }
    stages = [f.name for f in fields(StudyState)]  # the study's order
    order = [st for st in stages if st in state.seconds] + [
        st for st in state.seconds if st not in stages
    ]
    rows = []
    for stage in order:
        budget = budgets.get(stage)
        rows.append(
            [
                stage,
                f"{budget:.0f} s" if budget else "-",
                f"{state.seconds[stage]:.1f} s",
                bought.get(stage) or "",
            ]
        )
    rows.append(["total", "", f"{sum(state.seconds.values()):.1f} s", ""])
    return rows


def comparison_rows(state: StudyState, head: Headline) -> list[list[Any]]:
    """Every model on the shared validation text: tokens scored, nats/token, bits/char."""
    e, p = state.evaluate, head.pretrained
    assert e, "the comparison needs the evaluate stage's scores"
    return [
        [label, f"{n:,}", f"{sc.tokens:,}", f"{sc.nats_per_token:.4f}", f"{sc.bits_per_char:.4f}"]
        for label, n, sc in (
            ("from scratch (best checkpoint)", head.scratch.num_params, e.scratch),
            (f"{p.name} before fine-tuning", p.num_params, e.pretrained_before),
            (f"{p.name} after fine-tuning", p.num_params, e.pretrained_after),
        )
    ]


def sample_tables(state: StudyState) -> list[dict[str, Any]]:
    """Per prompt: one row per strategy, the from-scratch / before / after continuations side by
    side (each with its prompt; empty where a model has none)."""
    samples = state.samples or []
    tables = []
    for prompt in dict.fromkeys(r.prompt for r in samples):
        mine = [r for r in samples if r.prompt == prompt]
        rows = []
        for strategy in dict.fromkeys(r.strategy for r in mine):
            texts = {r.model: prompt + r.text for r in mine if r.strategy == strategy}
            rows.append({"strategy": strategy, "cells": [texts.get(m, "") for m in SAMPLE_COLUMNS]})
        tables.append({"prompt": prompt, "rows": rows})
    return tables


def _figure(run: RunDir, name: str, caption: str) -> dict[str, str] | None:
    path = run / name
    if not path.exists():
        return None
    uri = "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")
    return {"name": name, "uri": uri, "caption": caption}


# ---------------------------------------------------------------------------------------------
# interpretability: one section per analysis, with what this run found


def _heads(table: Sequence[Sequence[float | None]]) -> list[tuple[float, int, int]]:
    """(value, layer, head) of every measured head, largest first."""
    return sorted(
        ((v, i, h) for i, row in enumerate(table) for h, v in enumerate(row) if v is not None),
        reverse=True,
    )


def _cost(a: Analysis, layer: int, head: int) -> str:
    rows = a.ablation.delta_bpc
    v = rows[layer][head] if layer < len(rows) and head < len(rows[layer]) else None
    return "which was not ablated" if v is None else f"whose ablation costs {_bits(v)} bits/char"


def _bits(v: float) -> str:
    """A signed cost in bits/char, with a third decimal when two would round it to zero."""
    return f"{v:+.2f}" if abs(v) >= 0.005 else f"{v:+.3f}"


def _models(interp: InterpretStudy) -> list[Analysis]:
    return [
        a for a in (interp.scratch, interp.pretrained_before, interp.pretrained) if a is not None
    ]


def induction_found(a: Analysis) -> list[str]:
    """The strongest induction head and whether the model copies; the strongest previous-token
    head."""
    _, li, hi = _heads(a.induction.induction)[0]
    p, lp, hp = _heads(a.induction.previous_token)[0]
    return circuit_findings(induction=a.induction) + [
        f"{a.model}: the strongest previous-token head on the same random tokens is L{lp}H{hp} "
        f"(score {p:.2f})"
        + ("; it is also the strongest induction head" if (lp, hp) == (li, hi) else "")
    ]


def ablation_found(a: Analysis) -> list[str]:
    """The costliest head, and what removing the strongest previous-token and induction heads
    costs."""
    _, li, hi = _heads(a.induction.induction)[0]
    _, lp, hp = _heads(a.induction.previous_token)[0]
    n = sum(len(row) for row in a.ablation.delta_bpc)
    done = sum(v is not None for row in a.ablation.delta_bpc for v in row)
    return circuit_findings(ablation=a.ablation) + [
        f"{a.model}: the heatmaps single out L{lp}H{hp} as the strongest previous-token head, "
        f"{_cost(a, lp, hp)}, and L{li}H{hi} as the strongest induction head, {_cost(a, li, hi)}"
        + (f" ({n - done} of {n} heads were not ablated, to save time)" if done < n else "")
    ]


def lens_found(interp: InterpretStudy) -> list[str]:
    """Where each model's prediction forms, its biggest layer-to-layer step, what fine-tuning
    moved."""
    out = circuit_findings(lens=interp.scratch.lens) + circuit_findings(lens=interp.pretrained.lens)
    for a in _models(interp):
        r = a.lens
        k = max(range(1, len(r.bpc)), key=lambda j: r.bpc[j - 1] - r.bpc[j])
        out.append(
            f"{a.model}: the biggest step is from layer {r.layers[k - 1]} to {r.layers[k]} "
            f"({r.bpc[k - 1]:.2f} -> {r.bpc[k]:.2f} bits/char); the layer before the output "
            f"agrees with the output's top-1 token at {r.top1_agreement[-2]:.0%} of positions"
        )
    if interp.pretrained_before is not None:
        b, f = interp.pretrained_before.lens, interp.pretrained.lens
        out.append(
            f"Fine-tuning moved the pretrained model's output on this text from {b.bpc[-1]:.2f} to "
            f"{f.bpc[-1]:.2f} bits/char, and its embedding layer read through the unembedding from "
            f"{b.bpc[0]:.2f} to {f.bpc[0]:.2f}"
        )
    return out


def positions_found(interp: InterpretStudy) -> list[str]:
    """Bits/char at a few positions, and how much less the second half of the window costs than
    its first characters."""
    out = []
    for a in _models(interp):
        r = a.positions
        pts = [(x, b, c) for x, (b, c) in enumerate(zip(r.bpc, r.chars)) if b is not None and c]
        if len(pts) < 8:
            continue
        early, late = pts[:4], pts[len(pts) // 2 :]
        e = sum(b * c for _, b, c in early) / sum(c for *_, c in early)
        lt = sum(b * c for _, b, c in late) / sum(c for *_, c in late)
        out.append(
            f"{a.model}: the first characters it scores (positions {early[0][0]}-{early[-1][0]}) "
            f"cost {e:.2f} bits/char, the second half of the window (positions "
            f"{late[0][0]}-{late[-1][0]}) {lt:.2f}: having read more of the text saves "
            f"{e - lt:.2f} bits/char"
        )
    return (
        circuit_findings(positions=interp.scratch.positions)
        + circuit_findings(positions=interp.pretrained.positions)
        + out
    )


FORMED = 0.2  # a head scoring below this at the end of training has not taken up the behaviour


def formation_found(history: list[EvalRow]) -> list[str]:
    """When the from-scratch model's strongest heads formed, and whether that lines up with the
    largest drop of the validation loss."""
    rows = [r for r in history if r.heads]
    if len(rows) < 2:
        return [
            "Per-head scores were recorded at fewer than two evaluations, so there is no formation "
            "curve (they are recorded at each evaluation of the from-scratch training)."
        ]
    heads = [r.heads for r in rows if r.heads]  # the scores of each row of rows
    k = max(range(1, len(rows)), key=lambda j: rows[j - 1].val_loss - rows[j].val_loss)
    drop = (rows[k - 1], rows[k])
    out = []
    for key, kind in (("previous_token", "previous-token"), ("induction", "induction")):
        final, i, h = _heads(heads[-1][key])[0]
        if final < FORMED:
            out.append(
                f"No {kind} head formed: the strongest at the end, L{i}H{h}, scores {final:.2f} "
                f"(a head that does this job scores near 1)"
            )
            continue
        first = next(r for r, scores in zip(rows, heads) if scores[key][i][h] >= final / 2)
        when = (
            "already at the first evaluation"
            if first is rows[0]
            else f"by {first.tokens:,} tokens seen, when the validation loss was "
            f"{first.val_loss:.2f} nats/token"
        )
        lines_up = " — during the largest loss drop" if first is drop[1] else ""
        out.append(
            f"L{i}H{h}, the strongest {kind} head at the end (score {final:.2f}), passed half that "
            f"score {when}{lines_up}"
        )
    out.append(
        f"The validation loss fell most between {drop[0].tokens:,} and {drop[1].tokens:,} tokens "
        f"seen ({drop[0].val_loss:.2f} -> {drop[1].val_loss:.2f} nats/token; "
        f"{rows[0].val_loss:.2f} at the first evaluation with head scores, "
        f"{rows[-1].val_loss:.2f} at the last)"
    )
    return out


HOW = {
    "patching": (
        "A clean prompt repeats a stretch of validation text (the answer: the token that followed "
        "it the first time); the corrupted prompt has other text in the first copy's place. Each "
        "cell is one activation copied from the clean run into the corrupted run, and how much "
        "of the target's logit difference that brings back (1: all of it): the residual stream "
        "before each layer, each attention and MLP output (layers down, positions across, "
        "corrupted tokens marked corrupted→clean), and each head at every position; then each "
        "head's direct logit attribution on the clean prompt, and the parts of the logit. "
        "Blank rows: layers not patched (a big model patches every sixth layer and the last)."
    ),
    "induction": (
        "Each cell is one head (layers down, heads across) on random tokens repeated twice: the "
        "left map is how much a token in the second copy attends to the token that followed it in "
        "the first copy (an induction head, which lets a model continue a repeat), the right map "
        "how much a token attends to the one just before it (the previous-token heads that "
        "induction heads build on)."
    ),
    "ablation": (
        "Each cell is the bits per character a model loses on the validation slice when that one "
        "head's output is replaced by its average: red means the model needs the head, white that "
        "it could do without it, and hatched cells were not ablated, to save time."
    ),
    "lens": (
        "Each point reads a model's prediction off its residual stream after that layer (through "
        "the final norm and the unembedding): on the left the bits per character if the model "
        "stopped there, on the right how often its top-1 guess is already the final one."
    ),
    "positions": (
        "Each curve is the bits per character a model pays for a character against how many "
        "characters of the same context window it has read before it: a falling curve means it "
        "uses what it has read (in-context learning)."
    ),
    "formation": (
        "Each line is one head of the from-scratch model, its previous-token (left) or induction "
        "(right) score measured at each evaluation, against tokens seen, with the validation loss "
        "dashed on the right axis, so you can see whether a head forming coincides with a drop of "
        "the loss."
    ),
}


def interpret_sections(run: RunDir, state: StudyState) -> list[dict[str, Any]]:
    """Induction heads, head ablation, logit lens, loss by position, head formation: each with its
    figures, how to read them, and what this run found (empty when the stage has not run)."""
    interp = state.interpret
    if interp is None:
        return []
    tracks = (
        ("scratch", interp.scratch, "from-scratch GPT"),
        ("pretrained", interp.pretrained, "fine-tuned model"),
    )
    history = state.scratch.history if state.scratch else []

    def section(
        id_: str, title: str, how: str, named: list[tuple[str, str]], found: list[str]
    ) -> dict[str, Any]:
        figures = [f for f in (_figure(run, name, caption) for name, caption in named) if f]
        return {"id": id_, "title": title, "how": HOW[how], "figures": figures, "found": found}

    induction = [
        (RunDir.FIG_INDUCTION[t], f"Induction and previous-token scores, {w}") for t, _, w in tracks
    ]
    ablation = [(RunDir.FIG_ABLATION[t], f"Cost of removing each head, {w}") for t, _, w in tracks]
    lens = [(RunDir.FIG_LOGIT_LENS, "Bits/char and top-1 agreement read off each layer")]
    positions = [(RunDir.FIG_LOSS_BY_POSITION, "Bits/char by position in the context window")]
    formation = [(RunDir.FIG_HEAD_FORMATION, "Per-head scores and validation loss during training")]
    patched = [("scratch", interp.patching_scratch, "from-scratch GPT"),
               ("pretrained", interp.patching_pretrained, "fine-tuned model")]  # fmt: skip
    patching = [(RunDir.FIG_PATCHING[t], f"Activation patching, {w}") for t, p, w in patched if p]
    patching_found = [s for _, p, _ in patched if p for s in patching_findings(p)]
    return [
        section("induction", "Induction heads", "induction", induction,
                [s for _, a, _ in tracks for s in induction_found(a)]),
        section("ablation", "Head ablation", "ablation", ablation,
                [s for _, a, _ in tracks for s in ablation_found(a)]),
        section("logit-lens", "Logit lens", "lens", lens, lens_found(interp)),
        section("loss-by-position", "Loss by position", "positions", positions,
                positions_found(interp)),
        section("head-formation", "Head formation", "formation", formation,
                formation_found(history)),
        section("patching", "Activation patching", "patching", patching,
                patching_found or ["Activation patching did not run in this study."]),
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------------
# the attention explorer


def json_for_script(obj: Any) -> str:
    """JSON safe inside <script type=application/json>: no '<', '>' or '&' survive."""
    return (
        json.dumps(obj, ensure_ascii=False)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
    )


def _rounded(
    table: list[list[float | None]] | None, digits: int = 3
) -> list[list[float | None]] | None:
    return (
        None
        if table is None
        else [[None if v is None else round(v, digits) for v in row] for row in table]
    )


def explorer_data(
    run: RunDir, attention: AttentionStudy, interp: InterpretStudy | None
) -> dict[str, Any]:
    """Per model: its name, the attention text's tokens, the weights ``# [layer][head][query][key]``
    (from run/attention_weights.pt) and per-head scores ``# [layer][head]``: previous-token share
    on this text, induction score and ablation cost in bits/char (None: not measured / not
    ablated)."""
    weights = torch.load(run / RunDir.ATTENTION_WEIGHTS, weights_only=True)
    data = {}
    for key in ("scratch", "pretrained"):
        a = getattr(attention, key)
        w = weights[key].double()  # [layer, head, T, T]
        prev: list[list[float | None]] = [[None] * w.shape[1] for _ in range(w.shape[0])]
        for s in a.heads_stats:
            prev[s.layer][s.head] = s.previous_token
        an = getattr(interp, key) if interp is not None else None
        data[key] = {
            "name": a.model,
            "tokens": a.tokens,
            "weights": ((w * 1000).round() / 1000).tolist(),
            "scores": {
                "previous_token": _rounded(prev),
                "induction": _rounded(an.induction.induction if an else None),
                "ablation": _rounded(an.ablation.delta_bpc if an else None, 4),
            },
        }
    return data


# --------------------------------------------------------------------------------------------
# the other files of a study


def samples_markdown(rows: list[Sample]) -> str:
    lines = [
        "# Samples",
        "",
        "Same prompts, decoding settings and seeds for every model.",
        "Strategies: greedy (argmax), top_k (k=40, temperature 1.0), temperature (0.8).",
        "",
    ]
    for prompt in dict.fromkeys(r.prompt for r in rows):
        lines.append(f"## Prompt: `{prompt.strip()!s}`")
        for r in rows:
            if r.prompt == prompt:
                body = (r.prompt + r.text).replace("```", "'''")
                lines += ["", f"### {r.model} — {r.strategy}", "", "```text", body, "```"]
        lines.append("")
    return "\n".join(lines)


def machine_info() -> dict[str, Any]:
    import platform

    import torch

    from nanobard.hardware import cpu_info

    cpu = cpu_info()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": cpu.model,
        "cpu kind": f"{cpu.kind} (torch capability {cpu.capability})",
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
