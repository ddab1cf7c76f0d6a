"""worker.near_dups: near-duplicate instructions fall into one group, distinct ones stay apart."""

from __future__ import annotations

import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

from worker import near_dups
from worker.near_dups import (
    DEFAULT_THRESHOLD,
    SHINGLE_WORDS,
    near_duplicate_groups,
    normalized_words,
)

ROOT = Path(__file__).resolve().parents[2]

QUESTIONS = [
    "Maria bakes 24 cupcakes for the school fair and sells them for $3 each. She gives 4 "
    "cupcakes to her teachers. How much money does Maria make from the cupcakes she sells?",
    "A train leaves the station at 9 am and travels at 60 miles per hour. A second train leaves "
    "an hour later at 80 miles per hour. At what time does the second train catch up?",
    "Tom has three times as many marbles as Jerry. Together they have 48 marbles. If Jerry "
    "loses 2 marbles, how many marbles does Jerry have left?",
    "A rectangular garden is 12 meters long and 8 meters wide. A path 1 meter wide runs around "
    "the outside of the garden. What is the area of the path in square meters?",
]
ONE_WORD_CHANGED = [
    QUESTIONS[0].replace("teachers", "neighbours"),
    QUESTIONS[1].replace("80", "75"),
    QUESTIONS[2].replace("Jerry loses", "Jerry finds"),
    QUESTIONS[3].replace("rectangular", "square"),
]


def bigram_jaccard(a: str, b: str) -> float:
    def grams(text: str) -> set[tuple[str, ...]]:
        words = normalized_words(text)
        return {tuple(words[i : i + 2]) for i in range(len(words) - 1)}

    x, y = grams(a), grams(b)
    return len(x & y) / len(x | y)


def test_normalized_words_drops_case_punctuation_and_spacing() -> None:
    assert normalized_words("  Janet's ducks,\tLAY 16 eggs!! ") == [
        "janet",
        "s",
        "ducks",
        "lay",
        "16",
        "eggs",
    ]
    assert normalized_words("?!  ...") == []


def test_the_chosen_setting_is_bigrams_at_point_seven() -> None:
    assert (SHINGLE_WORDS, DEFAULT_THRESHOLD) == (2, 0.7)


def test_one_word_changed_variants_group_with_their_question() -> None:
    groups = near_duplicate_groups(QUESTIONS + ONE_WORD_CHANGED)
    assert groups == [0, 1, 2, 3, 0, 1, 2, 3]


def test_unrelated_questions_stay_apart() -> None:
    more = [
        "How many minutes are there in 3 hours and 15 minutes?",
        "What is the sum of the first ten positive even numbers?",
    ]
    texts = QUESTIONS + more
    assert near_duplicate_groups(texts) == list(range(len(texts)))


def test_same_template_with_another_subject_is_still_apart() -> None:
    # Another name and item, four words of 20: a different problem, not an edit.
    a = "Ava has 30 stickers and gives 4 to each of 6 friends. How many stickers does Ava keep?"
    b = "Ben has 30 pencils and gives 4 to each of 6 friends. How many pencils does Ben keep?"
    assert bigram_jaccard(a, b) < DEFAULT_THRESHOLD
    assert near_duplicate_groups([a, b]) == [0, 1]


def test_links_are_transitive_and_the_representative_is_the_smallest_index() -> None:
    a = "Lena picks 14 apples in the morning and 9 apples in the afternoon; how many apples in all?"
    b = a.replace("morning", "evening")
    c = b.replace("afternoon", "night")
    assert bigram_jaccard(a, b) >= DEFAULT_THRESHOLD
    assert bigram_jaccard(b, c) >= DEFAULT_THRESHOLD
    assert bigram_jaccard(a, c) < DEFAULT_THRESHOLD  # a and c meet only through b
    texts = [QUESTIONS[0], c, a, QUESTIONS[1], b]
    assert near_duplicate_groups(texts) == [0, 1, 1, 3, 1]


