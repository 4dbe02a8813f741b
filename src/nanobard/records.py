"""Typed results: a dataclass that derives from ``Record`` is written as plain JSON by
``to_dict()``/``save()`` and rebuilt, nested records and paths included, by
``from_dict()``/``load()``. Every JSON file of a run folder is one of these (rundir.py names the
files).
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

from nanobard import files
from nanobard.errors import NanobardError

R = TypeVar("R", bound="Record")


class Record:
    """Mixin for result dataclasses: JSON in, JSON out."""

    def to_dict(self) -> dict[str, Any]:
        return _fields(self)

    @classmethod
    def from_dict(cls: type[R], data: dict[str, Any]) -> R:
        return _from_fields(cls, data)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the record as JSON, atomically: a crash or a full disk leaves the previous file."""
        return files.write_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls: type[R], path: str | os.PathLike) -> R:
        """The record in ``path``; ``TornRecord`` (one line) if the file is not complete JSON."""
        return cls.from_dict(read_json(path))


class TornRecord(NanobardError):
    """A JSON file of a run folder is cut short or damaged (a crash while it was written by an
    older nanobard, a copy that stopped half way); the message names it and what to do."""


def read_json(path: str | os.PathLike) -> Any:
    """The JSON in ``path``; a file cut short or damaged raises ``TornRecord`` instead of a
    traceback (a missing file stays FileNotFoundError)."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        why = str(e) if isinstance(e, json.JSONDecodeError) else f"{e.reason} at byte {e.start}"
        raise TornRecord(
            f"{path} is not complete JSON ({why}; the file has {len(raw)} bytes: cut short by a "
            "crash or a full disk while it was written); delete it and run the command that "
            "wrote it again"
        ) from None


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


def _from_fields(cls: Any, data: dict[str, Any]) -> Any:
    """A dataclass from its JSON fields (unknown keys ignored: an older or newer file still
    loads)."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: _decode(hints[k], v) for k, v in data.items() if k in known})


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
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):  # e.g. a config inside a record
        return _from_fields(tp, value)
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
    # per-head scores [layer][head] (the study's from-scratch track records them)
    heads: dict[str, list[list[float]]] | None = None
