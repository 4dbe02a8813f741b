"""Each figure function on small synthetic records (tests/fixtures.py) draws the record's values:
the tests catch every Figure as it is saved (before it is closed) and read back what its axes
hold, and check that a real PNG was written."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from nanobard.interp import figures as F
from nanobard.rundir import RunDir
from nanobard.study import figures as S
from tests.fixtures import (
    synthetic_headline,
    synthetic_history,
    synthetic_interpret,
    synthetic_study,
)

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def drawn(monkeypatch) -> dict:
    """File name -> the Figure a figure function saved there (still inspectable once closed)."""
    figs = {}
    save = F.save_figure

    def capture(fig, path):
        figs[Path(path).name] = fig
        return save(fig, path)

    monkeypatch.setattr(F, "save_figure", capture)
    monkeypatch.setattr(S, "save_figure", capture)  # study/figures.py imported it by name
    return figs


def _assert_png(path, min_bytes: int = 5_000) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG), path
    assert len(data) > min_bytes, f"{path.name}: {len(data)} bytes"


def _panels(fig) -> list:
    """The figure's axes without its colorbars."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def _xy(line) -> tuple[list[float], list[float]]:
    return [float(x) for x in line.get_xdata()], [float(y) for y in line.get_ydata()]


def _lines(ax) -> dict[str, tuple[list[float], list[float]]]:
    return {line.get_label(): _xy(line) for line in ax.get_lines()}


def _bars(ax) -> tuple[list[str], list[float], list[str]]:
    """(bar names, bar heights, the notes written above the bars)."""
    names = [t.get_text() for t in ax.get_xticklabels()]
    return names, [float(p.get_height()) for p in ax.patches], [t.get_text() for t in ax.texts]


def _image(ax) -> np.ndarray:
    """An axes' single image as floats, masked (transparent) cells as NaN."""
    (im,) = ax.images
    return np.ma.filled(np.ma.asarray(im.get_array(), dtype=float), np.nan)


def _grid(rows) -> np.ndarray:
    return np.array([[np.nan if v is None else v for v in row] for row in rows], dtype=float)


def test_training_progress_plots_every_evaluation(tmp_path, drawn):
    rows = synthetic_history(heads=False)
    rows[1] = replace(rows[1], train_loss=None)  # e.g. a row that measured validation only
    rows[2] = replace(rows[2], lr=None)
    _assert_png(S.training_progress(rows, "From-scratch GPT", tmp_path / "t.png"))
    fig = drawn["t.png"]
    assert fig.get_suptitle() == "From-scratch GPT"
    by_step, by_tokens, lr = fig.axes
    assert [ax.get_title() for ax in fig.axes] == [
        "loss by step",
        "loss by tokens seen",
        "learning rate",
    ]
    for ax, key in ((by_step, "step"), (by_tokens, "tokens")):
        x = [float(getattr(r, key)) for r in rows]
        assert _lines(ax) == {
            "train loss": (x[:1] + x[2:], [r.train_loss for r in rows if r.train_loss is not None]),
            "validation loss": (x, [r.val_loss for r in rows]),
        }
    ((steps, lrs),) = _lines(lr).values()
    assert steps == [r.step for r in rows if r.lr is not None] and lrs == [1e-3] * 5

    _assert_png(S.training_progress(rows[:1], "one evaluation", tmp_path / "t1.png"))
    one = drawn["t1.png"]
    assert [len(line.get_xdata()) for ax in one.axes for line in ax.get_lines()] == [1, 1, 1, 1, 1]
    assert all(ax.margins()[0] == 0.5 for ax in one.axes)  # a lone point is not squeezed


@pytest.mark.parametrize("before", [True, False])
def test_model_comparison_plots_the_headline(tmp_path, drawn, before):
    head = synthetic_headline()
    if not before:  # the pretrained model was not scored before fine-tuning
        head = replace(head, pretrained=replace(head.pretrained, bits_per_char_before=None))
    _assert_png(S.model_comparison(head, tmp_path / "c.png"))
    size, bpc, reduction, seconds = drawn["c.png"].axes
    s, p = head.scratch, head.pretrained
    names = ["from scratch", "tiny-gpt2"]
    assert _bars(size) == (names, [12_000, 135_000_000], ["12.0K", "135.0M"])
    assert size.get_yscale() == "log" and size.get_title() == "model size (11250x larger)"
    scored = [("from scratch", s.bits_per_char)]
    scored += [("tiny-gpt2 before", p.bits_per_char_before)] * before
    scored += [("tiny-gpt2 after", p.bits_per_char)]
    assert _bars(bpc) == (
        [n for n, _ in scored],
        [v for _, v in scored],
        [f"{v:.3f}" for _, v in scored],
    )
    assert _bars(reduction) == (names, [35.0, 12.0], ["35.0%", "12.0%"])
    assert _bars(seconds) == (
        names,
        [12.5, 30.0],
        ["12 s\n9,000 tokens/s", "30 s\n800 tokens/s"],
    )


