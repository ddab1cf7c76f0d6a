"""The dashboard in a real headless Chromium against a live run (real Redis, Celery, API).

Drives it as a person would: edit the default config, start a run, watch the loss chart
gain points over the websocket, cancel, and find the run cancelled in the list. Screenshots
go to test-artifacts/ (gitignored; CI keeps them as artifacts).

Needs Debian's `chromium` (`make browser` installs it) and Playwright for Python, which
drives the system browser through `executable_path`; `playwright install` is never used.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.db import Database
from shared.models import FineTuneRun
from tests.adapters import make_adapter
from tests.integration.conftest import Service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

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
LONG_RUN = {
    "backend": "trl",
    "maxSteps": 3000,  # far more than the test waits for: it is cancelled
    "evalSteps": 10,
    "saveSteps": 100000,
    "batchSize": 2,
    "gradAccum": 1,
    "maxSeqLen": 128,
    "evalSamples": 1,
    "loggingSteps": 1,
}


@pytest.fixture
def page() -> Iterator[Any]:
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


def _seed_completed_run(service: Service) -> str:
    """A finished run with a published adapter, so the adapters table has something to show."""
    make_adapter(
        service.settings.lora_output_dir,
        "run_00c0ffee0001",
        val_loss=1.25,
        metrics={"baseValLoss": 2.5},
    )
    db = Database(service.settings.database_url)
    metrics = {"base_val_loss": 2.5, "adapter_val_loss": 1.25, "total_steps": 40}
    with db.session() as session:
        session.add(
            FineTuneRun(
                id="run_00c0ffee0001",
                status="completed",
                triggered_by="api",
                base_model="smollm2:135m",
                config="{}",
                lora_path="/data/lora-adapters/run_00c0ffee0001",
                metrics=json.dumps({**metrics, "training_time_seconds": 61.0}),
            )
        )
    db.dispose()
    return "run_00c0ffee0001"


def _points(page: Any) -> int:
    return int(page.get_attribute("#chart", "data-points") or 0)


# One database is enough here: the SQLite/PostgreSQL matrix is covered by the API tests.
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_dashboard_follows_a_live_run_and_cancels_it(
    service: Service, tiny_model: Path, page: Any
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    done_id = _seed_completed_run(service)
    p = page  # a playwright Page
    p.goto(f"{service.base_url}/")

    # home: the published adapters; activate one, the registry's active.json follows
    adapter_row = p.locator(f'#adapters tr[data-adapter-id="{done_id}"]')
    adapter_row.wait_for(timeout=10_000)
    assert "2.5000 → 1.2500" in adapter_row.inner_text()
    adapter_row.locator("button").click()
    adapter_row.locator('[data-active="true"]').wait_for(timeout=10_000)
    active = json.loads((service.settings.lora_output_dir / "active.json").read_text())
    assert active["adapterId"] == done_id and p.is_visible("#rollback")
    p.wait_for_function("document.getElementById('config').value.includes('loraRank')")
    config = json.loads(p.input_value("#config"))
    config.update(LONG_RUN, baseModel=str(tiny_model))
    p.fill("#config", json.dumps(config, indent=2))
    p.click("#start")

    # the run page: the chart gains points as the worker trains
    p.wait_for_url("**/#/runs/run_*", timeout=10_000)
    run_id = p.url.rsplit("/", 1)[1]
    p.wait_for_function(
        "Number(document.getElementById('chart').dataset.points) >= 3", timeout=90_000
    )
    first = _points(p)
    p.wait_for_function(
        f"Number(document.getElementById('chart').dataset.points) > {first}", timeout=30_000
    )
    assert _points(p) > first
    assert p.inner_text("#feed-state") == "live"
    assert "/" in p.inner_text("#stat-step")
    assert p.inner_text("#stat-loss") != "–"
    assert p.inner_text("#stat-lr") != "–"
    assert ":" in p.inner_text("#stat-eta")
    assert p.get_attribute("#run-status", "data-status") == "running"
    p.screenshot(path=str(ARTIFACTS / "dashboard-live-run.png"), full_page=True)

    # cancel: the feed delivers `cancelled`, the page shows it
    p.click("#cancel")
    p.wait_for_selector('#run-status[data-status="cancelled"]', timeout=60_000)
    assert p.is_hidden("#cancel")
    p.wait_for_function(
        "document.getElementById('feed-state').textContent === 'closed'", timeout=10_000
    )
    log_text = p.inner_text("#log")
    assert "cancelled" in log_text and "progress" in log_text
    p.screenshot(path=str(ARTIFACTS / "dashboard-cancelled.png"), full_page=True)

    # back to the list: the run is there, cancelled
    p.goto(f"{service.base_url}/#/")
    row = p.locator(f'#runs tr[data-run-id="{run_id}"] .badge')
    row.wait_for(timeout=10_000)
    assert row.get_attribute("data-status") == "cancelled"
    p.screenshot(path=str(ARTIFACTS / "dashboard-runs.png"), full_page=True)
    assert (ARTIFACTS / "dashboard-live-run.png").stat().st_size > 10_000
