"""/api/finetune on SQLite and PostgreSQL: start, list, get, cancel, config, events, SSE."""

from __future__ import annotations

import json
from typing import Any

import fakeredis
import pytest
from celery import Celery
from flask import Flask
from flask.testing import FlaskClient

from shared.events import Emitter, ProgressEvent, RedisPublisher
from shared.names import QUEUE_EXPORT, TASK_EXPORT
from shared.run_config import build_config
from shared.runs import FineTuneManager
from shared.traces import TraceStore
from tests.conftest import drain

# --- fixtures ----------------------------------------------------------------------------------
# (celery_app and drain come from tests/conftest.py)


@pytest.fixture
def app_database_url(migrated_url: str) -> str:
    """These tests run over SQLite and PostgreSQL (tests/conftest.py's database_url)."""
    return migrated_url


def manager_of(app: Flask) -> FineTuneManager:
    return app.extensions["tmde.manager"]


def start(client: FlaskClient, config: dict | None = None) -> str:
    response = client.post("/api/finetune", json={} if config is None else {"config": config})
    assert response.status_code == 202, response.get_json()
    return response.get_json()["runId"]


def finish(app: Flask, run_id: str, status: str = "completed") -> None:
    assert manager_of(app).runs.finish(run_id, status)


# --- POST /api/finetune ------------------------------------------------------------------------


def test_start_answers_202(client: FlaskClient, app: Flask, celery_app: Celery) -> None:
    response = client.post("/api/finetune", json={"config": {"loraRank": 8, "maxSteps": 3}})
    assert response.status_code == 202
    body = response.get_json()
    assert list(body) == ["runId", "status", "progressUrl"]
    assert body["status"] == "pending"
    assert body["runId"].startswith("run_")
    assert body["progressUrl"] == f"/api/finetune/{body['runId']}/progress"

    run = manager_of(app).get(body["runId"])
    assert run.triggered_by == "api"
    assert run.config_dict()["loraRank"] == 8 and run.config_dict()["maxSteps"] == 3
    (message,) = drain(celery_app, QUEUE_EXPORT)
    assert message.headers["task"] == TASK_EXPORT
    assert message.headers["id"] == json.loads(run.task_ids)[0]


def test_start_without_config_uses_defaults(client: FlaskClient, app: Flask) -> None:
    defaults = build_config(app.extensions["tmde.settings"]).to_dict()
    bodies = [{}, {"json": {}}, {"json": {"config": {}}}, {"json": {"config": None}}]
    for kwargs in bodies:  # no body, {}, empty config, null config
        response = client.post("/api/finetune", **kwargs)
        assert response.status_code == 202, kwargs
        run_id = response.get_json()["runId"]
        assert manager_of(app).get(run_id).config_dict() == defaults, kwargs
        finish(app, run_id)


def test_start_conflicts_while_a_run_is_active(client: FlaskClient, app: Flask) -> None:
    run_id = start(client)
    response = client.post("/api/finetune", json={})
    assert response.status_code == 409
    body = response.get_json()
    assert body["activeRunId"] == run_id
    assert "already in progress" in body["error"]

    assert manager_of(app).runs.claim(run_id)  # running blocks as well
    assert client.post("/api/finetune", json={}).status_code == 409

    finish(app, run_id)
    assert client.post("/api/finetune", json={}).status_code == 202


def test_start_with_too_few_traces_is_422(make_app: Any, trace_store: TraceStore) -> None:
    app = make_app(min_traces=10_000)
    response = app.test_client().post("/api/finetune", json={})
    assert response.status_code == 422
    body = response.get_json()
    candidates = trace_store.get_stats(8.0).fine_tune_candidates
    assert body["current"] == candidates and body["required"] == 10_000
    assert body["error"] == f"Insufficient traces: need 10000, have {candidates}"
    assert manager_of(app).list() == ([], 0)


