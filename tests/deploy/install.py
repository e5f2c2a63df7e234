"""Install the chart into the local control plane the way `helm template | kubectl apply --server-side` does."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.chart import CHART, render

FIELD_MANAGER = "loka-deploy-tests"
Manifest = dict[str, Any]


@dataclass(frozen=True)
class Install:
    cluster: Any
    release: str
    namespace: str
    service_account: str

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"

    def as_operator(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """kubectl as the chart's ServiceAccount (impersonated by the admin)."""
        done: subprocess.CompletedProcess[str] = self.cluster.kubectl(
            f"--as={self.user}", *args, input=input, check=False
        )
        return done

    def api(self) -> Any:
        """A kubernetes ApiClient that makes direct API calls (no read-before-patch) as the ServiceAccount."""
        client = self.cluster.api_client()
        client.set_default_header("Impersonate-User", self.user)
        return client

    def can(self, verb: str, resource: str, namespace: str | None = None, *extra: str) -> bool:
        args = ["auth", "can-i", verb, resource, *extra]
        args += ["--all-namespaces"] if namespace is None else ["-n", namespace]
        answer = self.as_operator(*args)
        return answer.stdout.strip() == "yes"


def apply(cluster: Any, manifests: list[Manifest], *, dry_run: bool = False) -> subprocess.CompletedProcess[str]:
    args = ["apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}", "-f", "-"]
    if dry_run:
        args.append("--dry-run=server")
    done: subprocess.CompletedProcess[str] = cluster.kubectl(*args, input=yaml.safe_dump_all(manifests), check=False)
    return done


def ensure_crd(cluster: Any) -> None:
    """The chart's CRD, applied for real (cluster-scoped and shared) and waited for."""
    crd = yaml.safe_load((CHART / "crds" / "trainingruns.loka.dev.yaml").read_text())
    done = apply(cluster, [crd])
    assert done.returncode == 0, done.stderr
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd/trainingruns.loka.dev")


@contextmanager
def installed_chart(cluster: Any, namespace: str, sets: dict[str, str] | None = None) -> Iterator[Install]:
    """The chart's templates applied in `namespace`; its cluster-scoped objects removed afterwards."""
    ensure_crd(cluster)
    release = f"loka-{uuid.uuid4().hex[:6]}"
    rendered = render(release=release, namespace=namespace, sets=sets)
    done = apply(cluster, rendered.manifests)
    assert done.returncode == 0, done.stderr
    (sa,) = rendered.of_kind("ServiceAccount")
    try:
        yield Install(cluster, release, namespace, sa["metadata"]["name"])
    finally:
        for kind in ("ClusterRoleBinding", "ClusterRole"):
            for obj in rendered.of_kind(kind):
                cluster.kubectl("delete", kind.lower(), obj["metadata"]["name"], "--ignore-not-found", check=False)


def get_json(cluster: Any, *args: str) -> Manifest:
    done = cluster.kubectl("get", *args, "-o", "json")
    loaded: Manifest = json.loads(done.stdout)
    return loaded


def service_account_kubeconfig(install: Install, path: Path) -> Path:
    """A kubeconfig that authenticates as the chart's ServiceAccount with a short-lived token."""
    token = install.cluster.kubectl(
        "create", "token", install.service_account, "-n", install.namespace, "--duration=2h"
    ).stdout.strip()
    return write_kubeconfig(install, path, {"token": token})


def bound_token(install: Install, secret: str) -> str:
    """A token of the chart's ServiceAccount (TokenRequest) that stops working the moment `secret` is deleted."""
    done = install.cluster.kubectl(
        "create", "token", install.service_account, "-n", install.namespace, "--duration=1h",
        "--bound-object-kind=Secret", f"--bound-object-name={secret}",
    )  # fmt: skip
    token: str = done.stdout.strip()
    return token


def write_kubeconfig(install: Install, path: Path, user: dict[str, Any]) -> Path:
    """A kubeconfig for the local cluster whose user entry is `user` (token, tokenFile, exec, ...)."""
    admin = yaml.safe_load(install.cluster.kubeconfig.read_text())
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": admin["clusters"],
        "users": [{"name": install.service_account, "user": user}],
        "contexts": [
            {"name": "chart", "context": {"cluster": admin["clusters"][0]["name"], "user": install.service_account}}
        ],
        "current-context": "chart",
    }
    # Replaced in one step: a reader never sees half a file.
    staged = path.with_suffix(".new")
    staged.write_text(yaml.safe_dump(config))
    staged.chmod(0o600)
    staged.replace(path)
    return path
