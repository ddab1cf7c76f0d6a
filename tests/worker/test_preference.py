"""Preference accuracy on known log-probabilities, and the per-token mean it compares."""

from __future__ import annotations

import math

import pytest

from worker.preference import mean_token_logps, preference_accuracy, side_examples


def test_accuracy_is_the_share_where_chosen_scores_strictly_higher() -> None:
    chosen = [-1.0, -2.0, -0.5, -3.0]
    rejected = [-2.0, -1.0, -0.5, -4.0]  # wins, loses, ties (not a win), wins
    assert preference_accuracy(chosen, rejected) == 0.5


def test_no_pairs_no_accuracy_and_lengths_must_match() -> None:
    assert preference_accuracy([], []) is None
    with pytest.raises(ValueError, match="2 chosen scores for 1 rejected"):
        preference_accuracy([0.0, 1.0], [0.0])


class FixedLogits:
    """A stand-in model whose next-token distribution is the same at every position."""

    def __init__(self, probabilities: list[float]) -> None:
        import torch

        self.logits = torch.log(torch.tensor(probabilities))

    def __call__(self, input_ids, attention_mask):  # type: ignore[no-untyped-def]

        batch, length = input_ids.shape
        logits = self.logits.expand(batch, length, -1).clone()
        return type("Out", (), {"logits": logits})()


def test_mean_token_logps_averages_over_the_answer_tokens_only() -> None:
    import torch

    model = FixedLogits([0.5, 0.25, 0.25])
    ids = torch.tensor([[2, 0, 1, 1], [2, 0, 0, 0]])
    mask = torch.ones_like(ids)
    # the prompt token (position 0) carries no label; row 1 answers 0,1,1; row 2 answers 0 then pads
    labels = torch.tensor([[-100, 0, 1, 1], [-100, 0, -100, -100]])
    scores = mean_token_logps(model, [(ids, mask, labels)])
    assert scores[0] == pytest.approx((math.log(0.5) + 2 * math.log(0.25)) / 3)
    assert scores[1] == pytest.approx(math.log(0.5))


def test_sides_keep_the_prompt_the_training_examples_have() -> None:
    pair = {
        "instruction": "Q",
        "input": "ctx",
        "chosen": "A",
        "rejected": "B",
        "prompt": "Q\n\nctx",
    }
    assert side_examples([pair], "chosen") == [{"instruction": "Q", "input": "ctx", "output": "A"}]
    assert side_examples([pair], "rejected")[0]["output"] == "B"
