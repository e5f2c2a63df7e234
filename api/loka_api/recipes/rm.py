"""A reward model trained on pairwise preferences: TRL's RewardTrainer (Bradley-Terry on chosen/rejected), engine trl
only. Its checkpoint is a ``*ForSequenceClassification`` model; pairwise accuracy on held-out pairs is validated at
every checkpoint and at the end (transformers evaluates once more at the last step).
"""

from __future__ import annotations

from loka_api.recipes.base import DataFormat, Recipe, SpecRule


class RmRecipe(Recipe):
    name = "rm"
    algorithms = ("rm",)
    summary = "rm (a reward model on pairwise preferences, engine trl)"
    rules = (
        SpecRule(
            "self.engine == 'trl' && !has(self.reward)",
            "algorithm rm trains a reward model with TRL's RewardTrainer on pairwise preferences (data.train: an "
            "Evaluation's preferences.jsonl): it needs engine trl and no spec.reward",
            ".algorithm",
        ),
    )
    sequences_per_item = "1"
    data_fields = ("fromEvaluation",)
    data_fields_message = "data.fromEvaluation: only algorithm rm trains on an Evaluation's preference pairs"

    data_format = DataFormat.PREFERENCES
    model_folders = ("",)  # TRL saves the model in the step folder
    trl_trainer = "loka_trainer.engines.trl:build_rm"


RM = RmRecipe()