def test_case_punctuation_and_whitespace_differences_group_even_at_threshold_one() -> None:
    texts = [
        "What is 15% of 80?",
        "what is 15 % of 80",
        "WHAT   is 15% of\n80 ??",
        "What is 16% of 80?",
    ]
    assert near_duplicate_groups(texts, threshold=1.0) == [0, 0, 0, 3]


def test_texts_shorter_than_a_shingle_are_one_shingle() -> None:
    assert near_duplicate_groups(["Hello", "hello!", "world", "Hello world"]) == [0, 0, 2, 3]


def test_empty_texts_are_never_linked() -> None:
    texts = ["", "Hello there, friend.", "  ", "?!", "", "hello there friend"]
    assert near_duplicate_groups(texts) == [0, 1, 2, 3, 4, 1]


def test_one_entry_per_text_in_order_from_any_iterable() -> None:
    texts = QUESTIONS * 3
    groups = near_duplicate_groups(text for text in texts)
    assert len(groups) == len(texts)
    assert groups == [0, 1, 2, 3] * 3
    assert near_duplicate_groups([]) == []
    assert near_duplicate_groups(["only one"]) == [0]


def test_groups_and_signatures_are_deterministic_across_processes() -> None:
    texts = QUESTIONS + ONE_WORD_CHANGED
    assert near_duplicate_groups(texts) == near_duplicate_groups(list(texts))
    script = (
        "import hashlib; from worker.near_dups import _signatures;"
        "print(hashlib.sha256(_signatures(['a b c', 'd e f g']).tobytes()).hexdigest())"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env={"PYTHONHASHSEED": seed, "PATH": ""},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(digests) == 1


def test_a_candidate_below_the_threshold_is_not_linked(monkeypatch: pytest.MonkeyPatch) -> None:
    # 60 words, the last one changed: one bigram of 59 differs, Jaccard 58/60.
    words = [f"w{i}" for i in range(60)]
    a, b = " ".join(words), " ".join(words[:-1] + ["changed"])
    assert bigram_jaccard(a, b) == pytest.approx(58 / 60)
    # One hash per band: LSH proposes any pair sharing a single minimum, certainly this one.
    monkeypatch.setattr(near_dups, "_bands_for", lambda threshold: (1, near_dups.NUM_HASHES))
    signatures = near_dups._signatures([a, b])
    assert (0, 1) in set(near_dups._candidate_pairs(signatures, 1, near_dups.NUM_HASHES))
    assert near_duplicate_groups([a, b], threshold=0.97) == [0, 1]
    assert near_duplicate_groups([a, b], threshold=0.96) == [0, 0]


def test_near_one_threshold_keeps_only_exact_matches() -> None:
    a = QUESTIONS[0]
    assert near_duplicate_groups([a, ONE_WORD_CHANGED[0], a.upper()], threshold=1.0) == [0, 1, 0]


@pytest.mark.parametrize("bad", [0, -0.5, 1.01, 2, math.nan])
def test_a_threshold_outside_zero_to_one_is_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match=r"\(0, 1\]") as raised:
        near_duplicate_groups(["a"], threshold=bad)
    assert repr(bad) in str(raised.value)


def test_two_thousand_generated_texts() -> None:
    rng = random.Random(3)
    vocabulary = [f"word{i}" for i in range(3000)]
    families: list[list[str]] = []
    for _ in range(500):
        words = rng.sample(vocabulary, rng.randint(16, 40))
        variants = [" ".join(words).capitalize() + "?"]
        for _ in range(3):  # each variant: one word of the base replaced
            edited = list(words)
            edited[rng.randrange(len(words))] = f"new{rng.randrange(10**6)}"
            variants.append(" ".join(edited))
        families.append(variants)
    labelled = [(family, text) for family, texts in enumerate(families) for text in texts]
    rng.shuffle(labelled)
    first_index: dict[int, int] = {}
    for index, (family, _) in enumerate(labelled):
        first_index.setdefault(family, index)

    groups = near_duplicate_groups([text for _, text in labelled])

    assert len(groups) == 2000
    assert groups == [first_index[family] for family, _ in labelled]
