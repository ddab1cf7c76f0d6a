"""`traces import`: per-line validation, policies, idempotence, atomic rows, CLI exit codes."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from shared import cli
from shared.trace_import import ImportReport, import_file, parse_trace
from shared.traces import TraceStore


def good(trace_id: str = "t1", **changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "id": trace_id,
        "query": f"What is {trace_id}?",
        "final_answer": "The answer is 4.",
        "quality_score": 8.5,
        "templates_used": ["socratic"],
        "context": "arithmetic",
        "created_at": "2026-02-20T02:00:00Z",
        "rounds": [
            {"role": "proposer", "model": "qwen3:32b", "content": "2+2=4"},
            {"role": "judge", "content": "accepted"},
        ],
    }
    obj.update(changes)
    return obj


def write_lines(path: Path, lines: list[Any]) -> Path:
    text = "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def rows(store: TraceStore, table: str) -> list[tuple]:
    if not store.path.exists():
        return []
    with sqlite3.connect(store.path) as db:
        return db.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()


@pytest.fixture
def store(tmp_path: Path) -> TraceStore:
    return TraceStore(tmp_path / "traces.db")


# --- a good file -------------------------------------------------------------------------------


def test_good_file_is_imported(store: TraceStore, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "in.jsonl", [good("t1"), good("t2", quality_score=9)])
    report = import_file(store, path)
    assert report == ImportReport(imported=2, replaced=0, errors=[], written=True)
    assert report.summary() == "2 new, 0 replaced, 0 rejected"
    traces = {t.id: t for t in store.get_fine_tune_traces(0)}
    assert set(traces) == {"t1", "t2"}
    t1 = traces["t1"]
    assert t1.query == "What is t1?"
    assert t1.templates_used == ["socratic"]
    assert t1.context == "arithmetic"
    assert t1.created_at == "2026-02-20T02:00:00+00:00"
    assert [(r.role, r.model, r.content) for r in t1.rounds] == [
        ("proposer", "qwen3:32b", "2+2=4"),
        ("judge", None, "accepted"),
    ]
    assert traces["t2"].quality_score == 9.0


def test_optional_fields_may_be_left_out(store: TraceStore, tmp_path: Path) -> None:
    minimal = {
        k: v for k, v in good().items() if k not in ("templates_used", "context", "created_at")
    }
    report = import_file(store, write_lines(tmp_path / "in.jsonl", [minimal]))
    assert report.imported == 1 and not report.errors
    (trace,) = store.get_fine_tune_traces(0)
    assert trace.templates_used == [] and trace.context is None
    assert trace.created_at.endswith("+00:00")  # now, in UTC


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("2026-02-20T02:00:00Z", "2026-02-20T02:00:00+00:00"),
        ("2026-02-20T04:00:00+02:00", "2026-02-20T02:00:00+00:00"),
        ("2026-02-20T02:00:00", "2026-02-20T02:00:00+00:00"),  # naive means UTC
        ("2026-02-20", "2026-02-20T00:00:00+00:00"),
    ],
)
def test_created_at_normalised_to_utc(given: str, stored: str) -> None:
    assert parse_trace(json.dumps(good(created_at=given))).created_at == stored


def test_reimport_is_idempotent_and_replaces_on_id(store: TraceStore, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "in.jsonl", [good("t1"), good("t2")])
    import_file(store, path)
    before_traces, before_rounds = rows(store, "traces"), len(rows(store, "rounds"))

    report = import_file(store, path)
    assert (report.imported, report.replaced, report.errors) == (0, 2, [])
    assert rows(store, "traces") == before_traces
    assert len(rows(store, "rounds")) == before_rounds == 4

    changed = good("t1", final_answer="Changed.", rounds=[{"role": "judge", "content": "only"}])
    report = import_file(store, write_lines(tmp_path / "v2.jsonl", [changed, good("t3")]))
    assert (report.imported, report.replaced) == (1, 1)
    traces = {t.id: t for t in store.get_fine_tune_traces(0)}
    assert set(traces) == {"t1", "t2", "t3"}
    assert traces["t1"].final_answer == "Changed."
    assert [r.content for r in traces["t1"].rounds] == ["only"]
    assert len(rows(store, "rounds")) == 1 + 2 + 2


def test_duplicate_id_within_a_file_keeps_the_last(store: TraceStore, tmp_path: Path) -> None:
    path = write_lines(tmp_path / "in.jsonl", [good("t1"), good("t1", quality_score=2)])
    report = import_file(store, path)
    assert (report.imported, report.replaced) == (1, 1)
    (trace,) = store.get_fine_tune_traces(0)
    assert trace.quality_score == 2


# --- bad lines ---------------------------------------------------------------------------------

BAD_LINES: list[tuple[Any, str]] = [
    ('{"id": "x", ', "invalid JSON"),
    ("not json at all", "invalid JSON"),
    ("[1, 2, 3]", "each line must be a JSON object"),
    ({k: v for k, v in good().items() if k != "rounds"}, "missing field(s): rounds"),
    (
        {k: v for k, v in good().items() if k not in ("query", "final_answer")},
        "missing field(s): query, final_answer",
    ),
    (good(score=9), "unknown field(s): score"),
    (good(quality_score=10.5), "'quality_score' 10.5 is out of range 0-10"),
    (good(quality_score=-1), "'quality_score' -1 is out of range 0-10"),
    (
        '{"id": "n", "query": "q", "final_answer": "a", "quality_score": NaN, "rounds": []}',
        "out of range 0-10",
    ),
    (good(quality_score="9"), "'quality_score' must be a number"),
    (good(quality_score=True), "'quality_score' must be a number"),
    (good(id=5), "'id' must be a non-empty string"),
    (good(query=""), "'query' must be a non-empty string"),
    (good(final_answer=None), "'final_answer' must be a non-empty string"),
    (good(templates_used="socratic"), "'templates_used' must be a list of strings"),
    (good(templates_used=["a", 1]), "'templates_used' must be a list of strings"),
    (good(context=3), "'context' must be a string"),
    (good(created_at="yesterday"), "'created_at' is not ISO 8601: 'yesterday'"),
    (good(created_at=1700000000), "'created_at' must be an ISO 8601 string"),
    (good(rounds="proposer said 4"), "'rounds' must be a list"),
    (good(rounds=["text"]), "rounds[0] must be an object"),
    (good(rounds=[{"role": "a", "content": "b"}, {"content": "c"}]), "rounds[1].role must be a"),
    (good(rounds=[{"role": "a", "content": 4}]), "rounds[0].content must be a string"),
    (good(rounds=[{"role": "a", "content": "b", "model": 1}]), "rounds[0].model must be a string"),
    (
        good(
            rounds=[{"role": "a", "content": "b"}, {"role": "a", "content": "c", "verdict": "ok"}]
        ),
        'rounds[1].verdict "ok" must be "accepted" or "rejected" (or null)',
    ),
    (good(rounds=[{"role": "a", "content": "b", "verdict": "Rejected"}]), '"Rejected" must be'),
    (good(rounds=[{"role": "a", "content": "b", "verdict": True}]), "rounds[0].verdict true must"),
    (good(rounds=[{"role": "a", "content": "b", "verdict": 1}]), "rounds[0].verdict 1 must"),
    (good(rounds=[{"role": "a", "content": "b", "verdict": [1]}]), "rounds[0].verdict [1] must"),
]


@pytest.mark.parametrize(("line", "reason"), BAD_LINES)
def test_each_bad_line_is_reported_with_number_and_reason(
    store: TraceStore, tmp_path: Path, line: Any, reason: str
) -> None:
    path = write_lines(tmp_path / "in.jsonl", [good("before"), line, good("after")])
    report = import_file(store, path)
    assert len(report.errors) == 1
    number, message = report.errors[0]
    assert number == 2
    assert reason in message
    assert f"line 2: {message}" in report.summary()
    # default policy: the good lines are kept
    assert report.imported == 2 and report.written
    assert sorted(t.id for t in store.get_fine_tune_traces(0)) == ["after", "before"]


def test_verdicts_are_imported(store: TraceStore, tmp_path: Path) -> None:
    judged = good(
        "t1",
        rounds=[
            {"role": "proposer", "content": "5", "verdict": "rejected"},
            {"role": "proposer", "content": "4", "verdict": "accepted"},
            {"role": "judge", "content": "ok", "verdict": None},
            {"role": "judge", "content": "done"},
        ],
    )
    report = import_file(store, write_lines(tmp_path / "in.jsonl", [judged]))
    assert report.imported == 1 and not report.errors
    (trace,) = store.get_fine_tune_traces(0)
    assert [r.verdict for r in trace.rounds] == ["rejected", "accepted", None, None]


def test_bad_verdicts_are_reported_and_change_nothing(store: TraceStore, tmp_path: Path) -> None:
    import_file(store, write_lines(tmp_path / "v1.jsonl", [good("kept")]))
    before = rows(store, "traces"), rows(store, "rounds")

    def judged(trace_id: str, verdict: Any) -> dict[str, Any]:
        return good(trace_id, rounds=[{"role": "proposer", "content": "x", "verdict": verdict}])

    lines = [judged("kept", "wrong"), judged("ok", "rejected"), judged("new", 0)]
    report = import_file(store, write_lines(tmp_path / "v2.jsonl", lines))
    assert [number for number, _ in report.errors] == [1, 3]
    assert all("rounds[0].verdict" in reason for _, reason in report.errors)
    assert report.imported == 1 and report.replaced == 0
    traces = {t.id: t for t in store.get_fine_tune_traces(0)}
    assert set(traces) == {"kept", "ok"}
    assert [r.verdict for r in traces["ok"].rounds] == ["rejected"]
    kept_rows = [row for row in rows(store, "rounds") if row[1] == "kept"]
    assert (rows(store, "traces")[0], kept_rows) == (before[0][0], before[1])


def test_line_numbers_count_blank_lines(store: TraceStore, tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text(
        "\n".join([json.dumps(good("a")), "", "   ", "{oops", json.dumps(good("b")), "[]"]) + "\n"
    )
    report = import_file(store, path)
    assert [n for n, _ in report.errors] == [4, 6]
    assert report.imported == 2
    assert report.summary().splitlines() == [
        "2 new, 0 replaced, 2 rejected",
        f"  line 4: {report.errors[0][1]}",
        f"  line 6: {report.errors[1][1]}",
    ]


def test_strict_writes_nothing(store: TraceStore, tmp_path: Path) -> None:
    import_file(store, write_lines(tmp_path / "first.jsonl", [good("existing")]))
    before = rows(store, "traces"), rows(store, "rounds")
    path = write_lines(
        tmp_path / "in.jsonl", [good("new1"), good("existing", final_answer="X"), "{bad"]
    )
    report = import_file(store, path, strict=True)
    assert report.written is False
    assert (report.imported, report.replaced) == (0, 0)
    assert report.errors == [(3, report.errors[0][1])]
    assert "--strict: nothing was written" in report.summary()
    assert (rows(store, "traces"), rows(store, "rounds")) == before


def test_strict_on_a_good_file_writes_it(store: TraceStore, tmp_path: Path) -> None:
    report = import_file(store, write_lines(tmp_path / "in.jsonl", [good("a")]), strict=True)
    assert report.written and report.imported == 1


def test_strict_does_not_even_create_the_store(store: TraceStore, tmp_path: Path) -> None:
    import_file(store, write_lines(tmp_path / "in.jsonl", ["{bad"]), strict=True)
    assert not store.path.exists()


def test_a_trace_and_its_rounds_are_all_or_nothing(
    store: TraceStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure after the trace row and its rounds were written rolls both back."""
    original = TraceStore.upsert

    def failing_upsert(self: TraceStore, db: sqlite3.Connection, trace) -> bool:  # noqa: ANN001
        new = original(self, db, trace)
        if trace.id == "t2":
            raise sqlite3.OperationalError("disk I/O error (simulated)")
        return new

    monkeypatch.setattr(TraceStore, "upsert", failing_upsert)
    path = write_lines(tmp_path / "in.jsonl", [good("t1"), good("t2"), good("t3")])
    with pytest.raises(sqlite3.OperationalError):
        import_file(store, path)
    assert [row[0] for row in rows(store, "traces")] == ["t1"]
    assert {row[1] for row in rows(store, "rounds")} == {"t1"}
    assert len(rows(store, "rounds")) == 2


