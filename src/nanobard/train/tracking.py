"""Experiment trackers: ``--report-to tensorboard|trackio|wandb|none``.

A tracker receives the scalars a run already writes to its metrics file, under the same names:
each evaluation's ``val_loss``, ``train_loss``, ``lr``, ``tokens``, ``tokens_per_s``,
``last_batch_loss`` and ``elapsed_s`` at its ``step``, and the study's head scores as
``heads/<score>/L<layer>H<head>``. Fine-tuning adds the Trainer's own logs (``train/loss``,
``train/grad_norm``, ``train/learning_rate``, as transformers' integrations name them).

Where each one writes:

- TensorBoard: event files in ``RUN/tensorboard/<track>`` (``track``: ``scratch`` or
  ``finetune``), so ``tensorboard --logdir runs`` shows every run folder side by side, each
  named by its folder.
- trackio: its local store (``~/.cache/huggingface/trackio``, or ``$TRACKIO_DIR``), project
  ``nanobard``; ``trackio show --project nanobard`` opens the dashboard.
- Weights & Biases: project ``nanobard`` (``$WANDB_PROJECT`` wins), offline into ``RUN/wandb``
  unless the user is logged in (``WANDB_API_KEY`` or ``wandb login``) or set ``WANDB_MODE``.

The runs of a study are grouped under the study folder's name (trackio and wandb groups; in
TensorBoard the folder itself). The trackers are optional installs (``pip install
'nanobard[tensorboard]'``, ``[trackio]``, ``[wandb]``); asking for a missing one is a one-line
error before anything trains. Only the main process reports (under torchrun: rank 0).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import logging
import math
import netrc
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

from nanobard.config import REPORT_TO
from nanobard.errors import NanobardError
from nanobard.records import EvalRow

logger = logging.getLogger(__name__)

PROJECT = "nanobard"
TENSORBOARD_DIR = "tensorboard"  # inside a run folder, one sub-folder per track
# the package each tracker needs, and the extra that installs it
_NEEDS = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb"}


class TrackerMissing(NanobardError):
    """The chosen tracker is not installed."""


def check_tracker(kind: str) -> None:
    """Raise ``TrackerMissing`` (one line: how to install it) when ``kind`` cannot run here;
    a ``ConfigError``-like ``NanobardError`` for a name that is no tracker."""
    if kind not in REPORT_TO:
        raise NanobardError(f"--report-to {kind}: choose one of {', '.join(REPORT_TO)}")
    package = _NEEDS.get(kind)
    if package and importlib.util.find_spec(package) is None:
        raise TrackerMissing(
            f"--report-to {kind} needs the {package} package: pip install 'nanobard[{kind}]' "
            f"(or pip install {package}), or leave --report-to out"
        )


def row_scalars(row: EvalRow) -> dict[str, float]:
    """The numbers of a metrics-file row by their metrics-file names (``step`` is the x axis,
    not a scalar); head scores flattened to ``heads/<score>/L<layer>H<head>``."""
    out: dict[str, float] = {}
    for key, value in row.to_dict().items():
        if key == "step" or value is None:
            continue
        if key == "heads":
            for score, layers in value.items():
                for li, heads in enumerate(layers):
                    for hi, v in enumerate(heads):
                        out[f"heads/{score}/L{li}H{hi}"] = float(v)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = float(value)
    return out


class Tracker:
    """Where a run's scalars go besides its metrics file. This base class is ``none``: it
    takes everything and keeps nothing."""

    kind = "none"
    view = ""  # how to look at what was logged, for the CLI's last lines

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        """Log ``scalars`` at ``step`` (non-finite values are skipped: trackers differ on them)."""
        finite = {k: float(v) for k, v in scalars.items() if math.isfinite(v)}
        if finite:
            self._log(finite, step)

    def log_row(self, row: EvalRow) -> None:
        self.log(row_scalars(row), row.step)

    def on_eval(self, model: Any, row: EvalRow) -> EvalRow:
        """As a training loop's evaluation callback (``train(on_eval=[...])``): log the row, pass
        it on unchanged. Put it after the callbacks that fill the row in (head scores)."""
        self.log_row(row)
        return row

    def _log(self, scalars: dict[str, float], step: int) -> None:
        pass

    def close(self) -> None:
        pass


class _TensorBoard(Tracker):
    kind = "tensorboard"

    def __init__(self, log_dir: Path, config: Mapping[str, Any] | None) -> None:
        self.log_dir, self.config = log_dir, config
        self.writer: Any = None  # a SummaryWriter once something is logged
        # the folder that holds this run folder: its runs side by side
        self.view = f"tensorboard --logdir {log_dir.parent.parent.parent}"

    def _log(self, scalars: dict[str, float], step: int) -> None:
        if self.writer is None:  # created at the first value: a run that fails first leaves none
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.log_dir))
            if self.config:
                self.writer.add_text("config", _config_markdown(self.config), step)
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class _Trackio(Tracker):
    kind = "trackio"

    def __init__(self, name: str, group: str | None, config: Mapping[str, Any] | None,
                 resume: bool) -> None:  # fmt: skip
        import trackio

        self.trackio = trackio
        with _quiet("trackio"):  # its banner goes to the log: the CLI prints where to look once
            self.run = trackio.init(project=PROJECT, name=name, group=group,
                                    config=dict(config or {}),
                                    resume="allow" if resume else "never",
                                    embed=False)  # fmt: skip
        self.view = f'trackio show --project "{PROJECT}"'

    def _log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        with _quiet("trackio"):
            self.trackio.finish()  # the module's finish: its exit hook then has nothing to do


@contextmanager
def _quiet(who: str) -> Iterator[None]:
    """A library's own prints to stdout, sent to the debug log instead."""
    buf = io.StringIO()
    try:
        with redirect_stdout(buf):
            yield
    finally:
        for line in buf.getvalue().splitlines():
            if line.strip():
                logger.debug("%s: %s", who, line)


