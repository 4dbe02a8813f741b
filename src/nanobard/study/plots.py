"""Figures (matplotlib, Agg backend): data in, PNG path out. Nothing here trains or loads models."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from nanobard.records import EvalRow  # noqa: E402

if TYPE_CHECKING:
    from nanobard.study.records import Headline

DPI = 110


def _save(fig: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def training_progress(history: list[EvalRow], title: str, path: str | os.PathLike) -> Path:
    """Train/val loss (nats per token) against steps and against tokens seen, and the learning rate."""
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
    return _save(fig, path)


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
    return _save(fig, path)


def _bars(
    ax: Any,
    names: list[str],
    values: list[float],
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


def attention_heads(
    weights: torch.Tensor,
    tokens: list[str],
    layer: int,
    title: str,
    path: str | os.PathLike,
    max_heads: int = 8,
    max_tokens: int = 32,
) -> Path:
    """Heatmaps of the heads of one layer. weights: [layer, head, query_pos, key_pos].

    Only the first ``max_tokens`` positions are drawn, so labels stay readable; with causal
    attention the top-left block is exactly the attention of that prefix.
    """
    heads = min(weights.shape[1], max_heads)
    T = min(len(tokens), max_tokens)
    cols = 2 if heads <= 4 else 4
    rows = math.ceil(heads / cols)
    side = 3.4 if T <= 20 else 4.2
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(side * cols + 1.2, side * rows + 0.8),
        squeeze=False,
        layout="constrained",
    )
    labels = [_label(t) for t in tokens[:T]]
    fontsize = 8 if T <= 20 else 6
    im = None
    for h in range(rows * cols):
        ax = axes[h // cols][h % cols]
        if h >= heads:
            ax.axis("off")
            continue
        im = ax.imshow(weights[layer, h, :T, :T].numpy(), cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"head {h}", fontsize=10)
        ax.set_xticks(range(T), labels, rotation=90, fontsize=fontsize)
        ax.set_yticks(range(T), labels, fontsize=fontsize)
        if h // cols == rows - 1 or h + cols >= heads:
            ax.set_xlabel("key (attended to)")
        if h % cols == 0:
            ax.set_ylabel("query (attending)")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.7, label="attention weight")
    fig.suptitle(title, fontsize=12)
    return _save(fig, path)


def _label(token: str) -> str:
    return token.replace("\n", "\\n").replace(" ", "·") or "∅"


def _human(n: float) -> str:
    for unit, k in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= k:
            return f"{n / k:.1f}{unit}"
    return str(int(n))
