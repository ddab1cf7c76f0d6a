"""TraceStore: schema and its upgrade, stats, fine-tune trace selection and ordering, writes."""

from __future__ import annotations

import inspect
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from shared.demo_traces import generate
from shared.traces import Round, Trace, TraceStats, TraceStore


def _trace(trace_id: str, score: float, created_at: str, rounds: int = 2, **extra) -> Trace:
    return Trace(
        id=trace_id,
        query=f"question {trace_id}",
        final_answer=f"answer {trace_id}",
        quality_score=score,
        created_at=created_at,
        rounds=[Round(f"role{i}", f"{trace_id} round {i}", f"model{i}") for i in range(rounds)],
        **extra,
    )


@pytest.fixture
def store(tmp_path: Path) -> TraceStore:
    return TraceStore(tmp_path / "nested" / "traces.db")


def _count(store: TraceStore, table: str) -> int:
    with sqlite3.connect(store.path) as db:
        return db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]


def _user_version(store: TraceStore) -> int:
    with sqlite3.connect(store.path) as db:
        return db.execute("PRAGMA user_version").fetchone()[0]


def _verdict_columns(store: TraceStore) -> int:
    with sqlite3.connect(store.path) as db:
        return sum(row[1] == "verdict" for row in db.execute("PRAGMA table_info(rounds)"))


# --- schema -----------------------------------------------------------------------------------


def test_schema_created_on_first_write(store: TraceStore) -> None:
    assert not store.path.exists()
    store.add_many([])
    assert store.path.exists()
    with sqlite3.connect(store.path) as db:
        objects = {
            (kind, name)
            for kind, name in db.execute("SELECT type, name FROM sqlite_master")
            if not name.startswith("sqlite_")
        }
        traces_columns = [row[1] for row in db.execute("PRAGMA table_info(traces)")]
        rounds_columns = [row[1] for row in db.execute("PRAGMA table_info(rounds)")]
        foreign_keys = db.execute("PRAGMA foreign_key_list(rounds)").fetchall()
    assert {
        ("table", "traces"),
        ("table", "rounds"),
        ("index", "idx_traces_quality"),
        ("index", "idx_traces_created"),
    } <= objects
    assert traces_columns == [
        "id",
        "query",
        "final_answer",
        "templates_used",
        "context",
        "quality_score",
        "created_at",
    ]
    assert rounds_columns == [
        "id",
        "trace_id",
        "round_index",
        "role",
        "model",
        "content",
        "verdict",
    ]
    (fk,) = foreign_keys
    assert fk[2] == "traces" and fk[3] == "trace_id" and fk[6] == "CASCADE"
    assert _user_version(store) == 1


def test_reading_a_missing_store_explains_how_to_create_it(store: TraceStore) -> None:
    with pytest.raises(FileNotFoundError, match="seed-demo|traces import"):
        store.count_fine_tune_traces(8.0)
    assert not store.path.exists()


def test_quality_check_constraint(store: TraceStore) -> None:
    store.add_many([])
    with store.connect() as db, pytest.raises(sqlite3.IntegrityError):
        db.execute(
            "INSERT INTO traces (id, query, final_answer, quality_score, created_at)"
            " VALUES ('x', 'q', 'a', 10.5, '2026-01-01')"
        )


def test_rounds_unique_per_index_and_cascade(store: TraceStore) -> None:
    store.add_many([_trace("t1", 9, "2026-01-01T00:00:00+00:00", rounds=3)])
    with store.connect() as db:
        with pytest.raises(sqlite3.IntegrityError):
            db.execute(
                "INSERT INTO rounds (trace_id, round_index, role, content)"
                " VALUES ('t1', 0, 'x', 'y')"
            )
        with pytest.raises(sqlite3.IntegrityError):  # foreign key
            db.execute(
                "INSERT INTO rounds (trace_id, round_index, role, content)"
                " VALUES ('missing', 0, 'x', 'y')"
            )
        with db:
            db.execute("DELETE FROM traces WHERE id = 't1'")
    assert _count(store, "rounds") == 0


# --- verdicts and the schema upgrade -----------------------------------------------------------

# The seed's schema (user_version 0), as a store created before verdicts, or by a Proposer that
# still creates it, has it.
SEED_SCHEMA = """
CREATE TABLE traces (
    id TEXT PRIMARY KEY,
    query TEXT NOT NULL,
    final_answer TEXT NOT NULL,
    templates_used TEXT NOT NULL DEFAULT '[]',
    context TEXT,
    quality_score REAL NOT NULL CHECK (quality_score >= 0 AND quality_score <= 10),
    created_at TEXT NOT NULL
);
CREATE INDEX idx_traces_quality ON traces(quality_score);
CREATE INDEX idx_traces_created ON traces(created_at);
CREATE TABLE rounds (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    trace_id TEXT NOT NULL REFERENCES traces(id) ON DELETE CASCADE,
    round_index INTEGER NOT NULL,
    role TEXT NOT NULL,
    model TEXT,
    content TEXT NOT NULL,
    UNIQUE (trace_id, round_index)
);
"""

