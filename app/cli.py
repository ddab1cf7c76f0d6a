"""`tmde-finetune api`: the API package's command.

Registered through the `tmde_finetune.commands` entry point (pyproject.toml) so that the root
command in shared/ never imports app/ (shared/commands.py).
"""

from __future__ import annotations

import argparse

from app import create_app
from shared.commands import Subparsers, settings_or_exit
from shared.logs import configure
from shared.names import ExitCode


def cmd_api(args: argparse.Namespace) -> ExitCode:
    settings = settings_or_exit()
    configure(settings.log_format)
    create_app(settings).run(
        host=args.host or settings.api_host, port=args.port or settings.api_port, threaded=True
    )
    return ExitCode.SUCCESS


def register(sub: Subparsers) -> None:
    api = sub.add_parser("api", help="serve the HTTP API (development server, threaded)")
    api.add_argument("--host")
    api.add_argument("--port", type=int)
    api.set_defaults(func=cmd_api)
