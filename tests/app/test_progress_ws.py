"""WS /api/finetune/<runId>/ws over a real socket: state, events, heartbeats, close codes."""

from __future__ import annotations

import json
import struct
import time
from typing import Any

import pytest
import websocket  # websocket-client

from tests.app.feeds import FeedEnv

pytestmark = pytest.mark.timeout(30)


class Client:
    """A websocket client that records text frames and the close code."""

    def __init__(self, base: str, path: str) -> None:
        self.ws = websocket.create_connection(f"ws://{base}{path}", timeout=5)
        self.close_code: int | None = None
        self.close_reason = ""

    def next(self) -> dict[str, Any] | None:
        """The next JSON frame; None once the server closed (close_code is then set)."""
        if self.close_code is not None:
            return None
        opcode, data = self.ws.recv_data(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            self.close_code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
            self.close_reason = data[2:].decode()
            return None
        if opcode == websocket.ABNF.OPCODE_TEXT:
            return json.loads(data)
        return self.next()

    def rest(self) -> list[dict[str, Any]]:
        frames = []
        while (frame := self.next()) is not None:
            frames.append(frame)
        return frames

    def close(self) -> None:
        self.ws.close()


def test_state_latest_live_terminal_then_a_clean_close(feed_env: FeedEnv, feed_server: str) -> None:
    run_id = feed_env.make_run()
    emitter = feed_env.emitter(run_id)
    emitter.emit("training_start", total_steps=10)
    latest = emitter.emit("progress", step=1, total_steps=10, loss=2.0)

    client = Client(feed_server, f"/api/finetune/{run_id}/ws")
    state = client.next()
    assert state is not None and state["type"] == "state"
    assert state["run"]["id"] == run_id and state["run"]["status"] == "running"
    assert client.next() == latest.to_dict()  # the latest event, not the whole history
    live = [emitter.emit("progress", step=s, total_steps=10, loss=1.0) for s in (2, 3)]
    live.append(emitter.emit("eval", step=3, total_steps=10, loss=1.0, eval_loss=1.1))
    end = emitter.emit("complete", metrics={"total_steps": 3}, adapter_path="/a")
    frames = [f for f in client.rest() if f["type"] != "heartbeat"]
    assert frames == [e.to_dict() for e in [*live, end]]
    assert [f["seq"] for f in frames] == [3, 4, 5, 6]
    assert client.close_code == 1000


def test_resume_after_a_seq(feed_env: FeedEnv, feed_server: str) -> None:
    run_id = feed_env.make_run()
    emitter = feed_env.emitter(run_id)
    sent = [emitter.emit("progress", step=s, total_steps=5) for s in range(1, 5)]
    emitter.emit("cancelled", message="Cancelled by user")
    client = Client(feed_server, f"/api/finetune/{run_id}/ws?after={sent[1].seq}")
    frames = client.rest()
    assert frames[0]["type"] == "state"
    assert [f["seq"] for f in frames[1:]] == [3, 4, 5]
    assert frames[-1]["type"] == "cancelled" and client.close_code == 1000


def test_heartbeat_frames_while_idle(feed_env: FeedEnv, feed_server: str) -> None:
    run_id = feed_env.make_run()
    client = Client(feed_server, f"/api/finetune/{run_id}/ws")
    assert client.next()["type"] == "state"  # type: ignore[index]
    beat = client.next()
    assert beat is not None and beat["type"] == "heartbeat" and beat["run_id"] == run_id
    assert "seq" not in beat  # a feed heartbeat is not an event of the run
    client.close()


def test_unknown_run_gets_an_error_frame_and_4404(feed_server: str) -> None:
    client = Client(feed_server, "/api/finetune/run_000000000000/ws")
    assert client.rest() == [
        {"type": "feed_error", "code": 4404, "error": "Run not found: run_000000000000"}
    ]
    assert client.close_code == 4404


def test_bad_after_gets_4400(feed_env: FeedEnv, feed_server: str) -> None:
    run_id = feed_env.make_run()
    client = Client(feed_server, f"/api/finetune/{run_id}/ws?after=soon")
    frames = client.rest()
    assert frames[0]["code"] == 4400 and client.close_code == 4400


def test_a_finished_run_sends_its_state_and_end_and_closes(
    feed_env: FeedEnv, feed_server: str
) -> None:
    run_id = feed_env.make_run()
    end = feed_env.emitter(run_id).emit("complete", adapter_path="/a")
    feed_env.finish(run_id, lora_path="/a")
    frames = Client(feed_server, f"/api/finetune/{run_id}/ws").rest()
    assert frames[0]["type"] == "state" and frames[0]["run"]["status"] == "completed"
    assert frames[0]["run"]["loraPath"] == "/a"
    assert frames[1:] == [end.to_dict()]


def test_a_slow_client_is_cut_with_1013_and_others_carry_on(
    feed_env: FeedEnv, feed_server: str
) -> None:
    run_id = feed_env.make_run()
    emitter = feed_env.emitter(run_id)
    slow = Client(feed_server, f"/api/finetune/{run_id}/ws")
    fast = Client(feed_server, f"/api/finetune/{run_id}/ws")
    assert slow.next()["type"] == fast.next()["type"] == "state"  # type: ignore[index]
    deadline = time.monotonic() + 5
    while feed_env.relay.stats()["clients"] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    subs = sorted(next(iter(feed_env.relay._subs.values())), key=id)
    # which subscription is whose does not matter for the relay: drop one of them
    subs[0].dropped = True
    event = emitter.emit("progress", step=1, total_steps=5)
    results = {}
    for name, client in (("slow", slow), ("fast", fast)):
        frame = client.next()
        while frame is not None and frame["type"] == "heartbeat":
            frame = client.next()
        results[name] = (frame, client)
    cut = [c for f, c in results.values() if f and f["type"] == "feed_error"]
    kept = [c for f, c in results.values() if f == event.to_dict()]
    assert len(cut) == 1 and len(kept) == 1
    assert cut[0].rest() == [] and cut[0].close_code == 1013
    assert (
        cut[0].close_reason == "client too slow; reconnect with ?after=<the last seq you received>"
    )
    end = emitter.emit("complete")
    assert [f for f in kept[0].rest() if f["type"] != "heartbeat"] == [end.to_dict()]
    assert feed_env.relay.stats()["droppedClients"] == 1


def test_redis_down_gets_1011(
    feed_env: FeedEnv, feed_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = feed_env.make_run()
    monkeypatch.setattr("app.relay.READY_TIMEOUT_SECONDS", 0.2)
    feed_env.redis.connection_pool.connection_kwargs["server"].connected = False
    client = Client(feed_server, f"/api/finetune/{run_id}/ws")
    frames = client.rest()
    assert frames[0]["type"] == "state"  # the run itself comes from the database
    assert frames[1] == {
        "type": "feed_error",
        "code": 1011,
        "error": "progress store unavailable; retry later",
    }
    assert client.close_code == 1011
