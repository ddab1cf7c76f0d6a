"""The instructions an adapter trained on, as a compact file in its folder.

    <adapter>/trained_instructions.bin   sorted 8-byte keys, one per instruction

A key is the first 8 bytes of the sha256 of the instruction with case and whitespace
normalised (the exporter's duplicate rule): 800 kB per 100,000 instructions, and a chance of
about 3e-10 that two of them collide. The file is written before the folder is sealed, so the
manifest's sha256 covers it. A warm-started adapter's file holds its parent's keys as well:
it carries on training weights that saw them.

The promotion gate reads it to score candidate and reference only on held-out examples that
neither trained on. An adapter published before this file existed has no file: `read` says
so with None, and the gate reports that the reference's training set is unknown.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

FILE = "trained_instructions.bin"
KEY_BYTES = 8


def normalised(instruction: str) -> str:
    """The instruction as duplicates are compared: case and whitespace do not count."""
    return " ".join(instruction.split()).lower()


def digest(instruction: str) -> bytes:
    return hashlib.sha256(normalised(instruction).encode()).digest()


def key(instruction: str) -> bytes:
    return digest(instruction)[:KEY_BYTES]


def keys_of(jsonl: Path) -> set[bytes]:
    """The keys of the instructions of an Alpaca (or pairs) JSONL file; empty when absent."""
    if not jsonl.is_file():
        return set()
    with jsonl.open(encoding="utf-8") as handle:
        return {key(json.loads(line)["instruction"]) for line in handle if line.strip()}


def write(folder: Path, keys: Iterable[bytes]) -> Path:
    """Write `keys` into `folder`/FILE atomically (temp file, then rename)."""
    target = folder / FILE
    temporary = target.with_name(f".{FILE}.tmp-{os.getpid()}")
    temporary.write_bytes(b"".join(sorted(set(keys))))
    os.replace(temporary, target)
    return target


def read(folder: Path) -> set[bytes] | None:
    """The keys in `folder`/FILE; None when the adapter has no such file (published before)."""
    path = folder / FILE
    if not path.is_file():
        return None
    data = path.read_bytes()
    if len(data) % KEY_BYTES:
        raise ValueError(
            f"{path} is not a list of {KEY_BYTES}-byte keys ({len(data)} bytes); "
            "the adapter folder is damaged: retrain it or restore it from a backup"
        )
    return {data[i : i + KEY_BYTES] for i in range(0, len(data), KEY_BYTES)}
