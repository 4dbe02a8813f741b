"""Open the report in headless Chromium: no console errors, the explorer reacts, a screenshot."""

import shutil
from pathlib import Path

import pytest

from tests.test_pipeline import study  # noqa: F401  (module-scoped fixture)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium not installed (make test installs it)")]


def test_report_in_headless_chromium(study):  # noqa: F811
    from playwright.sync_api import sync_playwright

    out, _, _ = study
    ARTIFACTS.mkdir(exist_ok=True)
    errors, requests = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run", "--disable-quic"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: requests.append(r.url) if not r.url.startswith(("file:", "data:")) else None)
        page.goto((out / "report.html").as_uri())
        page.wait_for_selector("#ex-tokens .tok")
        page.screenshot(path=str(ARTIFACTS / "report_top.png"))
        page.hover("#ex-tokens .tok:nth-child(5)")
        sig0 = page.get_attribute("#heat", "data-signature")
        status0 = page.text_content("#ex-status")
        page.select_option("#ex-head", "1")
        page.hover("#ex-tokens .tok:nth-child(5)")
        sig1 = page.get_attribute("#heat", "data-signature")
        page.locator("#explorer").scroll_into_view_if_needed()
        page.locator("#explorer").screenshot(path=str(ARTIFACTS / "report_explorer.png"))
        assert "attends most to" in status0
        # switch model too: the token row must change to the other model's tokens
        n0 = page.locator("#ex-tokens .tok").count()
        page.select_option("#ex-model", "pretrained")
        n1 = page.locator("#ex-tokens .tok").count()
        alerts = []
        page.on("dialog", lambda d: (alerts.append(d.message), d.dismiss()))
        page.wait_for_timeout(200)
        browser.close()
    assert errors == []
    assert requests == []
    assert sig0 != sig1, "switching the head did not change the heatmap"
    assert n0 != n1 or n0 > 0
    assert alerts == []
    assert (ARTIFACTS / "report_top.png").stat().st_size > 10_000
