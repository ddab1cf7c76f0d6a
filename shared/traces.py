"""The trace store the exporter reads: debate traces and their rounds, in SQLite.

Schema (created on first use; the Proposer writes the same tables):

    traces(id TEXT PK, query TEXT, final_answer TEXT, templates_used TEXT  -- JSON list,
           context TEXT NULL, quality_score REAL CHECK 0..10, created_at TEXT  -- ISO 8601 UTC)
    rounds(id INTEGER PK, trace_id TEXT FK -> traces.id ON DELETE CASCADE, round_index INTEGER,
           role TEXT, model TEXT NULL, content TEXT,
           verdict TEXT NULL CHECK NULL | 'accepted' | 'rejected', UNIQUE(trace_id, round_index))

The schema version is SQLite's `PRAGMA user_version`: 0 is the seed schema (no `verdict`), 1 adds
`rounds.verdict`. A store written by the seed schema (or by a Proposer that still creates it) is
upgraded in place on first connect, in one BEGIN IMMEDIATE transaction that re-checks what is
there, so two processes opening an old store at once both end up with it upgraded once. An
up-to-date store costs one PRAGMA read per connection.

Reads stream rows from a cursor, so memory stays flat however large the store grows.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
VERDICTS = ("accepted", "rejected")
# What to do when an objective with DPO finds no preference pairs (the API's 422, the run's error).
PAIRS_HELP = (
    'Import rounds with "verdict": "rejected" (tmde-finetune traces import FILE.jsonl), or keep '
    "the debate's superseded proposer rounds in the trace store; or start the run with "
    'objective "sft"'
)
VERDICT_CHECK = f"CHECK (verdict IS NULL OR verdict IN ({', '.join(repr(v) for v in VERDICTS)}))"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS traces (
    id TEXT PRIMARY KEY,
    query TEXT NOT NULL,
    final_answer TEXT NOT NULL,
    templates_used TEXT NOT NULL DEFAULT '[]',
    context TEXT,
    quality_score REAL NOT NULL CHECK (quality_score >= 0 AND quality_score <= 10),
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_traces_quality ON traces(quality_score);
CREATE INDEX IF NOT EXISTS idx_traces_created ON traces(created_at);
CREATE TABLE IF NOT EXISTS rounds (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    trace_id TEXT NOT NULL REFERENCES traces(id) ON DELETE CASCADE,
    round_index INTEGER NOT NULL,
    role TEXT NOT NULL,
    model TEXT,
    content TEXT NOT NULL,
    verdict TEXT {VERDICT_CHECK},
    UNIQUE (trace_id, round_index)
);
"""


def _statements(script: str) -> list[str]:
    """SCHEMA's statements one by one: executescript() would COMMIT the upgrade's transaction."""
    return [statement for statement in script.split(";") if statement.strip()]


def _has_column(db: sqlite3.Connection, table: str, column: str) -> bool:
    return any(row[1] == column for row in db.execute(f"PRAGMA table_info({table})"))


def ensure_schema(db: sqlite3.Connection) -> None:
    """Create or upgrade the store to SCHEMA_VERSION; a no-op (one PRAGMA read) when current."""
    if db.execute("PRAGMA user_version").fetchone()[0] >= SCHEMA_VERSION:
        return
    # IMMEDIATE takes the write lock before reading, so a second process upgrading at the same
    # time waits here and then sees the finished upgrade below instead of repeating it.
    db.execute("BEGIN IMMEDIATE")
    try:
        if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            for statement in _statements(SCHEMA):
                db.execute(statement)
            if not _has_column(db, "rounds", "verdict"):  # a seed-schema store
                db.execute(f"ALTER TABLE rounds ADD COLUMN verdict TEXT {VERDICT_CHECK}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        db.commit()
    except BaseException:
        db.rollback()
        raise


@dataclass
class Round:
    role: str
    content: str
    model: str | None = None
    verdict: str | None = None  # "accepted" | "rejected" (VERDICTS) when the debate judged it


@dataclass
class Trace:
    id: str
    query: str
    final_answer: str
    quality_score: float
    templates_used: list[str] = field(default_factory=list)
    context: str | None = None
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    rounds: list[Round] = field(default_factory=list)


@dataclass(frozen=True)
class TraceStats:
    total_traces: int
    fine_tune_candidates: int
    min_quality: float
    average_quality: float | None
    latest_trace_at: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "totalTraces": self.total_traces,
            "fineTuneCandidates": self.fine_tune_candidates,
            "minQuality": self.min_quality,
            "averageQuality": self.average_quality,
            "latestTraceAt": self.latest_trace_at,
        }


