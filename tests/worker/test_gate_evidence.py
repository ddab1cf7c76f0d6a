"""What evaluation measures for the promotion gate, on the tiny random model: per-example
losses, held-out rows left out, the reference adapter's answers and the forgetting probe."""

from __future__ import annotations

import json

import pytest

from tests.eval_data import VAL_ROWS, run_evaluation
from worker import trained_set
from worker.probe import drift
from worker.probe.drift import ProbeSpec


def test_per_example_losses_add_up_to_the_mean_loss(tiny_model, adapters, val_path) -> None:
    result = run_evaluation(tiny_model, adapters[0], val_path, reference_adapter_dir=adapters[1])
    each = result["per_example"]
    assert len(each["tokens"]) == len(VAL_ROWS) and all(t > 0 for t in each["tokens"])
    for model in ("adapter", "base", "reference"):
        mean = sum(each[model]) / sum(each["tokens"])
        assert mean == pytest.approx(result[f"{model}_val_loss"], abs=1e-5)


def test_rows_a_compared_adapter_trained_on_are_left_out(tiny_model, adapters, val_path) -> None:
    trained = {trained_set.key(VAL_ROWS[0]["instruction"]), trained_set.key("not held out")}
    result = run_evaluation(tiny_model, adapters[0], val_path, exclude=trained, samples=5)
    assert (result["val_examples_evaluated"], result["val_examples_left_out"]) == (4, 1)
    assert len(result["per_example"]["tokens"]) == 4
    asked = [row["instruction"] for row in result["samples"]]
    assert VAL_ROWS[0]["instruction"] not in asked and len(asked) == 4


def test_the_reference_adapter_answers_the_same_questions(tiny_model, adapters, val_path) -> None:
    candidate, other = adapters
    result = run_evaluation(tiny_model, candidate, val_path, reference_adapter_dir=other, samples=4)
    assert result["reference_exact_match"] is not None and result["reference_rouge_l"] is not None
    assert all(isinstance(row["active"], str) for row in result["samples"])
    assert all(set(row["activeScore"]) == {"exactMatch", "rougeL"} for row in result["samples"])
    same = run_evaluation(
        tiny_model, candidate, val_path, reference_adapter_dir=candidate, samples=4
    )
    assert [r["active"] for r in same["samples"]] == [r["adapter"] for r in same["samples"]]
    alone = run_evaluation(tiny_model, candidate, val_path, samples=2)
    assert alone["reference_exact_match"] is None
    assert [r["active"] for r in alone["samples"]] == [None, None]


def test_the_probe_measures_drift_and_caches_the_base_answers(
    tiny_model, adapters, val_path, tmp_path, monkeypatch
) -> None:
    spec = ProbeSpec(prompts=6, max_new_tokens=8, cache_dir=tmp_path / "models")
    result = run_evaluation(tiny_model, adapters[0], val_path, probe=spec)
    assert result["probe_prompts"] == 6
    assert result["probe_drift"] == pytest.approx(
        result["adapter_probe_loss"] - result["base_probe_loss"], abs=1e-6
    )
    assert result["probe_drift"] > 0  # a random adapter moves away from the base's own answers
    cached = drift.cache_path(tiny_model, spec)
    rows = [json.loads(line) for line in cached.read_text().splitlines()]
    assert [r["domain"] for r in rows[:4]] == ["writing", "facts", "code", "reasoning"]

    def no_generation(*args: object, **kwargs: object) -> None:
        raise AssertionError("the base model's probe answers must come from the cache")

    monkeypatch.setattr(drift, "generate", no_generation)
    again = run_evaluation(tiny_model, adapters[1], val_path, probe=spec)
    assert again["base_probe_loss"] == result["base_probe_loss"]
    assert again["adapter_probe_loss"] != result["adapter_probe_loss"]


def test_an_adapter_that_changes_nothing_has_no_drift(tiny_model, val_path, tmp_path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path / "zero"
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),  # B = 0
    )
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    spec = ProbeSpec(prompts=4, max_new_tokens=8, cache_dir=tmp_path / "models")
    result = run_evaluation(tiny_model, folder, val_path, probe=spec)
    assert result["probe_drift"] == pytest.approx(0.0, abs=1e-6)
    assert result["adapter_val_loss"] == pytest.approx(result["base_val_loss"], abs=1e-6)


def test_another_prompt_count_is_another_cache_entry(tiny_model, tmp_path) -> None:
    first = drift.cache_path(tiny_model, ProbeSpec(4, 8, tmp_path))
    assert first != drift.cache_path(tiny_model, ProbeSpec(5, 8, tmp_path))
    assert first != drift.cache_path(tiny_model, ProbeSpec(4, 9, tmp_path))
    assert first.parent == tmp_path / "probes"
    assert len(drift.load_prompts(240)) == 240 and len(drift.load_prompts(3)) == 3


def test_with_every_row_left_out_there_is_no_loss_and_no_promotion(
    tiny_model, adapters, val_path
) -> None:
    from shared.promotion import decide
    from shared.settings import Settings
    from worker.promote import evidence, rules

    everything = {trained_set.key(row["instruction"]) for row in VAL_ROWS}
    result = run_evaluation(tiny_model, adapters[0], val_path, exclude=everything, samples=2)
    assert result["val_examples_left_out"] == len(VAL_ROWS)
    assert result["adapter_val_loss"] is None and result["adapter_perplexity"] is None
    per_example = result.pop("per_example")
    promotion = decide(evidence(result, per_example), rules(Settings(), 0), reference="run_a")
    assert promotion["decision"] == "rejected" and promotion["examplesLeftOut"] == len(VAL_ROWS)
    assert "neither adapter trained on" in promotion["reason"]
