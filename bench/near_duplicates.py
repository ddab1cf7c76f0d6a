"""The measurements behind worker/near_dups.py's DEFAULT_THRESHOLD and SHINGLE_WORDS.

Usage (from the checkout's root; about 20 seconds on 2 CPU cores):

    .venv/bin/python bench/near_duplicates.py [--seed 0]

Data: GSM8K's 1,319 test questions (../shared/data/gsm8k/test.jsonl beside the checkout, field
`question`) and the 300 demo traces `seed-demo` writes (shared/demo_traces.py; their distinct
queries). For word shingles of 1, 2 and 3 words and each candidate threshold it prints:
- recall: the share of true near-duplicates whose Jaccard with their question reaches the
  threshold, made from every question by changing one word, two words or one number;
- false merges: how many distinct GSM8K questions end up in a group with another question (exact
  Jaccard over all 868,821 pairs, union-find), and the same among the distinct demo queries, with
  their largest group and how many demo links join queries three or more words apart, or of
  other lengths (another filling of a template: a different problem, not an edit);
- each GSM8K question's nearest-neighbour Jaccard (median, 90th, 99th percentile, maximum).
Then the same through near_duplicate_groups itself at SHINGLE_WORDS (MinHash LSH + exact check:
it can only miss links), the time it takes to group all 1,319 questions, the GSM8K pairs at
0.4 or more, to judge whether they are real near-duplicates, and the groups the default finds
among train and test together (8,792 questions; train indices first).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.demo_traces import generate  # noqa: E402
from worker.near_dups import (  # noqa: E402
    DEFAULT_THRESHOLD,
    SHINGLE_WORDS,
    near_duplicate_groups,
    normalized_words,
)

GSM8K = ROOT.parent / "shared" / "data" / "gsm8k" / "test.jsonl"
TRAIN = GSM8K.with_name("train.jsonl")
THRESHOLDS = [0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
EDITS = {"1 word": (1, False), "2 words": (2, False), "1 number": (1, True)}
_TOKEN = re.compile(r"\w+")


def shingles(text: str, size: int) -> frozenset[tuple[str, ...]]:
    words = normalized_words(text)
    if len(words) < size:
        return frozenset([tuple(words)]) if words else frozenset()
    return frozenset(tuple(words[i : i + size]) for i in range(len(words) - size + 1))


def jaccard(a: frozenset, b: frozenset) -> float:
    shared = len(a & b)
    return shared / (len(a) + len(b) - shared) if a or b else 0.0


def edit(question: str, count: int, numeric: bool, vocab: list[str], rng: random.Random) -> str:
    """`question` with `count` of its words (or numbers) replaced: a true near-duplicate."""
    spots = [
        m
        for m in _TOKEN.finditer(question)
        if (m.group().isdigit() if numeric else m.group().isalpha())
    ]
    if len(spots) < count:
        return ""
    for spot in sorted(rng.sample(spots, count), key=lambda m: -m.start()):
        old = spot.group()
        new = str(int(old) + rng.randint(1, 9)) if numeric else rng.choice(vocab)
        while not numeric and new == old.lower():
            new = rng.choice(vocab)
        question = question[: spot.start()] + new + question[spot.end() :]
    return question


def all_pairs(texts: list[str], size: int) -> tuple[list[tuple[float, int, int]], list[float]]:
    """Every pair at Jaccard >= the lowest threshold, and each text's nearest-neighbour Jaccard."""
    sets = [shingles(text, size) for text in texts]
    nearest = [0.0] * len(sets)
    pairs = []
    for i, a in enumerate(sets):
        for j in range(i + 1, len(sets)):
            value = jaccard(a, sets[j])
            nearest[i], nearest[j] = max(nearest[i], value), max(nearest[j], value)
            if value >= THRESHOLDS[0]:
                pairs.append((value, i, j))
    return pairs, nearest


def merged(count: int, links: list[tuple[int, int]]) -> tuple[int, int]:
    """How many of `count` items share a group with another once `links` are joined, and the
    largest group's size."""
    parent = list(range(count))

    def find(node: int) -> int:
        while parent[node] != node:
            node = parent[node]
        return node

    for i, j in links:
        parent[find(i)] = find(j)
    sizes = Counter(find(node) for node in range(count))
    return sum(size for size in sizes.values() if size > 1), max(sizes.values())


