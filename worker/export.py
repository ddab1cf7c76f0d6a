"""Export high-quality debate traces to Alpaca-format JSONL (seed §2.4), with preference pairs.

Usage:
    python -m worker.export \\
        --db ./data/traces.db \\
        --min-quality 8.0 \\
        --output-dir ./data/finetune_20260220 \\
        --val-split 0.1 \\
        --seed 42 \\
        [--max-pairs-per-prompt 3]

Writes train.jsonl / val.jsonl (SFT examples) and train_pairs.jsonl / val_pairs.jsonl (one
{prompt, instruction, input, chosen, rejected, trace_id} per answer the final one replaced; see
worker/pairs.py), each pair in the split of its instruction. Prints {"type": "export_complete",
"train_count": 89, "val_count": 10, "train_pairs": 150, "val_pairs": 17, ...} and exits 0, or
exits 2 when there are too few examples (no pairs is fine: SFT needs none).

Two passes. The first reads the queries only and plans the split (worker/export_plan.py):
near-duplicate instructions form one group, and a group lands in one split, decided by a
seeded hash of its best instruction: deterministic, and no question is trained on while a
near-copy of it is held out. The second streams the traces best-first: a duplicate
instruction seen later is a lower-quality version and is dropped (its pairs too). Files are
written into a temporary folder that is renamed into place.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from shared.errors import InsufficientDataError
from shared.events import Emitter, stdout_sink, utc_timestamp
from shared.fsutil import write_json_atomic
from shared.names import ErrorCode, ExitCode
from shared.traces import Trace, TraceStore
from worker.export_plan import SplitPlan, instruction_hash, is_validation, plan_splits
from worker.pairs import preference_pairs

SPLITS = ("train", "val")


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
    train_pairs: int
    val_pairs: int
    train_pairs_path: Path
    val_pairs_path: Path
    eligible: int = 0


def format_as_alpaca(trace: Trace) -> dict[str, str]:
    """instruction = the query; input = templates used + context; output = the final answer."""
    parts = []
    if trace.templates_used:
        parts.append("Templates: " + ", ".join(trace.templates_used))
    if trace.context:
        parts.append("Context: " + trace.context)
    return {"instruction": trace.query, "input": "\n".join(parts), "output": trace.final_answer}


def deduplicate(traces: Iterable[Trace]) -> Iterator[Trace]:
    """Drop repeated instructions. Input must come best-first (TraceStore orders it so), so the
    first version seen is the highest-quality one."""
    seen: set[bytes] = set()
    for trace in traces:
        key = instruction_hash(trace.query)
        if key not in seen:
            seen.add(key)
            yield trace


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


@dataclass
class _Staged:
    """One trace's lines, written to the same split together: its example and its pairs."""

    example: str
    pairs: list[str]


def _dumps(row: dict[str, Any]) -> str:
    return json.dumps(row, ensure_ascii=False) + "\n"


def _stage(trace: Trace, max_pairs: int | None) -> _Staged:
    example = format_as_alpaca(trace)
    pairs = preference_pairs(trace, example, max_pairs)
    return _Staged(_dumps(example), [_dumps(pair) for pair in pairs])


class _SplitFiles:
    """The staged train/val example and pair files, with their line counts."""

    def __init__(self, staging: Path, stack: ExitStack) -> None:
        def open_(name: str) -> TextIO:
            return stack.enter_context((staging / name).open("w", encoding="utf-8"))

        self.examples = {split: open_(f"{split}.jsonl") for split in SPLITS}
        self.pairs = {split: open_(f"{split}_pairs.jsonl") for split in SPLITS}
        self.example_count = dict.fromkeys(SPLITS, 0)
        self.pair_count = dict.fromkeys(SPLITS, 0)

    def write(self, split: str, staged: _Staged) -> None:
        self.examples[split].write(staged.example)
        self.pairs[split].writelines(staged.pairs)
        self.example_count[split] += 1
        self.pair_count[split] += len(staged.pairs)


def _write_splits(
    traces: Iterable[Trace], out: _SplitFiles, plan: SplitPlan, max_pairs: int | None
) -> tuple[str, int, int]:
    """Stream traces into their split; returns (sha256 of their ids, traces with a verdict,
    traces a warm start left out: its parent trained on them and they were not replayed).

    Streamed: one trace's lines at a time."""
    ids = hashlib.sha256()
    with_verdicts = left_out = 0
    for trace in traces:
        key = instruction_hash(trace.query)
        if not plan.keeps(key):
            left_out += 1
            continue
        ids.update(trace.id.encode() + b"\0")
        with_verdicts += any(r.verdict is not None for r in trace.rounds)
        out.write("val" if key in plan.val else "train", _stage(trace, max_pairs))
    return ids.hexdigest(), with_verdicts, left_out


