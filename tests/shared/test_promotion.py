"""The promotion gate's rule: strictly better by at least the minimum delta, or not at all."""

from __future__ import annotations

import pytest

from shared.promotion import PROMOTED, REJECTED, SKIPPED, decide


@pytest.mark.parametrize(
    "candidate, reference, min_delta, expected",
    [
        (0.80, 1.00, 0.01, PROMOTED),  # better by 0.2
        (1.20, 1.00, 0.01, REJECTED),  # worse
        (1.00, 1.00, 0.0, REJECTED),  # equal never promotes, even with no minimum
        (0.995, 1.00, 0.01, REJECTED),  # better, but by less than the minimum
        (0.99, 1.00, 0.01, PROMOTED),  # exactly the minimum
    ],
)
def test_rule(candidate: float, reference: float, min_delta: float, expected: str) -> None:
    result = decide(
        candidate_loss=candidate,
        reference_loss=reference,
        reference="base model",
        min_delta=min_delta,
        auto_activate=True,
    )
    assert result["decision"] == expected
    assert result["improvement"] == pytest.approx(reference - candidate)
    assert (result["candidateValLoss"], result["referenceValLoss"]) == (candidate, reference)


def test_auto_activate_off_records_the_numbers_but_skips() -> None:
    result = decide(
        candidate_loss=0.5,
        reference_loss=1.0,
        reference="run_abc",
        min_delta=0,
        auto_activate=False,
    )
    assert result["decision"] == SKIPPED and "FINETUNE_AUTO_ACTIVATE" in result["reason"]
    assert result["improvement"] == 0.5 and result["reference"] == "run_abc"
