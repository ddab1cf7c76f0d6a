"""The typed parts of manifest.json (seed §6.1): its metrics and its config.

The worker computes metrics under the seed's §5.1 snake_case names (`final_val_loss`); the
manifest and the API show them in camelCase (`finalValLoss`). The aliases of this model are
that mapping, so no hand table has to be kept in step with it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from shared.run_config import FineTuneConfig

# The run-config fields a manifest records: how the adapter was trained, not how data was chosen.
MANIFEST_CONFIG_FIELDS = (
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "target_modules",
    "learning_rate",
    "batch_size",
    "grad_accum",
    "epochs",
    "max_steps",
    "max_seq_len",
    "seed",
    "objective",
    "dpo_beta",
    "dpo_epochs",
    "dpo_max_steps",
    "dpo_learning_rate",
)


class ManifestMetrics(BaseModel):
    """Training and evaluation figures of one adapter; a metric not measured is left out."""

    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=True, serialize_by_alias=True, extra="ignore"
    )

    final_train_loss: float | None = None
    final_val_loss: float | None = None
    best_val_loss: float | None = None
    total_steps: int | None = None
    training_time_seconds: float | None = None
    peak_vram_gb: float | None = None
    peak_ram_gb: float | None = None
    base_val_loss: float | None = None
    adapter_val_loss: float | None = None
    base_perplexity: float | None = None
    adapter_perplexity: float | None = None
    tokens_per_second: float | None = None
    train_tokens: int | None = None
    reference_val_loss: float | None = None
    generation_examples: int | None = None
    base_exact_match: float | None = None
    adapter_exact_match: float | None = None
    exact_match_examples: int | None = None
    base_rouge_l: float | None = None
    adapter_rouge_l: float | None = None
    rouge_l_examples: int | None = None
    # preference training (objective dpo or sft+dpo) and its held-out evaluation
    sft_total_steps: int | None = None
    dpo_total_steps: int | None = None
    dpo_final_train_loss: float | None = None
    dpo_best_val_loss: float | None = None
    dpo_rewards_margins: float | None = None
    dpo_rewards_accuracies: float | None = None
    base_preference_accuracy: float | None = None
    adapter_preference_accuracy: float | None = None
    reference_preference_accuracy: float | None = None
    preference_pairs_evaluated: int | None = None
    # the promotion gate's other evidence (shared/promotion.py)
    reference_exact_match: float | None = None
    reference_rouge_l: float | None = None
    val_examples_evaluated: int | None = None
    val_examples_left_out: int | None = None
    probe_prompts: int | None = None
    base_probe_loss: float | None = None
    adapter_probe_loss: float | None = None
    probe_drift: float | None = None


def manifest_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """The seed §5.1 metrics a run produced, under the manifest's names (unknown ones dropped)."""
    return ManifestMetrics.model_validate(metrics).model_dump(mode="json", exclude_unset=True)


def manifest_config(config: FineTuneConfig) -> dict[str, Any]:
    """The training part of the run config, camelCase, as manifest.json records it."""
    return config.model_dump(mode="json", include=set(MANIFEST_CONFIG_FIELDS))
