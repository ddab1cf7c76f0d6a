"""The per-run Axolotl YAML (seed §2.6, §2.7): generated from worker/configs/axolotl_default.yaml
plus the run's config, and checked before Axolotl sees it.

One YAML per training stage: `generate_config` for SFT, `generate_dpo_config` for DPO (Axolotl's
`rl: dpo`, on the preference pairs written by `write_pair_file`, checkpointing under dpo/).

Axolotl's own validator (pydantic, run in Axolotl's environment by axolotl_helper) accepts some
nonsense: an unknown optimizer or scheduler, a negative batch size. `check_config` refuses
those here, naming each bad key and what is allowed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from shared.errors import PipelineError
from worker.training.job import TrainJob
from worker.training.stages import dpo_checkpoint_dir

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "axolotl_default.yaml"
# The helper's plugin: it turns the trainer's steps, logs and saves into JSON lines for us.
PROGRESS_PLUGIN = "worker.training.backends.axolotl_plugin.ProgressPlugin"

# Axolotl's optimizers beyond transformers' OptimizerNames (axolotl.utils.schemas.enums).
AXOLOTL_OPTIMIZERS = {
    "optimi_adamw",
    "ao_adamw_4bit",
    "ao_adamw_8bit",
    "ao_adamw_fp8",
    "adopt_adamw",
    "came_pytorch",
    "muon",
    "dion",
}
# Axolotl's schedulers beyond transformers' SchedulerType.
AXOLOTL_SCHEDULERS = {"one_cycle", "rex", "log_sweep"}
POSITIVE_INTS = (
    "micro_batch_size",
    "gradient_accumulation_steps",
    "sequence_len",
    "lora_r",
    "lora_alpha",
    "logging_steps",
    "eval_steps",
    "save_steps",
    "save_total_limit",
)
POSITIVE_NUMBERS = ("learning_rate", "num_epochs", "rl_beta")
RL_DPO = "dpo"  # the one Axolotl `rl` type this backend trains (its DPO stage)
FRACTIONS = ("lora_dropout", "warmup_ratio", "weight_decay", "val_set_size")


def load_default(path: Path = DEFAULT_CONFIG) -> dict[str, Any]:
    import yaml

    with path.open(encoding="utf-8") as handle:
        loaded = yaml.safe_load(handle)
    if not isinstance(loaded, dict):
        raise PipelineError(f"{path} must hold a YAML mapping of Axolotl settings")
    return loaded


SMALL_DATASET_LINES = 20_000


def _lines(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for _ in handle)


def has_chat_template(model_path: Path) -> bool:
    """Whether the model's tokenizer carries a chat template (read from its files, no load)."""
    if (model_path / "chat_template.jinja").is_file():
        return True
    config = model_path / "tokenizer_config.json"
    return config.is_file() and bool(json.loads(config.read_text()).get("chat_template"))


def write_chat_file(alpaca: Path, target: Path) -> Path:
    """Alpaca JSONL -> {"messages": [user, assistant]} JSONL: the same turns the trl backend
    trains on (worker/training/data.py), so Axolotl formats them with the model's template."""
    from worker.training.data import read_jsonl, user_text

    temp = target.with_name(f".{target.name}.{os.getpid()}")
    with temp.open("w", encoding="utf-8") as handle:
        for example in read_jsonl(alpaca):
            messages = [
                {"role": "user", "content": user_text(example)},
                {"role": "assistant", "content": example["output"]},
            ]
            handle.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    os.replace(temp, target)
    return target


def write_pair_file(pairs: Path, target: Path, *, chat: bool) -> Path:
    """Preference pairs (worker/pairs.py) -> the JSONL the DPO stage's dataset type reads, with
    the prompt built as for SFT: with a chat template {"messages": [user], "chosen", "rejected"}
    (Axolotl's `chat_template.default` renders them with the model's template); without one
    TRL's own prompt/chosen/rejected strings on the Alpaca prompt (TRL appends the EOS token)."""
    from worker.training.data import read_jsonl, to_pair_record, user_text

    temp = target.with_name(f".{target.name}.{os.getpid()}")
    with temp.open("w", encoding="utf-8") as handle:
        for pair in read_jsonl(pairs):
            if chat:
                row = {
                    "messages": [{"role": "user", "content": user_text(pair)}],
                    "chosen": pair["chosen"],
                    "rejected": pair["rejected"],
                }
            else:
                row = to_pair_record(pair, chat=False, eos_token=None)
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(temp, target)
    return target


def _pair_dataset(path: Path, chat: bool, **extra: Any) -> dict[str, Any]:
    if not chat:  # no type: Axolotl takes prompt/chosen/rejected as written (utils/data/rl.py)
        return {"path": str(path), "ds_type": "json", **extra}
    return {
        "path": str(path),
        "ds_type": "json",
        "type": "chat_template.default",
        "field_messages": "messages",
        "field_chosen": "chosen",
        "field_rejected": "rejected",
        **extra,
    }