def test_attention_heads_draws_each_heads_weights(tmp_path, drawn):
    import torch

    w = torch.softmax(
        torch.randn(2, 4, 10, 10).masked_fill(torch.ones(10, 10).triu(1).bool(), -1e9), -1
    )
    tokens = list("ROMEO:\nBut")
    _assert_png(F.attention_heads(w, tokens, 1, "layer 1", tmp_path / "a.png"))
    fig = drawn["a.png"]
    assert fig.get_suptitle() == "layer 1"
    heads = _panels(fig)
    assert [ax.get_title() for ax in heads] == ["head 0", "head 1", "head 2", "head 3"]
    for h, ax in enumerate(heads):
        np.testing.assert_array_equal(_image(ax), w[1, h].numpy().astype(float))
    labels = ["R", "O", "M", "E", "O", ":", "\\n", "B", "u", "t"]
    assert [t.get_text() for t in heads[0].get_xticklabels()] == labels
    assert [t.get_text() for t in heads[0].get_yticklabels()] == labels

    # fewer heads than panels, and only the first tokens: the top-left block of each head
    F.attention_heads(w, tokens, 0, "first", tmp_path / "b.png", max_heads=3, max_tokens=6)
    *heads, spare = _panels(drawn["b.png"])
    assert len(heads) == 3 and not spare.axison
    for h, ax in enumerate(heads):
        np.testing.assert_array_equal(_image(ax), w[0, h, :6, :6].numpy().astype(float))


@pytest.mark.parametrize("track", ["scratch", "pretrained"])
def test_induction_and_ablation_heatmaps_draw_the_tables(tmp_path, drawn, track):
    a = getattr(synthetic_interpret(), track)
    _assert_png(F.induction_heads(a.induction, tmp_path / "i.png"))
    fig = drawn["i.png"]
    assert fig.get_suptitle().startswith(f"{a.induction.model}: induction heads")
    ind, prev = _panels(fig)
    for ax, table, name in (
        (ind, a.induction.induction, "induction score"),
        (prev, a.induction.previous_token, "previous-token score"),
    ):
        assert ax.get_title().startswith(name)
        np.testing.assert_array_equal(_image(ax), _grid(table))
        assert [t.get_text() for t in ax.texts] == [f"{v:.2f}" for row in table for v in row]

    _assert_png(F.head_ablation(a.ablation, tmp_path / "h.png"))
    (ax,) = _panels(drawn["h.png"])
    delta = _grid(a.ablation.delta_bpc)
    np.testing.assert_array_equal(_image(ax), delta)  # heads not ablated: NaN, drawn hatched
    assert [i for i in range(len(delta)) if np.isnan(delta[i]).all()] == [
        i for i in range(len(delta)) if i not in a.ablation.layers
    ]
    vmax = np.nanmax(np.abs(delta))
    assert ax.images[0].get_clim() == (-vmax, vmax)  # centred: red costs, blue helps
    assert [t.get_text() for t in ax.texts] == [f"{v:+.2f}" for v in delta.ravel() if v == v]
    note = "every head was ablated" if track == "scratch" else "only layers 0, 3, 5 were"
    assert note in ax.get_xlabel()


def test_logit_lens_and_loss_by_position_put_every_model_on_one_axis(tmp_path, drawn):
    interp = synthetic_interpret()
    models = [interp.scratch, interp.pretrained_before, interp.pretrained]
    _assert_png(F.logit_lens([a.lens for a in models], tmp_path / "l.png"))
    loss, agree = drawn["l.png"].axes
    assert loss.get_yscale() == "log"
    for ax, drawn_value in (
        (loss, lambda r: r.bpc),
        (agree, lambda r: [100 * x for x in r.top1_agreement]),  # percent
    ):
        lines = ax.get_lines()
        assert [line.get_label() for line in lines] == [
            "from scratch (2 layers)",
            "tiny-gpt2 before fine-tuning (6 layers)",
            "tiny-gpt2 fine-tuned (6 layers)",
        ]
        assert [line.get_color() for line in lines] == ["tab:blue", "tab:gray", "tab:purple"]
        for line, r in zip(lines, [a.lens for a in models]):
            depth = [i / r.layers[-1] for i in r.layers]  # 0 = embeddings, 1 = output
            assert _xy(line) == (depth, drawn_value(r))

    _assert_png(F.loss_by_position([a.positions for a in models], tmp_path / "p.png"))
    (ax,) = drawn["p.png"].axes
    assert ax.get_xscale() == "log"
    lines = ax.get_lines()
    assert len(lines) == 2 * len(models)  # each model: every position faint, then binned
    for (raw, binned), a in zip(zip(lines[::2], lines[1::2]), models):
        r = a.positions
        points = [(x, b) for x, b in enumerate(r.bpc) if b is not None and x > 0]
        assert _xy(raw) == ([x for x, _ in points], [b for _, b in points])
        assert binned.get_label() == f"{r.model} ({r.overall_bpc:.2f} overall, {r.windows} windows)"
        # binned: the mean over consecutive runs of positions that cover each position once (every
        # position scores the same number of characters here, so a run's mean x gives its end)
        xs, ys = _xy(binned)
        assert 1 < len(xs) < len(points)
        start = 1
        for x, y in zip(xs, ys):
            end = round(2 * x - start + 1)
            assert end > start and x == pytest.approx((start + end - 1) / 2)
            assert y == pytest.approx(np.mean([b for _, b in points[start - 1 : end - 1]]))
            start = end
        assert start == len(r.bpc)


