"""The promotion gate: may a freshly trained adapter replace the active one?

The reference is the active adapter when one is active for the same base model, else the base
model. Candidate and reference are scored per example on the same held-out examples, leaving
out any that either of them trained on (worker/trained_set.py). Four criteria, each recorded
with its numbers under `criteria`; the candidate is promoted only when every one passes:

- `loss`: the paired bootstrap interval of the improvement (reference loss - candidate loss,
  answer-only, token-weighted) at FINETUNE_PROMOTE_CONFIDENCE must have its lower bound at
  least FINETUNE_PROMOTE_MIN_DELTA and above LOSS_RESOLUTION. An adapter equal to its
  reference is never promoted, whatever the minimum: the bound of a zero gain is zero.
- `generation`: exact match on the generated answers (ROUGE-L where no reference has a final
  answer) must not fall more than FINETUNE_PROMOTE_MAX_EM_DROP below the reference's.
- `preference`: with held-out preference pairs, preference accuracy must not fall.
- `drift`: the forgetting probe (worker/probe.py) must not have moved more than
  FINETUNE_PROMOTE_MAX_DRIFT from the base model's own answers to general prompts.

A criterion that could not be measured (no pairs, generation or probe turned off) is `not
measured` and does not block. The first failing criterion, in that order, is `decidedBy` and
its reason is the record's `reason`. With FINETUNE_AUTO_ACTIVATE=false everything is still
computed and stored, and the decision is `skipped`: a person activates through the API or CLI.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

PROMOTED = "promoted"
REJECTED = "rejected"
SKIPPED = "skipped"
PASS, FAIL, NOT_MEASURED = "pass", "fail", "not measured"
# Smaller loss gains (nats/token) are below what a float32/bf16 evaluation resolves: a gain the
# interval puts under it is no gain, so noise in the last digits cannot promote.
LOSS_RESOLUTION = 1e-4
TOLERANCE = 1e-9  # rates compared for "not lower": equal is not a fall


@dataclass(frozen=True)
class GateRules:
    """The settings the gate applies (FINETUNE_PROMOTE_*), and the seed of its resampling."""

    min_delta: float
    confidence: float = 0.95
    resamples: int = 2000
    max_em_drop: float = 0.1
    max_drift: float = 0.5
    auto_activate: bool = True
    seed: int = 0


@dataclass(frozen=True)
class Evidence:
    """What evaluation measured. Losses are per example, summed over its answer tokens, in the
    same order as `tokens`; rates are None where not measured."""

    candidate_losses: Sequence[float]
    reference_losses: Sequence[float]
    tokens: Sequence[int]
    examples_left_out: int = 0
    generation_metric: str | None = None  # "exactMatch" or "rougeL"
    candidate_generation: float | None = None
    reference_generation: float | None = None
    generation_examples: int = 0
    candidate_preference: float | None = None
    reference_preference: float | None = None
    preference_pairs: int = 0
    candidate_probe_loss: float | None = None
    base_probe_loss: float | None = None
    probe_prompts: int = 0
    # False for a reference published before adapters recorded what they trained on: then
    # the examples it trained on cannot be left out
    reference_trained_set_known: bool = True


def _quantile(ordered: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default method)."""
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def paired_bootstrap(
    reference: Sequence[float],
    candidate: Sequence[float],
    tokens: Sequence[int],
    *,
    confidence: float,
    resamples: int,
    seed: int,
) -> tuple[float, float, float]:
    """(improvement, low, high): the token-weighted mean gain of `candidate` over `reference`
    and its percentile interval from `resamples` resamplings of whole examples (paired: one
    example's two losses always move together). Deterministic for a seed."""
    if not len(reference) == len(candidate) == len(tokens) or not tokens:
        raise ValueError(
            f"paired_bootstrap needs the same examples on both sides: got {len(reference)} "
            f"reference, {len(candidate)} candidate and {len(tokens)} token counts"
        )
    gains = [r - c for r, c in zip(reference, candidate, strict=True)]
    point = sum(gains) / max(sum(tokens), 1)
    rng = random.Random(seed)
    indices = range(len(gains))
    statistics = []
    for _ in range(resamples):
        drawn = rng.choices(indices, k=len(gains))
        statistics.append(sum(gains[i] for i in drawn) / max(sum(tokens[i] for i in drawn), 1))
    statistics.sort()
    tail = (1 - confidence) / 2
    return point, _quantile(statistics, tail), _quantile(statistics, 1 - tail)


def _rounded(values: Sequence[float]) -> list[float]:
    return [round(v, 6) for v in values]