def wandb_logged_in() -> bool:
    """An API key in the environment or in ~/.netrc (where ``wandb login`` puts it)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        path = os.environ.get("NETRC") or None
        return netrc.netrc(path).authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


class _Wandb(Tracker):
    kind = "wandb"

    def __init__(self, run_dir: Path, name: str, group: str | None,
                 config: Mapping[str, Any] | None, resume: bool) -> None:  # fmt: skip
        import wandb

        mode: Any = os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", PROJECT), name=name,
                              group=group, config=dict(config or {}), dir=str(run_dir), mode=mode,
                              resume="allow" if resume else None)  # fmt: skip
        self.view = (
            f"offline in {run_dir / 'wandb'}; `wandb sync {run_dir / 'wandb'}/offline-run-*` "
            "uploads it once you are logged in"
            if mode == "offline"
            else str(getattr(self.run, "url", "") or "wandb")
        )

    def _log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


def _config_markdown(config: Mapping[str, Any]) -> str:
    return "\n".join(f"    {k}: {v}" for k, v in config.items())


def _is_main_process() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


@contextmanager
def tracking(
    kind: str,
    run_dir: str | os.PathLike,
    track: str,
    *,
    group: str | None = None,
    config: Mapping[str, Any] | None = None,
    resume: bool = False,
) -> Iterator[Tracker]:
    """A tracker for one track (``scratch`` or ``finetune``) of the run in ``run_dir``, closed
    (flushed) on leaving, also after an error. Named by the run folder, or ``GROUP/track`` inside
    a group (a study). ``config``: flat name -> value, shown beside the curves."""
    check_tracker(kind)
    run = Path(run_dir)
    name = f"{group}/{track}" if group else run.name
    tracker: Tracker
    if kind == "none" or not _is_main_process():
        tracker = Tracker()
    elif kind == "tensorboard":
        tracker = _TensorBoard(run / TENSORBOARD_DIR / track, config)
    elif kind == "trackio":
        tracker = _Trackio(name, group, config, resume)
    else:
        tracker = _Wandb(run, name, group, config, resume)
    if tracker.kind != "none":
        logger.info("reporting %s to %s (%s)", track, tracker.kind, tracker.view)
    try:
        yield tracker
    finally:
        tracker.close()


def flat_config(*configs: Any) -> dict[str, Any]:
    """Config dataclasses as one flat ``section.field -> value`` mapping (``model.n_layer``,
    ``train.lr``, ``finetune.lora_r``), plain values only."""
    out: dict[str, Any] = {}
    for cfg in configs:
        section = type(cfg).__name__.removesuffix("Config").lower()
        for key, value in dataclasses.asdict(cfg).items():
            if isinstance(value, int | float | str | bool) or value is None:
                out[f"{section}.{key}"] = value
    return out


__all__ = [
    "PROJECT",
    "TENSORBOARD_DIR",
    "Tracker",
    "TrackerMissing",
    "check_tracker",
    "flat_config",
    "row_scalars",
    "tracking",
    "wandb_logged_in",
]
