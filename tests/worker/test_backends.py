"""Backend choice (`auto`), the missing-backend errors, the model table, and the parts of the
axolotl backend that run without Axolotl: YAML generation, its checks, progress replay, and
failure mapping. (Training itself: tests/worker/backend_suite, for every backend.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.errors import BackendUnavailableError, ModelNotFoundError, PipelineError
from shared.events import ProgressEvent
from shared.settings import Settings
from tests.worker.conftest import tiny_job
from worker.training import models
from worker.training.backends import (
    availability,
    axolotl_backend,
    axolotl_config,
    resolve_backend,
    run_backend,
    unavailable_reason,
)
from worker.training.job import TrainJob


def _job(settings: Settings, model: Path, export_dir: Path, events: list, **overrides) -> TrainJob:  # noqa: ANN003
    return tiny_job(settings, model, export_dir, events, "r", **overrides)


@pytest.mark.parametrize(
    ("cuda", "unsloth", "expected"),
    [(True, True, "unsloth"), (True, False, "trl"), (False, True, "trl"), (False, False, "trl")],
)
def test_auto_picks_unsloth_only_with_cuda_and_unsloth(cuda, unsloth, expected) -> None:
    assert resolve_backend("auto", cuda=lambda: cuda, unsloth=lambda: unsloth) == expected
    assert resolve_backend("axolotl", cuda=lambda: True, unsloth=lambda: True) == "axolotl"


def test_auto_picks_trl_for_a_run_on_several_processes() -> None:
    # FINETUNE_NPROC > 1 launches trl ranks only: on the GPU image `auto` must not pick unsloth
    everything = {"cuda": lambda: True, "unsloth": lambda: True}
    assert resolve_backend("auto", nproc=2, **everything) == "trl"
    assert resolve_backend("auto", nproc=1, **everything) == "unsloth"


def test_auto_on_this_machine_is_trl() -> None:
    assert resolve_backend("auto") == "trl"  # no CUDA here


def test_unsloth_missing_names_the_extra_and_the_fallback(
    settings: Settings, tiny_model: Path, export_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(availability, "unsloth_installed", lambda: False)
    job = _job(settings, tiny_model, export_dir, [], backend="unsloth")
    with pytest.raises(BackendUnavailableError) as info:
        run_backend(job)
    assert "make venv-unsloth" in info.value.message and "datasets<5" in info.value.message
    assert "FINETUNE_BACKEND=trl" in info.value.message and info.value.exit_code == 1


def test_axolotl_without_its_python_says_how_to_install(
    settings: Settings, tiny_model: Path, export_dir: Path
) -> None:
    job = _job(settings, tiny_model, export_dir, [], backend="axolotl")
    job.python_path = "/nonexistent/python3"
    with pytest.raises(BackendUnavailableError, match=r"PYTHON_PATH.*venv-axolotl"):
        run_backend(job)
    job.python_path = "python3"  # a python without Axolotl
    if unavailable_reason("axolotl", "python3") is not None:
        with pytest.raises(BackendUnavailableError, match="not installed"):
            run_backend(job)


def test_trl_on_a_cpu_beside_triton_and_trl_1_15_is_refused_with_the_fix(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real = availability.importlib.util.find_spec
    monkeypatch.setattr(
        availability.importlib.util,
        "find_spec",
        lambda name: real("json") if name == "triton" else real(name),
    )
    monkeypatch.setattr(availability, "_version", lambda name: (1, 15))
    assert "base environment" in (unavailable_reason("trl") or "")
    monkeypatch.setattr(availability, "_version", lambda name: (1, 16))
    assert unavailable_reason("trl") is None


# --- model table -----------------------------------------------------------------------------
def test_table_covers_the_families_and_both_columns() -> None:
    families = {tag.split(":")[0] for tag in models.MODEL_TABLE}
    assert {"qwen3", "llama3.1", "llama3.2", "llama3.3", "mistral", "gemma2", "gemma3"} <= families
    assert models.EMBEDDED_TAG in models.MODEL_TABLE
    assert models.repositories("qwen3:32b") == ["Qwen/Qwen3-32B"]
    assert models.repositories("qwen3:32b", "unsloth") == [
        "unsloth/Qwen3-32B-unsloth-bnb-4bit",
        "Qwen/Qwen3-32B",
    ]
    assert all(
        e.unsloth is None or e.unsloth.startswith("unsloth/") for e in models.MODEL_TABLE.values()
    )


def test_bare_names_and_latest_follow_ollama_defaults() -> None:
    assert models.canonical_tag("qwen3") == "qwen3:8b"
    assert models.canonical_tag("gemma3:latest") == "gemma3:4b"
    assert models.canonical_tag("Llama3.1:8B") == "llama3.1:8b"
    assert models.canonical_tag("Qwen/Qwen3-8B") is None


def test_unknown_tag_hints_close_tags(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        models.resolve_model("qwen3:33b", tmp_path)
    assert info.value.exit_code == 4
    assert "Did you mean" in info.value.message and "qwen3:32b" in info.value.message
    assert "qwen3:32b" in (info.value.suggestion or "")
    with pytest.raises(ModelNotFoundError, match="lama3.1"):
        models.resolve_model("lama3.1:8b", tmp_path)


def test_unsloth_prefers_its_prequantized_copy_then_falls_back(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    plain = tmp_path / "meta-llama--Llama-3.2-1B-Instruct"
    shutil.copytree(tiny_model, plain)
    assert models.resolve_model("llama3.2:1b", tmp_path, backend="unsloth") == plain
    quantized = tmp_path / "unsloth--Llama-3.2-1B-Instruct-bnb-4bit"
    shutil.copytree(tiny_model, quantized)
    assert models.resolve_model("llama3.2:1b", tmp_path, backend="unsloth") == quantized
    assert models.resolve_model("llama3.2:1b", tmp_path, backend="trl") == plain


# --- axolotl: YAML generation and checks -------------------------------------------------------
def test_default_yaml_is_the_seed_config() -> None:
    cfg = axolotl_config.load_default()
    assert cfg["optimizer"] == "adamw_bnb_8bit" and cfg["lora_r"] == 16
    assert cfg["load_in_4bit"] is True and cfg["sample_packing"] is True


def test_generated_config_carries_the_run_and_cpu_settings(
    settings: Settings, tiny_model: Path, export_dir: Path
) -> None:
    job = _job(settings, tiny_model, export_dir, [], backend="axolotl", loraRank=8)
    cfg = axolotl_config.generate_config(job, cuda=False, bf16=False)
    assert cfg["base_model"] == str(tiny_model) and cfg["lora_r"] == 8
    assert cfg["datasets"][0]["path"] == str(export_dir / "train.jsonl")
    assert cfg["test_datasets"][0]["path"] == str(export_dir / "val.jsonl")
    assert cfg["output_dir"] == str(job.checkpoint_dir) and cfg["max_steps"] == 4
    assert cfg["optimizer"] == "adamw_torch" and cfg["load_in_4bit"] is False
    assert axolotl_config.PROGRESS_PLUGIN in cfg["plugins"]
    assert axolotl_config.config_problems(cfg) == []
    gpu = axolotl_config.generate_config(job, cuda=True, bf16=True)
    assert gpu["optimizer"] == "adamw_bnb_8bit" and gpu["adapter"] == "qlora" and gpu["bf16"]


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("optimizer", "adamw_fancy", "optimizer 'adamw_fancy' is unknown"),
        ("lr_scheduler", "cosinus", "lr_scheduler 'cosinus' is unknown"),
        ("micro_batch_size", -4, "micro_batch_size must be an integer >= 1"),
        ("learning_rate", 0, "learning_rate must be a number > 0"),
        ("lora_dropout", 1.5, "lora_dropout must be a number in [0, 1)"),
        ("base_model", "", "base_model is required"),
    ],
)
def test_checks_refuse_what_axolotl_accepts(
    settings: Settings, tiny_model: Path, export_dir: Path, key, value, fragment
) -> None:
    job = _job(settings, tiny_model, export_dir, [], backend="axolotl")
    cfg = {**axolotl_config.generate_config(job, cuda=False, bf16=False), key: value}
    with pytest.raises(PipelineError) as info:
        axolotl_config.check_config(cfg)
    assert fragment in info.value.message


def test_config_is_written_atomically_as_yaml(tmp_path: Path) -> None:
    import yaml

    path = axolotl_config.write_config({"a": 1, "b": [1, 2]}, tmp_path / "x" / "run.yaml")
    assert yaml.safe_load(path.read_text()) == {"a": 1, "b": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["run.yaml"]


# --- axolotl: progress replay and failures ----------------------------------------------------
def test_replay_turns_helper_records_into_the_seed_events(
    settings: Settings, tiny_model: Path, export_dir: Path, tmp_path: Path
) -> None:
    events: list[ProgressEvent] = []
    job = _job(settings, tiny_model, export_dir, events, backend="axolotl")
    path = tmp_path / "events.jsonl"
    records = [
        {"event": "begin", "step": 0, "max_steps": 2},
        {"event": "step", "step": 1, "max_steps": 2},
        {"event": "log", "step": 1, "max_steps": 2, "logs": {"loss": 2.5, "learning_rate": 1e-4}},
        {"event": "log", "step": 2, "max_steps": 2, "logs": {"eval_loss": 2.25}},
        {"event": "save", "step": 2, "max_steps": 2},
    ]
    tail, replay = axolotl_backend.EventTail(path), axolotl_backend.Replay(job)
    path.write_text("\n".join(json.dumps(r) for r in records) + '\n{"event": "end", "st')
    for record in tail.read():
        replay.feed(record)
    assert [e.type for e in events] == ["training_start", "progress", "eval", "checkpoint"]
    assert events[1].loss == 2.5 and events[1].step == 1 and events[2].eval_loss == 2.25
    assert events[3].path.endswith("checkpoint-2") and not replay.end
    with path.open("a") as handle:  # the half-written line completes later
        handle.write('ep": 2, "max_steps": 2, "num_input_tokens_seen": 99}\n')
    for record in tail.read():
        replay.feed(record)
    assert replay.end["num_input_tokens_seen"] == 99


def test_failures_map_to_the_error_codes(tmp_path: Path) -> None:
    output = tmp_path / "out.log"
    output.write_text("loading\ntorch.OutOfMemoryError: CUDA out of memory. Tried 2 GiB\n")
    assert axolotl_backend.failure(1, output).code == "OOM"
    output.write_text('{"ok": true, "errors": []}\nValueError: sequence_len is too long\nbye\n')
    error = axolotl_backend.failure(1, output)
    assert error.code == "GENERAL" and "sequence_len is too long" in error.message
    assert str(output) in (error.suggestion or "") and "venv-axolotl" not in error.suggestion
    output.write_text("ModuleNotFoundError: No module named 'worker'\n")
    error = axolotl_backend.failure(1, output)
    assert "No module named 'worker'" in error.message and "venv-axolotl" in error.suggestion
    output.write_text('{"ok": false, "errors": ["unknown key \'lora_rnak\'"]}\n')
    error = axolotl_backend.failure(2, output)
    assert error.message == "Axolotl refused the configuration: unknown key 'lora_rnak'"


def test_chat_models_train_on_the_same_turns_as_trl(
    settings: Settings, tiny_model: Path, export_dir: Path, tmp_path: Path
) -> None:
    from worker.training.data import read_jsonl, user_text

    assert axolotl_config.has_chat_template(tiny_model)
    target = axolotl_config.write_chat_file(export_dir / "train.jsonl", tmp_path / "t.jsonl")
    first = next(read_jsonl(export_dir / "train.jsonl"))
    messages = json.loads(target.read_text().splitlines()[0])["messages"]
    assert messages == [
        {"role": "user", "content": user_text(first)},
        {"role": "assistant", "content": first["output"]},
    ]
    job = _job(settings, tiny_model, export_dir, [], backend="axolotl")
    cfg = axolotl_config.generate_config(job, cuda=False, bf16=False, chat_files=(target, target))
    assert cfg["datasets"][0]["type"] == "chat_template"
    assert cfg["datasets"][0]["roles_to_train"] == ["assistant"]
    assert cfg["chat_template"] == "tokenizer_default"
