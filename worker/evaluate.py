"""Post-training evaluation: base model vs the new adapter (vs the active adapter, if any).

Loss is answer-only and token-weighted, on the same text the trainer saw. A reference adapter
(the one serving today) is loaded into the same PeftModel as a second named adapter and scored
on the same batches, so "is the new adapter better than the active one" is one comparison.

Loss alone hides whether answers are right, so the first `samples` held-out questions are
also answered greedily by the base model and the adapter and scored (worker.scoring): exact
match where the reference has a final answer (GSM8K `#### x`), ROUGE-L elsewhere. Generation
is batched with left padding: on two CPU cores it is the slowest part of evaluation.

With held-out preference pairs (val_pairs.jsonl), the three models' preference accuracy on
them (worker/preference.py) joins the losses: whether the model prefers the debate's final
answer to the answers the debate rejected.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from shared.errors import OutOfMemoryError
from worker.preference import mean_token_logps, preference_accuracy, side_examples
from worker.scoring import score_generations
from worker.training.data import answer_only_example, prompt_ids, read_jsonl

MAX_NEW_TOKENS = 96
GENERATION_BATCH_SIZE = 8
CANDIDATE = "default"  # PEFT's name for the adapter loaded first
REFERENCE = "reference"


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


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _batches(
    tokenizer: Any, examples: list[dict], max_len: int, batch_size: int, device: str
) -> list[tuple[Any, Any, Any]]:
    import torch

    pad = _pad_id(tokenizer)
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


def _greedy_config(model: Any, tokenizer: Any, max_new_tokens: int) -> Any:
    """Greedy decoding that stops at the tokenizer's EOS or the model's own (chat end) token."""
    import copy

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
        pad_token_id=_pad_id(tokenizer),
    )
    return config


def _generate(
    model: Any, tokenizer: Any, examples: list[dict], device: str, *, batch_size: int, config: Any
) -> list[str]:
    """Greedy answers, `batch_size` prompts at a time, left-padded so all answers start together."""
    import torch

    prompts = [prompt_ids(tokenizer, e) for e in examples]
    pad = _pad_id(tokenizer)
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


def _load_model(model_path: Path, adapter_dir: Path, reference_adapter_dir: Path | None) -> Any:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cuda = torch.cuda.is_available()
    dtype = torch.float32
    if cuda:  # the half precision training used: a 32B base is ~128 GB in float32, ~64 in bf16
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype)
    base = base.to("cuda" if cuda else "cpu")
    model = PeftModel.from_pretrained(base, adapter_dir, adapter_name=CANDIDATE)
    if reference_adapter_dir is not None:
        try:
            model.load_adapter(reference_adapter_dir, adapter_name=REFERENCE)
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ValueError(
                f"Reference adapter {reference_adapter_dir} does not fit base model "
                f"{model_path} ({exc}). Compare only adapters trained on the same base model."
            ) from exc
        model.set_adapter(CANDIDATE)
    return model.eval()


def _check_args(
    adapter_dir: Path, reference_adapter_dir: Path | None, samples: int, keep_samples: int
) -> None:
    if samples < 0 or keep_samples < 0:
        raise ValueError(
            f"samples ({samples}) and keep_samples ({keep_samples}) must be >= 0; "
            "set FINETUNE_EVAL_SAMPLES to 0 to skip generation"
        )
    for label, folder in (("Adapter", adapter_dir), ("Reference adapter", reference_adapter_dir)):
        if folder is not None and not (Path(folder) / "adapter_config.json").is_file():
            raise FileNotFoundError(
                f"{label} folder {folder} has no adapter_config.json: pass the folder a "
                "training run published (it holds adapter_config.json and the weights)"
            )


def _losses(model: Any, batches: list, with_reference: bool) -> dict[str, Any]:
    """Loss fields for the candidate, the reference (None without one) and the bare base model."""
    base, adapter, reference = _with_each_model(
        model, with_reference, lambda: _mean_loss(model, batches)
    )
    return {
        "base_val_loss": round(base, 6),
        "adapter_val_loss": round(adapter, 6),
        "reference_val_loss": None if reference is None else round(reference, 6),
        "base_perplexity": round(math.exp(min(base, 50)), 4),
        "adapter_perplexity": round(math.exp(min(adapter, 50)), 4),
    }


def _with_each_model(model: Any, with_reference: bool, measure: Any) -> tuple[Any, Any, Any]:
    """`measure()` under the base model, the candidate and the reference (None without one)."""
    adapter = measure()
    reference = None
    if with_reference:
        model.set_adapter(REFERENCE)
        reference = measure()
        model.set_adapter(CANDIDATE)
    with model.disable_adapter():
        base = measure()
    return base, adapter, reference


def _preferences(
    model: Any, tokenizer: Any, pairs: list[dict], batching: dict[str, Any], with_reference: bool
) -> dict[str, Any]:
    """Preference accuracy of base, adapter and reference on the held-out pairs."""
    chosen = _batches(tokenizer, side_examples(pairs, "chosen"), **batching)
    rejected = _batches(tokenizer, side_examples(pairs, "rejected"), **batching)

    def accuracy() -> float | None:
        return preference_accuracy(
            mean_token_logps(model, chosen), mean_token_logps(model, rejected)
        )

    base, adapter, reference = (
        _with_each_model(model, with_reference, accuracy) if pairs else (None, None, None)
    )
    return {
        "base_preference_accuracy": base,
        "adapter_preference_accuracy": adapter,
        "reference_preference_accuracy": reference,
        "preference_pairs_evaluated": len(pairs),
    }


def _generation_fields(
    examples: list[dict], base_answers: list[str], adapter_answers: list[str], keep: int
) -> dict[str, Any]:
    references = [e["output"] for e in examples]
    base = score_generations(base_answers, references)
    adapter = score_generations(adapter_answers, references)
    columns = (examples, base_answers, adapter_answers, base["scores"], adapter["scores"])
    rows = list(zip(*columns, strict=True))[:keep]
    return {
        "generation_examples": len(examples),
        "base_exact_match": base["exact_match"],
        "adapter_exact_match": adapter["exact_match"],
        "exact_match_examples": base["exact_match_examples"],
        "base_rouge_l": base["rouge_l"],
        "adapter_rouge_l": adapter["rouge_l"],
        "rouge_l_examples": base["rouge_l_examples"],
        "samples": [
            {
                "instruction": e["instruction"],
                "reference": e["output"],
                "base": b,
                "adapter": a,
                "baseScore": bs,
                "adapterScore": ads,
            }
            for e, b, a, bs, ads in rows
        ],
    }


def evaluate_adapter(
    model_path: Path,
    adapter_dir: Path,
    val_path: Path,
    *,
    max_len: int,
    batch_size: int = 4,
    samples: int = 2,
    torch_threads: int = 0,
    reference_adapter_dir: Path | None = None,
    keep_samples: int = 5,
    max_new_tokens: int = MAX_NEW_TOKENS,
    generation_batch_size: int = GENERATION_BATCH_SIZE,
    val_pairs_path: Path | None = None,
) -> dict[str, Any]:
    """Validation loss/perplexity of base, adapter (and reference adapter) + generation scores,
    and preference accuracy on `val_pairs_path`'s pairs (None values without pairs).

    `samples` held-out questions are answered (0 skips generation: its scores are then None);
    `keep_samples` of them come back as side-by-side rows under "samples".
    """
    import torch

    _check_args(adapter_dir, reference_adapter_dir, samples, keep_samples)
    if torch_threads:
        torch.set_num_threads(torch_threads)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(adapter_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = _load_model(model_path, adapter_dir, reference_adapter_dir)
    device = str(model.device)
    examples = list(read_jsonl(val_path))
    pairs = list(read_jsonl(val_pairs_path)) if val_pairs_path and val_pairs_path.is_file() else []
    asked = examples[:samples]
    config = _greedy_config(model, tokenizer, max_new_tokens)
    generate = {"device": device, "batch_size": generation_batch_size, "config": config}
    try:
        batching = {"max_len": max_len, "batch_size": batch_size, "device": device}
        batches = _batches(tokenizer, examples, **batching)
        losses = _losses(model, batches, reference_adapter_dir is not None)
        preferences = _preferences(
            model, tokenizer, pairs, batching, reference_adapter_dir is not None
        )
        with model.disable_adapter():
            base_answers = _generate(model, tokenizer, asked, **generate)
        adapter_answers = _generate(model, tokenizer, asked, **generate)
    except torch.OutOfMemoryError as exc:
        raise OutOfMemoryError(f"Out of memory during evaluation: {exc}") from exc
    return {
        **losses,
        **preferences,
        "val_examples_evaluated": len(examples),
        **_generation_fields(asked, base_answers, adapter_answers, keep_samples),
    }
