"""``nanobard compare RUN ...``: the curves and headline numbers of several runs together, what an
LR sweep needs without any tracker.

Any run folder works: ``nanobard train`` (``metrics.jsonl``, the from-scratch track),
``nanobard finetune`` (``metrics_hf.jsonl``) or ``nanobard run`` (both: two rows). A run still
training is read as far as it got. Each track is drawn in its own panel: from-scratch losses are
nats per character, fine-tuning losses nats per token of the pretrained model's tokenizer, and
the two are not one scale. The table names the configuration values that differ between the
runs of a track (for an LR sweep: ``train.lr``), so a row says what made it different.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nanobard.errors import NanobardError
from nanobard.interp.figures import check_figure_path, plt, save_figure
from nanobard.records import EvalRow, Record, TornRecord, read_json
from nanobard.rundir import RunDir

TRACKS = {
    # track: (metrics file, loss unit, the configuration files to read, first found wins)
    "scratch": (RunDir.METRICS, "nats/char", (RunDir.CONFIG_SCRATCH, RunDir.CONFIG)),
    # a study's config.json has both tracks' (its "finetune" section, written before training)
    "finetune": (
        RunDir.METRICS_HF,
        "nats/token",
        (f"{RunDir.FINETUNED}/{RunDir.FINETUNED_INFO}", RunDir.CONFIG),
    ),
}
# configuration keys never worth a column: where a run wrote, not what it did
_IGNORED = ("device", "torch", "out_dir")


class NotARun(NanobardError):
    """A folder given to ``compare`` holds no metrics file."""


@dataclass
class RunSummary(Record):
    """One track of one run folder: its curve and its headline numbers."""

    name: str  # the folder's name, with the track inside a study
    path: Path
    track: str  # "scratch" or "finetune"
    unit: str  # of the losses: "nats/char" or "nats/token"
    steps: int
    seconds: float  # wall time at the last evaluation
    best_val_loss: float
    best_step: int
    final_val_loss: float
    # bits per character, and what they were measured on: "val text" (the model scored on the
    # validation text: a finished fine-tuning, a finished study's from-scratch model) or "val
    # batches" (a from-scratch run's best evaluation, its loss being per character already: the
    # fixed validation batches it evaluated on, the best of several evaluations)
    bits_per_char: float | None
    bits_on: str
    finished: bool  # the run wrote its result file
    config: dict[str, Any] = field(default_factory=dict)  # flattened: "train.lr" -> 0.003
    differs: dict[str, Any] = field(default_factory=dict)  # the keys that differ in its track
    history: list[EvalRow] = field(default_factory=list)


@dataclass
class Comparison(Record):
    runs: list[RunSummary]
    figure: Path | None = None

    def table(self) -> str:
        """The headline numbers, one line per run and track."""
        width = max([len(r.name) for r in self.runs] + [3])
        differs = [_differs(r.differs) for r in self.runs]
        dw = max([len(d) for d in differs] + [7])
        lines = [
            f"{'run':<{width}}  {'track':<8} {'differs':<{dw}} {'steps':>6} {'time s':>7} "
            f"{'best val':>9} {'at step':>7} {'final val':>9} {'bits/char':>9}  on"
        ]
        for r, d in zip(self.runs, differs, strict=True):
            bpc = "-" if r.bits_per_char is None else f"{r.bits_per_char:.4f}"
            lines.append(
                f"{r.name:<{width}}  {r.track:<8} {d or '-':<{dw}} {r.steps:>6} "
                f"{r.seconds:>7.1f} {r.best_val_loss:>9.4f} {r.best_step:>7} "
                f"{r.final_val_loss:>9.4f} {bpc:>9}  {r.bits_on or '-'}"
                f"{'' if r.finished else '  (still running)'}"
            )
        return "\n".join(lines)


def _differs(differs: dict[str, Any], most: int = 3) -> str:
    shown = ", ".join(f"{k}={_short(v)}" for k, v in list(differs.items())[:most])
    return shown + (f" (+{len(differs) - most} more)" if len(differs) > most else "")


def _short(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    if isinstance(obj, list):
        return {prefix[:-1]: tuple(obj)}
    return {prefix[:-1]: obj}


def _config(folder: Path, track: str) -> dict[str, Any]:
    """The run's configuration as flat ``section.field`` keys (empty when it has none yet)."""
    for name in TRACKS[track][2]:
        try:
            data = read_json(folder / name)
        except (OSError, TornRecord):
            continue
        if not isinstance(data, dict):
            continue
        if track == "scratch":
            sections = {k: data[k] for k in ("model", "train") if k in data}
            if "corpus" in data:
                sections["corpus"] = data["corpus"]
        elif "config" in data:  # model_hf_finetuned/nanobard.json
            sections = {"finetune": data["config"]}
        elif "finetune" in data:  # a study's config.json
            sections = {"finetune": data["finetune"]}
        else:
            continue
        if not any(sections.values()):
            continue
        flat = _flatten(sections)
        return {k: v for k, v in flat.items() if k.split(".")[-1] not in _IGNORED}
    return {}


