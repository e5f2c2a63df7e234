"""The Evaluation's Job: queued through Kueue, owned by its Evaluation, judges' keys only by secretKeyRef and
rubrics mounted where the evaluator reads them."""

from __future__ import annotations

import json

from loka_api.evaluation import Evaluation
from loka_operator.builders.evaluation import build_evaluation_job
from tests.unit.api.test_evaluation_kind import MANIFEST


def test_the_job_is_queued_owned_and_carries_keys_only_by_reference() -> None:
    spec = Evaluation.model_validate(
        {**MANIFEST, "spec": {**MANIFEST["spec"], "queue": {"name": "team-a"}, "storage": {"credentialsSecret": "s3"}}}
    ).spec
    job = build_evaluation_job(spec, name="eval-1", namespace="loka", uid="u-1", service_account="eval-1-evaluator")
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "team-a"
    assert job["spec"]["suspend"] is True
    assert job["metadata"]["ownerReferences"][0]["kind"] == "Evaluation"
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["command"] == ["loka-trainer", "evaluate"]
    env = {e["name"]: e for e in container["env"]}
    assert env["LOKA_JUDGE_API_KEY_STRICT"]["valueFrom"]["secretKeyRef"] == {"name": "judge", "key": "key"}
    assert "LOKA_JUDGE_API_KEY_LENIENT" not in env  # a judge without a key gets none
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "s3"
    assert all("value" not in e for e in container["env"] if e["name"].startswith(("LOKA_JUDGE", "AWS_SECRET")))
    (volume,) = pod["volumes"]
    assert volume["projected"]["sources"] == [
        {"configMap": {"name": "rubrics", "items": [{"key": "strict.md", "path": "strict"}]}}
    ]
    assert container["volumeMounts"][0]["mountPath"] == "/etc/loka/rubrics"
    assert pod["securityContext"]["runAsNonRoot"] is True
    json.dumps(job)
