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
import typing
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo

from shared.errors import InsufficientDataError, PipelineError
from shared.events import Emitter, stdout_sink
from shared.fields import allowed, base_type
from shared.names import ExitCode
from shared.registry import AdapterRegistry
from shared.run_config import FIELDS, ConfigError, FineTuneConfig, build_config
from shared.settings import Settings
from shared.warm_start import parent_adapter

# Fields that decide the export (which traces, which split, how many answers are generated
# after training), not this script: its data is already split into --train-data / --val-data.
EXPORT_ONLY = ("min_quality_score", "val_split", "eval_samples", "max_pairs_per_prompt")
# The seed's short spellings (§2.5); every field also has its own `--field-name` flag.
SEED_FLAGS = {"learning_rate": "--lr"}


def config_flags() -> dict[str, str]:
    """FineTuneConfig field -> its flag, for every field this script takes."""
    return {
        name: SEED_FLAGS.get(name, "--" + name.replace("_", "-"))
        for name in FIELDS
        if name not in EXPORT_ONLY
    }


def _add_config_flag(
    parser: argparse.ArgumentParser, name: str, flag: str, info: FieldInfo
) -> None:
    """One flag from one field: its type, choices and help (with the allowed range) come from
    the model; the default stays None so that an unset flag takes the setting's default."""
    annotation = base_type(info)
    options: dict[str, Any] = {"dest": name, "default": None}
    options["help"] = f"{info.description}; {allowed(info).removeprefix('must be ')}"
    if annotation is bool:
        options["action"] = argparse.BooleanOptionalAction
    elif typing.get_origin(annotation) is typing.Literal:
        options["choices"] = typing.get_args(annotation)
    elif typing.get_origin(annotation) is list:
        options["nargs"] = "+"
        options["metavar"] = "MODULE"
    else:
        options["type"] = annotation
    flags = (
        [flag]
        if flag.startswith("--" + name.replace("_", "-"))
        else [flag, "--" + name.replace("_", "-")]
    )
    parser.add_argument(*flags, **options)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tmde-finetune train", description="LoRA fine-tuning.")
    p.add_argument("--train-data", required=True, type=Path)
    p.add_argument("--val-data", required=True, type=Path)
    p.add_argument(
        "--train-pairs",
        type=Path,
        help="preference pairs for the DPO stage (default: train_pairs.jsonl beside --train-data)",
    )
    p.add_argument(
        "--val-pairs",
        type=Path,
        help="held-out pairs (default: val_pairs.jsonl beside --val-data)",
    )
    p.add_argument("--output-dir", required=True, type=Path)
    p.add_argument("--run-id", default="cli")
    for name, flag in config_flags().items():
        _add_config_flag(p, name, flag, FIELDS[name])
    return p.parse_args(argv)


def config_from_args(args: argparse.Namespace, settings: Settings) -> FineTuneConfig:
    """The run config: the settings' defaults, with every flag that was given."""
    given = {
        FIELDS[name].alias: getattr(args, name)
        for name in config_flags()
        if getattr(args, name) is not None
    }
    return build_config(settings, given)


def main(argv: list[str] | None = None) -> int:
    settings = Settings.from_env()
    args = parse_args(argv)
    emitter = Emitter(args.run_id, [stdout_sink()])
    try:
        config = config_from_args(args, settings)
        parent = parent_adapter(settings, config)  # --init-from active: the active adapter
    except ConfigError as exc:
        flags = config_flags()
        by_alias = {FIELDS[name].alias: flag for name, flag in flags.items()}
        reasons = "; ".join(f"{by_alias.get(k, k)}: {why}" for k, why in exc.errors.items())
        print(f"ERROR: invalid arguments: {reasons}", file=sys.stderr)
        return ExitCode.GENERAL_ERROR
    cancelled = {"flag": False}

    def on_sigint(signum: int, frame: object) -> None:
        cancelled["flag"] = True  # stop cleanly at the next step; exit 130

    signal.signal(signal.SIGINT, on_sigint)
    staging = args.output_dir.with_name(f".{args.output_dir.name}.partial")
    try:
        init = AdapterRegistry(settings.lora_output_dir).path(parent) if parent else None
        return _train(args, config, emitter, staging, lambda: cancelled["flag"], settings, init)
    except PipelineError as exc:
        emitter.emit("error", code=exc.code, message=exc.message, suggestion=exc.suggestion)
        print(f"ERROR: {exc.message}", file=sys.stderr)
        return exc.exit_code
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _train(
    args: argparse.Namespace,
    config: FineTuneConfig,
    emitter: Emitter,
    staging: Path,
    should_cancel,
    settings: Settings,
    init_adapter: Path | None = None,
) -> int:  # type: ignore[no-untyped-def]
    from worker.training.artifacts import write_training_files
    from worker.training.backends import run_backend
    from worker.training.job import TrainJob
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
        model_path=resolve_model(config.base_model, settings.model_cache_dir),
        train_path=args.train_data,
        val_path=args.val_data,
        train_pairs_path=args.train_pairs or args.train_data.with_name("train_pairs.jsonl"),
        val_pairs_path=args.val_pairs or args.val_data.with_name("val_pairs.jsonl"),
        adapter_dir=staging / "adapter",
        checkpoint_dir=staging / "checkpoints",
        emitter=emitter,
        should_cancel=should_cancel,
        torch_threads=settings.torch_threads,
        init_adapter=init_adapter,
    )
    result = run_backend(job)
    write_training_files(job.adapter_dir, result.hyperparameters, result.metrics)
    args.output_dir.parent.mkdir(parents=True, exist_ok=True)
    job.adapter_dir.rename(args.output_dir)
    emitter.emit("complete", metrics=result.metrics, adapter_path=str(args.output_dir))
    return ExitCode.SUCCESS


if __name__ == "__main__":
    sys.exit(main())
