"""Experiment trackers: ``--report-to tensorboard|trackio|wandb|none``.

A tracker receives the scalars a run already writes to its metrics file, under the metrics file's
names prefixed by the track: each evaluation's ``scratch/val_loss``, ``scratch/train_loss``,
``scratch/lr``, ``scratch/tokens``, ``scratch/tokens_per_s``, ``scratch/last_batch_loss`` and
``scratch/elapsed_s`` at its ``step`` (``finetune/...`` for fine-tuning), and the study's head
scores as ``scratch/heads/<score>/L<layer>H<head>``. Fine-tuning adds the Trainer's own logs as
``finetune/trainer/loss``, ``.../grad_norm``, ``.../learning_rate``. The prefix keeps the two units
apart: from-scratch losses are nats per character, fine-tuning losses nats per token of another
tokenizer, and no chart should draw both on one axis.

Where each one writes:

- TensorBoard: event files in ``RUN/tensorboard/<track>`` (``track``: ``scratch`` or
  ``finetune``), so ``tensorboard --logdir runs`` shows every run folder side by side, each
  named by its folder. A fresh run replaces its track's event files; a resumed one purges the
  points past its checkpoint, as its metrics file does.
- trackio: its local store (``~/.cache/huggingface/trackio``, or ``$TRACKIO_DIR``), project
  ``nanobard``; ``trackio show --project nanobard`` opens the dashboard. A resumed run appends to
  the run of its name.
- Weights & Biases: project ``nanobard`` (``$WANDB_PROJECT`` wins), offline into ``RUN/wandb``
  unless the user is logged in (``WANDB_API_KEY`` or ``wandb login``) or set ``WANDB_MODE``; a
  resumed run continues the same wandb run (its id is kept in ``RUN/wandb/<track>.id``).

The runs of a study are grouped under the study folder's name (trackio and wandb groups; in
TensorBoard the folder itself). Every tracker starts at the first value logged, so a command
that fails before training leaves nothing behind. The trackers are optional installs
(``pip install 'nanobard[tensorboard]'``, ``[trackio]``, ``[wandb]``); asking for a missing one is
a one-line error before anything runs. Only the main process reports (under torchrun: rank 0).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import logging
import math
import netrc
import os
import shutil
import uuid
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
    takes everything and keeps nothing. ``track`` prefixes every tag (``scratch/val_loss``)."""

    kind = "none"
    view = ""  # how to look at what was logged, for the CLI's last lines

    def __init__(self, track: str = "", resume: bool = False) -> None:
        self.track, self.resume = track, resume
        self.started = False

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        """Log ``scalars`` at ``step`` under ``track/`` (non-finite values are skipped: trackers
        differ on them). The tracker starts at the first call."""
        finite = {f"{self.track}/{k}" if self.track else k: float(v)
                  for k, v in scalars.items() if math.isfinite(v)}  # fmt: skip
        if not finite:
            return
        if not self.started:
            self._start(step)
            self.started = True
        self._log(finite, step)

    def log_row(self, row: EvalRow) -> None:
        self.log(row_scalars(row), row.step)

    def on_eval(self, model: Any, row: EvalRow) -> EvalRow:
        """As a training loop's evaluation callback (``train(on_eval=[...])``): log the row, pass
        it on unchanged. Put it after the callbacks that fill the row in (head scores)."""
        self.log_row(row)
        return row

    def _start(self, first_step: int) -> None:
        pass

    def _log(self, scalars: dict[str, float], step: int) -> None:
        pass

    def close(self) -> None:
        """Flush and finish (only what started)."""
        if self.started:
            self._close()

    def _close(self) -> None:
        pass


class _TensorBoard(Tracker):
    kind = "tensorboard"

    def __init__(self, log_dir: Path, track: str, config: Mapping[str, Any] | None,
                 resume: bool) -> None:  # fmt: skip
        super().__init__(track, resume)
        self.log_dir, self.config = log_dir, config
        self.writer: Any = None
        # the folder that holds this run folder: its runs side by side
        self.view = where_to_look("tensorboard", log_dir.parent.parent)

    def _start(self, first_step: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        if not self.resume:  # a fresh run's curves replace an earlier run's in this folder
            shutil.rmtree(self.log_dir, ignore_errors=True)
        # resumed: points from the first step logged on are this session's (an interrupted
        # session may have logged past its checkpoint; its metrics file was trimmed alike)
        self.writer = SummaryWriter(log_dir=str(self.log_dir),
                                    purge_step=first_step if self.resume else None)  # fmt: skip
        if self.config:
            self.writer.add_text("config", _config_markdown(self.config), first_step)

    def _log(self, scalars: dict[str, float], step: int) -> None:
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, step)

    def _close(self) -> None:
        self.writer.close()


