"""export_traces (examples and preference pairs) and the seed's export CLI (§2.4)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.errors import InsufficientDataError
from shared.traces import Round, Trace, TraceStore
from worker import export
from worker.training.data import user_text

PAIR_KEYS = {"prompt", "instruction", "input", "chosen", "rejected", "trace_id"}


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
    train_pairs, val_pairs = _lines(result.train_pairs_path), _lines(result.val_pairs_path)
    assert result.train_pairs_path == out / "train_pairs.jsonl"
    assert result.val_pairs_path == out / "val_pairs.jsonl"
    assert (len(train_pairs), len(val_pairs)) == (result.train_pairs, result.val_pairs)
    assert (manifest["trainPairs"], manifest["valPairs"]) == (len(train_pairs), len(val_pairs))
    assert len(train_pairs) > 0 and len(val_pairs) > 0  # the demo's drafts were superseded
    assert manifest["maxPairsPerPrompt"] is None
    assert 0 <= manifest["tracesWithVerdicts"] <= len(train) + len(val)
    assert all(set(pair) == PAIR_KEYS for pair in train_pairs + val_pairs)


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


def _judged(trace_id: str, query: str, score: float, *rejected: str) -> Trace:
    """A trace whose rounds carry verdicts: `rejected` drafts, then the accepted answer."""
    rounds = [Round("proposer", text, verdict="rejected") for text in rejected]
    return Trace(
        id=trace_id,
        query=query,
        final_answer=f"#### {trace_id}",
        quality_score=score,
        rounds=[*rounds, Round("proposer", f"#### {trace_id}", verdict="accepted")],
    )


def _split(out: Path, name: str) -> tuple[list[dict], list[dict]]:
    return _lines(out / f"{name}.jsonl"), _lines(out / f"{name}_pairs.jsonl")


def test_pairs_follow_the_split_of_their_instruction(
    trace_store: TraceStore, tmp_path: Path
) -> None:
    out = tmp_path / "o"
    export.export_traces(trace_store, min_quality=8.0, output_dir=out, val_split=0.3, seed=5)
    for name in ("train", "val"):
        examples, pairs = _split(out, name)
        by_instruction = {e["instruction"]: e for e in examples}
        assert pairs and all(p["instruction"] in by_instruction for p in pairs)
        for pair in pairs:  # the chat prompt SFT builds for the same example
            example = by_instruction[pair["instruction"]]
            assert pair["input"] == example["input"] and pair["prompt"] == user_text(example)
            assert pair["chosen"] == example["output"] != pair["rejected"]
    val_instructions = {e["instruction"] for e in _lines(out / "val.jsonl")}
    assert not {p["instruction"] for p in _lines(out / "train_pairs.jsonl")} & val_instructions


def test_dedupe_keeps_the_better_traces_pairs(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "t.db")
    store.add_many(
        [
            _judged("low", "What is 2+2?", 8.2, "#### 5", "#### 6"),
            _judged("high", "what is  2+2?", 9.6, "#### 3"),
            *[_judged(f"o{i}", f"Question {i}?", 9.0, f"#### -{i}") for i in range(10)],
        ]
    )
    out = tmp_path / "out"
    result = export.export_traces(store, min_quality=8.0, output_dir=out, val_split=0.3, seed=0)
    pairs = _lines(out / "train_pairs.jsonl") + _lines(out / "val_pairs.jsonl")
    same = [(p["trace_id"], p["chosen"], p["rejected"]) for p in pairs if "2+2" in p["prompt"]]
    assert same == [("high", "#### high", "#### 3")]
    assert result.duplicates_removed == 1
    manifest = json.loads((out / "export_manifest.json").read_text())
    assert manifest["tracesWithVerdicts"] == 11  # the kept traces only


def test_the_held_back_example_takes_its_pairs_to_val(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "t.db")
    store.add_many([_judged(f"t{i}", f"Q{i}", 9, f"#### -{i}", f"#### x{i}") for i in range(3)])
    out = tmp_path / "o"
    result = export.export_traces(store, min_quality=8, output_dir=out, val_split=0.01, seed=0)
    assert (result.train_count, result.val_count) == (2, 1)  # one example moved to val
    (val,), val_pairs = _split(out, "val")
    train, train_pairs = _split(out, "train")
    assert [p["instruction"] for p in val_pairs] == [val["instruction"]] * 2
    assert {p["instruction"] for p in train_pairs} == {e["instruction"] for e in train}
    assert (result.train_pairs, result.val_pairs) == (len(train_pairs), len(val_pairs)) == (4, 2)


def test_max_pairs_per_prompt_caps_each_instruction(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "t.db")
    store.add_many([_judged(f"t{i}", f"Q{i}", 9, "#### a", "#### b", "#### c") for i in range(6)])
    out = tmp_path / "o"
    result = export.export_traces(
        store, min_quality=8, output_dir=out, val_split=0.3, seed=0, max_pairs_per_prompt=2
    )
    pairs = _lines(out / "train_pairs.jsonl") + _lines(out / "val_pairs.jsonl")
    assert len(pairs) == result.train_pairs + result.val_pairs == 6 * 2
    assert {p["rejected"] for p in pairs} == {"#### a", "#### b"}
    assert json.loads((out / "export_manifest.json").read_text())["maxPairsPerPrompt"] == 2
    with pytest.raises(ValueError, match="positive"):
        export.export_traces(
            store, min_quality=8, output_dir=out, val_split=0.3, seed=0, max_pairs_per_prompt=0
        )


def test_an_export_without_pairs_is_fine(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "t.db")
    store.add_many(
        [Trace(id=f"t{i}", query=f"Q{i}", final_answer="A", quality_score=9) for i in range(5)]
    )
    out = tmp_path / "o"
    result = export.export_traces(store, min_quality=8, output_dir=out, val_split=0.3, seed=0)
    assert (result.train_pairs, result.val_pairs) == (0, 0)
    assert result.train_pairs_path.read_text() == result.val_pairs_path.read_text() == ""
    manifest = json.loads((out / "export_manifest.json").read_text())
    counts = [manifest[key] for key in ("trainPairs", "valPairs", "tracesWithVerdicts")]
    assert counts == [0, 0, 0]


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
            "--max-pairs-per-prompt",
            "1",
        ]
    )
    event = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert code == 0 and event["type"] == "export_complete"
    assert event["train_count"] > 0 and event["val_count"] > 0 and "timestamp" in event
    assert 0 < event["train_pairs"] <= event["train_count"]  # one pair per prompt at most
    assert 0 <= event["val_pairs"] <= event["val_count"]
    assert len(_lines(tmp_path / "e" / "train_pairs.jsonl")) == event["train_pairs"]
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


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_cli_max_pairs_per_prompt_must_be_positive(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        export.main(
            ["--db", "x.db", "--output-dir", str(tmp_path), "--max-pairs-per-prompt", value]
        )
    assert info.value.code == 2 and "--max-pairs-per-prompt" in capsys.readouterr().err


def test_memory_grows_by_the_instructions_only(tmp_path: Path) -> None:
    """Peak Python allocations of an export grow by the instructions the first pass groups
    (worker/export_plan.py), not by the answers, rounds and pairs streamed through."""
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
                    rounds=[Round("proposer", f"draft {i} " + "z" * 300), Round("judge", "ok")],
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

    small, large = peak(2000), peak(6000)  # both past the grouping's fixed-size hashing chunk
    # Per unique instruction: its text (~420 B here), hash, a 512 B MinHash signature and their
    # list and set entries, ~2.5 kB in all; holding the traces would add their ~1.2 kB of
    # answer and draft and the pair built from them, and every round of a longer debate.
    assert large - small < 4000 * 3000
