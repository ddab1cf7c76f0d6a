"""TraceStore: schema, stats, fine-tune trace selection and ordering, idempotent writes."""

from __future__ import annotations

import inspect
import sqlite3
from pathlib import Path

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
    assert rounds_columns == ["id", "trace_id", "round_index", "role", "model", "content"]
    (fk,) = foreign_keys
    assert fk[2] == "traces" and fk[3] == "trace_id" and fk[6] == "CASCADE"


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
