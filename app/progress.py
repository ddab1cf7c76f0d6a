"""GET /api/finetune/<runId>/progress: the run's events as Server-Sent Events (seed §4.2).

The latest cached event is sent first, so a reconnecting client never starts blind; the stream
ends after the terminal event. Heartbeats are SSE comments every 15 s.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

from flask import Blueprint, Response, abort

from app import state
from shared.events import TERMINAL_EVENT_TYPES, latest_event
from shared.names import TERMINAL_STATUSES, progress_channel
from shared.runs import RunNotFoundError

bp = Blueprint("progress", __name__, url_prefix="/api/finetune")

HEARTBEAT_SECONDS = 15.0
SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",
}


def _frame(payload: dict) -> str:
    return f"data: {json.dumps(payload)}\n\n"


@bp.get("/<run_id>/progress")
def progress(run_id: str) -> Response:
    manager = state.manager()
    try:
        run = manager.get(run_id)
    except RunNotFoundError:
        abort(404, description=f"Run not found: {run_id}")
    client = state.redis_client()

    def stream() -> Iterator[str]:
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(progress_channel(run_id))  # before reading latest: no gap
        try:
            latest = latest_event(client, run_id)
            if latest:
                yield _frame(latest)
                if latest.get("type") in TERMINAL_EVENT_TYPES:
                    return
            if run.status in TERMINAL_STATUSES:  # over, and its terminal event is not cached
                yield _frame({"type": "status", "run_id": run_id, "status": run.status})
                return
            last_beat = time.monotonic()
            while True:
                message = pubsub.get_message(timeout=1.0)
                if message is not None:
                    event = json.loads(message["data"])
                    yield _frame(event)
                    if event.get("type") in TERMINAL_EVENT_TYPES:
                        return
                if time.monotonic() - last_beat >= HEARTBEAT_SECONDS:
                    last_beat = time.monotonic()
                    yield ": heartbeat\n\n"
        finally:
            pubsub.close()

    return Response(stream(), headers=SSE_HEADERS)
