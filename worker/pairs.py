"""Preference pairs from one debate trace: its final answer (chosen) against the answers it
replaced (rejected), for DPO-style training on the same prompts as the SFT examples.

Which rounds are rejected:
- when any round of the trace carries a verdict, the debate's judgement replaces the guess
  below: the rounds judged "rejected", in round order (accepted and unjudged ones are not);
- otherwise, the proposer rounds the final answer superseded: different text and, where both
  texts state a final answer (`#### x`, `\\boxed{x}`, "the answer is x", "A: x"), a different
  answer. A draft that reached the same answer in other words is not worse, so it is not
  rejected; critic and judge rounds are not answers at all.
Duplicates (same text up to whitespace and case) appear once, and never the chosen answer.
"""

from __future__ import annotations

from typing import Any

from shared.traces import Trace
from worker.scoring import extract_final_answer, normalize_answer
from worker.training.data import user_text

PROPOSER = "proposer"
REJECTED = "rejected"


def normalise_text(text: str) -> str:
    """Whitespace collapsed and lowercased, as export.instruction_hash compares instructions."""
    return " ".join(text.split()).lower()


def _answer(text: str) -> str | None:
    found = extract_final_answer(text)  # no last-number fallback: a draft's numbers aren't one
    return None if found is None else normalize_answer(found)


def _superseded(draft: str, final: str, final_answer: str | None) -> bool:
    if normalise_text(draft) == normalise_text(final):
        return False
    answer = _answer(draft)
    # Without an answer on both sides the text difference alone decides.
    return answer is None or final_answer is None or answer != final_answer


def _candidates(trace: Trace) -> list[str]:
    if any(r.verdict is not None for r in trace.rounds):
        return [r.content for r in trace.rounds if r.verdict == REJECTED]
    final_answer = _answer(trace.final_answer)
    return [
        r.content
        for r in trace.rounds
        if r.role.strip().lower() == PROPOSER
        and _superseded(r.content, trace.final_answer, final_answer)
    ]


def rejected_answers(trace: Trace) -> list[str]:
    """The rejected side of the trace's pairs, in round order, each text once."""
    seen = {normalise_text(trace.final_answer)}
    rejected = []
    for text in _candidates(trace):
        key = normalise_text(text)
        if key and key not in seen:  # an empty round is no answer to prefer against
            seen.add(key)
            rejected.append(text)
    return rejected


def preference_pairs(
    trace: Trace, prompt_example: dict[str, Any], max_pairs: int | None
) -> list[dict[str, Any]]:
    """One {prompt, instruction, input, chosen, rejected, trace_id} per rejected answer, the
    first `max_pairs` of them (None: all). `prompt_example` is the trace's SFT example
    (export.format_as_alpaca): its instruction and input make the same chat prompt as SFT."""
    rejected = rejected_answers(trace)[:max_pairs]
    prompt = {
        "prompt": user_text(prompt_example),
        "instruction": prompt_example["instruction"],
        "input": prompt_example["input"],
    }
    return [
        {**prompt, "chosen": trace.final_answer, "rejected": text, "trace_id": trace.id}
        for text in rejected
    ]
