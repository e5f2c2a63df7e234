"""Where the operator's API credentials come from, read again whenever the API server stops taking them.

Bound ServiceAccount tokens expire (about an hour where extension is off; the kubelet rewrites the projected
file before that), kubeconfigs may name a `tokenFile` or an exec plugin (EKS, GKE, OpenShift `oc login`), and a
token in a kubeconfig may simply be replaced. The official client library's loader understands all of these, so
it is asked first; kopf's minimal kubeconfig and service-account readers are the fallback. Every call reads the
sources again: nothing here is cached.
"""

from __future__ import annotations

import logging

import kopf

log = logging.getLogger(__name__)


def login() -> kopf.ConnectionInfo:
    """Fresh credentials: in-cluster service account or kubeconfig (token, tokenFile, exec plugin, certificates)."""
    settings = kopf.OperatorSettings()
    info: kopf.ConnectionInfo | None = None
    try:
        info = kopf.login_via_client(logger=log, settings=settings)
    except kopf.LoginError as error:
        log.debug("the client library found no credentials (%s); trying kubeconfig and service account", error)
    info = info or kopf.login_with_kubeconfig(settings=settings) or kopf.login_with_service_account(settings=settings)
    if info is None:
        raise kopf.LoginError("no kubeconfig (KUBECONFIG or ~/.kube/config) and no in-cluster service account")
    return info
