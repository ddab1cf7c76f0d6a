"""Pipeline steps in-process (fakeredis for events): state changes and failure paths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.names import cancel_key
from shared.registry import AdapterRegistry
from tests.adapters import make_adapter
from tests.helpers import pipeline_run
from tests.worker.conftest import tiny_config
from worker import pipeline
from worker.promote import evidence, gate_and_deliver
from worker.runtime import Runtime


def _published(rt: Runtime, run_id: str) -> dict:
    return json.loads(rt.redis.get(f"finetune:latest:{run_id}"))


def test_three_steps_complete_a_run(rt: Runtime, tiny_model: Path) -> None:
    run_id = pipeline_run(rt, tiny_config(rt.settings, tiny_model))
    assert pipeline.export_step(run_id)["status"] == "exported"
    assert rt.runs.get(run_id).status == "running"
    assert pipeline.train_step(run_id)["status"] == "trained"
    result = pipeline.evaluate_step(run_id)
    run = rt.runs.get(run_id)
    assert result["status"] == run.status == "completed" and run.active_slot is None
    assert Path(run.lora_path, "manifest.json").is_file()
    assert _published(rt, run_id)["type"] == "complete"
    assert len(rt.runs.progress(run_id)) == 4 + 2  # progress + eval rows
    # the gate decided against the base model, and the decision is everywhere it is shown
    promotion = run.promotion_dict()
    assert promotion["reference"] == "base model" and promotion["decision"] in (
        "promoted",
        "rejected",
    )
    assert _published(rt, run_id)["promotion"] == promotion
    registry = AdapterRegistry(rt.settings.lora_output_dir)
    manifest = registry.verify(run_id)
    assert manifest["promotion"] == promotion
    assert registry.active_id() == (run_id if promotion["decision"] == "promoted" else None)
    # provenance: the data, the base model revision, the libraries, the seed
    source = manifest["provenance"]
    assert len(source["trainSha256"]) == 64 and len(source["traceIdsSha256"]) == 64
    assert source["baseModelRevision"].startswith("sha256:") and source["seed"] == 42
    assert {"python", "torch", "transformers", "peft", "trl"} <= set(source["libraries"])


def test_export_with_too_few_traces_fails_the_run(rt: Runtime, tiny_model: Path) -> None:
    run_id = pipeline_run(rt, tiny_config(rt.settings, tiny_model, minQualityScore=10.0))
    rt.settings.traces_db_path.unlink()
    from shared.traces import Trace, TraceStore

    TraceStore(rt.settings.traces_db_path).add_many(
        [Trace(id="t", query="q", final_answer="a", quality_score=10)]
    )
    assert pipeline.export_step(run_id)["status"] == "failed"
    run = rt.runs.get(run_id)
    assert (run.status, run.error_code) == ("failed", "INSUFFICIENT_DATA")
    event = _published(rt, run_id)
    assert event["type"] == "error" and event["code"] == "INSUFFICIENT_DATA"
    assert pipeline.train_step(run_id)["status"] == "skipped"


def test_a_missing_backend_fails_before_the_model_is_looked_up(
    rt: Runtime, tiny_model: Path
) -> None:
    rt.settings = rt.settings.replace(python_path=str(rt.settings.temp_dir / "no-python"))
    config = tiny_config(rt.settings, tiny_model, backend="axolotl", baseModel="no-such:tag")
    run_id = pipeline_run(rt, config)
    pipeline.export_step(run_id)
    assert pipeline.train_step(run_id)["status"] == "failed"
    run = rt.runs.get(run_id)
    # the backend's fix, not the model's (nothing was resolved or loaded)
    assert run.error_code == "BACKEND_UNAVAILABLE" and "PYTHON_PATH" in run.error_message
    assert _published(rt, run_id)["suggestion"] == "Set FINETUNE_BACKEND=trl"


def test_cancel_flag_before_training_cancels(rt: Runtime, tiny_model: Path) -> None:
    run_id = pipeline_run(rt, tiny_config(rt.settings, tiny_model))
    pipeline.export_step(run_id)
    rt.redis.set(cancel_key(run_id), "1")
    assert pipeline.train_step(run_id)["status"] == "cancelled"
    assert rt.runs.get(run_id).status == "cancelled"
    assert _published(rt, run_id)["type"] == "cancelled"
    assert pipeline.evaluate_step(run_id)["status"] == "skipped"


def test_unexpected_errors_fail_the_run_with_the_reason(
    rt: Runtime, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_id = pipeline_run(rt, tiny_config(rt.settings, tiny_model))
    pipeline.export_step(run_id)

    def broken(job):  # type: ignore[no-untyped-def]
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("worker.training.backends.run_backend", broken)
    assert pipeline.train_step(run_id)["status"] == "failed"
    run = rt.runs.get(run_id)
    assert run.error_code == "GENERAL" and "disk on fire" in run.error_message
    assert "disk on fire" in Path(run.log_path).read_text()


def test_oom_retries_with_half_the_batch_then_succeeds(
    rt: Runtime, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMDE_TEST_RAISE_OOM", "2:2")  # step 2, only while batch >= 2
    run_id = pipeline_run(rt, tiny_config(rt.settings, tiny_model, batchSize=2, gradAccum=1))
    pipeline.export_step(run_id)
    assert pipeline.train_step(run_id)["status"] == "trained"
    run = rt.runs.get(run_id)
    config = run.config_dict()
    assert (config["batchSize"], config["gradAccum"]) == (1, 2)  # same effective batch
    assert run.metrics_dict()["oom_retries"] == 1


def test_an_oom_in_the_dpo_stage_retries_dpo_alone(
    rt: Runtime, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMDE_TEST_RAISE_OOM", "6:2")  # run step 6: DPO's second step
    config = tiny_config(
        rt.settings, tiny_model, objective="sft+dpo", batchSize=2, gradAccum=1, dpoMaxSteps=3
    )
    run_id = pipeline_run(rt, config)
    pipeline.export_step(run_id)
    assert pipeline.train_step(run_id)["status"] == "trained"
    run = rt.runs.get(run_id)
    assert run.metrics_dict()["oom_retries"] == 1
    assert run.metrics_dict()["sft_total_steps"] == 4
    events = [
        json.loads(line.removeprefix("EVENT "))
        for line in Path(run.log_path).read_text().splitlines()
        if line.startswith("EVENT ")
    ]
    starts = [e["stage"] for e in events if e["type"] == "training_start"]
    assert starts == ["sft", "dpo", "dpo"]  # the finished SFT stage is kept, not trained again


def test_oom_that_persists_fails_the_run_with_code_oom(
    rt: Runtime, tiny_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMDE_TEST_RAISE_OOM", "1:1")
    run_id = pipeline_run(rt, tiny_config(rt.settings, tiny_model, batchSize=2, gradAccum=1))
    pipeline.export_step(run_id)
    assert pipeline.train_step(run_id)["status"] == "failed"
    run = rt.runs.get(run_id)
    assert run.error_code == "OOM" and "out of memory" in run.error_message.lower()
    event = _published(rt, run_id)
    assert event["type"] == "error" and event["code"] == "OOM"
    assert event["suggestion"] == "Reduce batch_size or max_seq_length"
    assert not (rt.settings.lora_output_dir / ".work" / run_id / "adapter").exists()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_kept_adapters_reload_with_peft_and_suit_vllm(rt: Runtime, tiny_model: Path) -> None:
    """Two runs, retention keeping one plus the tagged: every kept adapter verifies, loads into
    PEFT, and has a config vLLM's --enable-lora accepts (LoRA pairs only, no saved modules)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    registry = AdapterRegistry(rt.settings.lora_output_dir)
    ids = []
    for run_id in ("run_aaaaaa", "run_bbbbbb"):
        pipeline_run(rt, tiny_config(rt.settings, tiny_model), run_id)
        for step in (pipeline.export_step, pipeline.train_step, pipeline.evaluate_step):
            assert step(run_id)["status"] != "failed", rt.runs.get(run_id).error_message
        ids.append(run_id)
    registry.set_tags("run_aaaaaa", ["baseline"])
    assert sorted(registry.ids()) == ids
    make_adapter(rt.settings.lora_output_dir, "run_cccccc", created="2000-01-01T00:00:00Z")
    assert registry.prune(keep=1) == ["run_cccccc"]  # old, untagged, not active
    for adapter_id in registry.ids():
        registry.verify(adapter_id)
        folder = registry.path(adapter_id)
        config = json.loads((folder / "adapter_config.json").read_text())
        assert config["peft_type"] == "LORA" and not config.get("modules_to_save")
        assert not {"lm_head", "embed_tokens"} & set(config["target_modules"])
        base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
        model = PeftModel.from_pretrained(base, folder)
        ids_in = torch.tensor([[1, 2, 3, 4]])
        assert torch.isfinite(model(input_ids=ids_in).logits).all()

    # delivery: a promotion with OLLAMA_EXPORT=true writes the GGUF LoRA + Modelfile, records
    # it in the manifest, and the adapter still verifies (exports/ is outside the seal)
    settings = rt.settings.replace(ollama_export=True, promote_min_delta=0.0)
    per_example = {"tokens": [10] * 4, "adapter": [5.0] * 4, "base": [10.0] * 4, "reference": None}
    evaluation = evidence({}, per_example)  # a clear gain: 0.5 nats/token on every example
    active = registry.active_id()  # the two runs may have promoted themselves already
    if active == "run_bbbbbb":
        registry.rollback()
        active = registry.active_id()
    promotion = gate_and_deliver(
        settings, "run_bbbbbb", evaluation, reference_id=None, active_before=active
    )
    assert promotion["decision"] == "promoted" and promotion["ollamaExport"]["ok"], promotion
    manifest = registry.verify("run_bbbbbb")
    gguf = manifest["exports"]["gguf"]
    assert Path(gguf["path"]).is_file() and gguf["arch"] == "llama"
    modelfile = Path(gguf["modelfile"]).read_text()
    assert f"FROM {tiny_model}" in modelfile and "ADAPTER ./adapter.gguf" in modelfile


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_two_process_run_completes_with_each_event_stored_once(
    rt: Runtime, tiny_model: Path
) -> None:
    rt.settings = rt.settings.replace(nproc=2)
    run_id = pipeline_run(rt, tiny_config(rt.settings, tiny_model))
    for step in (pipeline.export_step, pipeline.train_step, pipeline.evaluate_step):
        assert step(run_id)["status"] != "failed", rt.runs.get(run_id).error_message
    run = rt.runs.get(run_id)
    assert run.status == "completed" and run.metrics_dict()["world_size"] == 2
    rows = rt.runs.progress(run_id)
    assert [r["step"] for r in rows if r["type"] == "progress"] == [1, 2, 3, 4]
    AdapterRegistry(rt.settings.lora_output_dir).verify(run_id)
