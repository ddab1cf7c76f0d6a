"""One Redis listener per API process, fanning run events out to bounded per-client queues.

Why: the seed's ProgressTracker keeps subscribers in memory; a naive port opens one Redis
pub/sub connection per SSE or websocket client, so Redis connections grow with viewers. Here a
single thread per process pattern-subscribes to every run's channel once and copies each
message into the queue of every client watching that run.

- A client's queue is bounded (`queue_size`). When it is full the client is marked *dropped*
  and gets nothing more: the relay never blocks on a client, so a slow or dead viewer cannot
  slow the others, and the worker (which only talks to Redis) never notices viewers at all. A
  dropped client resumes from the replay stream (SSE `Last-Event-ID`, websocket `?after=`).
- A websocket client that has caught up switches its subscription to *direct* mode: the relay
  writes the event's pre-encoded frame straight to its socket without blocking
  (app/wsout.py) instead of queueing it and waking the client's thread. That is what keeps
  hundreds of viewers cheap; SSE clients stay on the queue (their framing is the server's).
- The listener starts lazily in the process that first needs it, and again after a fork
  (gunicorn workers), so each process owns exactly one.
- After a lost Redis connection the listener reconnects with backoff and puts RESYNC in every
  queue: each feed then reads the replay stream after its last `seq`, closing the gap.
- At most one run is active at a time (single flight), so listening to all runs' channels
  costs no more than listening to one; messages for runs nobody watches are dropped unparsed.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app.wsout import FrameWriter, text_frame
from shared.events import TERMINAL_EVENT_TYPES
from shared.names import progress_channel

log = logging.getLogger(__name__)

QUEUE_SIZE = 256  # events a client may lag behind (about 13 s at 20 events/s) before dropped
READY_TIMEOUT_SECONDS = 5.0
RECONNECT_MAX_SECONDS = 5.0
CHANNEL_PREFIX = progress_channel("")


@dataclass(frozen=True)
class FeedEvent:
    """One event as published: parsed once by the relay, shared by every client's queue."""

    seq: int | None
    type: str
    raw: str  # the exact JSON text, sent as is to websocket and SSE clients
    ws_frame: bytes = field(default=b"", repr=False, compare=False)  # raw as a text frame

    def __post_init__(self) -> None:
        if not self.ws_frame:
            object.__setattr__(self, "ws_frame", text_frame(self.raw))

    @classmethod
    def parse(cls, raw: bytes | str) -> FeedEvent | None:
        text = raw.decode() if isinstance(raw, bytes) else raw
        try:
            data = json.loads(text)
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            return None
        seq = data.get("seq")
        return cls(seq if isinstance(seq, int) else None, data["type"], text)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeedEvent:
        return cls(data.get("seq"), data["type"], json.dumps(data, separators=(", ", ": ")))


RESYNC = "resync"  # queued after a reconnect: read the replay stream, live events may be lost


class Subscription:
    """One client's view of one run, filled by the relay thread.

    Queue mode: a bounded queue of FeedEvents read by the client's thread. Direct mode
    (websockets): each event's frame is written to the client's socket by the relay thread
    itself, deduplicated by `seq`; the client's thread is woken only when there is something
    for it to do (flush a backlog, close after the terminal event, resync, drop).
    """

    def __init__(self, run_id: str, maxsize: int) -> None:
        self.run_id = run_id
        self._queue: queue.Queue[FeedEvent | str] = queue.Queue(maxsize)
        self._lock = threading.Lock()
        self.dropped = False
        self.writer: FrameWriter | None = None  # set while in direct mode
        self.last = 0  # direct mode: the highest seq written
        self.done = False  # direct mode: the terminal event was written
        self.resync = False  # direct mode: the relay reconnected, read the replay stream
        self.wake = threading.Event()

    @property
    def direct(self) -> bool:
        return self.writer is not None

    def offer(self, item: FeedEvent | str) -> None:
        """Never blocks: a full queue or a failed socket marks the client dropped instead."""
        with self._lock:
            if self.dropped or self.done:
                return
            if self.writer is None:
                try:
                    self._queue.put_nowait(item)
                except queue.Full:
                    # A full queue means its consumer is not waiting in get(): it checks
                    # `dropped` before its next send and leaves.
                    self.dropped = True
                return
            if not isinstance(item, FeedEvent):  # RESYNC
                self.resync = True
            elif item.seq is None or item.seq > self.last:
                if not self.writer.offer(item.ws_frame):
                    self.dropped = True
                self.last = item.seq if item.seq is not None else self.last
                if item.type in TERMINAL_EVENT_TYPES:
                    self.done = True
            else:
                return  # already written
            if self.dropped or self.done or self.resync:
                self.wake.set()

    def get(self, timeout: float) -> FeedEvent | str | None:
        try:
            return self._queue.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None

    def go_direct(self, writer: FrameWriter, last: int) -> bool:
        """Switch to direct mode once the queue is empty (else the caller drains it first)."""
        with self._lock:
            if self.writer is not None or self.dropped or not self._queue.empty():
                return self.writer is not None
            self.writer, self.last, self.resync = writer, last, False
            self.wake.clear()
            return True

    def leave_direct(self) -> tuple[int, bool]:
        """Back to queue mode (to replay safely); returns (last seq written, terminal written)."""
        with self._lock:
            self.writer = None
            self.resync = False
            return self.last, self.done


