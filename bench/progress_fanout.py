"""Fan-out benchmark: N websocket viewers of one run on ONE API process.

    python bench/progress_fanout.py                       # N = 10, 100, 500; werkzeug threaded
    python bench/progress_fanout.py --server gunicorn     # gunicorn -k gthread, one worker
    python bench/progress_fanout.py --clients 10,100 --rate 20 --seconds 10

What it does, all on 127.0.0.1 and bounded in time:
- starts its own redis-server (so connection counts are exact), a SQLite runs database with
  one running run per N, and one API process (`tmde-finetune api` or gunicorn gthread);
- opens N websocket clients on /api/finetune/<runId>/ws in a separate client process (asyncio,
  a minimal RFC 6455 reader), waits until each got its `state` frame;
- publishes `progress` events at `--rate` per second for `--seconds` through the worker's own
  publisher (shared.events.RedisPublisher), then `complete`;
- reports, per N: per-event delivery latency (publish call -> frame read by the client) p50,
  p99 and max over every (client, event); events lost or duplicated; the Redis connections the
  API holds (CLIENT LIST by client name `tmde-api*`, and INFO connected_clients minus this
  script's own) before and while N clients watch; the API's threads and CPU seconds.

Target (issue 3): p99 < 100 ms at 500 clients; Redis connections independent of N.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import resource
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# --- the client process ------------------------------------------------------------------------


class _Viewer(asyncio.Protocol):
    """A minimal websocket client as an asyncio Protocol: frames are parsed straight from the
    receive buffer (one callback per TCP read, not per frame), so the measuring side adds as
    little delay as it can; each frame is stamped when its bytes arrive."""

    def __init__(self, record: list, on_state: asyncio.Future, finished: asyncio.Future) -> None:
        self.record, self.on_state, self.finished = record, on_state, finished
        self.buffer = bytearray()
        self.handshaken = False

    def data_received(self, data: bytes) -> None:
        now = time.time()
        self.buffer += data
        if not self.handshaken:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if b" 101 " not in self.buffer[: self.buffer.find(b"\r\n")]:
                self.finished.set_exception(RuntimeError(bytes(self.buffer[:200]).decode()))
                return
            del self.buffer[: end + 4]
            self.handshaken = True
        while len(self.buffer) >= 2:
            opcode, length, offset = self.buffer[0] & 0x0F, self.buffer[1] & 0x7F, 2
            if length == 126:
                if len(self.buffer) < 4:
                    return
                length, offset = struct.unpack_from("!H", self.buffer, 2)[0], 4
            elif length == 127:
                if len(self.buffer) < 10:
                    return
                length, offset = struct.unpack_from("!Q", self.buffer, 2)[0], 10
            if len(self.buffer) < offset + length:
                return
            payload = bytes(self.buffer[offset : offset + length])
            del self.buffer[: offset + length]
            if opcode == 8 and not self.finished.done():
                self.finished.set_result(None)
            elif opcode == 1 and not self.on_state.done():
                self.on_state.set_result(None)  # the `state` frame: connected
            elif opcode == 1 and payload.startswith(b'{"seq": '):
                self.record.append((int(payload[8 : payload.index(b",")]), now))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            self.finished.set_result(None)


async def _connect(port: int, path: str, record: list, gate: asyncio.Semaphore) -> asyncio.Future:
    loop = asyncio.get_running_loop()
    on_state, finished = loop.create_future(), loop.create_future()
    async with gate:  # connect in waves: the listen backlog is finite
        transport, _ = await loop.create_connection(
            lambda: _Viewer(record, on_state, finished), "127.0.0.1", port
        )
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        await asyncio.wait_for(on_state, 60)
    return finished


async def _clients_main(port: int, run_id: str, count: int, timeout: float) -> None:
    records: list[list] = [[] for _ in range(count)]
    gate = asyncio.Semaphore(64)
    path = f"/api/finetune/{run_id}/ws"
    connects = [_connect(port, path, records[i], gate) for i in range(count)]
    results = await asyncio.gather(*connects, return_exceptions=True)
    finished = [r for r in results if isinstance(r, asyncio.Future)]
    errors = [repr(r) for r in results if not isinstance(r, asyncio.Future)]
    print(f"READY {len(finished)}", flush=True)
    done, pending = await asyncio.wait(finished, timeout=timeout) if finished else (set(), set())
    errors += [repr(f.exception()) for f in done if f.exception()]
    print(json.dumps({"records": records, "errors": errors[:5], "unfinished": len(pending)}))


# --- the orchestrator --------------------------------------------------------------------------


def _raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _serving_pid(pid: int) -> int:
    """The process that serves requests: gunicorn's one worker, else the process itself."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(children[0]) if children else pid


