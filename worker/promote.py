"""After evaluation: the promotion gate, delivery and retention for a published adapter.

See shared/promotion.py for the rule. The reference the candidate must beat is chosen before
evaluation (`reference_adapter`) so that both are scored on the same held-out batches.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from shared.promotion import PROMOTED, SKIPPED, decide
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


def gate_and_deliver(
    settings: Settings,
    adapter_id: str,
    evaluation: dict[str, Any],
    *,
    reference_id: str | None,
    active_before: str | None,
) -> dict[str, Any]:
    """Decide, activate when promoted (only if the active adapter did not change meanwhile),
    export for Ollama when asked, apply retention. Returns the decision (stored by the caller)."""
    registry = AdapterRegistry(settings.lora_output_dir)
    reference_loss = (
        evaluation["reference_val_loss"] if reference_id else evaluation["base_val_loss"]
    )
    promotion = decide(
        candidate_loss=evaluation["adapter_val_loss"],
        reference_loss=reference_loss,
        reference=reference_id or "base model",
        min_delta=settings.promote_min_delta,
        auto_activate=settings.auto_activate,
    )
    if promotion["decision"] == PROMOTED:
        try:
            registry.activate(
                adapter_id,
                action="promote",
                reason=promotion["reason"],
                expect_active=active_before,
            )
        except AdapterConflictError as exc:
            promotion = {**promotion, "decision": SKIPPED, "reason": f"not activated: {exc}"}
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
