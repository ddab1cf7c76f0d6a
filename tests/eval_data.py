"""Held-out rows and random LoRA adapters on the tiny model, for the evaluation tests."""

from __future__ import annotations

from pathlib import Path

from worker.evaluate import evaluate_adapter

VAL_ROWS = [
    {"instruction": "Tom has 3 apples, buys 4. How many?", "input": "", "output": "3+4=7\n#### 7"},
    {"instruction": "Describe the sky.", "input": "", "output": "The sky is blue and wide."},
    {"instruction": "Double 6.", "input": "Show the work.", "output": "6*2=12\n#### 12"},
    {"instruction": "Name a colour.", "input": "", "output": "Red is a colour."},
    {"instruction": "Add 10 and 5.", "input": "", "output": "#### 15"},
]


def random_adapter(model_path: Path, folder: Path, seed: int) -> Path:
    """A LoRA adapter with random (non-zero) weights, saved as training saves it."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(model_path)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    config.init_lora_weights = False  # random B too: the adapter must change the model
    model = get_peft_model(base, config)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(model_path).save_pretrained(folder)
    return folder


def run_evaluation(tiny_model: Path, adapter: Path, val: Path, **kwargs: object) -> dict:
    options = {"max_len": 128, "batch_size": 2, "samples": 0, "max_new_tokens": 8, **kwargs}
    return evaluate_adapter(tiny_model, adapter, val, **options)  # type: ignore[arg-type]
