"""The forward passes evaluation is made of: answer-only losses per example, greedy answers.

Shared by the evaluation (worker/evaluate.py) and the forgetting probe (worker/probe/drift.py).
Examples are Alpaca rows, tokenized as training tokenizes them (worker/training/data.py), so a
loss here is the loss the trainer saw on the same text. torch is imported inside the functions.
"""

from __future__ import annotations

import copy
from typing import Any

from worker.training.data import answer_only_example, prompt_ids

Batch = tuple[Any, Any, Any]  # input ids, attention mask, labels (-100 outside the answer)


def pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def batches(
    tokenizer: Any, examples: list[dict], max_len: int, batch_size: int, device: str
) -> list[Batch]:
    """Right-padded batches of `examples` with answer-only labels."""
    import torch

    pad = pad_id(tokenizer)
    encoded = [answer_only_example(tokenizer, e, max_len) for e in examples]
    found = []
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start : start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        ids = [i + [pad] * (width - len(i)) for i, _ in chunk]
        labels = [lab + [-100] * (width - len(lab)) for _, lab in chunk]
        mask = [[1] * len(i) + [0] * (width - len(i)) for i, _ in chunk]
        found.append(tuple(torch.tensor(t, device=device) for t in (ids, mask, labels)))
    return found


def example_losses(model: Any, batched: list[Batch]) -> tuple[list[float], list[int]]:
    """Per example: the summed cross-entropy of its answer tokens, and how many there are.

    Sums, not means, so that any subset's token-weighted loss is sum(losses) / sum(tokens):
    the gate resamples examples (shared/promotion.py) and needs exactly that."""
    import torch

    losses: list[float] = []
    tokens: list[int] = []
    with torch.no_grad():
        for input_ids, attention, labels in batched:
            logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1]
            target = labels[:, 1:]
            per_token = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.size(-1)).float(),
                target.reshape(-1),
                ignore_index=-100,
                reduction="none",
            ).view(target.shape)
            losses += per_token.sum(dim=1).tolist()
            tokens += (target != -100).sum(dim=1).tolist()
    return losses, tokens


def mean_loss(losses: list[float], tokens: list[int]) -> float:
    """Token-weighted mean of per-example summed losses (0.0 for no tokens)."""
    return sum(losses) / max(sum(tokens), 1)


def greedy_config(model: Any, tokenizer: Any, max_new_tokens: int) -> Any:
    """Greedy decoding that stops at the tokenizer's EOS or the model's own (chat end) token."""
    config = copy.deepcopy(model.generation_config)
    stops = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
    stops = sorted({t for t in [*stops, tokenizer.eos_token_id] if t is not None})
    config.update(
        do_sample=False,
        temperature=None,
        top_p=None,
        top_k=None,
        max_new_tokens=max_new_tokens,
        eos_token_id=stops,
        pad_token_id=pad_id(tokenizer),
    )
    return config


def generate(
    model: Any, tokenizer: Any, examples: list[dict], device: str, *, batch_size: int, config: Any
) -> list[str]:
    """Greedy answers, `batch_size` prompts at a time, left-padded so all answers start together."""
    import torch

    prompts = [prompt_ids(tokenizer, e) for e in examples]
    pad = pad_id(tokenizer)
    answers: list[str] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        width = max(len(p) for p in chunk)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk], device=device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=device)
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
        answers += [
            tokenizer.decode(row, skip_special_tokens=True).strip() for row in out[:, width:]
        ]
    return answers
