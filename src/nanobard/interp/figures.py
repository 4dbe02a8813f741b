"""Figures of what is inside a model (matplotlib, Agg backend): one record of ``interp`` in, one
PNG out. Attention heatmaps of one layer; per-head tables as heatmaps ``# [layer, head]`` (layers
down, heads across); losses on text in bits per character, so the character model and a BPE model
share one axis. ``save_figure`` is the one way every figure of nanobard is written.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TypedDict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402

from nanobard import files  # noqa: E402
from nanobard.errors import NanobardError  # noqa: E402
from nanobard.interp.circuits import (  # noqa: E402
    AblationResult,
    InductionResult,
    LogitLensResult,
    PositionLoss,
)
from nanobard.interp.patching import PatchingResult  # noqa: E402
from nanobard.records import EvalRow  # noqa: E402

DPI = 110


FIGURE_FORMATS = (".png", ".svg", ".pdf")


def check_figure_path(path: str | os.PathLike, flag: str) -> None:
    """A one-line error, before any work, for a figure file name that is not .png, .svg or .pdf
    (matplotlib's own error names only the format)."""
    if Path(path).suffix.lower() not in FIGURE_FORMATS:
        raise NanobardError(f"{flag} {path}: the figure is written as "
                            f"{', '.join(FIGURE_FORMATS)}; give a file name ending in one of "
                            "them")  # fmt: skip


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as the image ``path`` names, whole or not at all (files.atomic_path), and
    close it."""
    path = Path(path)
    try:
        with files.atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


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
    assert im is not None, "the weights have no heads to draw"
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.7, label="attention weight")
    fig.suptitle(title, fontsize=12)
    return save_figure(fig, path)


def _label(token: str) -> str:
    return token.replace("\n", "\\n").replace(" ", "·") or "∅"


ANNOTATE_MAX_CELLS = 120  # write each cell's value when the table is no bigger than this
HIGHLIGHT = 4  # head formation: heads drawn in colour (the strongest at the end), the rest grey


class Style(TypedDict):
    """Keyword arguments of ``Axes.plot`` that draw one model's line."""

    color: str
    ls: str


def _styles(n: int) -> list[Style]:
    """Line styles of n models in the report's colours: from scratch blue, the pretrained model
    before fine-tuning grey and dashed (it can lie right under the fine-tuned one), after purple."""
    colors = {2: ["tab:blue", "tab:purple"], 3: ["tab:blue", "tab:gray", "tab:purple"]}.get(
        n, [f"C{i}" for i in range(n)]
    )
    return [{"color": c, "ls": "--" if c == "tab:gray" else "-"} for c in colors]


def _table(rows: Sequence[Sequence[float | None]]) -> np.ndarray:
    """A [layer, head] table as floats, None -> NaN."""
    return np.array([[math.nan if v is None else v for v in row] for row in rows], dtype=float)


def _heatmap(
    fig: Figure,
    ax: Axes,
    table: np.ndarray,
    title: str,
    label: str,
    *,
    cmap: str,
    vmin: float,
    vmax: float,
    fmt: str,
) -> None:
    """Draw a [layer, head] table; NaN cells stay transparent, so what is behind them shows."""
    L, H = table.shape
    cm = plt.get_cmap(cmap).with_extremes(bad=(0, 0, 0, 0))
    im = ax.imshow(
        np.ma.masked_invalid(table), cmap=cm, vmin=vmin, vmax=vmax, aspect="auto", zorder=1
    )
    if L * H <= ANNOTATE_MAX_CELLS:
        for i, h in np.ndindex(L, H):
            v = table[i, h]
            if not math.isnan(v):
                r, g, b, _ = cm(im.norm(v))
                ax.text(
                    h,
                    i,
                    format(v, fmt),
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white",
                )
    ax.set_xticks(range(H))
    ax.set_yticks(range(L))
    if L > 16:  # label every other layer so the labels stay readable
        ax.set_yticks(range(0, L, 2))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, shrink=0.85, label=label)


