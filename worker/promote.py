"""After evaluation: the promotion gate, delivery and retention for a published adapter.

See shared/promotion.py for the rule. The reference the candidate must beat is chosen before
evaluation (`reference_adapter`) so that both are scored on the same held-out batches;
`evidence` turns evaluate_adapter's figures into what the gate decides on.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from shared.promotion import PROMOTED, SKIPPED, Evidence, GateRules, decide
from shared.registry import AdapterConflictError, AdapterError, AdapterRegistry
from shared.settings import Settings

log = logging.getLogger(__name__)


def reference_adapter(registry: AdapterRegistry, base_model: str) -> tuple[str | None, Path | None]:
    """The active adapter when it is for the same base model and intact, else (None, None):
    then the base model is the reference."""
    try:
        active = registry.active()
        if active is None or active.get("baseModel") != base_model:
            return None, None
        registry.verify(active["id"])
    except AdapterError as exc:
        log.warning("the active adapter cannot be the reference (%s); using the base model", exc)
        return None, None
    return active["id"], Path(active["path"])


def evidence(
    evaluation: dict[str, Any],
    per_example: dict[str, Any],
    *,
    reference_trained_set_known: bool = True,
) -> Evidence:
    """The gate's evidence from evaluate_adapter's figures: against the reference adapter
    where one was scored, else against the base model."""
    against = "reference" if per_example.get("reference") is not None else "base"
    if evaluation.get("exact_match_examples"):
        metric, key = "exactMatch", "exact_match"
    elif evaluation.get("rouge_l_examples"):
        metric, key = "rougeL", "rouge_l"
    else:
        metric, key = None, None
    return Evidence(
        candidate_losses=per_example["adapter"],
        reference_losses=per_example[against],
        tokens=per_example["tokens"],
        examples_left_out=evaluation.get("val_examples_left_out") or 0,
        generation_metric=metric,
        candidate_generation=evaluation.get(f"adapter_{key}") if key else None,
        reference_generation=evaluation.get(f"{against}_{key}") if key else None,
        generation_examples=evaluation.get(f"{key}_examples") or 0 if key else 0,
        candidate_preference=evaluation.get("adapter_preference_accuracy"),
        reference_preference=evaluation.get(f"{against}_preference_accuracy"),
        preference_pairs=evaluation.get("preference_pairs_evaluated") or 0,
        candidate_probe_loss=evaluation.get("adapter_probe_loss"),
        base_probe_loss=evaluation.get("base_probe_loss"),
        probe_prompts=evaluation.get("probe_prompts") or 0,
        reference_trained_set_known=reference_trained_set_known,
    )


def rules(settings: Settings, seed: int) -> GateRules:
    return GateRules(
        min_delta=settings.promote_min_delta,
        confidence=settings.promote_confidence,
        resamples=settings.promote_resamples,
        max_em_drop=settings.promote_max_em_drop,
        max_drift=settings.promote_max_drift,
        auto_activate=settings.auto_activate,
        seed=seed,
    )


def gate_and_deliver(
    settings: Settings,
    adapter_id: str,
    evidence: Evidence,
    *,
    reference_id: str | None,
    active_before: str | None,
    seed: int = 0,
) -> dict[str, Any]:
    """Decide, activate when promoted (only if the active adapter did not change meanwhile),
    export for Ollama when asked, apply retention. Returns the decision (stored by the caller)."""
    registry = AdapterRegistry(settings.lora_output_dir)
    promotion = decide(evidence, rules(settings, seed), reference=reference_id or "base model")
    if promotion["decision"] == PROMOTED:
        try:
            registry.activate(
                adapter_id,
                action="promote",
                reason=promotion["reason"],
                expect_active=active_before,
            )
        except AdapterConflictError as exc:
            promotion = {
                **promotion,
                "decision": SKIPPED,
                "decidedBy": "conflict",
                "reason": f"not activated: {exc}",
            }
    registry.update_manifest(adapter_id, promotion=promotion)
    if promotion["decision"] == PROMOTED and settings.ollama_export:
        promotion["ollamaExport"] = _export_for_ollama(settings, adapter_id)
    removed = registry.prune(settings.lora_keep)
    if removed:
        log.info("retention (LORA_KEEP=%d) deleted adapters %s", settings.lora_keep, removed)
    return promotion


def _export_for_ollama(settings: Settings, adapter_id: str) -> dict[str, Any]:
    """A failed export is reported, not fatal: the adapter itself is good and active."""
    from worker.delivery import export_gguf

    try:
        result = export_gguf(settings, adapter_id)
    except Exception as exc:  # noqa: BLE001 - recorded on the run; the PEFT adapter is served
        log.error("GGUF export of %s failed: %s", adapter_id, exc)
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, "path": result["path"], "modelfile": result["modelfile"]}
