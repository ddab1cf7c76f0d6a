"""`tmde-finetune`: one command for every part of the service.

    tmde-finetune db upgrade                 apply migrations (DATABASE_URL)
    tmde-finetune seed-demo                  write a synthetic debate-trace database
    tmde-finetune traces import FILE.jsonl   import traces; `traces stats` counts them
    tmde-finetune api [--host H] [--port P]  serve the API
    tmde-finetune worker [--queues export,train,delivery]
    tmde-finetune beat                       scheduled retraining + the watchdog (celery-beat)
    tmde-finetune start [--config JSON] [--follow]   start a run (as POST /api/finetune)
    tmde-finetune follow RUN_ID              progress bar until the run ends; exits with its code
    tmde-finetune status RUN_ID | list
    tmde-finetune flower [--port P]          Celery's Flower dashboard for the workers
    tmde-finetune adapters list|show|activate|rollback|tag|delete|verify|prune|export-gguf
    tmde-finetune export ... | train ...     the seed's scripts (§2.4, §2.5)
    tmde-finetune demo                       the whole pipeline end to end on the embedded model

The app and worker packages are imported only by the commands that need them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from shared import adapters_cli
from shared.names import QUEUES
from shared.settings import Settings, SettingsError

# Commands with their own argument parsers (the seed's scripts, the demo).
PASSTHROUGH = {"export": "worker.export", "train": "worker.training.cli", "demo": "shared.demo"}


def _settings() -> Settings:
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        raise SystemExit(1) from exc


def cmd_db(args: argparse.Namespace) -> int:
    from shared import migrate

    url = _settings().database_url
    if args.action == "upgrade":
        migrate.upgrade(url, args.revision or "head")
    elif args.action == "downgrade":
        migrate.downgrade(url, args.revision or "base")
    print(f"database at revision {migrate.current_revision(url)} (head {migrate.head_revision()})")
    return 0


def cmd_seed_demo(args: argparse.Namespace) -> int:
    from shared.demo_traces import generate
    from shared.traces import TraceStore

    store = TraceStore(args.db or _settings().traces_db_path)
    new = store.add_many(generate(args.count, seed=args.seed))
    stats = store.get_stats(_settings().min_quality)
    print(f"{store.path}: {new} new traces; {json.dumps(stats.to_dict())}")
    return 0


def cmd_traces(args: argparse.Namespace) -> int:
    from shared.trace_import import import_file
    from shared.traces import TraceStore

    settings = _settings()
    store = TraceStore(args.db or settings.traces_db_path)
    if args.action == "stats":
        print(json.dumps(store.get_stats(settings.min_quality).to_dict(), indent=2))
        return 0
    if not args.file or not Path(args.file).is_file():
        print(
            f"ERROR: {args.file!r} is not a file; usage: traces import FILE.jsonl", file=sys.stderr
        )
        return 1
    report = import_file(store, Path(args.file), strict=args.strict)
    print(report.summary())
    return 1 if report.errors else 0


def cmd_api(args: argparse.Namespace) -> int:
    from app import create_app
    from shared.logs import configure

    settings = _settings()
    configure(settings.log_format)
    create_app(settings).run(
        host=args.host or settings.api_host, port=args.port or settings.api_port, threaded=True
    )
    return 0


def cmd_beat(args: argparse.Namespace) -> int:
    """celery-beat: the FINETUNE_SCHEDULE tick and the watchdog (run exactly one per deployment;
    a second one is harmless: each tick claims its minute in Redis)."""
    from worker.celery_app import app

    schedule_file = Path(args.schedule_file)
    schedule_file.parent.mkdir(parents=True, exist_ok=True)
    app.start(["beat", "--loglevel", args.loglevel, "--schedule", str(schedule_file)])
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from worker.celery_app import app

    argv = [
        "worker",
        "-Q",
        args.queues,
        "-c",
        str(args.concurrency),
        "--pool",
        args.pool,
        "--loglevel",
        args.loglevel,
        "-n",
        args.name,
    ]
    if "train" in args.queues.split(","):
        argv += ["--max-tasks-per-child", "1"]  # each training run gets a fresh process
    app.worker_main(argv)
    return 0


def _manager():  # type: ignore[no-untyped-def]
    import redis

    from shared.db import Database
    from shared.queue import make_celery
    from shared.runs import FineTuneManager
    from shared.traces import TraceStore

    s = _settings()
    return FineTuneManager(
        s,
        Database(s.database_url),
        TraceStore(s.traces_db_path),
        make_celery(s),
        redis.Redis.from_url(s.redis_url),
    )


def cmd_start(args: argparse.Namespace) -> int:
    from shared.errors import InsufficientDataError
    from shared.run_config import ConfigError
    from shared.runs import RunConflictError

    try:
        run = _manager().start(json.loads(args.config) if args.config else {}, "manual")
    except (ConfigError, RunConflictError, InsufficientDataError, json.JSONDecodeError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, InsufficientDataError) else 1
    print(json.dumps({"runId": run.id, "status": run.status}), flush=True)
    if args.follow:
        from shared.follow import follow

        return follow(_api_url(args), run.id, timeout=args.timeout)
    return 0


def _api_url(args: argparse.Namespace) -> str:
    if args.api_url:
        return args.api_url
    settings = _settings()
    return f"http://{settings.api_host}:{settings.api_port}"


def cmd_follow(args: argparse.Namespace) -> int:
    """Follow through the API's SSE feed; the exit code is the run's outcome (seed §5.3)."""
    from shared.follow import follow

    return follow(_api_url(args), args.run_id, timeout=args.timeout)


def cmd_flower(args: argparse.Namespace) -> int:
    """`celery -A worker.celery_app flower` with this project's settings (broker = REDIS_URL)."""
    from worker.celery_app import app

    argv = ["flower", f"--port={args.port}", f"--address={args.address}"]
    if args.url_prefix:
        argv.append(f"--url_prefix={args.url_prefix}")
    if args.basic_auth:
        argv.append(f"--basic_auth={args.basic_auth}")
    return int(app.start(argv) or 0)


