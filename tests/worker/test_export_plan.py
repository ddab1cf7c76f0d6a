"""The export's first pass: near-duplicate groups stay in one split, and a warm start trains
on what its parent has not seen plus a seeded replay sample of what it has."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.errors import InsufficientDataError
from shared.traces import Trace, TraceStore
from worker import trained_set
from worker.export import export_traces
from worker.export_plan import instruction_hash, plan_splits

NAMES = ["Ava", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jun"]


def _question(i: int) -> str:
    item = ["apples", "pears", "books", "coins", "shells"][i % 5]
    return f"{NAMES[i % 10]} has {i + 3} {item} and gets {2 * i + 1} more on day {i}. How many?"


def _variants(i: int) -> list[str]:
    """The question and two near-copies: one word changed, punctuation changed."""
    base = _question(i)
    return [base, base.replace(" more ", " extra "), base.replace("?", " ?").upper()]


def _store(tmp_path: Path, questions: list[str], name: str = "t.db") -> TraceStore:
    store = TraceStore(tmp_path / name)
    store.add_many(
        [
            Trace(id=f"t{n}", query=q, final_answer=f"#### {n}", quality_score=9.0)
            for n, q in enumerate(questions)
        ]
    )
    return store


def _instructions(path: Path) -> list[str]:
    return [json.loads(line)["instruction"] for line in path.read_text().splitlines()]


def test_near_duplicate_groups_never_split(tmp_path: Path) -> None:
    questions = [v for i in range(40) for v in _variants(i)]
    out = tmp_path / "out"
    export_traces(_store(tmp_path, questions), min_quality=8, output_dir=out, val_split=0.3, seed=1)
    sides = {q: "train" for q in _instructions(out / "train.jsonl")}
    sides |= {q: "val" for q in _instructions(out / "val.jsonl")}
    assert len(sides) == len(questions)
    for i in range(40):
        assert len({sides[v] for v in _variants(i)}) == 1, _variants(i)
    assert set(sides.values()) == {"train", "val"}
    manifest = json.loads((out / "export_manifest.json").read_text())
    assert (manifest["nearDuplicateGroups"], manifest["nearDuplicatesMerged"]) == (40, 80)
    assert manifest["nearDuplicateThreshold"] == 0.7


def test_distinct_questions_are_not_merged() -> None:
    plan = plan_splits([_question(i) for i in range(60)], val_split=0.2, seed=0)
    assert (plan.groups, plan.merged) == (0, 0) and 0 < len(plan.val) < 60


def test_a_small_export_holds_one_group_back() -> None:
    plan = plan_splits(["What is two plus two?", "Name the capital of France."], val_split=0.01,
                       seed=0)  # fmt: skip
    assert len(plan.val) == 1 and plan.new_train == 1


def _keys(questions: list[str]) -> set[bytes]:
    return {trained_set.key(q) for q in questions}


def test_a_warm_start_trains_the_new_and_replays_a_seeded_share_of_the_old() -> None:
    old = [_question(i) for i in range(30)]
    new = [_question(i) for i in range(30, 50)]
    plan = plan_splits(new + old, val_split=0.2, seed=3, parent_keys=_keys(old), replay_ratio=0.5)
    old_hashes = {instruction_hash(q) for q in old}
    assert plan.old == old_hashes and not plan.val & old_hashes  # the parent's never held out
    assert plan.new_train + len({instruction_hash(q) for q in new} & plan.val) == len(new)
    assert len(plan.replay) == round(0.5 * plan.new_train) and plan.replay <= old_hashes
    again = plan_splits(new + old, val_split=0.2, seed=3, parent_keys=_keys(old), replay_ratio=0.5)
    assert again.replay == plan.replay
    other = plan_splits(new + old, val_split=0.2, seed=4, parent_keys=_keys(old), replay_ratio=0.5)
    assert other.replay != plan.replay


def test_a_new_near_copy_of_an_old_question_is_not_held_out() -> None:
    old = [_question(i) for i in range(10)]
    near_copies = [q.replace(" more ", " extra ") for q in old]
    plan = plan_splits(near_copies + old, val_split=0.5, seed=0, parent_keys=_keys(old))
    assert plan.val == set() and plan.new_train == 10


def test_warm_export_files_and_manifest(tmp_path: Path) -> None:
    old = [_question(i) for i in range(30)]
    new = [_question(i) for i in range(30, 54)]
    out = tmp_path / "out"
    result = export_traces(
        _store(tmp_path, old + new),
        min_quality=8,
        output_dir=out,
        val_split=0.25,
        seed=0,
        parent_adapter="run_parent",
        parent_keys=_keys(old),
        replay_ratio=1.0,
    )
    manifest = json.loads((out / "export_manifest.json").read_text())
    train, val = _instructions(out / "train.jsonl"), _instructions(out / "val.jsonl")
    assert set(val) <= set(new) and manifest["parentAdapter"] == "run_parent"
    replayed = [q for q in train if q in old]
    assert len(replayed) == manifest["replayExamples"] == manifest["newExamples"]
    assert len(train) == 2 * manifest["newExamples"] and result.train_count == len(train)
    assert manifest["oldTracesNotReplayed"] == 30 - len(replayed)
    assert manifest["eligibleTraces"] == 54 and result.duplicates_removed == 0


def test_nothing_new_to_continue_with_is_insufficient_data(tmp_path: Path) -> None:
    old = [_question(i) for i in range(12)]
    with pytest.raises(InsufficientDataError, match="Nothing new to continue adapter run_p"):
        export_traces(
            _store(tmp_path, old),
            min_quality=8,
            output_dir=tmp_path / "out",
            val_split=0.2,
            seed=0,
            parent_adapter="run_p",
            parent_keys=_keys(old),
        )
    assert not (tmp_path / "out").exists()
