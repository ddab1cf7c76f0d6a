"""FineTuneConfig: the per-run configuration, with the seed's camelCase names.

Defaults come from the settings; a request may override any field. Unknown keys and
out-of-range values are rejected with one message per field, so the API can answer 400
naming each of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from shared.names import BACKENDS
from shared.settings import Settings


class ConfigError(ValueError):
    """One or more fields of a FineTuneConfig are invalid: `errors` maps field -> reason."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__("; ".join(f"{key}: {why}" for key, why in errors.items()))
        self.errors = errors


Check = Callable[[Any], str | None]


def _int(low: int, high: int) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return f"must be an integer between {low} and {high}"
        return None

    return check


def _number(low: float, high: float, *, low_open: bool = False, high_open: bool = False) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return "must be a number"
        too_low = value <= low if low_open else value < low
        too_high = value >= high if high_open else value > high
        if too_low or too_high:
            return f"must be in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        return None

    return check


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) and value.strip() else "must be a non-empty string"


def _backend(value: Any) -> str | None:
    return None if value in BACKENDS else f"must be one of {', '.join(BACKENDS)}"


def _modules(value: Any) -> str | None:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(m, str) and m.isidentifier() for m in value)
    ):
        return "must be a non-empty list of module names such as ['q_proj', 'v_proj']"
    return None


def _optional_steps(value: Any) -> str | None:
    return None if value is None else _int(1, 10_000_000)(value)


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


UNKNOWN_FIELD = "unknown field (GET /api/finetune/config/default lists the allowed ones)"

# camelCase name -> check. Order is the order of the documented config.
CHECKS: dict[str, Check] = {
    "baseModel": _text,
    "backend": _backend,
    "loraRank": _int(1, 1024),
    "loraAlpha": _int(1, 4096),
    "loraDropout": _number(0, 0.9),
    "targetModules": _modules,
    "epochs": _int(1, 1000),
    "maxSteps": _optional_steps,
    "learningRate": _number(0, 1, low_open=True),
    "batchSize": _int(1, 4096),
    "gradAccum": _int(1, 4096),
    "maxSeqLen": _int(16, 1_048_576),
    "minQualityScore": _number(0, 10),
    "valSplit": _number(0, 0.5, low_open=True),
    "seed": _int(0, 2**31 - 1),
    "evalSteps": _int(1, 10_000_000),
    "saveSteps": _int(1, 10_000_000),
    "saveTotalLimit": _int(1, 1000),
    "loggingSteps": _int(1, 10_000_000),
    "packing": _bool,
    "evalSamples": _int(0, 1000),
}


@dataclass(frozen=True)
class FineTuneConfig:
    """A validated run configuration. `values` holds every field of CHECKS."""

    values: Mapping[str, Any]

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.values)


def default_config(settings: Settings) -> dict[str, Any]:
    return {
        "baseModel": settings.base_model,
        "backend": settings.backend,
        "loraRank": settings.lora_rank,
        "loraAlpha": settings.lora_alpha,
        "loraDropout": settings.lora_dropout,
        "targetModules": list(settings.target_modules),
        "epochs": settings.epochs,
        "maxSteps": None,
        "learningRate": settings.learning_rate,
        "batchSize": settings.batch_size,
        "gradAccum": settings.grad_accum,
        "maxSeqLen": settings.max_seq_len,
        "minQualityScore": settings.min_quality,
        "valSplit": settings.val_split,
        "seed": settings.seed,
        "evalSteps": settings.eval_steps,
        "saveSteps": settings.save_steps,
        "saveTotalLimit": settings.save_total_limit,
        "loggingSteps": settings.logging_steps,
        "packing": settings.packing,
        "evalSamples": settings.eval_samples,
    }


def build_config(settings: Settings, overrides: Mapping[str, Any] | None = None) -> FineTuneConfig:
    """Defaults from `settings` plus `overrides`; raise ConfigError naming each bad field."""
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, Mapping):
        raise ConfigError({"config": "must be a JSON object"})
    errors = {key: UNKNOWN_FIELD for key in overrides if key not in CHECKS}
    values = {**default_config(settings), **{k: v for k, v in overrides.items() if k in CHECKS}}
    for key, check in CHECKS.items():
        problem = check(values[key])
        if problem:
            errors[key] = problem
    if errors:
        raise ConfigError(errors)
    return FineTuneConfig(values)