class TraceStore:
    """Debate traces in a SQLite file (`TRACES_DB_PATH`)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @contextmanager
    def connect(self, *, create: bool = False) -> Iterator[sqlite3.Connection]:
        if not create and not self.path.exists():
            raise FileNotFoundError(
                f"trace database {self.path} does not exist: run `tmde-finetune seed-demo` "
                "or `tmde-finetune traces import FILE.jsonl`, or set TRACES_DB_PATH"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = sqlite3.connect(self.path, timeout=30)
        connection.row_factory = sqlite3.Row
        connection.execute("PRAGMA foreign_keys=ON")
        connection.execute("PRAGMA busy_timeout=30000")
        try:
            ensure_schema(connection)
            yield connection
        finally:
            connection.close()

    def get_stats(self, min_quality: float, *, since: str | None = None) -> TraceStats:
        """Counts for the API and the scheduler; `since` counts only traces created after it."""
        where, params = "", []
        if since is not None:
            where, params = " WHERE created_at > ?", [since]
        with self.connect(create=True) as db:
            total, average, latest = db.execute(
                f"SELECT COUNT(*), AVG(quality_score), MAX(created_at) FROM traces{where}", params
            ).fetchone()
            joiner = " AND" if where else " WHERE"
            (candidates,) = db.execute(
                f"SELECT COUNT(*) FROM traces{where}{joiner} quality_score >= ?",
                [*params, min_quality],
            ).fetchone()
        return TraceStats(total, candidates, min_quality, average, latest)

    def count_fine_tune_traces(self, min_quality: float) -> int:
        with self.connect() as db:
            query = "SELECT COUNT(*) FROM traces WHERE quality_score >= ?"
            return db.execute(query, (min_quality,)).fetchone()[0]

    def count_pair_sources(self, min_quality: float) -> int:
        """Eligible traces that may give preference pairs (worker/pairs.py): a round judged
        rejected, or, without verdicts, a proposer round whose text is not the final answer.
        An upper bound (the answer comparison needs Python): 0 means the export has no pairs."""
        query = """
            SELECT COUNT(*) FROM traces t WHERE t.quality_score >= ? AND (
              EXISTS (SELECT 1 FROM rounds r WHERE r.trace_id = t.id AND r.verdict = 'rejected')
              OR (NOT EXISTS (SELECT 1 FROM rounds r
                              WHERE r.trace_id = t.id AND r.verdict IS NOT NULL)
                  AND EXISTS (SELECT 1 FROM rounds r WHERE r.trace_id = t.id
                              AND lower(trim(r.role)) = 'proposer'
                              AND lower(trim(r.content)) <> lower(trim(t.final_answer)))))
        """
        with self.connect(create=True) as db:
            return db.execute(query, (min_quality,)).fetchone()[0]

    def fine_tune_queries(self, min_quality: float) -> Iterator[str]:
        """The queries of get_fine_tune_traces, in the same order, without their rounds."""
        query = """
            SELECT query FROM traces WHERE quality_score >= ?
            ORDER BY quality_score DESC, created_at DESC, id
        """
        with self.connect() as db:
            for (text,) in db.execute(query, (min_quality,)):
                yield text

    def get_fine_tune_traces(self, min_quality: float) -> Iterator[Trace]:
        """Traces with quality >= `min_quality`, best first, each with its rounds, streamed."""
        query = """
            SELECT t.id, t.query, t.final_answer, t.templates_used, t.context, t.quality_score,
                   t.created_at, r.role, r.model, r.content, r.verdict
            FROM traces t LEFT JOIN rounds r ON r.trace_id = t.id
            WHERE t.quality_score >= ?
            ORDER BY t.quality_score DESC, t.created_at DESC, t.id, r.round_index
        """
        with self.connect() as db:
            current: Trace | None = None
            for row in db.execute(query, (min_quality,)):
                if current is None or current.id != row["id"]:
                    if current is not None:
                        yield current
                    current = Trace(
                        id=row["id"],
                        query=row["query"],
                        final_answer=row["final_answer"],
                        quality_score=row["quality_score"],
                        templates_used=json.loads(row["templates_used"] or "[]"),
                        context=row["context"],
                        created_at=row["created_at"],
                    )
                if row["role"] is not None:
                    current.rounds.append(
                        Round(row["role"], row["content"], row["model"], row["verdict"])
                    )
            if current is not None:
                yield current

    def upsert(self, db: sqlite3.Connection, trace: Trace) -> bool:
        """Write one trace and its rounds in the caller's transaction; True if it was new."""
        existed = db.execute("SELECT 1 FROM traces WHERE id = ?", (trace.id,)).fetchone()
        db.execute("DELETE FROM rounds WHERE trace_id = ?", (trace.id,))
        db.execute(
            "INSERT OR REPLACE INTO traces (id, query, final_answer, templates_used, context,"
            " quality_score, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                trace.id,
                trace.query,
                trace.final_answer,
                json.dumps(trace.templates_used),
                trace.context,
                trace.quality_score,
                trace.created_at,
            ),
        )
        db.executemany(
            "INSERT INTO rounds (trace_id, round_index, role, model, content, verdict)"
            " VALUES (?,?,?,?,?,?)",
            [
                (trace.id, i, r.role, r.model, r.content, r.verdict)
                for i, r in enumerate(trace.rounds)
            ],
        )
        return existed is None

    def add_many(self, traces: list[Trace]) -> int:
        """Write traces in one transaction; returns how many were new."""
        with self.connect(create=True) as db, db:
            return sum(self.upsert(db, trace) for trace in traces)
