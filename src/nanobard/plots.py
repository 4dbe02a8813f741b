"""Figures (matplotlib, Agg backend): data in, PNG path out. Nothing here trains or loads models."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

DPI = 110


def _save(fig: Any, path: str | os.PathLike) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path


def training_progress(history: list[dict[str, Any]], title: str, path: str | os.PathLike) -> Path:
    """Train/val loss against steps and against tokens seen, and the learning rate."""
    rows = [r for r in history if r.get("val_loss") is not None]
    steps = [r["step"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, xkey, xlabel in ((axes[0], "step", "optimizer step"), (axes[1], "tokens", "tokens seen")):
        xs = [r[xkey] for r in rows]
        tr = [(x, r["train_loss"]) for x, r in zip(xs, rows) if r.get("train_loss") is not None]
        if tr:
            ax.plot(*zip(*tr), "o-", label="train loss", color="tab:blue")
        ax.plot(xs, [r["val_loss"] for r in rows], "s-", label="validation loss", color="tab:orange")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("cross-entropy (nats per token)")
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_title("loss by step")
    axes[1].set_title("loss by tokens seen")
    axes[1].ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
    lrs = [(r["step"], r["lr"]) for r in rows if r.get("lr") is not None]
    if lrs:
        axes[2].plot(*zip(*lrs), "o-", color="tab:green")
    axes[2].set_title("learning rate")
    axes[2].set_xlabel("optimizer step")
    axes[2].set_ylabel("learning rate")
    axes[2].ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    axes[2].grid(alpha=0.3)
    if len(steps) == 1:
        for ax in axes:
            ax.margins(x=0.5)
    fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    return _save(fig, path)


def model_comparison(summary: dict[str, Any], path: str | os.PathLike) -> Path:
    """Side by side: parameters (log scale), bits/char on the shared text, loss reduction %,
    training time with tokens/s.

    ``summary`` keys: scratch/pretrained dicts with num_params, loss_reduction_pct, train_seconds,
    tokens_per_s; bpc: {label: value}; score_chars.
    """
    s, p = summary["scratch"], summary["pretrained"]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.6))
    names = ["from scratch", p["name"]]
    colors = ["tab:blue", "tab:purple"]

    ax = axes[0]
    bars = ax.bar(names, [s["num_params"], p["num_params"]], color=colors)
    ax.set_yscale("log")
    ax.set_ylabel("parameters (log scale)")
    ax.set_title(f"model size ({p['num_params'] / s['num_params']:.0f}x larger)")
    for b, v in zip(bars, [s["num_params"], p["num_params"]]):
        ax.annotate(_human(v), (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom")

    ax = axes[1]
    labels, values = list(summary["bpc"].keys()), list(summary["bpc"].values())
    bars = ax.bar(labels, values, color=["tab:blue", "tab:gray", "tab:purple"][: len(values)])
    ax.set_ylabel("bits per character (lower is better)")
    ax.set_title(f"same validation text ({summary['score_chars']:,} chars)")
    for b, v in zip(bars, values):
        ax.annotate(f"{v:.3f}", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom")
    ax.set_ylim(0, max(values) * 1.18)
    ax.tick_params(axis="x", labelrotation=12)

    ax = axes[2]
    red = [s["loss_reduction_pct"], p["loss_reduction_pct"]]
    bars = ax.bar(names, red, color=colors)
    ax.set_ylabel("validation loss reduction (%)")
    ax.set_title("first -> last evaluation")
    for b, v in zip(bars, red):
        ax.annotate(f"{v:.1f}%", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom")
    ax.set_ylim(0, max(max(red), 1) * 1.18)

    ax = axes[3]
    secs = [s["train_seconds"], p["train_seconds"]]
    bars = ax.bar(names, secs, color=colors)
    ax.set_ylabel("training wall time (s)")
    ax.set_title("training time and throughput")
    for b, v, tps in zip(bars, secs, [s["tokens_per_s"], p["tokens_per_s"]]):
        ax.annotate(f"{v:.0f} s\n{tps:,.0f} tokens/s", (b.get_x() + b.get_width() / 2, v), ha="center", va="bottom")
    ax.set_ylim(0, max(secs) * 1.3)
    fig.suptitle("From-scratch GPT vs fine-tuned pretrained model", fontsize=13)
    fig.tight_layout()
    return _save(fig, path)


def attention_heads(
    weights: torch.Tensor, tokens: list[str], layer: int, title: str, path: str | os.PathLike,
    max_heads: int = 8, max_tokens: int = 32,
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
    fig, axes = plt.subplots(rows, cols, figsize=(side * cols + 1.2, side * rows + 0.8), squeeze=False,
                             layout="constrained")
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
