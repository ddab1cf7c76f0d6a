"""`tmde-finetune traces import FILE.jsonl`: bring debate traces from elsewhere.

One JSON object per line:

    {"id": "t1", "query": "...", "final_answer": "...", "quality_score": 8.5,
     "templates_used": ["socratic"], "context": "...", "created_at": "2026-02-20T02:00:00Z",
     "rounds": [{"role": "proposer", "model": "qwen3:32b", "content": "...",
                 "verdict": "rejected"}, ...]}

`templates_used`, `context` and `created_at` are optional, and so are a round's `model` and
`verdict`: "accepted" or "rejected" when the debate judged that round, null or absent when it
did not (the exporter's preference pairs take the rejected rounds). Any other verdict makes the
line bad. Policy: good lines are kept and each bad line is reported with its number and reason
(`--strict` refuses the whole file instead).
Every trace is written with its rounds in one transaction, so no row is ever half-written.
Importing is idempotent on `id`: a line whose id is already stored replaces that trace.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from shared.traces import VERDICTS, Round, Trace, TraceStore

REQUIRED = ("id", "query", "final_answer", "quality_score", "rounds")
KNOWN = {*REQUIRED, "templates_used", "context", "created_at"}


class TraceLineError(ValueError):
    pass


@dataclass
class ImportReport:
    imported: int = 0
    replaced: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    written: bool = True

    def summary(self) -> str:
        lines = [f"{self.imported} new, {self.replaced} replaced, {len(self.errors)} rejected"]
        lines += [f"  line {number}: {reason}" for number, reason in self.errors]
        if not self.written:
            lines.append("  --strict: nothing was written; fix the lines above and import again")
        return "\n".join(lines)


def _text(obj: dict[str, Any], key: str) -> str:
    value = obj[key]
    if not isinstance(value, str) or not value.strip():
        raise TraceLineError(f"'{key}' must be a non-empty string")
    return value


def _created_at(value: Any) -> str:
    if value is None:
        return datetime.now(UTC).isoformat()
    if not isinstance(value, str):
        raise TraceLineError("'created_at' must be an ISO 8601 string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise TraceLineError(f"'created_at' is not ISO 8601: {value!r}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC).isoformat()


def _verdict(item: dict[str, Any], index: int) -> str | None:
    verdict = item.get("verdict")
    if verdict is not None and verdict not in VERDICTS:
        # shown as JSON, as it is written in the file (true, not True; "x" with its quotes)
        allowed = " or ".join(f'"{v}"' for v in VERDICTS)
        raise TraceLineError(
            f"rounds[{index}].verdict {json.dumps(verdict)} must be {allowed} (or null)"
        )
    return verdict


def _rounds(value: Any) -> list[Round]:
    if not isinstance(value, list):
        raise TraceLineError("'rounds' must be a list of {role, content, model?, verdict?} objects")
    rounds = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise TraceLineError(f"rounds[{index}] must be an object")
        for key in ("role", "content"):
            if not isinstance(item.get(key), str):
                raise TraceLineError(f"rounds[{index}].{key} must be a string")
        model = item.get("model")
        if model is not None and not isinstance(model, str):
            raise TraceLineError(f"rounds[{index}].model must be a string")
        rounds.append(Round(item["role"], item["content"], model, _verdict(item, index)))
    return rounds


def parse_trace(line: str) -> Trace:
    """Parse and validate one JSONL line; raise TraceLineError naming what is wrong."""
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise TraceLineError(f"invalid JSON ({exc.msg} at column {exc.colno})") from exc
    if not isinstance(obj, dict):
        raise TraceLineError("each line must be a JSON object")
    missing = [key for key in REQUIRED if key not in obj]
    if missing:
        raise TraceLineError(f"missing field(s): {', '.join(missing)}")
    unknown = sorted(set(obj) - KNOWN)
    if unknown:
        raise TraceLineError(f"unknown field(s): {', '.join(unknown)}")
    score = obj["quality_score"]
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise TraceLineError("'quality_score' must be a number")
    if not 0 <= score <= 10:
        raise TraceLineError(f"'quality_score' {score} is out of range 0-10")
    templates = obj.get("templates_used") or []
    if not isinstance(templates, list) or not all(isinstance(t, str) for t in templates):
        raise TraceLineError("'templates_used' must be a list of strings")
    context = obj.get("context")
    if context is not None and not isinstance(context, str):
        raise TraceLineError("'context' must be a string")
    return Trace(
        id=_text(obj, "id"),
        query=_text(obj, "query"),
        final_answer=_text(obj, "final_answer"),
        quality_score=float(score),
        templates_used=templates,
        context=context,
        created_at=_created_at(obj.get("created_at")),
        rounds=_rounds(obj["rounds"]),
    )


def import_file(store: TraceStore, path: Path, *, strict: bool = False) -> ImportReport:
    report = ImportReport()
    good: list[Trace] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                good.append(parse_trace(line))
            except TraceLineError as exc:
                report.errors.append((number, str(exc)))
    if strict and report.errors:
        report.written = False
        return report
    with store.connect(create=True) as db:
        for trace in good:
            with db:  # one transaction per trace: its row and its rounds, or nothing
                if store.upsert(db, trace):
                    report.imported += 1
                else:
                    report.replaced += 1
    return report