def _dataset(path: Path, chat: bool, **extra: Any) -> dict[str, Any]:
    if not chat:
        return {"path": str(path), "ds_type": "json", "type": "alpaca", **extra}
    return {
        "path": str(path),
        "ds_type": "json",
        "type": "chat_template",
        "field_messages": "messages",
        "roles_to_train": ["assistant"],  # loss on the answer only, as in the trl backend
        **extra,
    }


def _run_settings(job: TrainJob, cfg: dict[str, Any], train: Path) -> dict[str, Any]:
    """What both stages take from the run: the model, LoRA, batch, logging and checkpoints."""
    c = job.config
    settings = {
        "base_model": str(job.model_path),
        "val_set_size": 0.0,
        "adapter": "lora",
        "lora_r": c.lora_rank,
        "lora_alpha": c.lora_alpha,
        "lora_dropout": c.lora_dropout,
        "lora_target_modules": list(c.target_modules),
        "sequence_len": c.max_seq_len,
        "micro_batch_size": c.batch_size,
        "gradient_accumulation_steps": c.grad_accum,
        "logging_steps": c.logging_steps,
        "eval_steps": c.eval_steps,
        "save_steps": c.save_steps,
        "save_total_limit": c.save_total_limit,
        "seed": c.seed,
        "plugins": [*cfg.get("plugins", []), PROGRESS_PLUGIN],
    }
    if "dataset_num_proc" not in cfg and _lines(train) < SMALL_DATASET_LINES:
        # Axolotl maps a dataset with one process per CPU by default: for a few thousand
        # examples starting the pool costs more than it saves (25 s of a 60 s tiny run here).
        settings["dataset_num_proc"] = 1
    return settings


def generate_config(
    job: TrainJob,
    *,
    cuda: bool,
    bf16: bool,
    default: dict[str, Any] | None = None,
    chat_files: tuple[Path, Path] | None = None,
) -> dict[str, Any]:
    """The run's Axolotl settings for the SFT stage: the default file, then the run's values.

    `chat_files` (train, val in messages form, see write_chat_file) train with the model's
    chat template like the trl backend; without them the export's Alpaca files are used with
    Axolotl's `alpaca` prompt (the seed's default, for a model without a chat template).
    """
    c = job.config
    cfg = dict(load_default() if default is None else default)
    work = job.checkpoint_dir.parent
    chat = chat_files is not None
    train, val = chat_files or (job.train_path, job.val_path)
    if chat:
        cfg["chat_template"] = "tokenizer_default"
    cfg.update(
        _run_settings(job, cfg, train),
        datasets=[_dataset(train, chat)],
        # The export already split train/val: evaluate on its val file, never re-split.
        test_datasets=[_dataset(val, chat, split="train")],
        dataset_prepared_path=str(work / "axolotl-prepared"),
        output_dir=str(job.checkpoint_dir),
        num_epochs=c.epochs,
        learning_rate=c.learning_rate,
    )
    if c.max_steps:
        cfg["max_steps"] = c.max_steps
    if job.resume_from:
        cfg["resume_from_checkpoint"] = str(job.resume_from)
    if job.init_adapter is not None:  # warm start: Axolotl's SFT loads it trainable
        cfg["lora_model_dir"] = str(job.init_adapter)
    cfg.update(_device_settings(cfg, cuda=cuda, bf16=bf16, packing=c.packing))
    return cfg


