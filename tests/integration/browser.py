"""A real headless Chromium for the dashboard tests, driven by Playwright for Python.

Needs Debian's `chromium` (`make browser` installs it); Playwright drives the system browser
through `executable_path`, `playwright install` is never used. Screenshots go to
test-artifacts/ (gitignored; CI keeps them as artifacts).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def open_page() -> Iterator[Any]:
    """A browser page; the page's console, errors and websocket frames are printed after."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: `make browser` installs Debian's chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            messages: list[str] = []  # the page's console and errors, printed if a test fails
            page.on("console", lambda m: messages.append(f"console.{m.type}: {m.text}"))
            page.on("pageerror", lambda e: messages.append(f"pageerror: {e}"))
            page.on("websocket", lambda ws: _record_frames(ws, messages))
            yield page
            print("\n".join(messages[-60:]))
        finally:
            browser.close()


def _record_frames(ws: Any, messages: list[str]) -> None:
    ws.on("framereceived", lambda frame: messages.append(f"ws<- {str(frame)[:120]}"))
