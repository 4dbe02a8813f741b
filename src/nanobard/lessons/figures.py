"""Figures of the measured lessons (lessons.py), matplotlib with the Agg backend: a result in, a PNG
path out. Nothing here trains or loads a model."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nanobard.interp.figures import save_figure  # noqa: E402
from nanobard.lessons.scratch import (  # noqa: E402
    CharAttention,
    MaskLesson,
    OverfitResult,
    SweepResult,
)
from nanobard.lessons.transfer import CrossoverResult, ForgettingResult  # noqa: E402

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    fig.tight_layout()
    return save_figure(fig, path)


def plot_crossover(result: CrossoverResult, path: str | os.PathLike) -> Path:
    """Bits/char against the fraction of training text (log axis): one line per track, the
    pretrained model's zero-shot score as a horizontal reference."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    xs = [p.fraction for p in result.points]
    ax.plot(
        xs,
        [p.scratch_bpc for p in result.points],
        "o-",
        color="tab:blue",
        label="trained from scratch",
    )
    ax.plot(
        xs,
        [p.finetuned_bpc for p in result.points],
        "s-",
        color="tab:orange",
        label=f"{result.pretrained} fine-tuned",
    )
    ax.axhline(
        result.zero_shot_bpc,
        color="tab:gray",
        ls="--",
        label=f"{result.pretrained} zero-shot (no training)",
    )
    for p in result.points:
        ax.annotate(
            f"{p.train_chars:,} chars",
            (p.fraction, max(p.scratch_bpc, p.finetuned_bpc)),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=8,
            color="dimgray",
        )
    ax.set_xscale("log")
    ax.set_xlabel("fraction of the training text used (log scale)")
    ax.set_ylabel(f"bits per character (first {result.score_chars:,} validation chars)")
    found = result.crossover_fraction
    verdict = (
        f"scratch catches up at {found:g}"
        if found is not None
        else "fine-tuning wins at every fraction"
    )
    ax.set_title(f"{result.corpus}: {result.budget_s:g} s of training per point; {verdict}")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    return _save(fig, path)


def plot_forgetting(result: ForgettingResult, path: str | os.PathLike) -> Path:
    """Grouped bars: general English before/after next to the domain before/after, each pair
    annotated with its change (bits/char)."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    groups = [
        ("general English", result.general_before, result.general_after, result.general_change_bpc),
        (
            "domain (validation text)",
            result.domain_before,
            result.domain_after,
            result.domain_change_bpc,
        ),
    ]
    w = 0.38
    for i, (_, before, after, change) in enumerate(groups):
        b = ax.bar(
            i - w / 2,
            before.bits_per_char,
            w,
            color="tab:gray",
            label="before fine-tuning" if i == 0 else None,
        )
        a = ax.bar(
            i + w / 2,
            after.bits_per_char,
            w,
            color="tab:orange",
            label="after fine-tuning" if i == 0 else None,
        )
        ax.bar_label(b, fmt="%.3f", fontsize=8)
        ax.bar_label(a, fmt="%.3f", fontsize=8)
        word = "worse: forgetting" if change > 0 else "better"
        top = max(before.bits_per_char, after.bits_per_char)
        ax.annotate(
            f"{change:+.3f} bits/char ({word})",
            (i, top),
            textcoords="offset points",
            xytext=(0, 16),
            ha="center",
            fontsize=9,
            color="tab:red" if change > 0 else "tab:green",
        )
    ax.set_xticks(range(len(groups)), [g[0] for g in groups])
    ax.set_ylabel("bits per character (lower is better)")
    ax.set_ylim(0, ax.get_ylim()[1] * 1.15)
    ax.set_title(f"{result.base}: what fine-tuning did")
    ax.legend(loc="lower right")
    return _save(fig, path)


def plot_lr_sweep(result: SweepResult, path: str | os.PathLike) -> Path:
    """Validation curves per learning rate, and the best validation loss against the learning rate
    (log axis; a diverged run is marked x at the top)."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.3))
    colors = plt.cm.viridis(np.linspace(0, 0.9, max(1, len(result.runs))))
    for run, c in zip(result.runs, colors):
        ax1.plot(
            run.steps,
            run.val_loss,
            "o-",
            ms=3,
            color=c,
            label=f"lr {run.lr:g}" + (" (diverged)" if run.diverged else ""),
        )
    ax1.set_xlabel("step")
    ax1.set_yscale("log")  # a run that blows up would flatten the others
    ax1.set_ylabel("validation loss (nats per character, log scale)")
    ax1.set_title(f"{len(result.runs)} runs of {result.steps} steps")
    ax1.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    ok = [r for r in result.runs if r.best_val_loss is not None and not r.diverged]
    best = [r.best_val_loss for r in ok if r.best_val_loss is not None]  # all of ok's, as floats
    ax2.plot([r.lr for r in ok], best, "o-", color="tab:blue")
    top = max(best, default=1.0)
    bad = [r.lr for r in result.runs if r not in ok]
    if bad:
        ax2.plot(bad, [top] * len(bad), "x", color="tab:red", ms=10, label="diverged")
        ax2.legend()
    if result.best_lr is not None:
        ax2.axvline(result.best_lr, color="tab:green", ls=":")
    ax2.set_xscale("log")
    ax2.set_xlabel("learning rate (log scale)")
    ax2.set_ylabel("best validation loss (nats per character)")
    ax2.set_title(
        f"best: lr {result.best_lr:g}" if result.best_lr is not None else "every run diverged"
    )
    ax2.grid(alpha=0.3, which="both")
    return _save(fig, path)