def generate_dpo_config(
    job: TrainJob,
    *,
    cuda: bool,
    bf16: bool,
    pair_files: tuple[Path, Path | None],
    chat: bool,
    sft_adapter: Path | None = None,
    resume_from: Path | None = None,
    default: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The DPO stage's Axolotl settings (`rl: dpo`): the same default file and run values as
    SFT, with the DPO stage's beta, epochs, cap and learning rate, checkpoints under dpo/.

    `pair_files`: train and val pairs written by write_pair_file (`chat` as it was written
    with; val None when nothing is held out: no evaluation). `sft_adapter`: the finished SFT
    stage's adapter to continue (sft+dpo), `resume_from`: a dpo/checkpoint-N to resume.
    """
    c = job.config
    cfg = dict(load_default() if default is None else default)
    # The default file's max_steps and test datasets are the SFT stage's: DPO has its own.
    for key in ("max_steps", "test_datasets"):
        cfg.pop(key, None)
    train, val = pair_files
    if chat:
        cfg["chat_template"] = "tokenizer_default"
    cfg.update(
        _run_settings(job, cfg, train),
        rl=RL_DPO,
        rl_beta=c.dpo_beta,
        datasets=[_pair_dataset(train, chat)],
        dataset_prepared_path=str(job.checkpoint_dir.parent / "axolotl-dpo-prepared"),
        output_dir=str(dpo_checkpoint_dir(job.checkpoint_dir)),
        num_epochs=c.dpo_epochs,
        learning_rate=c.dpo_learning_rate,
        # Axolotl drops a pair longer than sequence_len by default; TRL (the trl backend)
        # truncates it: truncate here too, so the stage trains the steps stages.dpo_steps counts.
        excess_length_strategy="truncate",
    )
    if val is not None:
        cfg["test_datasets"] = [_pair_dataset(val, chat, split="train")]
    if c.dpo_max_steps:
        cfg["max_steps"] = c.dpo_max_steps
    if sft_adapter is not None:
        # Axolotl 0.19 ignores it under `rl: dpo`; our plugin loads it (axolotl_plugin.py).
        cfg["lora_model_dir"] = str(sft_adapter)
    if resume_from is not None:
        cfg["resume_from_checkpoint"] = str(resume_from)
    cfg.update(_device_settings(cfg, cuda=cuda, bf16=bf16, packing=False))  # DPO never packs
    return cfg


def _device_settings(cfg: dict[str, Any], *, cuda: bool, bf16: bool, packing: bool) -> dict:
    """On a GPU: the seed's 4-bit QLoRA. On a CPU: what Axolotl can run there (measured)."""
    if cuda:
        return {
            "load_in_4bit": cfg.get("load_in_4bit", True),
            "adapter": "qlora" if cfg.get("load_in_4bit", True) else "lora",
            "bf16": bf16,
            "fp16": not bf16,
            "sample_packing": bool(cfg.get("sample_packing")) and packing,
            "gradient_checkpointing": True,
        }
    return {
        "load_in_4bit": False,
        "load_in_8bit": False,
        "bf16": False,
        "fp16": False,
        "tf32": False,
        "flash_attention": False,
        "sample_packing": False,  # needs flash attention to keep packed examples apart
        "pad_to_sequence_len": False,  # padding every row to sequence_len only costs on a CPU
        "optimizer": "adamw_torch",  # bitsandbytes' 8-bit optimizers need CUDA
        "gradient_checkpointing": False,
        # Axolotl switches its Triton LoRA kernels on by default; they allocate on CUDA.
        "lora_mlp_kernel": False,
        "lora_qkv_kernel": False,
        "lora_o_kernel": False,
        "lora_embedding_kernel": False,
    }


def _known_names() -> tuple[set[str], set[str]]:
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    optimizers = {o.value for o in OptimizerNames} | AXOLOTL_OPTIMIZERS
    schedulers = {s.value for s in SchedulerType} | AXOLOTL_SCHEDULERS
    return optimizers, schedulers


def config_problems(cfg: dict[str, Any]) -> list[str]:
    """What Axolotl's validator lets through: names, sizes, ranges, missing essentials."""
    optimizers, schedulers = _known_names()
    problems = []
    for key in ("base_model", "datasets", "output_dir", "adapter", "micro_batch_size"):
        if cfg.get(key) in (None, "", []):
            problems.append(f"{key} is required")
    if cfg.get("optimizer") not in optimizers:
        problems.append(f"optimizer {cfg.get('optimizer')!r} is unknown; use e.g. adamw_torch")
    if cfg.get("lr_scheduler", "cosine") not in schedulers:
        problems.append(
            f"lr_scheduler {cfg.get('lr_scheduler')!r} is unknown; use one of "
            f"{', '.join(sorted(schedulers))}"
        )
    for key in POSITIVE_INTS:
        value = cfg.get(key)
        if value is not None and (type(value) is not int or value < 1):
            problems.append(f"{key} must be an integer >= 1, got {value!r}")
    for key in POSITIVE_NUMBERS:
        value = cfg.get(key)
        if value is not None and (not isinstance(value, int | float) or value <= 0):
            problems.append(f"{key} must be a number > 0, got {value!r}")
    for key in FRACTIONS:
        value = cfg.get(key)
        if value is not None and (not isinstance(value, int | float) or not 0 <= value < 1):
            problems.append(f"{key} must be a number in [0, 1), got {value!r}")
    for dataset in [*(cfg.get("datasets") or []), *(cfg.get("test_datasets") or [])]:
        path = Path(str(dataset.get("path", "")))
        if not path.is_file():
            problems.append(f"dataset {path} does not exist")
    return problems + dpo_problems(cfg)


def dpo_problems(cfg: dict[str, Any]) -> list[str]:
    """The DPO stage's settings Axolotl 0.19's validator accepts but cannot train: another `rl`
    type (this backend's stages are SFT and DPO), an adapter to continue that is not there."""
    problems = []
    if cfg.get("rl") not in (None, RL_DPO):
        problems.append(f"rl {cfg.get('rl')!r} is not a stage of this backend; use rl: dpo")
    adapter = cfg.get("lora_model_dir")
    if adapter is not None and not (Path(adapter) / "adapter_model.safetensors").is_file():
        problems.append(f"lora_model_dir {adapter} holds no adapter_model.safetensors")
    return problems


def check_config(cfg: dict[str, Any]) -> None:
    problems = config_problems(cfg)
    if problems:
        raise PipelineError(
            f"Invalid Axolotl configuration: {'; '.join(problems)}",
            suggestion=f"Fix {DEFAULT_CONFIG} or the run's config",
        )


def write_config(cfg: dict[str, Any], path: Path) -> Path:
    """Write the YAML atomically (a temp file beside it, then rename)."""
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    temp.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    os.replace(temp, path)
    return path
