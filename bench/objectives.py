"""SFT against SFT+DPO (and DPO alone) at an equal training budget, on real debate-shaped data.

Usage (from the checkout's root; the defaults take about 45 minutes on 2 CPU cores):

    .venv/bin/python bench/objectives.py [--budget 150] [--seeds 1 2 3]
        [--objectives sft sft+dpo] [--first-seed-only dpo]
        [--step-times SFT_S DPO_S] [--eval-pairs 120] [--eval-questions 60]
        [--em-questions 24] [--out bench/results/objectives.json]
    .venv/bin/python bench/objectives.py --reference-memory   # the DPO reference, two ways

Data: ../shared/data/gsm8k/example_model_solutions.jsonl beside the checkout (1,319 questions,
each with its reference solution and four model solutions flagged is_correct), imported
through the service's own trace import as debates: the query, the reference solution as the
final answer, the four model solutions as proposer rounds with verdict accepted or rejected.
The service's export then splits the questions (seed 42, 10% held out) and writes the SFT
examples and the preference pairs (final answer vs every rejected solution).

Each run trains SmolLM2-135M-Instruct (the embedded model, converted once) through
run_backend(TrainJob), exactly as a queued run, with LoRA r16 on the seven projections. Equal
budget: the SFT and DPO step times are measured first (a few steps each), and every objective
gets the steps that fill `--budget` seconds (sft+dpo: half to each stage). The measured
training times are printed beside the results, so the equality can be checked.

Measured on the held-out questions, which no run trained on, with the base model as baseline:
- preference accuracy on --eval-pairs held-out pairs (worker/preference.py: the share where the
  model's mean per-token log-probability of the chosen answer beats the rejected one's);
- answer-only validation loss on --eval-questions held-out questions;
- exact match of greedy answers on --em-questions held-out questions (worker/scoring.py).
Every run is its own process (a fresh torch, its own peak RSS). The summary gives the mean and
standard deviation over seeds and the goal's two ratios against `sft`: preference accuracy
+10 points or more, validation loss no more than 5% worse.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import spec_child  # noqa: E402 - bench/ is this script's folder

DATA = ROOT.parent / "shared" / "data" / "gsm8k" / "example_model_solutions.jsonl"
SOLVERS = ("6b_finetuning", "6b_verification", "175b_finetuning", "175b_verification")
BASE_CONFIG = {
    "backend": "trl",
    "batchSize": 2,  # more, smaller optimizer steps in a CPU budget
    "gradAccum": 1,
    "maxSeqLen": 256,  # GSM8K's question and solution fit in 256 tokens almost always
    "evalSteps": 1_000_000,  # no evaluation inside training: the budget is for training
    "saveSteps": 1_000_000,
    "loggingSteps": 5,
    "evalSamples": 0,
    "valSplit": 0.1,
}
CALIBRATION_STEPS = 4
# The held-out files training sees: a few examples, because the Trainer evaluates at the end of
# each stage and the budget is for training; the measurements use the whole held-out split.
TRAINING_EVAL = 8


def debate_lines(path: Path) -> list[str]:
    """GSM8K's model solutions as the service's trace-import lines (one debate per question)."""
    lines = []
    for index, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        row = json.loads(line)
        rounds = [
            {
                "role": "proposer",
                "model": solver,
                "content": row[solver]["solution"],
                "verdict": "accepted" if row[solver]["is_correct"] else "rejected",
            }
            for solver in SOLVERS
            if solver in row
        ]
        trace = {
            "id": f"gsm8k-{index:04d}",
            "query": row["question"],
            "final_answer": row["ground_truth"],
            "quality_score": 9.0,
            "rounds": rounds,
        }
        lines.append(json.dumps(trace))
    return lines


def prepare(work: Path) -> dict[str, Any]:
    """Trace store -> export (SFT examples and pairs) -> the converted embedded model."""
    from shared.settings import Settings
    from shared.trace_import import import_file
    from shared.traces import TraceStore
    from worker.export import export_traces
    from worker.training.models import resolve_model

    source = work / "debates.jsonl"
    source.write_text("\n".join(debate_lines(DATA)) + "\n", encoding="utf-8")
    store = TraceStore(work / "traces.db")
    report = import_file(store, source, strict=True)
    export = export_traces(
        store, min_quality=8.0, output_dir=work / "export", val_split=0.1, seed=42
    )
    model = resolve_model("smollm2:135m", Settings().model_cache_dir)
    for name in ("val", "val_pairs"):
        lines = (export.output_dir / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
        small = "\n".join(lines[:TRAINING_EVAL]) + "\n"
        (export.output_dir / f"{name}_during_training.jsonl").write_text(small, encoding="utf-8")
    return {
        "imported": report.imported,
        "train": export.train_count,
        "val": export.val_count,
        "train_pairs": export.train_pairs,
        "val_pairs": export.val_pairs,
        "export": str(export.output_dir),
        "model": str(model),
    }


def child(spec_path: Path) -> None:
    """One run in this process: train (unless base), evaluate, print one JSON line."""
    import resource

    spec = spec_child.read_spec(spec_path)
    result: dict[str, Any] = {"objective": spec["objective"], "seed": spec["seed"]}
    adapter = None
    if spec["objective"] != "base":
        trained = train(spec)
        adapter = Path(spec["work"]) / "adapter"
        result["metrics"] = trained
    result.update(evaluate(spec, adapter))
    result["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 3)
    spec_child.report(result)


def train(spec: dict[str, Any]) -> dict[str, Any]:
    from shared.events import Emitter
    from shared.run_config import build_config
    from shared.settings import Settings
    from worker.training.backends import run_backend
    from worker.training.job import TrainJob

    export, work = Path(spec["export"]), Path(spec["work"])
    if spec.get("precompute"):  # --reference-memory's other way: TRL's precomputed log-probs
        from worker.training import objective

        chosen = objective.dpo_arguments
        objective.dpo_arguments = lambda job, **kw: {
            **chosen(job, **kw),
            "precompute_ref_log_probs": True,
        }
    config = build_config(
        Settings(),
        {
            **BASE_CONFIG,
            "baseModel": spec["model"],
            "objective": spec["objective"],
            "seed": spec["seed"],
            **spec["steps"],
        },
    )
    job = TrainJob(
        run_id=f"bench-{spec['objective']}-{spec['seed']}",
        config=config,
        model_path=Path(spec["model"]),
        train_path=export / "train.jsonl",
        val_path=export / "val_during_training.jsonl",
        train_pairs_path=Path(spec.get("memory_pairs") or export / "train_pairs.jsonl"),
        val_pairs_path=export / "val_pairs_during_training.jsonl",
        adapter_dir=work / "adapter",
        checkpoint_dir=work / "checkpoints",
        emitter=Emitter(None, []),
        torch_threads=spec["threads"],
    )
    return run_backend(job).metrics


def evaluate(spec: dict[str, Any], adapter: Path | None) -> dict[str, Any]:
    """Held-out preference accuracy, answer-only loss and exact match of one model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from worker import inference as ev
    from worker.preference import mean_token_logps, preference_accuracy, side_examples
    from worker.scoring import score_generations
    from worker.training.data import read_jsonl

    export = Path(spec["export"])
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    started = time.monotonic()
    batching = {"max_len": BASE_CONFIG["maxSeqLen"], "batch_size": 8, "device": "cpu"}
    pairs = list(read_jsonl(export / "val_pairs.jsonl"))[: spec["eval_pairs"]]
    chosen = ev.batches(tokenizer, side_examples(pairs, "chosen"), **batching)
    rejected = ev.batches(tokenizer, side_examples(pairs, "rejected"), **batching)
    accuracy = preference_accuracy(
        mean_token_logps(model, chosen), mean_token_logps(model, rejected)
    )
    questions = list(read_jsonl(export / "val.jsonl"))
    loss = ev.mean_loss(
        *ev.example_losses(
            model, ev.batches(tokenizer, questions[: spec["eval_questions"]], **batching)
        )
    )
    asked = questions[: spec["em_questions"]]
    config = ev.greedy_config(model, tokenizer, spec["max_new_tokens"])
    answers = ev.generate(model, tokenizer, asked, "cpu", batch_size=8, config=config)
    scores = score_generations(answers, [q["output"] for q in asked])
    return {
        "preference_accuracy": accuracy,
        "pairs": len(pairs),
        "val_loss": round(loss, 6),
        "questions": min(len(questions), spec["eval_questions"]),
        "exact_match": scores["exact_match"],
        "em_questions": scores["exact_match_examples"],
        "eval_seconds": round(time.monotonic() - started, 1),
    }


