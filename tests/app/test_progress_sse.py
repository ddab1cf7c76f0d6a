"""GET /api/finetune/<runId>/progress: seed §4.2 SSE with ids, resume, heartbeats, the end."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.app.feeds import FeedEnv


def sse(chunks: Any) -> Iterator[dict[str, Any]]:
    """Parse an SSE body into frames: {"id", "data" (decoded JSON)} or {"comment"}/{"retry"}."""
    buffer = ""
    for chunk in chunks:
        buffer += chunk.decode() if isinstance(chunk, bytes) else chunk
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            frame: dict[str, Any] = {}
            for line in block.split("\n"):
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "":
                    frame["comment"] = value
                elif field == "data":
                    frame["data"] = json.loads(value)
                else:
                    frame[field] = value
            yield frame


def events(frames: Iterator[dict[str, Any]] | list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [f for f in frames if "data" in f]


@pytest.mark.timeout(30)
def test_headers_ids_and_the_cached_terminal_event(feed_env: FeedEnv) -> None:
    run_id = feed_env.make_run()
    emitter = feed_env.emitter(run_id)
    emitter.emit("progress", step=9, total_steps=10)
    done = emitter.emit("complete", metrics={"final_val_loss": 0.5}, adapter_path="/a")
    feed_env.finish(run_id)

    response = feed_env.app.test_client().get(f"/api/finetune/{run_id}/progress")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert response.headers["Cache-Control"] == "no-cache"
    assert response.headers["Connection"] == "keep-alive"
    assert response.headers["X-Accel-Buffering"] == "no"
    frames = list(sse([response.get_data()]))
    assert frames[0] == {"retry": "2000"}
    assert events(frames) == [{"id": str(done.seq), "data": done.to_dict()}]  # then it ends


@pytest.mark.timeout(30)
def test_latest_first_then_live_events_each_with_its_id(feed_env: FeedEnv) -> None:
    run_id = feed_env.make_run()
    emitter = feed_env.emitter(run_id)
    emitter.emit("progress", step=2, total_steps=10, loss=1.6)
    latest = emitter.emit("progress", step=3, total_steps=10, loss=1.5)

    response = feed_env.app.test_client().get(f"/api/finetune/{run_id}/progress", buffered=False)
    try:
        stream = (f for f in sse(response.response) if "data" in f)
        assert next(stream) == {"id": str(latest.seq), "data": latest.to_dict()}
        live = emitter.emit("eval", step=4, total_steps=10, eval_loss=1.2)
        assert next(stream) == {"id": str(live.seq), "data": live.to_dict()}
        end = emitter.emit("error", code="OOM", message="CUDA out of memory")
        assert next(stream) == {"id": str(end.seq), "data": end.to_dict()}
        with pytest.raises(StopIteration):  # a terminal event ends the stream
            next(stream)
    finally:
        response.close()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("how", ["header", "query"])
def test_last_event_id_resumes_without_gaps_or_repeats(feed_env: FeedEnv, how: str) -> None:
    run_id = feed_env.make_run()
    emitter = feed_env.emitter(run_id)
    sent = [emitter.emit("progress", step=step, total_steps=9) for step in range(1, 6)]
    path = f"/api/finetune/{run_id}/progress"
    if how == "header":
        response = feed_env.app.test_client().get(
            path, headers={"Last-Event-ID": str(sent[1].seq)}, buffered=False
        )
    else:
        response = feed_env.app.test_client().get(
            f"{path}?lastEventId={sent[1].seq}", buffered=False
        )
    try:
        stream = (f for f in sse(response.response) if "data" in f)
        assert [next(stream)["data"]["step"] for _ in range(3)] == [3, 4, 5]
        more = [emitter.emit("progress", step=6, total_steps=9), emitter.emit("complete")]
        rest = list(stream)
        assert [f["id"] for f in rest] == [str(e.seq) for e in more]
    finally:
        response.close()


@pytest.mark.timeout(30)
def test_heartbeats_are_comments(feed_env: FeedEnv) -> None:
    run_id = feed_env.make_run()  # nothing published yet
    response = feed_env.app.test_client().get(f"/api/finetune/{run_id}/progress", buffered=False)
    try:
        frames = sse(response.response)
        assert next(frames) == {"retry": "2000"}
        assert next(frames) == {"comment": "heartbeat"}  # FEED_HEARTBEAT_SECONDS=0.3 here
        event = feed_env.emitter(run_id).emit("training_start", total_steps=3)
        assert next(frames) == {"id": "1", "data": event.to_dict()}
    finally:
        response.close()


def test_unknown_run_is_404_and_a_bad_last_event_id_400(feed_env: FeedEnv) -> None:
    client = feed_env.app.test_client()
    response = client.get("/api/finetune/run_000000000000/progress")
    assert response.status_code == 404
    assert response.get_json() == {"error": "Run not found: run_000000000000"}
    run_id = feed_env.make_run()
    response = client.get(f"/api/finetune/{run_id}/progress", headers={"Last-Event-ID": "x"})
    assert response.status_code == 400 and "Last-Event-ID" in response.get_json()["error"]


def test_a_client_that_saw_the_end_is_told_to_stop(feed_env: FeedEnv) -> None:
    run_id = feed_env.make_run()
    end = feed_env.emitter(run_id).emit("cancelled", message="Cancelled by user")
    feed_env.finish(run_id, "cancelled")
    client = feed_env.app.test_client()
    path = f"/api/finetune/{run_id}/progress"
    assert client.get(path, headers={"Last-Event-ID": str(end.seq)}).status_code == 204
    # one event behind: it gets the end
    response = client.get(path, headers={"Last-Event-ID": str(end.seq - 1)})
    assert events(sse([response.get_data()])) == [{"id": str(end.seq), "data": end.to_dict()}]


@pytest.mark.timeout(30)
def test_a_finished_run_whose_terminal_event_was_lost_still_ends(feed_env: FeedEnv) -> None:
    run_id = feed_env.make_run()
    latest = feed_env.emitter(run_id).emit("progress", step=1, total_steps=2)
    feed_env.finish(run_id, "failed", error_code="OOM", error_message="CUDA out of memory")
    response = feed_env.app.test_client().get(f"/api/finetune/{run_id}/progress")
    got = events(sse([response.get_data()]))
    assert got[0] == {"id": str(latest.seq), "data": latest.to_dict()}
    assert got[1]["id"] == str(latest.seq)  # rebuilt from the row: it repeats the last id
    end = got[1]["data"]
    assert (end["type"], end["code"], end["status"]) == ("error", "OOM", "failed")
    assert len(got) == 2
    # and a reconnecting EventSource is told to stop
    client = feed_env.app.test_client()
    response = client.get(
        f"/api/finetune/{run_id}/progress", headers={"Last-Event-ID": str(latest.seq)}
    )
    assert response.status_code == 204


@pytest.mark.timeout(30)
def test_a_run_with_no_event_at_all_ends_with_its_status(feed_env: FeedEnv) -> None:
    run_id = feed_env.make_run()
    feed_env.finish(run_id, "cancelled", error_message="Cancelled before it started")
    response = feed_env.app.test_client().get(f"/api/finetune/{run_id}/progress")
    got = events(sse([response.get_data()]))
    assert [(f["id"], f["data"]["type"]) for f in got] == [("0", "cancelled")]


@pytest.mark.timeout(30)
def test_a_dropped_client_resumes_where_it_was_cut(feed_env: FeedEnv) -> None:
    run_id = feed_env.make_run()
    feed_env.relay.queue_size = 2
    emitter = feed_env.emitter(run_id)
    path = f"/api/finetune/{run_id}/progress"
    response = feed_env.app.test_client().get(path, buffered=False)
    try:
        stream = (f for f in sse(response.response) if "data" in f)
        first = emitter.emit("progress", step=1, total_steps=20)
        assert next(stream)["id"] == str(first.seq)
        for step in range(2, 12):  # not reading: the queue overflows, the stream is cut
            emitter.emit("progress", step=step, total_steps=20)
        seen = [int(f["id"]) for f in stream]  # whatever was queued, then the end of stream
    finally:
        response.close()
    last_seen = max([first.seq, *seen])
    assert last_seen < 11
    resumed = feed_env.app.test_client().get(
        path, headers={"Last-Event-ID": str(last_seen)}, buffered=False
    )
    try:
        stream = (f for f in sse(resumed.response) if "data" in f)
        ids = [int(next(stream)["id"]) for _ in range(11 - last_seen)]
        assert ids == list(range(last_seen + 1, 12))  # nothing lost, nothing repeated
    finally:
        resumed.close()


@pytest.mark.timeout(30)
def test_redis_down(feed_env: FeedEnv, monkeypatch: pytest.MonkeyPatch) -> None:
    """The stream ends (EventSource retries with its id); a resume check answers 503."""
    monkeypatch.setattr("app.relay.READY_TIMEOUT_SECONDS", 0.2)
    running, finished = feed_env.make_run(), feed_env.make_run()
    feed_env.finish(finished)
    feed_env.redis.connection_pool.connection_kwargs["server"].connected = False
    client = feed_env.app.test_client()
    response = client.get(f"/api/finetune/{running}/progress")
    assert response.status_code == 200
    assert list(sse([response.get_data()])) == [{"retry": "2000"}]
    response = client.get(f"/api/finetune/{finished}/progress", headers={"Last-Event-ID": "3"})
    assert response.status_code == 503 and "Redis" in response.get_json()["error"]
