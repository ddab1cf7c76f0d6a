"""The axolotl backend's DPO stage without Axolotl: the DPO YAML, its checks, the pairs file,
the progress replay of a later stage, and how the stages chain and resume (stages.plan) with
Axolotl's run replaced by a fake. (Training itself: tests/worker/backend_suite.)"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from shared.errors import PipelineError
from shared.events import ProgressEvent
from shared.settings import Settings
from tests.worker.conftest import tiny_job
from worker.training import stages
from worker.training.backends import AXOLOTL, axolotl_backend, axolotl_config, objective_problem
from worker.training.data import ALPACA_PROMPT, count_lines, read_jsonl, user_text
from worker.training.job import TrainJob

SFT_STEPS = 4


@pytest.fixture
def make_job(settings: Settings, tiny_model: Path, export_dir: Path) -> Callable[..., TrainJob]:
    def make(events: list[ProgressEvent] | None = None, **overrides: object) -> TrainJob:
        overrides = {"backend": "axolotl", "objective": "sft+dpo", **overrides}
        return tiny_job(
            settings, tiny_model, export_dir, [] if events is None else events, "r", **overrides
        )

    return make


def _pairs(job: TrainJob, tmp_path: Path, chat: bool = True) -> tuple[Path, Path]:
    return (
        axolotl_config.write_pair_file(job.train_pairs_path, tmp_path / "t.jsonl", chat=chat),
        axolotl_config.write_pair_file(job.val_pairs_path, tmp_path / "v.jsonl", chat=chat),
    )


def _adapter(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_model.safetensors").write_bytes(b"weights")
    (folder / "adapter_config.json").write_text("{}")
    return folder


# --- the DPO YAML ------------------------------------------------------------------------------
def test_the_dpo_yaml_carries_the_dpo_stage_of_the_run(make_job, tmp_path: Path) -> None:
    job = make_job(dpoBeta=0.2, dpoEpochs=2, dpoLearningRate=1e-5, dpoMaxSteps=3)
    sft_adapter = _adapter(stages.sft_adapter_dir(job.checkpoint_dir))
    resume = stages.dpo_checkpoint_dir(job.checkpoint_dir) / "checkpoint-2"
    train, val = _pairs(job, tmp_path)
    cfg = axolotl_config.generate_dpo_config(
        job,
        cuda=False,
        bf16=False,
        pair_files=(train, val),
        chat=True,
        sft_adapter=sft_adapter,
        resume_from=resume,
    )
    assert (cfg["rl"], cfg["rl_beta"], cfg["num_epochs"]) == ("dpo", 0.2, 2)
    assert (cfg["learning_rate"], cfg["max_steps"]) == (1e-5, 3)
    assert cfg["output_dir"] == str(stages.dpo_checkpoint_dir(job.checkpoint_dir))
    assert cfg["lora_model_dir"] == str(sft_adapter)
    assert cfg["resume_from_checkpoint"] == str(resume)
    assert cfg["datasets"][0]["path"] == str(train)
    assert cfg["datasets"][0]["type"] == "chat_template.default"
    assert cfg["test_datasets"][0]["path"] == str(val)
    assert cfg["chat_template"] == "tokenizer_default"
    assert cfg["excess_length_strategy"] == "truncate"  # every pair trains, as dpo_steps counts
    # the same batch, sequence, LoRA and device rules as the SFT stage
    sft = axolotl_config.generate_config(job, cuda=False, bf16=False)
    for key in ("micro_batch_size", "gradient_accumulation_steps", "sequence_len", "lora_r"):
        assert cfg[key] == sft[key], key
    assert cfg["optimizer"] == "adamw_torch" and cfg["load_in_4bit"] is False
    assert axolotl_config.PROGRESS_PLUGIN in cfg["plugins"]
    assert cfg["dataset_prepared_path"] != sft["dataset_prepared_path"]
    assert axolotl_config.config_problems(cfg) == []


def test_the_dpo_yaml_without_sft_resume_or_held_out_pairs(make_job, tmp_path: Path) -> None:
    job = make_job(objective="dpo", dpoMaxSteps=None)
    train, _ = _pairs(job, tmp_path)
    default = {**axolotl_config.load_default(), "max_steps": 99}  # the SFT stage's cap
    cfg = axolotl_config.generate_dpo_config(
        job, cuda=False, bf16=False, pair_files=(train, None), chat=True, default=default
    )
    assert "max_steps" not in cfg  # the epochs decide, as dpoMaxSteps null says
    assert "test_datasets" not in cfg and cfg["val_set_size"] == 0.0  # no evaluation
    assert "lora_model_dir" not in cfg and "resume_from_checkpoint" not in cfg


def test_the_dpo_yaml_on_a_gpu_never_packs(make_job, tmp_path: Path) -> None:
    job = make_job(packing=True)
    cfg = axolotl_config.generate_dpo_config(
        job, cuda=True, bf16=True, pair_files=_pairs(job, tmp_path), chat=True
    )
    assert cfg["sample_packing"] is False  # Axolotl: "does not work with RLHF training"
    assert cfg["adapter"] == "qlora" and cfg["bf16"] and cfg["optimizer"] == "adamw_bnb_8bit"


def test_a_model_without_chat_template_gets_the_alpaca_prompt(make_job, tmp_path: Path) -> None:
    job = make_job()
    train, val = _pairs(job, tmp_path, chat=False)
    first = next(read_jsonl(job.train_pairs_path))
    row = json.loads(train.read_text().splitlines()[0])
    assert row["prompt"].startswith(ALPACA_PROMPT.split("{", 1)[0] + first["instruction"])
    assert row["prompt"].endswith("### Response:\n")
    assert (row["chosen"], row["rejected"]) == (first["chosen"], first["rejected"])
    cfg = axolotl_config.generate_dpo_config(
        job, cuda=False, bf16=False, pair_files=(train, val), chat=False
    )
    assert "type" not in cfg["datasets"][0]  # Axolotl takes prompt/chosen/rejected as written
    assert "chat_template" not in cfg


def test_chat_pairs_carry_the_sft_user_turn(make_job, tmp_path: Path) -> None:
    job = make_job()
    train, _ = _pairs(job, tmp_path)
    pair, row = next(read_jsonl(job.train_pairs_path)), next(read_jsonl(train))
    assert row == {
        "messages": [{"role": "user", "content": user_text(pair)}],
        "chosen": pair["chosen"],
        "rejected": pair["rejected"],
    }
    assert count_lines(train) == count_lines(job.train_pairs_path)  # what dpo_steps counts


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"rl_beta": -0.1}, "rl_beta must be a number > 0"),
        ({"rl": "ipo"}, "rl 'ipo' is not a stage of this backend"),
        ({"lora_model_dir": "/nowhere"}, "lora_model_dir /nowhere holds no adapter"),
        ({"test_datasets": [{"path": "/nowhere/v.jsonl"}]}, "dataset /nowhere/v.jsonl does not"),
    ],
)
def test_checks_refuse_what_axolotl_accepts_for_dpo(
    make_job, tmp_path: Path, change: dict[str, Any], fragment: str
) -> None:
    job = make_job()
    cfg = axolotl_config.generate_dpo_config(
        job, cuda=False, bf16=False, pair_files=_pairs(job, tmp_path), chat=True
    )
    with pytest.raises(PipelineError) as info:
        axolotl_config.check_config({**cfg, **change})
    assert fragment in info.value.message


def test_the_registry_lets_axolotl_train_every_objective() -> None:
    assert AXOLOTL.objectives == ("sft", "dpo")
    assert all(objective_problem("axolotl", o) is None for o in ("sft", "dpo", "sft+dpo"))


# --- a later stage's progress -----------------------------------------------------------------
def test_the_dpo_stage_replays_after_the_sft_steps(make_job) -> None:
    events: list[ProgressEvent] = []
    job = make_job(events)
    dpo_dir = stages.dpo_checkpoint_dir(job.checkpoint_dir)
    replay = axolotl_backend.Replay(job, stage="dpo", step_offset=4, checkpoint_dir=dpo_dir)
    logs = {"loss": 0.69, "learning_rate": 5e-5, "rewards/margins": 0.01, "logps/chosen": -9.0}
    for record in (
        {"event": "begin", "step": 0, "max_steps": 2},
        {"event": "log", "step": 1, "max_steps": 2, "logs": logs},
        {"event": "log", "step": 2, "max_steps": 2, "logs": {"eval_loss": 0.68}},
        {"event": "save", "step": 2, "max_steps": 2},
    ):
        replay.feed(record)
    assert [(e.type, e.step, e.total_steps) for e in events] == [
        ("training_start", 4, 6),
        ("progress", 5, 6),
        ("eval", 6, 6),
        ("checkpoint", 6, None),
    ]
    assert all(e.stage == "dpo" for e in events)
    assert events[1].rewards_margins == 0.01 and events[1].logps_chosen == -9.0
    assert events[3].path == str(dpo_dir / "checkpoint-2") and replay.run_step == 6


# --- the stages, with Axolotl's run faked -----------------------------------------------------
class FakeAxolotl:
    """Stands in for run_stage: records each stage's YAML and replay, feeds a begin, a loss
    log and the end, and leaves the files Axolotl leaves in its output folder."""

    def __init__(self, steps: dict[str, int]) -> None:
        self.steps = steps
        self.runs: list[tuple[str, dict[str, Any], Any]] = []

    def __call__(self, job: TrainJob, cfg: dict[str, Any], replay: Any, name: str) -> float:
        self.runs.append((name, cfg, replay))
        stage = "dpo" if cfg.get("rl") else "sft"
        last = self.steps[stage]
        replay.feed({"event": "begin", "step": 0, "max_steps": last})
        logs = {"loss": 1.5 if stage == "sft" else 0.69}
        replay.feed({"event": "log", "step": last, "max_steps": last, "logs": logs})
        end = {"num_input_tokens_seen": 100, "libraries": {"axolotl": "0.19.0"}}
        replay.feed({"event": "end", "step": last, "max_steps": last, **end})
        output = _adapter(Path(cfg["output_dir"]))
        (output / "adapter_model.safetensors").write_text(stage)
        (output / "config.json").write_text("{}")  # the model's config: not the adapter's
        _adapter(output / "ref")  # DPO's frozen reference: not part of the adapter
        return 2.0

    def names(self) -> list[str]:
        return [name for name, _, _ in self.runs]


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeAxolotl:
    fake = FakeAxolotl({"sft": SFT_STEPS, "dpo": 3})
    monkeypatch.setattr(axolotl_backend, "run_stage", fake)
    return fake


def test_sft_then_dpo_chains_the_stages(make_job, fake: FakeAxolotl) -> None:
    job = make_job()
    result = axolotl_backend.train(job)
    assert fake.names() == ["axolotl", "axolotl-dpo"]
    (_, sft_cfg, sft_replay), (_, dpo_cfg, dpo_replay) = fake.runs
    assert sft_replay.callback.steps_after == stages.dpo_steps(job)  # the total covers DPO
    assert dpo_replay.callback.step_offset == SFT_STEPS and dpo_replay.callback.stage == "dpo"
    sft_adapter = stages.sft_adapter_dir(job.checkpoint_dir)
    assert dpo_cfg["lora_model_dir"] == str(sft_adapter) and "resume_from_checkpoint" not in dpo_cfg
    assert (sft_adapter / "adapter_model.safetensors").read_text() == "sft"
    assert stages.read_sft_outcome(job.checkpoint_dir).steps == SFT_STEPS
    assert (job.adapter_dir / "adapter_model.safetensors").read_text() == "dpo"
    assert {p.name for p in job.adapter_dir.iterdir()} == {
        "adapter_model.safetensors",
        "adapter_config.json",
    }
    m = result.metrics
    assert (m["sft_total_steps"], m["dpo_total_steps"], m["total_steps"]) == (4, 3, 7)
    assert (m["final_train_loss"], m["dpo_final_train_loss"]) == (1.5, 0.69)
    hyper = result.hyperparameters
    assert hyper["objective"] == "sft+dpo" and hyper["dpo"] == dpo_cfg
    assert hyper["axolotl"] == sft_cfg


def test_a_resume_in_the_dpo_stage_never_repeats_sft(make_job, fake: FakeAxolotl) -> None:
    job = make_job()
    sft = stages.SftOutcome(SFT_STEPS, {"final_train_loss": 1.25}, {"axolotl": {"x": 1}})
    stages.save_sft_outcome(job.checkpoint_dir, _adapter, sft)
    checkpoint = stages.dpo_checkpoint_dir(job.checkpoint_dir) / "checkpoint-2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    job.resume_from = stages.resume_point(job.checkpoint_dir).checkpoint
    result = axolotl_backend.train(job)
    assert fake.names() == ["axolotl-dpo"]
    ((_, cfg, replay),) = fake.runs
    assert cfg["resume_from_checkpoint"] == str(checkpoint)
    assert cfg["lora_model_dir"] == str(stages.sft_adapter_dir(job.checkpoint_dir))
    assert replay.callback.step_offset == SFT_STEPS
    assert result.metrics["final_train_loss"] == 1.25 and result.metrics["total_steps"] == 7
    assert result.hyperparameters["axolotl"] == {"x": 1} and result.hyperparameters["dpo"] == cfg


def test_dpo_alone_trains_a_fresh_adapter_from_the_base(make_job, fake: FakeAxolotl) -> None:
    job = make_job(objective="dpo")
    result = axolotl_backend.train(job)
    ((name, cfg, replay),) = fake.runs
    assert name == "axolotl-dpo" and "lora_model_dir" not in cfg
    assert replay.callback.step_offset == 0
    assert (result.metrics["sft_total_steps"], result.metrics["total_steps"]) == (0, 3)
    assert result.metrics["final_train_loss"] is None  # no SFT loss to compare
    assert result.hyperparameters["objective"] == "dpo" and "sft" not in result.hyperparameters


def test_sft_alone_needs_no_pairs(make_job, fake: FakeAxolotl) -> None:
    job = make_job(objective="sft")
    job.train_pairs_path = job.val_pairs_path = None
    result = axolotl_backend.train(job)
    assert fake.names() == ["axolotl"] and fake.runs[0][2].callback.steps_after == 0
    assert result.metrics["total_steps"] == SFT_STEPS and "dpo" not in result.hyperparameters
    assert result.hyperparameters["objective"] == "sft"
    assert not stages.sft_adapter_dir(job.checkpoint_dir).exists()
