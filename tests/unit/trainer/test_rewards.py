"""The rewards a policy is trained against: right answers score, formats and adversarial outputs do not cheat."""

from __future__ import annotations

import pytest

from loka_trainer.rewards import bare_number, gsm8k
from loka_trainer.rewards import format as format_reward
from loka_trainer.rewards.answers import MAX_SOLUTION_CHARS, extract_final_answer


def score(solution: str, truth: str | int | float = "72") -> float:
    return gsm8k.compute_score("openai/gsm8k", solution, truth, extra_info={"index": 0})


@pytest.mark.parametrize(
    "solution",
    [
        "Natalia sold 48/2 = 24 clips in May. 48+24 = 72\n#### 72",
        "<think>48 + 24</think><answer>72</answer>",
        "so the answer is \\boxed{72}",
        "The total is 72.",
        "<answer> $72.00 </answer>",
        "<answer>\uff17\uff12</answer>",  # full-width digits
    ],
)
def test_correct_final_answer_scores_one(solution: str) -> None:
    assert score(solution) == 1.0


@pytest.mark.parametrize(
    "solution",
    [
        "#### 71",
        "<answer>73</answer>",
        "72 is what I first thought, but it is 70",
        "<think>it is 72</think><answer>7 2</answer>",
    ],
)
def test_wrong_final_answer_scores_zero(solution: str) -> None:
    assert score(solution) == 0.0


def test_numbers_compare_by_value_not_by_text() -> None:
    assert score("#### 1,000", "1000") == 1.0
    assert score("#### 1000.0", "1,000") == 1.0
    assert score("<answer>\u22125</answer>", "-5") == 1.0  # unicode minus sign
    assert score("<answer>5</answer>", "-5") == 0.0


def test_list_of_small_numbers_is_not_read_as_thousands() -> None:
    assert extract_final_answer("counting 1,2,3") == "3"


def test_text_ground_truth_compares_case_and_space_insensitively() -> None:
    assert score("<answer>  Paris </answer>", "paris") == 1.0
    assert score("<answer>Lyon</answer>", "paris") == 0.0


@pytest.mark.parametrize("solution", ["", "   ", "no digits at all", "<answer></answer>"])
def test_empty_or_answerless_output_scores_zero(solution: str) -> None:
    assert score(solution) == 0.0


def test_several_disagreeing_answers_score_zero() -> None:
    assert score("<answer>72</answer> or maybe <answer>73</answer>") == 0.0
    assert score("#### 72\n#### 73") == 0.0


def test_repeating_the_same_answer_is_not_hedging() -> None:
    assert score("<answer>72</answer><answer>72.0</answer>") == 1.0


def test_answer_tag_wins_over_numbers_spammed_after_it() -> None:
    assert score("<answer>72</answer> " + " ".join(str(i) for i in range(1000))) == 1.0


def test_huge_output_scores_zero_even_if_it_contains_the_answer() -> None:
    assert score("9 " * (MAX_SOLUTION_CHARS // 2) + "#### 72") == 0.0
    assert format_reward.compute_score(None, "<think>x</think><answer>72</answer>" + " " * MAX_SOLUTION_CHARS) == 0.0


def test_non_string_solution_scores_zero() -> None:
    assert gsm8k.compute_score("x", None, "1") == 0.0  # type: ignore[arg-type]


def test_extra_keyword_arguments_from_verl_are_accepted() -> None:
    assert gsm8k.compute_score("x", "#### 3", "3", None, return_dict=False, tokenizer=None) == 1.0


@pytest.mark.parametrize(
    "solution",
    [
        "<think>48+24</think><answer>72</answer>",
        "  <think>\nreasoning\n</think>\n<answer>72</answer>\n",
        "<think>ユニコード 推理 🤔</think><answer>七十二</answer>",
    ],
)
def test_think_then_answer_is_well_formed(solution: str) -> None:
    assert format_reward.compute_score("x", solution, "72") == 1.0


@pytest.mark.parametrize(
    "solution",
    [
        "",
        "72",
        "<answer>72</answer>",
        "<think>no answer</think>",
        "<answer>72</answer><think>late</think>",
        "<think>a</think><answer>72</answer><answer>73</answer>",
        "<think>a<answer>1</answer></think><answer>72</answer>",
        "<think>a</think><answer>   </answer>",
        "preamble <think>a</think><answer>72</answer>",
        "<think>a</think><answer>72</answer> trailing text",
    ],
)
def test_malformed_or_smuggling_output_has_bad_format(solution: str) -> None:
    assert format_reward.compute_score("x", solution) == 0.0


@pytest.mark.parametrize(
    ("solution", "expected"),
    [("42", 1.0), (" 42\n", 1.0), ("4x", 0.5), ("the sum", 0.0), ("", 0.0), ("   ", 0.0), ("7" * 300_000, 0.0)],
)
def test_bare_number_reward_is_the_share_of_digits(solution: str, expected: float) -> None:
    assert bare_number.compute_score("loka", solution, "42") == expected
