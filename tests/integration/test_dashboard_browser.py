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
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.db import Database
from shared.events import ProgressEvent, RedisPublisher
from shared.models import FineTuneProgress, FineTuneRun, utcnow
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


GATE_RUN, OLD_RUN = "run_00c0ffee0ca7", "run_00c0ffee00d1"
PARENT, GRANDPARENT = "run_00c0ffee0b01", "run_00c0ffee0a01"


def _seed_gated_runs(service: Service) -> dict[str, Any]:
    """Published adapters as the gate records them now (criteria, interval, samples with the
    active adapter's answers, a parent and a grandparent) and as it did before (no criteria,
    no interval, no samples), each with its completed run."""
    from tests.gate_records import (
        FULL_PROMOTION,
        OLD_PROMOTION,
        SAMPLES,
        publish_with_gate,
    )

    root = service.settings.lora_output_dir
    hostile = ' <img src=x onerror="window.pwned = 2">'  # a reason quotes a trace's text
    promotion = {**FULL_PROMOTION, "reason": FULL_PROMOTION["reason"] + hostile}
    publish_with_gate(root, GRANDPARENT, promotion=None, created="2026-11-01T00:00:00Z")
    publish_with_gate(root, PARENT, promotion=None, parent=GRANDPARENT)
    publish_with_gate(root, GATE_RUN, promotion=promotion, samples=SAMPLES, parent=PARENT)
    publish_with_gate(root, OLD_RUN, promotion=OLD_PROMOTION)
    db = Database(service.settings.database_url)
    with db.session() as session:
        for run_id, record in ((GATE_RUN, promotion), (OLD_RUN, OLD_PROMOTION)):
            session.add(
                FineTuneRun(
                    id=run_id,
                    status="completed",
                    triggered_by="api",
                    base_model="smollm2:135m",
                    config="{}",
                    lora_path=str(root / run_id),
                    metrics=json.dumps({"base_val_loss": 1.5, "adapter_val_loss": 1.2}),
                    promotion=json.dumps(record),
                )
            )
    db.dispose()
    return {"promotion": promotion, "samples": SAMPLES}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_run_page_shows_the_gate_lineage_and_samples_as_text(service: Service, page: Any) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    seeded = _seed_gated_runs(service)
    p = page
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))

    # home: the Gate column's hover names the interval
    p.goto(f"{service.base_url}/")
    gate_cell = p.locator(f'#adapters tr[data-adapter-id="{GATE_RUN}"] td').nth(2)
    gate_cell.wait_for(timeout=10_000)
    assert gate_cell.inner_text() == "rejected"
    assert "Δ loss 1.2040 [1.05, 1.34] at 95%" in gate_cell.get_attribute("title")

    # the run page: the decision, its reason (as text), the improvement with its interval
    p.goto(f"{service.base_url}/#/runs/{GATE_RUN}")
    p.wait_for_selector("#gate:not([hidden])", timeout=10_000)
    assert p.get_attribute("#gate-decision", "data-decision") == "rejected"
    assert p.inner_text("#gate-reason") == seeded["promotion"]["reason"]
    summary = p.inner_text("#gate-summary")
    assert "Δ loss 1.2040 [1.05, 1.34] at 95%" in summary
    assert "21 examples scored" in summary and "3 left out" in summary
    assert "against run_parent0001" in summary

    # one row per criterion, in the gate's order, with its verdict and numbers
    rows = p.locator("#gate-criteria tbody tr")
    names = [rows.nth(i).get_attribute("data-criterion") for i in range(rows.count())]
    assert names == ["loss", "generation", "preference", "drift"]

    def row(name: str) -> Any:
        return p.locator(f'#gate-criteria tr[data-criterion="{name}"]')

    verdicts = {n: row(n).locator("[data-verdict]").get_attribute("data-verdict") for n in names}
    assert verdicts == {
        "loss": "pass",
        "generation": "pass",
        "preference": "not measured",
        "drift": "fail",
    }
    assert row("preference").locator(".verdict.not-measured").count() == 1
    assert "Δ 1.2040 [1.05, 1.34]" in row("loss").inner_text()
    assert "exactMatch 0.25 → 0.50" in row("generation").inner_text()
    assert "16 examples" in row("generation").inner_text()
    assert "no held-out preference pairs" in row("preference").inner_text()
    assert "drift 0.6200 (max 0.5)" in row("drift").inner_text()
    assert "decided" in (row("drift").get_attribute("class") or "")
    drift = p.inner_text("#gate-drift")
    assert "Drift 0.6200" in drift and "(max 0.5)" in drift and "120 general prompts" in drift

    # lineage, from GET /api/adapters/<id>: parent first, each a link to its run
    p.wait_for_selector("#run-lineage:not([hidden])", timeout=10_000)
    assert p.inner_text("#run-lineage") == f"continues {PARENT} ← {GRANDPARENT}"
    assert p.get_attribute(f'#run-lineage a[data-lineage-id="{PARENT}"]', "href") == (
        f"#/runs/{PARENT}"
    )

    # the samples side by side, the active adapter's column since a row has one
    p.wait_for_selector("#samples-card:not([hidden])", timeout=10_000)
    heads = p.locator("#samples thead th").all_inner_texts()
    assert heads == ["Question", "Reference", "Base model", "Adapter", "Active adapter"]
    first = p.locator('#samples tr[data-sample="0"] td').all_inner_texts()
    assert first[0] == "What is 6 * 7?" and first[1] == "42"
    assert "It is 41." in first[2] and "✗" in first[2]
    assert "42" in first[3] and "✓" in first[3]
    assert "forty-two\nI think" in first[4] and "ROUGE-L 0.50" in first[4]
    second = p.locator('#samples tr[data-sample="1"] td').all_inner_texts()
    hostile = seeded["samples"][1]
    assert second[0] == hostile["instruction"] and second[1] == hostile["reference"]
    assert hostile["base"] in second[2] and "ROUGE-L 0.25" in second[2]
    assert second[4] == "–"  # no active adapter's answer for this one
    # HTML in a sample or a reason is text: no element made of it, no script run
    assert p.locator("#samples script, #samples img, #samples b, #gate img").count() == 0
    assert p.evaluate("window.pwned") is None
    p.screenshot(path=str(ARTIFACTS / "dashboard-gate.png"), full_page=True)

    # a promotion from before criteria and intervals: what it has, and no errors
    p.goto(f"{service.base_url}/#/runs/{OLD_RUN}")
    p.wait_for_selector('#gate-decision[data-decision="promoted"]', timeout=10_000)
    assert p.inner_text("#gate-reason") == "validation loss improved by 0.3000 over base model"
    summary = p.inner_text("#gate-summary")
    assert "Δ loss 0.3000" in summary and "[" not in summary and " at " not in summary
    assert "val loss 1.5000 → 1.2000" in summary
    assert p.is_hidden("#gate-criteria") and p.is_hidden("#gate-drift")
    p.wait_for_function(
        "document.getElementById('result-list').textContent.includes('promotion')",
        timeout=10_000,
    )
    p.wait_for_timeout(500)  # the adapter's fetch: no samples, no lineage
    assert p.is_hidden("#samples-card") and p.is_hidden("#run-lineage")
    p.screenshot(path=str(ARTIFACTS / "dashboard-gate-old.png"), full_page=True)
    assert errors == []
