"""worker/probe/prompts.jsonl: the forgetting probe's fixed general prompts, 60 per domain,
interleaved so that any prefix is balanced."""

from __future__ import annotations

import json
import re
from collections import Counter
from importlib.resources import files

import pytest

DOMAINS = ("writing", "facts", "code", "reasoning")
PER_DOMAIN = 60
ID_PATTERN = re.compile(r"^(writing|facts|code|reasoning)-(\d{3})$")


@pytest.fixture(scope="module")
def lines() -> list[str]:
    text = (files("worker.probe") / "prompts.jsonl").read_text(encoding="utf-8")
    return text.splitlines()


@pytest.fixture(scope="module")
def rows(lines: list[str]) -> list[dict]:
    return [json.loads(line) for line in lines]


def test_every_line_is_one_json_object(lines: list[str]) -> None:
    assert len(lines) == len(DOMAINS) * PER_DOMAIN
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            pytest.fail(f"line {number} is not valid JSON: {error}")
        assert isinstance(row, dict), f"line {number} is not an object"


def test_keys_and_types(rows: list[dict]) -> None:
    for row in rows:
        assert set(row) == {"id", "domain", "prompt"}, row
        assert all(isinstance(value, str) for value in row.values()), row


def test_ids_unique_and_well_formed(rows: list[dict]) -> None:
    ids = [row["id"] for row in rows]
    assert len(set(ids)) == len(ids)
    for row in rows:
        match = ID_PATTERN.match(row["id"])
        assert match, row["id"]
        assert match.group(1) == row["domain"], row["id"]
        assert 1 <= int(match.group(2)) <= PER_DOMAIN, row["id"]


def test_sixty_per_domain(rows: list[dict]) -> None:
    assert Counter(row["domain"] for row in rows) == dict.fromkeys(DOMAINS, PER_DOMAIN)
    for domain in DOMAINS:
        numbers = sorted(int(row["id"][-3:]) for row in rows if row["domain"] == domain)
        assert numbers == list(range(1, PER_DOMAIN + 1)), domain


def test_domains_interleaved(rows: list[dict]) -> None:
    assert Counter(row["domain"] for row in rows[:8]) == dict.fromkeys(DOMAINS, 2)
    # the full round-robin: writing-001, facts-001, code-001, reasoning-001, writing-002, ...
    expected = [f"{d}-{n:03d}" for n in range(1, PER_DOMAIN + 1) for d in DOMAINS]
    assert [row["id"] for row in rows] == expected


def test_prompts_non_empty_short_and_distinct(rows: list[dict]) -> None:
    seen: dict[str, str] = {}
    for row in rows:
        prompt = row["prompt"]
        assert prompt.strip(), row["id"]
        assert len(prompt) <= 400, row["id"]
        key = " ".join(prompt.lower().split())
        assert key not in seen, f"{row['id']} repeats {seen.get(key)}"
        seen[key] = row["id"]