def _manifest(
    store: TraceStore,
    result: ExportResult,
    settings: dict[str, Any],
    with_verdicts: int,
    plan: dict[str, Any],
) -> dict[str, Any]:
    return {
        "createdAt": utc_timestamp(),
        "db": str(store.path),
        **settings,
        "eligibleTraces": result.eligible,
        "duplicatesRemoved": result.duplicates_removed,
        "trainCount": result.train_count,
        "valCount": result.val_count,
        "trainPairs": result.train_pairs,
        "valPairs": result.val_pairs,
        # which rule chose the rejected answers: a trace's verdicts when it has any (pairs.py)
        "tracesWithVerdicts": with_verdicts,
        **plan,
        "traceIdsSha256": result.traces_sha256,
        "format": "alpaca",
    }


def _too_few(
    out: _SplitFiles, plan: SplitPlan, min_quality: float, min_examples: int, parent: str | None
) -> InsufficientDataError | None:
    train, val = out.example_count["train"], out.example_count["val"]
    if plan.warm and plan.new_train == 0:
        return InsufficientDataError(
            f"Nothing new to continue adapter {parent} with: it trained on every eligible "
            f"instruction with quality >= {min_quality} ({len(plan.old)}). Import new traces, "
            'or start from the base model (initFrom "base")',
            current=0,
            required=1,
        )
    total = train + val
    if total < min_examples or train == 0 or val == 0:
        return InsufficientDataError(
            f"Too few examples to train: {total} unique traces with quality >= {min_quality}"
            f" (train {train}, val {val}); need at least {min_examples}",
            current=total,
            required=min_examples,
        )
    return None


def export_traces(
    store: TraceStore,
    *,
    min_quality: float,
    output_dir: Path,
    val_split: float,
    seed: int,
    min_examples: int = 2,
    max_pairs_per_prompt: int | None = None,
    parent_adapter: str | None = None,
    parent_keys: set[bytes] | None = None,
    replay_ratio: float = 0.0,
) -> ExportResult:
    """Stream eligible traces into train.jsonl / val.jsonl and their preference pairs into
    train_pairs.jsonl / val_pairs.jsonl under `output_dir` (atomically). No pairs is no error:
    SFT needs none, and the pair files are then empty.

    A warm start (`parent_keys`: what `parent_adapter` trained on) exports what the parent has
    not trained on plus `replay_ratio` replayed old examples per new one (export_plan.py)."""
    if max_pairs_per_prompt is not None and max_pairs_per_prompt < 1:
        raise ValueError(f"max_pairs_per_prompt must be positive, not {max_pairs_per_prompt}")
    if (parent_adapter is None) != (parent_keys is None):
        raise ValueError("a warm export needs both parent_adapter and parent_keys, or neither")
    eligible = store.count_fine_tune_traces(min_quality)
    plan = plan_splits(
        store.fine_tune_queries(min_quality),
        val_split=val_split,
        seed=seed,
        parent_keys=parent_keys,
        replay_ratio=replay_ratio,
    )
    staging = output_dir.with_name(f".{output_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        with ExitStack() as stack:
            out = _SplitFiles(staging, stack)
            traces_sha256, with_verdicts, left_out = _write_splits(
                deduplicate(store.get_fine_tune_traces(min_quality)),
                out,
                plan,
                max_pairs_per_prompt,
            )
        problem = _too_few(out, plan, min_quality, min_examples, parent_adapter)
        if problem is not None:
            raise problem
        train_count, val_count = out.example_count["train"], out.example_count["val"]
        result = ExportResult(
            output_dir=output_dir,
            train_path=output_dir / "train.jsonl",
            val_path=output_dir / "val.jsonl",
            train_count=train_count,
            val_count=val_count,
            traces_used=train_count + val_count,
            duplicates_removed=max(eligible - train_count - val_count - left_out, 0),
            traces_sha256=traces_sha256,
            train_pairs=out.pair_count["train"],
            val_pairs=out.pair_count["val"],
            train_pairs_path=output_dir / "train_pairs.jsonl",
            val_pairs_path=output_dir / "val_pairs.jsonl",
            eligible=eligible,
        )
        settings = {
            "minQuality": min_quality,
            "valSplit": val_split,
            "seed": seed,
            "maxPairsPerPrompt": max_pairs_per_prompt,
            "parentAdapter": parent_adapter,
        }
        manifest = _manifest(
            store, result, settings, with_verdicts, plan.manifest(replay_ratio, left_out)
        )
        write_json_atomic(staging / "export_manifest.json", manifest)
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
    parser.add_argument(
        "--max-pairs-per-prompt",
        type=int,
        default=None,
        metavar="N",
        help="keep at most N preference pairs per instruction, the first in round order"
        " (default: all)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.min_quality <= 10:
        parser.error(f"--min-quality {args.min_quality} must be between 0 and 10")
    if not 0 < args.val_split < 1:
        parser.error(f"--val-split {args.val_split} must be between 0 and 1 (exclusive)")
    if args.max_pairs_per_prompt is not None and args.max_pairs_per_prompt < 1:
        parser.error(f"--max-pairs-per-prompt {args.max_pairs_per_prompt} must be positive")
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
            max_pairs_per_prompt=args.max_pairs_per_prompt,
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
        train_pairs=result.train_pairs,
        val_pairs=result.val_pairs,
        path=str(result.output_dir),
    )
    return ExitCode.SUCCESS


if __name__ == "__main__":
    sys.exit(main())
