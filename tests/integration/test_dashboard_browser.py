"""The dashboard in a real headless Chromium against a live run (real Redis, Celery, API).

Drives it as a person would: edit the default config, start a run, watch the loss chart
gain points over the websocket, cancel, and find the run cancelled in the list. A second test
follows a preference (sft+dpo) run from its stored history and live feed: the DPO series, the
stage boundary, the stage and the preference accuracies. Screenshots go to test-artifacts/
(gitignored; CI keeps them as artifacts).

Needs Debian's `chromium` (`make browser` installs it) and Playwright for Python, which
drives the system browser through `executable_path`; `playwright install` is never used.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared.db import Database
from shared.events import ProgressEvent, RedisPublisher
from shared.models import FineTuneProgress, FineTuneRun, utcnow
from tests.adapters import make_adapter
from tests.integration.browser import ARTIFACTS
from tests.integration.conftest import Service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

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


def _series(page: Any) -> dict[str, int]:
    """The chart's drawn series: label -> point count (its `data-series`)."""
    return json.loads(page.get_attribute("#chart", "data-series") or "{}")


def _api_get(page: Any, path: str) -> dict[str, Any]:
    response = page.request.get(path)
    assert response.status == 200, response.text()
    return response.json()


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
    # the objective select starts at the default config's objective
    assert p.input_value("#objective") == config.get("objective", "sft")
    # typing an objective into the JSON moves the select; choosing one rewrites the JSON
    config.update(LONG_RUN, baseModel=str(tiny_model), objective="dpo")
    p.fill("#config", json.dumps(config, indent=2))
    assert p.input_value("#objective") == "dpo"
    p.select_option("#objective", "sft")  # this test follows a plain SFT run
    assert json.loads(p.input_value("#config"))["objective"] == "sft"
    p.click("#start")

    # the run page: the chart gains points as the worker trains
    p.wait_for_url("**/#/runs/run_*", timeout=10_000)
    run_id = p.url.rsplit("/", 1)[1]
    assert _api_get(p, f"{service.base_url}/api/finetune/{run_id}")["config"]["objective"] == "sft"
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
    assert p.inner_text("#stat-stage") == "sft" and p.inner_text("#run-objective") == "sft"
    assert set(_series(p)) <= {"train loss", "eval loss"}  # no DPO series, no boundary
    assert p.get_attribute("#chart", "data-stage-boundary") is None
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


SERIES_JS = "JSON.parse(document.getElementById('chart').dataset.series || '{}')"
DPO_RUN = "run_00c0ffee0d90"
SFT_STEPS = range(1, 6)  # steps 1-5 SFT, then 6-10 DPO; 20 in all
DPO_STEPS = range(6, 11)
TOTAL = 20


def _seed_dpo_history(service: Service) -> None:
    """A running sft+dpo run whose stored history has crossed into the DPO stage.

    Rows go in as the worker's event sink writes them (FineTuneProgress); the SFT eval row has
    no stage, as rows from before stages existed: the page must read it as SFT.
    """
    db = Database(service.settings.database_url)
    with db.session() as session:
        session.add(
            FineTuneRun(
                id=DPO_RUN,
                status="running",
                triggered_by="api",
                base_model="smollm2:135m",
                config=json.dumps({"objective": "sft+dpo", "dpoBeta": 0.1}),
                heartbeat_at=utcnow(),
            )
        )
        session.flush()  # the progress rows' foreign key needs the run first
        for step in SFT_STEPS:
            session.add(_row(step, "progress", "sft", loss=2.0 - 0.1 * step))
        session.add(_row(5, "eval", None, eval_loss=1.7))
        for step in DPO_STEPS:
            i = step - DPO_STEPS.start
            session.add(
                _row(
                    step,
                    "progress",
                    "dpo",
                    loss=0.69 - 0.03 * i,
                    rewards_margins=0.2 * i,
                    rewards_accuracies=0.5 + 0.1 * i,
                    logps_chosen=-40.0 + i,
                    logps_rejected=-41.0 - i,
                )
            )
        session.add(_row(10, "eval", "dpo", eval_loss=0.6, rewards_margins=0.5))
    db.dispose()


def _row(step: int, event_type: str, stage: str | None, **values: float) -> FineTuneProgress:
    return FineTuneProgress(
        run_id=DPO_RUN,
        step=step,
        total_steps=TOTAL,
        event_type=event_type,
        stage=stage,
        learning_rate=1e-5,
        eta_seconds=30,
        **values,
    )


