"""Alpaca JSONL -> chat prompt/completion records, and answer-only tokenization.

Every backend and the evaluator see the same text: the model's chat template when it has one
(user turn = instruction + input, assistant turn = output), else the Alpaca prompt format.
Loss is computed on the answer only.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ALPACA_PROMPT = "### Instruction:\n{instruction}\n\n{input_block}### Response:\n"


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)


def user_text(example: dict[str, Any]) -> str:
    extra = (example.get("input") or "").strip()
    return example["instruction"] + (f"\n\n{extra}" if extra else "")


def to_record(example: dict[str, Any], *, chat: bool, eos_token: str | None) -> dict[str, Any]:
    """One training record in TRL's prompt/completion format."""
    if chat:
        return {
            "prompt": [{"role": "user", "content": user_text(example)}],
            "completion": [{"role": "assistant", "content": example["output"]}],
        }
    extra = (example.get("input") or "").strip()
    prompt = ALPACA_PROMPT.format(
        instruction=example["instruction"],
        input_block=f"### Input:\n{extra}\n\n" if extra else "",
    )
    return {"prompt": prompt, "completion": example["output"] + (eos_token or "")}


def to_pair_record(pair: dict[str, Any], *, chat: bool, eos_token: str | None) -> dict[str, Any]:
    """One preference pair in TRL's prompt/chosen/rejected format: the prompt is built exactly
    as the SFT example's (`to_record`) from the pair's instruction and input."""
    chosen = to_record({**pair, "output": pair["chosen"]}, chat=chat, eos_token=eos_token)
    rejected = to_record({**pair, "output": pair["rejected"]}, chat=chat, eos_token=eos_token)
    return {
        "prompt": chosen["prompt"],
        "chosen": chosen["completion"],
        "rejected": rejected["completion"],
    }


def load_pair_records(path: Path, tokenizer: Any) -> list[dict[str, Any]]:
    chat = has_chat_template(tokenizer)
    return [to_pair_record(p, chat=chat, eos_token=tokenizer.eos_token) for p in read_jsonl(path)]


def count_lines(path: Path | None) -> int:
    """Records in a JSONL file; 0 when there is no file."""
    if path is None or not path.is_file():
        return 0
    with path.open(encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def load_records(path: Path, tokenizer: Any) -> list[dict[str, Any]]:
    chat = has_chat_template(tokenizer)
    return [to_record(e, chat=chat, eos_token=tokenizer.eos_token) for e in read_jsonl(path)]


def _ids(encoded: Any) -> list[int]:
    if isinstance(encoded, dict) or hasattr(encoded, "keys"):
        encoded = encoded["input_ids"]
    return list(encoded)


def prompt_ids(tokenizer: Any, example: dict[str, Any]) -> list[int]:
    """Token ids of the prompt, ending where the model's answer starts."""
    record = to_record(example, chat=has_chat_template(tokenizer), eos_token=tokenizer.eos_token)
    if has_chat_template(tokenizer):
        return _ids(
            tokenizer.apply_chat_template(
                record["prompt"], add_generation_prompt=True, tokenize=True
            )
        )
    return _ids(tokenizer(record["prompt"], add_special_tokens=True))


def answer_only_example(
    tokenizer: Any, example: dict[str, Any], max_len: int
) -> tuple[list[int], list[int]]:
    """(input_ids, labels) with labels -100 on the prompt: the loss covers the answer only."""
    record = to_record(example, chat=has_chat_template(tokenizer), eos_token=tokenizer.eos_token)
    prompt = prompt_ids(tokenizer, example)
    if has_chat_template(tokenizer):
        full = _ids(
            tokenizer.apply_chat_template(record["prompt"] + record["completion"], tokenize=True)
        )
    else:
        full = prompt + _ids(tokenizer(record["completion"], add_special_tokens=False))
    full = full[:max_len]
    labels = [-100] * min(len(prompt), len(full)) + full[len(prompt) :]
    return full, labels
