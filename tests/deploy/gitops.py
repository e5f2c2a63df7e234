"""Generate the ArgoCD configuration that carries Loka's health checks (TrainingRun, Evaluation, RewardCycle), from
each kind's health.lua.

``python -m tests.deploy.gitops`` rewrites gitops/argocd/argocd-cm-health.yaml and
gitops/openshift/argocd-resource-health.yaml; a test proves they hold health.lua unchanged.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from localcluster.tools import REPO, kubectl_path, load_manifests

GITOPS = REPO / "gitops"
OVERLAYS = sorted(p for p in (GITOPS / "overlays").iterdir() if (p / "kustomization.yaml").is_file())
HEALTH_CHECKS = GITOPS / "argocd" / "health" / "loka.dev"
HEALTH_LUA = HEALTH_CHECKS / "TrainingRun" / "health.lua"
# Every kind of Loka's with a health check, in the order the snippets list them.
CHECKED_KINDS = ("TrainingRun", "Evaluation", "RewardCycle")
ARGOCD_CM = GITOPS / "argocd" / "argocd-cm-health.yaml"
OPENSHIFT_ARGOCD = GITOPS / "openshift" / "argocd-resource-health.yaml"

# ArgoCD dropped Application health in 1.8; app-of-apps sync waves need it back to wait on child apps.
APPLICATION_HEALTH = """\
local hs = {status = "Progressing", message = ""}
if obj.status ~= nil and obj.status.health ~= nil then
  hs.status = obj.status.health.status
  if obj.status.health.message ~= nil then
    hs.message = obj.status.health.message
  end
end
return hs
"""


def kustomize(overlay: Path) -> list[dict[str, Any]]:
    done = subprocess.run([str(kubectl_path()), "kustomize", str(overlay)], capture_output=True, text=True, check=True)
    return load_manifests(done.stdout)


def _indent(text: str, spaces: int) -> str:
    pad = " " * spaces
    return "".join(pad + line if line.strip() else line for line in text.splitlines(keepends=True))


def health_scripts() -> dict[str, str]:
    """Each checked kind's health.lua, by kind."""
    return {kind: (HEALTH_CHECKS / kind / "health.lua").read_text() for kind in CHECKED_KINDS}


def argocd_cm(scripts: dict[str, str]) -> str:
    checks = "".join(
        f"  resource.customizations.health.loka.dev_{kind}: |\n{_indent(script, 4)}" for kind, script in scripts.items()
    )
    return f"""\
# Merge into argocd-cm (namespace argocd) on upstream ArgoCD: kubectl -n argocd patch cm argocd-cm --patch-file <this>
# Generated from gitops/argocd/health/loka.dev/<kind>/health.lua by `make gitops-health`.
apiVersion: v1
kind: ConfigMap
metadata:
  name: argocd-cm
  namespace: argocd
  labels:
    app.kubernetes.io/name: argocd-cm
    app.kubernetes.io/part-of: argocd
data:
{checks}  resource.customizations.health.argoproj.io_Application: |
{_indent(APPLICATION_HEALTH, 4)}"""


def openshift_argocd(scripts: dict[str, str]) -> str:
    checks = "".join(
        f"    - group: loka.dev\n      kind: {kind}\n      check: |\n{_indent(script, 8)}"
        for kind, script in scripts.items()
    )
    return f"""\
# OpenShift GitOps owns argocd-cm: merge this into the ArgoCD CR (openshift-gitops/openshift-gitops),
#   oc -n openshift-gitops patch argocd openshift-gitops --type merge --patch-file <this>
# A merge patch replaces the whole list: keep any resourceHealthChecks you already have in it.
# Generated from gitops/argocd/health/loka.dev/<kind>/health.lua by `make gitops-health`.
apiVersion: argoproj.io/v1beta1
kind: ArgoCD
metadata:
  name: openshift-gitops
  namespace: openshift-gitops
spec:
  resourceTrackingMethod: annotation
  resourceHealthChecks:
{checks}    - group: argoproj.io
      kind: Application
      check: |
{_indent(APPLICATION_HEALTH, 8)}"""


def write_health_snippets() -> list[Path]:
    scripts = health_scripts()
    ARGOCD_CM.write_text(argocd_cm(scripts))
    OPENSHIFT_ARGOCD.parent.mkdir(parents=True, exist_ok=True)
    OPENSHIFT_ARGOCD.write_text(openshift_argocd(scripts))
    return [ARGOCD_CM, OPENSHIFT_ARGOCD]


if __name__ == "__main__":
    for written in write_health_snippets():
        print(written.relative_to(REPO))
