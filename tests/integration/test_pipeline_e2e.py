"""The whole pipeline through the HTTP API, a real Redis and a real Celery worker process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from shared.fsutil import folder_digest
from tests.integration.conftest import EventLog, Service

pytestmark = pytest.mark.integration

TINY = {
    "backend": "trl",
    "maxSteps": 4,
    "objective": "sft+dpo",
    "dpoMaxSteps": 2,  # 4 SFT steps, then 2 DPO steps
    "evalSteps": 2,
    "saveSteps": 2,
    "batchSize": 2,
    "gradAccum": 1,
    "maxSeqLen": 256,
    "evalSamples": 1,
}


def _start(service: Service, model: Path, **config: object) -> str:
    response = requests.post(
        f"{service.base_url}/api/finetune",
        json={"config": {"baseModel": str(model), **TINY, **config}},
    )
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["status"] == "pending"
    assert body["progressUrl"] == f"/api/finetune/{body['runId']}/progress"
    return body["runId"]


def _run(service: Service, run_id: str) -> dict:
    return requests.get(f"{service.base_url}/api/finetune/{run_id}").json()


def test_full_pipeline_produces_a_working_adapter(service: Service, tiny_model: Path) -> None:
    log = EventLog(service)
    run_id = log.run_id = _start(service, tiny_model)
    terminal = log.wait_for(lambda e: e["type"] in ("complete", "error", "cancelled"))
    assert terminal["type"] == "complete", terminal
    types = [e["type"] for e in log.events if e["type"] != "heartbeat"]
    assert types[:2] == ["export_complete", "training_start"]
    assert types.count("progress") == 6 and types.count("eval") == 3
    assert types.count("checkpoint") == 3 and types[-1] == "complete"
    stages = [(e["stage"], e["step"]) for e in log.events if e["type"] == "training_start"]
    assert stages == [("sft", 0), ("dpo", 4)]
    assert all(e["run_id"] == run_id for e in log.events)

    run = _run(service, run_id)
    assert run["status"] == "completed" and run["triggeredBy"] == "api"
    assert run["backend"] == "trl" and run["completedAt"]
    assert run["trainExamples"] > 0 and run["valExamples"] > 0
    assert run["latestEvent"]["type"] == "complete"
    assert run["config"]["objective"] == "sft+dpo"
    assert run["trainPairs"] > 0 and run["valPairs"] > 0
    metrics = run["metrics"]
    assert metrics["total_steps"] == 6
    assert (metrics["sft_total_steps"], metrics["dpo_total_steps"]) == (4, 2)
    assert metrics["base_val_loss"] > 0 and metrics["adapter_val_loss"] > 0
    assert metrics["final_val_loss"] == metrics["adapter_val_loss"]
    for key in ("base", "adapter"):
        assert 0 <= metrics[f"{key}_preference_accuracy"] <= 1
    assert metrics["preference_pairs_evaluated"] == run["valPairs"]

    history = requests.get(f"{service.base_url}/api/finetune/{run_id}/events").json()["events"]
    progress = [(h["stage"], h["step"]) for h in history if h["type"] == "progress"]
    assert progress == [("sft", 1), ("sft", 2), ("sft", 3), ("sft", 4), ("dpo", 5), ("dpo", 6)]
    assert all(h["rewardsMargins"] is not None for h in history if h["stage"] == "dpo")
    assert len([h for h in history if h["type"] == "eval"]) == 3

    adapter = Path(run["loraPath"])
    assert adapter == service.settings.lora_output_dir / run_id
    names = {p.name for p in adapter.iterdir()}
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "tokenizer_config.json",
        "training_args.json",
        "metrics.json",
        "manifest.json",
        "samples.json",
    } <= names
    manifest = json.loads((adapter / "manifest.json").read_text())
    for key in (
        "id",
        "createdAt",
        "baseModel",
        "tracesUsed",
        "trainExamples",
        "valExamples",
        "isActive",
        "tags",
        "sizeBytes",
        "sha256",
        "config",
        "metrics",
    ):
        assert key in manifest, key
    sha, size = folder_digest(adapter, exclude=("manifest.json",))
    assert (manifest["sha256"], manifest["sizeBytes"]) == (sha, size)
    assert manifest["metrics"]["totalSteps"] == 6
    assert manifest["objective"] == "sft+dpo" and manifest["trainPairs"] == run["trainPairs"]
    accuracy = manifest["metrics"]["adapterPreferenceAccuracy"]
    assert accuracy == metrics["adapter_preference_accuracy"]
    assert not (service.settings.lora_output_dir / ".work" / run_id).exists()
    assert "EVENT" in Path(run["logPath"]).read_text()

    _assert_adapter_changes_the_model(tiny_model, adapter)


def _assert_adapter_changes_the_model(model_path: Path, adapter: Path) -> None:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter)
    ids = tokenizer("Ava buys 3 packs of apples", return_tensors="pt").input_ids
    base = AutoModelForCausalLM.from_pretrained(model_path)
    with torch.no_grad():
        before = base(ids).logits
        tuned = PeftModel.from_pretrained(base, adapter)
        after = tuned(ids).logits
    assert not torch.allclose(before, after, atol=1e-6)


def test_cancel_while_training(service: Service, tiny_model: Path) -> None:
    log = EventLog(service)
    run_id = log.run_id = _start(service, tiny_model, maxSteps=500, evalSteps=1000, saveSteps=1000)
    log.wait_for(lambda e: e["type"] == "progress")
    response = requests.post(f"{service.base_url}/api/finetune/{run_id}/cancel")
    assert response.status_code == 202 and response.json()["cancelRequested"] is True
    terminal = log.wait_for(lambda e: e["type"] in ("complete", "error", "cancelled"))
    assert terminal["type"] == "cancelled"
    run = _run(service, run_id)
    assert run["status"] == "cancelled" and run["loraPath"] is None
    assert not (service.settings.lora_output_dir / run_id).exists()
    assert not (service.settings.lora_output_dir / ".work" / run_id).exists()
    steps = [e["step"] for e in log.events if e["type"] == "progress"]
    assert max(steps) < 500
    # the single-flight slot is free again
    assert (
        requests.post(
            f"{service.base_url}/api/finetune", json={"config": {"baseModel": "nosuch:1b"}}
        ).status_code
        == 202
    )


def test_unknown_model_fails_the_run_with_its_code(service: Service) -> None:
    log = EventLog(service)
    response = requests.post(
        f"{service.base_url}/api/finetune", json={"config": {"baseModel": "nosuch:1b", **TINY}}
    )
    run_id = log.run_id = response.json()["runId"]
    terminal = log.wait_for(lambda e: e["type"] in ("complete", "error", "cancelled"))
    assert terminal["type"] == "error" and terminal["code"] == "MODEL_NOT_FOUND"
    run = _run(service, run_id)
    assert run["status"] == "failed" and run["errorCode"] == "MODEL_NOT_FOUND"
    assert "nosuch:1b" in run["errorMessage"]


def test_sse_feed_streams_until_the_terminal_event(service: Service, tiny_model: Path) -> None:
    run_id = _start(service, tiny_model, maxSteps=2, evalSteps=1000, saveSteps=1000)
    seen = []
    with requests.get(
        f"{service.base_url}/api/finetune/{run_id}/progress", stream=True, timeout=180
    ) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        for line in response.iter_lines(decode_unicode=True):
            if line and line.startswith("data: "):
                seen.append(json.loads(line[6:])["type"])
    assert seen[-1] == "complete" and "progress" in seen


def test_a_warm_start_continues_the_active_adapter(service: Service, tiny_model: Path) -> None:
    from shared.demo_traces import generate
    from shared.traces import TraceStore

    sft = {"objective": "sft", "learningRate": 0.01}
    log = EventLog(service)
    parent = log.run_id = _start(service, tiny_model, **sft)
    assert log.wait_for(lambda e: e["type"] in ("complete", "error"))["type"] == "complete"
    url = service.base_url
    if not requests.get(f"{url}/api/adapters/{parent}").json()["isActive"]:
        assert requests.post(f"{url}/api/adapters/{parent}/activate", json={}).status_code == 200
    new = generate(150)[120:]
    for trace in new:
        trace.id, trace.query = f"new-{trace.id}", f"Next week: {trace.query}"
    TraceStore(service.settings.traces_db_path).add_many(new)

    refused = requests.post(
        f"{url}/api/finetune",
        json={"config": {"baseModel": str(tiny_model), **TINY, "initFrom": "active",
                         "loraRank": 4}},
    )  # fmt: skip
    assert refused.status_code == 400 and "loraRank" in refused.json()["fields"]["initFrom"]

    log = EventLog(service)
    child = log.run_id = _start(service, tiny_model, **sft, initFrom="active")
    assert log.wait_for(lambda e: e["type"] in ("complete", "error"))["type"] == "complete"
    run = _run(service, child)
    assert run["parentAdapter"] == parent
    adapter = requests.get(f"{url}/api/adapters/{child}").json()
    assert adapter["parentAdapter"] == parent
    assert [entry["id"] for entry in adapter["lineage"]] == [parent]
    export = adapter["provenance"]["exportManifest"]
    assert export["newExamples"] > 0 and export["replayExamples"] > 0
    assert run["trainExamples"] == export["newExamples"] + export["replayExamples"]
    assert run["trainExamples"] < _run(service, parent)["trainExamples"]
    promotion = run["promotion"]
    assert promotion["reference"] == parent and len(promotion["improvementCi"]) == 2
    assert set(promotion["criteria"]) == {"loss", "generation", "preference", "drift"}
