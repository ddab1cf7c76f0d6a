"""What the warm start buys: retraining on a growing trace store, from scratch and warm.

Usage (from the checkout's root; the defaults take about 10 minutes of training, plus about 4
of evaluation and model loading, on 2 CPU cores):

    .venv/bin/python bench/retraining.py [--rounds 5] [--per-round 8] [--eval-questions 24]
        [--replay-ratio 0.5] [--model smollm2:135m] [--max-seq-len 256] [--work DIR]
        [--base] [--json bench/results/retraining.json] [--write-readme]

Data: ../shared/data/gsm8k/ beside the checkout. Round r adds --per-round new questions of
train.jsonl to a trace store as debates (the question, the reference solution as the final
answer and as an accepted proposer round, quality 9). The first --eval-questions questions of
test.jsonl, never in the store, are the held-out set of every round and both arms.

Each round trains two adapters through run_backend(TrainJob), exactly as a queued run (SFT, trl
backend, LoRA with the settings' defaults, 1 epoch, lr 2e-4, 4 rows of --max-seq-len packed
tokens per step, seed 42), each in a process of its own with torch on every core:
- from scratch: the service's export of the whole store, a fresh adapter;
- warm start: the export with the previous warm adapter as parent (what it trained on, the
  adapter's trained_instructions.bin, is left out but for --replay-ratio replayed examples per
  new one: FINETUNE_REPLAY_RATIO's default), training from its weights (initFrom "active").
  Round 1 has no parent: the warm arm's round 1 is the from-scratch adapter of round 1.

Measured per round and arm: examples and tokens trained (the trainer's train_tokens), training
seconds, and the answer-only, token-weighted loss on the held-out set (base model + adapter
through PEFT, worker/inference.py). For the ratios, every trained example is also counted as
training tokenizes it (worker/training/data.py), the new examples apart.

Goals: the warm start trains at most 1.5x the tokens of its new examples, flat across rounds
(max/min over rounds 2.. within 1.2), and its last adapter's val loss is within 2% of the
from-scratch one (warm / scratch <= 1.02). Sizes: SmolLM2-135M trains about 60 tokens/s in
fp32 on 2 CPU cores and a debate is about 225 tokens in its chat template; from scratch trains
~0.9 * per-round * r(r+1)/2 examples in round r, the warm start ~1.35 * per-round, so 8 a
round is ~150 examples, ~34k tokens for both arms over 5 rounds. --per-round must be 2 or
more: a warm export holds one new question back for validation.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import spec_child  # noqa: E402 - bench/ is this script's folder

DATA = ROOT.parent / "shared" / "data" / "gsm8k"
SEED = 42
MIN_QUALITY = 8.0
VAL_SPLIT = 0.1
TRAINING_EVAL = 4  # held-out rows the trainer gets (it never evaluates: evalSteps is huge)
BASE_CONFIG = {
    "backend": "trl",
    "objective": "sft",
    "epochs": 1,
    "learningRate": 2e-4,
    "batchSize": 4,
    "gradAccum": 1,
    "packing": True,
    "seed": SEED,
    "evalSteps": 1_000_000,  # no evaluation inside training: the seconds are training's
    "saveSteps": 1_000_000,
    "loggingSteps": 5,
    "evalSamples": 0,
    "valSplit": VAL_SPLIT,
}
TOKEN_GOAL, FLAT_GOAL, LOSS_GOAL = 1.5, 1.2, 1.02
MARKERS = ("<!-- retraining table -->", "<!-- end of retraining table -->")


def gsm8k(name: str, count: int) -> list[dict[str, str]]:
    with (DATA / name).open(encoding="utf-8") as handle:
        rows = [json.loads(line) for _, line in zip(range(count), handle, strict=False)]
    if len(rows) < count:
        raise SystemExit(f"{DATA / name} has {len(rows)} questions, {count} are needed")
    return rows


def debates(rows: list[dict[str, str]], start: int) -> list[Any]:
    from shared.traces import Round, Trace

    epoch = datetime(2026, 1, 1, tzinfo=UTC)
    return [
        Trace(
            id=f"gsm8k-train-{start + i:05d}",
            query=row["question"],
            final_answer=row["answer"],
            quality_score=9.0,
            created_at=(epoch + timedelta(minutes=start + i)).isoformat(),
            rounds=[Round("proposer", row["answer"], "gsm8k-reference", "accepted")],
        )
        for i, row in enumerate(rows)
    ]


def child(spec_path: Path) -> None:
    """One arm of one round in this process: train (unless none), count, evaluate."""
    spec = spec_child.read_spec(spec_path)
    result: dict[str, Any] = {}
    started = time.monotonic()
    if spec.get("export"):
        result |= train(spec)
        result |= count_tokens(spec)
    result |= evaluate(spec)
    result["process_seconds"] = round(time.monotonic() - started, 1)
    spec_child.report(result)


def train(spec: dict[str, Any]) -> dict[str, Any]:
    from shared.events import Emitter
    from shared.run_config import build_config
    from shared.settings import Settings
    from worker.training.backends import run_backend
    from worker.training.job import TrainJob

    export, work = Path(spec["export"]), Path(spec["work"])
    lines = (export / "val.jsonl").read_text(encoding="utf-8").splitlines()[:TRAINING_EVAL]
    val = work / "val_during_training.jsonl"
    val.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    warm = spec["init_adapter"] is not None
    config = build_config(
        Settings(),
        {
            **BASE_CONFIG,
            "baseModel": spec["model"],
            "maxSeqLen": spec["max_seq_len"],
            "initFrom": "active" if warm else "base",
        },
    )
    job = TrainJob(
        run_id=f"bench-retraining-{work.name}",
        config=config,
        model_path=Path(spec["model"]),
        train_path=export / "train.jsonl",
        val_path=val,
        adapter_dir=Path(spec["adapter"]),
        checkpoint_dir=work / "checkpoints",
        emitter=Emitter(None, []),
        torch_threads=spec["threads"],
        init_adapter=Path(spec["init_adapter"]) if warm else None,
    )
    metrics = run_backend(job).metrics
    return dict(
        metrics=metrics,
        train_tokens=metrics["train_tokens"],
        seconds=metrics["training_time_seconds"],
    )


def count_tokens(spec: dict[str, Any]) -> dict[str, Any]:
    """Every trained example's tokens as training tokenizes it (packing: no truncation); the
    examples the parent did not train on apart."""
    from transformers import AutoTokenizer

    from worker import trained_set
    from worker.training.data import answer_only_example, read_jsonl

    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    old = trained_set.read(Path(spec["init_adapter"])) if spec["init_adapter"] else None
    old = old or set()
    examples = new = counted = new_tokens = 0
    for row in read_jsonl(Path(spec["export"]) / "train.jsonl"):
        tokens = len(answer_only_example(tokenizer, row, 10**9)[0])
        examples += 1
        counted += tokens
        if trained_set.key(row["instruction"]) not in old:
            new += 1
            new_tokens += tokens
    return dict(examples=examples, new_examples=new, counted_tokens=counted, new_tokens=new_tokens)


def evaluate(spec: dict[str, Any]) -> dict[str, Any]:
    """Answer-only, token-weighted loss on the held-out set: base model + adapter (PEFT)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from worker import inference as ev
    from worker.training.data import read_jsonl

    adapter = spec.get("adapter") if spec.get("export") else None
    tokenizer = AutoTokenizer.from_pretrained(adapter or spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    started = time.monotonic()
    rows = list(read_jsonl(Path(spec["eval"])))
    batched = ev.batches(tokenizer, rows, max_len=spec["max_seq_len"], batch_size=8, device="cpu")
    loss = ev.mean_loss(*ev.example_losses(model, batched))
    return {"val_loss": round(loss, 6), "eval_seconds": round(time.monotonic() - started, 1)}


def run_child(spec: dict[str, Any], work: Path) -> dict[str, Any]:
    shutil.rmtree(work, ignore_errors=True)
    spec = {**spec, "work": str(work), "adapter": str(work / "adapter")}
    return {**spec_child.run(__file__, spec, work, work.name), "adapter": spec["adapter"]}


def run_rounds(args: argparse.Namespace, work: Path, model: Path) -> dict[str, Any]:
    from shared.traces import TraceStore
    from worker import trained_set
    from worker.export import format_as_alpaca

    (work / "traces.db").unlink(missing_ok=True)  # a reused --work starts from an empty store
    shutil.rmtree(work / "rounds", ignore_errors=True)
    store = TraceStore(work / "traces.db")
    held_out = debates(gsm8k("test.jsonl", args.eval_questions), 100_000)
    eval_path = work / "eval.jsonl"
    eval_path.write_text("".join(json.dumps(format_as_alpaca(t)) + "\n" for t in held_out))
    pool = gsm8k("train.jsonl", args.rounds * args.per_round)
    common = {
        "model": str(model),
        "eval": str(eval_path),
        "max_seq_len": args.max_seq_len,
        "threads": os.cpu_count() or 1,
    }
    results: dict[str, Any] = {"settings": vars(args) | {"model_path": str(model)}, "rounds": []}
    if args.base:
        spec = {**common, "export": None, "init_adapter": None}
        results["base"] = run_child(spec, work / "rounds" / "base")
        print(f"base model: val loss {results['base']['val_loss']:.4f}", flush=True)
    warm_parent: Path | None = None
    for r in range(1, args.rounds + 1):
        batch = pool[(r - 1) * args.per_round : r * args.per_round]
        store.add_many(debates(batch, (r - 1) * args.per_round))
        folder = work / "rounds" / f"round-{r}"
        scratch = train_arm(common, export(store, folder / "scratch-export"), folder / "scratch")
        if warm_parent is None:  # nothing to continue yet: the warm arm's round 1 is scratch's
            warm = {**scratch, "reused": "scratch"}
        else:
            keys = trained_set.read(warm_parent) or set()
            warm_export = export(
                store,
                folder / "warm-export",
                parent_adapter=str(warm_parent),
                parent_keys=keys,
                replay_ratio=args.replay_ratio,
            )
            warm = train_arm(common, warm_export, folder / "warm", warm_parent)
        warm_parent = Path(warm["adapter"])
        row = {"round": r, "store": store.count_fine_tune_traces(MIN_QUALITY)}
        row |= {"scratch": scratch, "warm": warm}
        results["rounds"].append(row)
        print(json.dumps(_brief(row)), flush=True)
    return results


def export(store: Any, output_dir: Path, **warm: Any) -> Path:
    """The service's export of `store` (a warm start's with parent_keys and replay_ratio)."""
    from worker.export import export_traces

    return export_traces(
        store,
        min_quality=MIN_QUALITY,
        output_dir=output_dir,
        val_split=VAL_SPLIT,
        seed=SEED,
        **warm,
    ).output_dir


def train_arm(
    common: dict[str, Any], export_dir: Path, work: Path, parent: Path | None = None
) -> dict[str, Any]:
    """Train on `export_dir` (from `parent`'s weights when given) and record what the new
    adapter trained on in its folder, as the pipeline does."""
    from worker import trained_set

    spec = {**common, "export": str(export_dir), "init_adapter": str(parent) if parent else None}
    result = run_child(spec, work)
    result["manifest"] = json.loads((export_dir / "export_manifest.json").read_text())
    # what it trained on, as the pipeline records it (worker/parent.py): its parent's too
    keys = trained_set.keys_of(export_dir / "train.jsonl")
    keys |= trained_set.keys_of(export_dir / "train_pairs.jsonl")
    keys |= (trained_set.read(parent) or set()) if parent else set()
    trained_set.write(Path(result["adapter"]), keys)
    return result


def _brief(row: dict[str, Any]) -> dict[str, Any]:
    keep = ("examples", "new_examples", "train_tokens", "new_tokens", "seconds", "val_loss")
    arms = {arm: {k: row[arm][k] for k in keep} for arm in ("scratch", "warm")}
    return {"round": row["round"], "store": row["store"], **arms}


def summarise(results: dict[str, Any]) -> list[str]:
    lines = [
        "| round | store | scratch: examples | tokens | s | val loss "
        "| warm: examples (new) | tokens | s | val loss | warm / new tokens "
        "| scratch / warm tokens |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = results.get("base")
    if base:
        lines.append(
            f"| base model | – | – | – | – | {base['val_loss']:.4f} | – | – | – | "
            f"{base['val_loss']:.4f} | – | – |"
        )
    ratios = []
    for row in results["rounds"]:
        s, w = row["scratch"], row["warm"]
        ratio = w["counted_tokens"] / max(w["new_tokens"], 1)
        if row["round"] > 1:
            ratios.append(ratio)
        saving = s["train_tokens"] / max(w["train_tokens"], 1)
        lines.append(
            f"| {row['round']} | {row['store']} | {s['examples']} | {s['train_tokens']} | "
            f"{s['seconds']:.1f} | {s['val_loss']:.4f} | {w['examples']} ({w['new_examples']}) "
            f"| {w['train_tokens']} | {w['seconds']:.1f} | {w['val_loss']:.4f} | {ratio:.2f} | "
            f"{saving:.2f} |"
        )
    last = results["rounds"][-1]
    loss_ratio = last["warm"]["val_loss"] / last["scratch"]["val_loss"]
    got = results["settings"]
    lines.append("")
    lines.append(
        f"{len(results['rounds'])} rounds of {got['per_round']} new debates, "
        f"{got['eval_questions']} held-out questions, replay ratio {got['replay_ratio']}, "
        f"model {got['model']}; tokens: the trainer's; warm / new: as training tokenizes."
    )
    if ratios:
        spread = max(ratios) / min(ratios)
        met = max(ratios) <= TOKEN_GOAL and spread <= FLAT_GOAL
        lines.append(
            f"Warm tokens / new examples' tokens, rounds 2-{last['round']}: "
            f"{', '.join(f'{x:.2f}' for x in ratios)} (goal: <= {TOKEN_GOAL} each, max/min "
            f"<= {FLAT_GOAL}; max/min {spread:.2f}): {'met' if met else 'missed'}."
        )
    lines.append(
        f"Final val loss warm / scratch: {loss_ratio:.4f} (goal: <= {LOSS_GOAL}): "
        f"{'met' if loss_ratio <= LOSS_GOAL else 'missed'}."
    )
    results["goals"] = {"token_ratios": ratios, "final_loss_ratio": loss_ratio}
    return lines


def write_readme(table: list[str]) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    start, end = text.find(MARKERS[0]), text.find(MARKERS[1])
    if start < 0 or end < start:
        print(f"README.md has no {MARKERS[0]} ... {MARKERS[1]}: not written", file=sys.stderr)
        return
    head = text[: start + len(MARKERS[0])]
    readme.write_text(head + "\n" + "\n".join(table) + "\n" + text[end:], encoding="utf-8")
    print("README.md: the retraining table is written")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=8, help="new debates a round (>= 2)")
    parser.add_argument("--eval-questions", type=int, default=24, help="held-out questions")
    parser.add_argument("--replay-ratio", type=float, default=0.5, help="old per new example")
    parser.add_argument("--model", default="smollm2:135m", help="a model tag or folder")
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--work", type=Path, help="keep the store and adapters here")
    parser.add_argument("--base", action="store_true", help="also the base model's val loss")
    parser.add_argument("--json", type=Path, help="write the raw results here")
    parser.add_argument("--write-readme", action="store_true")
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    if args.rounds < 1 or args.per_round < 2 or args.eval_questions < 1:
        parser.error("--rounds must be 1 or more, --per-round 2 or more, --eval-questions 1+")
    if not DATA.is_dir():
        parser.error(f"{DATA} is not there: this benchmark needs ../shared/data/gsm8k")
    from shared.settings import Settings
    from worker.training.models import resolve_model

    cache = Settings().model_cache_dir
    model = resolve_model(args.model, cache if cache.is_absolute() else ROOT / cache)
    with tempfile.TemporaryDirectory(prefix="bench-retraining-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        results = run_rounds(args, work, model)
    table = summarise(results)
    print("\n".join(table))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**results, "table": table}, indent=2, default=str))
    if args.write_readme:
        write_readme(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
