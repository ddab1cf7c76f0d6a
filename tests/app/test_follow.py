"""The terminal follower (shared.follow) against a live API feed: bar, resume, exit codes."""

from __future__ import annotations

import io
import threading
import time
from typing import Any

import pytest

from shared.follow import ProgressView, exit_code, follow, format_eta, iter_sse, render
from tests.app.feeds import FeedEnv

pytestmark = pytest.mark.timeout(60)


def later(seconds: float, action: Any) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(seconds), action()), daemon=True)
    thread.start()
    return thread


def run_follow(feed_server: str, run_id: str, **kwargs: Any) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = follow(f"http://{feed_server}", run_id, out=out, err=err, timeout=10, **kwargs)
    return code, out.getvalue(), err.getvalue()


def test_follow_shows_progress_and_exits_0_when_completed(
    feed_env: FeedEnv, feed_server: str
) -> None:
    run_id = feed_env.make_run()
    emitter = feed_env.emitter(run_id)
    emitter.emit("training_start", total_steps=4)

    def train() -> None:
        for step in range(1, 5):
            emitter.emit(
                "progress", step=step, total_steps=4, loss=2.0 / step, learning_rate=2e-4,
                eta_seconds=(4 - step) * 75,
            )  # fmt: skip
        feed_env.finish(run_id, lora_path="/adapters/x", metrics='{"adapter_val_loss": 0.9}')
        emitter.emit("complete", adapter_path="/adapters/x")

    later(0.3, train)
    code, out, _ = run_follow(feed_server, run_id, tty=False)
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "training started: 4 steps"
    assert "step 4/4 loss 0.5000 lr 2.00e-04 eta 0:00" in out
    assert f"[{'#' * 15}{'.' * 15}] step 2/4 loss 1.0000" in out and "eta 2:30" in out
    assert "complete: /adapters/x" in out
    assert lines[-1].startswith(f"run {run_id} completed: adapter /adapters/x")


def test_on_a_terminal_the_bar_is_redrawn_in_place(feed_env: FeedEnv, feed_server: str) -> None:
    run_id = feed_env.make_run()
    emitter = feed_env.emitter(run_id)
    emitter.emit("progress", step=1, total_steps=2, loss=1.0)

    def finish() -> None:
        emitter.emit("progress", step=2, total_steps=2, loss=0.5)
        feed_env.finish(run_id, "cancelled")
        emitter.emit("cancelled", message="Cancelled by user")

    later(0.3, finish)
    code, out, _ = run_follow(feed_server, run_id, tty=True)
    assert code == 130
    assert out.count("\r[") == 2 and "\x1b[K" in out  # one line, redrawn
    assert "\ncancelled: Cancelled by user\n" in out


@pytest.mark.parametrize(
    ("error_code", "expected"),
    [("OOM", 3), ("MODEL_NOT_FOUND", 4), ("INSUFFICIENT_DATA", 2), ("GENERAL", 1)],
)
def test_a_failed_run_exits_with_its_seed_code(
    feed_env: FeedEnv, feed_server: str, error_code: str, expected: int
) -> None:
    run_id = feed_env.make_run()
    feed_env.finish(run_id, "failed", error_code=error_code, error_message="it broke")
    feed_env.emitter(run_id).emit("error", code=error_code, message="it broke")
    code, out, _ = run_follow(feed_server, run_id)
    assert code == expected
    assert f"error [{error_code}]: it broke" in out
    assert f"failed [{error_code}]: it broke" in out


def test_an_unknown_run_is_an_error(feed_server: str) -> None:
    code, out, err = run_follow(feed_server, "run_000000000000")
    assert code == 1 and out == ""
    assert "Run not found: run_000000000000" in err


def test_follow_resumes_after_the_server_cuts_it(feed_env: FeedEnv, feed_server: str) -> None:
    """Cut as a slow client (queue overflow); it reconnects with Last-Event-ID, losing nothing."""
    run_id = feed_env.make_run()
    emitter = feed_env.emitter(run_id)
    emitter.emit("progress", step=1, total_steps=40, loss=1.0)

    def burst() -> None:
        feed_env.relay.queue_size = 1  # new subscriptions only: the reconnect keeps it small
        for sub in [s for group in feed_env.relay._subs.values() for s in group]:
            sub.dropped = True
        for step in range(2, 41):
            emitter.emit("progress", step=step, total_steps=40, loss=1.0 / step)
        feed_env.finish(run_id)
        emitter.emit("complete", adapter_path="/a")

    later(0.3, burst)
    code, out, _ = run_follow(feed_server, run_id, tty=False)
    assert code == 0
    steps = [
        int(line.split("step ")[1].split("/")[0]) for line in out.splitlines() if "] step" in line
    ]
    assert steps == list(range(1, 41))  # every step exactly once, in order
    assert feed_env.relay.stats()["droppedClients"] == 1  # it really was cut and came back


def test_exit_code_mapping() -> None:
    assert exit_code({"type": "complete"}, None) == 0
    assert exit_code({"type": "cancelled"}, None) == 130
    assert exit_code({"type": "error", "code": "OOM"}, None) == 3
    assert exit_code({"type": "error", "code": "OOM"}, {"errorCode": "MODEL_NOT_FOUND"}) == 4
    assert exit_code({"type": "error"}, {"errorCode": "SOMETHING_NEW"}) == 1
    assert exit_code(None, {"status": "completed"}) == 0
    assert exit_code(None, {"status": "cancelled"}) == 130
    assert exit_code(None, None) == 1


def test_rendering_helpers() -> None:
    assert format_eta(None) == "?" and format_eta(59) == "0:59" and format_eta(3725) == "1:02:05"
    assert render({"type": "heartbeat"}) is None
    assert render({"type": "eval", "step": 5, "eval_loss": None}) == "  eval at step 5: eval_loss ?"
    line = render({"type": "progress", "step": 50, "total_steps": 10, "loss": None})
    assert line is not None and "#" * 30 in line and "loss None" in line  # clamped, no crash
    frames = list(iter_sse([b"retry: 2000\n", b"\n", b": hi\n", b"\n", b"id: 7\n", b'data: {"a"\n',
                            b"data: : 1}\n", b"\n"]))  # fmt: skip
    assert frames == [("7", '{"a"\n: 1}')]
    stream = io.StringIO()
    view = ProgressView(stream, tty=True)
    view.show({"type": "progress", "step": 1, "total_steps": 2, "loss": 1.0})
    view.close()
    assert stream.getvalue().endswith("\x1b[K\n")


def test_follow_passes_api_token(
    feed_env: FeedEnv, feed_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app import auth

    token = "follow-token-0123456789"
    auth.init_app(feed_env.app, token=token, cors_origins=())
    run_id = feed_env.make_run()
    feed_env.finish(run_id, lora_path="/adapters/y")
    feed_env.emitter(run_id).emit("complete", adapter_path="/adapters/y")
    monkeypatch.setenv("API_TOKEN", "wrong-token-0123456789")
    code, _, err = run_follow(feed_server, run_id, tty=False)
    assert code != 0 and "401" in err
    monkeypatch.setenv("API_TOKEN", token)
    code, out, _ = run_follow(feed_server, run_id, tty=False)
    assert code == 0 and "complete: /adapters/y" in out
