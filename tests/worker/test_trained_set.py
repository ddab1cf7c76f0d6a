"""trained_instructions.bin: what an adapter trained on, compact and sealed with it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worker import trained_set


def test_keys_round_trip_sorted_and_unique(tmp_path: Path) -> None:
    keys = {trained_set.key(f"Question {i}?") for i in range(50)}
    path = trained_set.write(tmp_path, [*keys, *keys])
    assert path.stat().st_size == 50 * trained_set.KEY_BYTES
    data = path.read_bytes()
    chunks = [data[i : i + 8] for i in range(0, len(data), 8)]
    assert chunks == sorted(chunks)
    assert trained_set.read(tmp_path) == keys
    assert not list(tmp_path.glob(".*tmp*"))  # written through a temporary file


def test_the_key_ignores_case_and_spacing_only() -> None:
    assert trained_set.key("What is  2+2?") == trained_set.key(" what is 2+2? ")
    assert trained_set.key("What is 2+2?") != trained_set.key("What is 2+3?")


def test_an_adapter_without_the_file_is_unknown_not_empty(tmp_path: Path) -> None:
    assert trained_set.read(tmp_path) is None


def test_a_damaged_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / trained_set.FILE).write_bytes(b"123")
    with pytest.raises(ValueError, match="8-byte keys .* retrain it"):
        trained_set.read(tmp_path)


def test_keys_of_a_jsonl_file(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps({"instruction": q}) + "\n" for q in ["A?", "B?", "A?"]))
    assert trained_set.keys_of(path) == {trained_set.key("A?"), trained_set.key("B?")}
    assert trained_set.keys_of(tmp_path / "missing.jsonl") == set()
