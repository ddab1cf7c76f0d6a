"""Log lines for people (LOG_FORMAT=text) or for a log pipeline (LOG_FORMAT=json).

Every record carries the run it belongs to: `run_context(run_id)` sets it for the code inside
(the pipeline steps do), and a filter copies it onto each record, so a JSON line looks like

    {"ts": "2026-11-29T02:00:01.123Z", "level": "INFO", "logger": "worker.pipeline",
     "message": "...", "run_id": "run_ab12cd", "process": 4711}
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime

_run_id: ContextVar[str | None] = ContextVar("tmde_run_id", default=None)
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(run_id)s]: %(message)s"


@contextlib.contextmanager
def run_context(run_id: str) -> Iterator[None]:
    token = _run_id.set(run_id)
    try:
        yield
    finally:
        _run_id.reset(token)


class RunIdFilter(logging.Filter):
    """Adds `run_id` (or "-") to every record that passes through a handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "run_id", None) is None:
            record.run_id = _run_id.get() or "-"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        line = {
            "ts": stamp.replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "run_id": getattr(record, "run_id", None) or _run_id.get(),
            "process": record.process,
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure(log_format: str, level: int = logging.INFO) -> None:
    """Make every handler of the root logger use `log_format` and carry the run id."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        handler.setFormatter(formatter(log_format))
        if not any(isinstance(f, RunIdFilter) for f in handler.filters):
            handler.addFilter(RunIdFilter())
    root.setLevel(level)
