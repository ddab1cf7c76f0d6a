"""Training throughput of the service's `trl` path against a bare TRL SFTTrainer script.

Usage (from the checkout's root; with the defaults about 8 minutes on 2 quiet CPU cores, up to
twice that while other jobs share them):

    .venv/bin/python bench/train_throughput.py [--steps 8] [--warmup 1] [--batch-size 4]
        [--max-len 256] [--model smollm2:135m] [--strict]

What it measures: tokens per second, where a token is a non-pad token actually fed to a training
step (the sum of the attention mask, or the length of a padding-free row), divided by the wall
time of the timed optimizer steps. "Answer tok/s" counts only the tokens that carry loss (the
answers: every run trains answer-only); "tok/cpu-s" divides by the CPU time of the run's own
process instead, which load from other processes inflates less than the wall clock. Three runs
train the same model with the same LoRA (the service's rank, alpha, dropout and target modules)
on the same data:

    service            worker.training.backends.run_backend(TrainJob) with the service's own
                       defaults (shared.settings), i.e. exactly what a queued run does
    bare, same args    a plain SFTTrainer script given the SFTConfig arguments the service builds
                       (worker.training.sft_loop.sft_arguments): like-for-like
    bare, TRL defaults a plain SFTTrainer script with TRL's SFTConfig defaults, apart from the
                       batch size, max_length, max_steps and, on a CPU, bf16=False (the model is
                       float32; bf16 autocast on a CPU without AVX512-BF16/AMX runs ~20x slower)

and two ratios are printed: (a) service / bare-same-args (target >= 0.95: the service adds no
overhead of its own) and (b) service / bare-TRL-defaults (target >= 1.5: the service's defaults
are worth having). Gradient accumulation is 1 in every run, so a step is one batch.

Machine noise: the runs live in separate processes started together, and they take turns one
optimizer step at a time (a round of steps, the order rotating every round), so a slow minute
on a shared machine hits every run alike. The first --warmup steps of each run are not timed.
A segment runs from one step's `on_step_begin` to the next one's, so it includes the optimizer,
callbacks, logging, evaluation or saving due at that step, and fetching the next batch. Each
run is stopped at the start of its last scheduled step, so the one-off evaluation and checkpoint
at the end of training are not timed. Each round's figures are printed as it goes; --strict
makes the exit status 1 when a target is missed.

Data: GSM8K (question -> instruction, answer -> output) from ../shared/data/gsm8k/train.jsonl
beside the checkout when present (or --data), else the synthetic demo traces
(shared.demo_traces.generate, through the exporter's Alpaca formatting).

--variant LABEL=JSON adds another service run whose settings are changed, for A/B work on the
service's training arguments: JSON is {"sft": {SFTConfig overrides}, "config": {run config
overrides}}, e.g. --variant 'ckpt={"sft": {"gradient_checkpointing": true}}'; --no-bare leaves
out the two bare runs (then only the variants are compared with the service).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from throughput_child import child_main  # noqa: E402 - bench/ is this script's folder

GSM8K = REPO.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
VAL_EXAMPLES = 32
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
    "PYTHONWARNINGS": "ignore",
}


@dataclass
class Run:
    label: str
    kind: str  # "service" | "bare-same" | "bare-defaults"
    variant: dict[str, Any] = field(default_factory=dict)
    conn: Any = None
    process: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    segments: list[dict[str, Any]] = field(default_factory=list)

    def total(self, key: str) -> float:
        return sum(s[key] for s in self.segments)

    def rate(self, key: str = "tokens", clock: str = "seconds") -> float:
        seconds = self.total(clock)
        return self.total(key) / seconds if seconds > 0 else 0.0


# --------------------------------------------------------------------------- data


def alpaca_examples(data: Path | None, count: int) -> tuple[list[dict[str, str]], str]:
    source = data or (GSM8K if GSM8K.is_file() else None)
    if source is not None:
        rows = []
        with source.open(encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    row = json.loads(line)
                    rows.append(
                        {"instruction": row["question"], "input": "", "output": row["answer"]}
                    )
                if len(rows) >= count:
                    break
        return rows, f"GSM8K ({source})"
    from shared.demo_traces import generate
    from worker.export import format_as_alpaca

    traces = generate(max(count, 50))
    return [format_as_alpaca(t) for t in traces][:count], "synthetic demo traces"


def write_jsonl(rows: list[dict[str, str]], path: Path) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")


# --------------------------------------------------------------------------- parent side


def receive(run: Run, timeout: float) -> tuple[str, Any]:
    if not run.conn.poll(timeout):
        raise SystemExit(f"{run.label}: no answer within {timeout:.0f} s")
    try:
        kind, payload = run.conn.recv()
    except EOFError:
        raise SystemExit(f"{run.label}: the process died (exit {run.process.exitcode})") from None
    if kind == "error":
        raise SystemExit(f"{run.label} failed:\n{payload}")
    return kind, payload


def start(runs: list[Run], spec: dict[str, Any]) -> None:
    context = mp.get_context("spawn")
    for run in runs:
        run.conn, child = context.Pipe()
        run.process = context.Process(
            target=child_main, args=(run.kind, run.variant, spec, child), daemon=True
        )
        run.process.start()
    for run in runs:  # each one loads its model and data, then waits before its first step
        _, run.info = receive(run, 900)


def take_turns(runs: list[Run], rounds: int, warmup: int) -> None:
    for index in range(rounds):
        order = runs[index % len(runs) :] + runs[: index % len(runs)]
        line = []
        for run in order:
            run.conn.send("go")
            _, segment = receive(run, 1800)
            if index >= warmup:
                run.segments.append(segment)
            line.append(f"{run.label} {segment['seconds']:.1f}s/{segment['tokens']}tok")
        tag = "warm-up" if index < warmup else "timed"
        print(f"  step {index + 1:>2} ({tag}): " + "  ".join(line), flush=True)


def stop(runs: list[Run]) -> None:
    for run in runs:
        with contextlib.suppress(BrokenPipeError, OSError):
            run.conn.send("stop")
    for run in runs:
        run.process.join(60)
        if run.process.is_alive():
            run.process.terminate()
            run.process.join(10)


def settings_text(info: dict[str, Any]) -> str:
    packing = (
        "off"
        if info["packing"] == "off"
        else info["packing"] + (" padding-free" if info["padding_free"] else "")
    )
    return (
        f"packing {packing}, grad-ckpt {'on' if info['grad_ckpt'] else 'off'}, "
        f"{info['precision']}, log every {info['logging_steps']}, eval {info['eval']}, "
        f"{info['threads']} threads"
    )


def step_ratios(service: Run, other: Run) -> list[float]:
    ratios = []
    for mine, theirs in zip(service.segments, other.segments, strict=False):
        if mine["seconds"] > 0 and theirs["seconds"] > 0 and theirs["tokens"] > 0:
            mine_rate = mine["tokens"] / mine["seconds"]
            ratios.append(mine_rate / (theirs["tokens"] / theirs["seconds"]))
    return ratios


def report(runs: list[Run], args: argparse.Namespace, data_text: str) -> bool:
    print()
    print(
        f"model {args.model}, batch {args.batch_size}, max_len {args.max_len}, "
        f"{args.steps} timed steps after {args.warmup} warm-up, data: {data_text}"
    )
    header = (
        f"{'run':<20} {'s/step':>7} {'tokens':>7} {'tok/s':>7} {'answer tok/s':>12} "
        f"{'tok/cpu-s':>9} {'pad %':>6}  settings"
    )
    print(header)
    print("-" * len(header))
    for run in runs:
        steps = len(run.segments) or 1
        padded = run.total("padded_tokens")
        pad = 100 * (1 - run.total("tokens") / padded) if padded else 0.0
        print(
            f"{run.label:<20} {run.total('seconds') / steps:>7.2f} {int(run.total('tokens')):>7} "
            f"{run.rate():>7.1f} {run.rate('loss_tokens'):>12.1f} "
            f"{run.rate(clock='cpu_seconds'):>9.1f} {pad:>6.1f}  {settings_text(run.info)}"
        )
    print()
    print("tok/s: non-pad tokens per wall-clock second (the measure the targets use); tok/cpu-s:")
    print("per second of CPU time of the run's own process, which other load on a shared machine")
    print("inflates less.")
    service = runs[0]
    bare = [run for run in runs if run.kind != "service"]
    targets = [("(a) like-for-like", 0.95), ("(b) own defaults ", 1.5)] if bare else []
    met = True
    for (name, target), other in zip(targets, bare, strict=False):
        ratio = service.rate() / other.rate() if other.rate() else float("inf")
        cpu_ratio = (
            service.rate(clock="cpu_seconds") / other.rate(clock="cpu_seconds")
            if other.rate(clock="cpu_seconds")
            else float("inf")
        )
        per_step = step_ratios(service, other)
        spread = (
            (
                f"; per round: median {statistics.median(per_step):.2f}, "
                f"range {min(per_step):.2f}-{max(per_step):.2f}"
            )
            if per_step
            else ""
        )
        ok = ratio >= target
        met &= ok
        print(
            f"{name}: {service.label} / {other.label} = {ratio:.2f}x tokens/s, "
            f"target >= {target}x: {'MET' if ok else 'NOT MET'} "
            f"(by CPU time {cpu_ratio:.2f}x{spread})"
        )
    for run in runs[1:]:
        if run.kind != "service":
            continue
        ratio = run.rate() / service.rate() if service.rate() else float("inf")
        cpu_ratio = (
            run.rate(clock="cpu_seconds") / service.rate(clock="cpu_seconds")
            if service.rate(clock="cpu_seconds")
            else float("inf")
        )
        print(
            f"variant {run.label}: {ratio:.2f}x the service's tokens/s "
            f"(by CPU time {cpu_ratio:.2f}x)"
        )
    return met


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-len", type=int, default=256)
    parser.add_argument("--model", default="smollm2:135m", help="tag, HF id or local folder")
    parser.add_argument(
        "--data",
        type=Path,
        default=None,
        help=f"GSM8K-style JSONL (question/answer); default {GSM8K} if present",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="LABEL=JSON",
        help="an extra service run with changed settings (see the docstring)",
    )
    parser.add_argument(
        "--no-bare",
        action="store_true",
        help="run only the service and its --variant runs (A/B work)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.update(OFFLINE_ENV)
    from shared.settings import Settings
    from worker.training.models import resolve_model

    cache = Settings.from_env().model_cache_dir
    model_path = resolve_model(args.model, cache if cache.is_absolute() else REPO / cache)
    rounds = args.warmup + args.steps
    # Enough examples that no run, packed or not, reaches the end of an epoch.
    train_count = max(64, 3 * (rounds + 1) * args.batch_size)
    examples, data_text = alpaca_examples(args.data, train_count + VAL_EXAMPLES)
    if len(examples) < VAL_EXAMPLES + (rounds + 1) * args.batch_size:
        raise SystemExit(f"only {len(examples)} examples in {data_text}: too few")
    runs = [Run("service", "service")]
    if not args.no_bare:
        runs += [Run("bare, same args", "bare-same"), Run("bare, TRL defaults", "bare-defaults")]
    for text in args.variant:
        label, _, payload = text.partition("=")
        runs.append(Run(label, "service", json.loads(payload)))
    with tempfile.TemporaryDirectory(prefix="train-throughput-") as workdir:
        train_path, val_path = Path(workdir) / "train.jsonl", Path(workdir) / "val.jsonl"
        write_jsonl(examples[: VAL_EXAMPLES * -1], train_path)
        write_jsonl(examples[-VAL_EXAMPLES:], val_path)
        spec = {
            "model_path": str(model_path),
            "train_path": str(train_path),
            "val_path": str(val_path),
            "batch_size": args.batch_size,
            "max_len": args.max_len,
            "max_steps": rounds + 1,
            "workdir": workdir,
        }
        print(
            f"starting {len(runs)} runs ({', '.join(r.label for r in runs)}) on {model_path}",
            flush=True,
        )
        started = time.monotonic()
        try:
            start(runs, spec)
            print(
                f"  all loaded in {time.monotonic() - started:.0f} s; taking turns, one step each",
                flush=True,
            )
            take_turns(runs, rounds, args.warmup)
        finally:
            stop(runs)
    met = report(runs, args, data_text)
    print(f"total {time.monotonic() - started:.0f} s")
    return 1 if args.strict and not met else 0


if __name__ == "__main__":
    sys.exit(main())
