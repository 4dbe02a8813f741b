"""Shared fixtures: tiny corpora and configs, nothing downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_TINY = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """One cache folder for the session (the embedded model is dequantized into it once)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(autouse=True)
def _offline(monkeypatch, session_cache):
    """Tests never touch the network or the user's cache."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    monkeypatch.setenv("NANOBARD_CACHE", str(session_cache))
    if SHARED_TINY.exists() and "NANOBARD_TINYSHAKESPEARE" not in os.environ:
        monkeypatch.setenv("NANOBARD_TINYSHAKESPEARE", str(SHARED_TINY))


@pytest.fixture(scope="session")
def tiny_text() -> str:
    """About 20K characters of Shakespeare-like text (from tiny Shakespeare when available)."""
    if SHARED_TINY.exists():
        return SHARED_TINY.read_text(encoding="utf-8")[:20_000]
    verse = "ROMEO:\nBut soft, what light through yonder window breaks?\n\nJULIET:\nO Romeo, Romeo!\n\n"
    return verse * 250


@pytest.fixture
def tiny_file(tmp_path, tiny_text) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text(tiny_text, encoding="utf-8")
    return p
