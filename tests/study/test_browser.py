"""Open the report in headless Chromium: no console errors, no request, no dialog, and the
explorer reacts (tokens, heads, models, the head grid with each head's scores). Runs on the report
of a synthetic study state (fast) and on the end-to-end study's (the session ``study`` fixture)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nanobard.study.report import write_report
from tests.fixtures import EVIL, synthetic_study

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None, reason="Debian chromium not installed (make test installs it)"
    ),
]


@pytest.fixture(params=["synthetic", "study"])
def report(request, tmp_path_factory) -> Path:
    if request.param == "study":
        out, _, _ = request.getfixturevalue("study")
        return out / "report.html"
    run, state, head = synthetic_study(tmp_path_factory.mktemp("synthetic"))
    return write_report(run, state, head, {"python": "test"})


def _launch(p):
    return p.chromium.launch(
        executable_path=CHROMIUM,
        args=[
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
        ],
    )


def _state(page) -> dict:
    """What the explorer shows now."""
    return {
        "sig": page.get_attribute("#heat", "data-signature"),
        "info": page.text_content("#ex-head-info"),
        "layer": page.input_value("#ex-layer"),
        "head": page.input_value("#ex-head"),
        "tokens": page.locator("#ex-tokens .tok").all_text_contents(),
    }


def _click_head(page, layer: int, head: int) -> dict:
    cell = f"#ex-grid .cell[data-layer='{layer}'][data-head='{head}']"
    page.click(cell)
    assert "sel" in page.get_attribute(cell, "class").split()
    return _state(page)


def _expected_info(scores: dict, layer: int, head: int) -> tuple[str, str]:
    ind, cost = scores["induction"], scores["ablation"]
    v = None if cost is None else cost[layer][head]
    return (
        "not measured" if ind is None else f"induction score: {ind[layer][head]:.2f}",
        "ablation cost: not ablated" if v is None else f"ablation cost: {v:+.3f} bits/char",
    )


def test_report_in_headless_chromium(report, request):
    from playwright.sync_api import sync_playwright

    tag = request.node.callspec.id
    ARTIFACTS.mkdir(exist_ok=True)
    errors, requests, alerts = [], [], []
    with sync_playwright() as p:
        browser = _launch(p)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on(
            "request",
            lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:")) else None,
        )
        # before the page's script runs
        page.on("dialog", lambda d: (alerts.append(d.message), d.dismiss()))
        page.goto(report.as_uri())
        page.wait_for_selector("#ex-grid .cell")
        page.screenshot(path=str(ARTIFACTS / f"report_top_{tag}.png"))
        data = page.evaluate("JSON.parse(document.getElementById('attn-data').textContent)")
        text = page.evaluate("document.body.innerText")

        page.hover("#ex-tokens .tok:nth-child(5)")
        status = page.text_content("#ex-status")
        first = _state(page)
        page.select_option("#ex-head", "1")
        page.hover("#ex-tokens .tok:nth-child(5)")
        by_select = _state(page)
        by_grid = _click_head(page, 1, 0)
        page.locator("#explorer").scroll_into_view_if_needed()
        page.locator("#explorer").screenshot(path=str(ARTIFACTS / f"report_explorer_{tag}.png"))

        page.select_option("#ex-model", "pretrained")
        pretrained = _state(page)
        cost = data["pretrained"]["scores"]["ablation"] or []
        skipped = [(i, h) for i, row in enumerate(cost) for h, v in enumerate(row) if v is None]
        not_ablated = _click_head(page, *skipped[0]) if skipped else None
        page.wait_for_timeout(200)
        browser.close()

    assert errors == [] and requests == [] and alerts == []
    assert EVIL in text  # shown as text, never run
    assert "attends most to" in status
    assert first["sig"] != by_select["sig"], "switching the head did not change the heatmap"
    assert (by_grid["layer"], by_grid["head"]) == ("1", "0"), "clicking a head did not select it"
    assert by_grid["sig"] != by_select["sig"], (
        "clicking a head in the grid did not change the heatmap"
    )
    for part in _expected_info(data["scratch"]["scores"], 1, 0):
        assert part in by_grid["info"], (part, by_grid["info"])
    assert "L1H0" in by_grid["info"] and "previous-token share on this text" in by_grid["info"]
    assert pretrained["tokens"] != first["tokens"], (
        "switching the model did not change the token row"
    )
    assert len(pretrained["tokens"]) == len(data["pretrained"]["tokens"])
    if not_ablated is not None:
        assert "ablation cost: not ablated" in not_ablated["info"]
    assert (ARTIFACTS / f"report_top_{tag}.png").stat().st_size > 10_000
