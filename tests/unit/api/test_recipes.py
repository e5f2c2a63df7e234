"""Recipes: one module per algorithm family, found by spec.algorithm; what they render; the keys they own."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

from loka_api import TrainingRunSpec
from loka_api.crd import build_crd
from loka_api.recipes import algorithms, recipe_for, recipes, register
from loka_api.recipes.base import LOKA_RUNTIME_ENV, RUNTIME_ENV_KEY, OwnedKey, Recipe, override_key
from loka_api.recipes.grpo import GRPO
from loka_api.recipes.sft import SFT
from loka_api.render import StagedPaths, compose_verl_config, render_launch

REPO = Path(__file__).resolve().parents[3]
PRODUCTION = ("api", "operator", "trainer-image", "cli", "client", "localcluster")

PATHS = StagedPaths(
    model="/stage/model",
    train_files=Path("/stage/train.parquet"),
    val_files=Path("/stage/val.parquet"),
    checkpoint_dir=Path("/stage/ckpt"),
    resume_from=Path("/stage/ckpt/global_step_5"),
    metrics_file=Path("/stage/metrics.jsonl"),
)
RUNTIME_ENV = {name: f"value-of-{name}" for name in LOKA_RUNTIME_ENV if name != "VERL_FILE_LOGGER_PATH"}


def make_spec(**overrides: Any) -> TrainingRunSpec:
    body: dict[str, Any] = {
        "image": "ghcr.io/acme/loka:rl-train",
        "model": {"uri": "hf://Qwen/Qwen2.5-0.5B-Instruct"},
        "data": {"train": "s3://data/train.parquet", "validation": "s3://data/test.parquet"},
        "training": {"batchSize": 16, "samplesPerPrompt": 4},
        "resources": {"workers": 1, "gpusPerWorker": 8},
        "checkpoints": {"uri": "s3://ckpt/", "every": 10, "resume": "s3://ckpt/n/r/global_step_5"},
        "tracking": {"wandb": {"project": "p"}},
    }
    body.update(overrides)
    return TrainingRunSpec.model_validate(body)


def make_sft_spec(**overrides: Any) -> TrainingRunSpec:
    data = {"train": "s3://data/train.parquet", "validation": "s3://data/test.parquet", "responseKey": "answer"}
    return make_spec(algorithm="sft", data=data, **overrides)


SPECS = {"grpo": make_spec, "sft": make_sft_spec}


# --------------------------------------------------------------------------------------------- registry


def test_every_algorithm_of_the_crd_has_exactly_one_recipe() -> None:
    enum = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "algorithm"
    ]["enum"]
    assert enum == list(algorithms()) == ["grpo", "rloo", "reinforce_plus_plus", "remax", "sft", "rm"]
    assert {recipe.name for recipe in recipes()} == {"grpo", "sft", "rm"}
    assert recipe_for("rloo") is GRPO
    assert recipe_for("sft") is SFT


def test_an_unknown_algorithm_is_refused_naming_the_accepted_ones() -> None:
    with pytest.raises(ValueError, match=r"spec\.algorithm: 'ppo-ish' is not an algorithm \(accepted: grpo, rloo"):
        make_spec(algorithm="ppo-ish")


def test_an_algorithm_belongs_to_one_recipe() -> None:
    class Another(Recipe):
        name = "another"
        algorithms = ("sft",)

    with pytest.raises(ValueError, match="'sft' is already trained by recipe 'sft'"):
        register(Another())


def test_no_algorithm_is_tested_by_name_outside_the_recipes() -> None:
    """The algorithm axis lives in loka_api/recipes/: nothing else compares spec.algorithm with a name."""
    by_name = re.compile(
        r"""algorithm\s*(==|!=|\bis\b|\bin\b)\s*[\[(]?\s*(['"][a-z_]+['"]|Algorithm\.)"""
        r"""|is_sft|\.is_rl\b|Algorithm\.[A-Z]|[=!]=\s*["'](sft|grpo|rloo|remax|reinforce_plus_plus)["']"""
    )
    found = []
    for folder in PRODUCTION:
        for path in (REPO / folder).rglob("*.py"):
            if "recipes" in path.relative_to(REPO).parts:
                continue
            for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if by_name.search(line):
                    found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
    assert found == []


# -------------------------------------------------------------------------------------------- rendering


def test_the_launch_is_structured_the_users_overrides_last_whatever_the_runtime_environment() -> None:
    spec = make_spec(verlOverrides=["actor_rollout_ref.rollout.n=8"])
    launch = render_launch(spec, run_name="r", namespace="n", paths=PATHS, runtime_env=RUNTIME_ENV)
    assert launch.entrypoint == "loka_trainer.verl_driver"
    assert launch.config_name == "ppo_trainer"
    assert launch.user_overrides == ("actor_rollout_ref.rollout.n=8",)
    assert launch.argv()[-1] == "actor_rollout_ref.rollout.n=8"
    assert launch.argv()[:3] == [sys.executable, "-m", "loka_trainer.verl_driver"]
    # main_ppo's actors get the runtime environment through Hydra, the driver process through its environment.
    config = compose_verl_config(launch.arguments, config_name=launch.config_name)
    assert dict(config.ray_kwargs.ray_init.runtime_env.env_vars) == {
        **RUNTIME_ENV,
        "VERL_FILE_LOGGER_PATH": "/stage/metrics.jsonl",
    }
    assert launch.environment == {**RUNTIME_ENV, "VERL_FILE_LOGGER_PATH": "/stage/metrics.jsonl"}
    assert config.actor_rollout_ref.rollout.n == 8


def test_the_sft_launch_gives_the_runtime_environment_to_its_driver_process_only() -> None:
    spec = make_sft_spec(verlOverrides=["optim.weight_decay=0.1"])
    launch = render_launch(spec, run_name="r", namespace="n", paths=PATHS, runtime_env=RUNTIME_ENV)
    assert (launch.entrypoint, launch.config_name) == ("loka_trainer.verl_sft", "sft_trainer_engine")
    assert launch.arguments[-1] == "optim.weight_decay=0.1"
    assert not any(override.startswith("+ray_kwargs") for override in launch.arguments)
    assert launch.environment == {**RUNTIME_ENV, "VERL_FILE_LOGGER_PATH": "/stage/metrics.jsonl"}
    compose_verl_config(launch.arguments, config_name=launch.config_name)


# ------------------------------------------------------------------------------------------- owned keys


@pytest.mark.parametrize("recipe", [GRPO, SFT], ids=lambda recipe: recipe.name)
def test_every_key_a_recipe_owns_is_one_its_renderer_sets(recipe: Recipe) -> None:
    """The owned keys are not a list that drifts from the renderer: each is rendered (or is the runtime env)."""
    spec = SPECS[recipe.name]()
    launch = recipe.render(spec, run_name="r", namespace="n", paths=PATHS, runtime_env=RUNTIME_ENV)
    rendered = {override_key(override) for override in launch.overrides}
    assert [owned.key for owned in recipe.owned_keys if owned.key not in rendered] == []
    runtime_env = {key for key in rendered if key.startswith(RUNTIME_ENV_KEY)}
    assert runtime_env <= {owned.key for owned in recipe.owned_keys}


# Each of Hydra's forms, on keys the issue names: (recipe, override, the owned key, what the message says instead)
OWNED_FORMS = [
    ("grpo", "trainer.save_freq=3", "trainer.save_freq", "spec.checkpoints.every"),
    ("grpo", "+trainer.save_freq=3", "trainer.save_freq", "spec.checkpoints.every"),
    ("grpo", "++trainer.save_freq=3", "trainer.save_freq", "spec.checkpoints.every"),
    ("grpo", "~trainer.save_freq", "trainer.save_freq", "spec.checkpoints.every"),
    ("grpo", "~trainer.save_freq=50", "trainer.save_freq", "spec.checkpoints.every"),
    ("grpo", "trainer.checkpoint_callback_class=null", "trainer.checkpoint_callback_class", "spec.checkpoints.uri"),
    ("grpo", "~trainer.checkpoint_callback_class", "trainer.checkpoint_callback_class", "spec.checkpoints.uri"),
    ("grpo", "++trainer.default_local_dir=/tmp/mine", "trainer.default_local_dir", "spec.checkpoints.uri"),
    ("grpo", "trainer.resume_mode=disable", "trainer.resume_mode", "spec.checkpoints.resume"),
    ("grpo", "+trainer.resume_from_path=/x", "trainer.resume_from_path", "spec.checkpoints.resume"),
    ("grpo", "trainer.max_actor_ckpt_to_keep=9", "trainer.max_actor_ckpt_to_keep", "spec.checkpoints.keep"),
    ("grpo", "trainer.logger=[console]", "trainer.logger", "spec.tracking.wandb"),
    ("grpo", "trainer.nnodes=4", "trainer.nnodes", "spec.resources.workers"),
    ("grpo", "actor_rollout_ref.model.path=/elsewhere", "actor_rollout_ref.model.path", "spec.model.uri"),
    ("grpo", "algorithm.adv_estimator=gae", "algorithm.adv_estimator", "spec.algorithm"),
    ("grpo", "data.train_files=/x.parquet", "data.train_files", "spec.data.train"),
    (
        "grpo",
        "+ray_kwargs.ray_init.runtime_env.env_vars.LOKA_CHECKPOINT_WRITER=9/other",
        "ray_kwargs.ray_init.runtime_env.env_vars.LOKA_CHECKPOINT_WRITER",
        "spec.checkpoints",
    ),
    (
        "grpo",
        "++ray_kwargs.ray_init.runtime_env.env_vars.LOKA_RUN_UID=x",
        "ray_kwargs.ray_init.runtime_env.env_vars.LOKA_RUN_UID",
        "spec.checkpoints",
    ),
    ("sft", "trainer.save_freq=3", "trainer.save_freq", "spec.checkpoints.every"),
    ("sft", "~trainer.max_ckpt_to_keep", "trainer.max_ckpt_to_keep", "spec.checkpoints.keep"),
    ("sft", "+model.path=/elsewhere", "model.path", "spec.model.uri"),
    ("sft", "data.messages_key=conversation", "data.messages_key", "spec.data.messagesKey"),
]
# Replacing or deleting a section that holds owned keys.
OWNED_SECTIONS = [
    ("grpo", "~trainer", "trainer"),
    ("grpo", "trainer={}", "trainer"),
    ("grpo", "~ray_kwargs.ray_init.runtime_env.env_vars", "ray_kwargs.ray_init.runtime_env.env_vars"),
    ("grpo", "+ray_kwargs.ray_init.runtime_env.env_vars={}", "ray_kwargs.ray_init.runtime_env.env_vars"),
    ("sft", "~data", "data"),
]
# Keys beside owned ones stay the user's.
ALLOWED = [
    ("grpo", "actor_rollout_ref.rollout.gpu_memory_utilization=0.6"),
    ("grpo", "actor_rollout_ref.model.use_remove_padding=false"),
    ("grpo", "+actor_rollout_ref.model.override_config.attn_implementation=sdpa"),
    ("grpo", "+ray_kwargs.ray_init.runtime_env.env_vars.NCCL_DEBUG=INFO"),
    ("grpo", "trainer.total_epochs=3"),
    ("grpo", "trainer.save_freq_extra_is_another_key=1"),
    ("sft", "model.use_remove_padding=false"),
    ("sft", "optim.weight_decay=0.05"),
]


@pytest.mark.parametrize(("algorithm", "override", "key", "instead"), OWNED_FORMS, ids=[c[1] for c in OWNED_FORMS])
def test_a_recipe_refuses_an_override_of_a_key_it_owns_in_every_hydra_form(
    algorithm: str, override: str, key: str, instead: str
) -> None:
    problem = recipe_for(algorithm).owned_key_problem([override])
    assert problem is not None
    assert problem.reason == "InvalidVerlOverrides"
    assert f"spec.verlOverrides[0] {override!r}" in problem.message
    assert f"would change {key}, which Loka sets itself" in problem.message
    assert instead in problem.message


@pytest.mark.parametrize(("algorithm", "override", "section"), OWNED_SECTIONS, ids=[c[1] for c in OWNED_SECTIONS])
def test_a_recipe_refuses_replacing_or_deleting_a_section_that_holds_its_keys(
    algorithm: str, override: str, section: str
) -> None:
    problem = recipe_for(algorithm).owned_key_problem([override])
    assert problem is not None
    assert f"would replace {section}, which holds" in problem.message
    assert f"override single keys inside {section} instead" in problem.message


@pytest.mark.parametrize(("algorithm", "override"), ALLOWED, ids=[c[1] for c in ALLOWED])
def test_keys_beside_the_owned_ones_stay_the_users(algorithm: str, override: str) -> None:
    assert recipe_for(algorithm).owned_key_problem([override]) is None


def _owned_key_cel(algorithm: str) -> list[tuple[re.Pattern[str], str]]:
    """The CRD's owned-key rules that apply to ``algorithm``: (the regex each verlOverride must not match, message)."""
    rules = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "x-kubernetes-validations"
    ]
    found = []
    for rule in rules:
        if rule.get("fieldPath") != ".verlOverrides":
            continue
        guard = re.match(
            r"^(!\(self\.algorithm in \[(?P<many>[^\]]*)\]\)|self\.algorithm != '(?P<one>\w+)') \|\| ", rule["rule"]
        )
        if guard:
            applies = guard["one"] or ""
            names = [name.strip(" '") for name in (guard["many"] or applies).split(",")]
            if algorithm not in names:
                continue
        pattern = re.search(r"o\.matches\('(.*)'\)\)\)$", rule["rule"])
        assert pattern is not None, rule["rule"]
        found.append((re.compile(pattern.group(1).replace("\\\\", "\\")), rule["message"]))
    return found


@pytest.mark.parametrize(("algorithm", "override", "key", "instead"), OWNED_FORMS, ids=[c[1] for c in OWNED_FORMS])
def test_the_crd_refuses_the_same_overrides_naming_the_key_and_what_to_set(
    algorithm: str, override: str, key: str, instead: str
) -> None:
    messages = [message for pattern, message in _owned_key_cel(algorithm) if pattern.search(override)]
    assert len(messages) == 1, messages
    assert key.rpartition(".")[2] in messages[0] and "Loka's to set" in messages[0]
    assert instead in messages[0]


@pytest.mark.parametrize(("algorithm", "override", "section"), OWNED_SECTIONS, ids=[c[1] for c in OWNED_SECTIONS])
def test_the_crd_refuses_replacing_a_section_that_holds_owned_keys(algorithm: str, override: str, section: str) -> None:
    messages = [message for pattern, message in _owned_key_cel(algorithm) if pattern.search(override)]
    assert len(messages) == 1, messages
    assert "may not replace or delete a whole section" in messages[0] and section in messages[0]


@pytest.mark.parametrize(("algorithm", "override"), ALLOWED, ids=[c[1] for c in ALLOWED])
def test_the_crd_lets_keys_beside_the_owned_ones_through(algorithm: str, override: str) -> None:
    assert [message for pattern, message in _owned_key_cel(algorithm) if pattern.search(override)] == []


def test_an_owned_key_names_what_to_set_instead() -> None:
    for recipe in recipes():
        for owned in recipe.owned_keys:
            assert isinstance(owned, OwnedKey)
            assert "spec." in owned.instead, owned
