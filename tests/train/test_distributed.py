"""Two CPU processes on loopback (gloo) under torchrun give the weights of one process with the
same global batch and seed; only rank 0 writes."""

import json
import os
import signal
import socket
import subprocess
import sys

import pytest
import torch

ARGS = [
    "--n-layer",
    "2",
    "--n-head",
    "2",
    "--n-embd",
    "32",
    "--block-size",
    "16",
    "--batch-size",
    "8",
    "--max-steps",
    "12",
    "--eval-interval",
    "6",
    "--eval-iters",
    "2",
    "--warmup-steps",
    "2",
    "--lr",
    "3e-3",
    "--min-lr",
    "3e-4",
    "--sample-tokens",
    "0",
    "--no-progress",
    "--threads",
    "1",
    "--dtype",
    "float32",
]  # the same math in one and two processes: no bfloat16 rounding


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(cmd, timeout=300, **kw):
    """``cmd`` in a session of its own: past ``timeout`` torchrun and its ranks are killed together
    (a rank left waiting for another outlives torchrun)."""
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          start_new_session=True, **kw) as p:  # fmt: skip
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            raise
    assert p.returncode == 0, err[-3000:]
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


@pytest.mark.parametrize("extra", [[], ["--dropout", "0.1", "--grad-accum", "2"]])
def test_two_processes_match_one(tmp_path, tiny_file, extra):
    one, two = tmp_path / "one", tmp_path / "two"
    run(
        [
            sys.executable,
            "-m",
            "nanobard",
            "-q",
            "train",
            "--data",
            str(tiny_file),
            "--out",
            str(one),
            *ARGS,
            *extra,
        ]
    )
    run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            "-m",
            "nanobard",
            "-q",
            "train",
            "--data",
            str(tiny_file),
            "--out",
            str(two),
            *ARGS,
            *extra,
        ]
    )
    a = torch.load(one / "ckpt_last.pt", weights_only=True)
    b = torch.load(two / "ckpt_last.pt", weights_only=True)
    if not extra:  # without dropout the math is the same: equal within float tolerance
        for k in a["model"]:
            torch.testing.assert_close(a["model"][k], b["model"][k], atol=1e-5, rtol=1e-4)
    else:  # dropout masks differ per rank by design; the run must still learn the same amount
        assert (
            abs(
                json.loads(a["train_state"]["counters"])["best_val"]
                - json.loads(b["train_state"]["counters"])["best_val"]
            )
            < 0.1
        )
        assert len(b["train_state"]["torch_rng"]) == 2  # each rank's RNG, for exact resume
    rows = [json.loads(ln) for ln in (two / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 6, 12]  # written once, by rank 0 only
    assert sorted(p.name for p in two.iterdir()) == [
        ".nanobard.lock",  # rank 0's: one writer per run folder, empty after a clean exit
        "ckpt_last.pt",
        "config.json",
        "metrics.jsonl",
        "model_scratch_best.pt",
        "train_result.json",
    ]
    assert json.loads((two / "config.json").read_text())["processes"] == 2
    assert (two / ".nanobard.lock").read_text() == ""


def test_fine_tuning_on_a_time_budget_stops_every_rank_at_one_step(tmp_path, tiny_file):
    """Two ranks fit their own horizons to one budget; rank 0's decides for both (hf/trainer.py),
    so neither waits forever for a step the other never takes. Rank 0 alone prints."""
    from tests.fixtures import build_tiny_hf_model

    model = build_tiny_hf_model(tmp_path / "tiny_gpt2", tiny_file.read_text()[:20_000])
    out = tmp_path / "ft"
    proc = run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
         "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
         "-m", "nanobard", "finetune", "--pretrained", str(model), "--data", str(tiny_file),
         "--out", str(out), "--max-time", "6s", "--block-size", "32", "--batch-size", "8",
         "--eval-interval", "1000", "--score-chars", "2000", "--sample-tokens", "8",
         "--precision", "float32", "--device", "cpu", "--no-progress"],
        timeout=120,  # a rank left waiting hangs until the test's timeout
    )  # fmt: skip
    steps = json.loads((out / "finetune_result.json").read_text())["steps"]
    rows = [json.loads(ln) for ln in (out / "metrics_hf.jsonl").read_text().splitlines()]
    assert steps > 5 and rows[-1]["step"] == steps
    assert proc.stdout.count("fine-tuned ") == 1 and proc.stderr.count("time budget 6 s") == 1