BAD_VERDICT_SQL = (
    "INSERT INTO rounds (trace_id, round_index, role, content, verdict)"
    " VALUES ('old1', 99, 'judge', 'x', 'maybe')"
)


def _seed_store(path: Path) -> list[tuple]:
    """An old-schema store with two traces and three rounds; returns its rounds' rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.executescript(SEED_SCHEMA)
        db.executemany(
            "INSERT INTO traces (id, query, final_answer, quality_score, created_at)"
            " VALUES (?, ?, ?, ?, ?)",
            [
                ("old1", "q1", "a1", 9.0, "2026-01-01T00:00:00+00:00"),
                ("old2", "q2", "a2", 8.5, "2026-01-02T00:00:00+00:00"),
            ],
        )
        db.executemany(
            "INSERT INTO rounds (trace_id, round_index, role, model, content) VALUES (?,?,?,?,?)",
            [
                ("old1", 0, "proposer", "m", "first"),
                ("old1", 1, "judge", None, "ok"),
                ("old2", 0, "proposer", "m", "only"),
            ],
        )
        rows = db.execute("SELECT * FROM rounds ORDER BY id").fetchall()
    db.close()
    return rows


def test_an_old_store_is_upgraded_in_place_on_first_use(store: TraceStore) -> None:
    old_rounds = _seed_store(store.path)
    assert _user_version(store) == 0 and _verdict_columns(store) == 0

    loaded = {t.id: t for t in store.get_fine_tune_traces(0)}

    assert _user_version(store) == 1 and _verdict_columns(store) == 1
    assert set(loaded) == {"old1", "old2"} and _count(store, "traces") == 2
    assert [(r.role, r.content, r.model, r.verdict) for r in loaded["old1"].rounds] == [
        ("proposer", "first", "m", None),
        ("judge", "ok", None, None),
    ]
    with sqlite3.connect(store.path) as db:  # every old row kept as it was, verdict NULL
        rows = db.execute("SELECT * FROM rounds ORDER BY id").fetchall()
        indexes = {row[1] for row in db.execute("PRAGMA index_list(traces)")}
    assert rows == [(*row, None) for row in old_rounds]
    assert {"idx_traces_quality", "idx_traces_created"} <= indexes


def test_upgraded_store_stores_verdicts_and_checks_them(store: TraceStore) -> None:
    _seed_store(store.path)
    judged = _trace("new", 9.5, "2026-02-01T00:00:00+00:00", rounds=0)
    judged.rounds = [
        Round("proposer", "wrong", "m", "rejected"),
        Round("proposer", "right", "m", "accepted"),
        Round("judge", "fine"),
    ]
    store.add_many([judged])
    (loaded,) = [t for t in store.get_fine_tune_traces(0) if t.id == "new"]
    assert loaded.rounds == judged.rounds
    with store.connect() as db, pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        db.execute(BAD_VERDICT_SQL)


def test_a_new_store_checks_verdicts(store: TraceStore) -> None:
    store.add_many([_trace("old1", 9, "2026-01-01T00:00:00+00:00")])
    with store.connect() as db, pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        db.execute(BAD_VERDICT_SQL)
    bad = _trace("bad", 9, "2026-01-01T00:00:00+00:00", rounds=0)
    bad.rounds = [Round("judge", "hmm", None, "maybe")]
    with pytest.raises(sqlite3.IntegrityError):  # and add_many writes nothing of that batch
        store.add_many([_trace("good", 9, "2026-01-01T00:00:00+00:00"), bad])
    assert [t.id for t in store.get_fine_tune_traces(0)] == ["old1"]


def test_upgrade_is_idempotent(store: TraceStore) -> None:
    _seed_store(store.path)
    for _ in range(3):
        store.count_fine_tune_traces(0)
    assert _user_version(store) == 1 and _verdict_columns(store) == 1
    assert _count(store, "rounds") == 3


def test_two_processes_upgrading_at_once_upgrade_once(store: TraceStore) -> None:
    """Connections that all read version 0 and then queue on the write lock: the first one
    upgrades, the others re-check inside their transaction and find nothing left to do."""
    _seed_store(store.path)
    blocker = sqlite3.connect(store.path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # hold the write lock so every connector queues
    errors: list[BaseException] = []

    def connect() -> None:
        try:
            with TraceStore(store.path).connect() as db:
                db.execute("SELECT verdict FROM rounds").fetchall()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=connect) for _ in range(4)]
    for thread in threads:
        thread.start()
    time.sleep(0.5)  # long enough for each to read user_version 0 and wait for the lock
    blocker.rollback()
    blocker.close()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert _user_version(store) == 1 and _verdict_columns(store) == 1


def test_connect_to_an_up_to_date_store_reads_one_pragma(
    store: TraceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.add_many([])
    statements: list[str] = []
    original = sqlite3.connect

    def traced(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        connection = original(*args, **kwargs)
        connection.set_trace_callback(statements.append)
        return connection

    monkeypatch.setattr(sqlite3, "connect", traced)
    with store.connect():
        pass
    assert statements == [
        "PRAGMA foreign_keys=ON",
        "PRAGMA busy_timeout=30000",
        "PRAGMA user_version",
    ]


# --- stats -------------------------------------------------------------------------------------


def test_stats_of_an_empty_store(store: TraceStore) -> None:
    stats = store.get_stats(8.0)
    assert stats == TraceStats(0, 0, 8.0, None, None)
    assert stats.to_dict() == {
        "totalTraces": 0,
        "fineTuneCandidates": 0,
        "minQuality": 8.0,
        "averageQuality": None,
        "latestTraceAt": None,
    }


def test_stats_counts_candidates_at_the_threshold(store: TraceStore) -> None:
    store.add_many(
        [
            _trace("a", 9.5, "2026-01-01T00:00:00+00:00"),
            _trace("b", 8.0, "2026-01-02T00:00:00+00:00"),  # exactly the threshold counts
            _trace("c", 7.9, "2026-01-03T00:00:00+00:00"),
            _trace("d", 2.6, "2026-01-04T00:00:00+00:00"),
        ]
    )
    stats = store.get_stats(8.0)
    assert stats.total_traces == 4
    assert stats.fine_tune_candidates == 2
    assert stats.average_quality == pytest.approx((9.5 + 8.0 + 7.9 + 2.6) / 4)
    assert stats.latest_trace_at == "2026-01-04T00:00:00+00:00"
    assert store.get_stats(0).fine_tune_candidates == 4
    assert store.get_stats(10).fine_tune_candidates == 0
    assert store.count_fine_tune_traces(8.0) == 2
    assert store.count_fine_tune_traces(7.9) == 3


def test_stats_since_counts_only_newer_traces(store: TraceStore) -> None:
    store.add_many(
        [
            _trace("old-good", 9.0, "2026-01-01T00:00:00+00:00"),
            _trace("new-good", 9.0, "2026-02-01T00:00:00+00:00"),
            _trace("new-bad", 3.0, "2026-02-02T00:00:00+00:00"),
            _trace("boundary", 9.0, "2026-01-15T00:00:00+00:00"),
        ]
    )
    stats = store.get_stats(8.0, since="2026-01-15T00:00:00+00:00")  # strictly after
    assert stats.total_traces == 2
    assert stats.fine_tune_candidates == 1
    assert stats.average_quality == pytest.approx(6.0)
    assert stats.latest_trace_at == "2026-02-02T00:00:00+00:00"
    assert store.get_stats(8.0, since="2027-01-01").total_traces == 0


# --- fine-tune traces --------------------------------------------------------------------------


def test_fine_tune_traces_best_first_with_rounds_in_order(store: TraceStore) -> None:
    store.add_many(
        [
            _trace("mid", 8.5, "2026-01-05T00:00:00+00:00", rounds=3),
            _trace("low", 4.0, "2026-01-06T00:00:00+00:00"),
            _trace("best", 9.9, "2026-01-01T00:00:00+00:00", rounds=4),
            _trace("tie-old", 9.0, "2026-01-02T00:00:00+00:00"),
            _trace("tie-new", 9.0, "2026-01-03T00:00:00+00:00"),
            _trace("tie-new-b", 9.0, "2026-01-03T00:00:00+00:00"),
            _trace("tie-new-a", 9.0, "2026-01-03T00:00:00+00:00"),
        ]
    )
    traces = list(store.get_fine_tune_traces(8.0))
    # quality desc, then newest first, then id
    assert [t.id for t in traces] == ["best", "tie-new", "tie-new-a", "tie-new-b", "tie-old", "mid"]
    best = traces[0]
    assert [r.content for r in best.rounds] == [f"best round {i}" for i in range(4)]
    assert [(r.role, r.model) for r in best.rounds] == [(f"role{i}", f"model{i}") for i in range(4)]
    assert len(traces[-1].rounds) == 3


def test_fine_tune_traces_roundtrip_every_field(store: TraceStore) -> None:
    original = Trace(
        id="full",
        query="What is 2+2?",
        final_answer="The answer is 4.",
        quality_score=9.25,
        templates_used=["socratic", "step-by-step"],
        context="arithmetic",
        created_at="2026-02-20T02:00:00+00:00",
        rounds=[Round("proposer", "4", "qwen3:32b"), Round("judge", "ok", None)],
    )
    store.add_many([original])
    (loaded,) = store.get_fine_tune_traces(9.0)
    assert loaded == original


def test_trace_without_rounds_is_still_returned(store: TraceStore) -> None:
    store.add_many([_trace("bare", 9.0, "2026-01-01T00:00:00+00:00", rounds=0)])
    (loaded,) = store.get_fine_tune_traces(8.0)
    assert loaded.id == "bare" and loaded.rounds == []


def test_rounds_attached_to_the_right_trace_over_many_traces(store: TraceStore) -> None:
    traces = generate(150)
    store.add_many(traces)
    by_id = {t.id: t for t in traces}
    loaded = list(store.get_fine_tune_traces(8.0))
    expected = [t for t in traces if t.quality_score >= 8.0]
    assert len(loaded) == len(expected) > 0
    scores = [t.quality_score for t in loaded]
    assert scores == sorted(scores, reverse=True)
    for trace in loaded:
        assert trace.rounds == by_id[trace.id].rounds
        assert trace.templates_used == by_id[trace.id].templates_used


def test_fine_tune_traces_are_streamed(store: TraceStore) -> None:
    iterator = store.get_fine_tune_traces(8.0)
    # Lazy: nothing is read (not even the missing file noticed) until the first item.
    assert inspect.isgenerator(iterator)
    with pytest.raises(FileNotFoundError):
        next(iterator)

    store.add_many(generate(60))
    iterator = store.get_fine_tune_traces(8.0)
    first = next(iterator)
    assert first.rounds  # a whole trace is yielded before the query is exhausted
    iterator.close()  # closes the connection: the store is writable again at once
    store.add_many([_trace("after", 9.0, "2030-01-01T00:00:00+00:00")])
    assert store.get_stats(8.0).latest_trace_at == "2030-01-01T00:00:00+00:00"


def test_no_candidates_yields_nothing(store: TraceStore) -> None:
    store.add_many([_trace("low", 2.0, "2026-01-01T00:00:00+00:00")])
    assert list(store.get_fine_tune_traces(8.0)) == []


# --- writes ------------------------------------------------------------------------------------


def test_add_many_is_idempotent(store: TraceStore) -> None:
    traces = generate(40)
    assert store.add_many(traces) == 40
    rounds = _count(store, "rounds")
    assert store.add_many(traces) == 0
    assert _count(store, "traces") == 40
    assert _count(store, "rounds") == rounds == sum(len(t.rounds) for t in traces)


def test_add_many_replaces_on_id(store: TraceStore) -> None:
    store.add_many([_trace("t1", 9.0, "2026-01-01T00:00:00+00:00", rounds=4)])
    replacement = _trace("t1", 8.5, "2026-01-02T00:00:00+00:00", rounds=1)
    replacement.final_answer = "changed"
    assert store.add_many([replacement, _trace("t2", 9.0, "2026-01-01T00:00:00+00:00")]) == 1
    loaded = {t.id: t for t in store.get_fine_tune_traces(0)}
    assert loaded["t1"].final_answer == "changed"
    assert loaded["t1"].quality_score == 8.5
    assert len(loaded["t1"].rounds) == 1
    assert _count(store, "rounds") == 1 + 2


def test_add_many_is_one_transaction(store: TraceStore) -> None:
    store.add_many([_trace("keep", 9.0, "2026-01-01T00:00:00+00:00")])
    bad = _trace("bad", 11.0, "2026-01-01T00:00:00+00:00")  # violates the CHECK constraint
    with pytest.raises(sqlite3.IntegrityError):
        store.add_many([_trace("new", 9.0, "2026-01-01T00:00:00+00:00"), bad])
    assert [t.id for t in store.get_fine_tune_traces(0)] == ["keep"]
    assert _count(store, "rounds") == 2


def test_pair_sources_count_the_traces_that_can_give_a_preference_pair(
    store: TraceStore,
) -> None:
    def trace(trace_id: str, *rounds: Round, score: float = 9.0) -> Trace:
        return Trace(
            id=trace_id,
            query=f"q {trace_id}",
            final_answer="The answer is 4.",
            quality_score=score,
            rounds=list(rounds),
        )

    store.add_many(
        [
            trace("judged", Round("critic", "no", verdict="rejected")),
            trace("accepted-only", Round("proposer", "draft", verdict="accepted")),
            trace("superseded", Round("Proposer", "The answer is 5.")),
            trace("same-text", Round("proposer", "  the answer is 4. ")),
            trace("critic-only", Round("critic", "check it")),
            trace("low-quality", Round("proposer", "x"), score=2.0),
        ]
    )
    assert store.count_pair_sources(8.0) == 2  # judged, superseded
    assert store.count_pair_sources(0.0) == 3
