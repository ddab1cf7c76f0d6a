"""Scores for generated answers: exact match of the final answer, and ROUGE-L.

Pure Python (no torch) so it is cheap to import and to test.

Two kinds of reference meet here. Maths references (GSM8K) end with a final answer
(`#### 42`): the only thing that matters is whether the model reached it, so they are scored
by exact match of the normalised final answer. Free-text references have no single answer:
they are scored by ROUGE-L F1 (longest common subsequence of words), which rewards saying the
same things in the same order without asking for identical wording.
"""

from __future__ import annotations

import re
from typing import Any

# A number as people write it: "1,234.5", "-3", "0.25", "3/4" (thousands groups of exactly
# three, so "3,4" reads as two numbers).
_NUMBER = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?"
_NUMBER_RE = re.compile(_NUMBER)
_LEADING_NUMBER_RE = re.compile(rf"^\$?\s*{_NUMBER}(?:\s*%)?")
_GSM8K_RE = re.compile(r"####[ \t]*([^\n]*)")
_ANSWER_IS_RE = re.compile(r"\banswer\s+is\s*:?\s*(.+)", re.IGNORECASE)
_ANSWER_LINE_RE = re.compile(r"^[ \t*#>-]*(?:a|answer|final answer)[ \t*]*:\s*(.+)$", re.I | re.M)
_BOXED = "\\boxed{"
_DECIMAL_RE = re.compile(r"-?\d+\.\d+")
_SENTENCE_END_RE = re.compile(r"[.!?](?:\s|$)")
_WORD_RE = re.compile(r"\w+")


def _boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}`, balancing nested braces (`\\boxed{\\frac{1}{2}}`)."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth, begin = 1, start + len(_BOXED)
    for i in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[begin:i]
    return None  # unbalanced: a truncated generation, no answer


def _clean_phrase(phrase: str) -> str:
    """Leading number, units dropped ("42 apples." -> "42"); else the first sentence."""
    phrase = phrase.strip().strip("*_`").strip()
    number = _LEADING_NUMBER_RE.match(phrase)
    if number:
        return number.group(0)
    return _SENTENCE_END_RE.split(phrase, maxsplit=1)[0].strip()


def _last_match(pattern: re.Pattern[str], text: str) -> str | None:
    matches = pattern.findall(text)
    return matches[-1] if matches else None


def extract_final_answer(text: str, *, fallback_to_last_number: bool = False) -> str | None:
    """The final answer stated in `text`, or None.

    Checked in order, the last occurrence of each winning: GSM8K `#### x`, `\\boxed{x}`,
    "the answer is x", a line "A: x" / "Answer: x". With `fallback_to_last_number` (used for a
    prediction when its reference has a final answer) the last number in the text is the
    answer when none of those is there: small models often end on the result without saying so.
    """
    for found in (_last_match(_GSM8K_RE, text), _boxed(text)):
        if found is not None and found.strip():
            return _clean_phrase(found)
    for pattern in (_ANSWER_IS_RE, _ANSWER_LINE_RE):
        found = _last_match(pattern, text)
        if found is not None and _clean_phrase(found):
            return _clean_phrase(found)
    if fallback_to_last_number:
        return _last_match(_NUMBER_RE, text)
    return None


def normalize_answer(answer: str) -> str:
    """Canonical form for comparison: "$1,200.00" == "1200", " Paris. " == "paris"."""
    text = answer.strip().lower()
    text = text.replace(",", "").replace("$", "").replace("%", "")
    text = text.strip("*_`'\" ").rstrip(".").strip()
    text = " ".join(text.split())
    if _DECIMAL_RE.fullmatch(text):  # "3.50" -> "3.5", "3.00" -> "3"
        text = text.rstrip("0").rstrip(".")
    return text


def exact_match(prediction: str, reference: str) -> bool | None:
    """Whether the prediction reaches the reference's final answer; None when it has none."""
    expected = extract_final_answer(reference)
    if expected is None:
        return None
    got = extract_final_answer(prediction, fallback_to_last_number=True)
    return got is not None and normalize_answer(got) == normalize_answer(expected)


def _lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence, two rows of the usual table."""
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if token == other else max(previous[j], current[-1]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F1 on lower-cased word tokens; 0.0 when either side has no word (as rouge-score)."""
    pred = _WORD_RE.findall(prediction.lower())
    ref = _WORD_RE.findall(reference.lower())
    if not pred or not ref:
        return 0.0
    common = _lcs_length(pred, ref)
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def score_pair(prediction: str, reference: str) -> dict[str, Any]:
    """One side-by-side row's score: {"exactMatch": bool | None, "rougeL": float}."""
    return {
        "exactMatch": exact_match(prediction, reference),
        "rougeL": round(rouge_l(prediction, reference), 4),
    }


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def score_generations(predictions: list[str], references: list[str]) -> dict[str, Any]:
    """Aggregate scores: exact match where the reference has a final answer, ROUGE-L elsewhere.

    Returns `exact_match` (rate, None when no reference has a final answer),
    `exact_match_examples`, `rouge_l` (mean over the references without a final answer, None
    when there are none), `rouge_l_examples`, and `scores` (one `score_pair` per example).
    """
    if len(predictions) != len(references):
        raise ValueError(
            f"score_generations needs one prediction per reference: got {len(predictions)} "
            f"predictions for {len(references)} references"
        )
    scores = [score_pair(p, r) for p, r in zip(predictions, references, strict=True)]
    matches = [s["exactMatch"] for s in scores if s["exactMatch"] is not None]
    rouges = [s["rougeL"] for s in scores if s["exactMatch"] is None]
    return {
        "exact_match": _mean([float(m) for m in matches]),
        "exact_match_examples": len(matches),
        "rouge_l": _mean(rouges),
        "rouge_l_examples": len(rouges),
        "scores": scores,
    }
