"""The progress-event schema (seed §5.1), the Emitter and its sinks, the Redis publisher."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import fakeredis
import pytest
import redis

from shared.events import (
    EVENT_TYPES,
    LATEST_EVENT_TTL_SECONDS,
    TERMINAL_EVENT_TYPES,
    Emitter,
    ProgressEvent,
    RedisPublisher,
    file_sink,
    latest_event,
    stdout_sink,
)
from shared.names import latest_event_key, progress_channel
from tests.helpers import next_message


@pytest.fixture
def redis_client() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


# --- schema ------------------------------------------------------------------------------------


def test_progress_event_keeps_eval_loss_null() -> None:
    event = ProgressEvent(
        "progress",
        run_id="run_ab12",
        step=10,
        total_steps=270,
        loss=1.42,
        learning_rate=0.0002,
        eta_seconds=1620,
        timestamp="2026-02-20T02:01:00Z",
    )
    assert event.to_dict() == {
        "type": "progress",
        "run_id": "run_ab12",
        "step": 10,
        "total_steps": 270,
        "loss": 1.42,
        "eval_loss": None,
        "learning_rate": 0.0002,
        "eta_seconds": 1620,
        "timestamp": "2026-02-20T02:01:00Z",
    }
    assert '"eval_loss": null' in event.to_json()


def test_eval_event_keeps_every_step_key() -> None:
    data = ProgressEvent("eval", step=50).to_dict()
    for key in ("step", "total_steps", "loss", "eval_loss", "learning_rate", "eta_seconds"):
        assert key in data
    assert "run_id" not in data and "message" not in data


def test_other_events_drop_none() -> None:
    event = ProgressEvent(
        "export_complete",
        run_id="r",
        train_count=89,
        val_count=10,
        timestamp="2026-02-20T02:00:01Z",
    )
    assert event.to_dict() == {
        "type": "export_complete",
        "run_id": "r",
        "train_count": 89,
        "val_count": 10,
        "timestamp": "2026-02-20T02:00:01Z",
    }
    checkpoint = ProgressEvent("checkpoint", step=100, path="/a/checkpoint-100").to_dict()
    assert set(checkpoint) == {"type", "step", "path", "timestamp"}


def test_complete_event_carries_metrics() -> None:
    metrics = {"final_train_loss": 0.42, "total_steps": 270}
    data = json.loads(ProgressEvent("complete", metrics=metrics, adapter_path="/x").to_json())
    assert data["metrics"] == metrics and data["adapter_path"] == "/x"


def test_unknown_type_rejected() -> None:
    with pytest.raises(ValueError, match="unknown event type 'progres'"):
        ProgressEvent("progres")


def test_timestamp_defaults_to_utc_now() -> None:
    timestamp = ProgressEvent("heartbeat").timestamp
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", timestamp)


@pytest.mark.parametrize("kind", EVENT_TYPES)
def test_terminal_types(kind: str) -> None:
    assert ProgressEvent(kind).is_terminal == (kind in ("complete", "error", "cancelled"))
    assert set(TERMINAL_EVENT_TYPES) == {"complete", "error", "cancelled"}


def test_from_dict_roundtrip_ignores_unknown_keys() -> None:
    event = ProgressEvent(
        "error",
        run_id="r",
        code="OOM",
        message="CUDA out of memory",
        suggestion="Reduce batch_size or max_seq_length",
    )
    data = {**json.loads(event.to_json()), "extra": "ignored"}
    assert ProgressEvent.from_dict(data) == event
    with pytest.raises(ValueError):
        ProgressEvent.from_dict({"type": "nope"})


# --- Emitter and sinks -------------------------------------------------------------------------


def test_emitter_sends_to_every_sink_and_stamps_run_id() -> None:
    seen_a: list[ProgressEvent] = []
    seen_b: list[ProgressEvent] = []
    emitter = Emitter("run_1", [seen_a.append, seen_b.append])
    event = emitter.emit("training_start", total_steps=9)
    assert event.run_id == "run_1" and event.total_steps == 9
    assert seen_a == seen_b == [event]


def test_emitter_survives_a_failing_sink(caplog: pytest.LogCaptureFixture) -> None:
    seen: list[str] = []

    def broken(event: ProgressEvent) -> None:
        raise ConnectionError("redis went away")

    emitter = Emitter("run_1", [broken, lambda e: seen.append(e.type)])
    with caplog.at_level(logging.ERROR, logger="shared.events"):
        emitter.emit("progress", step=1, total_steps=2)
        emitter.emit("complete")
    assert seen == ["progress", "complete"]
    failures = [r for r in caplog.records if "sink" in r.getMessage()]
    assert len(failures) == 2
    assert failures[0].exc_info and failures[0].exc_info[0] is ConnectionError


def test_emitter_rejects_unknown_type_before_any_sink() -> None:
    seen: list[ProgressEvent] = []
    with pytest.raises(ValueError):
        Emitter("r", [seen.append]).emit("bogus")
    assert seen == []


def test_stdout_sink_writes_json_lines() -> None:
    stream = io.StringIO()
    emitter = Emitter("r", [stdout_sink(stream)])
    emitter.emit("training_start", total_steps=3)
    emitter.emit("progress", step=1, total_steps=3, loss=2.0)
    lines = stream.getvalue().splitlines()
    assert [json.loads(line)["type"] for line in lines] == ["training_start", "progress"]
    assert json.loads(lines[1])["eval_loss"] is None


def test_stdout_sink_defaults_to_sys_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    Emitter(None, [stdout_sink()]).emit("heartbeat")
    assert json.loads(capsys.readouterr().out)["type"] == "heartbeat"


def test_file_sink_appends(tmp_path: Path) -> None:
    path = tmp_path / "run.log"
    sink = file_sink(path)
    Emitter("r", [sink]).emit("training_start", total_steps=1)
    Emitter("r", [sink]).emit("complete")
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and all(line.startswith("EVENT {") for line in lines)
    assert json.loads(lines[1][len("EVENT ") :])["type"] == "complete"


# --- Redis ------------------------------------------------------------------------------------


def test_redis_publisher_publishes_on_the_run_channel(redis_client) -> None:  # noqa: ANN001
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe("finetune:progress:run_abc")
    assert progress_channel("run_abc") == "finetune:progress:run_abc"

    event = Emitter("run_abc", [RedisPublisher(redis_client)]).emit(
        "progress", step=3, total_steps=10, loss=1.5
    )
    message = next_message(pubsub)
    assert message is not None
    assert message["channel"] == b"finetune:progress:run_abc"
    assert json.loads(message["data"]) == event.to_dict()
    pubsub.close()


def test_redis_publisher_caches_the_latest_event(redis_client) -> None:  # noqa: ANN001
    publish = RedisPublisher(redis_client)
    assert latest_event(redis_client, "run_abc") is None
    emitter = Emitter("run_abc", [publish])
    emitter.emit("progress", step=1, total_steps=10)
    last = emitter.emit("progress", step=2, total_steps=10)
    assert latest_event(redis_client, "run_abc") == last.to_dict()
    ttl = redis_client.ttl(latest_event_key("run_abc"))
    assert LATEST_EVENT_TTL_SECONDS - 5 <= ttl <= LATEST_EVENT_TTL_SECONDS
    assert latest_event(redis_client, "run_other") is None


def test_heartbeats_are_published_but_not_cached(redis_client) -> None:  # noqa: ANN001
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(progress_channel("run_abc"))
    emitter = Emitter("run_abc", [RedisPublisher(redis_client)])
    progress = emitter.emit("progress", step=1, total_steps=10)
    emitter.emit("heartbeat")
    types = []
    for _ in range(2):
        message = next_message(pubsub)
        assert message is not None
        types.append(json.loads(message["data"])["type"])
    assert types == ["progress", "heartbeat"]
    assert latest_event(redis_client, "run_abc") == progress.to_dict()
    pubsub.close()


def test_event_without_run_id_is_not_published(redis_client) -> None:  # noqa: ANN001
    Emitter(None, [RedisPublisher(redis_client)]).emit("complete")
    assert redis_client.keys("*") == []


def test_redis_outage_does_not_stop_other_sinks() -> None:
    server = fakeredis.FakeServer()
    server.connected = False  # fakeredis: every command now raises ConnectionError
    publish = RedisPublisher(fakeredis.FakeRedis(server=server))
    with pytest.raises(redis.ConnectionError):
        publish(ProgressEvent("complete", run_id="r"))
    seen: list[str] = []
    Emitter("r", [publish, lambda e: seen.append(e.type)]).emit("complete")
    assert seen == ["complete"]
