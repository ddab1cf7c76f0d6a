"""Single flight across processes: two API processes racing for the slot (SQLite and PostgreSQL)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.helpers import make_settings
from tests.integration.conftest import REPO, _settings_env
from worker.demo import free_port, stop

pytestmark = pytest.mark.integration


def _healthy(port: int) -> bool:
    try:
        return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def _wait_healthy(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not _healthy(port):
        if time.monotonic() > deadline:
            raise TimeoutError(f"API on port {port} not healthy")
        time.sleep(0.2)


def test_two_api_processes_racing_give_one_202_and_one_409(
    tmp_path: Path, redis_url: str, migrated_url: str, trace_store
) -> None:
    settings = make_settings(tmp_path, redis_url=redis_url, database_url=migrated_url)
    ports = [free_port(), free_port()]
    apis = [
        subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "api", "--port", str(port)],
            cwd=REPO,
            env=_settings_env(settings),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        for port in ports
    ]
    try:
        for port in ports:
            _wait_healthy(port)
        for _ in range(3):
            barrier = threading.Barrier(2)
            answers: list[requests.Response] = []

            def post(port: int, barrier=barrier, answers=answers) -> None:  # noqa: ANN001
                barrier.wait()
                answers.append(
                    requests.post(
                        f"http://127.0.0.1:{port}/api/finetune",
                        json={"config": {"maxSteps": 1}},
                        timeout=30,
                    )
                )

            threads = [threading.Thread(target=post, args=(port,)) for port in ports]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            codes = sorted(answer.status_code for answer in answers)
            assert codes == [202, 409], [a.text for a in answers]
            winner = next(a for a in answers if a.status_code == 202).json()["runId"]
            loser = next(a for a in answers if a.status_code == 409).json()
            assert loser["activeRunId"] in (winner, None)
            cancel = requests.post(f"http://127.0.0.1:{ports[0]}/api/finetune/{winner}/cancel")
            assert cancel.status_code == 202 and cancel.json()["status"] == "cancelled"
    finally:
        for api in apis:
            stop(api)
