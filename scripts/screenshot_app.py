"""Screenshot the demo app on a real run: `python scripts/screenshot_app.py RUN_DIR OUT.png [QUESTION_ID]`.

Starts `mathtune app RUN_DIR` in-process on a free port, solves one GSM8K test problem in headless
Chromium and saves the page. Needs /usr/bin/chromium (scripts/install_browser.sh) and the data dir.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main(run_dir: str, out: str, question: str = "Janet’s ducks lay 16 eggs per day. She eats three for "
         "breakfast every morning and bakes muffins for her friends every day with four. She sells the remainder "
         "at the farmers' market daily for $2 per fresh duck egg. How much in dollars does she make every day at "
         "the farmers' market?") -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from playwright.sync_api import expect, sync_playwright

    from mathtune.app.ui import launch

    demo, url = launch([Path(run_dir)], None, None, Path(out).with_suffix(".sqlite"), "127.0.0.1", free_port(),
                       block=False)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.set_default_timeout(600_000)
            page.goto(url)
            page.locator("#question").get_by_role("textbox").fill(question)
            page.locator("#solve").click()
            expect(page.locator("#tuned-details")).to_contain_text("Answer", timeout=600_000)
            page.screenshot(path=out, full_page=True)
            browser.close()
    finally:
        demo.close()
        Path(out).with_suffix(".sqlite").unlink(missing_ok=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
