"""Build the control plane's Go components from their published modules into a cache.

Each component lands in ``$LOKA_CACHE/bin/<name>-<version>-<goversion>/`` with a
``.complete`` stamp written last, so an interrupted build is redone and a finished
one is skipped. Nothing here is committed; the cache lives outside the repository.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from localcluster.versions import Component, cache_root, load_versions

STAMP = ".complete"


@dataclass(frozen=True)
class GoEnv:
    """The Go toolchain environment every build and module lookup runs with."""

    root: Path

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            GOTOOLCHAIN="local",  # a module wanting a newer Go fails fast instead of downloading one
            GOWORK="off",
            GOFLAGS="-mod=mod",
            CGO_ENABLED="0",
            GOMODCACHE=str(self.root / "go" / "mod"),
            GOCACHE=str(self.root / "go" / "build"),
            GOPATH=str(self.root / "go" / "path"),
        )
        return env

    def version(self) -> str:
        return run_capture(["go", "env", "GOVERSION"], env=self.env).strip()

    def module_dir(self, module: str, version: str) -> Path:
        """Download (or find) a module in the module cache and return its source folder."""
        out = run_capture(["go", "mod", "download", "-json", f"{module}@{version}"], env=self.env)
        return Path(json.loads(out)["Dir"])

    def module_gomod(self, module: str, version: str) -> Path:
        out = run_capture(["go", "mod", "download", "-json", f"{module}@{version}"], env=self.env)
        return Path(json.loads(out)["GoMod"])


def run_capture(cmd: list[str], *, env: dict[str, str], cwd: Path | None = None) -> str:
    return subprocess.run(cmd, env=env, cwd=cwd, check=True, capture_output=True, text=True).stdout


def bin_dir(component: Component, go: GoEnv, go_version: str | None = None) -> Path:
    return go.root / "bin" / f"{component.name}-{component.version}-{go_version or go.version()}"


def is_built(component: Component, go: GoEnv, go_version: str | None = None) -> bool:
    return (bin_dir(component, go, go_version) / STAMP).exists()


class BuildError(RuntimeError):
    pass


def _run_logged(cmd: list[str], *, env: dict[str, str], cwd: Path, log: Path) -> None:
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise BuildError(f"`{' '.join(cmd[:3])} …` failed (exit {proc.returncode}); log {log}:\n{tail}")


def _wrapper_module(src: Path, name: str, go: GoEnv, log: Path) -> None:
    """A fresh module that depends on the component (so its replace lines cannot break the build)."""
    if src.exists():
        shutil.rmtree(src)
    src.mkdir(parents=True)
    _run_logged(["go", "mod", "init", f"loka.harness/{name}"], env=go.env, cwd=src, log=log)


def build_kubernetes(c: Component, go: GoEnv, out: Path, src: Path, log: Path) -> None:
    """kube-apiserver, kube-controller-manager, kube-scheduler.

    k8s.io/kubernetes requires its staging modules at v0.0.0 through ``replace => ./staging``,
    which a dependent module cannot use, so the wrapper replaces each staging module (read
    from the go.mod the proxy serves) with its published v0.X.Y tag.
    """
    _wrapper_module(src, "kubernetes", go, log)
    gomod = go.module_gomod(c.module, c.version).read_text()
    staging_version = "v0." + c.version.removeprefix("v1.")
    staging = re.findall(r"^\s*(k8s\.io/\S+)\s+=>\s+\./staging/", gomod, flags=re.M)
    if not staging:
        raise BuildError(f"no staging replaces found in {c.module}@{c.version} go.mod")
    edits = [f"-replace={m}={m}@{staging_version}" for m in staging]
    go_line = re.search(r"^go (\S+)", gomod, flags=re.M)
    if go_line:
        edits.append(f"-go={go_line.group(1)}")
    for godebug in re.findall(r"^godebug (\S+)", gomod, flags=re.M):
        edits.append(f"-godebug={godebug}")
    _run_logged(["go", "mod", "edit", *edits], env=go.env, cwd=src, log=log)
    cmds = [f"{c.module}/cmd/{b}" for b in ("kube-apiserver", "kube-controller-manager", "kube-scheduler")]
    _run_logged(["go", "get", *(f"{p}@{c.version}" for p in cmds)], env=go.env, cwd=src, log=log)
    major, minor = c.version.removeprefix("v").split(".")[:2]
    v = "k8s.io/component-base/version"
    ldflags = (
        f"-s -w -X {v}.gitVersion={c.version} -X {v}.gitMajor={major} -X {v}.gitMinor={minor}"
        f" -X {v}.gitTreeState=clean -X {v}.buildDate=2026-01-01T00:00:00Z"
    )
    _run_logged(["go", "build", "-trimpath", "-ldflags", ldflags, "-o", f"{out}/", *cmds], env=go.env, cwd=src, log=log)


def build_etcd(c: Component, go: GoEnv, out: Path, src: Path, log: Path) -> None:
    """etcd's server module carries replace lines, so `go install` refuses it; build via a wrapper."""
    _wrapper_module(src, "etcd", go, log)
    _run_logged(["go", "get", f"{c.module}@{c.version}"], env=go.env, cwd=src, log=log)
    _run_logged(
        ["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(out / "etcd"), c.module],
        env=go.env,
        cwd=src,
        log=log,
    )


def _in_module(binary: str, package: str = ".") -> Callable[[Component, GoEnv, Path, Path, Path], None]:
    """Build a published module as the main module, from its folder in the module cache.

    Equivalent to `go install module/package@version`, which the proxy breaks for some
    modules: it also fetches the module's version list for deprecation notices, and the
    proxy refuses that list (403) for KubeRay and Kueue.
    """

    def build(c: Component, go: GoEnv, out: Path, src: Path, log: Path) -> None:
        module_dir = go.module_dir(c.module, c.version)
        _run_logged(
            ["go", "build", "-mod=readonly", "-trimpath", "-ldflags", "-s -w", "-o", str(out / binary), package],
            env=go.env,
            cwd=module_dir,
            log=log,
        )

    return build


BUILDERS: dict[str, Callable[[Component, GoEnv, Path, Path, Path], None]] = {
    "etcd": build_etcd,
    "kubernetes": build_kubernetes,
    "kwok": _in_module("kwok", "./cmd/kwok"),
    "kuberay": _in_module("ray-operator"),
    "kueue": _in_module("kueue", "./cmd/kueue"),
    "minio": _in_module("minio"),
    "s5cmd": _in_module("s5cmd"),
}


@contextlib.contextmanager
def _build_lock(root: Path) -> Iterator[None]:
    """One builder at a time: `make test` and `make cluster-up` may race on a cold cache."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / "build.lock").open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def build_all(only: list[str] | None = None, *, echo: Callable[[str], None] = print) -> dict[str, float]:
    """Build every missing component; return seconds spent on each one built."""
    go = GoEnv(cache_root())
    go_version = go.version()
    versions = load_versions()
    # The control plane by default; a tool (s5cmd, for bench/checkpoint_upload.py) only when named.
    known = versions.go_components() + (versions.go_tools() if only else [])
    components = [c for c in known if not only or c.name in only]
    timings: dict[str, float] = {}
    with _build_lock(go.root):
        missing = [c for c in components if not is_built(c, go, go_version)]
        if missing:
            echo(
                f"building {', '.join(c.name for c in missing)} with {go_version} into {go.root}/bin "
                "(cold builds take 20-50 minutes on 2 cores; later runs reuse the cache)"
            )
        failures: list[str] = []
        for c in missing:
            out = bin_dir(c, go, go_version)
            if out.exists():
                shutil.rmtree(out)
            out.mkdir(parents=True)
            log = go.root / "logs" / f"build-{c.name}-{c.version}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text("")
            echo(f"  {c.name} {c.version} … (log: {log})")
            started = time.monotonic()
            try:
                BUILDERS[c.name](c, go, out, go.root / "src" / f"{c.name}-{c.version}", log)
            except (BuildError, subprocess.CalledProcessError) as err:
                # Keep building the others: one bad pin should not hide the state of the rest.
                failures.append(f"{c.name} {c.version}: {err}")
                echo(f"  {c.name} {c.version} FAILED after {time.monotonic() - started:.0f}s")
                continue
            timings[c.name] = time.monotonic() - started
            (out / STAMP).write_text(f"{c.module}@{c.version} {go_version} {timings[c.name]:.0f}s\n")
            echo(f"  {c.name} {c.version} built in {timings[c.name]:.0f}s")
    if failures:
        raise BuildError("\n".join(failures))
    return timings


def main(argv: list[str]) -> int:
    try:
        timings = build_all(argv or None)
    except BuildError as err:
        print(f"build failed: {err}", file=sys.stderr)
        return 1
    if timings:
        print(f"built {len(timings)} component(s) in {sum(timings.values()):.0f}s")
    else:
        print("all components already built")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
