"""Post-training evaluation: validation loss and perplexity, base model vs adapter.

Loss is answer-only and token-weighted, on the same text the trainer saw. A few held-out
questions are also answered by both models (greedy) so a person can read the difference.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from shared.errors import OutOfMemoryError
from worker.training.data import answer_only_example, prompt_ids, read_jsonl

MAX_NEW_TOKENS = 96


def _mean_loss(model: Any, batches: list[tuple[Any, Any, Any]]) -> float:
    import torch

    total, tokens = 0.0, 0
    with torch.no_grad():
        for input_ids, attention, labels in batches:
            logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1]
            target = labels[:, 1:]
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)).float(),
                target.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            total += float(loss)
            tokens += int((target != -100).sum())
    return total / max(tokens, 1)


def _batches(
    tokenizer: Any, examples: list[dict], max_len: int, batch_size: int, device: str
) -> list[tuple[Any, Any, Any]]:
    import torch

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [answer_only_example(tokenizer, e, max_len) for e in examples]
    batches = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = [i + [pad] * (width - len(i)) for i, _ in chunk]
        labels = [lab + [-100] * (width - len(lab)) for _, lab in chunk]
        mask = [[1] * len(i) + [0] * (width - len(i)) for i, _ in chunk]
        batches.append(tuple(torch.tensor(t, device=device) for t in (ids, mask, labels)))
    return batches


def _answer(model: Any, tokenizer: Any, example: dict, device: str) -> str:
    import torch

    ids = torch.tensor([prompt_ids(tokenizer, example)], device=device)
    with torch.no_grad():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=MAX_NEW_TOKENS,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def evaluate_adapter(
    model_path: Path,
    adapter_dir: Path,
    val_path: Path,
    *,
    max_len: int,
    batch_size: int = 4,
    samples: int = 2,
    torch_threads: int = 0,
) -> dict[str, Any]:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if torch_threads:
        torch.set_num_threads(torch_threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(device)
    model = PeftModel.from_pretrained(base, adapter_dir).eval()
    examples = list(read_jsonl(val_path))
    try:
        batches = _batches(tokenizer, examples, max_len, batch_size, device)
        adapter_loss = _mean_loss(model, batches)
        with model.disable_adapter():
            base_loss = _mean_loss(model, batches)
            base_answers = [_answer(model, tokenizer, e, device) for e in examples[:samples]]
        adapter_answers = [_answer(model, tokenizer, e, device) for e in examples[:samples]]
    except torch.OutOfMemoryError as exc:
        raise OutOfMemoryError(f"Out of memory during evaluation: {exc}") from exc
    return {
        "base_val_loss": round(base_loss, 6),
        "adapter_val_loss": round(adapter_loss, 6),
        "base_perplexity": round(math.exp(min(base_loss, 50)), 4),
        "adapter_perplexity": round(math.exp(min(adapter_loss, 50)), 4),
        "val_examples_evaluated": len(examples),
        "samples": [
            {"instruction": e["instruction"], "reference": e["output"], "base": b, "adapter": a}
            for e, b, a in zip(examples[:samples], base_answers, adapter_answers, strict=True)
        ],
    }
