"""How packages add their commands to `tmde-finetune` (shared/cli.py), and what they share.

shared/ is the lowest layer and never imports app/ or worker/ (tests/shared/test_layering.py),
so the root command cannot name their commands. Each package instead declares a
`register(subparsers)` function in the `tmde_finetune.commands` entry-point group
(pyproject.toml), as TRL's `make_parser(subparsers)` does, and the root loads whichever are
installed: a package without its entry point simply has no commands listed.

Two kinds of command:
- ordinary: `register` adds a subparser with `set_defaults(func=handler)`; the handler takes
  the parsed arguments and returns an ExitCode;
- pass-through (`add_passthrough`): a script with its own parser (the seed's export and train).
  The root hands it every argument after the command's name: argparse never sees them, so
  `tmde-finetune train --help` prints the script's own help.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points

from shared.names import ExitCode, exit_status
from shared.settings import Settings, SettingsError

GROUP = "tmde_finetune.commands"
HANDOVER = "handover"  # the subparser default that holds a pass-through command's script

Subparsers = argparse._SubParsersAction  # what ArgumentParser.add_subparsers() returns
Handler = Callable[[argparse.Namespace], ExitCode]
ScriptMain = Callable[[list[str]], int | None]
Register = Callable[[Subparsers], None]


def settings_or_exit() -> Settings:
    """The settings, or `ERROR: ...` naming the bad variable and exit 1 (every command)."""
    try:
        return Settings.from_env()
    except SettingsError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        raise SystemExit(ExitCode.GENERAL_ERROR) from exc


def add_passthrough(sub: Subparsers, name: str, main: ScriptMain, *, help: str) -> None:
    """List `name` in --help and hand its arguments, untouched, to `main(argv)`."""
    # add_help=False: `NAME --help` is the script's own, not an empty argparse page
    sub.add_parser(name, add_help=False, help=help).set_defaults(**{HANDOVER: main})


def handover(sub: Subparsers, argv: list[str]) -> ExitCode | None:
    """Run argv's pass-through command on the rest of argv; None when it names no such command."""
    command = sub.choices.get(argv[0]) if argv else None
    main: ScriptMain | None = command.get_default(HANDOVER) if command else None
    return None if main is None else exit_status(main(argv[1:]))


def register_installed(sub: Subparsers) -> None:
    """Let every installed package add its commands, in the order of the entry points' names."""
    for point in sorted(entry_points(group=GROUP), key=lambda point: point.name):
        register = _load(point)
        if register is not None:
            register(sub)


def _load(point: EntryPoint) -> Register | None:
    try:
        return point.load()
    except ModuleNotFoundError as exc:
        # Only the package itself being absent (an image without it) hides its commands; a
        # dependency missing inside it is a real error and must not look like "no command".
        if exc.name and (point.module == exc.name or point.module.startswith(exc.name + ".")):
            return None
        raise
