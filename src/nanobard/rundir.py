"""One run folder, one contract: every file of a run is named here, and the typed results are
written and read back here.

A result is a dataclass that derives from ``Record``: ``to_dict()`` gives plain JSON, and
``from_dict()`` rebuilds it, nested records and paths included, so the study stores its stages
as records and the plots and the report take records, never string keys into loose dicts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

R = TypeVar("R", bound="Record")


class Record:
    """Mixin for result dataclasses: JSON in, JSON out."""

    def to_dict(self) -> dict[str, Any]:
        return _fields(self)

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        hints = typing.get_type_hints(cls)
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: _decode(hints[k], v) for k, v in data.items() if k in known})

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2))
        return path

    @classmethod
    def load(cls: type[R], path: str | os.PathLike) -> R:
        return cls.from_dict(json.loads(Path(path).read_text()))


def _encode(obj: Any) -> Any:
    if isinstance(obj, Record) and type(obj).to_dict is not Record.to_dict:
        return obj.to_dict()  # a record that adds derived figures to its JSON
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _fields(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode(v) for v in obj]
    return obj


def _fields(obj: Any) -> dict[str, Any]:
    return {f.name: _encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


def _decode(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _decode(inner[0], value) if len(inner) == 1 else value
    if origin in (list, tuple) and args:
        items = [_decode(args[0], v) for v in value]
        return tuple(items) if origin is tuple else items
    if origin is dict and len(args) == 2:
        return {k: _decode(args[1], v) for k, v in value.items()}
    if isinstance(tp, type) and issubclass(tp, Record):
        return tp.from_dict(value)
    if tp is Path:
        return Path(value)
    return value


@dataclass(frozen=True)
class EvalRow(Record):
    """One evaluation during training (a line of metrics.jsonl / metrics_hf.jsonl). Losses in nats
    per token of the model's own tokenizer."""

    step: int
    tokens: int
    val_loss: float
    train_loss: float | None = None
    lr: float | None = None
    elapsed_s: float = 0.0
    tokens_per_s: float | None = None
    last_batch_loss: float | None = None
    heads: dict[str, list[list[float]]] | None = None  # per-head scores [layer][head] (from-scratch track)


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
    HF_CHECKPOINTS = "hf_checkpoints"
    METRICS_HF = "metrics_hf.jsonl"
    BEFORE = "finetune_before.json"
    FINETUNE_RESULT = "finetune_result.json"
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

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def ensure(self) -> RunDir:
        self.path.mkdir(parents=True, exist_ok=True)
        return self

    def read_metrics(self, name: str = METRICS) -> list[EvalRow]:
        """The rows of a metrics file (empty when there is none)."""
        p = self.path / name
        if not p.exists():
            return []
        return [EvalRow.from_dict(json.loads(ln)) for ln in p.read_text().splitlines() if ln.strip()]

    def append_metrics(self, row: EvalRow, name: str = METRICS) -> None:
        with open(self.path / name, "a") as f:
            f.write(json.dumps(row.to_dict()) + "\n")

    def trim_metrics(self, last_step: int, name: str = METRICS) -> None:
        """On resume, drop rows written after the checkpoint we resume from."""
        p = self.path / name
        if p.exists():
            keep = [r for r in self.read_metrics(name) if r.step <= last_step]
            p.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in keep))
