"""Checkpoints of the from-scratch model: plain tensors and strings, atomic writes, safe loads.

A checkpoint is a dict of tensors, numbers and JSON strings written with ``torch.save`` and read
with ``torch.load(weights_only=True)``, which refuses any pickled object that is not a tensor or a
plain container: a file crafted to run code on load is rejected. Anyone can open one without
nanobard::

    ckpt = torch.load("model_scratch_best.pt", weights_only=True)
    ckpt["model"]            # state dict (GPT-2 parameter names)
    json.loads(ckpt["model_config"]), json.loads(ckpt["vocab"])

Writes go to a temporary file in the same folder, are flushed to disk, then renamed over the
target, so a crash or a full disk mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from nanobard import files
from nanobard.config import ModelConfig
from nanobard.data.corpus import CorpusId
from nanobard.data.tokenizer import CharTokenizer
from nanobard.errors import NanobardError
from nanobard.model.gpt import GPT
from nanobard.rundir import RunDir

FORMAT = "nanobard-scratch-v1"


class CheckpointError(NanobardError, ValueError):
    """A checkpoint is missing, damaged, unsafe or of another model; the message says what to do."""


def atomic_save(obj: object, path: str | os.PathLike) -> None:
    """torch.save to ``path`` atomically (files.write_bytes: temp file, fsync, rename). The
    archive is built in memory first: torch's zip writer, writing to a file, turns a full disk into
    "unexpected pos" and leaves half an archive; a plain write says ENOSPC, which ``WriteFailed``
    reports in one line with the previous checkpoint kept."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    files.write_bytes(path, buf.getbuffer())


def save_checkpoint(
    path: str | os.PathLike,
    model: GPT,
    tokenizer: CharTokenizer,
    *,
    train_state: dict[str, Any] | None = None,
    metrics: dict[str, float] | None = None,
    corpus: CorpusId | None = None,
) -> None:
    """Write model weights, config and vocabulary (and, for resuming, the training state);
    ``corpus``: the text it was trained on, which ``--resume`` checks."""
    raw = getattr(model, "_orig_mod", model)  # unwrap torch.compile
    obj: dict[str, Any] = {
        "format": FORMAT,
        "model": {k: v.detach().cpu() for k, v in raw.state_dict().items()},
        "model_config": json.dumps(asdict(raw.config)),
        "vocab": tokenizer.to_json(),
        "metrics": json.dumps(metrics or {}),
    }
    if corpus is not None:
        obj["corpus"] = json.dumps(corpus.to_dict())
    if train_state is not None:
        obj["train_state"] = train_state
    atomic_save(obj, path)


def checkpoint_corpus(ckpt: dict[str, Any]) -> CorpusId | None:
    """The text a checkpoint was trained on (None for one written before nanobard recorded it)."""
    try:
        return CorpusId.from_dict(json.loads(ckpt["corpus"]))
    except (KeyError, TypeError, ValueError):
        return None


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A run folder that holds a best checkpoint -> that file; anything else unchanged."""
    p = Path(path)
    return p / RunDir.BEST if p.is_dir() and (p / RunDir.BEST).exists() else p


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint dict safely, turning every failure into a one-line CheckpointError."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(
            f"checkpoint not found: {p}; train one with `nanobard train --out DIR`"
        )
    if p.is_dir():
        raise CheckpointError(
            f"{p} is a folder; give the checkpoint file (e.g. {p}/model_scratch_best.pt)"
        )
    if not zipfile.is_zipfile(
        p
    ):  # torch.save writes a zip archive; anything else is never unpickled
        raise CheckpointError(
            f"{p} is not a readable checkpoint (truncated, damaged or another format); "
            "use another checkpoint or train again"
        )
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"refused to load {p}: it contains objects other than tensors and plain data "
            f"({str(e).splitlines()[0][:120]})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(
            f"{p} is not a readable checkpoint (truncated or damaged: "
            f"{str(e).splitlines()[0][:120]}); use another checkpoint or train again"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{p} is not a nanobard from-scratch checkpoint")
    return obj


def _settings(cfg: ModelConfig) -> dict[str, Any]:
    """The model's settings as they act: an unset attn_dropout is the dropout it follows (so a
    run whose preset now names the same value explicitly still resumes), and the kind of QK-norm
    counts only with QK-norm on (a checkpoint from before the option holds "rms", its default)."""
    return {
        **asdict(cfg),
        "attn_dropout": cfg.attention_dropout,
        "qk_norm_type": cfg.qk_norm_type if cfg.qk_norm else None,
    }


def load_model(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    expect: ModelConfig | None = None,
    obj: dict[str, Any] | None = None,
) -> tuple[GPT, CharTokenizer, dict[str, Any]]:
    """Rebuild the model and tokenizer from a checkpoint (``obj``: its dict, when read already).
    Returns (model, tokenizer, checkpoint dict)."""
    obj = read_checkpoint(path) if obj is None else obj
    try:
        cfg = ModelConfig(**json.loads(obj["model_config"]))
        tok = CharTokenizer.from_json(obj["vocab"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has an unreadable config or vocabulary ({e})") from None
    held, wanted = _settings(cfg), None if expect is None else _settings(expect)
    if wanted is not None and held != wanted:
        diff = {k: (v, wanted[k]) for k, v in held.items() if wanted[k] != v}
        raise CheckpointError(
            f"{path} holds a different model (checkpoint vs requested: {diff}); "
            "use a new --out folder or the same settings as the checkpoint"
        )
    model = GPT(cfg)
    try:
        model.load_state_dict(obj["model"])
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(
            f"{path}: weights do not fit the model config ({str(e).splitlines()[0][:160]})"
        ) from None
    return model.to(device), tok, obj