def run_child(spec: dict[str, Any], work: Path) -> dict[str, Any]:
    what = f"run {spec['objective']} seed {spec['seed']}"
    return spec_child.run(__file__, {**spec, "work": str(work)}, work, what)


def budget_steps(objective: str, budget: float, sft_step: float, dpo_step: float) -> dict:
    share = {"sft": (1.0, 0.0), "dpo": (0.0, 1.0), "sft+dpo": (0.5, 0.5)}[objective]
    steps: dict[str, Any] = {}
    if share[0]:
        steps["maxSteps"] = max(1, round(budget * share[0] / sft_step))
    if share[1]:
        steps["dpoMaxSteps"] = max(1, round(budget * share[1] / dpo_step))
    return steps


def summarise(results: list[dict[str, Any]], base: dict[str, Any]) -> list[str]:
    def stat(rows: list[dict], key: str, scale: float = 1.0) -> tuple[float, float]:
        values = [r[key] * scale for r in rows if r.get(key) is not None]
        if not values:
            return math.nan, math.nan
        return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0

    lines = [
        "| objective | seeds | train s | pref. acc. % | val loss | exact match % |",
        "|---|---|---|---|---|---|",
    ]
    if base:
        lines.append(
            f"| base model | - | - | {base['preference_accuracy'] * 100:.1f} | "
            f"{base['val_loss']:.3f} | {base['exact_match'] * 100:.1f} |"
        )
    by_objective: dict[str, list[dict]] = {}
    for r in results:
        r["train_seconds"] = r["metrics"]["training_time_seconds"]
        by_objective.setdefault(r["objective"], []).append(r)
    for objective, rows in by_objective.items():
        cells = [
            "{:.0f} ± {:.0f}".format(*stat(rows, "train_seconds")),
            "{:.1f} ± {:.1f}".format(*stat(rows, "preference_accuracy", 100)),
            "{:.3f} ± {:.3f}".format(*stat(rows, "val_loss")),
            "{:.1f} ± {:.1f}".format(*stat(rows, "exact_match", 100)),
        ]
        lines.append(f"| {objective} | {len(rows)} | " + " | ".join(cells) + " |")
    if "sft" in by_objective and "sft+dpo" in by_objective:
        sft, both = by_objective["sft"], by_objective["sft+dpo"]
        gain = stat(both, "preference_accuracy", 100)[0] - stat(sft, "preference_accuracy", 100)[0]
        ratio = stat(both, "val_loss")[0] / stat(sft, "val_loss")[0]
        lines.append("")
        lines.append(
            f"sft+dpo vs sft: preference accuracy {gain:+.1f} points (goal >= +10), "
            f"val loss ratio {ratio:.3f} (goal <= 1.05)"
        )
    return lines


