"""The app in a real browser: Debian's headless Chromium driven by Playwright, on a tiny model.

Solve a problem, rate the blind outputs, and check the ratings landed in SQLite. The page after
solving is saved under pytest's tmp dir; `scripts/screenshot_app.py` makes docs/app.png on the real model.
"""

import os
import socket
import sqlite3
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
TIMEOUT_MS = 120_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium (scripts/install_browser.sh)"),
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def served_app(tiny_run, tmp_path):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from mathtune.app.ui import launch

    db = tmp_path / "ratings.sqlite"
    demo, url = launch([tiny_run], None, None, db, "127.0.0.1", free_port(), block=False)
    yield url, db
    demo.close()


@pytest.fixture
def page():
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(TIMEOUT_MS)
        yield page
        browser.close()


def test_solve_rate_and_store(served_app, page, tmp_path):
    from playwright.sync_api import expect

    url, db = served_app
    page.goto(url)
    page.locator("#question").get_by_role("textbox").fill(
        "Mia has 4 pens and buys 9 more. Then Mia gets 2 times as many. How many pens?")
    page.locator("#solve").click()
    expect(page.locator("#tuned-details")).to_contain_text("Answer", timeout=TIMEOUT_MS)
    assert page.locator("#base-output").get_by_role("textbox").input_value().strip()
    page.screenshot(path=str(tmp_path / "app.png"), full_page=True)
    assert (tmp_path / "app.png").stat().st_size > 10_000  # a rendered page, not a blank one

    page.get_by_role("tab", name="Human evaluation").click()
    page.locator("#rater").get_by_role("textbox").fill("browser-rater")
    page.locator("#next-blind").click()
    expect(page.locator("#rating-status")).to_contain_text("rate each output")
    for slot in ("a", "b"):
        for criterion, score in zip(("correctness", "coherence", "readability", "pedagogy"), "4321", strict=True):
            page.locator(f"#rate-{slot}-{criterion}").get_by_label(score, exact=True).check()
    page.locator("#submit-ratings").click()
    expect(page.locator("#rating-status")).to_contain_text("Saved 2 rating(s) from browser-rater")

    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT rater, correctness, coherence, readability, pedagogy FROM ratings").fetchall()
    assert rows == [("browser-rater", 4, 3, 2, 1)] * 2

    page.get_by_role("tab", name="Solve").click()  # too long a problem: a clear message, not a crash
    page.locator("#question").get_by_role("textbox").fill("x" * 2001)
    page.locator("#solve").click()
    expect(page.locator(".toast-body").filter(has_text="the limit is 2,000")).to_be_visible()
