"""The `trl` backend: transformers + PEFT LoRA + TRL's SFTTrainer and DPOTrainer, on a CPU
or a GPU.

Prompt/completion chat records (worker/training/data.py) make TRL compute the loss on the
answer only. Packing (on by default) fills each row with several short examples. Only loading
and LoRA wrapping are this backend's own; the stages are the shared ones (objective.py:
sft_loop, then dpo_loop for the objectives with DPO).
"""

from __future__ import annotations

from worker.training.job import TrainJob, TrainResult
from worker.training.objective import train_objective
from worker.training.sft_loop import check_target_modules, sft_arguments

NAME = "trl"  # the registry's name for this backend (worker/training/backends/__init__.py)


def train(job: TrainJob) -> TrainResult:
    """Load the base model, attach a PEFT LoRA through the trainer, and train the objective."""
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
    check_target_modules(model, c.target_modules)
    lora = LoraConfig(
        r=c.lora_rank,
        lora_alpha=c.lora_alpha,
        lora_dropout=c.lora_dropout,
        target_modules=list(c.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    # Looked up here at call time: bench/throughput_child.py swaps this module's sft_arguments.
    arguments = sft_arguments(job, cuda=cuda, bf16=bf16)
    return train_objective(
        job, NAME, model, tokenizer, arguments, peft_config=lora, cuda=cuda, bf16=bf16
    )
