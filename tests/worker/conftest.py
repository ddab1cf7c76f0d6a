"""Fixtures for worker tests: an exported dataset on disk."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.settings import Settings


@pytest.fixture
def export_dir(trace_store, settings: Settings) -> Path:
    from worker.export import export_traces

    out = settings.temp_dir / "run_test"
    export_traces(trace_store, min_quality=8.0, output_dir=out, val_split=0.2, seed=1)
    return out


def tiny_config(settings: Settings, model: Path, **overrides: object) -> dict:
    from shared.run_config import build_config

    values = {
        "baseModel": str(model),
        "backend": "trl",
        "maxSteps": 4,
        "evalSteps": 2,
        "saveSteps": 2,
        "batchSize": 2,
        "gradAccum": 1,
        "maxSeqLen": 256,
        "evalSamples": 1,
        **overrides,
    }
    return build_config(settings, values).to_dict()
