"""``--report-to``: each tracker, read back with its own reader, holds what metrics.jsonl holds.
Everything offline: TensorBoard event files, trackio's local SQLite store, wandb offline."""

from __future__ import annotations

import importlib.util
import json
import math
import time

import pytest

from nanobard.cli import main
from nanobard.records import EvalRow
from nanobard.train.tracking import Tracker, row_scalars
from tests.fixtures import tensorboard_scalars

TINY = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
        "--batch-size", "4", "--max-steps", "6", "--eval-interval", "3", "--eval-iters", "1",
        "--sample-tokens", "0", "--no-progress"]  # fmt: skip


def train_cli(tiny_file, out, *extra):
    return main(["-q", "train", "--data", str(tiny_file), "--out", str(out), *TINY, *extra])


def metric_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def expected(rows, track="scratch"):
    """tag -> [(step, value)] as metrics.jsonl has them, under the track's prefix."""
    out: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for tag, value in row_scalars(EvalRow.from_dict(row)).items():
            out.setdefault(f"{track}/{tag}", []).append((row["step"], value))
    return out


def assert_same(logged, rows):
    want = expected(rows)
    names = {"val_loss", "train_loss", "lr", "tokens", "elapsed_s"}
    assert set(want) >= {f"scratch/{n}" for n in names}, want.keys()
    assert set(logged) >= set(want), (logged.keys(), want.keys())
    for tag, points in want.items():
        got = logged[tag]
        assert [s for s, _ in got] == [s for s, _ in points], tag
        for (_, g), (_, w) in zip(got, points, strict=True):  # TensorBoard keeps float32
            assert math.isclose(g, w, rel_tol=1e-6, abs_tol=1e-12), (tag, g, w)


