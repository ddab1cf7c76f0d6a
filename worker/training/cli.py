"""LoRA fine-tuning from the command line (seed §2.5), outside the service.

Usage:
    tmde-finetune train \\
        --base-model smollm2:135m \\
        --train-data ./data/finetune_20260220/train.jsonl \\
        --val-data ./data/finetune_20260220/val.jsonl \\
        --output-dir ./data/lora-adapters/run_abc123 \\
        --lora-rank 16 --lora-alpha 32 --epochs 3 --lr 2e-4 \\
        --batch-size 4 --grad-accum 4 --max-seq-len 4096 --run-id abc123

Prints seed §5.1 events as JSON lines on stdout, errors on stderr, and exits with the seed §5.3
codes: 0 success, 1 error, 2 insufficient data, 3 GPU/OOM, 4 model not found, 130 cancelled.
The adapter is assembled in a sibling temporary folder and renamed to --output-dir at the end.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
from pathlib import Path

from shared.errors import InsufficientDataError, PipelineError
from shared.events import Emitter, stdout_sink
from shared.names import ExitCode
from shared.run_config import ConfigError, build_config
from shared.settings import Settings


def parse_args(argv: list[str] | None, settings: Settings) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tmde-finetune train", description="LoRA fine-tuning.")
    p.add_argument("--base-model", default=settings.base_model)
    p.add_argument("--train-data", required=True, type=Path)
    p.add_argument("--val-data", required=True, type=Path)
    p.add_argument("--output-dir", required=True, type=Path)
    p.add_argument("--lora-rank", type=int, default=settings.lora_rank)
    p.add_argument("--lora-alpha", type=int, default=settings.lora_alpha)
    p.add_argument("--epochs", type=int, default=settings.epochs)
    p.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps")
    p.add_argument("--lr", type=float, default=settings.learning_rate)
    p.add_argument("--batch-size", type=int, default=settings.batch_size)
    p.add_argument("--grad-accum", type=int, default=settings.grad_accum)
    p.add_argument("--max-seq-len", type=int, default=settings.max_seq_len)
    p.add_argument("--eval-steps", type=int, default=settings.eval_steps)
    p.add_argument("--save-steps", type=int, default=settings.save_steps)
    p.add_argument("--backend", default=settings.backend)
    p.add_argument("--seed", type=int, default=settings.seed)
    p.add_argument("--run-id", default="cli")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    settings = Settings.from_env()
    args = parse_args(argv, settings)
    emitter = Emitter(args.run_id, [stdout_sink()])
    overrides = {
        "baseModel": args.base_model,
        "backend": args.backend,
        "loraRank": args.lora_rank,
        "loraAlpha": args.lora_alpha,
        "epochs": args.epochs,
        "maxSteps": args.max_steps,
        "learningRate": args.lr,
        "batchSize": args.batch_size,
        "gradAccum": args.grad_accum,
        "maxSeqLen": args.max_seq_len,
        "evalSteps": args.eval_steps,
        "saveSteps": args.save_steps,
        "seed": args.seed,
    }
    try:
        config = build_config(settings, overrides).to_dict()
    except ConfigError as exc:
        print(f"ERROR: invalid arguments: {exc}", file=sys.stderr)
        return ExitCode.GENERAL_ERROR
    cancelled = {"flag": False}

    def on_sigint(signum: int, frame: object) -> None:
        cancelled["flag"] = True  # stop cleanly at the next step; exit 130

    signal.signal(signal.SIGINT, on_sigint)
    staging = args.output_dir.with_name(f".{args.output_dir.name}.partial")
    try:
        return _train(args, config, emitter, staging, lambda: cancelled["flag"], settings)
    except PipelineError as exc:
        emitter.emit("error", code=exc.code, message=exc.message, suggestion=exc.suggestion)
        print(f"ERROR: {exc.message}", file=sys.stderr)
        return exc.exit_code
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _train(
    args: argparse.Namespace,
    config: dict,
    emitter: Emitter,
    staging: Path,
    should_cancel,
    settings: Settings,
) -> int:  # type: ignore[no-untyped-def]
    from worker.training.artifacts import write_training_files
    from worker.training.job import TrainJob, run_backend
    from worker.training.models import resolve_model

    for path in (args.train_data, args.val_data):
        if not path.is_file() or path.stat().st_size == 0:
            raise InsufficientDataError(f"{path} is missing or empty", current=0, required=1)
    if args.output_dir.exists():
        raise PipelineError(f"{args.output_dir} already exists; choose a new --output-dir")
    shutil.rmtree(staging, ignore_errors=True)
    job = TrainJob(
        run_id=args.run_id,
        config=config,
        model_path=resolve_model(config["baseModel"], settings.model_cache_dir),
        train_path=args.train_data,
        val_path=args.val_data,
        adapter_dir=staging / "adapter",
        checkpoint_dir=staging / "checkpoints",
        emitter=emitter,
        should_cancel=should_cancel,
        torch_threads=settings.torch_threads,
    )
    result = run_backend(job)
    write_training_files(job.adapter_dir, result.hyperparameters, result.metrics)
    args.output_dir.parent.mkdir(parents=True, exist_ok=True)
    job.adapter_dir.rename(args.output_dir)
    emitter.emit("complete", metrics=result.metrics, adapter_path=str(args.output_dir))
    return ExitCode.SUCCESS


if __name__ == "__main__":
    sys.exit(main())
