"""A warm-started run's parent adapter, and what each adapter trained on.

A run with initFrom "active" records its parent when it starts (shared/warm_start.py). Its
export leaves out what the parent trained on (but a replay sample), its training starts from
the parent's weights, and its evaluation leaves out the held-out examples that the candidate,
its parent or the reference trained on (worker/trained_set.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

from shared.errors import PipelineError
from shared.models import FineTuneRun
from shared.registry import AdapterError, AdapterRegistry
from shared.settings import Settings
from worker import trained_set

log = logging.getLogger(__name__)


def parent_dir(settings: Settings, parent: str) -> Path:
    """The published folder of the adapter a warm-started run continues, verified."""
    registry = AdapterRegistry(settings.lora_output_dir)
    try:
        registry.verify(parent)
    except AdapterError as exc:
        raise PipelineError(
            f"Cannot continue adapter {parent}: {exc}",
            suggestion='start the run again with initFrom "base", or restore the adapter',
        ) from exc
    return registry.path(parent)


def parent_keys(settings: Settings, parent: str) -> set[bytes]:
    """What the parent trained on; empty (every trace is new to it) for an adapter published
    before adapters recorded it."""
    keys = trained_set.read(parent_dir(settings, parent))
    if keys is None:
        log.warning("adapter %s has no %s: treating every trace as new", parent, trained_set.FILE)
    return keys or set()


def trained_sets(
    settings: Settings, run: FineTuneRun, export_dir: Path, reference_dir: Path | None
) -> tuple[set[bytes], set[bytes], bool]:
    """(what the candidate trained on, what neither candidate nor reference may be judged on,
    whether the reference's training set is known). The candidate's includes its parent's:
    a warm start carries on weights that saw it."""
    candidate = trained_set.keys_of(export_dir / "train.jsonl")
    candidate |= trained_set.keys_of(export_dir / "train_pairs.jsonl")
    if run.parent_adapter:  # verified by the export and training steps: read it only
        folder = AdapterRegistry(settings.lora_output_dir).path(run.parent_adapter)
        candidate |= trained_set.read(folder) or set()
    reference = trained_set.read(reference_dir) if reference_dir is not None else set()
    return candidate, candidate | (reference or set()), reference is not None
