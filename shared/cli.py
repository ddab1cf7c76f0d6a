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

This module holds only the commands that need nothing above shared/. app/cli.py (api) and
worker/cli.py (worker, beat, flower, adapters, demo, export, train) add theirs through the
`tmde_finetune.commands` entry points (shared/commands.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from shared.commands import Subparsers, handover, register_installed, settings_or_exit
from shared.names import ExitCode, exit_status

if TYPE_CHECKING:
    from shared.runs import FineTuneManager


def cmd_db(args: argparse.Namespace) -> ExitCode:
    from shared import migrate

    url = settings_or_exit().database_url
    if args.action == "upgrade":
        migrate.upgrade(url, args.revision or "head")
    elif args.action == "downgrade":
        migrate.downgrade(url, args.revision or "base")
    print(f"database at revision {migrate.current_revision(url)} (head {migrate.head_revision()})")
    return ExitCode.SUCCESS


def cmd_seed_demo(args: argparse.Namespace) -> ExitCode:
    from shared.demo_traces import generate
    from shared.traces import TraceStore

    store = TraceStore(args.db or settings_or_exit().traces_db_path)
    new = store.add_many(generate(args.count, seed=args.seed))
    stats = store.get_stats(settings_or_exit().min_quality)
    print(f"{store.path}: {new} new traces; {json.dumps(stats.to_dict())}")
    return ExitCode.SUCCESS


def cmd_traces(args: argparse.Namespace) -> ExitCode:
    from shared.trace_import import import_file
    from shared.traces import TraceStore

    settings = settings_or_exit()
    store = TraceStore(args.db or settings.traces_db_path)
    if args.action == "stats":
        print(json.dumps(store.get_stats(settings.min_quality).to_dict(), indent=2))
        return ExitCode.SUCCESS
    if not args.file or not Path(args.file).is_file():
        print(
            f"ERROR: {args.file!r} is not a file; usage: traces import FILE.jsonl", file=sys.stderr
        )
        return ExitCode.GENERAL_ERROR
    report = import_file(store, Path(args.file), strict=args.strict)
    print(report.summary())
    return ExitCode.GENERAL_ERROR if report.errors else ExitCode.SUCCESS


def _manager() -> FineTuneManager:
    import redis

    from shared.db import Database
    from shared.queue import make_celery
    from shared.runs import FineTuneManager
    from shared.traces import TraceStore

    s = settings_or_exit()
    return FineTuneManager(
        s,
        Database(s.database_url),
        TraceStore(s.traces_db_path),
        make_celery(s),
        redis.Redis.from_url(s.redis_url),
    )


def cmd_start(args: argparse.Namespace) -> ExitCode:
    from shared.errors import InsufficientDataError
    from shared.run_config import ConfigError
    from shared.runs import RunConflictError

    try:
        run = _manager().start(json.loads(args.config) if args.config else {}, "manual")
    except (ConfigError, RunConflictError, InsufficientDataError, json.JSONDecodeError) as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return exc.exit_code if isinstance(exc, InsufficientDataError) else ExitCode.GENERAL_ERROR
    print(json.dumps({"runId": run.id, "status": run.status}), flush=True)
    if args.follow:
        from shared.follow import follow

        return follow(_api_url(args), run.id, timeout=args.timeout)
    return ExitCode.SUCCESS


def _api_url(args: argparse.Namespace) -> str:
    if args.api_url:
        return args.api_url
    settings = settings_or_exit()
    return f"http://{settings.api_host}:{settings.api_port}"


def cmd_follow(args: argparse.Namespace) -> ExitCode:
    """Follow through the API's SSE feed; the exit code is the run's outcome (seed §5.3)."""
    from shared.follow import follow

    return follow(_api_url(args), args.run_id, timeout=args.timeout)


def cmd_status(args: argparse.Namespace) -> ExitCode:
    from shared.runs import RunNotFoundError, run_to_dict

    manager = _manager()
    if args.run_id is None:
        runs, _ = manager.list(limit=50)
        for run in runs:
            print(f"{run.id}  {run.status:<10} {run.base_model:<16} {run.started_at}")
        return ExitCode.SUCCESS
    try:
        print(json.dumps(run_to_dict(manager.get(args.run_id)), indent=2))
    except RunNotFoundError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return ExitCode.GENERAL_ERROR
    return ExitCode.SUCCESS


def _follow_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api-url",
        dest="api_url",
        help="the API to follow through (default http://API_HOST:API_PORT)",
    )
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds of silence before reconnecting"
    )


def _add_data_commands(sub: Subparsers) -> None:
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


def _add_run_commands(sub: Subparsers) -> None:
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

    status = sub.add_parser("status", help="show one run, or list recent runs")
    status.add_argument("run_id", nargs="?")
    status.set_defaults(func=cmd_status)
    sub.add_parser("list", help="list recent runs").set_defaults(func=cmd_status, run_id=None)


def _own_commands() -> tuple[argparse.ArgumentParser, Subparsers]:
    parser = argparse.ArgumentParser(prog="tmde-finetune", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_data_commands(sub)
    _add_run_commands(sub)
    return parser, sub


def build_parser() -> argparse.ArgumentParser:
    """Every command: this module's and those of the installed packages."""
    parser, sub = _own_commands()
    register_installed(sub)
    return parser


def main(argv: list[str] | None = None) -> ExitCode:
    argv = sys.argv[1:] if argv is None else argv
    parser, sub = _own_commands()
    # A command of this module needs no other package: `follow` and `status` do not pay for
    # importing Flask, and keep working where another package's commands fail to import.
    if not (argv and argv[0] in sub.choices):
        register_installed(sub)
    handed = handover(sub, argv)
    if handed is not None:
        return handed
    args = parser.parse_args(argv)
    return exit_status(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