def _loss(evidence: Evidence, rules: GateRules) -> dict[str, Any]:
    if not evidence.tokens:
        return {"verdict": FAIL, "why": "no held-out example that neither adapter trained on"}
    point, low, high = paired_bootstrap(
        evidence.reference_losses,
        evidence.candidate_losses,
        evidence.tokens,
        confidence=rules.confidence,
        resamples=rules.resamples,
        seed=rules.seed,
    )
    passed = low >= rules.min_delta and low > LOSS_RESOLUTION
    why = (
        f"validation loss improved by {point:.4f}, {rules.confidence:.0%} interval "
        f"[{low:.4f}, {high:.4f}]"
    )
    if not passed:
        why += f": its lower bound is not above max({rules.min_delta}, {LOSS_RESOLUTION})"
    return {
        "verdict": PASS if passed else FAIL,
        "improvement": round(point, 6),
        "improvementCi": _rounded([low, high]),
        "minDelta": rules.min_delta,
        "why": why,
    }


def _generation(evidence: Evidence, rules: GateRules) -> dict[str, Any]:
    candidate, reference = evidence.candidate_generation, evidence.reference_generation
    if candidate is None or reference is None:
        return {"verdict": NOT_MEASURED, "why": "no generated answers were scored"}
    drop = reference - candidate
    passed = drop <= rules.max_em_drop + TOLERANCE
    return {
        "verdict": PASS if passed else FAIL,
        "metric": evidence.generation_metric,
        "candidate": candidate,
        "reference": reference,
        "drop": round(drop, 6),
        "maxDrop": rules.max_em_drop,
        "examples": evidence.generation_examples,
        "why": f"{evidence.generation_metric} {candidate} vs {reference}: "
        + ("within" if passed else "fell by more than")
        + f" FINETUNE_PROMOTE_MAX_EM_DROP={rules.max_em_drop}",
    }


def _preference(evidence: Evidence) -> dict[str, Any]:
    candidate, reference = evidence.candidate_preference, evidence.reference_preference
    if candidate is None or reference is None:
        return {"verdict": NOT_MEASURED, "why": "no held-out preference pairs"}
    passed = candidate >= reference - TOLERANCE
    return {
        "verdict": PASS if passed else FAIL,
        "candidate": candidate,
        "reference": reference,
        "pairs": evidence.preference_pairs,
        "why": f"preference accuracy {candidate} vs {reference}" + ("" if passed else ": it fell"),
    }


def _drift(evidence: Evidence, rules: GateRules) -> dict[str, Any]:
    candidate, base = evidence.candidate_probe_loss, evidence.base_probe_loss
    if candidate is None or base is None:
        return {"verdict": NOT_MEASURED, "why": "the forgetting probe is off"}
    drift = candidate - base
    passed = drift <= rules.max_drift
    return {
        "verdict": PASS if passed else FAIL,
        "drift": round(drift, 6),
        "maxDrift": rules.max_drift,
        "candidateLoss": round(candidate, 6),
        "baseLoss": round(base, 6),
        "prompts": evidence.probe_prompts,
        "why": f"drift {drift:.4f} nats/token on the general prompts "
        + ("within" if passed else "exceeds")
        + f" FINETUNE_PROMOTE_MAX_DRIFT={rules.max_drift}",
    }


def decide(evidence: Evidence, rules: GateRules, *, reference: str) -> dict[str, Any]:
    """The decision and its numbers, as stored on the run and in the manifest (camelCase)."""
    criteria = {
        "loss": _loss(evidence, rules),
        "generation": _generation(evidence, rules),
        "preference": _preference(evidence),
        "drift": _drift(evidence, rules),
    }
    failed = [name for name, verdict in criteria.items() if verdict["verdict"] == FAIL]
    loss = criteria["loss"]
    if not rules.auto_activate:
        decision, decided_by = SKIPPED, "autoActivate"
        reason = "FINETUNE_AUTO_ACTIVATE=false: activate it by hand if you want it"
    elif failed:
        decision, decided_by = REJECTED, failed[0]
        reason = f"{failed[0]}: {criteria[failed[0]]['why']} (against {reference})"
    else:
        decision, decided_by = PROMOTED, "loss"
        reason = f"{loss['why']} over {reference}; no criterion regressed"
    tokens = max(sum(evidence.tokens), 1)
    return {
        "decision": decision,
        "reason": reason,
        "decidedBy": decided_by,
        "reference": reference,
        "candidateValLoss": round(sum(evidence.candidate_losses) / tokens, 6),
        "referenceValLoss": round(sum(evidence.reference_losses) / tokens, 6),
        "improvement": loss.get("improvement"),
        "improvementCi": loss.get("improvementCi"),
        "confidence": rules.confidence,
        "resamples": rules.resamples,
        "examples": len(evidence.tokens),
        "examplesLeftOut": evidence.examples_left_out,
        "referenceTrainedSetKnown": evidence.reference_trained_set_known,
        "minDelta": rules.min_delta,
        "autoActivate": rules.auto_activate,
        "criteria": criteria,
    }
