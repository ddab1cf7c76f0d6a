"""Live feeds of a run: Server-Sent Events (seed §4.2) and a websocket (the design card).

    GET /api/finetune/<runId>/progress   SSE; `Last-Event-ID` (or ?lastEventId=) resumes
    WS  /api/finetune/<runId>/ws         websocket; ?after=<seq> resumes

Both are views of one `Feed` fed by the process's single Redis listener (`app.relay`), so a
client costs a thread and a bounded queue, never a Redis connection. Every published event
carries `seq`; SSE sends it as the event `id:`. Heartbeats every 15 s: SSE comments, and
`{"type": "heartbeat"}` frames on the websocket (browsers do not expose ping frames).

Websocket frames, in order: `{"type": "state", "run": {...}}` (the run as GET /api/finetune/
<runId> shows it), then the events (seed §5.1 + `run_id` + `seq`), then a normal close (1000)
after the terminal event. Errors are a `{"type": "feed_error", "code", "error"}` frame and a
close with that code: 4404 unknown run, 4400 bad `after`, 1013 client too slow (reconnect
with `?after=<last seq>`), 1011 Redis unavailable (reconnect later, same way).
"""

from __future__ import annotations

import json
import logging
import socket
import struct
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, abort, current_app, request
from flask_sock import ConnectionClosed, Sock
from redis.exceptions import RedisError

from app import state
from app.apidoc import doc
from app.feed import (
    DROPPED,
    HEARTBEAT,
    HEARTBEAT_SECONDS,
    STATUS_CHECK_SECONDS,
    TERMINAL_GRACE_SECONDS,
    Feed,
    already_delivered_end,
    heartbeat_json,
)
from app.relay import FeedEvent
from app.wsout import FrameWriter, OrderedSocket
from shared.runs import RunNotFoundError, run_to_dict
from shared.schemas import ErrorOut, FeedsOut, WebsocketQuery

log = logging.getLogger(__name__)

bp = Blueprint("progress", __name__, url_prefix="/api/finetune")
sock = Sock()

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "Connection": "keep-alive",
    "X-Accel-Buffering": "no",
}
SSE_RETRY_MS = 2000  # how soon EventSource reconnects after the server cut it (slow client)
SEND_TIMEOUT_SECONDS = 10.0  # a client that accepts no bytes this long is disconnected
CLOSE_NORMAL, CLOSE_INTERNAL_ERROR, CLOSE_TRY_AGAIN_LATER = 1000, 1011, 1013
CLOSE_BAD_REQUEST, CLOSE_NOT_FOUND = 4400, 4404
SLOW_CLIENT_MESSAGE = "client too slow; reconnect with ?after=<the last seq you received>"


def limit_send_time(environ: dict[str, Any], seconds: float = SEND_TIMEOUT_SECONDS) -> None:
    """Bound how long a write to this client may block (SO_SNDTIMEO; reads unaffected).

    A client that stops reading fills its TCP window; without this its thread would sit in
    send() until TCP gives up (many minutes). The relay never waits on it either way.
    """
    conn = environ.get("werkzeug.socket") or environ.get("gunicorn.socket")
    if conn is None:
        return
    whole = int(seconds)
    timeval = struct.pack("ll", whole, int((seconds - whole) * 1e6))
    try:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
    except (OSError, AttributeError):
        log.debug("could not set a send timeout on %r", conn)


def parse_after(value: str | None) -> int | None:
    """A client's last seen `seq`; None when absent; ValueError when not an integer >= 0."""
    if value is None or value == "":
        return None
    after = int(value)
    if after < 0:
        raise ValueError(value)
    return after


def _new_feed(run: Any, after: int | None, writer: FrameWriter | None = None) -> Feed:
    """A Feed for this request; FEED_* app config overrides the timings (tests shorten them)."""
    manager = state.manager()  # captured: the SSE generator runs outside the request context
    config = current_app.config
    return Feed(
        state.relay(),
        state.redis_client(),
        run,
        lambda: manager.get(run.id),
        after=after,
        heartbeat_seconds=config.get("FEED_HEARTBEAT_SECONDS", HEARTBEAT_SECONDS),
        status_check_seconds=config.get("FEED_STATUS_CHECK_SECONDS", STATUS_CHECK_SECONDS),
        terminal_grace_seconds=config.get("FEED_TERMINAL_GRACE_SECONDS", TERMINAL_GRACE_SECONDS),
        writer=writer,
    )


