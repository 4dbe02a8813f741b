"""One run folder, one contract: every file of a run is named here, and the metrics files are
read and written here (the typed results themselves are records, see records.py).
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from nanobard import files
from nanobard.errors import NanobardError
from nanobard.records import EvalRow, Record, TornRecord

logger = logging.getLogger(__name__)
_HELD: dict[Path, int] = {}  # run folders this process holds the lock of, with a nesting count
_COMMAND: list[str | None] = [None]  # the command line this process runs, set by the CLI


def set_command(argv: list[str] | None) -> None:
    """Record the command line (``nanobard`` and its arguments) that this process runs, or
    forget it (None: the command ended); the run folders and model cards it writes meanwhile
    quote it (``command_line``)."""
    _COMMAND[0] = None if argv is None else shlex.join(["nanobard", *argv])


def command_line() -> str | None:
    """The ``nanobard ...`` command this process runs, exactly as typed; None when nanobard is
    used from Python."""
    return _COMMAND[0]


class RunFolderBusy(NanobardError):
    """Another process is writing this run folder."""


@dataclass(frozen=True)
class RunDir:
    """The files of a run folder (``nanobard train``, ``finetune`` or ``run``)."""

    path: Path

    # the from-scratch track
    CONFIG = "config.json"  # the full configuration (of the run, or of the whole study)
    CONFIG_SCRATCH = "config_scratch.json"  # the scratch trainer's own, inside a study
    BEST = "model_scratch_best.pt"  # best checkpoint by validation loss
    LAST = "ckpt_last.pt"  # latest checkpoint with optimizer state, for resuming
    METRICS = "metrics.jsonl"
    TRAIN_RESULT = "train_result.json"
    # the pretrained track
    FINETUNED = "model_hf_finetuned"
    FINETUNED_INFO = "nanobard.json"  # inside FINETUNED: the base model, the config, the steps
    HF_CHECKPOINTS = "hf_checkpoints"
    METRICS_HF = "metrics_hf.jsonl"
    BEFORE = "finetune_before.json"
    FINETUNE_RESULT = "finetune_result.json"
    # what a fresh train or finetune would replace: a run is there already (cli/common.py)
    RUN_FILES = (BEST, LAST, TRAIN_RESULT, FINETUNED, HF_CHECKPOINTS, FINETUNE_RESULT)
    # the lessons
    CROSSOVER = "crossover.json"  # transfer.crossover's result
    # the study
    STAGES = "stages.json"
    HEADLINE = "metrics.json"
    SAMPLES = "samples.md"
    ATTENTION_ANALYSIS = "attention_analysis.json"
    ATTENTION_WEIGHTS = "attention_weights.pt"
    INTERPRET = "interpretability.json"
    REPORT = "report.html"
    FIG_TRAINING_SCRATCH = "training_progress_scratch.png"
    FIG_TRAINING_HF = "finetuning_progress_hf.png"
    FIG_COMPARISON = "model_comparison.png"
    FIG_ATTENTION_SCRATCH = "attention_weights_scratch.png"
    FIG_ATTENTION_HF = "attention_weights_hf.png"
    FIG_ATTENTION = {"scratch": FIG_ATTENTION_SCRATCH, "pretrained": FIG_ATTENTION_HF}
    FIG_INDUCTION = {
        "scratch": "induction_heads_scratch.png",
        "pretrained": "induction_heads_pretrained.png",
    }
    FIG_ABLATION = {
        "scratch": "head_ablation_scratch.png",
        "pretrained": "head_ablation_pretrained.png",
    }
    FIG_LOGIT_LENS = "logit_lens.png"
    FIG_LOSS_BY_POSITION = "loss_by_position.png"
    FIG_HEAD_FORMATION = "head_formation_scratch.png"
    FIG_PATCHING = {
        "scratch": "activation_patching_scratch.png",
        "pretrained": "activation_patching_pretrained.png",
    }

    LOCK = ".nanobard.lock"  # held by the one process writing the folder: its pid, host, command

    @contextmanager
    def writer_lock(self, what: str) -> Iterator[None]:
        """Be the folder's only writer while inside: an exclusive ``flock`` on LOCK, which the
        operating system releases when the holder exits, however it exits; the holder's pid, host
        and command are written in it for the next one to name. A lock left by a killed process
        is taken over with one warning. Nested use in one process (a study trains into its own
        folder) holds it once. Where ``fcntl`` is missing (Windows) there is no lock."""
        key = self.ensure().path.resolve()
        if key in _HELD:
            _HELD[key] += 1
            try:
                yield
            finally:
                _HELD[key] -= 1
            return
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            yield
            return
        f = open(self.path / self.LOCK, "a+")  # noqa: SIM115 - held for the whole block
        try:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RunFolderBusy(
                    f"{self.path} is in use by {_holder(self.path / self.LOCK)}; wait for it to "
                    "finish, or pass another --out"
                ) from None
            f.seek(0)
            _warn_if_taken_over(self.path, f.read())
            # the only writer now: temporary files a killed writer left are nobody's
            for name in files.remove_leftovers(self.path):
                logger.info("%s: removed %s, left by an interrupted write", self.path, name)
            try:  # the holder's name is for the next one's message: the flock alone locks
                f.seek(0)
                f.truncate()
                f.write(
                    json.dumps(
                        {
                            "pid": os.getpid(),
                            "host": socket.gethostname(),
                            "what": what,
                            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                        }
                    )
                )
                f.flush()  # fmt: skip
            except OSError as e:  # a full disk: lock without the name
                logger.debug("could not write %s: %s", self.path / self.LOCK, e)
            _HELD[key] = 1
            try:
                yield
            finally:
                del _HELD[key]
                with suppress(OSError):
                    f.seek(0)
                    f.truncate()  # a clean exit leaves no holder to name
        finally:
            f.close()  # releases the flock

    def write_config(self, config: Record, name: str = CONFIG) -> Path:
        """The one writer of a run's configuration file: the full config it ran with, as a
        record."""
        return config.save(self.path / name)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def ensure(self) -> RunDir:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def read_metrics(self, name: str = METRICS) -> list[EvalRow]:
        """The rows of a metrics file (empty when there is none). A last line cut short (the
        process was killed while appending it) is left out with a warning; a damaged line before
        it is a ``TornRecord``."""
        p = self.path / name
        if not p.exists():
            return []
        lines = [ln for ln in p.read_text(encoding="utf-8", errors="replace").splitlines()
                 if ln.strip()]  # fmt: skip
        rows = []
        for i, ln in enumerate(lines):
            try:
                rows.append(EvalRow.from_dict(json.loads(ln)))
            except (ValueError, TypeError) as e:
                if i < len(lines) - 1:
                    raise TornRecord(
                        f"{p}: line {i + 1} of {len(lines)} is not a metrics row ({e}); delete "
                        "the line or the file"
                    ) from None
                logger.warning("%s: its last line is cut short (a crash while writing it); "
                               "left out", p)  # fmt: skip
        return rows

    def append_metrics(self, row: EvalRow, name: str = METRICS) -> None:
        """Append one row: the whole line or, when the disk refuses, nothing."""
        files.append_line(self.path / name, json.dumps(row.to_dict()))

    def trim_metrics(self, last_step: int, name: str = METRICS) -> None:
        """On resume, drop rows written after the checkpoint we resume from."""
        p = self.path / name
        if p.exists():
            keep = [r for r in self.read_metrics(name) if r.step <= last_step]
            files.write_text(p, "".join(json.dumps(r.to_dict()) + "\n" for r in keep))


def _holder(path: Path) -> str:
    try:
        h = json.loads(path.read_text())
        return f"process {h['pid']} on {h['host']} ({h['what']}, since {h['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _warn_if_taken_over(folder: Path, previous: str) -> None:
    """The lock was free but names a holder: it died without cleaning up (kill -9, a crash)."""
    try:
        h = json.loads(previous)
        pid, host = int(h["pid"]), str(h["host"])
    except (ValueError, KeyError, TypeError):
        return
    logger.warning(
        "%s: took over the lock of process %d on %s (%s), which is no longer running",
        folder, pid, host, h.get("what", "?"),
    )  # fmt: skip
