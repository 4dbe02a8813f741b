"""rundir.RunDir.writer_lock: one writer per run folder, across processes; a lock left by a
process killed with -9 is taken over with one warning; nested use in one process holds it once;
and ``nanobard train`` started twice on one folder stops the second in one line."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from nanobard.rundir import RunDir, RunFolderBusy

HOLD = textwrap.dedent(
    """
    import sys, time
    from nanobard.rundir import RunDir
    with RunDir(__import__("pathlib").Path(sys.argv[1])).writer_lock("holder"):
        print("held", flush=True)
        time.sleep(60)
    """
)


def _holder(folder):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE,
                            text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_and_a_killed_holder_is_taken_over(tmp_path, caplog):
    run = RunDir(tmp_path / "run")
    proc = _holder(run.path)
    try:
        with pytest.raises(RunFolderBusy, match=f"in use by process {proc.pid} on .*holder"):
            with run.writer_lock("second"):
                pass
        assert json.loads((run / RunDir.LOCK).read_text())["pid"] == proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)  # kill -9: no cleanup runs
        proc.wait()
    with caplog.at_level(logging.WARNING), run.writer_lock("third"):
        held = json.loads((run / RunDir.LOCK).read_text())
        assert held["pid"] == os.getpid() and held["what"] == "third"
    assert [r.getMessage() for r in caplog.records if "took over" in r.getMessage()] == [
        f"{run.path}: took over the lock of process {proc.pid} on {held['host']} (holder), "
        "which is no longer running"
    ]
    assert (run / RunDir.LOCK).read_text() == ""  # a clean exit leaves no holder to name
    with run.writer_lock("fourth"):  # and no warning next time
        with run.writer_lock("nested"):  # a study trains into its own folder: held once
            pass
        assert json.loads((run / RunDir.LOCK).read_text())["what"] == "fourth"


def test_train_started_twice_on_one_folder_stops_the_second(tmp_path, tiny_text):
    (tmp_path / "c.txt").write_text(tiny_text)
    out = tmp_path / "run"
    tiny = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
            "--batch-size", "4", "--max-steps", "100000", "--eval-interval", "50",
            "--eval-iters", "1", "--sample-tokens", "0", "--no-progress"]  # fmt: skip
    first = subprocess.Popen(
        [sys.executable, "-m", "nanobard", "train", "--data", str(tmp_path / "c.txt"), "--out",
         str(out), *tiny], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.time() + 60
        while time.time() < deadline and not (out / "metrics.jsonl").exists():
            time.sleep(0.2)
        second = subprocess.run(  # --force: even told to start afresh, it may not clobber
            [sys.executable, "-m", "nanobard", "train", "--data", str(tmp_path / "c.txt"),
             "--out", str(out), "--force", *tiny], capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    errors = [ln for ln in second.stderr.splitlines() if ln.startswith("nanobard:")]
    assert second.returncode == 2 and len(errors) == 1 and "Traceback" not in second.stderr
    assert f"in use by process {first.pid}" in errors[0] and "(nanobard train" in errors[0]