def test_an_objective_with_dpo_and_no_possible_pairs_is_422(make_app: Any, tmp_path) -> None:  # noqa: ANN001
    from shared.traces import Round, Trace

    store = TraceStore(tmp_path / "no-pairs.db")
    # a proposer round that is the final answer, a critic's round, a draft judged "accepted":
    # nothing the debate rejected, so no preference pair can come out of these traces
    store.add_many(
        [
            Trace(
                id=f"t{i}",
                query=f"question {i}",
                final_answer=f"answer {i}",
                quality_score=9.0,
                rounds=[
                    Round("proposer", f"answer {i}"),
                    Round("critic", "looks right"),
                    Round("proposer", f"draft {i}", verdict="accepted"),
                ],
            )
            for i in range(20)
        ]
    )
    app = make_app(traces_db_path=store.path)
    client = app.test_client()
    response = client.post("/api/finetune", json={"config": {"objective": "sft+dpo"}})
    assert response.status_code == 422
    body = response.get_json()
    assert (body["current"], body["required"]) == (0, 1)
    assert "needs preference pairs" in body["error"] and '"verdict": "rejected"' in body["error"]
    assert manager_of(app).list() == ([], 0)
    assert client.post("/api/finetune", json={"config": {"objective": "sft"}}).status_code == 202


def test_start_without_a_trace_database_is_422(make_app: Any, tmp_path) -> None:  # noqa: ANN001
    app = make_app(traces_db_path=tmp_path / "missing" / "traces.db")
    response = app.test_client().post("/api/finetune", json={})
    assert response.status_code == 422
    body = response.get_json()
    assert body["current"] == 0
    assert body["required"] == app.extensions["tmde.settings"].min_traces
    assert manager_of(app).list() == ([], 0)


def test_start_names_each_invalid_config_field(client: FlaskClient, app: Flask) -> None:
    response = client.post(
        "/api/finetune",
        json={"config": {"loraRank": 0, "learningRate": "fast", "packing": 1, "nope": 2}},
    )
    assert response.status_code == 400
    body = response.get_json()
    assert set(body["fields"]) == {"loraRank", "learningRate", "packing", "nope"}
    assert body["fields"]["loraRank"] == "must be an integer between 1 and 1024"
    assert "unknown field" in body["fields"]["nope"]
    assert body["error"].startswith("Invalid config: ")
    for name in body["fields"]:
        assert name in body["error"]

    # run settings at the top level instead of under "config"
    response = client.post("/api/finetune", json={"loraRank": 8, "epochs": 1, "config": {}})
    assert response.status_code == 400
    body = response.get_json()
    assert body["fields"] == {"epochs": "unknown", "loraRank": "unknown"}
    assert "epochs, loraRank" in body["error"] and '"config"' in body["error"]
    assert manager_of(app).list() == ([], 0)


NOT_AN_OBJECT = [
    {"data": "{not json", "content_type": "application/json"},
    {"data": "config=1", "content_type": "application/x-www-form-urlencoded"},
    {"data": '{"config": {}}', "content_type": "text/plain"},
    {"json": [1, 2]},
    {"json": "config"},
    {"data": "null", "content_type": "application/json"},
]


def test_start_refuses_a_body_that_is_not_a_json_object(client: FlaskClient, app: Flask) -> None:
    for kwargs in NOT_AN_OBJECT:
        response = client.post("/api/finetune", **kwargs)
        assert response.status_code == 400, kwargs
        assert "JSON object" in response.get_json()["error"], kwargs
    response = client.post(  # over MAX_CONTENT_LENGTH
        "/api/finetune", data=b"{" + b" " * (1 << 20) + b"}", content_type="application/json"
    )
    assert response.status_code == 413 and "error" in response.get_json()
    assert manager_of(app).list() == ([], 0)


def test_start_refuses_a_config_that_is_not_an_object(client: FlaskClient, app: Flask) -> None:
    for config in ([], [1], "loraRank=8", 0, False, ""):
        response = client.post("/api/finetune", json={"config": config})
        assert response.status_code == 400, config
        assert response.get_json()["fields"] == {"config": "must be a JSON object"}, config
    assert manager_of(app).list() == ([], 0)


