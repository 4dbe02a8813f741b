"""Never losing work: SIGTERM, kill -9 at random moments, NaN loss."""

import json
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from nanobard.config import ModelConfig, TrainConfig
from nanobard.data.corpus import split_text
from nanobard.model.gpt import GPT
from nanobard.train.loop import NonFiniteLossError, train

ARGS = [
    "--n-layer",
    "2",
    "--n-head",
    "2",
    "--n-embd",
    "32",
    "--block-size",
    "32",
    "--batch-size",
    "16",
    "--warmup-steps",
    "5",
    "--eval-iters",
    "2",
    "--sample-tokens",
    "0",
    "--no-progress",
    "--threads",
    "1",
    "--dropout",
    "0.1",
]


def cmd(tiny_file, out, steps, every, resume=False):
    return [
        sys.executable,
        "-m",
        "nanobard",
        "train",
        "--data",
        str(tiny_file),
        "--out",
        str(out),
        "--max-steps",
        str(steps),
        "--eval-interval",
        str(every),
        *ARGS,
        *(["--resume"] if resume else []),
    ]


def weights(out):
    return torch.load(out / "ckpt_last.pt", weights_only=True)["model"]


def assert_same(a, b):
    for k in a:
        assert torch.equal(a[k], b[k]), k


def wait_for_step(path, step, proc, timeout=120):
    t = time.time()
    while time.time() - t < timeout:
        if path.exists() and any(
            json.loads(ln)["step"] >= step for ln in path.read_text().splitlines() if ln
        ):
            return
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.1)
    raise AssertionError("training made no progress")


@pytest.mark.slow
def test_sigterm_writes_a_checkpoint_and_resume_finishes_identically(tmp_path, tiny_file):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    subprocess.run(cmd(tiny_file, straight, 300, 50), check=True, capture_output=True, timeout=300)
    proc = subprocess.Popen(
        cmd(tiny_file, stopped, 300, 50), stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    wait_for_step(stopped / "metrics.jsonl", 50, proc)  # terminated at a random step after 50
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    step = json.loads(
        torch.load(stopped / "ckpt_last.pt", weights_only=True)["train_state"]["counters"]
    )["step"]
    assert 50 <= step < 300
    subprocess.run(
        cmd(tiny_file, stopped, 300, 50, resume=True), check=True, capture_output=True, timeout=300
    )
    assert_same(weights(straight), weights(stopped))


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_gives_the_same_weights(tmp_path, tiny_file):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(cmd(tiny_file, straight, 800, 25), check=True, capture_output=True, timeout=300)
    rng = random.Random(0)
    metrics = killed / "metrics.jsonl"
    kills = 0
    for attempt in range(6):
        proc = subprocess.Popen(
            cmd(tiny_file, killed, 800, 25, resume=attempt > 0),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        if kills < 4:
            # kill at a random moment after this run made progress (robust to machine speed)
            done = (
                max(
                    (json.loads(ln)["step"] for ln in metrics.read_text().splitlines() if ln),
                    default=0,
                )
                if metrics.exists()
                else 0
            )
            wait_for_step(metrics, done + 25, proc)
            time.sleep(rng.uniform(0.0, 0.4))
            proc.kill()  # SIGKILL: no handler runs
            proc.wait()
            kills += 1
            continue
        assert proc.wait(timeout=300) == 0
        break
    assert kills == 4
    assert_same(weights(straight), weights(killed))


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(
    tmp_path, tiny_text, monkeypatch
):
    real = GPT.forward
    calls = {"n": 0}

    def poisoned(self, idx, targets=None, **kw):
        out = real(self, idx, targets, **kw)
        if self.training and targets is not None:
            calls["n"] += 1
            if calls["n"] >= 15:
                out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(GPT, "forward", poisoned)
    cfg = TrainConfig(batch_size=8, max_steps=50, eval_interval=10, eval_iters=2, warmup_steps=2)
    with pytest.raises(
        NonFiniteLossError, match="loss became nan at step 15.*last good checkpoint"
    ):
        train(
            ModelConfig(block_size=16, n_layer=1, n_head=2, n_embd=16),
            cfg,
            split_text(tiny_text),
            tmp_path,
            progress=False,
        )
    ckpt = torch.load(tmp_path / "ckpt_last.pt", weights_only=True)
    assert json.loads(ckpt["train_state"]["counters"])["step"] == 10
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())
