"""The worker package's `tmde-finetune` commands: worker, beat, flower, adapters, demo, and the
seed's scripts export and train, which parse their own arguments (pass-through commands).

Registered through the `tmde_finetune.commands` entry point (pyproject.toml), so that the root
command in shared/ never imports worker/ (shared/commands.py). Celery, torch and the training
stack are imported by the command that runs, never here: listing the commands imports this.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from shared.commands import Subparsers, add_passthrough
from shared.names import QUEUE_TRAIN, QUEUES, ExitCode, exit_status
from worker import adapters_cli, demo


def cmd_worker(args: argparse.Namespace) -> ExitCode:
    from worker.celery_app import app

    argv = ["worker", "-Q", args.queues, "-c", str(args.concurrency), "--pool", args.pool]
    argv += ["--loglevel", args.loglevel, "-n", args.name]
    if QUEUE_TRAIN in args.queues.split(","):
        argv += ["--max-tasks-per-child", "1"]  # each training run gets a fresh process
    app.worker_main(argv)
    return ExitCode.SUCCESS


def cmd_beat(args: argparse.Namespace) -> ExitCode:
    """celery-beat: the FINETUNE_SCHEDULE tick and the watchdog (run exactly one per deployment;
    a second one is harmless: each tick claims its minute in Redis)."""
    from worker.celery_app import app

    schedule_file = Path(args.schedule_file)
    schedule_file.parent.mkdir(parents=True, exist_ok=True)
    app.start(["beat", "--loglevel", args.loglevel, "--schedule", str(schedule_file)])
    return ExitCode.SUCCESS


def cmd_flower(args: argparse.Namespace) -> ExitCode:
    """`celery -A worker.celery_app flower` with this project's settings (broker = REDIS_URL)."""
    from worker.celery_app import app

    argv = ["flower", f"--port={args.port}", f"--address={args.address}"]
    if args.url_prefix:
        argv.append(f"--url_prefix={args.url_prefix}")
    if args.basic_auth:
        argv.append(f"--basic_auth={args.basic_auth}")
    return exit_status(app.start(argv))


def export_main(argv: list[str]) -> int | None:
    from worker.export import main

    return main(argv)


def train_main(argv: list[str]) -> int | None:
    from worker.training.cli import main

    return main(argv)


def _add_worker(sub: Subparsers) -> None:
    worker = sub.add_parser("worker", help="run a Celery worker")
    worker.add_argument("--queues", default=",".join(QUEUES))
    worker.add_argument("--concurrency", type=int, default=1)
    worker.add_argument("--pool", default="prefork", choices=["prefork", "solo", "threads"])
    worker.add_argument("--loglevel", default="INFO")
    worker.add_argument("--name", default="tmde@%h")
    worker.set_defaults(func=cmd_worker)


def _add_beat(sub: Subparsers) -> None:
    beat = sub.add_parser("beat", help="run celery-beat: scheduled retraining and the watchdog")
    beat.add_argument("--loglevel", default="INFO")
    beat.add_argument("--schedule-file", default="data/celerybeat-schedule")
    beat.set_defaults(func=cmd_beat)


def _add_flower(sub: Subparsers) -> None:
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


def register(sub: Subparsers) -> None:
    _add_worker(sub)
    _add_beat(sub)
    _add_flower(sub)
    adapters_cli.add_parser(sub)
    demo.add_parser(sub)
    for name, main in (("export", export_main), ("train", train_main)):
        see = f"see `tmde-finetune {name} --help`"
        add_passthrough(sub, name, main, help=f"the seed's {name} script (its own flags); {see}")
