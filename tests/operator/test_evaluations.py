"""An Evaluation on the real control plane: it waits for its source run's rollouts, then runs as a Job that Kueue
admits, with an identity of its own; the real evaluator, holding only that identity, judges the rollouts in MinIO
with two judges on a local OpenAI-API server, and the Evaluation reports the figures; deleting it deletes its Job.

KWOK runs the pod (a Job's pod succeeds at once), so the evaluator runs here, in-process, as that pod would.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from localcluster.controlplane import S3_BUCKET, LocalCluster
from localcluster.judge_server import JudgeServer
from localcluster.operator_process import OperatorProcess
from loka_api import kinds, kueue
from loka_api.contract import ENV_EVALUATION_NAME, ENV_EVALUATION_NAMESPACE, judge_api_key_env, rollout_file
from loka_api.storage import ObjectStore, S3Uri
from loka_cli.main import main
from loka_operator import naming
from loka_trainer.evaluate import evaluate_from_environment
from tests.operator.conftest import drive_rayjob, eventually, run_manifest, wait_phase
from tests.operator.kube import Kube

EVALUATIONS = kinds.EVALUATION
GROUPS, PER_GROUP = 2, 4


@pytest.fixture
def store(cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ObjectStore, S3Uri]]:
    """MinIO as the evaluator pod sees it (credentials in the environment), and a prefix emptied afterwards."""
    for key, value in cluster.env.items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)
    objects = ObjectStore(endpoint_url=cluster.s3_endpoint)
    prefix = S3Uri(S3_BUCKET, f"tests/evaluations-{uuid.uuid4().hex[:8]}")
    yield objects, prefix
    objects.delete_prefix(prefix)


def write_rollouts(objects: ObjectStore, folder: S3Uri, step: int) -> int:
    """One step's kept rollouts as a run writes them: GROUPS prompts, PER_GROUP answers each."""
    lines = []
    for group in range(GROUPS):
        prompt = [{"role": "user", "content": f"What is {group} + {step}?"}]
        for sample in range(PER_GROUP):
            answer = str(group + step) * (sample + 1) + " words" * sample
            lines.append(
                {
                    "id": f"{step}-{group}-{sample}",
                    "step": step,
                    "group": group,
                    "messages": [*prompt, {"role": "assistant", "content": answer}],
                    "score": 1.0,
                    "components": {},
                }
            )
    objects.put_bytes(folder.join(rollout_file(step)), "".join(json.dumps(line) + "\n" for line in lines).encode())
    return len(lines)


def evaluation_manifest(
    name: str, ns: str, *, source: str, output: str, judge: str, cq: str, storage: dict[str, str]
) -> dict[str, Any]:
    return {
        "apiVersion": EVALUATIONS.api_version,
        "kind": EVALUATIONS.kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "image": "ghcr.io/acme/loka:rl-train",
            "rollouts": {"fromRun": source, "steps": "all"},
            "judges": [
                {"name": "digits", "endpoint": judge, "model": "digits", "apiKey": {"secret": "judge", "key": "key"}},
                {"name": "length", "endpoint": judge, "model": "length", "maxConcurrency": 2},
            ],
            "preferences": {"minMargin": 0.05},
            "output": {"uri": output},
            "storage": storage,
            "queue": {"name": "team-a", "clusterQueue": cq},
            "resources": {"cpu": "500m", "memory": "512Mi"},
        },
    }


def evaluation(kube: Kube, ns: str, name: str) -> dict[str, Any]:
    return kube.get(*EVALUATIONS.gvr, ns, name) or {}


def token_kubeconfig(cluster: LocalCluster, kube: Kube, ns: str, account: str, folder: Path) -> Path:
    """A kubeconfig holding a token of ``account`` (TokenRequest): what the evaluator pod would mount."""
    token = kube.core.create_namespaced_service_account_token(
        account, ns, {"spec": {"expirationSeconds": 600}}
    ).status.token
    server = yaml.safe_load(cluster.kubeconfig.read_text())["clusters"][0]["cluster"]
    path = folder / "evaluator.kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "local", "cluster": server}],
                "users": [{"name": account, "user": {"token": token}}],
                "contexts": [{"name": account, "context": {"cluster": "local", "user": account, "namespace": ns}}],
                "current-context": account,
            }
        )
    )
    return path


