"""Reward functions with verl's ``compute_score(data_source, solution_str, ground_truth, extra_info)`` signature.

Reference one in a TrainingRun as ``reward.function: "loka_trainer.rewards.gsm8k:compute_score"``.
"""

from loka_trainer.rewards.answers import extract_final_answer, normalize_number

__all__ = ["extract_final_answer", "normalize_number"]
