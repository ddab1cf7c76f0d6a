"""The promotion gate: may a freshly trained adapter replace the active one?

The rule (documented in the README): on the run's own held-out set, compute the answer-only
validation loss of the candidate adapter and of the reference, which is the active adapter when
one is active for the same base model, else the base model itself. With
`improvement = reference_loss - candidate_loss`, the candidate is promoted when

    FINETUNE_AUTO_ACTIVATE is true
    and improvement > 0
    and improvement >= FINETUNE_PROMOTE_MIN_DELTA

so an equal loss never promotes, and a scheduled run can never make the Proposer worse by this
measure. With FINETUNE_AUTO_ACTIVATE=false the numbers are still computed and stored, and the
decision is `skipped`: a person activates through the API or the CLI.
"""

from __future__ import annotations

from typing import Any

PROMOTED = "promoted"
REJECTED = "rejected"
SKIPPED = "skipped"


def decide(
    *,
    candidate_loss: float,
    reference_loss: float,
    reference: str,
    min_delta: float,
    auto_activate: bool,
) -> dict[str, Any]:
    """The decision and its numbers, as stored on the run and in the manifest (camelCase)."""
    improvement = reference_loss - candidate_loss
    better = improvement > 0 and improvement >= min_delta
    if not auto_activate:
        decision = SKIPPED
        reason = "FINETUNE_AUTO_ACTIVATE=false: activate it by hand if you want it"
    elif better:
        decision = PROMOTED
        reason = f"validation loss improved by {improvement:.4f} (>= {min_delta}) over {reference}"
    else:
        decision = REJECTED
        reason = (
            f"validation loss {candidate_loss:.4f} is not better than {reference}'s "
            f"{reference_loss:.4f} by at least {min_delta}"
        )
    return {
        "decision": decision,
        "reason": reason,
        "reference": reference,
        "candidateValLoss": round(candidate_loss, 6),
        "referenceValLoss": round(reference_loss, 6),
        "improvement": round(improvement, 6),
        "minDelta": min_delta,
        "autoActivate": auto_activate,
    }
