"""`tmde-finetune adapters ...`: the registry from a shell (the same operations as the API).

    tmde-finetune adapters list                      id, created, val loss, tags, active mark
    tmde-finetune adapters show ID [--json]          summary: lineage, gate, samples side by side
    tmde-finetune adapters show active               active.json (JSON)
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
    """`show active`: active.json. `show ID`: a summary (identity, lineage, the gate, the
    samples side by side); `show ID --json`: the manifest with its samples and lineage."""
    if args.id == "active":
        return _print(registry.state())
    adapter = registry.get(args.id)
    details = {"samples": registry.samples(args.id), "lineage": registry.lineage(args.id)}
    if args.json:
        return _print({**adapter, **details})
    print("\n".join(_summary(adapter, **details)))


def _num(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return str(value) if isinstance(value, int) else f"{value:.{digits}f}"


def _delta(improvement: Any, ci: Any, confidence: Any = None) -> str:
    """`delta loss 1.2040 [1.0500, 1.3400] at 95%`, or what there is of it."""
    has_ci = isinstance(ci, list) and len(ci) == 2 and all(_num(v) != "-" for v in ci)
    if _num(improvement) == "-" and not has_ci:
        return ""
    text = f"delta loss {_num(improvement)}"
    if has_ci:
        text += f" [{_num(ci[0])}, {_num(ci[1])}]"
        if _num(confidence) != "-":
            text += f" at {confidence:.0%}"
    return text


def _figures(name: str, c: dict[str, Any]) -> str:
    """One criterion's numbers (docs: the gate's shapes), in the order a reader compares them."""
    if name == "loss":
        parts = [
            _delta(c.get("improvement"), c.get("improvementCi")).replace("delta loss", "delta")
        ]
        parts.append(f"min delta {c['minDelta']}" if "minDelta" in c else "")
    elif name == "generation":
        parts = [
            f"{c.get('metric') or 'score'} {_num(c.get('reference'), 2)} -> "
            f"{_num(c.get('candidate'), 2)}"
            if "candidate" in c
            else "",
            f"drop {_num(c.get('drop'), 2)} (max {c.get('maxDrop', '-')})" if "drop" in c else "",
            f"{c['examples']} examples" if "examples" in c else "",
        ]
    elif name == "preference":
        parts = [
            f"accuracy {_num(c.get('reference'), 2)} -> {_num(c.get('candidate'), 2)}"
            if "candidate" in c
            else "",
            f"{c['pairs']} pairs" if "pairs" in c else "",
        ]
    elif name == "drift":
        parts = [
            f"drift {_num(c.get('drift'))} (max {c.get('maxDrift', '-')})" if "drift" in c else "",
            f"probe loss {_num(c.get('baseLoss'))} -> {_num(c.get('candidateLoss'))}"
            if "candidateLoss" in c
            else "",
            f"{c['prompts']} prompts" if "prompts" in c else "",
        ]
    else:
        parts = [
            f"{key} {value}"
            for key, value in c.items()
            if key not in ("verdict", "why") and not isinstance(value, dict | list)
        ]
    return " | ".join(part for part in parts if part)


def gate_lines(promotion: dict[str, Any]) -> list[str]:
    """The gate's record; an old one (no interval, no criteria) shows the fields it has."""
    p = promotion
    decided = f" (decided by {p['decidedBy']})" if p.get("decidedBy") else ""
    lines = [
        f"gate         {p.get('decision', '-')}{decided}",
        f"  reason      {p.get('reason', '')}",
    ]
    delta = _delta(p.get("improvement"), p.get("improvementCi"), p.get("confidence"))
    if delta:
        resamples = f" ({p['resamples']} resamples)" if "resamples" in p else ""
        lines.append(f"  improvement {delta}{resamples}")
    if "candidateValLoss" in p or "reference" in p:
        lines.append(
            f"  against     {p.get('reference', '-')}: val loss "
            f"{_num(p.get('referenceValLoss'))} -> {_num(p.get('candidateValLoss'))}"
        )
    if "examples" in p or "examplesLeftOut" in p:
        left_out = p.get("examplesLeftOut", "-")
        lines.append(f"  examples    {p.get('examples', '-')} scored, {left_out} left out")
    criteria = p.get("criteria") if isinstance(p.get("criteria"), dict) else {}
    order = ["loss", "generation", "preference", "drift"]
    names = [n for n in order if n in criteria] + [n for n in criteria if n not in order]
    for name in (n for n in names if isinstance(criteria[n], dict)):
        c = criteria[name]
        figures, why = _figures(name, c), c.get("why") or ""
        verdict = f"  {name:<12}{c.get('verdict', 'not measured'):<14}"
        lines.append(f"{verdict}{figures or why}".rstrip())
        if figures and why:
            lines.append(f"  {'':<26}{why}")
    drift = criteria.get("drift") if isinstance(criteria.get("drift"), dict) else None
    if drift and "drift" in drift:
        lines.append(
            f"  forgetting  drift {_num(drift['drift'])} nats/token from the base model "
            f"(max {drift.get('maxDrift', '-')}) on {drift.get('prompts', '-')} general prompts"
        )
    return lines


def _score(score: Any) -> str:
    if not isinstance(score, dict):
        return ""
    if isinstance(score.get("exactMatch"), bool):
        return " [exact match]" if score["exactMatch"] else " [no exact match]"
    return f" [ROUGE-L {_num(score['rougeL'], 2)}]" if "rougeL" in score else ""


def _text(label: str, text: Any, score: Any = None) -> list[str]:
    """`label  text [score]`, a multi-line text indented under its first line."""
    body = ("" if text is None else str(text)).splitlines() or [""]
    body[-1] += _score(score)
    return [f"    {label:<11}{body[0]}", *(f"    {'':<11}{line}" for line in body[1:])]


def _summary(
    adapter: dict[str, Any], samples: list[dict[str, Any]], lineage: list[dict[str, Any]]
) -> list[str]:
    lines = [
        f"adapter      {adapter['id']}",
        f"base model   {adapter.get('baseModel', '-')}",
        f"created      {adapter.get('createdAt', '-')}",
        f"active       {'yes' if adapter.get('isActive') else 'no'}",
    ]
    if lineage:
        names = [f"{e['id']} (deleted)" if e.get("missing") else e["id"] for e in lineage]
        lines.append(f"continues    {' <- '.join(names)}")
    if adapter.get("tags"):
        lines.append(f"tags         {', '.join(adapter['tags'])}")
    promotion = adapter.get("promotion")
    lines += gate_lines(promotion) if isinstance(promotion, dict) else ["gate         -"]
    lines.append(f"samples      {len(samples)}")
    for i, row in enumerate(samples, start=1):
        lines += [f"  [{i}]", *_text("question", row.get("instruction"))]
        lines += _text("reference", row.get("reference"))
        lines += _text("base", row.get("base"), row.get("baseScore"))
        lines += _text("adapter", row.get("adapter"), row.get("adapterScore"))
        if row.get("active") is not None:
            lines += _text("active", row.get("active"), row.get("activeScore"))
    return lines


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
    show = actions.add_parser("show", help="one adapter: its gate and samples; or `active`")
    show.add_argument("id")
    show.add_argument("--json", action="store_true", help="the manifest, samples and lineage")
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
