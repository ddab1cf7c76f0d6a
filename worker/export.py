"""Export high-quality debate traces to Alpaca-format JSONL (seed §2.4).

Usage:
    python -m worker.export \\
        --db ./data/traces.db \\
        --min-quality 8.0 \\
        --output-dir ./data/finetune_20260220 \\
        --val-split 0.1 \\
        --seed 42

Prints {"type": "export_complete", "train_count": 89, "val_count": 10, ...} and exits 0, or
exits 2 when there are too few examples. Rows are streamed best-first: a duplicate instruction
seen later is a lower-quality version and is dropped, so only a set of 16-byte hashes grows
with the database. The split is decided per instruction by a seeded hash: deterministic, and
no instruction can land in both files. Files are written into a temporary folder that is
renamed into place.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.errors import InsufficientDataError
from shared.events import Emitter, stdout_sink, utc_timestamp
from shared.fsutil import write_json_atomic
from shared.names import ErrorCode, ExitCode
from shared.traces import Trace, TraceStore

SPLIT_BUCKETS = 1_000_000


@dataclass
class ExportResult:
    output_dir: Path
    train_path: Path
    val_path: Path
    train_count: int
    val_count: int
    traces_used: int
    duplicates_removed: int
    traces_sha256: str


def format_as_alpaca(trace: Trace) -> dict[str, str]:
    """instruction = the query; input = templates used + context; output = the final answer."""
    parts = []
    if trace.templates_used:
        parts.append("Templates: " + ", ".join(trace.templates_used))
    if trace.context:
        parts.append("Context: " + trace.context)
    return {"instruction": trace.query, "input": "\n".join(parts), "output": trace.final_answer}


def instruction_hash(instruction: str) -> bytes:
    return hashlib.sha256(" ".join(instruction.split()).lower().encode()).digest()[:16]


def deduplicate(traces: Iterable[Trace]) -> Iterator[Trace]:
    """Drop repeated instructions. Input must come best-first (TraceStore orders it so), so the
    first version seen is the highest-quality one."""
    seen: set[bytes] = set()
    for trace in traces:
        key = instruction_hash(trace.query)
        if key not in seen:
            seen.add(key)
            yield trace


def is_validation(instruction: str, val_ratio: float, seed: int) -> bool:
    """Deterministic per-instruction split: the same instruction always lands on the same side."""
    digest = hashlib.sha256(f"{seed}:{' '.join(instruction.split()).lower()}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % SPLIT_BUCKETS < val_ratio * SPLIT_BUCKETS


def split_train_val(
    examples: list[dict], val_ratio: float, seed: int
) -> tuple[list[dict], list[dict]]:
    """In-memory form of the streaming split (seed §2.4's signature)."""
    train = [e for e in examples if not is_validation(e["instruction"], val_ratio, seed)]
    val = [e for e in examples if is_validation(e["instruction"], val_ratio, seed)]
    return train, val


def write_jsonl(examples: Iterable[dict[str, Any]], path: Path) -> int:
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps(example, ensure_ascii=False) + "\n")
            count += 1
    return count


def export_traces(
    store: TraceStore,
    *,
    min_quality: float,
    output_dir: Path,
    val_split: float,
    seed: int,
    min_examples: int = 2,
) -> ExportResult:
    """Stream eligible traces into train.jsonl / val.jsonl under `output_dir` (atomically)."""
    staging = output_dir.with_name(f".{output_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    ids_digest = hashlib.sha256()
    train_count = val_count = 0
    held_back: str | None = None  # the last train line, moved to val if val would stay empty
    try:
        with (
            (staging / "train.jsonl").open("w", encoding="utf-8") as train_file,
            (staging / "val.jsonl").open("w", encoding="utf-8") as val_file,
        ):
            for trace in deduplicate(store.get_fine_tune_traces(min_quality)):
                ids_digest.update(trace.id.encode() + b"\0")
                line = json.dumps(format_as_alpaca(trace), ensure_ascii=False) + "\n"
                if is_validation(trace.query, val_split, seed):
                    val_file.write(line)
                    val_count += 1
                    continue
                if held_back is not None:
                    train_file.write(held_back)
                held_back = line
                train_count += 1
            if held_back is not None:
                if val_count == 0 and train_count > 1:
                    val_file.write(held_back)
                    val_count, train_count = 1, train_count - 1
                else:
                    train_file.write(held_back)
        total = train_count + val_count
        eligible = store.count_fine_tune_traces(min_quality)
        duplicates = eligible - total
        if total < min_examples or train_count == 0 or val_count == 0:
            raise InsufficientDataError(
                f"Too few examples to train: {total} unique traces with quality >= {min_quality}"
                f" (train {train_count}, val {val_count}); need at least {min_examples}",
                current=total,
                required=min_examples,
            )
        result = ExportResult(
            output_dir=output_dir,
            train_path=output_dir / "train.jsonl",
            val_path=output_dir / "val.jsonl",
            train_count=train_count,
            val_count=val_count,
            traces_used=eligible - duplicates,
            duplicates_removed=duplicates,
            traces_sha256=ids_digest.hexdigest(),
        )
        write_json_atomic(
            staging / "export_manifest.json",
            {
                "createdAt": utc_timestamp(),
                "db": str(store.path),
                "minQuality": min_quality,
                "valSplit": val_split,
                "seed": seed,
                "eligibleTraces": eligible,
                "duplicatesRemoved": duplicates,
                "trainCount": train_count,
                "valCount": val_count,
                "traceIdsSha256": result.traces_sha256,
                "format": "alpaca",
            },
        )
        if output_dir.exists():
            shutil.rmtree(output_dir)
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, output_dir)
        return result
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tmde-finetune export", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--db", required=True, help="trace database (SQLite)")
    parser.add_argument("--min-quality", type=float, default=8.0)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--val-split", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--min-examples",
        type=int,
        default=2,
        help="exit 2 when fewer unique examples are eligible (default 2)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.min_quality <= 10:
        parser.error(f"--min-quality {args.min_quality} must be between 0 and 10")
    if not 0 < args.val_split < 1:
        parser.error(f"--val-split {args.val_split} must be between 0 and 1 (exclusive)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    emitter = Emitter(None, [stdout_sink()])
    try:
        result = export_traces(
            TraceStore(args.db),
            min_quality=args.min_quality,
            output_dir=Path(args.output_dir),
            val_split=args.val_split,
            seed=args.seed,
            min_examples=args.min_examples,
        )
    except InsufficientDataError as exc:
        emitter.emit("error", code=exc.code, message=exc.message, suggestion=exc.suggestion)
        return ExitCode.INSUFFICIENT_DATA
    except FileNotFoundError as exc:
        emitter.emit("error", code=ErrorCode.GENERAL, message=str(exc))
        return ExitCode.GENERAL_ERROR
    emitter.emit(
        "export_complete",
        train_count=result.train_count,
        val_count=result.val_count,
        path=str(result.output_dir),
    )
    return ExitCode.SUCCESS


if __name__ == "__main__":
    sys.exit(main())