# --- GET /api/finetune -------------------------------------------------------------------------


def test_list_runs(client: FlaskClient, app: Flask) -> None:
    assert client.get("/api/finetune").get_json() == {
        "runs": [],
        "total": 0,
        "limit": 20,
        "offset": 0,
    }
    ids = []
    for status in ("completed", "failed", "completed"):
        run_id = start(client)
        finish(app, run_id, status)
        ids.append(run_id)
    active = start(client)
    newest_first = [active, *reversed(ids)]

    body = client.get("/api/finetune").get_json()
    assert body["total"] == 4 and body["limit"] == 20 and body["offset"] == 0
    assert [r["id"] for r in body["runs"]] == newest_first
    assert body["runs"][0]["status"] == "pending"
    assert body["runs"][0]["progressUrl"] == f"/api/finetune/{active}/progress"

    body = client.get("/api/finetune?limit=2&offset=1").get_json()
    assert body["total"] == 4 and [r["id"] for r in body["runs"]] == newest_first[1:3]
    assert (body["limit"], body["offset"]) == (2, 1)

    body = client.get("/api/finetune?status=completed").get_json()
    assert body["total"] == 2 and {r["id"] for r in body["runs"]} == {ids[0], ids[2]}
    body = client.get("/api/finetune?status=cancelled").get_json()
    assert body == {"runs": [], "total": 0, "limit": 20, "offset": 0}


LIMIT = "limit: must be an integer between 1 and 200"
OFFSET = "offset: must be an integer between 0 and 9223372036854775807"
LIST_QUERIES = [
    ("limit=0", LIMIT),
    ("limit=201", LIMIT),
    ("offset=-1", OFFSET),
    (f"offset={2**64}", OFFSET),
    ("limit=ten", LIMIT),
    ("offset=1.5", OFFSET),
    ("status=done", "status: must be one of pending, running"),
    ("status=", "status: must be one of"),
]


def test_list_validates_its_query(client: FlaskClient) -> None:
    for query, message in LIST_QUERIES:
        response = client.get(f"/api/finetune?{query}")
        assert response.status_code == 400, query
        body = response.get_json()
        assert message in body["error"] and body["error"].startswith("Invalid query: "), query
        assert list(body["fields"]) == [query.split("=")[0]], query
    response = client.get("/api/nothing-here")
    assert response.status_code == 404 and "error" in response.get_json()
    response = client.delete("/api/finetune")
    assert response.status_code == 405 and "error" in response.get_json()


# --- GET /api/finetune/<id> --------------------------------------------------------------------


def test_get_one_run(
    client: FlaskClient, app: Flask, redis_client: Any, fake_server: fakeredis.FakeServer
) -> None:
    run_id = start(client, {"epochs": 2})
    body = client.get(f"/api/finetune/{run_id}").get_json()
    assert body["id"] == run_id
    assert body["status"] == "pending"
    assert body["config"]["epochs"] == 2
    assert body["latestEvent"] is None
    assert body["progressUrl"] == f"/api/finetune/{run_id}/progress"

    event = Emitter(run_id, [RedisPublisher(redis_client)]).emit(
        "progress", step=4, total_steps=10, loss=1.1
    )
    body = client.get(f"/api/finetune/{run_id}").get_json()
    assert body["latestEvent"] == event.to_dict()

    fake_server.connected = False  # Redis down: the run is still served from the database
    response = client.get(f"/api/finetune/{run_id}")
    assert response.status_code == 200
    assert response.get_json()["latestEvent"] is None


UNKNOWN_IDS = ["run_0123456789ab", "run_xyz", "nope", "run_", "RUN_0123456789AB"]