def _proc_stats(pid: int) -> tuple[int, float]:
    """(threads, CPU seconds) of the serving process, from /proc."""
    pid = _serving_pid(pid)
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    threads = int(next(line for line in status if line.startswith("Threads:")).split()[1])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return threads, cpu


def _redis_counts(admin: object) -> dict[str, int]:
    clients = admin.client_list()  # type: ignore[attr-defined]
    named = [c for c in clients if c.get("name", "").startswith("tmde-api")]
    return {
        "relay": sum(c["name"] == "tmde-api-relay" for c in named),
        "pool": sum(c["name"] == "tmde-api" for c in named),
        "total_minus_bench": len(clients) - BENCH_OWN_CONNECTIONS,
    }


BENCH_OWN_CONNECTIONS = 2  # this script's admin client and its publisher


def _make_run(database_url: str) -> str:
    from shared.db import Database
    from shared.models import FineTuneRun
    from shared.runs import new_run_id

    db = Database(database_url)
    run_id = new_run_id()
    with db.session() as session:
        session.add(
            FineTuneRun(
                id=run_id, status="running", triggered_by="api", base_model="b", config="{}"
            )
        )
    db.dispose()
    return run_id


def _start_api(server: str, port: int, env: dict, threads: int, log: Path) -> subprocess.Popen:
    if server == "gunicorn":
        cmd = [str(Path(sys.executable).with_name("gunicorn")), "-w", "1", "-k", "gthread"]
        cmd += ["--threads", str(threads), "-b", f"127.0.0.1:{port}", "app:create_app()"]
    else:
        cmd = [sys.executable, "-m", "shared.cli", "api", "--port", str(port)]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def _wait_http(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("the API exited; see its log")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2).read()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the API did not answer")