def _heatmap_size(L: int, H: int, panels: int) -> tuple[float, float]:
    return (panels * (0.55 * H + 2.6) + 0.5, max(3.2, 0.3 * L + 1.8))


def induction_heads(result: InductionResult, path: str | os.PathLike) -> Path:
    """Induction score and previous-token score of every head, side by side (0-1, mean attention
    weight on random tokens repeated twice)."""
    ind, prev = _table(result.induction), _table(result.previous_token)
    L, H = ind.shape
    fig, axes = plt.subplots(1, 2, figsize=_heatmap_size(L, H, 2), layout="constrained")
    _heatmap(
        fig,
        axes[0],
        ind,
        "induction score:\nattention to the token after the earlier copy",
        "mean attention weight",
        cmap="viridis",
        vmin=0,
        vmax=1,
        fmt=".2f",
    )
    _heatmap(
        fig,
        axes[1],
        prev,
        "previous-token score:\nattention to the token just before",
        "mean attention weight",
        cmap="viridis",
        vmin=0,
        vmax=1,
        fmt=".2f",
    )
    fig.suptitle(
        f"{result.model}: induction heads ({result.batch} x {result.seq_len} random tokens, each "
        f"sequence repeated twice;\nloss {result.loss_first_bits:.2f} bits/token on the first "
        f"copy, {result.loss_second_bits:.2f} on the second)",
        fontsize=11,
    )
    return save_figure(fig, path)


def head_ablation(result: AblationResult, path: str | os.PathLike) -> Path:
    """The bits/char lost when each head is removed (its output replaced by its mean); hatched
    cells are heads that were not ablated."""
    delta = _table(result.delta_bpc)
    L, H = delta.shape
    finite = delta[~np.isnan(delta)]
    vmax = float(np.abs(finite).max()) if finite.size and np.abs(finite).max() > 0 else 1e-3
    fig, ax = plt.subplots(figsize=_heatmap_size(L, H, 1), layout="constrained")
    ax.add_patch(
        Rectangle((-0.5, -0.5), H, L, fill=False, hatch="///", edgecolor="#bbbbbb", lw=0, zorder=0)
    )
    _heatmap(
        fig,
        ax,
        delta,
        "cost of removing each head",
        "bits/char lost (ablated - clean)",
        cmap="RdBu_r",
        vmin=-vmax,
        vmax=vmax,
        fmt="+.2f",
    )
    missing = [i for i in range(L) if i not in result.layers]
    note = (
        f"hatched: not ablated (only layers {', '.join(map(str, result.layers))} were, to save "
        "time)"
        if missing
        else "every head was ablated"
    )
    ax.set_xlabel(f"head\n{note}")
    fig.suptitle(
        f"{result.model}: {result.method}-ablation of each head on {result.chars:,} characters\n"
        f"(clean: {result.clean_bpc:.3f} bits/char; red = the model needs this head)",
        fontsize=11,
    )
    return save_figure(fig, path)