def loka(capsys: pytest.CaptureFixture[str], cluster: LocalCluster, ns: str, *args: str) -> tuple[int, str]:
    """`loka ARGS -n <ns>` in-process, as tests/operator/test_cli.py runs it: (exit code, stdout)."""
    code = main([*args, "--kubeconfig", str(cluster.kubeconfig), "-n", ns])
    return code, capsys.readouterr().out


def create_secrets(kube: Kube, ns: str) -> None:
    """The storage credentials and the judge's API key the Evaluation names (their values matter to nobody here)."""
    for secret, data in (
        ("loka-s3", {"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}),
        ("judge", {"key": "sk-1"}),
    ):
        encoded = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
        kube.core.create_namespaced_secret(ns, {"metadata": {"name": secret}, "data": encoded})


def assert_job_of_its_own(kube: Kube, ns: str, rollouts: str) -> None:
    """The evaluator's Job: owned by the Evaluation, queued, its own identity, the judge's key only by reference."""
    job = eventually(lambda: next(iter(kube.batch.list_namespaced_job(ns).items), None), what="the evaluator's Job")
    body = evaluation(kube, ns, "ev")
    assert body["status"]["rolloutsURI"] == rollouts
    assert job.metadata.owner_references[0].uid == body["metadata"]["uid"]
    assert job.metadata.labels[naming.KUEUE_QUEUE_LABEL] == "team-a"
    pod = job.spec.template.spec
    assert pod.service_account_name == naming.evaluator_account_name("ev")
    keys = {e.name: e for e in pod.containers[0].env}
    assert keys[judge_api_key_env("digits")].value_from.secret_key_ref.name == "judge"
    assert judge_api_key_env("length") not in keys


def assert_figures(status: dict[str, Any], samples: int, output: str) -> None:
    """What the evaluator reported: every sample judged by both judges, their rates, agreement, tokens, pairs."""
    assert status["samples"] == status["samplesJudged"] == samples and status["steps"] == [1, 2]
    assert {j["name"]: j["parseRate"] for j in status["judges"]} == {"digits": 1.0, "length": 1.0}
    assert all(j["errorRate"] == 0.0 for j in status["judges"])
    assert status["tokens"] > 0 and 0.0 <= status["agreement"] <= 1.0 and status["preferences"] > 0
    assert status["preferencesURI"] == f"{output}/preferences.jsonl"
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions.items() >= {"RolloutsReady": "True", "SecretsReady": "True", "Succeeded": "True"}.items()


@pytest.mark.usefixtures("operator")
def test_an_evaluation_waits_for_rollouts_runs_as_an_admitted_job_and_reports_the_judges_figures(  # noqa: PLR0917
    cluster: LocalCluster,
    kube: Kube,
    ns: str,
    gpu_queue: str,
    store: tuple[ObjectStore, S3Uri],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    objects, prefix = store
    storage = {"endpoint": cluster.s3_endpoint, "credentialsSecret": "loka-s3"}
    create_secrets(kube, ns)
    kube.create_run(run_manifest("grpo", ns, rollouts={"every": 1}, storage=storage))
    source = eventually(lambda: kube.run(ns, "grpo"), what="the source run")

    with JudgeServer() as judge:
        output = str(prefix.join("eval"))
        manifest = evaluation_manifest(
            "ev", ns, source="grpo", output=output, judge=judge.url, cq=gpu_queue, storage=storage
        )
        (tmp_path / "ev.yaml").write_text(yaml.safe_dump(manifest))
        assert loka(capsys, cluster, ns, "eval", "submit", "-f", str(tmp_path / "ev.yaml"))[0] == 0

        # The reward model's run, chained by the resources alone: it waits for the Evaluation's pairs.
        rm = run_manifest("rm", ns, algorithm="rm", engine="trl", storage=storage, data={"fromEvaluation": "ev"})
        kube.create_run(rm)

        # Waiting for the run, saying so; no Job before the rollouts exist.
        # (The operator may see the Evaluation before the run: it waits for the run to exist first.)
        waiting = eventually(
            lambda: "to succeed" in ((s := evaluation(kube, ns, "ev").get("status") or {}).get("message") or "") and s,
            what="the Evaluation to wait for its source",
        )
        assert waiting["phase"] == "Pending" and "waiting for run 'grpo' to succeed" in waiting["message"]
        assert kube.batch.list_namespaced_job(ns).items == []
        rm_waits = wait_phase(kube, ns, "rm", "Pending")
        assert "waiting for Evaluation 'ev' to succeed" in rm_waits["message"], rm_waits
        assert kube.rayjob(ns, "rm") is None

        # The run keeps two steps of rollouts under its uid and succeeds.
        folder = prefix.join("rollouts", source["metadata"]["uid"])
        samples = write_rollouts(objects, folder, 1) + write_rollouts(objects, folder, 2)
        kube.patch_run_status(ns, "grpo", {"rollouts": {"uri": str(folder), "step": 2}})
        eventually(lambda: kube.rayjob(ns, "grpo"), what="the source run's RayJob")
        drive_rayjob(kube, ns, "grpo", "Complete", "SUCCEEDED")
        wait_phase(kube, ns, "grpo", "Succeeded")

        # The Job: owned by the Evaluation, in the queue, run by the evaluator's own identity.
        assert_job_of_its_own(kube, ns, str(folder))
        # The evaluator, as the pod runs it: its token, its Evaluation's name, MinIO and the judge's key.
        kubeconfig = token_kubeconfig(cluster, kube, ns, naming.evaluator_account_name("ev"), tmp_path)
        with pytest.MonkeyPatch.context() as env:
            env.setenv(ENV_EVALUATION_NAME, "ev")
            env.setenv(ENV_EVALUATION_NAMESPACE, ns)
            env.setenv(judge_api_key_env("digits"), "sk-1")
            assert evaluate_from_environment(kubeconfig=str(kubeconfig)) == 0
        asked = judge.log.requests

    # Kueue admitted the Job, KWOK ran its pod to completion, and the figures are the evaluator's.
    status = eventually(
        lambda: (
            (s := evaluation(kube, ns, "ev").get("status") or {}).get("phase") == "Succeeded"
            and s.get("samplesJudged") is not None
            and s
        ),
        timeout=90,
        what="the Evaluation to succeed with its figures",
    )
    assert asked == 2 * samples
    assert_figures(status, samples, output)
    # The reward model's run launches on the Evaluation's pairs, which status.trainData records for its trainer.
    eventually(lambda: kube.rayjob(ns, "rm"), timeout=60, what="the rm run to launch once the Evaluation succeeded")
    assert kube.status(ns, "rm")["trainData"] == {
        "evaluation": "ev",
        "uid": evaluation(kube, ns, "ev")["metadata"]["uid"],
        "uri": status["preferencesURI"],
    }

    code, described = loka(capsys, cluster, ns, "eval", "wait", "ev")
    assert code == 0 and f"{samples} of {samples} judged" in described and "digits" in described
    code, listed = loka(capsys, cluster, ns, "eval", "status")
    assert listed.splitlines()[1].split()[:4] == ["ev", "Succeeded", "grpo", str(samples)]
    header, row = cluster.kubectl("get", "evaluations", "-n", ns, "-o", "wide").stdout.splitlines()[:2]
    assert " ".join(header.split()) == "NAME PHASE RUN SAMPLES AGREEMENT PAIRS AGE TOKENS OUTPUT"
    assert row.split()[:4] == ["ev", "Succeeded", "grpo", str(samples)]

    # Deleting the Evaluation deletes its Job and its identity (garbage collection, by ownerReferences).
    kube.custom.delete_namespaced_custom_object(EVALUATIONS.group, EVALUATIONS.version, ns, EVALUATIONS.plural, "ev")
    eventually(lambda: not kube.batch.list_namespaced_job(ns).items, timeout=60, what="the Job to be deleted")
    account = naming.evaluator_account_name("ev")
    eventually(lambda: not kube.exists(*kinds.SERVICE_ACCOUNT.gvr, ns, account), timeout=60, what="the identity gone")


@pytest.fixture
def cpu_less_queue(kube: Kube) -> Iterator[str]:
    """A Kueue ClusterQueue with no CPU quota: it admits nothing that asks for a CPU; returns its name."""
    name = f"lokaev-cq-{uuid.uuid4().hex[:6]}"
    flavor = f"{name}-flavor"
    kube.create_cluster_object(kinds.RESOURCE_FLAVOR, {"metadata": {"name": flavor}})
    resources = [{"name": "cpu", "nominalQuota": "0"}, {"name": "memory", "nominalQuota": "1Ti"}]
    group = {"coveredResources": ["cpu", "memory"], "flavors": [{"name": flavor, "resources": resources}]}
    kube.create_cluster_object(
        kinds.CLUSTER_QUEUE, {"metadata": {"name": name}, "spec": {"namespaceSelector": {}, "resourceGroups": [group]}}
    )
    yield name
    kube.delete_cluster_object(kinds.CLUSTER_QUEUE, name)
    kube.delete_cluster_object(kinds.RESOURCE_FLAVOR, flavor)


def test_a_queued_evaluation_says_why_in_kueues_words_posts_each_phase_and_is_counted(
    operator: OperatorProcess, cluster: LocalCluster, kube: Kube, ns: str, cpu_less_queue: str
) -> None:
    storage = {"endpoint": cluster.s3_endpoint, "credentialsSecret": "loka-s3"}
    create_secrets(kube, ns)
    kube.create_run(run_manifest("grpo", ns, rollouts={"every": 1}, storage=storage))
    eventually(lambda: kube.run(ns, "grpo"), what="the source run")
    manifest = evaluation_manifest(
        "ev", ns, source="grpo", output="s3://loka/evals/ev", judge="http://judge:8000/v1", cq=cpu_less_queue,
        storage=storage,
    )  # fmt: skip
    manifest["spec"]["rollouts"]["steps"] = "1"
    kube.custom.create_namespaced_custom_object(
        EVALUATIONS.group, EVALUATIONS.version, ns, EVALUATIONS.plural, manifest
    )

    def wait_evaluation(phase: str) -> dict[str, Any]:
        found: dict[str, Any] = eventually(
            lambda: (s := evaluation(kube, ns, "ev").get("status") or {}).get("phase") == phase and s,
            what=f"the Evaluation to be {phase}",
        )
        return found

    wait_evaluation("Pending")
    # Its rollouts are kept: the Job is made, and Kueue has no CPU to admit it.
    kube.patch_run_status(ns, "grpo", {"rollouts": {"uri": "s3://loka/tests/ev-rollouts", "step": 1}})
    wait_evaluation("Queued")
    (workload,) = eventually(
        lambda: (
            (found := kube.workloads(ns)) and all(kueue.QUOTA_RESERVED in kueue.conditions(w) for w in found) and found
        ),
        what="Kueue's Workload for the evaluator's Job, with its word on quota (QuotaReserved)",
    )
    said = kueue.conditions(workload)[kueue.QUOTA_RESERVED]
    eventually(
        lambda: (
            (evaluation(kube, ns, "ev").get("status") or {}).get("message") == f"waiting for Kueue: {said['message']}"
        ),
        what="the Evaluation to say why in Kueue's words",
    )
    queued = evaluation(kube, ns, "ev")["status"]
    admitted = next(c for c in queued["conditions"] if c["type"] == "Admitted")
    assert (admitted["status"], admitted["reason"]) == ("False", said["reason"])
    assert "insufficient" in said["message"], said

    # Each phase it entered is an Event on the Evaluation, once; and the operator counts it by phase.
    events = eventually(
        lambda: (e := kube.events(ns, "ev", kind="Evaluation")) and len(e) >= 2 and e, what="the Evaluation's Events"
    )
    assert sorted(e.reason for e in events) == ["Pending", "Queued"]
    queued_now = re.search(r'^loka_evaluations\{phase="Queued"\} ([0-9.]+)$', operator.metrics(), re.M)
    assert queued_now is not None and float(queued_now.group(1)) >= 1
