"""The `unsloth` backend (seed §2.5): Unsloth's FastLanguageModel, 4-bit QLoRA on a GPU.

The stages are the ones trl uses too (objective.train_objective: TRL's SFTTrainer, then
TRL's DPOTrainer for the objectives with DPO, on Unsloth's patched model, with the
PipelineCallback), so both emit the same events, write the same adapter files and map OOM and
cancel alike; only loading and LoRA wrapping differ. On a CUDA GPU the base model loads in 4-bit
(bitsandbytes) with Unsloth's gradient checkpointing. Without a GPU, Unsloth (2026.10) trains on
the CPU; 4-bit needs CUDA, so there the model loads in float32: that is how the tests run this
backend for real.
Unsloth must be imported before transformers, TRL and PEFT to patch them; it is imported first
here (the loops import those only inside their functions), and this module is imported only when
a run uses the backend.
"""

from __future__ import annotations

import os
from typing import Any

from shared.errors import BackendUnavailableError
from worker.training.job import TrainJob, TrainResult
from worker.training.objective import train_objective
from worker.training.sft_loop import check_target_modules, sft_arguments

NAME = "unsloth"  # the registry's name for this backend (worker/training/backends/__init__.py)

# Unsloth's import prints banners and checks for updates; neither belongs in a worker log.
_QUIET_ENV = {"UNSLOTH_DISABLE_STATISTICS": "1", "UNSLOTH_ENABLE_LOGGING": "0"}


def _import_unsloth() -> Any:
    for key, value in _QUIET_ENV.items():
        os.environ.setdefault(key, value)
    try:
        import unsloth  # noqa: F401 - first, so that its patches reach transformers/trl/peft
        from unsloth import FastLanguageModel
    except ImportError as exc:
        raise BackendUnavailableError(
            f"Unsloth could not be imported ({exc}). Install the `unsloth` extra "
            "(`make venv-unsloth`) or set FINETUNE_BACKEND=trl.",
            suggestion="Set FINETUNE_BACKEND=trl",
        ) from exc
    return FastLanguageModel


def load_model(job: TrainJob, *, cuda: bool, bf16: bool) -> tuple[Any, Any]:
    """The base model (4-bit on CUDA) with LoRA adapters attached, and its tokenizer."""
    fast = _import_unsloth()
    import torch

    c = job.config
    model, tokenizer = fast.from_pretrained(
        model_name=str(job.model_path),
        max_seq_length=c.max_seq_len,
        dtype=(torch.bfloat16 if bf16 else torch.float16) if cuda else torch.float32,
        load_in_4bit=cuda,
        local_files_only=True,
    )
    check_target_modules(model, c.target_modules)
    model = fast.get_peft_model(
        model,
        r=c.lora_rank,
        lora_alpha=c.lora_alpha,
        lora_dropout=c.lora_dropout,
        target_modules=list(c.target_modules),
        bias="none",
        # Unsloth's offloaded checkpointing saves VRAM on a GPU; on a CPU it only costs time.
        use_gradient_checkpointing="unsloth" if cuda else False,
        random_state=c.seed,
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def train(job: TrainJob) -> TrainResult:
    """Load with Unsloth (4-bit on CUDA), then run the shared SFT loop."""
    _import_unsloth()
    import torch

    if job.torch_threads:
        torch.set_num_threads(job.torch_threads)
    cuda = torch.cuda.is_available()
    bf16 = cuda and torch.cuda.is_bf16_supported()
    model, tokenizer = load_model(job, cuda=cuda, bf16=bf16)
    arguments = sft_arguments(job, cuda=cuda, bf16=bf16)
    # The model is already a PEFT model; Unsloth does its own checkpointing (TRL's would wrap
    # the model a second time).
    arguments["gradient_checkpointing"] = False
    arguments["fp16"] = cuda and not bf16
    import unsloth

    extra = {
        "unsloth": {
            "version": getattr(unsloth, "__version__", None),
            "load_in_4bit": cuda,
            "gradient_checkpointing": "unsloth" if cuda else False,
        }
    }
    precision = {"gradient_checkpointing": False, "fp16": arguments["fp16"]}
    return train_objective(
        job,
        NAME,
        model,
        tokenizer,
        arguments,
        cuda=cuda,
        bf16=bf16,
        extra=extra,
        dpo_overrides=precision,
    )
