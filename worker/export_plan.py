"""The export's first pass: which instruction goes to which split, and what a warm start replays.

It reads the eligible queries only (best first, as the export streams the traces), drops
repeated instructions as the export does, and groups near-duplicates (worker/near_dups.py:
one word changed is still the same question). A group lands in one split, decided by the
seeded hash of its first (best) instruction, so no question is trained on while a near-copy
of it is held out.

For a warm start (`parent_keys`: what the parent adapter trained on, worker/trained_set.py)
the run trains on what the parent has not seen plus a replay sample of what it has:
`replay_ratio` old examples per new training example, drawn with the run's seed. A group
with any member the parent trained on stays out of validation: the gate would otherwise judge
the parent on a near-copy of its own training data. The instructions are held in memory for
this pass only (the grouping needs them all); the second pass streams again.
"""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from worker import trained_set
from worker.near_dups import DEFAULT_THRESHOLD, SHINGLE_WORDS, near_duplicate_groups

SPLIT_BUCKETS = 1_000_000


def instruction_hash(instruction: str) -> bytes:
    """The export's duplicate key (16 bytes; trained_set keeps 8 of the same digest)."""
    return trained_set.digest(instruction)[:16]


def is_validation(instruction: str, val_ratio: float, seed: int) -> bool:
    """Deterministic per-instruction split: the same instruction always lands on the same side."""
    digest = hashlib.sha256(f"{seed}:{trained_set.normalised(instruction)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % SPLIT_BUCKETS < val_ratio * SPLIT_BUCKETS


@dataclass
class SplitPlan:
    """Per unique instruction (its `instruction_hash`): validation or not, and for a warm
    start whether the parent trained on it and whether it is replayed."""

    val: set[bytes] = field(default_factory=set)
    old: set[bytes] = field(default_factory=set)
    replay: set[bytes] = field(default_factory=set)
    warm: bool = False
    groups: int = 0  # groups of two or more distinct instructions
    merged: int = 0  # instructions that joined another's group
    new_train: int = 0

    def keeps(self, key: bytes) -> bool:
        """Whether the export writes this instruction (a warm start skips the unreplayed old)."""
        return key not in self.old or key in self.replay

    def manifest(self, replay_ratio: float, left_out: int) -> dict[str, Any]:
        figures: dict[str, Any] = {
            "nearDuplicateThreshold": DEFAULT_THRESHOLD,
            "nearDuplicateShingleWords": SHINGLE_WORDS,
            "nearDuplicateGroups": self.groups,
            "nearDuplicatesMerged": self.merged,
        }
        if self.warm:
            figures |= {
                "newExamples": self.new_train,
                "replayExamples": len(self.replay),
                "replayRatio": replay_ratio,
                "oldExamplesAvailable": len(self.old),
                "oldTracesNotReplayed": left_out,
            }
        return figures


def _unique(queries: Iterable[str]) -> tuple[list[bytes], list[str]]:
    keys: list[bytes] = []
    texts: list[str] = []
    seen: set[bytes] = set()
    for query in queries:
        key = instruction_hash(query)
        if key not in seen:
            seen.add(key)
            keys.append(key)
            texts.append(query)
    return keys, texts


def _hold_one_back(val_group: dict[int, bool], group_old: dict[int, bool]) -> None:
    """A small export whose hash put no group in validation holds back its last new group
    (the lowest-quality one), when another new group stays to train on."""
    new = [rep for rep in val_group if not group_old[rep]]
    if len(new) > 1 and not any(val_group.values()):
        val_group[new[-1]] = True


def plan_splits(
    queries: Iterable[str],
    *,
    val_split: float,
    seed: int,
    parent_keys: set[bytes] | None = None,
    replay_ratio: float = 0.0,
) -> SplitPlan:
    keys, texts = _unique(queries)
    groups = near_duplicate_groups(texts)
    # a trained_set key is the first bytes of the same digest as the export's hash
    trained = parent_keys or set()
    old = [key[: trained_set.KEY_BYTES] in trained for key in keys]
    group_old = {rep: False for rep in groups}
    for index, rep in enumerate(groups):
        group_old[rep] = group_old[rep] or old[index]
    plan = SplitPlan(warm=parent_keys is not None)
    sizes = Counter(groups)
    plan.groups = sum(1 for size in sizes.values() if size > 1)
    plan.merged = len(groups) - len(sizes)
    val_group = {
        rep: not group_old[rep] and is_validation(texts[rep], val_split, seed) for rep in sizes
    }
    _hold_one_back(val_group, group_old)
    old_train = []
    for index, key in enumerate(keys):
        if val_group[groups[index]]:
            plan.val.add(key)
        elif old[index]:
            old_train.append(key)
        else:
            plan.new_train += 1
    if plan.warm:
        plan.old = set(old_train)
        count = min(len(old_train), round(replay_ratio * plan.new_train))
        plan.replay = set(random.Random(seed).sample(old_train, count))
    return plan