def test_replacing_keeps_the_old_trace_if_the_new_one_fails(
    store: TraceStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import_file(store, write_lines(tmp_path / "v1.jsonl", [good("t1")]))
    before = rows(store, "traces"), rows(store, "rounds")
    original = TraceStore.upsert

    def failing_upsert(self: TraceStore, db: sqlite3.Connection, trace) -> bool:  # noqa: ANN001
        original(self, db, trace)
        raise sqlite3.OperationalError("simulated")

    monkeypatch.setattr(TraceStore, "upsert", failing_upsert)
    changed = good("t1", final_answer="new", rounds=[{"role": "x", "content": "y"}])
    with pytest.raises(sqlite3.OperationalError):
        import_file(store, write_lines(tmp_path / "v2.jsonl", [changed]))
    assert (rows(store, "traces"), rows(store, "rounds")) == before


# --- the CLI -----------------------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    db = tmp_path / "cli" / "traces.db"
    monkeypatch.setenv("TRACES_DB_PATH", str(db))
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'runs.db'}")
    monkeypatch.setenv("FINETUNE_MIN_QUALITY", "8")
    return db


def test_cli_import_good_file_exits_0(
    cli_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_lines(tmp_path / "in.jsonl", [good("a"), good("b", quality_score=3)])
    assert cli.main(["traces", "import", str(path)]) == 0
    assert "2 new, 0 replaced, 0 rejected" in capsys.readouterr().out
    assert len(rows(TraceStore(cli_env), "traces")) == 2

    assert cli.main(["traces", "import", str(path)]) == 0
    assert "0 new, 2 replaced, 0 rejected" in capsys.readouterr().out

    assert cli.main(["traces", "stats"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["totalTraces"] == 2 and stats["fineTuneCandidates"] == 1


def test_cli_import_with_bad_lines_exits_1_but_keeps_good_ones(
    cli_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_lines(tmp_path / "in.jsonl", [good("a"), good("b", quality_score=11)])
    assert cli.main(["traces", "import", str(path)]) == 1
    out = capsys.readouterr().out
    assert "1 new, 0 replaced, 1 rejected" in out
    assert "line 2: 'quality_score' 11 is out of range 0-10" in out
    assert [r[0] for r in rows(TraceStore(cli_env), "traces")] == ["a"]


def test_cli_strict_exits_1_and_writes_nothing(
    cli_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_lines(tmp_path / "in.jsonl", [good("a"), "{"])
    assert cli.main(["traces", "import", str(path), "--strict"]) == 1
    assert "--strict: nothing was written" in capsys.readouterr().out
    assert rows(TraceStore(cli_env), "traces") == []


def test_cli_db_option_overrides_the_environment(
    cli_env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.db"
    path = write_lines(tmp_path / "in.jsonl", [good("a")])
    assert cli.main(["traces", "import", str(path), "--db", str(other)]) == 0
    assert len(rows(TraceStore(other), "traces")) == 1
    assert not cli_env.exists()


@pytest.mark.parametrize("args", [["traces", "import"], ["traces", "import", "missing.jsonl"]])
def test_cli_missing_file_exits_1(
    cli_env: Path, capsys: pytest.CaptureFixture[str], args: list[str]
) -> None:
    assert cli.main(args) == 1
    assert "is not a file" in capsys.readouterr().err


def test_cli_bad_setting_exits_1_naming_it(
    cli_env: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("FINETUNE_MIN_QUALITY", "eleven")
    path = write_lines(tmp_path / "in.jsonl", [good("a")])
    with pytest.raises(SystemExit) as info:
        cli.main(["traces", "import", str(path)])
    assert info.value.code == 1
    assert "FINETUNE_MIN_QUALITY='eleven' is invalid" in capsys.readouterr().err
    assert not cli_env.exists()


def test_cli_unknown_action_is_a_usage_error(cli_env: Path) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["traces", "delete"])
    assert info.value.code == 2
