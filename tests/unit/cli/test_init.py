"""`loka init` offline: what it writes for a first run with nothing uploaded, and how it refuses a wrong built-in."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml

from loka_api import TrainingRun
from loka_cli.errors import CliError
from loka_cli.init import InitOptions, write_init


def test_builtin_writes_a_cpu_run_on_inputs_the_trainer_builds(tmp_path: Path) -> None:
    target = tmp_path / "try-it.yaml"
    options = InitOptions(name="try-it", namespace="demo", gpus=0, builtin=True)
    assert write_init(options, {}, output=target, force=False, out=io.StringIO()) == 0
    text = target.read_text()
    spec = yaml.safe_load(text)["spec"]
    assert spec["model"] == {"uri": "builtin://tiny-qwen2"}
    assert spec["data"]["train"] == spec["data"]["validation"] == "builtin://arithmetic"
    assert spec["engine"] == "trl" and spec["training"]["maxSteps"] == 20
    TrainingRun.model_validate(yaml.safe_load(text))


def test_every_run_it_writes_names_the_builtin_inputs(tmp_path: Path) -> None:
    target = tmp_path / "qwen.yaml"
    write_init(InitOptions(name="qwen", namespace="team"), {}, output=target, force=False, out=io.StringIO())
    text = target.read_text()
    assert "builtin://tiny-qwen2" in text and "builtin://arithmetic" in text  # in the comments a new user reads
    assert yaml.safe_load(text)["spec"]["model"]["uri"] == "hf://Qwen/Qwen2.5-0.5B-Instruct"


def test_flags_win_over_builtin(tmp_path: Path) -> None:
    target = tmp_path / "mine.yaml"
    options = InitOptions(name="mine", namespace="demo", builtin=True, data="s3://team/math/", steps=5)
    write_init(options, {}, output=target, force=False, out=io.StringIO())
    spec = yaml.safe_load(target.read_text())["spec"]
    assert spec["model"]["uri"] == "builtin://tiny-qwen2"
    assert spec["data"]["train"] == "s3://team/math/train.parquet"
    assert spec["training"]["maxSteps"] == 5


@pytest.mark.parametrize(
    ("field", "flag", "accepted"),
    [
        ("model", "--model", "builtin://tiny-qwen2, builtin://random-qwen2-0.5b"),
        ("data", "--data", "builtin://arithmetic"),
    ],
)
def test_an_unknown_builtin_is_refused_with_the_accepted_ones_and_nothing_written(
    tmp_path: Path, field: str, flag: str, accepted: str
) -> None:
    target = tmp_path / "bad.yaml"
    options = InitOptions(name="bad", namespace="demo", **{field: "builtin://gsm8k"})  # type: ignore[arg-type]
    with pytest.raises(CliError) as refused:
        write_init(options, {}, output=target, force=False, out=io.StringIO())
    assert refused.value.code == 2
    assert refused.value.message == f"{flag}: 'builtin://gsm8k' is not a built-in input"
    assert refused.value.hint == f"accepted: {accepted}"
    assert not target.exists()