def sse_frame(event: FeedEvent, last_seq: int) -> str:
    """One SSE event; `id:` is its seq (a rebuilt terminal event repeats the last seq)."""
    return f"id: {event.seq if event.seq is not None else last_seq}\ndata: {event.raw}\n\n"


@bp.get("/<run_id>/progress")
@doc(
    "Server-Sent Events until the run ends (Last-Event-ID resumes); 204: already delivered",
    {200: "text/event-stream", 204: None, 400: ErrorOut, 404: ErrorOut, 503: ErrorOut},
)
def progress(run_id: str) -> Response:
    try:
        run = state.manager().get(run_id)
    except RunNotFoundError:
        abort(404, description=f"Run not found: {run_id}")
    raw_after = request.headers.get("Last-Event-ID") or request.args.get("lastEventId")
    try:
        after = parse_after(raw_after)
    except ValueError:
        abort(400, description=f"Last-Event-ID must be an event seq (an integer): {raw_after!r}")
    grace = current_app.config.get("FEED_TERMINAL_GRACE_SECONDS", TERMINAL_GRACE_SECONDS)
    try:
        if already_delivered_end(state.redis_client(), run, after, grace):
            return Response(status=204)  # tells EventSource to stop reconnecting
    except RedisError:
        abort(503, description="progress store (Redis) unavailable; retry later")
    limit_send_time(request.environ)
    feed = _new_feed(run, after)

    def stream() -> Iterator[str]:
        yield f"retry: {SSE_RETRY_MS}\n\n"
        try:
            for item in feed:
                if item == HEARTBEAT:
                    yield ": heartbeat\n\n"
                elif item == DROPPED:
                    return  # too slow: EventSource reconnects with Last-Event-ID, catches up
                elif isinstance(item, FeedEvent):
                    yield sse_frame(item, feed.last)
        except RedisError as exc:  # the client reconnects (retry:) and resumes from its id
            log.warning("SSE feed of %s stopped: Redis unavailable (%s)", run_id, exc)

    return Response(stream(), headers=SSE_HEADERS)


def _close_with_error(ws: Any, code: int, message: str) -> None:
    try:
        ws.send(json.dumps({"type": "feed_error", "code": code, "error": message}))
        ws.close(code, message[:120])
    except (ConnectionClosed, OSError):
        pass


def _drain_incoming(ws: Any) -> None:
    """Discard what the client sent (nothing is expected); raises when it has gone away."""
    for _ in range(100):
        if ws.receive(timeout=0) is None:
            return


@sock.route("/<run_id>/ws", bp=bp)
@doc(
    "WebSocket feed (upgrade): state, latest event, every event, terminal event",
    {101: None, 400: ErrorOut, 404: ErrorOut},
    query=WebsocketQuery,
)
def websocket_feed(ws: Any, run_id: str) -> None:
    try:
        run = state.manager().get(run_id)
    except RunNotFoundError:
        _close_with_error(ws, CLOSE_NOT_FOUND, f"Run not found: {run_id}")
        return
    try:
        after = parse_after(request.args.get("after"))
    except ValueError:
        _close_with_error(ws, CLOSE_BAD_REQUEST, "after must be an event seq (an integer)")
        return
    limit_send_time(request.environ)
    # From here every write to the socket, simple-websocket's included, goes through one
    # ordered writer, so the relay can write live events to it directly (app/wsout.py).
    writer = FrameWriter(ws.sock)
    ws.sock = OrderedSocket(ws.sock, writer)
    feed = _new_feed(run, after, writer)
    try:
        ws.send(json.dumps({"type": "state", "run": run_to_dict(run)}))
        for item in feed:
            if item == HEARTBEAT:
                _drain_incoming(ws)
                ws.send(heartbeat_json(run_id))
            elif item == DROPPED:
                # what reached the client is only known to the client: it resumes from there
                _close_with_error(ws, CLOSE_TRY_AGAIN_LATER, SLOW_CLIENT_MESSAGE)
                return
            elif isinstance(item, FeedEvent):
                ws.send(item.raw)
        ws.close(CLOSE_NORMAL, "run finished")
    except (ConnectionClosed, OSError):
        return  # the client went away or stopped reading: its subscription is released
    except RedisError as exc:
        log.warning("websocket feed of %s stopped: Redis unavailable (%s)", run_id, exc)
        _close_with_error(ws, CLOSE_INTERNAL_ERROR, "progress store unavailable; retry later")


@bp.get("/feeds")
@doc("This API process's live-feed counters", {200: FeedsOut})
def feed_stats():  # type: ignore[no-untyped-def]
    """This process's fan-out: live clients, events relayed, clients dropped, reconnects."""
    return state.relay().stats()
