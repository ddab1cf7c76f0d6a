"""Warm start: a run that continues training the active adapter instead of a fresh one.

`initFrom: "active"` names the active adapter as the run's parent when the run starts, so a
change of the active adapter while it is queued does not change what it continues. The
parent must be intact and trained on the same base model with the same LoRA shape (rank,
alpha, target modules): its weights are loaded as the starting point, and another shape
would not load, or would load with another scale. A mismatch is a ConfigError: 400, naming it.

Scheduled runs continue the active adapter when FINETUNE_INIT_FROM is `active` (the default)
and one is active for their base model with the same shape; otherwise they train from the
base model, as the first run must.
"""

from __future__ import annotations

import logging
from typing import Any

from shared.registry import AdapterError, AdapterRegistry
from shared.run_config import ConfigError, FineTuneConfig
from shared.settings import Settings

log = logging.getLogger(__name__)
INIT_FROM = "initFrom"


def _mismatches(config: FineTuneConfig, parent: dict[str, Any]) -> list[str]:
    trained = parent.get("config") or {}
    wanted = {
        "baseModel": (config.base_model, parent.get("baseModel")),
        "loraRank": (config.lora_rank, trained.get("loraRank")),
        "loraAlpha": (config.lora_alpha, trained.get("loraAlpha")),
        "targetModules": (
            sorted(config.target_modules),
            sorted(trained.get("targetModules") or []),
        ),
    }
    return [
        f"{name} is {mine!r} here but {theirs!r} in {parent['id']}"
        for name, (mine, theirs) in wanted.items()
        if mine != theirs
    ]


def parent_adapter(settings: Settings, config: FineTuneConfig) -> str | None:
    """The adapter a run with `config` continues (None for initFrom "base"); ConfigError
    naming what is wrong when it cannot continue the active one."""
    if config.init_from == "base":
        return None
    registry = AdapterRegistry(settings.lora_output_dir)
    active_id = registry.active_id()
    if active_id is None:
        raise ConfigError(
            {INIT_FROM: 'no adapter is active to continue; use "base" for the first run'}
        )
    try:
        parent = registry.verify(active_id)
    except AdapterError as exc:
        raise ConfigError({INIT_FROM: f"the active adapter cannot be continued: {exc}"}) from None
    problems = _mismatches(config, {**parent, "id": active_id})
    if problems:
        raise ConfigError(
            {
                INIT_FROM: "the active adapter does not fit this run: "
                + "; ".join(problems)
                + ' (change the config to match, or use "base")'
            }
        )
    return active_id


def scheduled_overrides(settings: Settings, config: FineTuneConfig) -> dict[str, Any]:
    """The config a scheduled run adds to the defaults: initFrom "active" where it can."""
    if settings.scheduled_init_from == "base":
        return {}
    warm = config.model_copy(update={"init_from": "active"})
    try:
        parent_adapter(settings, warm)
    except ConfigError as exc:
        log.info("scheduled run trains from the base model: %s", exc)
        return {}
    return {INIT_FROM: "active"}