def _relay_stats(port: int) -> dict:
    """The API's relay counters (GET /api/finetune/feeds): fan-out time, clients, drops."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/finetune/feeds", timeout=5) as r:
        return json.loads(r.read())


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def bench_one(args: argparse.Namespace, ctx: dict, count: int) -> dict:
    from shared.events import Emitter, RedisPublisher

    run_id = _make_run(ctx["database_url"])
    admin, api = ctx["admin"], ctx["api"]
    before = _redis_counts(admin)
    clients = subprocess.Popen(
        [sys.executable, __file__, "--role", "clients", "--port", str(ctx["port"])]
        + ["--run-id", run_id, "--count", str(count), "--timeout", str(args.seconds + 60)],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert clients.stdout is not None
    ready_line = clients.stdout.readline().split()
    if len(ready_line) < 2 or int(ready_line[1]) != count:
        clients.kill()
        raise SystemExit(f"only {ready_line} of {count} clients connected")
    time.sleep(0.5)
    emitter = Emitter(run_id, [RedisPublisher(ctx["publisher"])])
    threads_before, cpu_before = _proc_stats(api.pid)
    published: dict[int, float] = {}
    total = int(args.rate * args.seconds)
    during: dict[str, int] = {}
    threads_during = threads_before
    start = time.monotonic()
    for i in range(total):
        delay = start + i / args.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        sent_at = time.time()
        event = emitter.emit("progress", step=i + 1, total_steps=total, loss=1.0)
        published[event.seq] = sent_at  # type: ignore[index]
        if i == total // 2:
            during = _redis_counts(admin)
            threads_during, _ = _proc_stats(api.pid)
    sent_at = time.time()
    published[emitter.emit("complete").seq] = sent_at  # type: ignore[index]
    publish_seconds = time.monotonic() - start
    out, _ = clients.communicate(timeout=args.seconds + 90)
    _, cpu_after = _proc_stats(api.pid)
    relay = _relay_stats(ctx["port"])
    result = json.loads(out.strip().splitlines()[-1])
    latencies, delivered, duplicates = [], 0, 0
    for record in result["records"]:
        seqs = [seq for seq, _ in record]
        duplicates += len(seqs) - len(set(seqs))
        for seq, received in record:
            if seq in published:
                latencies.append((received - published[seq]) * 1000)
                delivered += 1
    expected = count * len(published)
    fanout = relay["fanoutSeconds"] - ctx.get("fanout_before", 0.0)
    ctx["fanout_before"] = relay["fanoutSeconds"]
    return {
        "clients": count,
        "events": len(published),
        "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "p99_ms": round(_percentile(latencies, 0.99), 1) if latencies else None,
        "max_ms": round(max(latencies), 1) if latencies else None,
        "lost": expected - delivered + duplicates,
        "duplicates": duplicates,
        "redis_before": before,
        "redis_during": during,
        "api_threads": threads_during,
        "api_threads_idle": threads_before,
        "api_cpu_s": round(cpu_after - cpu_before, 2),
        "relay_fanout_ms_per_event": round(fanout * 1000 / len(published), 2),
        "relay_fanout_max_ms": relay["fanoutMaxMs"],
        "publish_s": round(publish_seconds, 1),
        "client_errors": result["errors"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", default="10,100,500")
    parser.add_argument("--rate", type=float, default=20.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=10.0, help="publishing time per N")
    parser.add_argument("--server", choices=["werkzeug", "gunicorn"], default="werkzeug")
    parser.add_argument("--role", default="bench", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--run-id", help=argparse.SUPPRESS)
    parser.add_argument("--count", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--timeout", type=float, default=120, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _raise_fd_limit()
    if args.role == "clients":
        asyncio.run(_clients_main(args.port, args.run_id, args.count, args.timeout))
        return 0

    import redis

    from shared import migrate
    from worker.demo import free_port, start_embedded_redis, stop

    counts = [int(n) for n in args.clients.split(",")]
    with tempfile.TemporaryDirectory(prefix="fanout-") as tmp:
        folder = Path(tmp)
        redis_process, redis_url = start_embedded_redis(folder)
        api = None
        try:
            database_url = f"sqlite:///{folder / 'runs.db'}"
            migrate.upgrade(database_url)
            port = free_port()
            env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": redis_url}
            env["TRACES_DB_PATH"] = str(folder / "traces.db")
            api = _start_api(args.server, port, env, max(counts) + 64, folder / "api.log")
            _wait_http(port, api)
            ctx = {
                "database_url": database_url,
                "port": port,
                "api": api,
                "admin": redis.Redis.from_url(redis_url),
                "publisher": redis.Redis.from_url(redis_url),
            }
            ctx["publisher"].ping()
            print(f"API: {args.server}, one process (pid {api.pid}); Redis {redis_url}")
            print(f"{args.rate:g} events/s for {args.seconds:g} s per N; latency = publish -> read")
            rows = []
            for count in counts:
                row = bench_one(args, ctx, count)
                rows.append(row)
                print(json.dumps(row), flush=True)
            print()
            conns_title = "redis conns (relay+pool) idle -> N watching"
            print(
                f"{'N':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'lost':>5} "
                f"{conns_title:>44} {'threads':>8} {'cpu s':>6} {'fanout ms/event':>16}"
            )
            for r in rows:
                b, d = r["redis_before"], r["redis_during"]
                conns = (
                    f"{b['relay']}+{b['pool']} (all {b['total_minus_bench']}) -> "
                    f"{d['relay']}+{d['pool']} (all {d['total_minus_bench']})"
                )
                print(
                    f"{r['clients']:>5} {r['p50_ms']:>8} {r['p99_ms']:>8} {r['max_ms']:>8} "
                    f"{r['lost']:>5} {conns:>44} {r['api_threads']:>8} {r['api_cpu_s']:>6} "
                    f"{r['relay_fanout_ms_per_event']:>16}"
                )
        finally:
            if api is not None:
                api.terminate()
                try:
                    api.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    api.kill()
            stop(redis_process)
    return 0


if __name__ == "__main__":
    sys.exit(main())