def reference_memory(args: argparse.Namespace, prepared: dict[str, Any], work: Path) -> None:
    """Peak RSS and s/step of a few DPO steps with the reference computed per step (adapter
    disabled, the service's choice) and with TRL's precomputed reference log-probs, on the
    first pairs only: the precompute pass covers every training pair before the first step."""
    pairs = Path(prepared["export"]) / "train_pairs.jsonl"
    subset = work / "memory_pairs.jsonl"
    lines = pairs.read_text(encoding="utf-8").splitlines()
    batch = BASE_CONFIG["batchSize"]
    subset.write_text("\n".join(lines[: args.memory_steps * batch]) + "\n", encoding="utf-8")
    for precompute in (False, True):
        spec = {
            **prepared,
            "objective": "dpo",
            "seed": 1,
            "threads": args.threads,
            "steps": {"dpoMaxSteps": args.memory_steps},
            "eval_pairs": 0,
            "eval_questions": 0,
            "em_questions": 0,
            "max_new_tokens": 8,
            "precompute": precompute,
            "memory_pairs": str(subset),
        }
        result = run_child(spec, work / f"memory-{precompute}")
        metrics = result["metrics"]
        print(
            f"reference {'precomputed' if precompute else 'per step (adapter disabled)'}: "
            f"peak RSS {result['peak_rss_gb']:.2f} GB, "
            f"{metrics['training_time_seconds'] / metrics['dpo_total_steps']:.2f} s/step "
            f"({metrics['dpo_total_steps']} steps, training time includes any precompute pass)",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--budget", type=float, default=150.0, help="training seconds per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--objectives", nargs="+", default=["sft", "sft+dpo"])
    parser.add_argument(
        "--first-seed-only",
        nargs="*",
        default=["dpo"],
        help="objectives run with the first seed only (default: dpo, the side comparison)",
    )
    parser.add_argument(
        "--step-times",
        type=float,
        nargs=2,
        metavar=("SFT", "DPO"),
        help="seconds per SFT and DPO step measured before (skips the calibration run)",
    )
    parser.add_argument("--eval-pairs", type=int, default=120)
    parser.add_argument("--eval-questions", type=int, default=60)
    parser.add_argument("--em-questions", type=int, default=24)
    parser.add_argument("--max-new-tokens", type=int, default=160)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reference-memory", action="store_true")
    parser.add_argument("--no-base", action="store_true", help="skip the base model's row")
    parser.add_argument("--memory-steps", type=int, default=6)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "objectives.json")
    args = parser.parse_args(argv)
    if args.child:
        child(args.child)
        return 0
    if not DATA.is_file():
        parser.error(f"{DATA} is not there: this benchmark needs ../shared/data/gsm8k")
    with tempfile.TemporaryDirectory(prefix="bench-objectives-") as tmp:
        work = Path(tmp)
        prepared = prepare(work)
        print(
            "data:", json.dumps({k: v for k, v in prepared.items() if k not in ("export", "model")})
        )
        if args.reference_memory:
            reference_memory(args, prepared, work)
            return 0
        common = {
            **prepared,
            "threads": args.threads,
            "eval_pairs": args.eval_pairs,
            "eval_questions": args.eval_questions,
            "em_questions": args.em_questions,
            "max_new_tokens": args.max_new_tokens,
        }
        if args.step_times:
            sft_step, dpo_step = args.step_times
        else:
            sft_step, dpo_step = calibrate(common, work)
        print(f"calibration: SFT {sft_step:.2f} s/step, DPO {dpo_step:.2f} s/step", flush=True)
        base = {}
        if not args.no_base:
            base = run_child({**common, "objective": "base", "seed": 0, "steps": {}}, work / "base")
            print("base:", json.dumps(base), flush=True)
        results = []
        for seed in args.seeds:
            once = args.first_seed_only if seed == args.seeds[0] else []
            for objective in [*args.objectives, *once]:
                steps = budget_steps(objective, args.budget, sft_step, dpo_step)
                spec = {**common, "objective": objective, "seed": seed, "steps": steps}
                result = run_child(spec, work / f"{objective}-{seed}")
                result["steps"] = steps
                results.append(result)
                print(json.dumps({k: v for k, v in result.items() if k != "metrics"}), flush=True)
        table = summarise(results, base)
        print("\n".join(table))
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps({"data": prepared, "base": base, "runs": results, "table": table}, indent=2)
        )
    return 0


def calibrate(common: dict[str, Any], work: Path) -> tuple[float, float]:
    """Seconds per SFT and per DPO step, from a short sft+dpo run."""
    steps = {"maxSteps": CALIBRATION_STEPS, "dpoMaxSteps": CALIBRATION_STEPS}
    quiet = {"eval_pairs": 0, "eval_questions": 0, "em_questions": 0}
    spec = {**common, **quiet, "objective": "sft+dpo", "seed": 0, "steps": steps}
    return _stage_step_times(run_child(spec, work / "calibration")["metrics"])


def _stage_step_times(metrics: dict[str, Any]) -> tuple[float, float]:
    """SFT and DPO seconds per step from an sft+dpo run's metrics (its stage times)."""
    return tuple(
        metrics[f"{stage}_training_time_seconds"] / metrics[f"{stage}_total_steps"]
        for stage in ("sft", "dpo")
    )


if __name__ == "__main__":
    sys.exit(main())
