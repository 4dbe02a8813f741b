"""``nanobard compare``: an LR sweep's runs in one table and one figure, a study's two tracks,
a run still going, and a folder that is no run."""

import math

import pytest

from nanobard.cli import main
from nanobard.config import STUDY_PRESETS
from nanobard.data.corpus import split_text
from nanobard.rundir import RunDir
from nanobard.study.compare import Comparison, NotARun, compare_runs
from nanobard.train.loop import train
from tests.fixtures import TINY_MODEL, tcfg


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, tiny_text):
    """Three runs that differ in their learning rate only."""
    root = tmp_path_factory.mktemp("sweep")
    for lr in (1e-3, 3e-3, 1e-2):
        train(TINY_MODEL, tcfg(max_steps=20, lr=lr, min_lr=lr / 10), split_text(tiny_text),
              root / f"lr-{lr:g}", progress=False)  # fmt: skip
    return root


def test_a_sweep_is_one_table_naming_what_differs_and_one_figure(sweep, tmp_path, capsys):
    folders = sorted(sweep.iterdir())
    assert main(["compare", *map(str, folders), "--out", str(tmp_path / "sweep.png")]) == 0
    out = capsys.readouterr().out
    res = Comparison.load(tmp_path / "sweep.json")
    assert [r.name for r in res.runs] == [f.name for f in folders]
    for r in res.runs:
        lr = float(r.name.removeprefix("lr-"))
        assert r.differs == {"train.lr": pytest.approx(lr), "train.min_lr": pytest.approx(lr / 10)}
        rows = RunDir(r.path).read_metrics()
        assert r.steps == 20 and [h.step for h in r.history] == [0, 10, 20]
        assert r.best_val_loss == min(h.val_loss for h in rows)
        assert r.bits_per_char == pytest.approx(r.best_val_loss / math.log(2))
        assert r.bits_on == "val batches"  # a plain run was never scored on the text
        assert r.finished and r.unit == "nats/char"
        line = next(ln for ln in out.splitlines() if ln.startswith(r.name + " "))
        assert f"train.lr={lr:g}" in line and f"{r.best_val_loss:.4f}" in line
    png = (tmp_path / "sweep.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_a_study_gives_both_tracks_and_a_run_still_going_says_so(study, sweep, tmp_path):
    out, outcome, _ = study
    going, tuning = tmp_path / "going", tmp_path / "tuning"
    going.mkdir()
    tuning.mkdir()
    (going / RunDir.METRICS).write_text((sweep / "lr-0.001" / RunDir.METRICS).read_text())
    # a fine-tuning still running: its metrics so far, no configuration written yet
    (tuning / RunDir.METRICS_HF).write_text((out / RunDir.METRICS_HF).read_text())
    res = compare_runs([out, going, tuning])
    assert [(r.name, r.track) for r in res.runs] == [
        (f"{out.name}/scratch", "scratch"),
        (f"{out.name}/finetune", "finetune"),
        ("going", "scratch"),
        ("tuning", "finetune"),
    ]
    ft = res.runs[1]
    lora_r = STUDY_PRESETS["quick"].finetune.lora_r  # the study's section of its config
    assert ft.unit == "nats/token" and ft.config["finetune.lora_r"] == lora_r
    assert ft.differs == {} and res.runs[3].differs == {}  # no config to differ from
    assert ft.bits_per_char == pytest.approx(outcome.state.finetune.after.bits_per_char)
    # the study's from-scratch model was scored on the validation text: that score, not a batch's
    assert res.runs[0].bits_on == "val text"
    assert res.runs[0].bits_per_char == pytest.approx(outcome.headline.scratch.bits_per_char)
    lines = res.table().splitlines()
    assert not res.runs[2].finished and "(still running)" in lines[3]
    assert res.runs[3].bits_per_char is None and "(still running)" in lines[4]
    assert res.runs[0].differs == {} and res.figure is None  # "going" has no config to differ


def test_a_folder_that_is_no_run_is_one_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty"), "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no metrics.jsonl or metrics_hf.jsonl" in err[0]
    with pytest.raises(NotARun, match="is not a folder"):
        compare_runs([tmp_path / "missing"])
    assert main(["compare", str(tmp_path / "empty"), "--out", str(tmp_path / "x.json")]) == 2
    assert "ending in one of them" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
