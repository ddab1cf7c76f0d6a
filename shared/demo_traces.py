"""`tmde-finetune seed-demo`: a realistic synthetic debate-trace database.

Each trace is a grade-school word problem debated by a proposer, a critic and a judge. Most
debates converge on a worked answer ending in "The answer is N." and score 8-10; some settle on
a wrong answer and score lower, and a few questions were asked twice (the exporter keeps the
better debate). A first proposal that guessed wrong is superseded by the revision: those drafts
are the rejected side of the export's preference pairs (worker/pairs.py). Deterministic for a
given seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from shared.traces import Round, Trace

NAMES = ["Ava", "Ben", "Chen", "Dara", "Eli", "Farah", "Gus", "Hana", "Ivan", "Jun", "Kofi", "Lena"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "cookies", "books", "cards", "shells"]
PROPOSER, CRITIC, JUDGE = "qwen3:32b", "llama3.1:8b", "mistral:7b"
TEMPLATES = ["step-by-step", "devil's-advocate", "verify-arithmetic", "socratic"]

Problem = tuple[str, list[str], int]


def _shopping(rng: random.Random) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    packs, per_pack, price = rng.randint(2, 9), rng.randint(3, 12), rng.randint(2, 9)
    count = packs * per_pack
    question = (
        f"{name} buys {packs} packs of {item} with {per_pack} {item} in each pack. "
        f"Each pack costs ${price}. How many {item} does {name} have, and how much did they cost?"
    )
    steps = [
        f"{packs} packs x {per_pack} {item} = {count} {item}.",
        f"{packs} x ${price} = ${packs * price}.",
    ]
    return question, steps, count


def _sharing(rng: random.Random) -> Problem:
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    friends, each, left = rng.randint(2, 8), rng.randint(2, 9), rng.randint(1, 5)
    total = friends * each + left
    question = (
        f"{name} has {total} {item} and gives {each} to each of {friends} friends. "
        f"How many {item} does {name} keep?"
    )
    steps = [
        f"{friends} friends x {each} = {friends * each} {item} given away.",
        f"{total} - {friends * each} = {left}.",
    ]
    return question, steps, left


def _travel(rng: random.Random) -> Problem:
    name = rng.choice(NAMES)
    speed, hours, extra = rng.randint(30, 80), rng.randint(2, 6), rng.randint(5, 40)
    distance = speed * hours + extra
    question = (
        f"{name} drives at {speed} km per hour for {hours} hours and then walks {extra} km. "
        "How far does " + name + " travel in total?"
    )
    steps = [
        f"Driving: {speed} x {hours} = {speed * hours} km.",
        f"{speed * hours} + {extra} = {distance} km.",
    ]
    return question, steps, distance


def _savings(rng: random.Random) -> Problem:
    name = rng.choice(NAMES)
    weekly, weeks, spent = rng.randint(5, 25), rng.randint(3, 12), rng.randint(1, 30)
    saved = weekly * weeks - spent
    question = (
        f"{name} saves ${weekly} every week for {weeks} weeks, then spends ${spent} on a gift. "
        "How many dollars are left?"
    )
    steps = [
        f"Saved: {weekly} x {weeks} = ${weekly * weeks}.",
        f"{weekly * weeks} - {spent} = ${saved}.",
    ]
    return question, steps, saved


GENERATORS: list[Callable[[random.Random], Problem]] = [_shopping, _sharing, _travel, _savings]


def _debate(
    question: str, steps: list[str], answer: int, *, correct: bool, rng: random.Random
) -> tuple[str, list[Round], float]:
    final_number = answer if correct else answer + rng.choice([-3, -2, -1, 1, 2, 5])
    worked = " ".join(steps[:-1] + ([steps[-1]] if correct else [f"So about {final_number}."]))
    final = f"{worked} The answer is {final_number}."
    first_guess = answer + rng.choice([0, 0, 1, -1, 10])
    rounds = [
        Round(
            "proposer",
            f"Let me work it out. {' '.join(steps[:1])} The answer is {first_guess}.",
            PROPOSER,
        ),
        Round(
            "critic",
            "Check the last step again: did you apply every quantity in the question?",
            CRITIC,
        ),
        Round("proposer", f"Revised: {worked} The answer is {final_number}.", PROPOSER),
        Round(
            "judge",
            "The revised solution is consistent with the question."
            if correct
            else "The revision still skips a quantity; accepted with low confidence.",
            JUDGE,
        ),
    ]
    quality = round(rng.uniform(8.0, 10.0) if correct else rng.uniform(3.0, 7.5), 1)
    return final, rounds, quality


def generate(count: int = 300, *, seed: int = 7) -> list[Trace]:
    """`count` traces; about 85% correct and high quality, about 5% repeated questions."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)
    traces: list[Trace] = []
    for index in range(count):
        repeat = traces and rng.random() < 0.05
        if repeat:
            source = rng.choice(traces)
            question = source.query
            steps, answer = [], 0
            correct, final, rounds, quality = False, source.final_answer, source.rounds, 5.0
        else:
            question, steps, answer = rng.choice(GENERATORS)(rng)
            correct = rng.random() < 0.85
            final, rounds, quality = _debate(question, steps, answer, correct=correct, rng=rng)
        traces.append(
            Trace(
                id=f"demo-{index:05d}",
                query=question,
                final_answer=final,
                quality_score=quality,
                templates_used=rng.sample(TEMPLATES, k=rng.randint(1, 2)),
                context="Grade-school arithmetic; show the working, then 'The answer is N.'",
                created_at=(start + timedelta(hours=index * 3)).isoformat(),
                rounds=list(rounds),
            )
        )
    return traces