def _summary(folder: Path, track: str, in_study: bool) -> RunSummary | None:
    metrics, unit, _ = TRACKS[track]
    rows = RunDir(folder).read_metrics(metrics)
    if not rows:
        return None
    best = min(rows, key=lambda r: r.val_loss if math.isfinite(r.val_loss) else math.inf)
    bits: float | None = None
    bits_on = ""
    result = folder / (RunDir.TRAIN_RESULT if track == "scratch" else RunDir.FINETUNE_RESULT)
    finished = result.exists()
    if track == "scratch":
        bits, bits_on = _scored(folder, ("scratch", "bits_per_char"), RunDir.HEADLINE)
        if bits is None:
            bits, bits_on = best.val_loss / math.log(2), "val batches"
    elif finished:
        bits, bits_on = _scored(folder, ("after", "bits_per_char"), RunDir.FINETUNE_RESULT)
        finished = bits is not None
    return RunSummary(
        name=f"{folder.name}/{track}" if in_study else folder.name,
        path=folder,
        track=track,
        unit=unit,
        steps=rows[-1].step,
        seconds=rows[-1].elapsed_s,
        best_val_loss=best.val_loss,
        best_step=best.step,
        final_val_loss=rows[-1].val_loss,
        bits_per_char=bits,
        bits_on=bits_on,
        finished=finished,
        config=_config(folder, track),
        history=rows,
    )


def _scored(folder: Path, keys: tuple[str, str], name: str) -> tuple[float | None, str]:
    """A bits-per-character score on the validation text from a record of the folder (the
    study's headline, a fine-tuning's result), when it has one."""
    try:
        value = read_json(folder / name)[keys[0]][keys[1]]
    except (OSError, TornRecord, KeyError, TypeError):
        return None, ""
    return (float(value), "val text") if isinstance(value, int | float) else (None, "")


def read_runs(folders: Sequence[str | os.PathLike]) -> list[RunSummary]:
    """Every track of every folder, in the order given; ``NotARun`` for a folder without any
    metrics file."""
    runs: list[RunSummary] = []
    for f in folders:
        folder = Path(f)
        if not folder.is_dir():
            raise NotARun(f"{folder} is not a folder; give run folders (nanobard train, "
                          "finetune or run --out)")  # fmt: skip
        in_study = (folder / RunDir.STAGES).exists()
        found = [s for t in TRACKS if (s := _summary(folder, t, in_study)) is not None]
        if not found:
            raise NotARun(
                f"{folder} has no {RunDir.METRICS} or {RunDir.METRICS_HF} with a row in it: not a "
                "run folder, or a run that has not evaluated yet"
            )
        runs += found
    for track in TRACKS:  # what differs between the runs of a track
        # over the runs that have a configuration (a fine-tuning still running has none yet)
        same = [r for r in runs if r.track == track and r.config]
        keys = sorted({k for r in same for k in r.config})
        varying = [
            k for k in keys if len({json.dumps(r.config.get(k), default=str) for r in same}) > 1
        ]
        for r in same:
            r.differs = {k: r.config.get(k) for k in varying}
    return runs


def compare_runs(
    folders: Sequence[str | os.PathLike], figure: str | os.PathLike | None = None
) -> Comparison:
    """Read the runs in ``folders`` and, with ``figure`` (.png, .svg or .pdf), draw their curves
    into that file."""
    if figure is not None:
        check_figure_path(figure, "--out")
    runs = read_runs(folders)
    out = Comparison(runs)
    if figure is not None:
        out.figure = comparison_figure(runs, figure)
    return out


def comparison_figure(runs: Sequence[RunSummary], path: str | os.PathLike) -> Path:
    """Per track, one row: validation loss by step (train loss dashed) and the learning rate by
    step, a colour per run."""
    tracks = [t for t in TRACKS if any(r.track == t for r in runs)]
    fig, axes = plt.subplots(len(tracks), 2, figsize=(13, 4.2 * len(tracks)), squeeze=False)
    colors = plt.get_cmap("tab10")
    for row, track in enumerate(tracks):
        loss_ax, lr_ax = axes[row]
        for i, r in enumerate([r for r in runs if r.track == track]):
            c = colors(i % 10)
            label = r.name + (f" ({_label(r.differs)})" if r.differs else "")
            steps = [h.step for h in r.history]
            loss_ax.plot(steps, [h.val_loss for h in r.history], "o-", color=c, label=label)
            train = [(h.step, h.train_loss) for h in r.history if h.train_loss is not None]
            if train:
                loss_ax.plot(*zip(*train), "--", color=c, alpha=0.5)
            lrs = [(h.step, h.lr) for h in r.history if h.lr is not None]
            if lrs:
                lr_ax.plot(*zip(*lrs), "o-", color=c, label=label, markersize=3)
        unit = TRACKS[track][1]
        loss_ax.set_title(f"{track}: validation loss (train dashed)")
        loss_ax.set_ylabel(f"cross-entropy ({unit})")
        lr_ax.set_title(f"{track}: learning rate")
        lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        for ax in (loss_ax, lr_ax):
            ax.set_xlabel("optimizer step")
            ax.grid(alpha=0.3)
        loss_ax.legend(fontsize=8)
    fig.suptitle(f"{len(runs)} run{'s' * (len(runs) != 1)} compared", fontsize=13)
    fig.tight_layout()
    return save_figure(fig, path)


def _label(differs: dict[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in differs.items())


__all__ = ["Comparison", "NotARun", "RunSummary", "compare_runs", "comparison_figure", "read_runs"]