def _complete_dpo_run(service: Service, metrics: dict[str, Any]) -> None:
    """What the worker does at the end: finish the row, then publish `complete`."""
    lora_path = f"/data/lora-adapters/{DPO_RUN}"
    db = Database(service.settings.database_url)
    with db.session() as session:
        run = session.get(FineTuneRun, DPO_RUN)
        run.status, run.lora_path, run.metrics = "completed", lora_path, json.dumps(metrics)
    db.dispose()
    publish = RedisPublisher(service.redis)
    publish(ProgressEvent("complete", run_id=DPO_RUN, adapter_path=lora_path, metrics=metrics))


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_dashboard_shows_a_preference_run_and_starts_with_the_chosen_objective(
    service: Service, page: Any
) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    _seed_dpo_history(service)
    p = page

    # the start form sends the chosen objective. The POST is intercepted and answered with
    # the 422 a DPO objective without pairs gets, so the message is checked as well (the
    # seeded run is active: the real API would answer 409)
    sent: list[dict[str, Any]] = []
    no_pairs = {
        "error": "Insufficient preference pairs: need 8, have 0",
        "current": 0,
        "required": 8,
    }

    def start(route: Any) -> None:
        if route.request.method != "POST":
            return route.fallback()
        sent.append(route.request.post_data_json)
        route.fulfill(status=422, content_type="application/json", body=json.dumps(no_pairs))

    p.route("**/api/finetune", start)
    p.goto(f"{service.base_url}/")
    p.wait_for_function("document.getElementById('config').value.includes('loraRank')")
    p.select_option("#objective", "dpo")
    assert json.loads(p.input_value("#config"))["objective"] == "dpo"
    p.click("#start")
    p.wait_for_selector("#start-message.error", timeout=10_000)
    assert sent and sent[0]["config"]["objective"] == "dpo"
    assert "loraRank" in sent[0]["config"]  # the rest of the editable config goes too
    # the server's message states the figures: they are not repeated after it
    assert p.inner_text("#start-message") == "Insufficient preference pairs: need 8, have 0"
    p.unroute("**/api/finetune")

    # the run page from stored history: SFT and DPO series, the boundary at the first DPO step
    p.goto(f"{service.base_url}/#/runs/{DPO_RUN}")
    p.wait_for_function(f"({SERIES_JS})['DPO loss'] >= 5", timeout=10_000)
    assert _series(p) == {
        "train loss": 5,
        "eval loss": 1,  # the stage-less row counts as SFT
        "DPO loss": 5,
        "DPO eval loss": 1,
        "reward margin": 5,
    }
    assert p.get_attribute("#chart", "data-stage-boundary") == str(DPO_STEPS.start)
    assert p.inner_text("#stat-stage") == "dpo"
    assert p.inner_text("#stat-step") == f"10 / {TOTAL}"
    assert p.inner_text("#stat-eval") == "0.6000"
    assert p.inner_text("#run-objective") == "sft+dpo"

    # a live DPO step: the chart gains it, the log line names the stage and the margin
    p.wait_for_function(
        "document.getElementById('feed-state').textContent === 'live'", timeout=10_000
    )
    publish = RedisPublisher(service.redis)
    publish(
        ProgressEvent(
            "progress",
            run_id=DPO_RUN,
            step=11,
            total_steps=TOTAL,
            loss=0.52,
            learning_rate=1e-5,
            eta_seconds=25,
            stage="dpo",
            rewards_margins=1.25,
            rewards_accuracies=0.9,
            logps_chosen=-35.0,
            logps_rejected=-46.0,
        )
    )
    p.wait_for_function(
        "document.getElementById('log').textContent.includes('step 11')", timeout=10_000
    )
    line = p.locator("#log li", has_text="step 11").inner_text()
    assert "[dpo]" in line and "loss 0.5200" in line and "margin 1.2500" in line
    assert _series(p)["DPO loss"] == 6 and _series(p)["reward margin"] == 6
    assert p.get_attribute("#chart", "data-stage-boundary") == str(DPO_STEPS.start)
    assert p.inner_text("#stat-loss") == "0.5200"
    p.screenshot(path=str(ARTIFACTS / "dashboard-dpo-run.png"), full_page=True)

    # completion: the result shows the objective and the preference accuracies
    metrics = {
        "base_val_loss": 2.5,
        "adapter_val_loss": 1.5,
        "total_steps": TOTAL,
        "base_preference_accuracy": 0.5,
        "adapter_preference_accuracy": 0.8333,
        "reference_preference_accuracy": 0.6667,
    }
    _complete_dpo_run(service, metrics)
    p.wait_for_selector('#run-status[data-status="completed"]', timeout=10_000)
    p.wait_for_selector("#run-result:not([hidden])", timeout=10_000)
    result = dict(
        zip(
            p.locator("#result-list dt").all_inner_texts(),
            p.locator("#result-list dd").all_inner_texts(),
            strict=True,
        )
    )
    assert result["objective"] == "sft+dpo"
    assert result["preference accuracy base → adapter"] == "0.50 → 0.83"
    assert result["preference accuracy reference"] == "0.67"
    assert result["exact match base → adapter"] == "– → –"  # no figure: a dash, not "null"
    p.screenshot(path=str(ARTIFACTS / "dashboard-dpo-complete.png"), full_page=True)
