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
from worker import trained_set
from worker.inference import batches, example_losses, generate, greedy_config, mean_loss
from worker.preference import mean_token_logps, preference_accuracy, side_examples
from worker.probe.drift import ProbeSpec, probe_drift
from worker.scoring import score_generations
from worker.training.data import read_jsonl

MAX_NEW_TOKENS = 96
GENERATION_BATCH_SIZE = 8
CANDIDATE = "default"  # PEFT's name for the adapter loaded first
REFERENCE = "reference"


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


def _losses(model: Any, batched: list, with_reference: bool) -> dict[str, Any]:
    """Loss fields for the candidate, the reference (None without one) and the bare base model,
    and under "per_example" each example's summed loss for the gate's paired statistics."""
    base, adapter, reference = _with_each_model(
        model, with_reference, lambda: example_losses(model, batched)
    )
    tokens = adapter[1]

    def mean(measured: tuple[list[float], list[int]] | None) -> float | None:
        """None without a model or without an example left to score (not a loss of 0)."""
        if measured is None or not sum(tokens):
            return None
        return round(mean_loss(measured[0], tokens), 6)

    def perplexity(loss: float | None) -> float | None:
        return None if loss is None else round(math.exp(min(loss, 50)), 4)

    base_loss, adapter_loss = mean(base), mean(adapter)
    return {
        "base_val_loss": base_loss,
        "adapter_val_loss": adapter_loss,
        "reference_val_loss": mean(reference),
        "base_perplexity": perplexity(base_loss),
        "adapter_perplexity": perplexity(adapter_loss),
        "per_example": {
            "tokens": tokens,
            "base": base[0],
            "adapter": adapter[0],
            "reference": None if reference is None else reference[0],
        },
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
    chosen = batches(tokenizer, side_examples(pairs, "chosen"), **batching)
    rejected = batches(tokenizer, side_examples(pairs, "rejected"), **batching)

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


def _answers(
    model: Any, tokenizer: Any, asked: list[dict], with_reference: bool, options: dict[str, Any]
) -> tuple[list[str], list[str], list[str] | None]:
    """Greedy answers of the base model, the candidate and the reference (None without one)."""
    return _with_each_model(
        model, with_reference, lambda: generate(model, tokenizer, asked, **options)
    )


def _generation_fields(
    examples: list[dict],
    answers: tuple[list[str], list[str], list[str] | None],
    keep: int,
) -> dict[str, Any]:
    base_answers, adapter_answers, reference_answers = answers
    references = [e["output"] for e in examples]
    base = score_generations(base_answers, references)
    adapter = score_generations(adapter_answers, references)
    active = score_generations(reference_answers, references) if reference_answers else None
    active_rows = (
        zip(reference_answers, active["scores"], strict=True)
        if active and reference_answers
        else [(None, None)] * len(examples)
    )
    columns = (examples, base_answers, adapter_answers, base["scores"], adapter["scores"])
    rows = list(zip(*columns, active_rows, strict=True))[:keep]
    return {
        "generation_examples": len(examples),
        "base_exact_match": base["exact_match"],
        "adapter_exact_match": adapter["exact_match"],
        "reference_exact_match": active["exact_match"] if active else None,
        "exact_match_examples": base["exact_match_examples"],
        "base_rouge_l": base["rouge_l"],
        "adapter_rouge_l": adapter["rouge_l"],
        "reference_rouge_l": active["rouge_l"] if active else None,
        "rouge_l_examples": base["rouge_l_examples"],
        "samples": [
            {
                "instruction": e["instruction"],
                "reference": e["output"],
                "base": b,
                "adapter": a,
                "baseScore": bs,
                "adapterScore": ads,
                "active": active_answer,
                "activeScore": active_score,
            }
            for e, b, a, bs, ads, (active_answer, active_score) in rows
        ],
    }


def _held_out(rows: list[dict], exclude: set[bytes] | None) -> tuple[list[dict], int]:
    """The rows whose instruction no compared adapter trained on, and how many were left out."""
    if not exclude:
        return rows, 0
    kept = [row for row in rows if trained_set.key(row["instruction"]) not in exclude]
    return kept, len(rows) - len(kept)


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
    exclude: set[bytes] | None = None,
    probe: ProbeSpec | None = None,
) -> dict[str, Any]:
    """Validation loss/perplexity of base, adapter (and reference adapter) + generation scores,
    and preference accuracy on `val_pairs_path`'s pairs (None values without pairs).

    Held-out rows whose instruction key is in `exclude` (what the reference or the candidate's
    parent trained on) are left out of every figure. `samples` held-out questions are answered
    (0 skips generation: its scores are then None); `keep_samples` of them come back as
    side-by-side rows under "samples". With `probe`, the forgetting probe's losses are added.
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
    examples, left_out = _held_out(list(read_jsonl(val_path)), exclude)
    pairs = list(read_jsonl(val_pairs_path)) if val_pairs_path and val_pairs_path.is_file() else []
    pairs, _ = _held_out(pairs, exclude)
    asked = examples[:samples]
    with_reference = reference_adapter_dir is not None
    config = greedy_config(model, tokenizer, max_new_tokens)
    options = {"device": device, "batch_size": generation_batch_size, "config": config}
    batching = {"max_len": max_len, "batch_size": batch_size, "device": device}
    try:
        losses = _losses(model, batches(tokenizer, examples, **batching), with_reference)
        preferences = _preferences(model, tokenizer, pairs, batching, with_reference)
        answers = _answers(model, tokenizer, asked, with_reference, options)
        drift = probe_drift(model, tokenizer, model_path, probe) if probe else {}
    except torch.OutOfMemoryError as exc:
        raise OutOfMemoryError(f"Out of memory during evaluation: {exc}") from exc
    return {
        **losses,
        **preferences,
        **drift,
        "val_examples_evaluated": len(examples),
        "val_examples_left_out": left_out,
        **_generation_fields(asked, answers, keep_samples),
    }