def test_tensorboard_event_files_hold_the_metrics_file(tiny_file, tmp_path, capsys):
    out = tmp_path / "lr-3e-3"
    assert train_cli(tiny_file, out, "--report-to", "tensorboard") == 0
    assert "tensorboard --logdir" in capsys.readouterr().out  # where to look, said once
    rows = metric_rows(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [0, 3, 6]
    assert_same(tensorboard_scalars(out / "tensorboard" / "scratch"), rows)


def test_a_resumed_run_continues_its_curves_and_a_fresh_one_replaces_them(tiny_file, tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    out = tmp_path / "run"

    def steps():
        logged = tensorboard_scalars(out / "tensorboard/scratch")
        return [s for s, _ in logged["scratch/val_loss"]]

    assert train_cli(tiny_file, out, "--report-to", "tensorboard") == 0
    assert steps() == [0, 3, 6]
    # a session killed after its checkpoint at 6 had logged a point past it: the resume purges it
    with SummaryWriter(str(out / "tensorboard/scratch")) as w:
        w.add_scalar("scratch/val_loss", 99.0, 9)
    resumed = ["--report-to", "tensorboard", "--resume", "--max-steps", "9"]
    assert train_cli(tiny_file, out, *resumed) == 0
    assert steps() == [0, 3, 6, 9]
    logged = tensorboard_scalars(out / "tensorboard/scratch")
    assert_same(logged, metric_rows(out / "metrics.jsonl"))
    assert train_cli(tiny_file, out, "--report-to", "tensorboard") == 2  # a run is there
    assert steps() == [0, 3, 6, 9]  # refused before anything was touched
    assert train_cli(tiny_file, out, "--report-to", "tensorboard", "--force") == 0  # replaced
    assert steps() == [0, 3, 6]


def test_only_the_main_process_reports(tmp_path, monkeypatch):
    from nanobard.train.tracking import tracking

    monkeypatch.setenv("RANK", "1")  # a torchrun worker
    with tracking("tensorboard", tmp_path / "run", "scratch") as t:
        t.log({"val_loss": 1.0}, 0)
    assert t.kind == "none" and not (tmp_path / "run").exists()


@pytest.mark.skipif(importlib.util.find_spec("trackio") is None, reason="trackio not installed")
def test_trackio_local_store_holds_the_metrics_file(tiny_file, tmp_path):
    from trackio.sqlite_storage import SQLiteStorage

    out = tmp_path / "trackio-run-of-this-test"
    assert train_cli(tiny_file, out, "--report-to", "trackio") == 0
    assert str(SQLiteStorage.get_project_db_path("nanobard")).startswith(str(tmp_path.parent))
    logs = SQLiteStorage.get_logs("nanobard", out.name)
    logged: dict[str, list[tuple[int, float]]] = {}
    for entry in logs:
        for tag, value in entry.items():
            if tag not in ("step", "timestamp"):
                logged.setdefault(tag, []).append((entry["step"], value))
    assert_same(logged, metric_rows(out / "metrics.jsonl"))


@pytest.mark.skipif(importlib.util.find_spec("trackio") is None, reason="trackio not installed")
def test_trackio_groups_the_runs_of_a_study_and_keeps_their_config(tmp_path):
    from trackio.sqlite_storage import SQLiteStorage

    from nanobard.train.tracking import tracking

    for track in ("scratch", "finetune"):
        with tracking("trackio", tmp_path / "study-7", track, group="study-7",
                      config={"train.lr": 0.01}) as t:  # fmt: skip
            t.log({"val_loss": 1.0}, 0)
    for track in ("scratch", "finetune"):
        config = SQLiteStorage.get_run_config("nanobard", f"study-7/{track}")
        assert config["_Group"] == "study-7" and config["train.lr"] == 0.01, config


def test_wandb_runs_offline_unless_logged_in(tiny_file, tmp_path, monkeypatch):
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    (tmp_path / "netrc").write_text("")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # nobody logged in
    from nanobard.train.tracking import wandb_logged_in

    assert not wandb_logged_in()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_logged_in()
    monkeypatch.delenv("WANDB_API_KEY")
    out = tmp_path / "w"
    assert train_cli(tiny_file, out, "--report-to", "wandb") == 0
    (run,) = (out / "wandb").glob("offline-run-*")  # offline, in the run folder
    # wandb has no public reader for its offline log; its history items carry each value as JSON.
    # Its writer is a separate service process that may still be flushing when finish() returns
    # on a busy machine: give it a while
    wanted = [json.dumps(row["val_loss"]).encode() for row in metric_rows(out / "metrics.jsonl")]
    deadline = time.monotonic() + 60
    while True:
        log = next(run.glob("*.wandb")).read_bytes()
        if all(w in log for w in wanted) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    for w in wanted:
        assert w in log, (w, log[:200])
    # a resume continues the same wandb run (offline: its folders all carry the run's id; two
    # sessions within one second share one folder)
    run_id = (out / "wandb" / "scratch.id").read_text().strip()
    assert run.name.endswith(f"-{run_id}")
    assert train_cli(tiny_file, out, "--report-to", "wandb", "--resume", "--max-steps", "9") == 0
    assert (out / "wandb" / "scratch.id").read_text().strip() == run_id
    ids = {p.name.rsplit("-", 1)[-1] for p in (out / "wandb").glob("offline-run-*")}
    assert ids == {run_id}, ids


@pytest.mark.parametrize("command", ["train", "finetune", "run"])
def test_a_missing_tracker_is_one_line_before_anything_runs(command, tiny_file, tmp_path, capsys,
                                                            monkeypatch):  # fmt: skip
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "trackio" else real(name, *a)
    )
    argv = [command, "--data", str(tiny_file), "--out", str(tmp_path / "never"), "--report-to",
            "trackio", "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "nanobard: error: --report-to trackio needs the trackio package: pip install "
        "'nanobard[trackio]' (or pip install trackio), or leave --report-to out"
    ]
    assert not (tmp_path / "never").exists()


def test_row_scalars_flatten_head_scores_and_skip_what_is_not_a_number():
    row = EvalRow(step=5, tokens=10, val_loss=1.5, lr=None,
                  heads={"induction": [[0.1, 0.2], [0.3, 0.4]]})  # fmt: skip
    assert row_scalars(row) == {
        "tokens": 10.0,
        "val_loss": 1.5,
        "elapsed_s": 0.0,
        "heads/induction/L0H0": 0.1,
        "heads/induction/L0H1": 0.2,
        "heads/induction/L1H0": 0.3,
        "heads/induction/L1H1": 0.4,
    }

    class Keep(Tracker):
        def __init__(self):
            super().__init__("scratch")
            self.seen = []

        def _start(self, first_step):
            self.seen.append(("started at", first_step))

        def _log(self, scalars, step):
            self.seen.append((step, scalars))

    t = Keep()
    t.log({"d": math.nan}, 2)  # nothing finite: nothing logged, nothing started
    t.log({"a": 1.0, "b": math.nan, "c": math.inf}, 3)
    t.log({"a": 0.5}, 4)
    assert t.seen == [("started at", 3), (3, {"scratch/a": 1.0}), (4, {"scratch/a": 0.5})]
