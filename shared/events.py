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

Sequence numbers and replay. Every event the `RedisPublisher` sends gets `seq`, a per-run
counter (Redis INCR) assigned in the same Lua script that appends it to the run's bounded
replay stream, caches it as the latest event and publishes it. One script, so the order on
the channel is the order of `seq` and anything published is already replayable: a feed that
registers for live events first and then reads the stream after the client's last `seq`
(SSE `Last-Event-ID`, websocket `?after=`) misses nothing and repeats nothing.

Context sinks. `context_sinks(...)` adds sinks for the code running inside it (a Celery task
reporting PROGRESS to Flower) without that code having to thread them through every call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
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
# Events kept per run for resuming feeds (approximate: Redis trims whole stream nodes).
# At one event per optimizer step this covers thousands of steps; older history is in
# finetune_progress (GET /api/finetune/<runId>/events).
REPLAY_MAXLEN = 5000


def event_seq_key(run_id: str) -> str:
    """Counter behind the `seq` of the run's events (INCR; kept as long as the latest event)."""
    return f"finetune:seq:{run_id}"


def replay_key(run_id: str) -> str:
    """Stream of the run's last REPLAY_MAXLEN published events; entry id `<seq>-0`."""
    return f"finetune:events:{run_id}"


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
    tokens_per_second: float | None = None  # progress: non-pad training tokens/s of this attempt
    # training_start/progress/eval/checkpoint: "sft" or "dpo"; step and total_steps count over
    # both stages of an sft+dpo run
    stage: str | None = None
    # DPO stage (progress: the training batch's, eval: the held-out pairs'): TRL's
    # rewards/margins, rewards/accuracies, logps/chosen, logps/rejected
    rewards_margins: float | None = None
    rewards_accuracies: float | None = None
    logps_chosen: float | None = None
    logps_rejected: float | None = None
    train_count: int | None = None
    val_count: int | None = None
    train_pairs: int | None = None  # export_complete: preference pairs in train_pairs.jsonl
    val_pairs: int | None = None
    path: str | None = None
    adapter_path: str | None = None
    metrics: dict[str, Any] | None = None
    promotion: dict[str, Any] | None = None  # complete: the promotion gate's decision
    status: str | None = None
    message: str | None = None
    code: str | None = None
    suggestion: str | None = None
    timestamp: str = ""
    seq: int | None = None  # set by RedisPublisher: the event's place in the run's feed

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


_context_sinks: ContextVar[tuple[Sink, ...]] = ContextVar("tmde_context_sinks", default=())


@contextlib.contextmanager
def context_sinks(*sinks: Sink) -> Iterator[None]:
    """Every Emitter used inside this block also sends to `sinks` (after its own sinks).

    Lets a caller observe events of code that builds its own Emitter (the Celery training task
    turns them into a PROGRESS state) without changing that code's signature.
    """
    token = _context_sinks.set(_context_sinks.get() + sinks)
    try:
        yield
    finally:
        _context_sinks.reset(token)


class Emitter:
    """Sends each event to every sink; a sink that raises is logged, not fatal."""

    def __init__(self, run_id: str | None, sinks: Iterable[Sink] = ()) -> None:
        self.run_id = run_id
        self.sinks = list(sinks)

    def emit(self, type: str, **fields: Any) -> ProgressEvent:
        event = ProgressEvent(type=type, run_id=self.run_id, **fields)
        for sink in (*self.sinks, *_context_sinks.get()):
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


# KEYS: seq counter, replay stream, latest-event key.
# ARGV: event JSON without seq, channel, ttl, stream maxlen, "1" to cache as latest.
# The seq is spliced in front of the JSON object's first key, so the payload stays the
# producer's exact serialisation plus `"seq": N`.
_PUBLISH_LUA = """
local seq = redis.call('INCR', KEYS[1])
local payload = '{"seq": ' .. seq .. ', ' .. string.sub(ARGV[1], 2)
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], seq .. '-0', 'e', payload)
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
if ARGV[5] == '1' then
  redis.call('SET', KEYS[3], payload, 'EX', ARGV[3])
end
redis.call('PUBLISH', ARGV[2], payload)
return seq
"""


class RedisPublisher:
    """Publishes events on the run's channel with a `seq`, appends them to the run's replay
    stream and caches the latest one (heartbeats excepted) for late joiners; one round trip.

    The event object gets its `seq`, so sinks after this one (the log file) record it too.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self._script = client.register_script(_PUBLISH_LUA)

    def __call__(self, event: ProgressEvent) -> None:
        if event.run_id is None:
            return
        event.seq = None
        run_id = event.run_id
        seq = self._script(
            keys=[event_seq_key(run_id), replay_key(run_id), latest_event_key(run_id)],
            args=[
                event.to_json(),
                progress_channel(run_id),
                LATEST_EVENT_TTL_SECONDS,
                REPLAY_MAXLEN,
                "0" if event.type == "heartbeat" else "1",
            ],
        )
        event.seq = int(seq)


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def latest_event_json(client: Any, run_id: str) -> str | None:
    """The run's latest non-heartbeat event as published (JSON text), or None."""
    raw = client.get(latest_event_key(run_id))
    return _text(raw) if raw else None


def latest_event(client: Any, run_id: str) -> dict[str, Any] | None:
    raw = latest_event_json(client, run_id)
    return json.loads(raw) if raw else None


def current_seq(client: Any, run_id: str) -> int:
    """The `seq` of the run's last published event; 0 when none (or expired)."""
    raw = client.get(event_seq_key(run_id))
    return int(raw) if raw else 0


def replay_events(client: Any, run_id: str, after: int, limit: int = REPLAY_MAXLEN) -> list[str]:
    """Published events with `seq` > `after`, oldest first, as JSON text (at most `limit`).

    Starts at the oldest event still kept when `after` is older than the stream's window.
    """
    entries = client.xrange(replay_key(run_id), min=f"{after + 1}-0", max="+", count=limit)
    return [_text(fields[b"e"] if b"e" in fields else fields["e"]) for _id, fields in entries]
