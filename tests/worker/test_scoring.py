"""worker.scoring: final-answer extraction, normalisation, exact match, ROUGE-L, aggregation."""

from __future__ import annotations

import pytest

from worker.scoring import (
    exact_match,
    extract_final_answer,
    normalize_answer,
    rouge_l,
    score_generations,
    score_pair,
)

GSM8K_REFERENCE = "She has 3 + 4 = <<3+4=7>>7 apples.\nThen 7 * 2 = 14.\n#### 14"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (GSM8K_REFERENCE, "14"),
        ("#### 1,200", "1,200"),
        ("#### $5", "$5"),
        ("#### -3", "-3"),
        ("#### 3/4", "3/4"),
        ("steps\n#### 7\nmore text\n#### 8", "8"),  # the last one wins
        ("So we get \\boxed{42}.", "42"),
        ("\\boxed{1} then \\boxed{2}", "2"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("The answer is 42.", "42"),
        ("so the final answer is: 18 apples", "18"),
        ("THE ANSWER IS Paris. It is in France.", "Paris"),
        ("The answer is **27**", "27"),
        ("Q: how many?\nA: 12", "12"),
        ("Work...\nAnswer: $3.50", "$3.50"),
        ("**Answer:** 9", "9"),
        ("Final answer: 25%", "25%"),
    ],
)
def test_extracts_the_final_answer(text: str, expected: str) -> None:
    assert extract_final_answer(text) == expected


def test_pattern_order_prefers_gsm8k_over_other_phrasings() -> None:
    assert extract_final_answer("The answer is 3.\n#### 4") == "4"
    assert extract_final_answer("Answer: 5\nso the answer is 6") == "6"


@pytest.mark.parametrize(
    "text",
    ["", "Photosynthesis turns light into sugar.", "There are 3 cats and 4 dogs.", "\\boxed{12"],
)
def test_no_final_answer_without_a_marker(text: str) -> None:
    assert extract_final_answer(text) is None


def test_last_number_fallback_only_when_asked() -> None:
    text = "First 3 + 4 = 7, then 7 * 2 = 1,400."
    assert extract_final_answer(text) is None
    assert extract_final_answer(text, fallback_to_last_number=True) == "1,400"
    assert extract_final_answer("no digits here", fallback_to_last_number=True) is None


def test_a_marker_beats_the_last_number_fallback() -> None:
    text = "The answer is 5. Check: 5 * 2 = 10"
    assert extract_final_answer(text, fallback_to_last_number=True) == "5"


def test_an_empty_marker_falls_through_to_the_next_pattern() -> None:
    assert extract_final_answer("####   \nThe answer is 3") == "3"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1,200", "1200"),
        ("$1,200.00", "1200"),
        ("25%", "25"),
        ("3.0", "3"),
        ("3.50", "3.5"),
        ("-7.00", "-7"),
        ("100", "100"),
        ("  Paris.  ", "paris"),
        ("New   York", "new york"),
        ("**42**", "42"),
    ],
)
def test_normalize_answer(raw: str, expected: str) -> None:
    assert normalize_answer(raw) == expected


def test_exact_match_compares_normalised_final_answers() -> None:
    assert exact_match("So she has 14 apples.\n#### 14", GSM8K_REFERENCE) is True
    assert exact_match("The answer is $14.00.", GSM8K_REFERENCE) is True
    assert exact_match("7 * 2 = 14", GSM8K_REFERENCE) is True  # last-number fallback
    assert exact_match("The answer is 15.", GSM8K_REFERENCE) is False
    assert exact_match("I do not know.", GSM8K_REFERENCE) is False
    assert exact_match("", GSM8K_REFERENCE) is False


def test_exact_match_is_none_without_a_final_answer_in_the_reference() -> None:
    assert exact_match("#### 3", "Plants make sugar from light.") is None
    assert exact_match("3", "There are 3 cats.") is None  # a bare number is not a final answer


def test_exact_match_does_not_accept_a_partial_number() -> None:
    assert exact_match("#### 140", "#### 14") is False
    assert exact_match("#### 1.4", "#### 14") is False


def test_rouge_l_identical_and_disjoint() -> None:
    assert rouge_l("the cat sat", "The cat sat.") == pytest.approx(1.0)
    assert rouge_l("dogs bark", "cats meow") == 0.0


def test_rouge_l_is_lcs_f1() -> None:
    # LCS("a b c d", "a c e") = "a c" (2): P = 2/4, R = 2/3, F1 = 4/7.
    assert rouge_l("a b c d", "a c e") == pytest.approx(4 / 7)
    # Order matters: a subsequence, not a bag of words.
    assert rouge_l("c b a", "a b c") == pytest.approx(1 / 3)


def test_rouge_l_counts_repeated_words_once_each() -> None:
    # LCS("the the the", "the cat") = 1: P = 1/3, R = 1/2.
    assert rouge_l("the the the", "the cat") == pytest.approx(2 * (1 / 3) * (1 / 2) / (5 / 6))


@pytest.mark.parametrize(
    ("prediction", "reference"), [("", "a b"), ("a b", ""), ("", ""), ("!", "?")]
)
def test_rouge_l_is_zero_when_a_side_has_no_words(prediction: str, reference: str) -> None:
    assert rouge_l(prediction, reference) == 0.0


def test_rouge_l_is_symmetric() -> None:
    assert rouge_l("x y z w", "y w q") == pytest.approx(rouge_l("y w q", "x y z w"))


def test_score_pair() -> None:
    assert score_pair("#### 14", GSM8K_REFERENCE)["exactMatch"] is True
    row = score_pair("light to sugar", "Plants turn light into sugar.")
    assert row["exactMatch"] is None
    assert 0 < row["rougeL"] < 1


def test_score_generations_splits_by_reference_kind() -> None:
    references = [GSM8K_REFERENCE, "#### 5", "Plants turn light into sugar.", "Paris is nice."]
    predictions = ["#### 14", "#### 6", "plants turn light into sugar", "London"]
    result = score_generations(predictions, references)
    assert result["exact_match"] == 0.5
    assert result["exact_match_examples"] == 2
    assert result["rouge_l"] == 0.5  # (1.0 + 0.0) / 2
    assert result["rouge_l_examples"] == 2
    assert [s["exactMatch"] for s in result["scores"]] == [True, False, None, None]


def test_score_generations_none_where_a_kind_is_absent() -> None:
    only_maths = score_generations(["#### 5"], ["#### 5"])
    assert only_maths["exact_match"] == 1.0
    assert (only_maths["rouge_l"], only_maths["rouge_l_examples"]) == (None, 0)
    only_text = score_generations(["hello"], ["hello world"])
    assert (only_text["exact_match"], only_text["exact_match_examples"]) == (None, 0)
    assert only_text["rouge_l"] == pytest.approx(0.6667)
    empty = score_generations([], [])
    assert empty == {
        "exact_match": None,
        "exact_match_examples": 0,
        "rouge_l": None,
        "rouge_l_examples": 0,
        "scores": [],
    }


def test_score_generations_rejects_mismatched_lengths() -> None:
    with pytest.raises(ValueError, match="one prediction per reference"):
        score_generations(["a"], ["a", "b"])
