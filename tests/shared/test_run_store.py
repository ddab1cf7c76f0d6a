"""RunStore on SQLite and PostgreSQL: conditional transitions, listing, progress rows, the
database's own single-flight guard, and the API view of a run."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from shared.events import ProgressEvent
from shared.models import FineTuneRun
from shared.runs import (
    FineTuneManager,
    RunNotFoundError,
    RunStore,
    new_run_id,
    run_to_dict,
)
from tests.helpers import insert_run

# --- RunStore transitions ----------------------------------------------------------------------


def test_claim_and_finish_are_conditional(manager: FineTuneManager) -> None:
    runs: RunStore = manager.runs
    run = manager.start(None)
    assert runs.claim(run.id) is True
    assert runs.get(run.id).status == "running"
    assert runs.claim(run.id) is False  # a second worker cannot claim it
    assert runs.update(run.id, traces_used=12) is True

    assert runs.finish(run.id, "completed", lora_path="/adapters/x") is True
    finished = runs.get(run.id)
    assert finished.status == "completed" and finished.active_slot is None
    assert finished.completed_at is not None and finished.lora_path == "/adapters/x"
    assert finished.traces_used == 12

    assert runs.finish(run.id, "failed", error_message="late") is False
    assert runs.get(run.id).status == "completed"
    assert runs.get(run.id).error_message is None
    assert runs.update(run.id, traces_used=99) is False
    assert runs.get(run.id).traces_used == 12
    assert runs.cancel_pending(run.id) is False
    assert runs.claim(run.id) is False


def test_finish_a_pending_run(manager: FineTuneManager) -> None:
    run = manager.start(None)
    assert manager.runs.finish(run.id, "failed", error_code="GENERAL") is True
    assert manager.runs.get(run.id).status == "failed"
    assert not manager.is_running()
    with pytest.raises(AssertionError):  # only a terminal status finishes a run
        manager.runs.finish(run.id, "running")

    with pytest.raises(RunNotFoundError, match="Run not found: run_nope"):
        manager.get("run_nope")
    assert manager.runs.claim("run_nope") is False
    assert manager.runs.finish("run_nope", "completed") is False


# --- list --------------------------------------------------------------------------------------


def test_list_pages_filters_and_counts(manager: FineTuneManager) -> None:
    ids = []
    for index in range(5):
        run = manager.start(None)
        manager.runs.finish(run.id, "completed" if index % 2 == 0 else "failed")
        ids.append(run.id)
    newest_first = list(reversed(ids))

    runs, total = manager.list()
    assert total == 5 and [r.id for r in runs] == newest_first

    runs, total = manager.list(limit=2)
    assert total == 5 and [r.id for r in runs] == newest_first[:2]
    runs, total = manager.list(limit=2, offset=2)
    assert total == 5 and [r.id for r in runs] == newest_first[2:4]
    runs, total = manager.list(limit=2, offset=10)
    assert total == 5 and runs == []

    runs, total = manager.list(status="completed")
    assert total == 3 and {r.id for r in runs} == {ids[0], ids[2], ids[4]}
    runs, total = manager.list(status="failed", limit=1)
    assert total == 2 and [r.id for r in runs] == [ids[3]]
    assert manager.list(status="running") == ([], 0)

    with pytest.raises(ValueError, match="status must be one of"):
        manager.list(status="done")


# --- progress rows -----------------------------------------------------------------------------


def test_record_event_stores_progress_and_eval_only(manager: FineTuneManager) -> None:
    run = manager.start(None)
    store = manager.runs
    store.record_event(ProgressEvent("training_start", run_id=run.id, total_steps=10))
    store.record_event(
        ProgressEvent(
            "progress",
            run_id=run.id,
            step=1,
            total_steps=10,
            loss=2.5,
            learning_rate=2e-4,
            eta_seconds=90,
        )
    )
    store.record_event(ProgressEvent("checkpoint", run_id=run.id, step=1, path="/c"))
    store.record_event(
        ProgressEvent("eval", run_id=run.id, step=2, total_steps=10, loss=2.1, eval_loss=2.3)
    )
    store.record_event(ProgressEvent("heartbeat", run_id=run.id))
    store.record_event(ProgressEvent("complete", run_id=run.id))
    store.record_event(ProgressEvent("progress", run_id=None, step=9, total_steps=10))

    rows = store.progress(run.id)
    assert [(r["type"], r["step"]) for r in rows] == [("progress", 1), ("eval", 2)]
    first, second = rows
    assert first["totalSteps"] == 10 and first["loss"] == 2.5 and first["evalLoss"] is None
    assert first["learningRate"] == 2e-4 and first["etaSeconds"] == 90
    assert first["timestamp"].endswith("Z")
    assert second["evalLoss"] == 2.3
    assert second["id"] > first["id"]

    assert store.progress(run.id, after_id=first["id"]) == [second]
    assert store.progress(run.id, limit=1) == [first]
    assert store.progress("run_other") == []

    store.record_event(ProgressEvent("progress", run_id=run.id, loss=1.0))  # no step numbers
    assert [(r["step"], r["totalSteps"]) for r in store.progress(run.id)][-1] == (0, 0)


# --- single flight in the database itself ------------------------------------------------------


def test_unique_active_slot_refuses_a_second_active_row(manager: FineTuneManager) -> None:
    insert_run(manager, "running", active_slot=1)
    with pytest.raises(IntegrityError):
        insert_run(manager, "pending", active_slot=1)
    # finished runs hold no slot: any number of them may exist
    insert_run(manager, "completed")
    insert_run(manager, "failed")
    with manager.db.session() as session:
        assert session.scalar(sa.select(sa.func.count()).select_from(FineTuneRun)) == 3
    # plain SQL, bypassing the ORM, is refused as well
    statement = sa.text(
        "INSERT INTO finetune_runs (id, status, base_model, config, active_slot)"
        " VALUES ('run_bbbbbb', 'pending', 'm', '{}', 1)"
    )
    with pytest.raises(IntegrityError), manager.db.engine.begin() as connection:
        connection.execute(statement)


# --- views -------------------------------------------------------------------------------------


def test_run_to_dict(manager: FineTuneManager) -> None:
    run = manager.start({"epochs": 1})
    data = run_to_dict(run)
    assert data["id"] == run.id
    assert data["status"] == "pending"
    assert data["triggeredBy"] == "api"
    assert data["config"]["epochs"] == 1
    assert data["metrics"] is None
    assert data["cancelRequested"] is False
    assert data["progressUrl"] == f"/api/finetune/{run.id}/progress"
    assert data["startedAt"].endswith("Z") and data["completedAt"] is None
    json.dumps(data)  # serialisable as is

    manager.runs.finish(run.id, "completed", metrics=json.dumps({"final_val_loss": 0.5}))
    data = run_to_dict(manager.get(run.id))
    assert data["metrics"] == {"final_val_loss": 0.5} and data["completedAt"].endswith("Z")

    config = manager.default_config()
    assert config["baseModel"] == manager.settings.base_model
    assert config["minQualityScore"] == manager.settings.min_quality


def test_new_run_ids_are_unique_and_well_formed() -> None:
    ids = {new_run_id() for _ in range(200)}
    assert len(ids) == 200
    assert all(len(i) == 16 and i.startswith("run_") for i in ids)
    assert all(int(i[4:], 16) >= 0 for i in ids)


def test_status_names_are_one_definition() -> None:
    from shared.names import RUN_STATUSES, STATUS_CANCELLED, STATUS_PENDING, TERMINAL_STATUSES

    assert RUN_STATUSES[0] == STATUS_PENDING and STATUS_CANCELLED in TERMINAL_STATUSES
    assert set(TERMINAL_STATUSES) < set(RUN_STATUSES)
