"""More than one machine: a CPU worker on the `export` queue and a GPU worker on the `train`
queue, separate processes sharing only Redis, PostgreSQL and the data/ folder. Each step runs
where its queue sends it; adding capacity means starting one more worker, nothing else."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from tests.helpers import make_settings
from tests.integration.conftest import start_worker, stop_worker

pytestmark = pytest.mark.integration

TINY = {"backend": "trl", "maxSteps": 2, "evalSteps": 2, "saveSteps": 2, "batchSize": 2,
        "gradAccum": 1, "maxSeqLen": 128, "evalSamples": 1}  # fmt: skip


@pytest.fixture
def api(tmp_path: Path, redis_url: str, migrated_url: str, trace_store) -> Iterator[tuple]:  # noqa: ANN001
    from werkzeug.serving import make_server

    from app import create_app

    settings = make_settings(tmp_path, redis_url=redis_url, database_url=migrated_url)
    redis.Redis.from_url(redis_url).flushdb()
    server = make_server("127.0.0.1", 0, create_app(settings), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield settings, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def _tasks(log: Path) -> set[str]:
    """Names of the tasks a worker finished, from its own log."""
    return set(re.findall(r"Task (tmde\.[\w.]+)\[[\w-]+\] succeeded", log.read_text()))


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
def test_steps_run_on_the_worker_of_their_queue(
    api: tuple, tmp_path: Path, tiny_model: Path
) -> None:
    settings, base_url = api
    cpu_log, gpu_log = tmp_path / "cpu.log", tmp_path / "gpu.log"
    # the GPU machine keeps its own model cache; data/ (adapters, exports, logs) is shared
    cpu = start_worker(settings, cpu_log, queues="export")
    gpu = start_worker(settings, gpu_log, queues="train", MODEL_CACHE_DIR=str(tmp_path / "gpu"))
    try:
        ready = requests.get(f"{base_url}/readyz", timeout=10).json()
        assert ready["status"] == "ok" and ready["checks"]["worker"] == "ok (2 workers)"
        response = requests.post(
            f"{base_url}/api/finetune", json={"config": {"baseModel": str(tiny_model), **TINY}}
        )
        assert response.status_code == 202, response.text
        run_id = response.json()["runId"]
        deadline = time.monotonic() + 300
        run = {}
        while time.monotonic() < deadline:
            run = requests.get(f"{base_url}/api/finetune/{run_id}").json()
            if run["status"] in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.5)
        assert run["status"] == "completed", run
    finally:
        stop_worker(cpu)
        stop_worker(gpu)
    assert _tasks(cpu_log) == {"tmde.finetune.export"}
    assert _tasks(gpu_log) == {"tmde.finetune.train", "tmde.finetune.evaluate"}
    assert Path(run["loraPath"]) == settings.lora_output_dir / run_id
    assert (Path(run["loraPath"]) / "manifest.json").is_file()
