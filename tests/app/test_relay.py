"""The relay (one Redis listener per process, bounded client queues) and the Feed logic."""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

import fakeredis
import pytest
import redis

from app.feed import DROPPED, HEARTBEAT, Feed, terminal_event_from_run
from app.relay import RESYNC, FeedEvent, Relay, Subscription
from shared.events import (
    REPLAY_MAXLEN,
    Emitter,
    RedisPublisher,
    current_seq,
    replay_events,
    replay_key,
)
from tests.app.feeds import FeedEnv


def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


class CountingConnect:
    """A relay connection factory that counts how often the relay connects."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.calls = 0

    def __call__(self) -> Any:
        self.calls += 1
        return self.client


@pytest.fixture
def redis_client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


@pytest.fixture
def relay(redis_client: fakeredis.FakeRedis):  # type: ignore[no-untyped-def]
    relay = Relay(CountingConnect(redis_client), queue_size=8, poll_seconds=0.05)
    yield relay
    relay.close()


def drain(sub: Subscription, count: int, timeout: float = 3.0) -> list[Any]:
    items: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(items) < count and time.monotonic() < deadline:
        item = sub.get(0.05)
        if item is not None:
            items.append(item)
    return items


# --- publisher: seq and the replay stream -----------------------------------------------------


def test_publisher_numbers_events_and_keeps_them_for_replay(redis_client: Any) -> None:
    emitter = Emitter("run_a1", [RedisPublisher(redis_client)])
    events = [emitter.emit("progress", step=i, total_steps=5, loss=1.0) for i in range(1, 4)]
    assert [e.seq for e in events] == [1, 2, 3]
    assert current_seq(redis_client, "run_a1") == 3
    replayed = [json.loads(raw) for raw in replay_events(redis_client, "run_a1", after=1)]
    assert replayed == [events[1].to_dict(), events[2].to_dict()]
    assert replay_events(redis_client, "run_a1", after=3) == []
    assert redis_client.ttl(replay_key("run_a1")) > 0
    # another run has its own counter
    assert Emitter("run_b2", [RedisPublisher(redis_client)]).emit("heartbeat").seq == 1


def test_replay_stream_is_bounded(redis_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    assert REPLAY_MAXLEN >= 1000  # the real bound; a small one keeps this test fast
    monkeypatch.setattr("shared.events.REPLAY_MAXLEN", 100)
    emitter = Emitter("run_a1", [RedisPublisher(redis_client)])
    count = 400
    for step in range(count):
        emitter.emit("heartbeat", step=step)
    kept = redis_client.xlen(replay_key("run_a1"))
    assert 100 <= kept < count  # trimmed ("~": whole nodes) but never below the bound
    newest = replay_events(redis_client, "run_a1", after=count - 1)
    assert [json.loads(raw)["seq"] for raw in newest] == [count]


# --- relay -------------------------------------------------------------------------------------


def test_one_listener_serves_every_client(relay: Relay, redis_client: Any) -> None:
    subs = [relay.subscribe("run_a1") for _ in range(20)] + [relay.subscribe("run_b2")]
    assert relay._connect.calls == 1  # type: ignore[attr-defined]
    event = Emitter("run_a1", [RedisPublisher(redis_client)]).emit("progress", step=1)
    for sub in subs[:20]:
        item = sub.get(2.0)
        assert isinstance(item, FeedEvent) and item.seq == event.seq == 1
        assert json.loads(item.raw) == event.to_dict()
    assert subs[20].get(0.2) is None  # another run's client gets nothing
    stats = relay.stats()
    assert stats["clients"] == 21 and stats["runs"] == 2 and stats["listening"] is True
    for sub in subs:
        relay.unsubscribe(sub)
    assert relay.stats()["clients"] == 0 and relay._connect.calls == 1  # type: ignore[attr-defined]


def test_a_slow_client_is_dropped_without_slowing_the_others(
    relay: Relay, redis_client: Any
) -> None:
    slow = relay.subscribe("run_a1")  # never reads
    fast = relay.subscribe("run_a1")
    received: list[int] = []

    def read() -> None:
        while len(received) < 50:
            item = fast.get(2.0)
            if item is None:
                return
            received.append(item.seq)  # type: ignore[union-attr]

    reader = threading.Thread(target=read)
    reader.start()
    emitter = Emitter("run_a1", [RedisPublisher(redis_client)])
    started = time.monotonic()
    for step in range(50):
        emitter.emit("progress", step=step)
        time.sleep(0.005)  # the fast reader keeps up; the slow one never reads
    publish_seconds = time.monotonic() - started
    reader.join(timeout=10)
    assert received == list(range(1, 51))  # all, in order, none missing
    assert slow.dropped and not fast.dropped
    assert publish_seconds < 5  # the publisher never waited for a viewer
    relay.unsubscribe(slow)
    assert relay.stats()["droppedClients"] == 1


def test_malformed_and_unwatched_messages_are_ignored(relay: Relay, redis_client: Any) -> None:
    sub = relay.subscribe("run_a1")
    redis_client.publish("finetune:progress:run_a1", b"not json")
    redis_client.publish("finetune:progress:run_zz", b'{"type": "progress"}')
    redis_client.publish("finetune:progress:run_a1", b'{"type": "progress", "seq": 7}')
    item = sub.get(2.0)
    assert isinstance(item, FeedEvent) and item.seq == 7 and item.type == "progress"


def test_relay_reconnects_and_asks_clients_to_resync(redis_client: Any) -> None:
    failures = {"left": 1}

    class Flaky(CountingConnect):
        def __call__(self) -> Any:
            self.calls += 1
            if self.calls == 2 and failures["left"]:
                failures["left"] = 0
                raise redis.ConnectionError("redis restarted")
            return self.client

    relay = Relay(Flaky(redis_client), poll_seconds=0.05)
    try:
        sub = relay.subscribe("run_a1")
        assert relay.stats()["listening"]

        # break the live connection: the next read fails, the relay reconnects
        original = relay.dispatch

        def explode(*args: Any) -> None:
            relay.dispatch = original  # type: ignore[method-assign]
            raise redis.ConnectionError("connection reset")

        relay.dispatch = explode  # type: ignore[method-assign]
        redis_client.publish("finetune:progress:run_a1", b'{"type": "progress", "seq": 1}')
        assert sub.get(5.0) == RESYNC  # back, after one failed attempt
        assert relay.stats()["reconnects"] == 2
    finally:
        relay.close()


def test_relay_restarts_its_listener_after_a_fork(relay: Relay) -> None:
    relay.subscribe("run_a1")
    thread = relay._thread
    relay._pid = os.getpid() + 1  # as if this process were a forked child of the creator
    relay.subscribe("run_a1")
    assert relay._thread is not thread and relay.stats()["clients"] == 1


# --- feed --------------------------------------------------------------------------------------


def feed_of(env: FeedEnv, run_id: str, **kwargs: Any) -> Feed:
    manager = env.app.extensions["tmde.manager"]
    timings = {
        "heartbeat_seconds": 0.2,
        "status_check_seconds": 0.2,
        "terminal_grace_seconds": 0.2,
        **kwargs,
    }
    return Feed(env.relay, env.redis, manager.get(run_id), lambda: manager.get(run_id), **timings)


def test_feed_resumes_after_a_seq_without_gaps_or_repeats(feed_env: FeedEnv) -> None:
    run_id = feed_env.make_run()
    emitter = feed_env.emitter(run_id)
    for step in range(1, 6):
        emitter.emit("progress", step=step)
    items = iter(feed_of(feed_env, run_id, after=2))
    assert [next(items).seq for _ in range(3)] == [3, 4, 5]
    emitter.emit("progress", step=6)
    end = emitter.emit("complete")
    assert [next(items).seq for _ in range(2)] == [6, end.seq]
    with pytest.raises(StopIteration):
        next(items)


def test_feed_for_a_new_client_starts_at_the_latest_event(feed_env: FeedEnv) -> None:
    run_id = feed_env.make_run()
    emitter = feed_env.emitter(run_id)
    for step in range(1, 4):
        emitter.emit("progress", step=step)
    items = iter(feed_of(feed_env, run_id))
    assert next(items).seq == 3
    assert next(items) == HEARTBEAT  # idle: a heartbeat after heartbeat_seconds


def test_feed_drops_a_client_that_falls_behind(feed_env: FeedEnv) -> None:
    run_id = feed_env.make_run()
    feed_env.relay.queue_size = 3
    items = iter(feed_of(feed_env, run_id, heartbeat_seconds=30))
    emitter = feed_env.emitter(run_id)
    emitter.emit("progress", step=1)
    assert next(items).seq == 1
    for step in range(2, 10):  # the client is not reading now
        emitter.emit("progress", step=step)
    wait_for(lambda: any(s.dropped for g in feed_env.relay._subs.values() for s in g))
    assert next(items) == DROPPED


def test_feed_ends_a_finished_run_whose_terminal_event_was_lost(feed_env: FeedEnv) -> None:
    run_id = feed_env.make_run()
    feed_env.emitter(run_id).emit("progress", step=1)
    items = iter(feed_of(feed_env, run_id))
    assert next(items).seq == 1
    feed_env.finish(run_id, "failed", error_code="OOM", error_message="CUDA out of memory")
    rest = [item for item in items if item != HEARTBEAT]
    assert len(rest) == 1 and isinstance(rest[0], FeedEvent)
    assert json.loads(rest[0].raw) == {
        "type": "error",
        "run_id": run_id,
        "status": "failed",
        "message": "CUDA out of memory",
        "code": "OOM",
        "timestamp": json.loads(rest[0].raw)["timestamp"],
    }


def test_terminal_event_from_run_for_each_outcome(feed_env: FeedEnv) -> None:
    manager = feed_env.app.extensions["tmde.manager"]
    expected = {"completed": "complete", "failed": "error", "cancelled": "cancelled"}
    for status, kind in expected.items():
        run_id = feed_env.make_run()
        feed_env.finish(run_id, status, lora_path="/a" if status == "completed" else None)
        event = terminal_event_from_run(manager.get(run_id))
        data = json.loads(event.raw)
        assert event.type == kind and event.seq is None and data["status"] == status
        if status == "completed":
            assert data["adapter_path"] == "/a"
        if status == "failed":
            assert data["code"] == "GENERAL"  # a failed row without a code still gets one


# --- direct mode (websockets) -------------------------------------------------------------------


def test_direct_mode_writes_frames_to_the_socket_once_each() -> None:
    import socket

    from app.wsout import FrameWriter

    server, client = socket.socketpair()
    try:
        sub = Subscription("run_a1", maxsize=8)
        sub.offer(FeedEvent.parse('{"seq": 1, "type": "progress"}'))  # type: ignore[arg-type]
        assert not sub.go_direct(FrameWriter(server), last=0)  # drain the queue first
        assert isinstance(sub.get(0), FeedEvent)
        assert sub.go_direct(FrameWriter(server), last=1) and sub.direct
        for raw in ('{"seq": 1, "type": "progress"}', '{"seq": 2, "type": "progress"}'):
            sub.offer(FeedEvent.parse(raw))  # type: ignore[arg-type]
        assert not sub.wake.is_set()  # a plain event does not wake the client's thread
        sub.offer(FeedEvent.parse('{"seq": 3, "type": "complete"}'))  # type: ignore[arg-type]
        assert sub.done and sub.wake.is_set()
        sub.offer(FeedEvent.parse('{"seq": 4, "type": "progress"}'))  # type: ignore[arg-type]
        client.settimeout(2)
        data = client.recv(65536)
        assert data.count(b"\x81") == 2 and b'"seq": 2' in data and b'"seq": 3' in data
        assert sub.leave_direct() == (3, True) and not sub.direct
    finally:
        server.close()
        client.close()


def test_direct_mode_resync_wakes_the_client() -> None:
    import socket

    from app.wsout import FrameWriter

    server, client = socket.socketpair()
    try:
        sub = Subscription("run_a1", maxsize=8)
        assert sub.go_direct(FrameWriter(server), last=5)
        sub.offer(RESYNC)
        assert sub.resync and sub.wake.is_set()
        assert sub.leave_direct() == (5, False) and not sub.resync
        sub.offer(RESYNC)  # queue mode again: RESYNC is queued for the feed to act on
        assert sub.get(0) == RESYNC
    finally:
        server.close()
        client.close()
