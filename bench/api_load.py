"""API under load while a run trains: latency of GET /api/finetune* and the cost to training.

    python bench/api_load.py                        # 200 req/s, SmolLM2-135M, 6 steps
    python bench/api_load.py --rate 100 --steps 4 --seconds 30
    python bench/api_load.py --worker-cpus 1         # training on CPU 1; API, load on the rest

What it does, all on 127.0.0.1:
- starts its own redis-server, a SQLite runs database with the demo traces, one Celery worker
  and the API under gunicorn with deploy/gunicorn.conf.py (gthread);
- runs 1 and 3, idle API: train `--steps` steps each; their mean training tokens/s is the
  baseline (one before and one after cancels slow drifts of the machine);
- run 2, loaded API: from the run's first progress event until its last training step (at
  least `--seconds`), sends `--rate` requests per second, open loop (each request has a
  scheduled send time and its latency is counted from that time, so a slow server cannot hide
  queueing), mixed over the list, one run, its stored events, the default config and the
  schedule; then records the run's tokens/s again.
- prints p50/p99/max latency, errors (non-2xx or failed connections), the achieved rate, and
  loaded/idle training tokens/s.

Target (issue 7): p99 < 50 ms, zero errors, training tokens/s within 5% of the idle run.
On a 2-core machine the API, the load generator and training share the same two cores, so
the training ratio mostly measures CPU contention; on a GPU machine training does not compete
with the API for its compute. `--worker-cpus` models that deployment (a worker with CPUs of
its own, as compose's `cpuset` gives it): the worker and its torch threads run on those CPUs,
the API and the load generator on the others, and the ratio then measures what the API costs
training beyond the CPU time it takes (Redis, the database, the progress relay).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CLIENT_THREADS = 8


def _env(root: Path, redis_url: str, port: int) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{root / 'runs.db'}",
        "TRACES_DB_PATH": str(root / "traces.db"),
        "REDIS_URL": redis_url,
        "LORA_OUTPUT_DIR": str(root / "lora-adapters"),
        "FINETUNE_TEMP_DIR": str(root / "finetune_temp"),
        "FINETUNE_LOG_DIR": str(root / "finetune_logs"),
        "MODEL_CACHE_DIR": os.environ.get("MODEL_CACHE_DIR", str(REPO / "data" / "models")),
        "API_HOST": "127.0.0.1",
        "API_PORT": str(port),
        "API_WORKERS": "1",
        "PYTHONUNBUFFERED": "1",
    }


def _get(port: int, path: str) -> tuple[int, dict]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", path)
    response = connection.getresponse()
    return response.status, json.loads(response.read() or b"null")


def _post(port: int, path: str, body: dict) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    data = json.loads(response.read())
    if response.status != 202:
        raise RuntimeError(f"POST {path}: {response.status} {data}")
    return data


def _wait(predicate, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise TimeoutError(what)


def _training_step(port: int, run_id: str) -> tuple[int, int]:
    run = _get(port, f"/api/finetune/{run_id}")[1]
    event = run.get("latestEvent") or {}
    if run["status"] in ("failed", "cancelled"):
        raise RuntimeError(f"run {run_id} {run['status']}: {run.get('errorMessage')}")
    return event.get("step") or 0, event.get("total_steps") or 0


def _finish(port: int, run_id: str) -> dict:
    def done() -> dict | None:
        run = _get(port, f"/api/finetune/{run_id}")[1]
        if run["status"] in ("failed", "cancelled"):
            raise RuntimeError(f"run {run_id} {run['status']}: {run.get('errorMessage')}")
        return run if run["status"] == "completed" else None

    return _wait(done, 1800, f"run {run_id} to complete")


class Load:
    """Open-loop GETs at a fixed total rate from CLIENT_THREADS keep-alive connections."""

    def __init__(self, port: int, rate: float, paths: list[str]) -> None:
        self.port, self.rate, self.paths = port, rate, paths
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.api_cpu = self.client_cpu = 0.0

    def _client(self, index: int, start: float) -> None:
        interval = CLIENT_THREADS / self.rate
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        n = 0
        while not self.stop.is_set():
            scheduled = start + (n + index / CLIENT_THREADS) * interval
            n += 1
            delay = scheduled - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            path = self.paths[(n * CLIENT_THREADS + index) % len(self.paths)]
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                response.read()
                ok = 200 <= response.status < 300
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                ok, response = False, exc
            latency = time.perf_counter() - scheduled
            with self.lock:
                self.latencies.append(latency)
                if not ok:
                    self.errors.append(f"{path}: {getattr(response, 'status', response)}")

    def run_until(self, done, minimum_seconds: float) -> float:  # type: ignore[no-untyped-def]
        start = time.perf_counter() + 0.05
        threads = [
            threading.Thread(target=self._client, args=(i, start), daemon=True)
            for i in range(CLIENT_THREADS)
        ]
        for thread in threads:
            thread.start()
        while time.perf_counter() - start < minimum_seconds or not done():
            time.sleep(0.25)
        self.stop.set()
        for thread in threads:
            thread.join(timeout=15)
        return time.perf_counter() - start


def _percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 10) - 1] if len(values) > 1 else values[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--model", default="smollm2:135m")
    parser.add_argument(
        "--worker-cpus",
        type=lambda text: {int(cpu) for cpu in text.split(",")},
        help="CPU ids for the worker (e.g. 1 or 2,3); the API and the load get the others",
    )
    args = parser.parse_args(argv)
    worker_cpus, api_cpus = _cpu_split(args.worker_cpus)

    from shared import migrate
    from shared.demo_traces import generate
    from shared.names import QUEUES
    from shared.traces import TraceStore
    from worker.demo import free_port, start_embedded_redis

    config = {"baseModel": args.model, "backend": "trl", "maxSteps": args.steps, "epochs": 1,
              "batchSize": 4, "gradAccum": 1, "maxSeqLen": 256, "evalSteps": 1000,
              "saveSteps": 1000, "evalSamples": 0}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="tmde-api-load-") as tmp:
        root = Path(tmp)
        redis_process, redis_url = start_embedded_redis(root / "redis")
        port = free_port()
        env = _env(root, redis_url, port)
        if worker_cpus:
            env["FINETUNE_TORCH_THREADS"] = str(len(worker_cpus))
            os.sched_setaffinity(0, api_cpus)  # this process, and so the API it starts
        migrate.upgrade(env["DATABASE_URL"])
        TraceStore(root / "traces.db").add_many(generate(300, seed=7))
        logs = open(root / "processes.log", "w")  # noqa: SIM115 - closed below
        worker = subprocess.Popen(
            [sys.executable, "-m", "shared.cli", "worker", "--queues", ",".join(QUEUES)],
            cwd=REPO, env=env, stdout=logs, stderr=subprocess.STDOUT,
            preexec_fn=(lambda: os.sched_setaffinity(0, worker_cpus)) if worker_cpus else None,
        )  # fmt: skip
        api = subprocess.Popen(
            [str(Path(sys.executable).with_name("gunicorn")), "--config",
             "deploy/gunicorn.conf.py", "app:create_app()"],
            cwd=REPO, env=env, stdout=logs, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            _wait(lambda: _ok(port), 60, "the API to answer")
            idle = _finish(port, _post(port, "/api/finetune", {"config": config})["runId"])
            run_id = _post(port, "/api/finetune", {"config": config})["runId"]
            _wait(lambda: _training_step(port, run_id)[0] >= 1, 900, "the first training step")
            load = Load(port, args.rate, _paths(run_id))
            step = lambda: _training_step(port, run_id)  # noqa: E731
            api_cpu, own_cpu = _cpu_seconds(api.pid), _own_cpu_seconds()
            elapsed = load.run_until(lambda: step()[0] >= step()[1] > 0, args.seconds)
            load.api_cpu = _cpu_seconds(api.pid) - api_cpu
            load.client_cpu = _own_cpu_seconds() - own_cpu
            loaded = _finish(port, run_id)
            # idle again: the mean of the runs before and after cancels slow drifts
            after = _finish(port, _post(port, "/api/finetune", {"config": config})["runId"])
        finally:
            for process in (api, worker):
                process.terminate()
                process.wait(timeout=60)
            redis_process.terminate()
            logs.close()
    idle_tps = [run["metrics"]["tokens_per_second"] for run in (idle, after)]
    _report(args, load, elapsed, idle_tps, loaded["metrics"]["tokens_per_second"])
    return 0


def _cpu_split(worker_cpus: set[int] | None) -> tuple[set[int], set[int]]:
    """(the worker's CPUs, everyone else's); both empty without --worker-cpus."""
    if not worker_cpus:
        return set(), set()
    available = os.sched_getaffinity(0)
    rest = available - worker_cpus
    if not worker_cpus <= available or not rest:
        raise SystemExit(
            f"--worker-cpus {sorted(worker_cpus)}: choose some, not all, of the CPUs this "
            f"process may use: {sorted(available)}"
        )
    return worker_cpus, rest


def _cpu_seconds(pid: int) -> float:
    """CPU time of a process and its children (gunicorn's master and workers)."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        times = process.cpu_times()
        total += times.user + times.system
    return total


def _own_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def _ok(port: int) -> bool:
    try:
        return _get(port, "/healthz")[0] == 200
    except OSError:
        return False


def _paths(run_id: str) -> list[str]:
    return [
        "/api/finetune?limit=20",
        f"/api/finetune/{run_id}",
        f"/api/finetune/{run_id}/events?limit=100",
        "/api/finetune/config/default",
        "/api/finetune?status=completed&limit=5",
        "/api/finetune/schedule",
    ]


def _report(args, load: Load, elapsed: float, idle: list[float], loaded_tps: float) -> None:  # type: ignore[no-untyped-def]
    ms = [v * 1000 for v in load.latencies]
    idle_tps = statistics.mean(idle)
    rate = len(ms) / elapsed
    if args.worker_cpus:
        print(f"CPUs: worker {sorted(args.worker_cpus)}, API and load generator the others")
    print(f"load: {len(ms)} GETs in {elapsed:.1f} s ({rate:.1f}/s, target {args.rate:.0f}/s)")
    p50, p99 = _percentile(ms, 50), _percentile(ms, 99)
    print(f"latency ms: p50 {p50:.1f}  p99 {p99:.1f}  max {max(ms):.1f}")
    print(f"errors: {len(load.errors)}" + (f" (first: {load.errors[:3]})" if load.errors else ""))
    per_request = 1000 / max(len(ms), 1)
    print(
        f"CPU per request: API {load.api_cpu * per_request:.2f} ms, load generator "
        f"{load.client_cpu * per_request:.2f} ms (cores busy beside training: "
        f"{(load.api_cpu + load.client_cpu) / elapsed:.2f})"
    )
    before, after = idle
    print(f"training tokens/s: idle API {idle_tps:.1f} (before {before:.1f}, after {after:.1f})")
    print(f"training tokens/s: loaded API {loaded_tps:.1f} (ratio {loaded_tps / idle_tps:.3f})")


if __name__ == "__main__":
    sys.exit(main())