def logit_lens(results: list[LogitLensResult], path: str | os.PathLike) -> Path:
    """Per model: bits/char read off the residual stream after each layer, and how often that
    layer's top-1 prediction is already the final one. Depth is a fraction of each model's layers
    so models of different depth share the x axis."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6), layout="constrained")
    for r, style in zip(results, _styles(len(results))):
        depth = [layer / r.layers[-1] for layer in r.layers]
        marker = "o" if len(r.layers) <= 13 else "."
        label = f"{r.model} ({r.layers[-1]} layers)"
        axes[0].plot(depth, r.bpc, marker=marker, label=label, **style)
        axes[1].plot(
            depth, [100 * a for a in r.top1_agreement], marker=marker, label=label, **style
        )
    axes[0].set_yscale("log")
    for fmt in (axes[0].yaxis.set_major_formatter, axes[0].yaxis.set_minor_formatter):
        fmt(FuncFormatter(lambda v, _: f"{v:g}"))
    axes[0].set_ylabel("bits per character (log scale; lower is better)")
    axes[0].set_title("loss if the model stopped after this layer")
    axes[1].set_ylabel("positions whose top-1 token is the final one (%)")
    axes[1].set_ylim(0, 105)
    axes[1].set_title("agreement with the final layer's top-1 prediction")
    for ax in axes:
        ax.set_xlabel("depth: layer / number of layers (0 = embeddings, 1 = output)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(
        "Logit lens: the residual stream after each layer, read through the final norm and the "
        "unembedding",
        fontsize=11,
    )
    return save_figure(fig, path)


def _log_bins(r: PositionLoss, n_bins: int = 32) -> tuple[list[float], list[float]]:
    """The curve averaged (weighted by characters scored) over log-spaced bins of positions."""
    edges = np.unique(np.geomspace(1, len(r.bpc), n_bins).astype(int))
    xs, ys = [], []
    for lo, hi in zip(edges[:-1], edges[1:]):
        pts = [
            (x, b, r.chars[x]) for x in range(lo, hi) if (b := r.bpc[x]) is not None and r.chars[x]
        ]
        if pts:
            w = sum(c for *_, c in pts)
            xs.append(sum(x * c for x, _, c in pts) / w)
            ys.append(sum(b * c for _, b, c in pts) / w)
    return xs, ys


def loss_by_position(results: list[PositionLoss], path: str | os.PathLike) -> Path:
    """Bits/char at each character position of the context window, every model on one axis: how
    much a model gains from having read more of the text (in-context learning)."""
    fig, ax = plt.subplots(figsize=(9, 4.8), layout="constrained")
    for r, style in zip(results, _styles(len(results))):
        raw = [(x, b) for x, b in enumerate(r.bpc) if b is not None and x > 0]
        if raw:
            ax.plot(*zip(*raw), color=style["color"], alpha=0.2, lw=0.8)
        xs, ys = _log_bins(r)
        ax.plot(
            xs,
            ys,
            marker="o",
            ms=3.5,
            label=f"{r.model} ({r.overall_bpc:.2f} overall, {r.windows} windows)",
            **style,
        )
    ax.set_xscale("log")
    ax.set_xlabel("character position in the context window (characters read before it, log scale)")
    ax.set_ylabel("bits per character (lower is better)")
    ax.set_title(
        "Loss by position in the context: faint = each position, line = averaged over "
        "log-spaced bins",
        fontsize=10,
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def head_formation(history: list[EvalRow], path: str | os.PathLike) -> Path | None:
    """Previous-token and induction score of every head against tokens seen during training, with
    the validation loss on a twin axis, so a head forming can be lined up with a loss drop. Rows
    without per-head scores are skipped; None (no file) when no row has them."""
    rows = [r for r in history if r.heads]
    if not rows:
        return None
    heads = [r.heads for r in rows if r.heads]  # the scores of each row of rows
    tokens = [r.tokens for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(14, 4.8), layout="constrained")
    for ax, key, name in (
        (axes[0], "previous_token", "previous-token score"),
        (axes[1], "induction", "induction score"),
    ):
        _formation_panel(ax, tokens, [_table(h[key]) for h in heads], name)
        loss_ax = ax.twinx()
        loss_ax.plot(
            tokens, [r.val_loss for r in rows], "k--", lw=1.2, alpha=0.7, label="validation loss"
        )
        loss_ax.set_ylabel("validation loss (nats per token, dashed)")
        loss_ax.legend(loc="center right", fontsize=8)
    fig.suptitle(
        "From-scratch GPT: when each head forms during training (scores on random tokens repeated "
        "twice, at each evaluation)",
        fontsize=11,
    )
    return save_figure(fig, path)


def _formation_panel(ax: Axes, tokens: list[int], tables: list[np.ndarray], name: str) -> None:
    """One line per head; the ``HIGHLIGHT`` heads strongest at the end in colour, the rest grey."""
    series = np.stack(tables)  # [eval, layer, head]
    _, L, H = series.shape
    last = np.nan_to_num(series[-1], nan=-1.0)
    order = sorted(np.ndindex(L, H), key=lambda lh: -last[lh])
    marker = "o" if len(tokens) <= 20 else None
    for rank, (i, h) in enumerate(reversed(order)):  # strongest drawn last, on top
        strong = rank >= len(order) - HIGHLIGHT
        ax.plot(
            tokens,
            series[:, i, h],
            marker=marker,
            ms=3,
            lw=1.8 if strong else 0.8,
            color=None if strong else "#c8c8c8",
            label=f"L{i}H{h}" if strong else None,
        )
    ax.set_xlabel("tokens seen")
    ax.set_ylabel(f"{name} (mean attention weight)")
    ax.set_ylim(0, 1)
    ax.set_title(
        f"{name} of each head (the {min(HIGHLIGHT, L * H)} strongest at the end in colour)",
        fontsize=10,
    )
    ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
    ax.grid(alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    # strongest first
    ax.legend(handles[::-1], labels[::-1], loc="upper left", fontsize=8)


def activation_patching(result: PatchingResult, path: str | os.PathLike) -> Path:
    """Activation patching of one clean / corrupted pair: the fraction of the target's logit
    difference recovered by patching each site (residual stream, attention output and MLP output
    by layer and position; each head at every position), and the direct logit attribution of
    each head on the clean prompt."""
    r = result
    L, T = len(r.resid_pre), len(r.tokens_clean)
    labels = [
        _label(c) if c == x else f"{_label(x)}→{_label(c)}"
        for c, x in zip(r.tokens_clean, r.tokens_corrupt)
    ]
    fig, axes = plt.subplots(
        2,
        3,
        figsize=(min(22.0, max(13.0, 0.15 * T * 3 + 3)), min(16.0, max(7.0, 0.3 * L * 2 + 3))),
        layout="constrained",
    )
    kw = dict(cmap="RdBu_r", vmin=-1.0, vmax=1.0, aspect="auto")
    for ax, table, name in zip(axes[0], (r.resid_pre, r.attn_out, r.mlp_out),
                               ("residual stream (before each layer)", "attention output",
                                "MLP output")):  # fmt: skip
        im = ax.imshow(np.ma.masked_invalid(_table(table)), **kw)
        ax.set_title(name, fontsize=10)
        ax.set_xticks(range(T), labels, rotation=90, fontsize=6 if T > 24 else 8)
        ax.set_yticks(range(L) if L <= 16 else range(0, L, 2))
        ax.set_ylabel("layer")
    fig.colorbar(im, ax=axes[0, 2], shrink=0.85, label="fraction of the logit difference recovered")
    _heatmap(fig, axes[1, 0], _table(r.heads), "each head, patched at every position",
             "fraction recovered", cmap="RdBu_r", vmin=-1, vmax=1, fmt=".2f")  # fmt: skip
    dla = _table(r.dla.heads)
    m = float(np.abs(dla).max()) or 1.0
    _heatmap(fig, axes[1, 1], dla, "direct logit attribution of each head (clean prompt)",
             "logit", cmap="PuOr", vmin=-m, vmax=m, fmt=".1f")  # fmt: skip
    parts = {"embed": r.dla.embed, **{f"MLP {i}": v for i, v in enumerate(r.dla.mlp)}}
    parts |= {"heads": sum(map(sum, r.dla.heads)), "biases": sum(r.dla.attn_bias) + r.dla.rest}
    ax = axes[1, 2]
    ax.barh(list(parts), list(parts.values()), color=["tab:purple" if v > 0 else "tab:orange"
                                                      for v in parts.values()])  # fmt: skip
    ax.invert_yaxis()
    ax.axvline(0, color="black", lw=0.6)
    ax.set_title(f"direct logit attribution: the parts add up to {r.dla.logit:.2f}", fontsize=10)
    ax.tick_params(axis="y", labelsize=7 if len(parts) > 16 else 9)
    fig.suptitle(
        f"{r.model}: activation patching for target {_label(r.target)!r} "
        f"(logit {r.logit_clean:.2f} clean, {r.logit_corrupt:.2f} corrupted); "
        "1 = patching this site from the clean run restores the clean answer",
        fontsize=11,
    )
    return save_figure(fig, path)
