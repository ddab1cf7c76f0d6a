"""Every decision of the promotion gate through the real pipeline steps (tiny model,
in-process), and a warm start that continues the active adapter."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.registry import AdapterRegistry
from tests.helpers import pipeline_run
from tests.worker.conftest import tiny_config
from worker import pipeline, trained_set

LEARNS = {"learningRate": 0.01, "maxSteps": 6}  # a clear gain on the tiny model
LENIENT = {"promote_max_drift": 100.0, "promote_max_em_drop": 1.0}


def _complete(rt, config: dict, run_id: str, **columns: object) -> dict:  # noqa: ANN001
    pipeline_run(rt, config, run_id, **columns)
    assert pipeline.export_step(run_id)["status"] == "exported"
    assert pipeline.train_step(run_id)["status"] == "trained"
    assert pipeline.evaluate_step(run_id)["status"] == "completed"
    return rt.runs.get(run_id).promotion_dict()


def _with(rt, **changes: object):  # noqa: ANN001, ANN202
    rt.settings = rt.settings.replace(**changes)
    return rt


def test_an_adapter_that_learned_nothing_is_rejected_with_min_delta_zero(rt, tiny_model) -> None:
    _with(rt, promote_min_delta=0.0, **LENIENT)
    config = tiny_config(rt.settings, tiny_model, learningRate=1e-12, maxSteps=2)
    promotion = _complete(rt, config, "run_nothing")
    assert promotion["decision"] == "rejected" and promotion["decidedBy"] == "loss"
    low, high = promotion["improvementCi"]
    assert abs(low) < 1e-4 and abs(high) < 1e-4 and promotion["minDelta"] == 0.0
    assert promotion["examples"] == rt.runs.get("run_nothing").val_examples
    assert AdapterRegistry(rt.settings.lora_output_dir).active_id() is None


def test_a_clear_gain_is_promoted_with_every_criterion_recorded(rt, tiny_model) -> None:
    _with(rt, **LENIENT)
    promotion = _complete(rt, tiny_config(rt.settings, tiny_model, **LEARNS), "run_gain")
    assert promotion["decision"] == "promoted", promotion["reason"]
    assert promotion["improvementCi"][0] >= 0.01 and promotion["confidence"] == 0.95
    criteria = promotion["criteria"]
    assert set(criteria) == {"loss", "generation", "preference", "drift"}
    assert criteria["drift"]["verdict"] == "pass" and criteria["drift"]["prompts"] == 8
    registry = AdapterRegistry(rt.settings.lora_output_dir)
    assert registry.active_id() == "run_gain"
    manifest = registry.verify("run_gain")  # the sealed sha256 covers trained_instructions.bin
    assert manifest["promotion"] == promotion and manifest["parentAdapter"] is None
    assert manifest["metrics"]["probeDrift"] == criteria["drift"]["drift"]
    trained = trained_set.read(registry.path("run_gain"))
    export = Path(rt.runs.get("run_gain").export_dir)
    assert trained == trained_set.keys_of(export / "train.jsonl")
    (registry.path("run_gain") / trained_set.FILE).write_bytes(b"\0" * 8)
    with pytest.raises(Exception, match="sha256"):
        registry.verify("run_gain")


def test_drift_beyond_the_limit_rejects_and_says_so(rt, tiny_model) -> None:
    _with(rt, promote_max_drift=0.0, promote_max_em_drop=1.0)
    promotion = _complete(rt, tiny_config(rt.settings, tiny_model, **LEARNS), "run_drift")
    drift = promotion["criteria"]["drift"]
    assert drift["drift"] > 0 and promotion["criteria"]["loss"]["verdict"] == "pass"
    assert promotion["decision"] == "rejected" and promotion["decidedBy"] == "drift"
    assert "FINETUNE_PROMOTE_MAX_DRIFT=0.0" in promotion["reason"]


def test_the_reference_is_not_judged_on_what_it_trained_on(rt, tiny_model) -> None:
    _with(rt, **LENIENT)
    first = _complete(rt, tiny_config(rt.settings, tiny_model, **LEARNS), "run_first")
    assert first["decision"] == "promoted"
    registry = AdapterRegistry(rt.settings.lora_output_dir)
    reference_trained = trained_set.read(registry.path("run_first"))
    # another seed splits the store otherwise: part of its held-out set trained the reference
    config = tiny_config(rt.settings, tiny_model, **LEARNS, seed=7, valSplit=0.3)
    pipeline_run(rt, config, "run_second")
    pipeline.export_step("run_second")
    held_out = trained_set.keys_of(Path(rt.runs.get("run_second").export_dir) / "val.jsonl")
    overlap = held_out & reference_trained
    assert overlap and held_out - overlap
    pipeline.train_step("run_second")
    pipeline.evaluate_step("run_second")
    promotion = rt.runs.get("run_second").promotion_dict()
    assert promotion["reference"] == "run_first" and promotion["referenceTrainedSetKnown"]
    assert promotion["examplesLeftOut"] == len(overlap)
    assert promotion["examples"] == len(held_out) - len(overlap)


def _lora_weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_a_warm_start_continues_the_parent_on_new_traces_plus_replay(rt, tiny_model) -> None:
    from shared.demo_traces import generate
    from shared.traces import TraceStore

    _with(rt, replay_ratio=0.5, **LENIENT)
    first = _complete(rt, tiny_config(rt.settings, tiny_model, **LEARNS), "run_parent")
    assert first["decision"] == "promoted"
    new = [t for t in generate(160) if t.id not in {u.id for u in generate(120)}]
    for trace in new:
        trace.query = "Follow-up: " + trace.query
    TraceStore(rt.settings.traces_db_path).add_many(new)
    config = tiny_config(rt.settings, tiny_model, learningRate=1e-12, maxSteps=2)
    config["initFrom"] = "active"
    _complete(rt, config, "run_child", parent_adapter="run_parent")
    registry = AdapterRegistry(rt.settings.lora_output_dir)
    child = registry.verify("run_child")
    assert child["parentAdapter"] == "run_parent"
    assert registry.lineage("run_child") == [
        {"id": "run_parent", "createdAt": registry.get("run_parent")["createdAt"], "missing": False}
    ]
    export = json.loads(
        (Path(rt.runs.get("run_child").export_dir) / "export_manifest.json").read_text()
    )
    assert export["parentAdapter"] == "run_parent" and export["newExamples"] > 0
    assert export["replayExamples"] == round(0.5 * export["newExamples"])
    assert (
        rt.runs.get("run_child").train_examples == export["newExamples"] + export["replayExamples"]
    )
    # trained with a learning rate of ~0: the child's weights are the parent's, not a fresh LoRA
    parent, child_weights = (
        _lora_weights(registry.path("run_parent")),
        _lora_weights(registry.path("run_child")),
    )
    assert parent.keys() == child_weights.keys()
    assert all((parent[k] - child_weights[k]).abs().max() < 1e-6 for k in parent)
    assert any(parent[k].abs().max() > 0 for k in parent if "lora_B" in k)
    # the child's record of what it trained on includes what its parent trained on
    assert trained_set.read(registry.path("run_parent")) <= trained_set.read(
        registry.path("run_child")
    )


def test_answers_that_got_worse_reject_naming_generation(rt, tiny_model, monkeypatch) -> None:
    """The tiny model answers nothing right, so the answers are set here: the base model's
    are the references, the adapter's wrong; everything else is the real pipeline."""
    from worker import evaluate

    def answers(model, tokenizer, asked, with_reference, options):  # noqa: ANN001, ANN202
        right = [row["output"] for row in asked]
        return right, ["I do not know."] * len(asked), None

    monkeypatch.setattr(evaluate, "_answers", answers)
    _with(rt, promote_max_drift=100.0)
    config = tiny_config(rt.settings, tiny_model, **LEARNS, evalSamples=4)
    promotion = _complete(rt, config, "run_worse_answers")
    generation = promotion["criteria"]["generation"]
    assert promotion["criteria"]["loss"]["verdict"] == "pass"
    assert (generation["verdict"], generation["drop"]) == ("fail", 1.0)
    assert promotion["decision"] == "rejected" and promotion["decidedBy"] == "generation"


def test_a_fall_in_preference_accuracy_rejects_naming_it(rt, tiny_model, monkeypatch) -> None:
    """Accuracies in the order evaluation measures them (candidate, then base): worse."""
    from worker import evaluate

    measured = iter([0.25, 0.75])
    monkeypatch.setattr(evaluate, "preference_accuracy", lambda chosen, rejected: next(measured))
    _with(rt, **LENIENT)
    promotion = _complete(rt, tiny_config(rt.settings, tiny_model, **LEARNS), "run_worse_pref")
    preference = promotion["criteria"]["preference"]
    assert (preference["candidate"], preference["reference"]) == (0.25, 0.75)
    assert promotion["decision"] == "rejected" and promotion["decidedBy"] == "preference"
    assert rt.runs.get("run_worse_pref").val_pairs == preference["pairs"] > 0
