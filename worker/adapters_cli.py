"""`tmde-finetune adapters ...`: the registry from a shell (the same operations as the API).

    tmde-finetune adapters list                      id, created, val loss, tags, active mark
    tmde-finetune adapters show ID | active          the manifest (JSON)
    tmde-finetune adapters activate ID [--reason R]   then, with OLLAMA_EXPORT=true, its GGUF
    tmde-finetune adapters rollback [--reason R]
    tmde-finetune adapters tag ID [TAG ...]          replace the tags (none: clear them)
    tmde-finetune adapters delete ID                 refused for the active adapter
    tmde-finetune adapters verify ID                 recompute the sha256
    tmde-finetune adapters prune [--keep N]          retention (default LORA_KEEP)
    tmde-finetune adapters export-gguf ID            GGUF LoRA + Ollama Modelfile, in this process

Errors print `ERROR: ...` and exit with their code's exit code (shared/names.py EXIT_CODES):
1, or 4 when the adapter does not exist. In worker/ because export-gguf needs worker.delivery.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from shared.commands import Subparsers, settings_or_exit
from shared.errors import PipelineError
from shared.names import ErrorCode, ExitCode, exit_code_for
from shared.registry import AdapterError, AdapterRegistry
from shared.settings import Settings

Handler = Callable[[AdapterRegistry, argparse.Namespace], Any]


def _print(data: Any) -> None:
    print(json.dumps(data, indent=2))


def _table(registry: AdapterRegistry, _: argparse.Namespace) -> None:
    rows = registry.list()
    if not rows:
        print(f"no adapters in {registry.root}")
    for row in rows:
        loss = (row.get("metrics") or {}).get("adapterValLoss")
        decision = (row.get("promotion") or {}).get("decision", "")
        print(
            f"{'*' if row['isActive'] else ' '} {row['id']:<24} {row.get('createdAt', ''):<21} "
            f"val_loss={loss if loss is not None else '-':<9} {decision:<9} "
            f"tags={','.join(row.get('tags') or [])}"
        )


def _show(registry: AdapterRegistry, args: argparse.Namespace) -> None:
    _print(registry.state() if args.id == "active" else registry.get(args.id))


def _export_gguf(registry: AdapterRegistry, args: argparse.Namespace) -> None:
    _print(_export(args.settings, args.id))


def _export(settings: Settings, adapter_id: str) -> dict[str, Any]:
    from worker.delivery import export_gguf  # torch and gguf: only when exporting

    try:
        return export_gguf(settings, adapter_id)
    except (PipelineError, ValueError, OSError) as exc:  # a missing base model, a bad adapter
        raise ExportFailedError(f"GGUF export of {adapter_id} failed: {exc}") from exc


def _changed(args: argparse.Namespace, state: dict[str, Any]) -> None:
    """Print the new state; with OLLAMA_EXPORT=true, export the now active adapter first (the
    API queues the same export on the delivery queue; the CLI does it in this process)."""
    active = state.get("adapterId")
    if not (args.settings.ollama_export and active):
        return _print(state)
    try:
        _print({**state, "export": _export(args.settings, active)})
    except ExportFailedError as exc:
        _print(state)  # the activation stands
        raise ExportFailedError(
            f"{active} is active, but {exc.message}; "
            f"retry with `tmde-finetune adapters export-gguf {active}`"
        ) from exc


class ExportFailedError(AdapterError):
    code = ErrorCode.EXPORT_FAILED


HANDLERS: dict[str, Handler] = {
    "list": _table,
    "show": _show,
    "activate": lambda r, a: _changed(a, r.activate(a.id, reason=a.reason)),
    "rollback": lambda r, a: _changed(a, r.rollback(reason=a.reason)),
    "tag": lambda r, a: _print(r.set_tags(a.id, a.tags)),
    "delete": lambda r, a: print(f"deleted {a.id}") if r.delete(a.id) is None else None,
    "verify": lambda r, a: print(f"{a.id}: ok (sha256 {r.verify(a.id)['sha256']})"),
    "prune": lambda r, a: _print({"deleted": r.prune(a.keep or a.settings.lora_keep)}),
    "export-gguf": _export_gguf,
}


def add_parser(sub: Subparsers) -> None:
    adapters = sub.add_parser("adapters", help="the adapter registry: list, activate, roll back")
    actions = adapters.add_subparsers(dest="action", required=True)
    actions.add_parser("list", help="published adapters, newest first (* = active)")
    actions.add_parser("show", help="one manifest, or `active`").add_argument("id")
    for name in ("activate", "rollback"):
        action = actions.add_parser(name, help=f"{name} (verifies the sha256 first)")
        if name == "activate":
            action.add_argument("id")
        action.add_argument("--reason", default="", help="recorded in active.json's history")
    tag = actions.add_parser("tag", help="replace an adapter's tags")
    tag.add_argument("id")
    tag.add_argument("tags", nargs="*")
    for name in ("delete", "verify", "export-gguf"):
        actions.add_parser(name).add_argument("id")
    actions.add_parser("prune", help="apply retention").add_argument("--keep", type=int)
    adapters.set_defaults(func=command)


def command(args: argparse.Namespace) -> ExitCode:
    return run(settings_or_exit(), args)


def run(settings: Settings, args: argparse.Namespace) -> ExitCode:
    args.settings = settings
    try:
        HANDLERS[args.action](AdapterRegistry(settings.lora_output_dir), args)
    except AdapterError as exc:
        print(f"ERROR: {exc.message}", file=sys.stderr)
        return exit_code_for(exc.code)
    return ExitCode.SUCCESS
