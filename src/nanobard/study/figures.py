"""The study's figures (matplotlib, Agg backend): the training curves of both tracks, the models
compared, and ``study_figures``, which writes every figure of a study into its run folder under the
names in rundir.py (the figures of what is inside the models are in interp/figures.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from nanobard.interp.figures import (
    activation_patching,
    attention_heads,
    head_ablation,
    head_formation,
    induction_heads,
    logit_lens,
    loss_by_position,
    plt,
    save_figure,
)
from nanobard.records import EvalRow
from nanobard.rundir import RunDir

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from nanobard.study.records import Headline, StudyState


def training_progress(history: list[EvalRow], title: str, path: str | os.PathLike) -> Path:
    """Train/val loss (nats per token) against steps and against tokens seen, and the learning
    rate."""
    rows = list(history)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, xkey, xlabel in (
        (axes[0], "step", "optimizer step"),
        (axes[1], "tokens", "tokens seen"),
    ):
        xs = [getattr(r, xkey) for r in rows]
        tr = [(x, r.train_loss) for x, r in zip(xs, rows) if r.train_loss is not None]
        if tr:
            ax.plot(*zip(*tr), "o-", label="train loss", color="tab:blue")
        ax.plot(xs, [r.val_loss for r in rows], "s-", label="validation loss", color="tab:orange")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("cross-entropy (nats per token)")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_title("loss by step")
    axes[1].set_title("loss by tokens seen")
    axes[1].ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
    lrs = [(r.step, r.lr) for r in rows if r.lr is not None]
    if lrs:
        axes[2].plot(*zip(*lrs), "o-", color="tab:green")
    axes[2].set_title("learning rate")
    axes[2].set_xlabel("optimizer step")
    axes[2].set_ylabel("learning rate")
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    axes[2].grid(alpha=0.3)
    if len(rows) == 1:
        for ax in axes:
            ax.margins(x=0.5)
    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    return save_figure(fig, path)


def model_comparison(head: Headline, path: str | os.PathLike) -> Path:
    """Side by side: parameters (log scale), bits/char on the shared validation text, validation
    loss reduction (%), training wall time with tokens/s."""
    s, p = head.scratch, head.pretrained
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.6))
    names = [s.name, p.name]
    colors = ["tab:blue", "tab:purple"]

    params = [s.num_params, p.num_params]
    axes[0].set_yscale("log")
    _bars(axes[0], names, params, colors, [_human(v) for v in params])
    axes[0].set_ylabel("parameters (log scale)")
    axes[0].set_title(f"model size ({p.num_params / s.num_params:.0f}x larger)")

    bpc = {k: v for k, v in head.bpc.items() if v is not None}
    _bars(
        axes[1],
        list(bpc),
        list(bpc.values()),
        ["tab:blue", "tab:gray", "tab:purple"][: len(bpc)],
        [f"{v:.3f}" for v in bpc.values()],
    )
    axes[1].set_ylabel("bits per character (lower is better)")
    axes[1].set_title(f"same validation text ({head.score_chars:,} chars)")
    axes[1].tick_params(axis="x", labelrotation=12)

    red = [s.loss_reduction_pct, p.loss_reduction_pct]
    _bars(axes[2], names, red, colors, [f"{v:.1f}%" for v in red])
    axes[2].set_ylabel("validation loss reduction (%)")
    axes[2].set_title("first -> last evaluation")
    axes[2].set_ylim(min(0, min(red) * 1.18), max(max(red), 1) * 1.18)

    secs = [s.train_seconds, p.train_seconds]
    _bars(
        axes[3],
        names,
        secs,
        colors,
        [f"{v:.0f} s\n{t:,.0f} tokens/s" for v, t in zip(secs, [s.tokens_per_s, p.tokens_per_s])],
        top=1.3,
    )
    axes[3].set_ylabel("training wall time (s)")
    axes[3].set_title("training time and throughput")
    fig.suptitle(f"From-scratch GPT vs fine-tuned {p.name}", fontsize=13)
    fig.tight_layout()
    return save_figure(fig, path)


def _bars(
    ax: Axes,
    names: list[str],
    values: Sequence[float],
    colors: list[str],
    notes: list[str],
    top: float = 1.18,
) -> None:
    """A bar chart with each bar's value written above it."""
    bars = ax.bar(names, values, color=colors)
    for b, v, note in zip(bars, values, notes):
        ax.annotate(note, (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom")
    if ax.get_yscale() == "linear" and values and max(values) > 0:
        ax.set_ylim(0, max(values) * top)


def _human(n: float) -> str:
    for unit, k in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= k:
            return f"{n / k:.1f}{unit}"
    return str(int(n))


def study_figures(run: RunDir, state: StudyState, head: Headline) -> list[str]:
    """Every figure of the study as a PNG in the run folder; returns their file names. Induction
    heads and head ablation per model, the logit lens and loss by position of all models on one
    axis each (the pretrained model before fine-tuning too, when analysed), and head formation from
    the per-head scores in the from-scratch training history (left out when it has none)."""
    s, f, a, interp = state.scratch, state.finetune, state.attention, state.interpret
    assert s and f and a and interp, "the figures stage runs after training and the analyses"
    made = [
        training_progress(s.history, f"From-scratch GPT ({s.num_params:,} parameters)",
                          run / RunDir.FIG_TRAINING_SCRATCH),
        training_progress(f.history,
                          f"Fine-tuning {f.model_name} ({f.num_params:,} parameters)",
                          run / RunDir.FIG_TRAINING_HF),
        model_comparison(head, run / RunDir.FIG_COMPARISON),
    ]  # fmt: skip
    w = torch.load(run / RunDir.ATTENTION_WEIGHTS, weights_only=True)
    for key, analysis in (("scratch", a.scratch), ("pretrained", a.pretrained)):
        layer = analysis.strongest_previous_token_layer
        heads = w[key].shape[1]
        shown = f"all {heads} heads" if heads <= 8 else f"8 of {heads} heads"
        title = (
            f"{analysis.model}: {shown} of layer {layer} (the layer of its strongest "
            "previous-token head)"
        )
        made.append(
            attention_heads(w[key], analysis.tokens, layer, title, run / RunDir.FIG_ATTENTION[key])
        )
    for track, m in (("scratch", interp.scratch), ("pretrained", interp.pretrained)):
        made.append(induction_heads(m.induction, run / RunDir.FIG_INDUCTION[track]))
        made.append(head_ablation(m.ablation, run / RunDir.FIG_ABLATION[track]))
    models = [
        m for m in (interp.scratch, interp.pretrained_before, interp.pretrained) if m is not None
    ]
    made.append(logit_lens([m.lens for m in models], run / RunDir.FIG_LOGIT_LENS))
    made.append(loss_by_position([m.positions for m in models], run / RunDir.FIG_LOSS_BY_POSITION))
    for track, p in (("scratch", interp.patching_scratch),
                     ("pretrained", interp.patching_pretrained)):  # fmt: skip
        if p is not None:
            made.append(activation_patching(p, run / RunDir.FIG_PATCHING[track]))
    formed = head_formation(s.history, run / RunDir.FIG_HEAD_FORMATION)
    return [p.name for p in made + ([formed] if formed else [])]
