"""worker.pairs: which debate rounds are the rejected side of a preference pair, and the pairs."""

from __future__ import annotations

from typing import Any

import pytest

from shared.traces import Round, Trace
from worker.export import format_as_alpaca
from worker.pairs import preference_pairs, rejected_answers
from worker.training.data import user_text


def _trace(final: str, *rounds: Round, **extra: Any) -> Trace:
    return Trace(
        id="t1",
        query="How many apples?",
        final_answer=final,
        quality_score=9.0,
        rounds=list(rounds),
        **extra,
    )


# --- the verdict rule ------------------------------------------------------------------------


def test_verdicts_pick_the_rejected_rounds_in_order() -> None:
    trace = _trace(
        "#### 12",
        Round("proposer", "#### 10", verdict="rejected"),
        Round("proposer", "#### 12", verdict="accepted"),
        Round("critic", "This looks wrong: 11?", verdict="rejected"),  # any role, when judged
        Round("proposer", "#### 13"),  # unjudged: the verdicts decide, not the guess
    )
    assert rejected_answers(trace) == ["#### 10", "This looks wrong: 11?"]


def test_one_verdict_switches_the_guess_off_for_that_trace() -> None:
    trace = _trace(
        "#### 12",
        Round("proposer", "#### 10"),  # superseded, but the trace has a verdict elsewhere
        Round("judge", "Good.", verdict="accepted"),
    )
    assert rejected_answers(trace) == []


def test_a_rejected_round_equal_to_the_chosen_is_dropped() -> None:
    trace = _trace(
        "The answer is 12.",
        Round("proposer", "the answer   is 12.", verdict="rejected"),
        Round("proposer", "#### 9", verdict="rejected"),
        Round("proposer", "####  9", verdict="rejected"),  # same text up to whitespace: once
    )
    assert rejected_answers(trace) == ["#### 9"]


# --- the no-verdict rule ---------------------------------------------------------------------


def test_superseded_proposer_rounds_are_rejected() -> None:
    trace = _trace(
        "3 + 4 = 7, plus 5 is 12. #### 12",
        Round("Proposer", "I think it is 10."),  # no answer stated: the text differs
        Round("critic", "You forgot the 5 apples."),
        Round("PROPOSER", "3 + 4 = 7. #### 7"),
        Round("judge", "Accepted."),
    )
    assert rejected_answers(trace) == ["I think it is 10.", "3 + 4 = 7. #### 7"]


@pytest.mark.parametrize(
    "same_answer",
    [
        "So we add them up. #### 12",
        "So we add them up.\nA: 12",
        "So we add them up. The answer is 12.",
        "So we add them up, giving \\boxed{12}.",
    ],
)
def test_a_draft_reaching_the_same_answer_is_not_rejected(same_answer: str) -> None:
    trace = _trace("3 + 4 + 5 = 12. The answer is 12.", Round("proposer", same_answer))
    assert rejected_answers(trace) == []


@pytest.mark.parametrize(
    "other_answer",
    [
        "So we add them up. #### 11",
        "So we add them up.\nA: 11",
        "So we add them up. The answer is 11.",
        "So we add them up, giving \\boxed{11}.",
    ],
)
def test_a_draft_with_another_answer_is_rejected(other_answer: str) -> None:
    trace = _trace("#### 12", Round("proposer", other_answer))
    assert rejected_answers(trace) == [other_answer]


def test_answers_compare_normalised() -> None:
    trace = _trace("The answer is $1,200.", Round("proposer", "Total: 1200.00\n#### 1200"))
    assert rejected_answers(trace) == []


def test_without_an_answer_on_one_side_the_text_decides() -> None:
    trace = _trace(
        "Twelve apples in all.",
        Round("proposer", "#### 12"),
        Round("proposer", "twelve  APPLES in all."),  # the final answer's text: not rejected
    )
    assert rejected_answers(trace) == ["#### 12"]


def test_critic_and_judge_rounds_are_never_rejected_without_verdicts() -> None:
    trace = _trace(
        "#### 12",
        Round("critic", "#### 11"),
        Round("judge", "The answer is 10."),
        Round("proposer", "#### 12"),  # identical to the final answer
    )
    assert rejected_answers(trace) == []


def test_duplicates_appear_once() -> None:
    trace = _trace(
        "#### 12",
        Round("proposer", "#### 10"),
        Round("proposer", "####   10"),
        Round("proposer", ""),  # an empty round is no answer
    )
    assert rejected_answers(trace) == ["#### 10"]


# --- pairs -----------------------------------------------------------------------------------


def test_pairs_carry_the_sft_prompt() -> None:
    trace = _trace(
        "#### 12",
        Round("proposer", "#### 10"),
        Round("proposer", "#### 11"),
        templates_used=["socratic"],
        context="fruit",
    )
    example = format_as_alpaca(trace)
    pairs = preference_pairs(trace, example, None)
    assert pairs == [
        {
            "prompt": user_text(example),
            "instruction": "How many apples?",
            "input": "Templates: socratic\nContext: fruit",
            "chosen": "#### 12",
            "rejected": rejected,
            "trace_id": "t1",
        }
        for rejected in ("#### 10", "#### 11")
    ]
    assert pairs[0]["prompt"] == "How many apples?\n\nTemplates: socratic\nContext: fruit"


def test_prompt_without_input_is_the_instruction() -> None:
    trace = _trace("#### 12", Round("proposer", "#### 10"))
    (pair,) = preference_pairs(trace, format_as_alpaca(trace), None)
    assert pair["prompt"] == pair["instruction"] == "How many apples?" and pair["input"] == ""


def test_max_pairs_keeps_the_first_in_round_order() -> None:
    trace = _trace("#### 12", *(Round("proposer", f"#### {n}") for n in range(1, 6)))
    example = format_as_alpaca(trace)
    assert [p["rejected"] for p in preference_pairs(trace, example, 2)] == ["#### 1", "#### 2"]
    assert len(preference_pairs(trace, example, None)) == 5
    assert len(preference_pairs(trace, example, 10)) == 5


def test_a_trace_without_rejected_answers_has_no_pairs() -> None:
    trace = _trace("#### 12")
    assert preference_pairs(trace, format_as_alpaca(trace), None) == []
