"""Every backend behaves the same: events, artifacts, manifest, cancel and error paths.

Runs against the backend chosen with `--backend` (see conftest.py), on the tiny local model:
4 optimizer steps, an evaluation and a checkpoint every 2.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.errors import BackendUnavailableError, CancelledError, PipelineError
from shared.events import ProgressEvent
from shared.settings import Settings
from worker.training.artifacts import build_manifest, publish, write_training_files
from worker.training.backends import availability, run_backend
from worker.training.hooks import OOM_HOOK_ENV

ADAPTER_FILES = {"adapter_model.safetensors", "adapter_config.json", "tokenizer_config.json"}


def _steps(events: list[ProgressEvent], kind: str) -> list[int]:
    return [e.step for e in events if e.type == kind]


def test_events_artifacts_and_manifest(
    make_job, backend: str, settings: Settings, tiny_model: Path
) -> None:
    events: list[ProgressEvent] = []
    job = make_job(events)
    result = run_backend(job)

    seen = [e for e in events if e.type != "heartbeat"]  # a heartbeat may come while loading
    types = [e.type for e in seen]
    assert types[0] == "training_start" and seen[0].total_steps == 4, types
    assert _steps(events, "progress") == [1, 2, 3, 4]
    assert _steps(events, "eval") == [2, 4]
    assert _steps(events, "checkpoint") == [2, 4]
    progress = [e for e in events if e.type == "progress"]
    assert all(e.loss > 0 and e.learning_rate is not None for e in progress), progress
    assert all(e.total_steps == 4 for e in progress)
    assert all(e.tokens_per_second > 0 for e in progress), progress  # live speed, /metrics
    assert all(e.run_id == "run_suite" for e in events)
    assert (job.checkpoint_dir / "checkpoint-2").is_dir()

    assert {p.name for p in job.adapter_dir.iterdir()} >= ADAPTER_FILES
    assert not {"config.json", "model.safetensors"} & {p.name for p in job.adapter_dir.iterdir()}
    assert not any(p.name.startswith("checkpoint-") for p in job.adapter_dir.iterdir())
    adapter_config = json.loads((job.adapter_dir / "adapter_config.json").read_text())
    assert adapter_config["r"] == 16 and adapter_config["lora_alpha"] == 32
    assert set(adapter_config["target_modules"]) == set(job.config.target_modules)
    # what vLLM's --enable-lora accepts: no lm_head or embeddings saved whole
    assert adapter_config["peft_type"] == "LORA" and not adapter_config.get("modules_to_save")

    m = result.metrics
    assert result.backend == backend
    assert m["total_steps"] == 4 and m["final_train_loss"] == progress[-1].loss
    assert m["best_val_loss"] == min(e.eval_loss for e in events if e.type == "eval")
    assert m["train_tokens"] > 0 and m["tokens_per_second"] > 0
    assert m["device"] == "cpu" and m["training_time_seconds"] > 0 and m["peak_ram_gb"] > 0
    assert result.hyperparameters["backend"] == backend
    libraries = result.hyperparameters["libraries"]  # the training environment's own versions
    assert "transformers" in libraries and backend in (*libraries, "trl"), libraries

    write_training_files(job.adapter_dir, result.hyperparameters, result.metrics)
    manifest = build_manifest(
        run_id=job.run_id,
        base_model=str(tiny_model),
        backend=result.backend,
        config=job.config,
        metrics=result.metrics,
        traces_used=10,
        train_examples=8,
        val_examples=2,
        provenance={},
    )
    final = publish(job.adapter_dir, settings.lora_output_dir / job.run_id, manifest)
    written = json.loads((final / "manifest.json").read_text())
    assert written["backend"] == backend and len(written["sha256"]) == 64
    assert written["metrics"]["totalSteps"] == 4
    _assert_loads_on_the_base_model(final, tiny_model)


def _assert_loads_on_the_base_model(adapter: Path, base_path: Path) -> None:
    """The saved adapter is a plain PEFT LoRA whatever trained it: the evaluator loads it so."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter)
    lora = [n for n, _ in model.named_parameters() if "lora_A" in n]
    assert lora and any("q_proj" in n for n in lora)


def test_cancel_stops_at_the_next_step_without_an_adapter(make_job) -> None:
    events: list[ProgressEvent] = []
    job = make_job(events, maxSteps=40, evalSteps=100, saveSteps=100)
    job.should_cancel = lambda: any(e.type == "progress" and e.step >= 2 for e in events)
    with pytest.raises(CancelledError):
        run_backend(job)
    steps = _steps(events, "progress")
    assert steps and max(steps) < 40
    assert not job.adapter_dir.exists()


def test_out_of_memory_becomes_the_oom_error(make_job, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OOM_HOOK_ENV, "2:1")  # the real torch.OutOfMemoryError at step 2
    with pytest.raises(PipelineError) as info:
        run_backend(make_job([]))
    assert info.value.code == "OOM" and info.value.exit_code == 3
    assert "Reduce batch_size" in (info.value.suggestion or "")


def test_unknown_target_modules_name_the_available_ones(make_job) -> None:
    with pytest.raises(PipelineError, match=r"c_attn.*q_proj"):
        run_backend(make_job([], targetModules=["c_attn"]))


def test_a_missing_backend_fails_at_once_with_the_fix(
    make_job, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = make_job([])
    if backend == "unsloth":
        monkeypatch.setattr(availability, "unsloth_installed", lambda: False)
    elif backend == "axolotl":
        job.python_path = "/nonexistent/bin/python"
    else:
        monkeypatch.setattr(availability.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BackendUnavailableError) as info:
        run_backend(job)
    fix = {"trl": "tmde-finetune[train]", "unsloth": "venv-unsloth", "axolotl": "venv-axolotl"}
    assert fix[backend] in info.value.message, info.value.message  # how to install it
    assert "FINETUNE_BACKEND=trl" in info.value.message or backend == "trl"
    assert info.value.exit_code == 1
    assert not job.adapter_dir.exists()


def test_axolotl_runs_its_own_validator_first(
    make_job, backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if backend != "axolotl":
        pytest.skip("Axolotl's validator: the axolotl backend only")
    from worker.training.backends import axolotl_config

    default = axolotl_config.load_default()
    monkeypatch.setattr(axolotl_config, "load_default", lambda: {**default, "lora_rnak": 8})
    job = make_job([])
    with pytest.raises(PipelineError, match="Axolotl refused the configuration.*lora_rnak"):
        run_backend(job)
    assert not job.adapter_dir.exists()
