"""The subset of docker/metadata-action's tag rules that Loka's workflow uses, ported from its
src/tag.ts and src/meta.ts (v5/v6), plus the GitHub expressions the workflow puts in `enable=`.

It lets a test say which tags a push to main or a version tag would publish, without GitHub.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SEMVER = re.compile(
    r"^v?(?P<major>0|[1-9]\d*)\.(?P<minor>0|[1-9]\d*)\.(?P<patch>0|[1-9]\d*)(?:-(?P<pre>[0-9A-Za-z.-]+))?$"
)
DEFAULT_BRANCH = "main"


@dataclass(frozen=True)
class Push:
    event_name: str
    ref: str
    sha: str = "abc1234def5678"

    @property
    def ref_name(self) -> str:
        return (
            self.ref.rsplit("/", 1)[-1] if self.ref.startswith("refs/tags/") else self.ref.removeprefix("refs/heads/")
        )


def github_expression(expression: str, push: Push) -> object:
    """Evaluate the few GitHub expression forms the workflow uses (!, &&, ||, ==, startsWith, contains)."""
    python = expression.replace("github.ref_name", repr(push.ref_name)).replace("github.ref", repr(push.ref))
    python = python.replace("github.event_name", repr(push.event_name))
    python = python.replace("&&", " and ").replace("||", " or ")
    python = re.sub(r"!(?!=)", " not ", python)
    python = python.replace("startsWith(", "_starts(").replace("contains(", "_contains(")
    names = {"_starts": lambda a, b: a.startswith(b), "_contains": lambda a, b: b in a, "__builtins__": {}}
    return eval(python, names)


def interpolate(text: str, push: Push) -> str:
    def one(match: re.Match[str]) -> str:
        value = github_expression(match.group(1), push)
        return str(value).lower() if isinstance(value, bool) else str(value)

    return re.sub(r"\$\{\{(.*?)\}\}", one, text)


def _handlebars(template: str, push: Push, version: dict[str, str] | None = None) -> str:
    is_default = "true" if push.ref == f"refs/heads/{DEFAULT_BRANCH}" else "false"
    values = {"is_default_branch": is_default, **(version or {})}
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: values[m.group(1)], template)


def _parse(line: str) -> tuple[str, dict[str, str]]:
    attrs: dict[str, str] = {}
    kind = "raw"
    for field in line.split(","):
        key, _, value = field.partition("=")
        if key.strip() == "type":
            kind = value.strip()
        else:
            attrs[key.strip().lower()] = value.strip()
    if kind == "sha":
        attrs.setdefault("prefix", "sha-")  # tag.ts: a sha tag's own default prefix, which hides the flavor's
    attrs.setdefault("enable", "true")
    return kind, attrs


def tags(tag_lines: str, flavor_lines: str, push: Push) -> set[str]:
    """The tags metadata-action would compute for one image."""
    flavor = dict(line.split("=", 1) for line in interpolate(flavor_lines, push).split())
    assert flavor.get("latest") == "false", "the model covers latest=false only"
    prefix = flavor.get("prefix", "")
    out: set[str] = set()
    for line in interpolate(tag_lines, push).splitlines():
        if not line.strip():
            continue
        kind, attrs = _parse(line)
        if _handlebars(attrs["enable"], push) != "true":
            continue
        value = _value(kind, attrs, push)
        if value is None:
            continue
        out.add(attrs.get("prefix", prefix) + value)
    return out


def _value(kind: str, attrs: dict[str, str], push: Push) -> str | None:
    if kind == "raw":
        return _handlebars(attrs["value"], push)
    if kind == "sha":
        return push.sha[:7]
    if kind == "ref" and attrs["event"] == "branch":
        return push.ref.removeprefix("refs/heads/") if push.ref.startswith("refs/heads/") else None
    if kind == "semver":
        if not push.ref.startswith("refs/tags/"):
            return None
        found = SEMVER.match(push.ref.removeprefix("refs/tags/"))
        if found is None:
            return None
        parts = {k: v for k, v in found.groupdict().items() if v is not None}
        version = f"{parts['major']}.{parts['minor']}.{parts['patch']}"
        if "pre" in parts:
            # meta.ts: a pre-release renders only {{version}}, whatever the pattern.
            return f"{version}-{parts['pre']}"
        return _handlebars(attrs["pattern"], push, {**parts, "version": version})
    msg = f"tag type {kind} is not in the model"
    raise ValueError(msg)