def cmd_status(args: argparse.Namespace) -> int:
    from shared.runs import RunNotFoundError, run_to_dict

    manager = _manager()
    if args.run_id is None:
        runs, _ = manager.list(limit=50)
        for run in runs:
            print(f"{run.id}  {run.status:<10} {run.base_model:<16} {run.started_at}")
        return 0
    try:
        print(json.dumps(run_to_dict(manager.get(args.run_id)), indent=2))
    except RunNotFoundError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_adapters(args: argparse.Namespace) -> int:
    return adapters_cli.run(_settings(), args)


def _follow_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-url",
        dest="api_url",
        help="the API to follow through (default http://API_HOST:API_PORT)",
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds of silence before reconnecting"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tmde-finetune", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    db = sub.add_parser("db", help="database migrations")
    db.add_argument("action", choices=["upgrade", "downgrade", "current"])
    db.add_argument("revision", nargs="?")
    db.set_defaults(func=cmd_db)

    seed = sub.add_parser("seed-demo", help="write a synthetic debate-trace database")
    seed.add_argument("--count", type=int, default=300)
    seed.add_argument("--seed", type=int, default=7)
    seed.add_argument("--db", help="trace database (default TRACES_DB_PATH)")
    seed.set_defaults(func=cmd_seed_demo)

    traces = sub.add_parser("traces", help="import or count debate traces")
    traces.add_argument("action", choices=["import", "stats"])
    traces.add_argument("file", nargs="?")
    traces.add_argument("--strict", action="store_true", help="refuse the file if a line is bad")
    traces.add_argument("--db", help="trace database (default TRACES_DB_PATH)")
    traces.set_defaults(func=cmd_traces)

    api = sub.add_parser("api", help="serve the HTTP API (development server, threaded)")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    api.set_defaults(func=cmd_api)

    worker = sub.add_parser("worker", help="run a Celery worker")
    worker.add_argument("--queues", default=",".join(QUEUES))
    worker.add_argument("--concurrency", type=int, default=1)
    worker.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"])
    worker.add_argument("--loglevel", default="INFO")
    worker.add_argument("--name", default="tmde@%h")
    worker.set_defaults(func=cmd_worker)

    beat = sub.add_parser("beat", help="run celery-beat: scheduled retraining and the watchdog")
    beat.add_argument("--loglevel", default="INFO")
    beat.add_argument("--schedule-file", default="data/celerybeat-schedule")
    beat.set_defaults(func=cmd_beat)

    start = sub.add_parser("start", help="start a run")
    start.add_argument("--config", help="JSON overrides, e.g. '{\"maxSteps\": 20}'")
    start.add_argument("--follow", action="store_true", help="then follow it (as `follow`)")
    _follow_options(start)
    start.set_defaults(func=cmd_start)

    follow = sub.add_parser(
        "follow", help="show a run's progress until it ends; exit with its outcome"
    )
    follow.add_argument("run_id")
    _follow_options(follow)
    follow.set_defaults(func=cmd_follow)

    flower = sub.add_parser("flower", help="Flower: monitor the Celery workers and tasks")
    flower.add_argument("--port", type=int, default=5555)
    flower.add_argument("--address", default="127.0.0.1")
    flower.add_argument("--url-prefix", dest="url_prefix", help="when served behind a proxy")
    flower.add_argument(
        "--basic-auth",
        dest="basic_auth",
        metavar="USER:PASSWORD",
        help="protect the UI and REST API (or FLOWER_BASIC_AUTH; the API refuses "
        "unauthenticated calls unless FLOWER_UNAUTHENTICATED_API=true)",
    )
    flower.set_defaults(func=cmd_flower)

    status = sub.add_parser("status", help="show one run, or list recent runs")
    status.add_argument("run_id", nargs="?")
    status.set_defaults(func=cmd_status)
    sub.add_parser("list", help="list recent runs").set_defaults(func=cmd_status, run_id=None)

    adapters_cli.add_parser(sub, cmd_adapters)

    for name in PASSTHROUGH:  # listed for --help; main() hands their arguments over whole
        sub.add_parser(name, add_help=False, help=f"see `tmde-finetune {name} --help`")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    if argv and argv[0] in PASSTHROUGH:
        import importlib

        return int(importlib.import_module(PASSTHROUGH[argv[0]]).main(argv[1:]) or 0)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