class _Trackio(Tracker):
    kind = "trackio"

    def __init__(self, name: str, group: str | None, track: str,
                 config: Mapping[str, Any] | None, resume: bool) -> None:  # fmt: skip
        super().__init__(track, resume)
        self.name, self.group, self.config = name, group, config
        self.view = where_to_look("trackio", Path())

    def _start(self, first_step: int) -> None:
        import trackio

        self.trackio = trackio
        with _quiet("trackio"):  # its banner goes to the log: the CLI prints where to look once
            self.run = trackio.init(project=PROJECT, name=self.name, group=self.group,
                                    config=dict(self.config or {}),
                                    resume="allow" if self.resume else "never",
                                    embed=False)  # fmt: skip

    def _log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def _close(self) -> None:
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
    """An API key in the environment or in ~/.netrc (where ``wandb login`` puts it, for
    api.wandb.ai or the host in ``$WANDB_BASE_URL``)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = (os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").split("//")[-1]
    try:
        path = os.environ.get("NETRC") or None
        return netrc.netrc(path).authenticators(host.split("/")[0]) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def wandb_mode() -> str:
    """``$WANDB_MODE`` when set, else online for a logged-in user and offline otherwise."""
    return os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")


def where_to_look(kind: str, run_dir: Path) -> str:
    """How to see what ``kind`` logged for the run in ``run_dir`` (the CLI's last line)."""
    if kind == "tensorboard":  # the folder above the run: its neighbours side by side
        return f"tensorboard --logdir {run_dir.parent}"
    if kind == "trackio":
        return f'trackio show --project "{PROJECT}"'
    if kind == "wandb":
        where = run_dir / "wandb"
        if wandb_mode() == "offline":
            return (f"offline in {where}; `wandb sync {where}/offline-run-*` uploads it once you "
                    "are logged in")  # fmt: skip
        return f"wandb, project {os.environ.get('WANDB_PROJECT', PROJECT)}"
    return ""


class _Wandb(Tracker):
    kind = "wandb"

    def __init__(self, run_dir: Path, name: str, group: str | None, track: str,
                 config: Mapping[str, Any] | None, resume: bool) -> None:  # fmt: skip
        super().__init__(track, resume)
        self.run_dir, self.name, self.group, self.config = run_dir, name, group, config
        self.mode: Any = wandb_mode()
        self.view = where_to_look("wandb", run_dir)

    def _start(self, first_step: int) -> None:
        import wandb

        folder = self.run_dir / "wandb"
        folder.mkdir(parents=True, exist_ok=True)
        id_file = folder / f"{self.track or 'run'}.id"
        run_id = id_file.read_text().strip() if self.resume and id_file.exists() else None
        if run_id is None:  # a fresh run: a new wandb run, whose id a resume finds here
            run_id = uuid.uuid4().hex[:12]
            id_file.write_text(run_id + "\n")
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", PROJECT), name=self.name,
                              group=self.group, config=dict(self.config or {}),
                              dir=str(self.run_dir), mode=self.mode, id=run_id,
                              resume="allow")  # fmt: skip
        if self.mode != "offline" and getattr(self.run, "url", None):
            self.view = str(self.run.url)

    def _log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def _close(self) -> None:
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
    (flushed) on leaving, also after an error (a tracker that fails to close then only warns: the
    error that ended the run is the one to see). Named by the run folder, or ``GROUP/track``
    inside a group (a study). ``config``: flat name -> value, shown beside the curves."""
    check_tracker(kind)
    run = Path(run_dir)
    name = f"{group}/{track}" if group else run.name
    tracker: Tracker
    if kind == "none" or not _is_main_process():
        tracker = Tracker(track, resume)
    elif kind == "tensorboard":
        tracker = _TensorBoard(run / TENSORBOARD_DIR / track, track, config, resume)
    elif kind == "trackio":
        tracker = _Trackio(name, group, track, config, resume)
    else:
        tracker = _Wandb(run, name, group, track, config, resume)
    if tracker.kind != "none":
        logger.info("reporting %s to %s (%s)", track, tracker.kind, tracker.view)
    failed = False
    try:
        yield tracker
    except BaseException:
        failed = True
        raise
    finally:
        try:
            tracker.close()
        except Exception as e:  # a tracker's own failure at the end
            if not failed:
                raise
            logger.warning("closing the %s tracker failed too: %s", tracker.kind, e)


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
    "where_to_look",
]
