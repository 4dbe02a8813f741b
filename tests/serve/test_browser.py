"""The explorer in headless Chromium over the tiny study's three models: typing changes the
predictions, the temperature slider reshapes the distribution, switching a head off changes the
bits, generation streams in and stops; no console error, no request leaves the server."""

from __future__ import annotations

import json
import re
import urllib.parse
import urllib.request

import pytest

from tests.study.test_browser import CHROMIUM, _launch

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None, reason="Debian chromium not installed (make test installs it)"
    ),
]

PANEL = ".model[data-id='{}']"


def _next_table(page, model: str) -> list[str]:
    return page.locator(f"{PANEL.format(model)} .next tbody tr").all_text_contents()


def _settled(page, model: str) -> None:
    page.wait_for_function(
        "sel => { const p = document.querySelector(sel);"
        " return p && !p.classList.contains('busy') && p.querySelector('.next tbody tr'); }",
        arg=PANEL.format(model),
    )


def _wait_change(page, selector: str, before: str) -> str:
    page.wait_for_function(
        "([sel, before]) => { const e = document.querySelector(sel);"
        " return e && e.textContent !== before; }",
        arg=[selector, before],
        timeout=20_000,
    )
    return page.text_content(selector) or ""


def test_the_explorer_reacts_in_headless_chromium(server):
    from playwright.sync_api import sync_playwright

    host = urllib.parse.urlsplit(server).netloc
    errors: list[str] = []
    foreign: list[str] = []
    with sync_playwright() as p:
        browser = _launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("console", lambda m: m.type == "error" and errors.append(m.text))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("request", lambda r: urllib.parse.urlsplit(r.url).netloc != host
                and not r.url.startswith("data:") and foreign.append(r.url))  # fmt: skip
        page.goto(server)
        for model in ("scratch", "pretrained", "finetuned"):
            _settled(page, model)
        assert "3 model(s)" in page.text_content("#status")

        # 1. type a line: the prediction table changes, for the character and the BPE model
        before = {m: _next_table(page, m) for m in ("scratch", "finetuned")}
        page.fill("#text", "ROMEO:\nWhat light is this? Speak, ")
        for model in before:
            sel = f"{PANEL.format(model)} .next tbody"
            _wait_change(page, sel, "".join(before[model]))
            _settled(page, model)
            assert _next_table(page, model) != before[model]
        for model in before:  # the top prediction's direct logit attribution, from the API
            assert "direct logit attribution of" in page.text_content(f"{PANEL.format(model)} .dla")
        chars = page.locator(f"{PANEL.format('scratch')} .surprise .ch").count()
        assert chars == len("ROMEO:\nWhat light is this? Speak, ")

        # 2. the temperature slider reshapes the sampled distribution (not the model's own)
        sampled = f"{PANEL.format('scratch')} .next tbody tr:first-child td.s"
        model_p = f"{PANEL.format('scratch')} .next tbody tr:first-child td.p"
        p_before, s_before = page.text_content(model_p), page.text_content(sampled)
        page.eval_on_selector(
            "#temperature",
            "e => { e.value = '0.3'; e.dispatchEvent(new Event('input', {bubbles: true})); }",
        )
        s_after = _wait_change(page, sampled, s_before)
        assert float(s_after.rstrip("%")) > float(s_before.rstrip("%"))  # colder: sharper
        assert page.text_content(model_p) == p_before
        assert page.text_content("#temperature-out") == "0.30"

        # 3. switch a head off: the bits change, and the table shows the ablated column
        bpc = f"{PANEL.format('scratch')} .bpc"
        bits_before = page.text_content(bpc)
        page.click(f"{PANEL.format('scratch')} .cell[data-layer='0'][data-head='0'] .off")
        bits_after = _wait_change(page, bpc, bits_before)
        assert "1 head(s) off" in bits_after
        clean = float(bits_before.split()[0])
        ablated = float(bits_after.split("off: ")[1].split()[0])
        assert ablated != clean
        assert page.is_visible(f"{PANEL.format('scratch')} th.ab")

        # 4. generation streams in for every model at once, and Stop stops it on the server
        page.fill("#max-new", "2000")
        page.click("#generate")
        out = f"{PANEL.format('scratch')} .gen-out .generated"
        page.wait_for_function(
            "sel => (document.querySelector(sel)?.textContent || '').length > 0", arg=out
        )
        first = len(page.text_content(out) or "")
        page.wait_for_function(
            "([sel, n]) => document.querySelector(sel).textContent.length > n", arg=[out, first]
        )
        # a BPE model may end on its own (an end-of-text token) before Stop: which were still
        # generating is read in the same task as the click, so no stream can end in between
        live = page.evaluate(
            "() => { const ids = [...document.querySelectorAll('.model.generating')]"
            ".map((n) => n.dataset.id); document.querySelector('#stop').click(); return ids; }"
        )
        assert "scratch" in live  # characters only, no end token: 2000 of them take a while
        for model in ("scratch", "pretrained", "finetuned"):
            stats = f"{PANEL.format(model)} .gen-stats"
            page.wait_for_function(
                "sel => !document.querySelector(sel).textContent.startsWith('generating')",
                arg=stats,
            )
            said = page.text_content(stats)
            if model in live:
                assert said == "stopped", (model, said)
            else:  # it had ended already: its own figures stay
                assert re.fullmatch(r"\d+ tokens in [\d.]+ s \([\d.]+ tokens/s\)", said), said
            assert page.text_content(f"{PANEL.format(model)} .gen-out .prompt")
        stopped = len(page.text_content(out) or "")
        assert 0 < stopped < 2000

        def generations() -> int:
            return json.loads(urllib.request.urlopen(server + "/api/status").read())["generations"]

        for _ in range(100):  # the server has stopped every generation
            if not generations():
                break
            page.wait_for_timeout(50)
        assert generations() == 0
        assert page.is_disabled("#stop")
        browser.close()
    assert errors == []
    assert foreign == []
