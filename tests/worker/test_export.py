"""export_traces and the seed's export CLI (§2.4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.errors import InsufficientDataError
from shared.traces import Trace, TraceStore
from worker import export


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_export_writes_alpaca_split_and_manifest(trace_store: TraceStore, tmp_path: Path) -> None:
    out = tmp_path / "finetune_x"
    result = export.export_traces(
        trace_store, min_quality=8.0, output_dir=out, val_split=0.2, seed=3
    )
    train, val = _lines(out / "train.jsonl"), _lines(out / "val.jsonl")
    assert (len(train), len(val)) == (result.train_count, result.val_count)
    assert set(train[0]) == {"instruction", "input", "output"}
    assert "Templates:" in train[0]["input"] and "Context:" in train[0]["input"]
    assert not {e["instruction"] for e in train} & {e["instruction"] for e in val}
    manifest = json.loads((out / "export_manifest.json").read_text())
    assert manifest["trainCount"] == len(train) and manifest["valCount"] == len(val)
    assert manifest["eligibleTraces"] == trace_store.count_fine_tune_traces(8.0)
    assert manifest["duplicatesRemoved"] == manifest["eligibleTraces"] - len(train) - len(val)
    assert not list(tmp_path.glob(".finetune_x.tmp-*")), "staging folder left behind"


def test_export_is_deterministic_and_seed_dependent(
    trace_store: TraceStore, tmp_path: Path
) -> None:
    def val_of(seed: int, name: str) -> list[str]:
        export.export_traces(
            trace_store, min_quality=8.0, output_dir=tmp_path / name, val_split=0.2, seed=seed
        )
        return [e["instruction"] for e in _lines(tmp_path / name / "val.jsonl")]

    assert val_of(1, "a") == val_of(1, "b")
    assert val_of(1, "a") != val_of(2, "c")


def test_dedupe_keeps_the_highest_quality_version(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "t.db")
    store.add_many(
        [
            Trace(id="low", query="What is 2+2?", final_answer="5", quality_score=8.1),
            Trace(id="high", query="what is  2+2?", final_answer="4", quality_score=9.5),
            *[
                Trace(id=f"o{i}", query=f"Question {i}?", final_answer=str(i), quality_score=9.0)
                for i in range(20)
            ],
        ]
    )
    out = tmp_path / "out"
    result = export.export_traces(store, min_quality=8.0, output_dir=out, val_split=0.3, seed=0)
    rows = _lines(out / "train.jsonl") + _lines(out / "val.jsonl")
    same = [r for r in rows if "2+2" in r["instruction"]]
    assert [r["output"] for r in same] == ["4"]
    assert result.duplicates_removed == 1


def test_small_exports_still_get_a_validation_example(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "t.db")
    store.add_many(
        [Trace(id=f"t{i}", query=f"Q{i}", final_answer="A", quality_score=9) for i in range(3)]
    )
    result = export.export_traces(
        store, min_quality=8, output_dir=tmp_path / "o", val_split=0.01, seed=0
    )
    assert result.val_count == 1 and result.train_count == 2


def test_too_few_examples_raise_and_leave_nothing(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "t.db")
    store.add_many([Trace(id="t", query="Q", final_answer="A", quality_score=9)])
    with pytest.raises(InsufficientDataError) as info:
        export.export_traces(store, min_quality=8, output_dir=tmp_path / "o", val_split=0.1, seed=0)
    assert info.value.current == 1
    assert not (tmp_path / "o").exists()


def test_split_helpers_match_streaming_split() -> None:
    examples = [{"instruction": f"q{i}", "input": "", "output": "a"} for i in range(200)]
    train, val = export.split_train_val(examples, 0.25, seed=9)
    assert len(train) + len(val) == 200 and 20 < len(val) < 80
    assert all(export.is_validation(e["instruction"], 0.25, 9) for e in val)


def test_cli_prints_export_complete_and_exit_codes(
    trace_store: TraceStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = export.main(
        [
            "--db",
            str(trace_store.path),
            "--output-dir",
            str(tmp_path / "e"),
            "--min-quality",
            "8",
            "--val-split",
            "0.1",
            "--seed",
            "42",
        ]
    )
    event = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and event["type"] == "export_complete"
    assert event["train_count"] > 0 and event["val_count"] > 0 and "timestamp" in event
    code = export.main(
        [
            "--db",
            str(trace_store.path),
            "--output-dir",
            str(tmp_path / "f"),
            "--min-examples",
            "100000",
        ]
    )
    event = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 2 and event["type"] == "error" and event["code"] == "INSUFFICIENT_DATA"
    assert (
        export.main(["--db", str(tmp_path / "missing.db"), "--output-dir", str(tmp_path / "g")])
        == 1
    )


def test_memory_stays_flat_as_the_store_grows(tmp_path: Path) -> None:
    """Peak Python allocations of an export barely grow with 10x more traces."""
    import tracemalloc

    def peak(count: int) -> int:
        store = TraceStore(tmp_path / f"{count}.db")
        store.add_many(
            [
                Trace(
                    id=f"t{i}",
                    query=f"Question number {i}? " + "x" * 400,
                    final_answer="y" * 400,
                    quality_score=9,
                )
                for i in range(count)
            ]
        )
        tracemalloc.start()
        export.export_traces(
            store, min_quality=8, output_dir=tmp_path / f"o{count}", val_split=0.1, seed=0
        )
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, large = peak(500), peak(5000)
    # Only the 16-byte instruction hashes grow (~100-250 B each with set and object overhead),
    # far less than the ~850 B of text per trace that is streamed through.
    assert large < small + 4500 * 400
