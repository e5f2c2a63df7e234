"""spec.environment's shared rules: which hosts a URL may name, and the ${VAR} grammar."""

from __future__ import annotations

import pytest

from loka_api import TrainingRunSpec
from loka_api.environments import (
    EnvironmentSpec,
    allowed_host_patterns,
    host_allowed,
    server_url,
    substitute,
    variables_in,
)


@pytest.mark.parametrize(
    ("url", "patterns", "allowed"),
    [
        ("http://env.envs.svc:8765/mcp", ["*.envs.svc"], True),
        ("http://env.envs.svc.evil.com/mcp", ["*.envs.svc"], False),
        ("http://127.0.0.1:8765/mcp", ["127.0.0.1:8765"], True),
        ("http://127.0.0.1:9999/mcp", ["127.0.0.1:8765"], False),
        ("http://169.254.169.254/latest", ["*.envs.svc", "127.0.0.1"], False),
        ("file:///etc/passwd", ["*"], False),
        ("http://ENV.Envs.SVC/mcp", ["*.envs.svc"], True),
    ],
)
def test_hosts(url: str, patterns: list[str], allowed: bool) -> None:
    assert host_allowed(url, patterns) is allowed


def test_variables_substitute_only_when_declared() -> None:
    text = "Bearer ${KEY} ${MODE:fast} $OTHER"
    assert variables_in(text) == ["KEY", "MODE", "OTHER"]
    assert substitute(text, {"KEY": "k", "OTHER": "o"}) == "Bearer k fast o"
    with pytest.raises(KeyError, match=r"\$\{OTHER\} is not one of environment.secretVariables \(KEY, MODE\)"):
        substitute(text, {"KEY": "k", "OTHER": "o"}, allowed=["KEY", "MODE"])
    with pytest.raises(KeyError, match=r"\$\{KEY\} is not set"):
        substitute("${KEY}", {})


def test_image_servers_are_reached_at_their_service_and_their_hosts_are_allowed() -> None:
    environment = EnvironmentSpec.model_validate(
        {"servers": [{"name": "game", "run": {"image": "org/game:1", "port": 9000}},
                     {"name": "web", "url": "https://mcp.example.com/mcp"}],
         "allowedHosts": ["*.envs.svc"]}
    )  # fmt: skip
    assert server_url(environment.servers[0], run="r1", namespace="team") == "http://r1-env-game.team.svc:9000/mcp"
    patterns = allowed_host_patterns(environment, run="r1", namespace="team")
    assert patterns == ["*.envs.svc", "r1-env-game.team.svc:9000", "mcp.example.com"]


def test_environment_is_part_of_the_runs_shape() -> None:
    from loka_api import RUN_SHAPING_FIELDS

    assert "environment" in RUN_SHAPING_FIELDS
    assert TrainingRunSpec.model_fields["environment"].default is None
