"""The README's screenshot of ``nanobard serve`` (docs/serve.png): a real server over a study's
run folder, in headless Chromium (Debian's), after typing a line, clicking a character, switching
one head off and generating.

    .venv/bin/python benchmarks/serve_screenshot.py runs/quick docs/serve.png
"""

from __future__ import annotations

import argparse
import shutil

from nanobard.serve.app import create_app
from nanobard.serve.models import open_models
from nanobard.serve.server import running

TEXT = (
    "ROMEO:\nBut soft, what light through yonder window breaks?\nIt is the east, and Juliet is the"
)


def main() -> None:
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run")
    ap.add_argument("out")
    args = ap.parse_args()
    with running(create_app(open_models([args.run]))) as url, sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=shutil.which("chromium"), args=["--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": 1500, "height": 1000})
        page.goto(url)
        page.wait_for_selector(".model[data-id='finetuned'] .next tbody tr")
        page.fill("#text", TEXT)
        page.wait_for_timeout(3000)
        page.click(".model[data-id='scratch'] .cell[data-layer='0'][data-head='2'] .off")
        page.fill("#max-new", "60")
        page.click("#generate")
        page.wait_for_function(
            "() => [...document.querySelectorAll('.gen-stats')]"
            ".every(e => /tokens in/.test(e.textContent))",
            timeout=120_000,
        )
        page.wait_for_timeout(1500)
        page.screenshot(path=args.out, clip={"x": 0, "y": 0, "width": 1500, "height": 1480},
                        full_page=True)  # fmt: skip
        browser.close()


if __name__ == "__main__":
    main()
