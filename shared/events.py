"""The one progress-event schema (seed §5.1) and the sinks that carry events.

An event is a flat JSON object with snake_case keys, exactly as the seed's training scripts
print them, plus `run_id`:

    {"type": "progress", "run_id": "run_ab12", "step": 10, "total_steps": 270, "loss": 1.42,
     "eval_loss": null, "learning_rate": 0.0002, "eta_seconds": 1620,
     "timestamp": "2026-02-20T02:01:00Z"}

Producers call an `Emitter`, which hands each event to its sinks: stdout JSON lines (the CLI
form), Redis pub/sub plus a cached latest event (the service), `finetune_progress` rows, and
the run's log file. A failing sink is logged and skipped: losing Redis for a moment must not
kill a training run.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from shared.names import latest_event_key, progress_channel

log = logging.getLogger(__name__)

EVENT_TYPES = (
    "export_complete",
    "training_start",
    "progress",
    "eval",
    "checkpoint",
    "complete",
    "error",
    "cancelled",
    "heartbeat",
)
TERMINAL_EVENT_TYPES = ("complete", "error", "cancelled")
# Keys a progress/eval event always carries, null or not (seed §5.1 shows eval_loss: null).
STEP_KEYS = ("step", "total_steps", "loss", "eval_loss", "learning_rate", "eta_seconds")
LATEST_EVENT_TTL_SECONDS = 7 * 24 * 3600


def utc_timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class ProgressEvent:
    type: str
    run_id: str | None = None
    step: int | None = None
    total_steps: int | None = None
    loss: float | None = None
    eval_loss: float | None = None
    learning_rate: float | None = None
    eta_seconds: int | None = None
    train_count: int | None = None
    val_count: int | None = None
    path: str | None = None
    adapter_path: str | None = None
    metrics: dict[str, Any] | None = None
    status: str | None = None
    message: str | None = None
    code: str | None = None
    suggestion: str | None = None
    timestamp: str = ""

    def __post_init__(self) -> None:
        if self.type not in EVENT_TYPES:
            raise ValueError(f"unknown event type {self.type!r}; expected one of {EVENT_TYPES}")
        if not self.timestamp:
            self.timestamp = utc_timestamp()

    @property
    def is_terminal(self) -> bool:
        return self.type in TERMINAL_EVENT_TYPES

    def to_dict(self) -> dict[str, Any]:
        keep = STEP_KEYS if self.type in ("progress", "eval") else ()
        return {k: v for k, v in asdict(self).items() if v is not None or k in keep}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(", ", ": "))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProgressEvent:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


Sink = Callable[[ProgressEvent], None]


class Emitter:
    """Sends each event to every sink; a sink that raises is logged, not fatal."""

    def __init__(self, run_id: str | None, sinks: Iterable[Sink] = ()) -> None:
        self.run_id = run_id
        self.sinks = list(sinks)

    def emit(self, type: str, **fields: Any) -> ProgressEvent:
        event = ProgressEvent(type=type, run_id=self.run_id, **fields)
        for sink in self.sinks:
            try:
                sink(event)
            except Exception:  # noqa: BLE001 - one broken sink must not stop the others
                log.exception("event sink %r failed for %s", sink, event.type)
        return event


def stdout_sink(stream: TextIO | None = None) -> Sink:
    """JSON lines on stdout: the CLI form of seed §5.1."""

    def sink(event: ProgressEvent) -> None:
        out = stream or sys.stdout
        out.write(event.to_json() + "\n")
        out.flush()

    return sink


def file_sink(path: Path) -> Sink:
    """Append each event to the run's log file."""

    def sink(event: ProgressEvent) -> None:
        with path.open("a", encoding="utf-8") as handle:
            handle.write("EVENT " + event.to_json() + "\n")

    return sink


class RedisPublisher:
    """Publishes events on the run's channel and caches the latest one for late joiners."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def __call__(self, event: ProgressEvent) -> None:
        if event.run_id is None:
            return
        payload = event.to_json()
        pipe = self.client.pipeline(transaction=False)
        if event.type != "heartbeat":
            pipe.set(latest_event_key(event.run_id), payload, ex=LATEST_EVENT_TTL_SECONDS)
        pipe.publish(progress_channel(event.run_id), payload)
        pipe.execute()


def latest_event(client: Any, run_id: str) -> dict[str, Any] | None:
    raw = client.get(latest_event_key(run_id))
    return json.loads(raw) if raw else None
