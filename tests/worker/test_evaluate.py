"""worker.evaluate on the tiny random model: losses, the reference adapter, generation scores."""

from __future__ import annotations

import json

import pytest

from shared.errors import OutOfMemoryError
from tests.eval_data import VAL_ROWS, run_evaluation
from worker import evaluate, inference

LOSS_KEYS = {"base_val_loss", "adapter_val_loss", "base_perplexity", "adapter_perplexity"}
GENERATION_KEYS = {"base_exact_match", "adapter_exact_match", "base_rouge_l", "adapter_rouge_l"}
ALL_KEYS = (
    LOSS_KEYS
    | GENERATION_KEYS
    | {
        "reference_val_loss",
        "val_examples_evaluated",
        "generation_examples",
        "exact_match_examples",
        "rouge_l_examples",
        "samples",
        "base_preference_accuracy",
        "adapter_preference_accuracy",
        "reference_preference_accuracy",
        "preference_pairs_evaluated",
        "reference_exact_match",
        "reference_rouge_l",
        "val_examples_left_out",
        "per_example",
    }
)
ROW_KEYS = {
    "instruction",
    "reference",
    "base",
    "adapter",
    "baseScore",
    "adapterScore",
    "active",
    "activeScore",
}


def test_losses_and_generation_scores(tiny_model, adapters, val_path) -> None:
    result = run_evaluation(tiny_model, adapters[0], val_path, samples=4, keep_samples=3)
    assert result.keys() == ALL_KEYS
    assert result["val_examples_evaluated"] == len(VAL_ROWS)
    assert result["reference_val_loss"] is None
    assert result["base_val_loss"] != result["adapter_val_loss"]
    assert result["adapter_perplexity"] == pytest.approx(
        2.718281828 ** result["adapter_val_loss"], rel=1e-3
    )
    # The first 4 rows: two with a final answer (#### 7, #### 12), two free-text.
    assert result["generation_examples"] == 4
    assert (result["exact_match_examples"], result["rouge_l_examples"]) == (2, 2)
    for key in GENERATION_KEYS:
        assert 0.0 <= result[key] <= 1.0
    rows = result["samples"]
    assert len(rows) == 3 and all(set(r) == ROW_KEYS for r in rows)
    assert [r["reference"] for r in rows] == [r["output"] for r in VAL_ROWS[:3]]
    assert isinstance(rows[0]["baseScore"]["exactMatch"], bool)
    assert rows[1]["adapterScore"]["exactMatch"] is None
    assert all(0.0 <= r["baseScore"]["rougeL"] <= 1.0 for r in rows)
    json.dumps(result)  # the pipeline stores it as JSON


def test_no_generation_when_samples_is_zero(tiny_model, adapters, val_path) -> None:
    result = run_evaluation(tiny_model, adapters[0], val_path, samples=0)
    assert result["generation_examples"] == 0 and result["samples"] == []
    assert (result["exact_match_examples"], result["rouge_l_examples"]) == (0, 0)
    assert all(result[key] is None for key in GENERATION_KEYS)


def test_preference_accuracy_of_each_model_on_the_held_out_pairs(
    tiny_model, adapters, val_path, tmp_path
) -> None:
    pairs = tmp_path / "val_pairs.jsonl"
    rows = [
        {
            "instruction": r["instruction"],
            "input": r.get("input", ""),
            "chosen": r["output"],
            "rejected": "no idea, sorry",
        }
        for r in VAL_ROWS
    ]
    pairs.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    candidate, other = adapters
    result = run_evaluation(
        tiny_model, candidate, val_path, val_pairs_path=pairs, reference_adapter_dir=other
    )
    assert result["preference_pairs_evaluated"] == len(rows)
    for key in ("base", "adapter", "reference"):
        value = result[f"{key}_preference_accuracy"]
        assert 0 <= value <= 1 and value * len(rows) == pytest.approx(round(value * len(rows)))
    # the same adapter as candidate and reference: the same accuracy
    same = run_evaluation(
        tiny_model, candidate, val_path, val_pairs_path=pairs, reference_adapter_dir=candidate
    )
    assert same["reference_preference_accuracy"] == same["adapter_preference_accuracy"]
    assert same["base_preference_accuracy"] == result["base_preference_accuracy"]