def test_head_formation_draws_every_head_and_skips_rows_without_heads(tmp_path, drawn):
    rows = synthetic_history(heads=False)
    assert F.head_formation(rows, tmp_path / "none.png") is None
    assert not (tmp_path / "none.png").exists() and not drawn
    mixed = rows[:2] + synthetic_history()[2:]  # the first evaluations had no per-head scores
    _assert_png(F.head_formation(mixed, tmp_path / "f.png"))
    fig, scored = drawn["f.png"], mixed[2:]
    tokens = [float(r.tokens) for r in scored]
    panels = [ax for ax in fig.axes if ax.get_title()]
    twins = [ax for ax in fig.axes if not ax.get_title()]
    strongest = {"previous_token": {"L0H1", "L1H1"}, "induction": {"L1H2"}}
    for ax, twin, key in zip(panels, twins, ("previous_token", "induction")):
        series = {
            f"L{i}H{h}": [r.heads[key][i][h] for r in scored] for i in range(2) for h in range(4)
        }
        lines = ax.get_lines()
        assert sorted(_xy(line)[1] for line in lines) == sorted(series.values())  # every head
        assert all(_xy(line)[0] == tokens for line in lines)
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        assert len(legend) == F.HIGHLIGHT and set(legend[: len(strongest[key])]) == strongest[key]
        for line in lines:  # the labelled heads are drawn with the values of the head they name
            if not line.get_label().startswith("_"):
                assert _xy(line)[1] == series[line.get_label()]
        assert _lines(twin) == {"validation loss": (tokens, [r.val_loss for r in scored])}


@pytest.mark.parametrize("heads", [True, False])
def test_study_figures_draws_each_file_from_its_record(tmp_path, drawn, heads):
    run, state, head = synthetic_study(tmp_path / "run", figures=False, heads=heads)
    interp = state.interpret
    made = S.study_figures(run, state, head)
    expected = {
        RunDir.FIG_TRAINING_SCRATCH,
        RunDir.FIG_TRAINING_HF,
        RunDir.FIG_COMPARISON,
        *RunDir.FIG_ATTENTION.values(),
        *RunDir.FIG_INDUCTION.values(),
        *RunDir.FIG_ABLATION.values(),
        RunDir.FIG_LOGIT_LENS,
        RunDir.FIG_LOSS_BY_POSITION,
        *RunDir.FIG_PATCHING.values(),
    }
    if heads:
        expected.add(RunDir.FIG_HEAD_FORMATION)
    assert set(made) == expected == set(drawn)
    for name in made:
        _assert_png(run / name, min_bytes=2_000)
    for track in ("scratch", "pretrained"):
        a = getattr(interp, track)
        ind, _ = _panels(drawn[RunDir.FIG_INDUCTION[track]])
        np.testing.assert_array_equal(_image(ind), _grid(a.induction.induction))
        (abl,) = _panels(drawn[RunDir.FIG_ABLATION[track]])
        np.testing.assert_array_equal(_image(abl), _grid(a.ablation.delta_bpc))
        p = getattr(interp, f"patching_{track}")
        resid, attn, mlp, heads_ax, dla, _ = _panels(drawn[RunDir.FIG_PATCHING[track]])
        for ax, table in ((resid, p.resid_pre), (attn, p.attn_out), (mlp, p.mlp_out),
                          (heads_ax, p.heads), (dla, p.dla.heads)):  # fmt: skip
            np.testing.assert_array_equal(_image(ax), _grid(table))
    everyone = [interp.scratch, interp.pretrained_before, interp.pretrained]
    lens = drawn[RunDir.FIG_LOGIT_LENS].axes[0].get_lines()
    assert [_xy(line)[1] for line in lens] == [a.lens.bpc for a in everyone]
    by_position = drawn[RunDir.FIG_LOSS_BY_POSITION].axes[0].get_lines()[::2]
    assert [_xy(line)[1] for line in by_position] == [
        [b for b in a.positions.bpc[1:] if b is not None] for a in everyone
    ]
