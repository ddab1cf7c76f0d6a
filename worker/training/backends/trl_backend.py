"""The `trl` backend: transformers + PEFT LoRA + TRL's SFTTrainer, on a CPU or a GPU.

Prompt/completion chat records (worker/training/data.py) make TRL compute the loss on the
answer only. Packing (on by default) fills each row with several short examples.
"""

from __future__ import annotations

import resource
import time
from typing import Any

from shared.errors import CancelledError, HandedOverError, OutOfMemoryError, PipelineError
from worker.training.job import TrainJob, TrainResult


def _peak_ram_gb() -> float:
    # ru_maxrss is in KiB on Linux.
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3)


def check_target_modules(model: Any, wanted: list[str]) -> None:
    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in wanted if m not in present]
    if missing:
        import torch

        linear = sorted(
            {
                name.rsplit(".", 1)[-1]
                for name, module in model.named_modules()
                if isinstance(module, torch.nn.Linear)
            }
        )
        raise PipelineError(
            f"targetModules {missing} are not in this model; its linear layers are {linear}"
        )


def sft_arguments(job: TrainJob, *, cuda: bool, bf16: bool) -> dict[str, Any]:
    """SFTConfig keyword arguments from the run config (also saved as training_args.json)."""
    c = job.config
    return {
        "output_dir": str(job.checkpoint_dir),
        "num_train_epochs": c["epochs"],
        "max_steps": c["maxSteps"] or -1,
        "per_device_train_batch_size": c["batchSize"],
        "per_device_eval_batch_size": c["batchSize"],
        "gradient_accumulation_steps": c["gradAccum"],
        "learning_rate": c["learningRate"],
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.03,  # a float < 1 is a ratio of the total steps
        "weight_decay": 0.01,
        "logging_steps": c["loggingSteps"],
        "eval_strategy": "steps",
        "eval_steps": c["evalSteps"],
        "save_strategy": "steps",
        "save_steps": c["saveSteps"],
        "save_total_limit": c["saveTotalLimit"],
        "max_length": c["maxSeqLen"],
        "packing": c["packing"],
        # "wrapped" keeps batchSize dense rows on the plain causal kernel. TRL's default "bfd"
        # keeps examples whole and apart, but its padding-free batch is one row of
        # batchSize*maxSeqLen tokens under a block mask (attention grows with its square):
        # ~14% fewer tokens/s on a CPU at 4x256 (bench/train_throughput.py). The cost of
        # "wrapped": examples are cut at row ends, and with a maxSeqLen near the examples'
        # length many answers are trained without their question in view.
        "packing_strategy": "wrapped",
        "seed": c["seed"],
        "data_seed": c["seed"],
        "bf16": bf16,
        # TRL turns activation checkpointing on by default. It trades ~30% more compute for
        # memory, which pays on a large model on a GPU, not for a CPU run of a small one.
        "gradient_checkpointing": cuda,
        "use_cpu": not cuda,
        "report_to": "none",
        "disable_tqdm": True,
        "include_num_input_tokens_seen": "non_padding",
        "dataloader_num_workers": 0,
    }


def train(job: TrainJob) -> TrainResult:
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if job.torch_threads:
        torch.set_num_threads(job.torch_threads)
    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    tokenizer = AutoTokenizer.from_pretrained(job.model_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(
        job.model_path, dtype=torch.bfloat16 if bf16 else torch.float32
    )
    c = job.config
    check_target_modules(model, c["targetModules"])
    lora = LoraConfig(
        r=c["loraRank"],
        lora_alpha=c["loraAlpha"],
        lora_dropout=c["loraDropout"],
        target_modules=list(c["targetModules"]),
        bias="none",
        task_type="CAUSAL_LM",
    )
    arguments = sft_arguments(job, cuda=cuda, bf16=bf16)
    return run_sft(job, "trl", model, tokenizer, arguments, peft_config=lora, cuda=cuda)


def run_sft(
    job: TrainJob,
    backend: str,
    model: Any,
    tokenizer: Any,
    arguments: dict[str, Any],
    *,
    peft_config: Any = None,
    cuda: bool,
    extra: dict[str, Any] | None = None,
) -> TrainResult:
    """Train `model` with TRL's SFTTrainer and the PipelineCallback, save the adapter, and
    measure: the part every in-process backend shares (trl, unsloth), so that they emit the
    same events, write the same files and map OOM and cancel the same way."""
    import datasets
    import torch
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from worker.training.callbacks import PipelineCallback
    from worker.training.data import load_records

    datasets.disable_progress_bars()
    train_set = Dataset.from_list(load_records(job.train_path, tokenizer))
    val_set = Dataset.from_list(load_records(job.val_path, tokenizer))
    callback = PipelineCallback(
        job.emitter, job.should_cancel, str(job.checkpoint_dir), should_stop=job.should_stop
    )
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(**arguments),
        train_dataset=train_set,
        eval_dataset=val_set,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=[callback],
    )
    # Trainer prints its log dicts to stdout; the CLI's stdout carries JSON events only.
    trainer.remove_callback(PrinterCallback)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.monotonic()
    try:
        trainer.train(resume_from_checkpoint=str(job.resume_from) if job.resume_from else None)
    except torch.OutOfMemoryError as exc:
        raise OutOfMemoryError(f"Out of memory during training: {exc}") from exc
    elapsed = time.monotonic() - started
    if callback.cancelled:
        raise CancelledError("Cancelled during training")
    if callback.stopped_at is not None:
        raise HandedOverError(
            f"Stopped at step {callback.stopped_at} (checkpoint saved): the worker is shutting "
            "down; the next train worker resumes the run"
        )
    if trainer.is_world_process_zero():  # under torchrun only rank 0 writes the adapter
        job.adapter_dir.mkdir(parents=True, exist_ok=True)
        trainer.model.save_pretrained(job.adapter_dir)
        tokenizer.save_pretrained(job.adapter_dir)
    state = trainer.state
    tokens = int(state.num_input_tokens_seen or 0)
    metrics = {
        "final_train_loss": callback.last_train_loss,
        "best_val_loss": min(callback.eval_losses) if callback.eval_losses else None,
        "total_steps": state.global_step,
        "training_time_seconds": round(elapsed, 2),
        "peak_vram_gb": round(torch.cuda.max_memory_allocated() / 1024**3, 3) if cuda else None,
        "peak_ram_gb": _peak_ram_gb(),
        "train_tokens": tokens,
        "tokens_per_second": round(tokens / elapsed, 2) if elapsed > 0 else None,
        "device": "cuda" if cuda else "cpu",
    }
    return TrainResult(
        backend=backend,
        metrics=metrics,
        hyperparameters=hyperparameters(job, backend, arguments, extra),
    )


def hyperparameters(
    job: TrainJob, backend: str, arguments: dict[str, Any], extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """training_args.json: what was trained, how, by which backend and library versions (the
    training process's own: Axolotl's environment passes its versions in `extra`)."""
    from worker.provenance import library_versions

    c = job.config
    return {
        "backend": backend,
        "base_model_path": str(job.model_path),
        "lora": {
            "r": c["loraRank"],
            "alpha": c["loraAlpha"],
            "dropout": c["loraDropout"],
            "target_modules": list(c["targetModules"]),
        },
        "sft": arguments,
        "config": c,
        "libraries": library_versions(),
        **(extra or {}),
    }
