"""The gate after evaluation: activation only for a better adapter, against the right reference,
never over a change made meanwhile; retention afterwards."""

from __future__ import annotations

import pytest

from shared.promotion import Evidence
from shared.registry import AdapterRegistry
from shared.settings import Settings
from tests.adapters import make_adapter
from worker.promote import evidence, gate_and_deliver, reference_adapter


def _evaluation(adapter: float, base: float = 1.0, reference: float | None = None) -> Evidence:
    """Ten held-out examples of 10 tokens each, every one at the given losses per token."""
    per_example = {
        "tokens": [10] * 10,
        "adapter": [adapter * 10] * 10,
        "base": [base * 10] * 10,
        "reference": None if reference is None else [reference * 10] * 10,
    }
    return evidence({"exact_match_examples": 0}, per_example)


@pytest.fixture
def registry(settings: Settings) -> AdapterRegistry:
    make_adapter(settings.lora_output_dir, "run_000001", created="2026-11-01T00:00:00Z")
    make_adapter(settings.lora_output_dir, "run_000002", created="2026-11-02T00:00:00Z")
    return AdapterRegistry(settings.lora_output_dir)


@pytest.mark.parametrize(
    "adapter_loss, decision, active",
    [(0.5, "promoted", "run_000002"), (1.0, "rejected", None), (1.5, "rejected", None)],
)
def test_against_the_base_model_when_none_is_active(
    settings: Settings, registry: AdapterRegistry, adapter_loss: float, decision: str, active
) -> None:  # noqa: ANN001
    result = gate_and_deliver(
        settings, "run_000002", _evaluation(adapter_loss), reference_id=None, active_before=None
    )
    assert result["decision"] == decision and result["reference"] == "base model"
    assert registry.active_id() == active
    assert registry.get("run_000002")["promotion"] == result  # recorded in the manifest


def test_against_the_active_adapter(settings: Settings, registry: AdapterRegistry) -> None:
    registry.activate("run_000001")
    # better than the base model, but not than the active adapter: stays where it is
    result = gate_and_deliver(
        settings,
        "run_000002",
        _evaluation(0.6, base=1.0, reference=0.55),
        reference_id="run_000001",
        active_before="run_000001",
    )
    assert (result["decision"], result["referenceValLoss"]) == ("rejected", 0.55)
    assert registry.active_id() == "run_000001"
    result = gate_and_deliver(
        settings,
        "run_000002",
        _evaluation(0.4, reference=0.55),
        reference_id="run_000001",
        active_before="run_000001",
    )
    assert result["decision"] == "promoted" and registry.active_id() == "run_000002"
    assert registry.state()["history"][-1]["action"] == "promote"


def test_a_change_made_during_evaluation_wins(
    settings: Settings, registry: AdapterRegistry
) -> None:
    registry.activate("run_000001")  # by a person, while run_000002 was being evaluated
    result = gate_and_deliver(
        settings, "run_000002", _evaluation(0.1), reference_id=None, active_before=None
    )
    assert result["decision"] == "skipped" and "changed" in result["reason"]
    assert registry.active_id() == "run_000001"


def test_auto_activate_off(settings: Settings, registry: AdapterRegistry) -> None:
    settings = settings.replace(auto_activate=False)
    result = gate_and_deliver(
        settings, "run_000002", _evaluation(0.1), reference_id=None, active_before=None
    )
    assert result["decision"] == "skipped" and registry.active_id() is None


def test_retention_runs_after_the_gate(settings: Settings, registry: AdapterRegistry) -> None:
    make_adapter(settings.lora_output_dir, "run_000003", created="2026-11-03T00:00:00Z")
    gate_and_deliver(
        settings.replace(lora_keep=1),
        "run_000003",
        _evaluation(2.0),
        reference_id=None,
        active_before=None,
    )
    assert registry.ids() == ["run_000003"]


def test_reference_is_the_active_adapter_of_the_same_base_model(
    settings: Settings, registry: AdapterRegistry
) -> None:
    assert reference_adapter(registry, "smollm2:135m") == (None, None)
    registry.activate("run_000001")
    adapter_id, path = reference_adapter(registry, "smollm2:135m")
    assert adapter_id == "run_000001" and path == settings.lora_output_dir / "run_000001"
    assert reference_adapter(registry, "qwen3:8b") == (None, None)  # another base model
    (path / "adapter_config.json").write_text("{}")  # tampered: not trusted as a reference
    assert reference_adapter(registry, "smollm2:135m") == (None, None)


def test_evidence_compares_with_the_reference_adapter_where_one_was_scored() -> None:
    figures = {
        "exact_match_examples": 4,
        "adapter_exact_match": 0.5,
        "base_exact_match": 0.25,
        "reference_exact_match": 0.75,
        "adapter_preference_accuracy": 0.9,
        "base_preference_accuracy": 0.5,
        "reference_preference_accuracy": 0.8,
        "preference_pairs_evaluated": 10,
        "adapter_probe_loss": 1.3,
        "base_probe_loss": 1.1,
        "probe_prompts": 8,
        "val_examples_left_out": 2,
    }
    per_example = {"tokens": [5], "adapter": [1.0], "base": [3.0], "reference": [2.0]}
    found = evidence(figures, per_example)
    assert (found.reference_losses, found.reference_generation) == ([2.0], 0.75)
    assert (found.generation_metric, found.generation_examples) == ("exactMatch", 4)
    assert (found.reference_preference, found.base_probe_loss) == (0.8, 1.1)
    assert found.examples_left_out == 2
    against_base = evidence(figures, {**per_example, "reference": None})
    assert (against_base.reference_losses, against_base.reference_generation) == ([3.0], 0.25)
    assert against_base.reference_preference == 0.5


def test_evidence_falls_back_to_rouge_l_then_to_not_measured() -> None:
    per_example = {"tokens": [5], "adapter": [1.0], "base": [3.0], "reference": None}
    rouge = {"rouge_l_examples": 3, "adapter_rouge_l": 0.4, "base_rouge_l": 0.3}
    found = evidence(rouge, per_example)
    assert (found.generation_metric, found.candidate_generation) == ("rougeL", 0.4)
    assert evidence({}, per_example).candidate_generation is None
