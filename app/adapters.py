"""/api/adapters: the adapter registry (list, inspect, activate, roll back, tag, delete, export).

Every change goes through shared.registry (atomic active.json, verified sha256). The GGUF
export for Ollama is handed to a training worker; with OLLAMA_EXPORT=true activation enqueues it.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request

from app import state
from app.apidoc import doc
from shared.names import TASK_EXPORT_GGUF, TASK_QUEUES
from shared.registry import AdapterError, check_adapter_id
from shared.schemas import (
    ActiveDetail,
    ActiveState,
    AdapterDetail,
    AdapterOut,
    AdapterPage,
    ErrorOut,
    ExportOut,
    ReasonBody,
    TagsBody,
)

bp = Blueprint("adapters", __name__, url_prefix="/api/adapters")

HISTORY_SHOWN = 20


def _body(allowed: set[str]) -> dict[str, Any]:
    if not request.get_data():
        return {}
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise AdapterError("Request body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise AdapterError(
            f"Unknown field(s): {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )
    return body


def _reason(body: dict[str, Any]) -> str:
    reason = body.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 500:
        raise AdapterError('"reason" must be a string of at most 500 characters')
    return reason


def _enqueue_gguf(adapter_id: str) -> str:
    celery = state.manager().celery
    result = celery.send_task(
        TASK_EXPORT_GGUF, args=(adapter_id,), queue=TASK_QUEUES[TASK_EXPORT_GGUF]
    )
    return result.id


def _state_view(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "history": data.get("history", [])[-HISTORY_SHOWN:]}


@bp.get("")
@doc("Published adapters, newest first", {200: AdapterPage})
def list_adapters():  # type: ignore[no-untyped-def]
    registry = state.registry()
    adapters = registry.list()
    return jsonify(adapters=adapters, activeId=registry.active_id(), total=len(adapters))


@bp.get("/active")
@doc("active.json and the active adapter", {200: ActiveDetail, 409: ErrorOut})
def active():  # type: ignore[no-untyped-def]
    registry = state.registry()
    return jsonify({**_state_view(registry.state()), "adapter": registry.active()})


@bp.get("/<adapter_id>")
@doc("One adapter: manifest, path, samples", {200: AdapterDetail, 404: ErrorOut})
def get_adapter(adapter_id: str):  # type: ignore[no-untyped-def]
    registry = state.registry()
    adapter = registry.get(adapter_id)
    return jsonify(
        {
            **adapter,
            "samples": registry.samples(adapter_id),
            "lineage": registry.lineage(adapter_id),
        }
    )


@bp.post("/<adapter_id>/activate")
@doc(
    "Activate after verifying the sha256",
    {200: ActiveState, 400: ErrorOut, 404: ErrorOut, 409: ErrorOut},
    body=ReasonBody,
)
def activate(adapter_id: str):  # type: ignore[no-untyped-def]
    check_adapter_id(adapter_id)
    reason = _reason(_body({"reason"}))
    result = _state_view(state.registry().activate(adapter_id, reason=reason))
    if state.settings().ollama_export:
        result["exportTaskId"] = _enqueue_gguf(adapter_id)
    return jsonify(result)


@bp.post("/rollback")
@doc(
    "Back to the previously active adapter",
    {200: ActiveState, 400: ErrorOut, 409: ErrorOut},
    body=ReasonBody,
)
def rollback():  # type: ignore[no-untyped-def]
    reason = _reason(_body({"reason"}))
    result = _state_view(state.registry().rollback(reason=reason))
    if state.settings().ollama_export and result.get("adapterId"):
        result["exportTaskId"] = _enqueue_gguf(result["adapterId"])
    return jsonify(result)


@bp.patch("/<adapter_id>")
@doc(
    "Replace the tags",
    {200: AdapterOut, 400: ErrorOut, 404: ErrorOut, 409: ErrorOut},
    body=TagsBody,
)
def update(adapter_id: str):  # type: ignore[no-untyped-def]
    check_adapter_id(adapter_id)
    body = _body({"tags"})
    if "tags" not in body:
        raise AdapterError('Nothing to change: send {"tags": ["stable", ...]}')
    return jsonify(state.registry().set_tags(adapter_id, body["tags"]))


@bp.delete("/<adapter_id>")
@doc("Delete (refused for the active adapter)", {204: None, 404: ErrorOut, 409: ErrorOut})
def delete(adapter_id: str):  # type: ignore[no-untyped-def]
    state.registry().delete(adapter_id)
    return "", 204


@bp.post("/<adapter_id>/export-gguf")
@doc("Queue a GGUF LoRA + Modelfile export", {202: ExportOut, 404: ErrorOut, 409: ErrorOut})
def export_gguf(adapter_id: str):  # type: ignore[no-untyped-def]
    """Queue a GGUF LoRA + Modelfile export; the result lands in the manifest's exports."""
    state.registry().verify(adapter_id)
    return jsonify(adapterId=adapter_id, taskId=_enqueue_gguf(adapter_id)), 202
