"""The pinned versions of the local control plane (`versions.toml`), read once."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

VERSIONS_FILE = Path(__file__).with_name("versions.toml")
GO_COMPONENTS = ("etcd", "kubernetes", "kwok", "kuberay", "kueue", "minio")
# Built only when asked for by name (`build_all(["s5cmd"])`): tools of the benchmarks, not of the control plane.
GO_TOOLS = ("s5cmd",)


@dataclass(frozen=True)
class Component:
    name: str
    module: str
    version: str


@dataclass(frozen=True)
class Versions:
    components: dict[str, Component]
    kubectl: str

    def go_components(self) -> list[Component]:
        return [self.components[name] for name in GO_COMPONENTS]

    def go_tools(self) -> list[Component]:
        return [self.components[name] for name in GO_TOOLS]

    def __getitem__(self, name: str) -> Component:
        return self.components[name]


@cache
def load_versions() -> Versions:
    raw = tomllib.loads(VERSIONS_FILE.read_text())
    names = (*GO_COMPONENTS, *GO_TOOLS)
    components = {name: Component(name, raw[name]["module"], raw[name]["version"]) for name in names}
    return Versions(components=components, kubectl=raw["kubectl"]["version"])


def cache_root() -> Path:
    return Path(os.environ.get("LOKA_CACHE", Path.home() / ".cache" / "loka")).expanduser()
