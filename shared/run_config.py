"""FineTuneConfig: the per-run configuration, the only definition of it.

snake_case attributes inside the service, the seed's camelCase names on the wire (HTTP bodies,
the stored run, training_args.json, manifest.json) through the aliases. The same model
validates POST /api/finetune, generates the OpenAPI schema and the `train` CLI's flags, and is
what a TrainJob carries. Defaults come from the settings (the environment); a request may
override any field. Unknown keys and bad values are rejected with one message per field, so the
API can answer 400 naming each of them:

    >>> from shared.settings import Settings
    >>> build_config(Settings(), {"loraRank": 0}).lora_rank
    Traceback (most recent call last):
    ...
    shared.run_config.ConfigError: loraRank: must be an integer between 1 and 1024
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from shared import fields as f
from shared.settings import Settings

UNKNOWN_FIELD = "unknown field (GET /api/finetune/config/default lists the allowed ones)"

# The run-config field -> the setting that supplies its default, where the names differ.
SETTING_FOR = {"min_quality_score": "min_quality"}


class ConfigError(ValueError):
    """One or more fields of a FineTuneConfig are invalid: `errors` maps field -> reason."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{key}: {why}" for key, why in errors.items()))
        self.errors = errors


def _from_setting(settings: Settings, name: str, fallback: Any = None) -> Any:
    """What the setting behind config field `name` holds (a list where the setting is a
    tuple); `fallback` for a field no setting supplies."""
    value = getattr(settings, SETTING_FOR.get(name, name), fallback)
    return list(value) if isinstance(value, tuple) else value


_BUILT_IN = Settings.model_construct()  # the built-in defaults, without reading the environment


def _field(name: str, description: str) -> Any:
    """A field whose documented default is the setting's built-in default."""
    return Field(default=_from_setting(_BUILT_IN, name), description=description)


class FineTuneConfig(BaseModel):
    """A validated run configuration (strict: `"8"` is not an integer, `1` is not `true`)."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_alias=True,
        validate_by_name=False,  # the API speaks camelCase only: `lora_rank` is unknown there
        serialize_by_alias=True,
        extra="forbid",
        strict=True,
        frozen=True,
    )

    base_model: f.NonEmptyText = _field("base_model", "Base model: Ollama tag, HF id or path")
    backend: f.Backend = _field("backend", "Training backend (auto: unsloth on CUDA, else trl)")
    lora_rank: f.LoraRank = _field("lora_rank", "LoRA rank r")
    lora_alpha: f.LoraAlpha = _field("lora_alpha", "LoRA alpha (scale = alpha / r)")
    lora_dropout: f.LoraDropout = _field("lora_dropout", "Dropout on the LoRA input")
    target_modules: f.ModuleNames = _field("target_modules", "Modules that get a LoRA")
    epochs: f.Epochs = _field("epochs", "Passes over the training examples")
    max_steps: f.Steps | None = Field(
        default=None, description="Stop after this many optimizer steps (null: epochs decide)"
    )
    learning_rate: f.LearningRate = _field("learning_rate", "Peak learning rate")
    batch_size: f.BatchSize = _field("batch_size", "Examples (rows) per device step")
    grad_accum: f.BatchSize = _field("grad_accum", "Steps accumulated per optimizer step")
    max_seq_len: f.SeqLen = _field("max_seq_len", "Tokens per example or packed row")
    min_quality_score: f.QualityScore = _field("min_quality_score", "Traces below are skipped")
    val_split: f.ValSplit = _field("val_split", "Share of questions held out for validation")
    seed: f.Seed = _field("seed", "Seed of the split and of training")
    eval_steps: f.Steps = _field("eval_steps", "Evaluate every N optimizer steps")
    save_steps: f.Steps = _field("save_steps", "Checkpoint every N optimizer steps")
    save_total_limit: f.CheckpointsKept = _field("save_total_limit", "Checkpoints kept")
    logging_steps: f.Steps = _field("logging_steps", "A progress event every N steps")
    packing: bool = _field("packing", "Pack short examples into full rows")
    eval_samples: f.EvalSamples = _field("eval_samples", "Held-out answers generated (EM/ROUGE)")
    objective: f.Objective = _field(
        "objective", "sft, dpo, or sft+dpo (SFT, then DPO continuing the same adapter)"
    )
    dpo_beta: f.DpoBeta = _field("dpo_beta", "DPO beta: higher keeps closer to the reference")
    dpo_epochs: f.Epochs = _field("dpo_epochs", "Passes over the preference pairs (DPO stage)")
    dpo_learning_rate: f.LearningRate = _field("dpo_learning_rate", "Peak learning rate of DPO")
    dpo_max_steps: f.Steps | None = Field(
        default=None, description="Stop the DPO stage after this many optimizer steps"
    )
    max_pairs_per_prompt: f.PairsPerPrompt | None = Field(
        default=None, description="Preference pairs kept per instruction (null: all)"
    )
    # Not from a setting: FINETUNE_INIT_FROM decides for scheduled runs (shared/warm_start.py),
    # and a run asked for by hand starts fresh unless it says otherwise.
    init_from: f.InitFrom = Field(
        default="base",
        description="base: a fresh adapter; active: continue the active adapter on the traces "
        "it has not trained on, plus FINETUNE_REPLAY_RATIO older ones per new one",
    )

    @property
    def stages(self) -> tuple[str, ...]:
        """The training stages, in order: ("sft",), ("dpo",) or ("sft", "dpo")."""
        return tuple(self.objective.split("+"))

    @property
    def needs_pairs(self) -> bool:
        return "dpo" in self.stages

    def to_dict(self) -> dict[str, Any]:
        """The camelCase form that is stored, sent and written to training_args.json."""
        return self.model_dump(mode="json")


FIELDS = FineTuneConfig.model_fields


def default_config(settings: Settings) -> dict[str, Any]:
    """Every field with its default from `settings`, camelCase, in the documented order."""
    return {
        info.alias or name: _from_setting(settings, name, info.default)
        for name, info in FIELDS.items()
    }


def build_config(settings: Settings, overrides: Mapping[str, Any] | None = None) -> FineTuneConfig:
    """Defaults from `settings` plus `overrides`; raise ConfigError naming each bad field."""
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, Mapping):
        raise ConfigError({"config": "must be a JSON object"})
    try:
        return FineTuneConfig.model_validate({**default_config(settings), **overrides})
    except ValidationError as exc:
        raise ConfigError(f.field_errors(exc, FIELDS, unknown=UNKNOWN_FIELD)) from None


def markdown_table() -> str:
    """The README's run-config table, generated: `python -m shared.run_config` prints it."""
    lines = ["| field | default | allowed | meaning |", "|---|---|---|---|"]
    for name, info in FIELDS.items():
        setting = Settings.model_fields.get(SETTING_FOR.get(name, name))
        default = (
            f"`{json.dumps(info.default)}`" if setting is None else f"`{setting.validation_alias}`"
        )
        allowed = f.allowed(info).removeprefix("must be ")
        lines.append(f"| `{info.alias}` | {default} | {allowed} | {info.description} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(markdown_table() + "\n")
