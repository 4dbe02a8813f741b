"""Each figure function on small synthetic records writes a real PNG. The record builders here are
also used by test_report.py and test_browser.py."""

from __future__ import annotations

import pytest

from nanobard.study import plots
from nanobard.study import plots_interpret as P
from tests.fixtures import synthetic_headline, synthetic_history, synthetic_interpret

PNG = b"\x89PNG\r\n\x1a\n"


def _assert_png(path, min_bytes: int = 5_000) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG), path
    assert len(data) > min_bytes, f"{path.name}: {len(data)} bytes"


def test_training_progress_and_model_comparison(tmp_path):
    rows = synthetic_history(heads=False)
    _assert_png(plots.training_progress(rows, "From-scratch GPT", tmp_path / "t.png"))
    _assert_png(plots.training_progress(rows[:1], "one evaluation", tmp_path / "t1.png"))
    _assert_png(plots.model_comparison(synthetic_headline(), tmp_path / "c.png"))


def test_attention_heads(tmp_path):
    import torch

    w = torch.softmax(
        torch.randn(2, 4, 10, 10).masked_fill(torch.ones(10, 10).triu(1).bool(), -1e9), -1
    )
    _assert_png(plots.attention_heads(w, list("ROMEO:\nBut"), 1, "layer 1", tmp_path / "a.png"))


@pytest.mark.parametrize("track", ["scratch", "pretrained"])
def test_induction_and_ablation_heatmaps(tmp_path, track):
    a = getattr(synthetic_interpret(), track)
    _assert_png(P.induction_heads(a.induction, tmp_path / "i.png"))
    _assert_png(P.head_ablation(a.ablation, tmp_path / "h.png"))


def test_logit_lens_and_loss_by_position_put_every_model_on_one_axis(tmp_path):
    interp = synthetic_interpret()
    models = [interp.scratch, interp.pretrained_before, interp.pretrained]
    _assert_png(P.logit_lens([a.lens for a in models], tmp_path / "l.png"))
    _assert_png(P.loss_by_position([a.positions for a in models], tmp_path / "p.png"))


def test_head_formation_skips_rows_without_heads(tmp_path):
    rows = synthetic_history(heads=False)
    assert P.head_formation(rows, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists()
    mixed = rows[:2] + synthetic_history()[2:]  # the first evaluations had no per-head scores
    _assert_png(P.head_formation(mixed, tmp_path / "f.png"))


@pytest.mark.parametrize("heads", [True, False])
def test_interpretability_figures_names_every_file(tmp_path, heads):
    made = P.interpretability_figures(
        synthetic_interpret(), synthetic_history(heads=heads), tmp_path
    )
    expected = {
        *P.FIG_INDUCTION.values(),
        *P.FIG_ABLATION.values(),
        P.FIG_LOGIT_LENS,
        P.FIG_LOSS_BY_POSITION,
    }
    if heads:
        expected.add(P.FIG_HEAD_FORMATION)
    assert {p.name for p in made} == expected
    for p in made:
        _assert_png(p)
