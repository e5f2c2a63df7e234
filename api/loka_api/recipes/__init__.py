"""One module per algorithm family, and the registry that finds a run's by ``spec.algorithm``.

A new algorithm family is one module here (a ``Recipe`` subclass and its instance) plus its line below; the
CRD's rules (``make crds``), the operator's checks, the renderer, staging and both engines follow from it. What
runs in the trainer image (a verl entry wrapper, a TRL trainer builder) is named by the recipe as a module path.
"""

from loka_api.recipes.base import (
    DataFormat,
    OwnedKey,
    Recipe,
    SpecProblem,
    SpecRule,
    StagedPaths,
    UnknownAlgorithmError,
    VerlLaunch,
    algorithms,
    recipe_for,
    recipes,
    register,
    unregister,
)
from loka_api.recipes.grpo import GRPO
from loka_api.recipes.rm import RM
from loka_api.recipes.sft import SFT

for _recipe in (GRPO, SFT, RM):
    register(_recipe)

__all__ = [
    "DataFormat",
    "OwnedKey",
    "Recipe",
    "SpecProblem",
    "SpecRule",
    "StagedPaths",
    "UnknownAlgorithmError",
    "VerlLaunch",
    "algorithms",
    "recipe_for",
    "recipes",
    "register",
    "unregister",
]