class Relay:
    """Owns the process's Redis pub/sub listener and the subscriptions of its clients."""

    def __init__(
        self,
        connect: Callable[[], Any],
        *,
        queue_size: int = QUEUE_SIZE,
        poll_seconds: float = 1.0,
    ) -> None:
        self._connect = connect
        self.queue_size = queue_size
        self.poll_seconds = poll_seconds
        self._lock = threading.Lock()
        self._reset_state()

    def _reset_state(self) -> None:
        self._pid = os.getpid()
        self._subs: dict[str, set[Subscription]] = {}
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._stop = threading.Event()
        self.relayed = 0  # events copied into client queues or written to client sockets
        self.dropped_clients = 0
        self.reconnects = 0
        self.fanout_seconds = 0.0  # time spent handing events to clients (the relay's cost)
        self.fanout_max_seconds = 0.0

    # --- clients --------------------------------------------------------------------------

    def subscribe(self, run_id: str) -> Subscription:
        """Register a client for the run's live events; returns once the listener is live
        (or READY_TIMEOUT_SECONDS passed: then a RESYNC follows when Redis is back)."""
        sub = Subscription(run_id, self.queue_size)
        with self._lock:
            if self._pid != os.getpid():  # forked since: the parent's thread is not ours
                self._reset_state()
            self._subs.setdefault(run_id, set()).add(sub)
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="tmde-progress-relay", daemon=True
                )
                self._thread.start()
        self._ready.wait(READY_TIMEOUT_SECONDS)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self._lock:
            subs = self._subs.get(sub.run_id)
            if subs is not None:
                subs.discard(sub)
                if not subs:
                    del self._subs[sub.run_id]
            if sub.dropped:
                self.dropped_clients += 1

    def stats(self) -> dict[str, int | bool]:
        with self._lock:
            clients = sum(len(s) for s in self._subs.values())
            return {
                "listening": self._ready.is_set(),
                "runs": len(self._subs),
                "clients": clients,
                "relayed": self.relayed,
                "droppedClients": self.dropped_clients,
                "reconnects": self.reconnects,
                "fanoutSeconds": round(self.fanout_seconds, 4),
                "fanoutMaxMs": round(self.fanout_max_seconds * 1000, 2),
            }

    def close(self) -> None:
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=self.poll_seconds + 2)

    # --- the listener ---------------------------------------------------------------------

    def dispatch(self, channel: bytes | str, data: bytes | str) -> None:
        """Copy one published message into the queue of every client of its run."""
        name = channel.decode() if isinstance(channel, bytes) else channel
        run_id = name[len(CHANNEL_PREFIX) :]
        with self._lock:
            subs = tuple(self._subs.get(run_id, ()))
        if not subs:
            return
        started = time.perf_counter()
        event = FeedEvent.parse(data)
        if event is None:
            log.warning("relay: ignoring a malformed message on %s", name)
            return
        for sub in subs:
            sub.offer(event)
        self.relayed += len(subs)
        spent = time.perf_counter() - started
        self.fanout_seconds += spent
        self.fanout_max_seconds = max(self.fanout_max_seconds, spent)

    def _broadcast(self, item: str) -> None:
        with self._lock:
            subs = [s for group in self._subs.values() for s in group]
        for sub in subs:
            sub.offer(item)

    def _run(self) -> None:
        backoff = 0.2
        first = True
        while not self._stop.is_set():
            pubsub = None
            try:
                pubsub = self._connect().pubsub(ignore_subscribe_messages=False)
                pubsub.psubscribe(CHANNEL_PREFIX + "*")
                while not self._stop.is_set():
                    message = pubsub.get_message(timeout=self.poll_seconds)
                    if message is None:
                        continue
                    if message["type"] == "psubscribe":
                        self._ready.set()
                        backoff = 0.2
                        if not first:  # events may have been published while we were away
                            self._broadcast(RESYNC)
                        first = False
                    elif message["type"] == "pmessage":
                        self.dispatch(message["channel"], message["data"])
            except Exception as exc:  # noqa: BLE001 - the listener must outlive Redis outages
                self._ready.clear()
                self.reconnects += 1
                first = False
                log.warning("relay: Redis listener lost (%s); reconnecting in %.1fs", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, RECONNECT_MAX_SECONDS)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # noqa: BLE001
                        log.debug("relay: closing the old pub/sub failed", exc_info=True)
