"""Delivery to the serving stack: an adapter as a GGUF LoRA plus an Ollama Modelfile.

The files go to `<adapter>/exports/gguf/` (outside the adapter's sealed sha256) and the result
is recorded in the manifest under `exports.gguf`, so the registry can show what was delivered.

    ollama create proposer-tuned -f data/lora-adapters/<id>/exports/gguf/Modelfile
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.registry import EXPORTS_DIR, AdapterRegistry
from shared.settings import Settings


def gguf_dir(registry: AdapterRegistry, adapter_id: str) -> Path:
    return registry.path(adapter_id) / EXPORTS_DIR / "gguf"


def export_gguf(settings: Settings, adapter_id: str) -> dict[str, Any]:
    """Verify the adapter, write its GGUF LoRA + Modelfile, record it in the manifest."""
    from worker.gguf_export import export_adapter_gguf
    from worker.training.models import resolve_model

    registry = AdapterRegistry(settings.lora_output_dir)
    manifest = registry.verify(adapter_id)
    base = manifest["baseModel"]
    result = export_adapter_gguf(
        registry.path(adapter_id),
        resolve_model(base, settings.model_cache_dir),
        gguf_dir(registry, adapter_id),
        ollama_base=base,
    )
    exports = {**(manifest.get("exports") or {}), "gguf": result}
    registry.update_manifest(adapter_id, exports=exports)
    return result
