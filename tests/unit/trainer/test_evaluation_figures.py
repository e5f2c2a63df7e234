"""How an evaluation combines verdicts: aggregation, the judges' agreement, preference pairs, steps picked."""

from __future__ import annotations

import pytest

from loka_trainer.evaluation import aggregate_scores, agreement, pick_steps, preferences


def sample(sample_id: str, group: str, answer: str) -> dict[str, object]:
    return {
        "id": sample_id,
        "group": group,
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": answer}],
    }


@pytest.mark.parametrize(("how", "expected"), [("mean", 0.5), ("median", 0.6), ("majority", 1.0)])
def test_aggregates(how: str, expected: float) -> None:
    assert aggregate_scores([0.2, 0.6, 0.7], how) == pytest.approx(expected)  # type: ignore[arg-type]


def test_majority_needs_more_than_half() -> None:
    assert aggregate_scores([0.9, 0.1], "majority") == 0.0


def test_agreement_counts_pass_and_fail_alike_over_judge_pairs() -> None:
    scores = {"a": {"x": 0.9, "y": 0.8}, "b": {"x": 0.1, "y": 0.7}, "c": {"x": 0.2, "y": 0.3}, "d": {"x": 1.0}}
    assert agreement(scores, ["x", "y"]) == pytest.approx(2 / 3)  # d has one judge only
    assert agreement(scores, ["x"]) is None


def test_preferences_pair_within_groups_widest_margin_first() -> None:
    samples = [sample("1", "g1", "a"), sample("2", "g1", "b"), sample("3", "g1", "c"), sample("4", "g2", "d")]
    scores = {"1": 0.9, "2": 0.1, "3": 0.5, "4": 1.0}
    pairs = preferences(samples, scores, min_margin=0.3, max_pairs=2)
    assert [(p["chosen_id"], p["rejected_id"]) for p in pairs] == [("1", "2"), ("1", "3")]
    assert pairs[0]["prompt"] == [{"role": "user", "content": "q"}]
    assert pairs[0]["chosen"] == [{"role": "assistant", "content": "a"}]
    assert pairs[0]["rejected"] == [{"role": "assistant", "content": "b"}]
    assert "margin" not in pairs[0]  # TRL's RewardTrainer would add a `margin` column to its loss


def test_steps_latest_all_named_and_missing() -> None:
    assert pick_steps([2, 4, 6], "latest") == [6]
    assert pick_steps([2, 4, 6], "all") == [2, 4, 6]
    assert pick_steps([2, 4, 6], [4, 2]) == [2, 4]
    with pytest.raises(ValueError, match=r"step\(s\) \[5\] have no rollouts \(kept steps: \[2, 4, 6\]\)"):
        pick_steps([2, 4, 6], [5])
