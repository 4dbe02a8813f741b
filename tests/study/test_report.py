"""The report rendered from a synthetic study state: sections, escaping, self-containment and the
explorer's data. ``synthetic_study`` builds the state (used by test_browser.py too)."""

from __future__ import annotations

import json
import re

from nanobard.rundir import RunDir
from nanobard.study.records import StudyState
from nanobard.study.report import budget_rows, explorer_data, formation_found, write_report
from tests.fixtures import (
    ESCAPED,
    EVIL,
    TEXT,
    synthetic_history,
    synthetic_study,
)


def _render(tmp_path, **kw) -> tuple[str, RunDir, StudyState]:
    run, state, head = synthetic_study(tmp_path / "run", **kw)
    path = write_report(run, state, head, {"python": "3.11", "cpu": f"cpu {EVIL}"})
    assert path == run / RunDir.REPORT
    return path.read_text(encoding="utf-8"), run, state


def _data_block(html: str) -> str:
    m = re.search(r'<script type="application/json" id="attn-data">(.*?)</script>', html, re.S)
    assert m, "no explorer data block"
    return m.group(1)


def test_report_has_every_section_and_embeds_every_figure(tmp_path):
    html, run, state = _render(tmp_path)
    for section in (
        "What was run",
        "Comparison",
        "Figures",
        "Samples",
        "Attention findings",
        "Attention explorer",
        "Induction heads",
        "Head ablation",
        "Logit lens",
        "Loss by position",
        "Head formation",
        "Activation patching",
        "Causality check",
        "What this run found",
    ):
        assert section in html, section
    assert html.count("data:image/png;base64,") == len(state.figures) == 14
    assert "Patching head 3.1 alone from the clean run restores 100%" in html  # the 6-layer one
    assert "at the last position from layer 3 on" in html
    for finding in state.interpret.scratch.findings:  # the analyses' own sentences, escaped
        assert finding.replace("<", "&lt;").replace(">", "&gt;") in html.replace("&#39;", "'")
    assert re.search(
        r"strongest induction head, (whose ablation costs [+-]\d\.\d\d bits/char|which was not "
        r"ablated)",
        html,
    )
    assert "passed half that score" in html  # head formation, from the history's per-head scores
    assert "2.6000" in html and "1.9000" in html  # bits/char in the comparison table
    assert html.count('<table class="samples">') == 2  # one per prompt
    assert "16.2 s" in html and "15 s" in html  # scratch stage: took, and its budget
    assert f"nanobard serve {run.path}" in html  # the live explorer, for this run


def test_budget_rows_follow_the_stage_order_with_a_total(tmp_path):
    _, state, _ = synthetic_study(tmp_path, figures=False)
    rows = budget_rows(state)
    assert [r[0] for r in rows] == [*state.seconds, "total"]
    assert rows[1][1] == "15 s" and rows[2][1] == "20 s" and rows[3][1] == "-"
    assert "40 steps" in rows[1][3] and "2.300 -> 1.900 bits/char" in rows[2][3]
    assert rows[-1][2] == f"{sum(state.seconds.values()):.1f} s"


def test_evil_strings_are_escaped_everywhere(tmp_path):
    html, _, _ = _render(tmp_path)
    assert EVIL not in html  # corpus name and text, prompt, sample, model name, machine
    assert html.count(ESCAPED) >= 6
    assert "<script>" in html  # the report's own script, exactly once
    assert html.count("<script>") == 1


def test_report_is_self_contained(tmp_path):
    html, _, _ = _render(tmp_path)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert not re.search(r"https?://", html)
    assert "@import" not in html and "url(" not in html


def test_explorer_data_is_escaped_json_with_per_head_scores(tmp_path):
    html, run, state = _render(tmp_path)
    block = _data_block(html)
    assert "<" not in block and ">" not in block and "&" not in block
    data = json.loads(block)
    assert data == json.loads(json.dumps(explorer_data(run, state.attention, state.interpret)))
    assert data["scratch"]["tokens"] == list(TEXT)  # the evil text survives as data, decoded
    assert EVIL in "".join(data["pretrained"]["tokens"])
    for key, L, H in (("scratch", 2, 4), ("pretrained", 6, 3)):
        d = data[key]
        assert len(d["weights"]) == L and len(d["weights"][0]) == H
        for name in ("previous_token", "induction", "ablation"):
            assert len(d["scores"][name]) == L and all(
                len(row) == H for row in d["scores"][name]
            ), name
    an = state.interpret.pretrained
    assert data["pretrained"]["scores"]["induction"][4][2] == round(an.induction.induction[4][2], 3)
    assert data["pretrained"]["scores"]["ablation"][1] == [
        None,
        None,
        None,
    ]  # layer 1 was not ablated
    assert data["pretrained"]["scores"]["ablation"][3][0] == round(an.ablation.delta_bpc[3][0], 4)
    prev = {(s.layer, s.head): s.previous_token for s in state.attention.scratch.heads_stats}
    assert data["scratch"]["scores"]["previous_token"][1][3] == round(prev[1, 3], 3)


def test_report_without_interpretability_or_head_scores(tmp_path):
    run, state, head = synthetic_study(tmp_path / "run", figures=False, heads=False)
    html = write_report(run, state, head, {}).read_text()
    assert "fewer than two evaluations" in html  # head formation says why it has no curve
    state.interpret = None
    html = write_report(run, state, head, {}).read_text()
    assert "Induction heads" not in html
    data = json.loads(_data_block(html))
    assert data["scratch"]["scores"]["induction"] is None


def test_formation_says_so_when_no_head_formed():

    rows = synthetic_history()
    for r in rows:  # no induction head ever forms: every score stays at random-init level
        r.heads["induction"] = [[0.01 for _ in row] for row in r.heads["induction"]]
    said = formation_found(rows)
    assert any(
        line.startswith("No induction head formed: the strongest at the end, L") for line in said
    )
    assert any(
        "previous-token head at the end" in line and "passed half that score" in line
        for line in said
    )
    assert not any("induction head at the end" in line for line in said)
