r"""Near-duplicate grouping of training instructions, so that a whole group lands in one split.

Each text becomes its lower-cased `\w+` words, then the set of its word bigrams. Two texts are
linked when the Jaccard similarity of those sets reaches the threshold; groups are the connected
components (union-find), each named by its smallest index. Texts identical after normalisation
are linked without hashing. Other candidate pairs come from MinHash (128 hashes, an n x 128
uint32 array) with LSH banding, and each is checked with the exact Jaccard of its shingle sets,
so LSH can miss a link but never invent one. Rows per band r is the largest for which the
b = 128 // r bands find a pair at the threshold t with 1 - (1 - t^r)^b >= 0.99: at t = 0.7,
r = 4 and b = 32, so a pair at 0.7 is proposed with probability 0.9998 (0.87 at 0.5, 0.003 at 0.1).

Why bigrams and 0.7 (bench/near_duplicates.py, GSM8K's 1,319 test questions, 15-165 words):
- one word or one number changed: recall 100% (bigram Jaccard >= 0.75); two words: 97.7%;
- no distinct GSM8K question merged at 0.7 (2 at 0.6, 4 at 0.5): the closest distinct pair is
  0.645, one problem asked back to front over the same setup sentences, and 99% of questions have
  their nearest neighbour below 0.19. Unigrams put a distinct pair at 0.83; trigrams lose
  two-word edits (78.5% at 0.7, 96.6% at 0.6, where 3 demo links join texts 3 words apart);
- the demo traces are filled-in templates: at 0.7 every link among their 283 distinct queries
  joins texts at most two words apart (61 merged, the largest group 9), at 0.5 235 chain together.
Over GSM8K train + test (8,792) 0.7 links 5 train pairs: a renamed copy, one with two numbers
changed, and three problems asked back to front over the same sentences (best in one split too).
near_duplicate_groups itself agrees with the exact all-pairs counts at every threshold. Limit: a
one-word edit inside n words keeps (n - 3) / (n + 1), under 0.7 below 13 words.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

DEFAULT_THRESHOLD: float = 0.7
SHINGLE_WORDS: int = 2
NUM_HASHES = 128
MIN_RECALL = 0.99  # the S-curve's height at the threshold
_WORD = re.compile(r"\w+")
_CHUNK = 4096  # shingles hashed at once: a (chunk x 128) uint64 temporary is 4 MiB


def normalized_words(text: str) -> list[str]:
    """Lower-cased word tokens: punctuation, whitespace and case differences vanish."""
    return _WORD.findall(text.lower())


def _shingles(words: list[str]) -> set[str]:
    # \w+ words hold no space, so the space-joined n-gram is as unambiguous as the tuple.
    if len(words) < SHINGLE_WORDS:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + SHINGLE_WORDS]) for i in range(len(words) - SHINGLE_WORDS + 1)}


def _stable_hash(data: bytes) -> int:
    # hash() is salted per process; blake2b gives the same groups in every run.
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijection of uint64 that scrambles every bit (wraps on purpose)."""
    import numpy as np

    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _bands_for(threshold: float) -> tuple[int, int]:
    """(rows, bands): the most rows per band that still find a pair at `threshold` >= 99%."""
    for rows in range(NUM_HASHES, 0, -1):
        bands = NUM_HASHES // rows
        if 1 - (1 - threshold**rows) ** bands >= MIN_RECALL:
            return rows, bands
    return 1, NUM_HASHES  # thresholds under ~0.035: the best 128 hashes can do


def _signatures(texts: list[str]) -> np.ndarray:
    """MinHash signatures (n x NUM_HASHES uint32) of space-joined normalised texts."""
    import numpy as np

    seeds = np.array([_stable_hash(b"minhash-%d" % i) for i in range(NUM_HASHES)], np.uint64)
    out = np.empty((len(texts), NUM_HASHES), np.uint32)
    start, hashes, counts = 0, [], []
    for index, text in enumerate(texts):
        row = [_stable_hash(s.encode()) for s in _shingles(text.split(" "))]
        hashes += row
        counts.append(len(row))
        if len(hashes) >= _CHUNK or index == len(texts) - 1:
            mixed = _mix(np.array(hashes, np.uint64)[:, None] ^ seeds[None, :])
            offsets = np.concatenate(([0], np.cumsum(counts)[:-1]))
            # The top 32 bits of the minimum: half the memory, collisions 1 in 4 billion.
            minima = np.minimum.reduceat(mixed, offsets, axis=0) >> np.uint64(32)
            out[start : index + 1] = minima.astype(np.uint32)
            start, hashes, counts = index + 1, [], []
    return out


def _candidate_pairs(signatures: np.ndarray, rows: int, bands: int) -> Iterator[tuple[int, int]]:
    """Pairs (i < j) whose signatures agree on all `rows` of at least one band (may repeat)."""
    import numpy as np

    for band in range(bands):
        columns = signatures[:, band * rows : (band + 1) * rows].astype(np.uint64)
        key = columns[:, 0]
        for column in range(1, rows):
            key = _mix(key ^ columns[:, column])  # a key collision is only an extra candidate
        order = np.argsort(key, kind="stable")
        ordered = key[order]
        starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
        ends = np.append(starts[1:], len(ordered))
        for begin, end in zip(starts[ends - starts > 1], ends[ends - starts > 1], strict=True):
            members = sorted(order[begin:end].tolist())
            for a, first in enumerate(members):
                for second in members[a + 1 :]:
                    yield first, second


def near_duplicate_groups(texts: Iterable[str], threshold: float = DEFAULT_THRESHOLD) -> list[int]:
    """For each text, the smallest index in its near-duplicate group (its own index if alone)."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold!r}")
    first_of: dict[str, int] = {}  # normalised text -> its unique index
    unique: list[str] = []
    unique_first: list[int] = []  # unique index -> the first text index that has it
    members: list[int] = []  # text index -> unique index, or -1 for an empty text
    for index, text in enumerate(texts):
        words = normalized_words(text)
        if not words:
            members.append(-1)
            continue
        key = " ".join(words)
        if key not in first_of:
            first_of[key] = len(unique)
            unique.append(key)
            unique_first.append(index)
        members.append(first_of[key])
    parent = list(range(len(unique)))

    def find(node: int) -> int:
        while parent[node] != node:
            parent[node] = parent[parent[node]]
            node = parent[node]
        return node

    @lru_cache(maxsize=4096)
    def shingles(node: int) -> frozenset[str]:
        return frozenset(_shingles(unique[node].split(" ")))

    if len(unique) > 1:
        rows, bands = _bands_for(threshold)
        for i, j in _candidate_pairs(_signatures(unique), rows, bands):
            root_i, root_j = find(i), find(j)
            if root_i == root_j:
                continue
            a, b = shingles(i), shingles(j)
            shared = len(a & b)
            if shared / (len(a) + len(b) - shared) >= threshold:
                # The smaller root wins, so every root is its group's smallest index.
                parent[max(root_i, root_j)] = min(root_i, root_j)
    return [i if member < 0 else unique_first[find(member)] for i, member in enumerate(members)]
