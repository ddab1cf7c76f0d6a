"""The promotion gate's rule: a gain its paired interval proves, and no criterion regressed."""

from __future__ import annotations

import random
import statistics

import pytest

from shared.promotion import (
    LOSS_RESOLUTION,
    PROMOTED,
    REJECTED,
    SKIPPED,
    Evidence,
    GateRules,
    decide,
    paired_bootstrap,
)

RULES = GateRules(min_delta=0.01, confidence=0.95, resamples=2000, max_em_drop=0.1, seed=7)


def _evidence(gains: list[float], reference: float = 1.0, **extra: object) -> Evidence:
    """Examples of 10 answer tokens each, the reference at `reference` nats/token."""
    tokens = [10] * len(gains)
    ref = [reference * 10] * len(gains)
    return Evidence(
        candidate_losses=[r - g * 10 for r, g in zip(ref, gains, strict=True)],
        reference_losses=ref,
        tokens=tokens,
        **extra,  # type: ignore[arg-type]
    )


def test_bootstrap_interval_matches_the_normal_approximation_on_known_samples() -> None:
    rng = random.Random(0)
    gains = [rng.gauss(0.2, 0.5) for _ in range(400)]
    tokens = [1] * len(gains)
    point, low, high = paired_bootstrap(
        [g for g in gains], [0.0] * len(gains), tokens, confidence=0.95, resamples=4000, seed=1
    )
    assert point == pytest.approx(statistics.fmean(gains))
    half = 1.96 * statistics.stdev(gains) / len(gains) ** 0.5  # the CLT interval's half-width
    assert low == pytest.approx(point - half, abs=0.2 * half)
    assert high == pytest.approx(point + half, abs=0.2 * half)


def test_bootstrap_is_deterministic_for_a_seed_and_moves_with_it() -> None:
    args = ([1.0, 2.0, 0.5, 3.0, 1.5, 0.2], [0.5, 1.8, 0.7, 2.0, 1.0, 0.9], [3, 4, 2, 5, 3, 1])
    first = paired_bootstrap(*args, confidence=0.9, resamples=500, seed=3)
    assert paired_bootstrap(*args, confidence=0.9, resamples=500, seed=3) == first
    assert paired_bootstrap(*args, confidence=0.9, resamples=500, seed=4) != first


def test_bootstrap_is_token_weighted_like_the_mean_loss() -> None:
    point, low, high = paired_bootstrap([9.0, 1.0], [0.0, 0.0], [9, 1], confidence=0.9,
                                        resamples=200, seed=0)  # fmt: skip
    assert point == pytest.approx(1.0) and low == high == pytest.approx(1.0)


def test_bootstrap_needs_paired_examples() -> None:
    with pytest.raises(ValueError, match="same examples on both sides"):
        paired_bootstrap([1.0], [1.0, 2.0], [1], confidence=0.95, resamples=10, seed=0)


def test_a_clear_gain_is_promoted_with_its_interval() -> None:
    result = decide(
        _evidence([0.2 + 0.01 * (i % 5) for i in range(30)]), RULES, reference="base model"
    )
    assert result["decision"] == PROMOTED and result["decidedBy"] == "loss"
    low, high = result["improvementCi"]
    assert 0.01 <= low <= result["improvement"] <= high
    assert result["examples"] == 30 and result["confidence"] == 0.95
    assert {c["verdict"] for c in result["criteria"].values()} == {"pass", "not measured"}


@pytest.mark.parametrize("min_delta", [0.0, 0.01])
def test_an_equal_adapter_is_never_promoted_whatever_the_minimum(min_delta: float) -> None:
    rules = GateRules(min_delta=min_delta, seed=1)
    result = decide(_evidence([0.0] * 20), rules, reference="base model")
    assert result["decision"] == REJECTED and result["decidedBy"] == "loss"
    assert result["improvementCi"] == [0.0, 0.0]


def test_a_gain_in_the_ninth_decimal_is_no_gain() -> None:
    result = decide(_evidence([1e-9] * 20), GateRules(min_delta=0.0), reference="base model")
    assert result["decision"] == REJECTED and str(LOSS_RESOLUTION) in result["reason"]


def test_noise_around_zero_is_rejected_though_the_mean_gain_is_positive() -> None:
    gains = [0.5, -0.46] * 10  # a mean gain of 0.02, half the examples worse
    result = decide(_evidence(gains), GateRules(min_delta=0.0, seed=2), reference="base model")
    low, _ = result["improvementCi"]
    assert result["improvement"] > 0 and low < 0 and result["decision"] == REJECTED


def test_a_gain_below_the_minimum_delta_is_rejected() -> None:
    result = decide(_evidence([0.005] * 20), RULES, reference="base model")
    assert result["decision"] == REJECTED and "0.01" in result["reason"]


@pytest.mark.parametrize(
    "extra, criterion",
    [
        (
            {"generation_metric": "exactMatch", "candidate_generation": 0.5,
             "reference_generation": 0.75, "generation_examples": 16},
            "generation",
        ),
        ({"candidate_preference": 0.6, "reference_preference": 0.7, "preference_pairs": 10},
         "preference"),
        ({"candidate_probe_loss": 1.9, "base_probe_loss": 1.0, "probe_prompts": 8}, "drift"),
    ],
)  # fmt: skip
def test_a_regression_on_one_criterion_rejects_naming_it(extra: dict, criterion: str) -> None:
    result = decide(_evidence([0.3] * 20, **extra), RULES, reference="run_abc")
    assert result["criteria"]["loss"]["verdict"] == "pass"
    assert result["criteria"][criterion]["verdict"] == "fail"
    assert result["decision"] == REJECTED and result["decidedBy"] == criterion
    assert result["reason"].startswith(criterion) and "run_abc" in result["reason"]


def test_within_the_allowed_drop_and_drift_passes() -> None:
    extra = {
        "generation_metric": "rougeL",
        "candidate_generation": 0.45,
        "reference_generation": 0.5,
        "candidate_preference": 0.8,
        "reference_preference": 0.8,
        "candidate_probe_loss": 1.2,
        "base_probe_loss": 1.0,
    }
    result = decide(_evidence([0.3] * 20, **extra), RULES, reference="base model")
    assert result["decision"] == PROMOTED
    assert result["criteria"]["generation"]["drop"] == pytest.approx(0.05)
    assert result["criteria"]["drift"]["drift"] == pytest.approx(0.2)


def test_no_example_to_judge_on_rejects() -> None:
    result = decide(Evidence([], [], [], examples_left_out=5), RULES, reference="run_abc")
    assert result["decision"] == REJECTED and "neither adapter trained on" in result["reason"]
    assert result["examplesLeftOut"] == 5 and result["improvementCi"] is None


def test_auto_activate_off_records_the_numbers_but_skips() -> None:
    rules = GateRules(min_delta=0, auto_activate=False)
    result = decide(_evidence([0.5] * 10), rules, reference="run_abc")
    assert result["decision"] == SKIPPED and "FINETUNE_AUTO_ACTIVATE" in result["reason"]
    assert result["improvement"] == pytest.approx(0.5) and result["reference"] == "run_abc"
