"""Each figure function on small synthetic records writes a real PNG. The record builders here are
also used by test_report.py and test_browser.py."""

from __future__ import annotations

import math
import random

import pytest

from nanobard import plots
from nanobard import plots_interpret as P
from nanobard.analysis import Analysis
from nanobard.interpret import (
    AblationResult,
    InductionResult,
    LogitLensResult,
    PositionLoss,
    findings,
)
from nanobard.rundir import EvalRow
from nanobard.study import Headline, InterpretStudy, TrackSummary

PNG = b"\x89PNG\r\n\x1a\n"


def _grid(rng: random.Random, L: int, H: int) -> list[list[float]]:
    return [[round(rng.random(), 3) for _ in range(H)] for _ in range(L)]


def synthetic_analysis(model: str, L: int, H: int, *, ablated: list[int] | None = None, seed: int = 0,
                       width: int = 96) -> Analysis:
    """One model's interpretability results with plausible shapes and values. ``ablated``: the
    layers whose heads were ablated (all by default); the others' costs are None."""
    rng = random.Random(seed)
    layers = list(range(L)) if ablated is None else ablated
    ind = InductionResult(model, 20, 4, [0, 60], _grid(rng, L, H), _grid(rng, L, H), 4.0, 1.5)
    delta = [[round(rng.uniform(-0.01, 0.3), 4) if i in layers else None for _ in range(H)] for i in range(L)]
    abl = AblationResult(model, "mean", layers, delta, 2.1, 256, 900, 0.5)
    lens = LogitLensResult(model, list(range(L + 1)), [6.0 - 4.0 * i / L for i in range(L + 1)],
                           [0.1 + 0.9 * i / L for i in range(L + 1)], 2.0, 256, 900)
    bpc = [None] + [2.0 + 2.0 / math.sqrt(x) for x in range(1, width)]
    pos = PositionLoss(model, bpc, [0] + [12] * (width - 1), 2.2, 12, 64)
    said = findings(induction=ind, ablation=abl, lens=lens, positions=pos)
    return Analysis(model, {"ablation": {"max_tokens": 256}}, {"induction": 0.1}, ind, abl, lens, pos, said)


def synthetic_interpret(scratch_name: str = "from scratch", hf_name: str = "tiny-gpt2") -> InterpretStudy:
    return InterpretStudy(
        scratch=synthetic_analysis(scratch_name, 2, 4, seed=1),
        pretrained=synthetic_analysis(f"{hf_name} fine-tuned", 6, 3, ablated=[0, 3, 5], seed=2, width=160),
        pretrained_before=synthetic_analysis(f"{hf_name} before fine-tuning", 6, 3, ablated=[0, 3], seed=3,
                                             width=160),
    )


def synthetic_history(n: int = 6, *, heads: bool = True, L: int = 2, H: int = 4) -> list[EvalRow]:
    """A training history whose loss falls and whose L1H2 becomes an induction head midway."""
    rows = []
    for k in range(n):
        prev = [[min(1.0, 0.1 + 0.15 * k * (h == 1)) for h in range(H)] for _ in range(L)]
        ind = [[0.9 if (i, h) == (1, 2) and k >= n // 2 else 0.05 for h in range(H)] for i in range(L)]
        rows.append(EvalRow(step=10 * k, tokens=2560 * k, val_loss=4.2 - 0.4 * k, train_loss=4.1 - 0.4 * k,
                            lr=1e-3, heads={"previous_token": prev, "induction": ind} if heads else None))
    return rows


def synthetic_headline(hf_name: str = "tiny-gpt2") -> Headline:
    return Headline(
        corpus="shakespeare", score_chars=1500,
        scratch=TrackSummary("from scratch", 12_000, 12.5, 9000.0, 40, 35.0, 2.6),
        pretrained=TrackSummary(hf_name, 135_000_000, 30.0, 800.0, 6, 12.0, 1.9, 2.3, "the default"),
    )


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

    w = torch.softmax(torch.randn(2, 4, 10, 10).masked_fill(torch.ones(10, 10).triu(1).bool(), -1e9), -1)
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
    made = P.interpretability_figures(synthetic_interpret(), synthetic_history(heads=heads), tmp_path)
    expected = {*P.FIG_INDUCTION.values(), *P.FIG_ABLATION.values(), P.FIG_LOGIT_LENS, P.FIG_LOSS_BY_POSITION}
    if heads:
        expected.add(P.FIG_HEAD_FORMATION)
    assert {p.name for p in made} == expected
    for p in made:
        _assert_png(p)
