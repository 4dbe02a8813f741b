"""The command line: help, and hostile or broken input ending in one line, a non-zero exit, no
traceback and no existing file damaged."""

import hashlib
import os
import subprocess
import sys

import pytest

from nanobard.cli import main

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "4",
        "--max-steps", "4", "--eval-interval", "2", "--eval-iters", "1", "--sample-tokens", "0", "--no-progress"]


def nb(*args, cwd=None):
    """Run the CLI in a subprocess (cwd: a scratch folder, so default run folders stay out of the repo)."""
    return subprocess.run([sys.executable, "-m", "nanobard", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def test_help_explains_every_command(tmp_path):
    out = nb("--help", cwd=tmp_path).stdout
    for c in ("train", "generate", "finetune", "evaluate", "run", "attention", "bench"):
        assert c in out
    assert "run out of memory" in " ".join(nb("train", "--help", cwd=tmp_path).stdout.split())


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tests.conftest import SHARED_TINY

    d = tmp_path_factory.mktemp("trained")
    text = SHARED_TINY.read_text()[:8000] if SHARED_TINY.exists() else "ROMEO:\nO light, O night.\n\n" * 300
    (d / "c.txt").write_text(text)
    assert main(["-q", "train", "--data", str(d / "c.txt"), "--out", str(d / "run"), *TINY]) == 0
    return d


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_generate_streams_text(trained):
    r = nb("generate", str(trained / "run"), "--prompt", "RO", "--max-new-tokens", "20", "--greedy", cwd=trained)
    assert r.returncode == 0 and r.stdout.startswith("RO") and len(r.stdout) >= 20
    r = nb("generate", str(trained / "run"), "--prompt", "RO", "--max-new-tokens", "20", "--dtype", "bfloat16",
           cwd=trained)
    assert r.returncode == 0 and r.stdout.startswith("RO") and len(r.stdout) >= 20, r.stderr


CASES = {
    "empty file": (lambda d: (d / "e.txt").write_text(""), ["train", "--data", "{d}/e.txt"], "empty"),
    "binary file": (lambda d: (d / "b.bin").write_bytes(os.urandom(2000) + b"\x00"), ["train", "--data", "{d}/b.bin"], "binary"),
    "non-UTF-8 text": (lambda d: (d / "l.txt").write_bytes("café ".encode("latin-1") * 200), ["train", "--data", "{d}/l.txt"], "not UTF-8"),
    "10-character corpus": (lambda d: (d / "s.txt").write_text("0123456789"), ["train", "--data", "{d}/s.txt"], "too short"),
    "nonexistent path": (None, ["train", "--data", "{d}/nope.txt"], "not found"),
    "folder for a file": (None, ["train", "--data", "{d}"], "folder"),
    "n_embd not divisible": (None, ["train", "--n-embd", "30", "--n-head", "4"], "divisible"),
    "0 layers": (None, ["train", "--n-layer", "0"], "n_layer must be at least 1"),
    "negative learning rate": (None, ["train", "--lr=-1e-3"], "lr must be positive"),
    "unknown flag": (None, ["train", "--n-layers", "4"], "unrecognized arguments"),
    "batch size 0": (None, ["train", "--batch-size", "0"], "batch_size"),
    "context longer than corpus": (lambda d: (d / "m.txt").write_text("x" * 3000), ["train", "--data", "{d}/m.txt", "--block-size", "4096"], "too short"),
    "prompt with unseen characters": (None, ["generate", "{run}", "--prompt", "ROMEO€✓"], "not in the model's vocabulary"),
    "missing checkpoint": (None, ["generate", "{d}/none.pt"], "not found"),
    "truncated checkpoint": (lambda d: (d / "t.pt").write_bytes((d / "run" / "model_scratch_best.pt").read_bytes()[:3000]),
                             ["generate", "{d}/t.pt"], "not a readable checkpoint"),
    "random-bytes checkpoint": (lambda d: (d / "r.pt").write_bytes(os.urandom(5000)), ["generate", "{d}/r.pt"], "not a readable checkpoint"),
    "checkpoint of another configuration": (None, ["train", "--data", "{d}/c.txt", "--out", "{run}", "--resume",
                                                   *TINY, "--n-embd", "32"], "different model"),
    "HF folder with a missing file": (lambda d: (d / "hf").mkdir(exist_ok=True) or (d / "hf" / "config.json").write_text("{}"),
                                      ["generate", "{d}/hf"], "incomplete"),
    "gpt2 without internet": (None, ["finetune", "--pretrained", "gpt2", "--data", "{d}/c.txt"], "smollm2-135m"),
    "output folder under a file": (None, ["train", "--data", "{d}/c.txt", "--out", "{d}/c.txt/run", *TINY],
                                   "Not a directory"),
    "unwritable output folder": (lambda d: (d / "ro").mkdir(exist_ok=True) or os.chmod(d / "ro", 0o500),
                                 ["train", "--data", "{d}/c.txt", "--out", "{d}/ro/run", *TINY], "ermission"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_input_ends_in_one_line(name, trained):
    setup, args, expect = CASES[name]
    if name == "unwritable output folder" and os.geteuid() == 0:
        pytest.skip("root can write anywhere")
    if setup:
        setup(trained)
    before = digest(trained / "run")
    args = [a.format(d=trained, run=trained / "run") for a in args]
    r = nb(*args, cwd=trained)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("nanobard:")]
    assert len(lines) == 1 and expect in lines[0], r.stderr[-1500:]
    assert digest(trained / "run") == before
    assert not (trained / "runs").exists()  # a failed command leaves no run folder behind
