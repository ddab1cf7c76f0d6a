"""The forgetting probe: how far a candidate adapter moved the model outside the traces' domain.

worker/probe/prompts.jsonl holds 240 general prompts written for this project (writing, facts,
code, reasoning, interleaved so the first N are balanced). The base model answers the first
FINETUNE_PROBE_PROMPTS of them greedily, once per base model: the answers are cached beside
the converted models (MODEL_CACHE_DIR/probes/) under a key of the model's revision, the prompt
file and the answer length, and reused by every later run on that model.

Drift is the candidate's answer-only loss on those answers minus the base model's own
(nats/token). It measures how much less likely the adapter finds what the base model would
have said to everyday requests: a general shift of behaviour (style, format, a habit of ending
every answer with "The answer is N"). It does not measure whether those answers were right,
nor knowledge the prompts do not touch: a drift of 0 says the model behaves as before on these
prompts, not that nothing was forgotten.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from worker.inference import batches, example_losses, generate, greedy_config, mean_loss

PROMPTS_FILE = "prompts.jsonl"
GENERATION_BATCH_SIZE = 8
BATCH_SIZE = 8
PROBE_MAX_LEN = 1024


@dataclass(frozen=True)
class ProbeSpec:
    """How the probe runs: how many prompts, how long the answers, where they are cached."""

    prompts: int
    max_new_tokens: int
    cache_dir: Path


def _prompt_file() -> bytes:
    return (resources.files("worker.probe") / PROMPTS_FILE).read_bytes()


def load_prompts(count: int) -> list[dict[str, str]]:
    """The first `count` probe prompts as Alpaca examples (no output yet)."""
    rows = [json.loads(line) for line in _prompt_file().decode().splitlines() if line.strip()]
    return [
        {"instruction": r["prompt"], "input": "", "output": "", "domain": r["domain"]}
        for r in rows[:count]
    ]


def cache_path(model_path: Path, spec: ProbeSpec) -> Path:
    from worker.provenance import model_revision

    digest = hashlib.sha256()
    for part in (model_revision(model_path), str(spec.prompts), str(spec.max_new_tokens)):
        digest.update(part.encode() + b"\0")
    digest.update(_prompt_file())
    return spec.cache_dir / "probes" / f"{digest.hexdigest()[:24]}.jsonl"


def base_answers(model: Any, tokenizer: Any, model_path: Path, spec: ProbeSpec) -> list[dict]:
    """The probe examples with the base model's greedy answers and its own loss on each
    (summed over the answer's tokens): from the cache, or computed with the adapter disabled
    and cached atomically. The base model never changes, so neither do they."""
    path = cache_path(model_path, spec)
    if path.is_file():
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    prompts = load_prompts(spec.prompts)
    config = greedy_config(model, tokenizer, spec.max_new_tokens)
    device = str(model.device)
    with model.disable_adapter():
        answers = generate(
            model, tokenizer, prompts, device, batch_size=GENERATION_BATCH_SIZE, config=config
        )
        examples = [{**p, "output": a} for p, a in zip(prompts, answers, strict=True) if a]
        losses, tokens = example_losses(model, _batches(tokenizer, examples, device))
    rows = [
        {**e, "baseLoss": loss, "tokens": count}
        for e, loss, count in zip(examples, losses, tokens, strict=True)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    os.replace(temporary, path)
    return rows


def _batches(tokenizer: Any, examples: list[dict], device: str) -> list:
    # A fixed length, not the run's maxSeqLen: the cached base losses must fit every run, and
    # a probe prompt with its answer is far shorter than this.
    return batches(tokenizer, examples, max_len=PROBE_MAX_LEN, batch_size=BATCH_SIZE, device=device)


def probe_drift(model: Any, tokenizer: Any, model_path: Path, spec: ProbeSpec) -> dict[str, Any]:
    """The candidate's and the base model's loss on the base model's probe answers, and the
    drift (their difference). An answer that came out empty carries no tokens to score."""
    rows = base_answers(model, tokenizer, model_path, spec)
    if not rows:
        return {"probe_prompts": 0}
    losses, tokens = example_losses(model, _batches(tokenizer, rows, str(model.device)))
    candidate_loss = mean_loss(losses, tokens)
    base_loss = mean_loss([r["baseLoss"] for r in rows], [r["tokens"] for r in rows])
    return {
        "probe_prompts": len(rows),
        "base_probe_loss": round(base_loss, 6),
        "adapter_probe_loss": round(candidate_loss, 6),
        "probe_drift": round(candidate_loss - base_loss, 6),
    }