def words_apart(a: str, b: str) -> int:
    x, y = normalized_words(a), normalized_words(b)
    return sum(p != q for p, q in zip(x, y, strict=True)) if len(x) == len(y) else 99


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    questions = [json.loads(line)["question"] for line in GSM8K.read_text().splitlines()]
    demo = sorted({trace.query for trace in generate(300)})
    vocab = sorted({w for q in questions for w in normalized_words(q) if w.isalpha()})
    variants = {
        name: [(i, v) for i, q in enumerate(questions) if (v := edit(q, n, num, vocab, rng))]
        for name, (n, num) in EDITS.items()
    }
    edited = ", ".join(f"{name}: {len(found)}" for name, found in variants.items())
    print(f"{len(questions)} GSM8K questions ({edited} edited), {len(demo)} distinct demo queries")
    header = (
        "  ".join(f"{n:>8}" for n in EDITS) + "  gsm8k merged  demo merged (largest, far links)"
    )
    print(f"\nexact Jaccard: recall of edits; questions merged\nwords  thr   {header}")
    nearest_rows = []
    for size in (1, 2, 3):
        pairs, nearest = all_pairs(questions, size)
        demo_pairs, _ = all_pairs(demo, size)
        recalls = {
            name: [jaccard(shingles(questions[i], size), shingles(v, size)) for i, v in found]
            for name, found in variants.items()
        }
        for t in THRESHOLDS:
            cells = "  ".join(f"{sum(j >= t for j in r) / len(r):8.1%}" for r in recalls.values())
            gsm, _ = merged(len(questions), [(i, j) for v, i, j in pairs if v >= t])
            links = [(i, j) for v, i, j in demo_pairs if v >= t]
            far = sum(words_apart(demo[i], demo[j]) >= 3 for i, j in links)
            demo_merged, largest = merged(len(demo), links)
            print(f"{size:5}  {t:.1f}  {cells}  {gsm:12}  {demo_merged:11} ({largest}, {far})")
        q = statistics.quantiles(nearest, n=100)
        nearest_rows.append(
            f"{size:5}  {q[49]:.3f}   {q[89]:.3f}   {q[98]:.3f}   {max(nearest):.3f}"
        )
    print("\nnearest-neighbour Jaccard of GSM8K questions\nwords  median  p90     p99     max")
    print("\n".join(nearest_rows))

    print(f"\nnear_duplicate_groups (SHINGLE_WORDS={SHINGLE_WORDS}, MinHash LSH + exact check)")
    print("thr   " + "  ".join(f"{n:>8}" for n in EDITS) + "  gsm8k merged  demo merged")
    for t in THRESHOLDS:
        cells = []
        for found in variants.values():
            groups = near_duplicate_groups(questions + [v for _, v in found], t)
            hits = sum(groups[len(questions) + k] == groups[i] for k, (i, _) in enumerate(found))
            cells.append(f"{hits / len(found):8.1%}")
        gsm = near_duplicate_groups(questions, t)
        dem = near_duplicate_groups(demo, t)
        count = sum(n for n in Counter(gsm).values() if n > 1)
        demo_count = sum(n for n in Counter(dem).values() if n > 1)
        print(f"{t:.1f}  {'  '.join(cells)}  {count:12}  {demo_count:11}")

    start = time.perf_counter()
    near_duplicate_groups(questions)
    elapsed = time.perf_counter() - start
    print(
        f"\ngrouping all {len(questions)} GSM8K questions at {DEFAULT_THRESHOLD}: {elapsed:.2f} s"
    )

    pairs, _ = all_pairs(questions, SHINGLE_WORDS)
    print(f"\nGSM8K pairs at Jaccard >= {THRESHOLDS[0]} ({SHINGLE_WORDS}-word shingles):")
    for _, i, j in sorted(pairs, reverse=True):
        show(questions, i, j)

    train = [json.loads(line)["question"] for line in TRAIN.read_text().splitlines()]
    everything = train + questions
    groups = near_duplicate_groups(everything)
    print(f"\ntrain + test ({len(everything)} questions) grouped at {DEFAULT_THRESHOLD}:")
    for index, root in enumerate(groups):
        if root != index:
            show(everything, root, index)


def show(texts: list[str], i: int, j: int) -> None:
    value = jaccard(shingles(texts[i], SHINGLE_WORDS), shingles(texts[j], SHINGLE_WORDS))
    print(f"  {value:.3f}  #{i}: {texts[i]}\n         #{j}: {texts[j]}")


if __name__ == "__main__":
    main()