def test_without_pairs_preference_accuracy_is_none(tiny_model, adapters, val_path, tmp_path):
    result = run_evaluation(
        tiny_model, adapters[0], val_path, val_pairs_path=tmp_path / "missing.jsonl"
    )
    assert result["preference_pairs_evaluated"] == 0
    assert result["adapter_preference_accuracy"] is None
    assert result["base_preference_accuracy"] is None


def test_scores_are_none_for_a_kind_of_reference_not_asked(tiny_model, adapters, val_path) -> None:
    result = run_evaluation(tiny_model, adapters[0], val_path, samples=1)  # only "#### 7"
    assert result["exact_match_examples"] == 1 and result["base_exact_match"] in (0.0, 1.0)
    assert result["rouge_l_examples"] == 0
    assert result["base_rouge_l"] is None and result["adapter_rouge_l"] is None


def test_reference_adapter_scored_on_the_same_batches(tiny_model, adapters, val_path) -> None:
    candidate, other = adapters
    alone = run_evaluation(tiny_model, candidate, val_path)
    same = run_evaluation(tiny_model, candidate, val_path, reference_adapter_dir=candidate)
    different = run_evaluation(tiny_model, candidate, val_path, reference_adapter_dir=other)
    assert same["reference_val_loss"] == pytest.approx(same["adapter_val_loss"], abs=1e-6)
    assert different["reference_val_loss"] != pytest.approx(different["adapter_val_loss"])
    # Loading a second adapter changes neither the candidate's nor the base model's loss.
    for key in ("adapter_val_loss", "base_val_loss"):
        assert different[key] == pytest.approx(alone[key], abs=1e-6)
    # The other adapter, evaluated as the candidate, gives the loss it had as the reference.
    swapped = run_evaluation(tiny_model, other, val_path)
    assert swapped["adapter_val_loss"] == pytest.approx(different["reference_val_loss"], abs=1e-6)


def test_batched_generation_matches_one_by_one(tiny_model, adapters, val_path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapters[0])
    model = evaluate._load_model(tiny_model, adapters[0], None)
    config = inference.greedy_config(model, tokenizer, 12)
    options = {"device": "cpu", "config": config}
    batched = inference.generate(model, tokenizer, VAL_ROWS, batch_size=5, **options)
    single = inference.generate(model, tokenizer, VAL_ROWS, batch_size=1, **options)
    assert batched == single
    assert len(batched) == len(VAL_ROWS) and any(batched)


def test_greedy_config_stops_at_eos_and_bounds_length(tiny_model, adapters) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapters[0])
    model = evaluate._load_model(tiny_model, adapters[0], None)
    config = inference.greedy_config(model, tokenizer, 7)
    assert config.do_sample is False and config.max_new_tokens == 7
    assert tokenizer.eos_token_id in config.eos_token_id


def test_missing_reference_adapter_is_a_clear_error(tiny_model, adapters, val_path, tmp_path):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        run_evaluation(tiny_model, adapters[0], val_path, reference_adapter_dir=tmp_path / "nope")


def test_negative_samples_rejected(tiny_model, adapters, val_path) -> None:
    with pytest.raises(ValueError, match="FINETUNE_EVAL_SAMPLES"):
        run_evaluation(tiny_model, adapters[0], val_path, samples=-1)


def test_out_of_memory_maps_to_the_pipeline_error(tiny_model, adapters, val_path, monkeypatch):
    import torch

    def boom(*_args: object, **_kwargs: object) -> float:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(evaluate, "example_losses", boom)
    with pytest.raises(OutOfMemoryError, match="during evaluation") as caught:
        run_evaluation(tiny_model, adapters[0], val_path)
    assert caught.value.code == "OOM"