def plot_encoder_vs_decoder(lesson: MaskLesson, path: str | os.PathLike) -> Path:
    """Training loss per step with and without the causal mask; the losses measured three ways;
    the cloze accuracies."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    for run, color in ((lesson.causal, "tab:blue"), (lesson.no_mask, "tab:red")):
        axes[0].plot(
            run.losses, color=color, label="causal mask (decoder)" if run.causal else "no mask"
        )
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("training loss (nats per character)")
    axes[0].set_title("training loss")
    axes[0].legend()
    axes[0].grid(alpha=0.3)
    kinds = ["train", "validation", "validation,\nleft to right"]
    w = 0.38
    for i, (run, color) in enumerate(((lesson.causal, "tab:blue"), (lesson.no_mask, "tab:red"))):
        vals = [run.train_loss, run.val_loss, run.left_to_right_loss]
        bars = axes[1].bar(
            np.arange(3) + (i - 0.5) * w,
            vals,
            w,
            color=color,
            label="causal mask" if run.causal else "no mask",
        )
        axes[1].bar_label(bars, fmt="%.2f", fontsize=8)
    axes[1].set_xticks(range(3), kinds)
    axes[1].set_ylabel("loss (nats per character)")
    axes[1].set_title("the no-mask model peeks: only left-to-right is honest")
    axes[1].legend()
    c = lesson.cloze
    names = [
        "left side only\n(decoder)",
        "both sides\n(decoder scoring)",
        "no-mask model\n(copies the blank)",
    ]
    accs = [c.left_accuracy, c.both_sides_accuracy, c.no_mask_accuracy]
    bars = axes[2].bar(names, accs, color=["tab:blue", "tab:green", "tab:red"])
    notes = [f"{v:.0%}" for v in accs[:2]] + [
        f"{accs[2]:.0%} (copied the blank {c.no_mask_copy_rate:.0%})"
    ]
    axes[2].bar_label(bars, labels=notes)
    axes[2].set_ylim(0, 1)
    axes[2].set_ylabel(f"hidden characters guessed right (of {c.blanks})")
    axes[2].set_title("fill in a blank")
    return _save(fig, path)


def plot_overfit(result: OverfitResult, path: str | os.PathLike) -> Path:
    """Loss on the one batch (log axis) and the gradient norm, per step."""
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(result.losses, color="tab:blue")
    ax1.set_yscale("log")
    ax1.set_xlabel("step")
    ax1.set_ylabel("loss on the batch (nats per character, log scale)")
    ax1.set_title(
        f"one batch: {result.losses[0]:.2f} -> {result.losses[-1]:.3f} "
        f"({result.reduction:.0f}x lower)"
    )
    ax1.grid(alpha=0.3, which="both")
    ax2.plot(result.grad_norms, color="tab:purple")
    ax2.set_xlabel("step")
    ax2.set_ylabel("gradient L2 norm (before clipping)")
    ax2.set_title("gradient norm")
    ax2.grid(alpha=0.3)
    return _save(fig, path)


def plot_attention_on_characters(result: CharAttention, path: str | os.PathLike) -> Path:
    """Both models' attention over previous characters, one row per compared prediction (the
    character it predicts on the left), each weight times the row's context length so that rows of
    different lengths compare (1 = an even spread); and their overlap per row, with the overlap of
    the character model with an even spread as a reference."""
    n_chars = len(result.text)
    mats = []
    for rows in (result.scratch, result.pretrained):
        m = np.full((len(rows), n_chars), np.nan)
        for r, (target, dist) in enumerate(zip(result.targets, rows)):
            m[r, result.context_start : target] = np.asarray(dist) * len(dist)  # 1 = an even spread
        mats.append(m)
    fig, axes = plt.subplots(
        1,
        3,
        figsize=(16, max(3.5, 0.22 * len(result.targets) + 1.5)),
        gridspec_kw={"width_ratios": [4, 4, 1.6]},
    )
    both = np.concatenate([m.ravel() for m in mats])
    # one scale for both
    vmax = max(2.0, float(np.nanpercentile(both, 98))) if np.isfinite(both).any() else 2.0
    for ax, m, title in (
        (axes[0], mats[0], "character model"),
        (axes[1], mats[1], "BPE model, mapped to characters"),
    ):
        im = ax.imshow(m, aspect="auto", cmap="viridis", vmin=0, vmax=vmax)
        fig.colorbar(
            im, ax=ax, fraction=0.04, pad=0.01, label="weight x context length (1 = even spread)"
        )
        ax.set_xticks(range(n_chars), [_show(ch) for ch in result.text], fontsize=6)
        ax.set_yticks(
            range(len(result.targets)), [_show(result.text[t]) for t in result.targets], fontsize=7
        )
        ax.set_xlabel("attended character")
        ax.set_title(title)
    axes[0].set_ylabel("predicted character")
    y = np.arange(len(result.targets))
    axes[2].barh(y, result.overlap, color="tab:green", label="overlap")
    axes[2].plot(result.uniform_overlap, y, "k|", ms=10, label="vs uniform")
    axes[2].set_ylim(len(y) - 0.5, -0.5)
    axes[2].set_xlim(0, 1)
    axes[2].set_yticks([])
    axes[2].set_title(
        f"overlap {result.mean_overlap:.2f}\n(uniform {result.mean_uniform_overlap:.2f})"
    )
    axes[2].legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def _show(ch: str) -> str:
    """A character as a readable tick label."""
    return {" ": "\u2423", "\n": "\\n", "\t": "\\t"}.get(ch, ch)
