"""`tmde-finetune start --follow` and `follow` as processes, against the live service."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import REPO, Service, _settings_env

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(240),
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]


def _cli(service: Service, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "shared.cli", *args, "--api-url", service.base_url],
        cwd=REPO,
        env=_settings_env(service.settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_start_follow_exits_with_the_failed_runs_code(service: Service) -> None:
    config = json.dumps({"baseModel": "nosuch:1b", "backend": "trl", "maxSteps": 2})
    process = _cli(service, "start", "--config", config, "--follow")
    out, err = process.communicate(timeout=180)
    assert process.returncode == 4, (out, err)  # seed §5.3: model not found
    lines = out.splitlines()
    run_id = json.loads(lines[0])["runId"]
    assert any(line.startswith("exported ") for line in lines)
    assert any(line.startswith("error [MODEL_NOT_FOUND]: ") for line in lines)
    assert lines[-1].startswith(f"run {run_id} failed [MODEL_NOT_FOUND]")


def test_follow_a_running_run_until_it_is_cancelled(service: Service, tiny_model: Path) -> None:
    config = {
        "baseModel": str(tiny_model),
        "backend": "trl",
        "maxSteps": 3000,
        "objective": "sft",  # the total is the SFT steps alone
        "evalSteps": 100000,
        "saveSteps": 100000,
        "batchSize": 2,
        "gradAccum": 1,
        "maxSeqLen": 128,
    }
    response = requests.post(f"{service.base_url}/api/finetune", json={"config": config})
    run_id = response.json()["runId"]
    process = _cli(service, "follow", run_id)
    assert process.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 120
    for line in process.stdout:  # not a TTY: one line per event
        seen.append(line.rstrip("\n"))
        if "] step 2/3000" in line or time.monotonic() > deadline:
            break
    assert any("] step 2/3000 loss " in line for line in seen), seen
    assert requests.post(f"{service.base_url}/api/finetune/{run_id}/cancel").status_code == 202
    rest, err = process.communicate(timeout=90)
    assert process.returncode == 130, (seen, rest, err)
    assert "\ncancelled: " in "\n" + rest and rest.splitlines()[-1] == f"run {run_id} cancelled"
