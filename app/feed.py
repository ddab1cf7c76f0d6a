"""What one client sees of one run, shared by the SSE and websocket routes.

Order of a feed: catch-up (the latest event for a new client, or every event after the
client's last `seq` for a resuming one), then live events from the relay, heartbeats while
idle, and the run's terminal event last. Gapless and repeat-free because the client is
registered with the relay *before* the catch-up is read, and every event carries the `seq`
the publisher assigned atomically with its replay entry: anything seen twice is skipped by
`seq`, anything missed live is in the replay stream.

A run can end without a terminal event reaching Redis (a worker killed, Redis down at the
wrong moment, a cache expired after a week). So the feed rechecks the run's status in the
database while idle; a finished run whose terminal event does not arrive within a short grace
period gets one built from the database row, so every feed still ends with
`complete`, `error` or `cancelled`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from app.relay import RESYNC, FeedEvent, Relay, Subscription
from app.wsout import FrameWriter
from shared.events import (
    TERMINAL_EVENT_TYPES,
    ProgressEvent,
    current_seq,
    latest_event_json,
    replay_events,
)
from shared.models import FineTuneRun
from shared.names import STATUS_CANCELLED, STATUS_COMPLETED, TERMINAL_STATUSES, ErrorCode

HEARTBEAT_SECONDS = 15.0  # seed §2.3
STATUS_CHECK_SECONDS = 30.0  # how often an idle feed asks the database whether the run ended
TERMINAL_GRACE_SECONDS = 3.0  # the DB row is finished just before the terminal event is sent

HEARTBEAT = "heartbeat"  # item: the caller sends its transport's keep-alive
DROPPED = "dropped"  # item: the client fell QUEUE_SIZE events behind and is cut off


def terminal_event_from_run(run: FineTuneRun) -> FeedEvent:
    """The terminal event of a finished run, rebuilt from its database row (no `seq`)."""
    if run.status == STATUS_COMPLETED:
        event = ProgressEvent(
            "complete",
            run_id=run.id,
            status=run.status,
            adapter_path=run.lora_path,
            metrics=run.metrics_dict(),
        )
    elif run.status == STATUS_CANCELLED:
        event = ProgressEvent(
            "cancelled", run_id=run.id, status=run.status, message=run.error_message
        )
    else:
        event = ProgressEvent(
            "error",
            run_id=run.id,
            status=run.status,
            code=run.error_code or ErrorCode.GENERAL,
            message=run.error_message,
        )
    return FeedEvent.from_dict(event.to_dict())


def heartbeat_json(run_id: str) -> str:
    return ProgressEvent("heartbeat", run_id=run_id).to_json()


def already_delivered_end(
    redis_client: Any,
    run: FineTuneRun,
    after: int | None,
    grace_seconds: float = TERMINAL_GRACE_SECONDS,
) -> bool:
    """True when a resuming client (`after`) has seen everything a finished run will send.

    EventSource reconnects whenever a stream closes; answering such a client 204 is how SSE
    tells it to stop. A run whose row is finished but whose terminal event is not published
    yet (the worker writes the row first) is not over for its feed.
    """
    if after is None or run.status not in TERMINAL_STATUSES:
        return False
    if after < current_seq(redis_client, run.id):
        return False
    raw = latest_event_json(redis_client, run.id)
    latest = FeedEvent.parse(raw) if raw else None
    if latest is not None and latest.type in TERMINAL_EVENT_TYPES:
        return True
    return _age_seconds(run.completed_at) > grace_seconds


def _age_seconds(moment: datetime | None) -> float:
    if moment is None:
        return 0.0
    return (datetime.now(UTC).replace(tzinfo=None) - moment).total_seconds()


class Feed:
    """Iterate to get FeedEvents, HEARTBEAT and DROPPED items; ends after the terminal event.

    `load_run` reads the run from the database (the feed calls it while idle); `after` is the
    client's last `seq` when it resumes. With a `writer` (websockets), live events bypass the
    iterator: the relay writes them to the socket and the feed only yields catch-up, replays,
    heartbeats and the end; `done` then also means the terminal event was written directly.
    """

    def __init__(
        self,
        relay: Relay,
        redis_client: Any,
        run: FineTuneRun,
        load_run: Callable[[], FineTuneRun],
        *,
        after: int | None = None,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        status_check_seconds: float = STATUS_CHECK_SECONDS,
        terminal_grace_seconds: float = TERMINAL_GRACE_SECONDS,
        writer: FrameWriter | None = None,
    ) -> None:
        self.relay = relay
        self.redis = redis_client
        self.run = run
        self.load_run = load_run
        self.after = after
        self.heartbeat_seconds = heartbeat_seconds
        self.status_check_seconds = status_check_seconds
        self.terminal_grace_seconds = terminal_grace_seconds
        self.writer = writer  # websocket: once caught up, the relay writes to it directly
        self.last: int = 0  # the highest seq delivered (or skipped as already known)
        self.done = False

    def _deliver(self, event: FeedEvent) -> Iterator[FeedEvent]:
        if event.seq is not None:
            if event.seq <= self.last:
                return  # already delivered (seen in catch-up and live)
            self.last = event.seq
        yield event
        if event.type in TERMINAL_EVENT_TYPES:
            self.done = True

    def _replay(self) -> Iterator[FeedEvent]:
        for raw in replay_events(self.redis, self.run.id, self.last):
            event = FeedEvent.parse(raw)
            if event is not None:
                yield from self._deliver(event)
            if self.done:
                return

    def _catch_up(self) -> Iterator[FeedEvent]:
        if self.after is not None and self.after <= current_seq(self.redis, self.run.id):
            self.last = self.after
            yield from self._replay()
            return
        # a new client (or one whose id is from before the counter was reset): latest only
        raw = latest_event_json(self.redis, self.run.id)
        latest = FeedEvent.parse(raw) if raw else None
        if latest is not None:
            yield from self._deliver(latest)
        else:
            self.last = current_seq(self.redis, self.run.id)

    def _leave_direct(self, sub: Subscription) -> None:
        if sub.direct:
            self.last, done = sub.leave_direct()
            self.done = self.done or done

    def _wait(self, sub: Subscription, timeout: float) -> Iterator[FeedEvent]:
        """Wait for the next thing to do (up to `timeout`) and yield what is to be sent."""
        if self.writer is not None and not sub.direct:
            sub.go_direct(self.writer, self.last)
        if not sub.direct:
            item = sub.get(timeout=timeout)
            if item == RESYNC:
                yield from self._replay()
            elif isinstance(item, FeedEvent):
                yield from self._deliver(item)
            return
        # direct: the relay writes events itself; wake only for a backlog, the end, a resync
        if sub.wake.wait(max(timeout, 0.0)):
            sub.wake.clear()
            self.writer.flush()  # type: ignore[union-attr]
            if self.writer.failed:  # type: ignore[union-attr]
                sub.dropped = True
            elif sub.done or sub.resync:
                resync = sub.resync
                self._leave_direct(sub)
                if resync and not self.done:
                    yield from self._replay()

    def __iter__(self) -> Iterator[FeedEvent | str]:
        sub = self.relay.subscribe(self.run.id)  # before the catch-up is read: no gap
        try:
            yield from self._catch_up()
            if self.done:
                return
            now = time.monotonic()
            next_beat = now + self.heartbeat_seconds
            next_check = now + self.status_check_seconds
            end_deadline: float | None = None
            if self.run.status in TERMINAL_STATUSES:
                # finished long ago: its terminal event expired; just now: it is on its way
                late = _age_seconds(self.run.completed_at) > self.terminal_grace_seconds
                end_deadline = now if late else now + self.terminal_grace_seconds
                next_check = end_deadline
            while True:
                if sub.dropped:
                    yield DROPPED
                    return
                yield from self._wait(sub, min(next_beat, next_check) - time.monotonic())
                if self.done:
                    return
                now = time.monotonic()
                if now >= next_beat:
                    yield HEARTBEAT
                    next_beat = now + self.heartbeat_seconds
                if now < next_check:
                    continue
                if end_deadline is not None:
                    self._leave_direct(sub)
                    if not self.done:
                        yield from self._replay()  # the terminal event may have missed pub/sub
                    if not self.done:
                        yield terminal_event_from_run(self.load_run())
                    return
                self.run = self.load_run()
                if self.run.status in TERMINAL_STATUSES:
                    end_deadline = now + self.terminal_grace_seconds
                    next_check = end_deadline
                else:
                    next_check = now + self.status_check_seconds
        finally:
            sub.leave_direct()  # a dispatch already under way queues instead of writing
            self.relay.unsubscribe(sub)
