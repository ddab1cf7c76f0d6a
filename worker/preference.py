"""Held-out preference accuracy: how often a model prefers the debate's final answer.

For each held-out pair (val_pairs.jsonl) the model scores `chosen` and `rejected` by their mean
per-token log-probability on the answer tokens, after the same prompt SFT and DPO train on;
the accuracy is the share of pairs where chosen scores strictly higher. The mean, not the sum:
a sum favours the shorter answer whatever its content. The same pairs are scored by the base
model, the new adapter and the active adapter, so the three numbers compare directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def preference_accuracy(chosen: Sequence[float], rejected: Sequence[float]) -> float | None:
    """Share of pairs whose chosen answer scores strictly higher; None without pairs."""
    if len(chosen) != len(rejected):
        raise ValueError(f"{len(chosen)} chosen scores for {len(rejected)} rejected ones")
    if not chosen:
        return None
    wins = sum(1 for c, r in zip(chosen, rejected, strict=True) if c > r)
    return round(wins / len(chosen), 6)


def mean_token_logps(model: Any, batches: list[tuple[Any, Any, Any]]) -> list[float]:
    """Per sequence: the mean log-probability of its answer tokens (labels != -100)."""
    import torch

    scores: list[float] = []
    with torch.no_grad():
        for input_ids, attention, labels in batches:
            logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1].float()
            target = labels[:, 1:]
            mask = target != -100
            logps = torch.log_softmax(logits, dim=-1)
            picked = logps.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
            sums = (picked * mask).sum(dim=1)
            scores += (sums / mask.sum(dim=1).clamp(min=1)).tolist()
    return scores


def side_examples(pairs: list[dict[str, Any]], side: str) -> list[dict[str, Any]]:
    """The pairs' `side` ("chosen" or "rejected") as Alpaca examples, prompts as in training."""
    return [
        {"instruction": p["instruction"], "input": p["input"], "output": p[side]} for p in pairs
    ]
