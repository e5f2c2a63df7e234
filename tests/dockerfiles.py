"""Reading Dockerfiles for tests that check an image without building it (no container engine here)."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    result = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keyword, _, rest = stripped.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


PACKAGE_FOLDERS = {"loka_api": "api/loka_api", "loka_operator": "operator/loka_operator",
                   "loka_trainer": "trainer-image/loka_trainer"}  # fmt: skip


def copied_packages(dockerfile: Path) -> set[str]:
    """The Loka Python packages whose folders the image COPYs."""
    sources = {src for kw, args in instructions(dockerfile) if kw == "COPY" for src in shlex.split(args)[:-1]}
    return {package for package, folder in PACKAGE_FOLDERS.items() if folder in sources}


def import_without(modules: list[str], missing: str) -> subprocess.CompletedProcess[str]:
    """Import ``modules`` in a fresh interpreter where the package ``missing`` cannot be imported at all,
    as in an image that does not carry it (the editable install would otherwise find it)."""
    code = f"import sys; sys.modules[{missing!r}] = None\n" + "".join(f"import {m}\n" for m in modules)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
