"""The supervised fine-tuning loop the in-process backends share (trl, unsloth).

TRL's SFTTrainer with the PipelineCallback, the adapter save and the measurements live here,
not in one backend that the others import, so that trl and unsloth emit the same events, write
the same files and map OOM and cancel the same way while no backend depends on another. The
axolotl backend, which trains in a subprocess, shares the target-module check and the
training_args.json layout. torch, TRL and datasets are imported inside the functions: this
module is imported by the backends only, once a run uses one.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any

from shared.errors import CancelledError, HandedOverError, OutOfMemoryError, PipelineError
from worker.training.job import TrainJob, TrainResult


def _peak_ram_gb() -> float:
    # ru_maxrss is in KiB on Linux.
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3)


def check_target_modules(model: Any, wanted: list[str]) -> None:
    """PipelineError naming the model's linear layers when `wanted` names a missing module."""
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
        "num_train_epochs": c.epochs,
        "max_steps": c.max_steps or -1,
        "per_device_train_batch_size": c.batch_size,
        "per_device_eval_batch_size": c.batch_size,
        "gradient_accumulation_steps": c.grad_accum,
        "learning_rate": c.learning_rate,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.03,  # a float < 1 is a ratio of the total steps
        "weight_decay": 0.01,
        "logging_steps": c.logging_steps,
        "eval_strategy": "steps",
        "eval_steps": c.eval_steps,
        "save_strategy": "steps",
        "save_steps": c.save_steps,
        "save_total_limit": c.save_total_limit,
        "max_length": c.max_seq_len,
        "packing": c.packing,
        # "wrapped" keeps batchSize dense rows on the plain causal kernel. TRL's default "bfd"
        # keeps examples whole and apart, but its padding-free batch is one row of
        # batchSize*maxSeqLen tokens under a block mask (attention grows with its square):
        # ~14% fewer tokens/s on a CPU at 4x256 (bench/train_throughput.py). The cost of
        # "wrapped": examples are cut at row ends, and with a maxSeqLen near the examples'
        # length many answers are trained without their question in view.
        "packing_strategy": "wrapped",
        "seed": c.seed,
        "data_seed": c.seed,
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


def pipeline_callback(job: TrainJob, checkpoint_dir: Path, **stage: Any) -> Any:
    """The PipelineCallback for one stage of `job` (stage, step_offset, steps_after)."""
    from worker.training.callbacks import PipelineCallback

    return PipelineCallback(
        job.emitter, job.should_cancel, str(checkpoint_dir), should_stop=job.should_stop, **stage
    )


def quiet(trainer: Any) -> Any:
    """Trainer prints its log dicts to stdout; the CLI's stdout carries JSON events only."""
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    return trainer


def _trainer(
    job: TrainJob, model: Any, tokenizer: Any, arguments: dict, peft: Any, callback: Any
) -> Any:
    """SFTTrainer on the job's files with the PipelineCallback."""
    import datasets
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from worker.training.data import load_records

    datasets.disable_progress_bars()
    return quiet(
        SFTTrainer(
            model=model,
            args=SFTConfig(**arguments),
            train_dataset=Dataset.from_list(load_records(job.train_path, tokenizer)),
            eval_dataset=Dataset.from_list(load_records(job.val_path, tokenizer)),
            processing_class=tokenizer,
            peft_config=peft,
            callbacks=[callback],
        )
    )


def run_trainer(trainer: Any, callback: Any, resume_from: Path | None, *, cuda: bool) -> float:
    """trainer.train() from `resume_from`, with the pipeline's outcomes: OutOfMemoryError,
    CancelledError, HandedOverError (checkpoint saved). Returns the seconds it trained."""
    import torch

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.monotonic()
    try:
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
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
    return elapsed


def save_adapter(model: Any, tokenizer: Any, folder: Path) -> None:
    """The trained adapter only: DPO's frozen reference copy ("ref") is not part of it."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, selected_adapters=["default"])
    tokenizer.save_pretrained(folder)


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
    steps_after: int = 0,
    resume_from: Path | None = None,
    save: bool = True,
) -> tuple[TrainResult, Any]:
    """Train `model` with TRL's SFTTrainer and the PipelineCallback, save the adapter into
    job.adapter_dir (unless `save` is False: a DPO stage follows), and measure: the part every
    in-process backend shares (trl, unsloth). Returns the result and the trained model."""
    callback = pipeline_callback(job, job.checkpoint_dir, stage="sft", steps_after=steps_after)
    trainer = _trainer(job, model, tokenizer, arguments, peft_config, callback)
    elapsed = run_trainer(trainer, callback, resume_from, cuda=cuda)
    if save and trainer.is_world_process_zero():  # under torchrun only rank 0 writes it
        save_adapter(trainer.model, tokenizer, job.adapter_dir)
    result = TrainResult(
        backend=backend,
        metrics=measurements(trainer.state, callback, elapsed, cuda=cuda),
        hyperparameters=hyperparameters(job, backend, arguments, extra),
    )
    return result, trainer


def measurements(state: Any, callback: Any, elapsed: float, *, cuda: bool) -> dict[str, Any]:
    """Seed §5.1 metrics of one stage's trainer."""
    import torch

    tokens = int(state.num_input_tokens_seen or 0)
    return {
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
            "r": c.lora_rank,
            "alpha": c.lora_alpha,
            "dropout": c.lora_dropout,
            "target_modules": list(c.target_modules),
        },
        "sft": arguments,
        "config": c.to_dict(),
        "libraries": library_versions(),
        **(extra or {}),
    }