def test_unknown_or_malformed_run_is_404(client: FlaskClient) -> None:
    start(client)  # one run exists; these are not it
    for run_id in UNKNOWN_IDS:
        for method, path in [
            ("get", f"/api/finetune/{run_id}"),
            ("post", f"/api/finetune/{run_id}/cancel"),
            ("get", f"/api/finetune/{run_id}/events"),
            ("get", f"/api/finetune/{run_id}/progress"),
        ]:
            response = getattr(client, method)(path)
            assert response.status_code == 404, path
            assert response.get_json() == {"error": f"Run not found: {run_id}"}, path


# --- cancel ------------------------------------------------------------------------------------


def test_cancel(client: FlaskClient, app: Flask, redis_client: Any) -> None:
    run_id = start(client)
    response = client.post(f"/api/finetune/{run_id}/cancel")
    assert response.status_code == 202
    body = response.get_json()
    assert body["id"] == run_id
    assert body["status"] == "cancelled"
    assert body["cancelRequested"] is True
    assert body["errorCode"] == "CANCELLED"
    assert body["completedAt"] is not None
    assert float(redis_client.get(f"finetune:cancel:{run_id}")) > 0  # when it was asked

    again = client.post(f"/api/finetune/{run_id}/cancel")
    assert again.status_code == 409
    assert "already cancelled" in again.get_json()["error"]

    assert client.post("/api/finetune", json={}).status_code == 202  # slot freed


def test_cancel_running_then_finished_run(client: FlaskClient, app: Flask) -> None:
    run_id = start(client)
    assert manager_of(app).runs.claim(run_id)
    response = client.post(f"/api/finetune/{run_id}/cancel")
    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "running" and body["cancelRequested"] is True

    finish(app, run_id, "completed")
    response = client.post(f"/api/finetune/{run_id}/cancel")
    assert response.status_code == 409
    assert response.get_json() == {"error": f"Run {run_id} is already completed"}
    assert manager_of(app).get(run_id).status == "completed"


# --- config and events ---------------------------------------------------------------------------


def test_default_config(make_app: Any) -> None:
    app = make_app(lora_rank=32, base_model="llama3.1:8b", backend="trl")
    response = app.test_client().get("/api/finetune/config/default")
    assert response.status_code == 200
    body = response.get_json()
    assert body == build_config(app.extensions["tmde.settings"]).to_dict()
    assert (body["loraRank"], body["baseModel"], body["backend"]) == (32, "llama3.1:8b", "trl")
    assert list(body)[:3] == ["baseModel", "backend", "loraRank"]  # documented order kept


def test_events_are_paged(client: FlaskClient, app: Flask) -> None:
    run_id = start(client)
    runs = manager_of(app).runs
    for step in range(1, 6):
        kind = "eval" if step == 5 else "progress"
        runs.record_event(
            ProgressEvent(
                kind,
                run_id=run_id,
                step=step,
                total_steps=5,
                loss=1.0 / step,
                eval_loss=0.9 if kind == "eval" else None,
            )
        )
    runs.record_event(ProgressEvent("checkpoint", run_id=run_id, step=5, path="/x"))

    body = client.get(f"/api/finetune/{run_id}/events").get_json()
    assert [e["step"] for e in body["events"]] == [1, 2, 3, 4, 5]
    assert body["events"][-1]["type"] == "eval" and body["events"][-1]["evalLoss"] == 0.9
    assert body["next"] == body["events"][-1]["id"]

    page = client.get(f"/api/finetune/{run_id}/events?limit=2").get_json()
    assert [e["step"] for e in page["events"]] == [1, 2]
    page = client.get(f"/api/finetune/{run_id}/events?limit=2&after={page['next']}").get_json()
    assert [e["step"] for e in page["events"]] == [3, 4]
    last = client.get(f"/api/finetune/{run_id}/events?after={body['next']}").get_json()
    assert last == {"events": [], "next": body["next"]}


def test_events_validate_their_query(client: FlaskClient) -> None:
    run_id = start(client)
    for query in ("after=x", "limit=many", "limit=0", "limit=-1", "after=-3", f"after={2**70}"):
        response = client.get(f"/api/finetune/{run_id}/events?{query}")
        assert response.status_code == 400, query
        assert "error" in response.get_json(), query
