"""`loka secrets sync`: the Secrets a run refers to, created or updated from `.env` or the environment.

Values go from the environment straight into the API request; only key names are ever printed.
"""

from __future__ import annotations

import base64
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from loka_api.contract import ENV_HF_TOKEN, ENV_WANDB_KEY, STORAGE_SECRET_KEYS
from loka_cli.envfile import first
from loka_cli.errors import EXIT_OK, usage
from loka_cli.init import ENV_SLACK_WEBHOOK, HF_KEY, SLACK_KEY, WANDB_KEY
from loka_client import Client


@dataclass(frozen=True)
class SecretPlan:
    name: str
    data: dict[str, str]  # key in the Secret -> value (never printed)
    skipped: dict[str, str]  # key in the Secret -> the variable that was not set


def plan(env: Mapping[str, str], *, run_secret: str, s3_secret: str) -> list[SecretPlan]:
    wanted = {
        WANDB_KEY: (ENV_WANDB_KEY,),
        HF_KEY: (ENV_HF_TOKEN, "HUGGING_FACE_HUB_TOKEN"),
        SLACK_KEY: (ENV_SLACK_WEBHOOK,),
    }
    run_data = {key: value for key, names in wanted.items() if (value := first(env, *names))}
    run_skipped = {key: names[0] for key, names in wanted.items() if key not in run_data}
    s3_data = {key: value for key in STORAGE_SECRET_KEYS if (value := first(env, key))}
    s3_skipped = {key: key for key in STORAGE_SECRET_KEYS if key not in s3_data}
    return [SecretPlan(run_secret, run_data, run_skipped), SecretPlan(s3_secret, s3_data, s3_skipped)]


def _encoded(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def sync(client: Client, env: Mapping[str, str], *, run_secret: str, s3_secret: str, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    from kubernetes.client.exceptions import ApiException

    plans = plan(env, run_secret=run_secret, s3_secret=s3_secret)
    if not any(p.data for p in plans):
        names = sorted({v for p in plans for v in p.skipped.values()})
        raise usage(
            "nothing to sync: none of " + ", ".join(names) + " is set",
            "put them in .env (or pass --from FILE), then run `loka secrets sync` again",
        )
    cluster = client.connection
    core = cluster.core
    for secret in plans:
        if not secret.data:
            print(f"secret/{secret.name}: skipped (none of its variables is set)", file=out)
            continue
        what = f"writing Secret {cluster.namespace}/{secret.name}"
        try:
            existing: Any = core.read_namespaced_secret(secret.name, cluster.namespace)
        except ApiException as error:
            if error.status != 404:
                raise cluster.explain(error, what) from error
            existing = None
        except Exception as error:
            raise cluster.explain(error, what) from error
        wanted = {key: _encoded(value) for key, value in secret.data.items()}
        if existing is None:
            body = {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": "Opaque",
                "metadata": {"name": secret.name, "labels": {"app.kubernetes.io/managed-by": "loka-cli"}},
                "data": wanted,
            }
            cluster.call(what, core.create_namespaced_secret, cluster.namespace, body)
            verbs = dict.fromkeys(wanted, "added")
        else:
            current = existing.data or {}
            verbs = {key: "unchanged" if current.get(key) == value else ("updated" if key in current else "added")
                     for key, value in wanted.items()}  # fmt: skip
            changed = {key: value for key, value in wanted.items() if verbs[key] != "unchanged"}
            if changed:
                cluster.call(what, core.patch_namespaced_secret, secret.name, cluster.namespace, {"data": changed})
        keys = ", ".join(f"{key} ({verb})" for key, verb in verbs.items())
        print(f"secret/{secret.name}: {keys}", file=out)
        for key, variable in secret.skipped.items():
            print(f"secret/{secret.name}: {key} not set ({variable} is not in .env or the environment)", file=out)
    return EXIT_OK
