"""The run page's promotion gate in a real headless Chromium: the gate card with its criteria,
the lineage and the side-by-side samples shown as text, and an old record without criteria."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.db import Database
from shared.models import FineTuneRun
from tests.integration.browser import ARTIFACTS
from tests.integration.conftest import Service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

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
