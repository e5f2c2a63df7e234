"""`examples/notebook.ipynb`, executed cell by cell by nbclient in a real IPython kernel against the local control
plane, as a user's workbench would run it: it submits a run through loka_client, shows its progress live, lists
and downloads a checkpoint, and starts a second run from the first one's result. So the example cannot rot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from localcluster.controlplane import S3_BUCKET, LocalCluster
from localcluster.stack import DemoStack

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "notebook.ipynb"


def outputs(notebook: object, kind: str) -> str:
    """Every ``stream`` text (kind "text") or every HTML display (kind "html") the executed notebook holds."""
    texts: list[str] = []
    for cell in notebook.cells:  # type: ignore[attr-defined]
        for output in cell.get("outputs", []):
            if kind == "text" and output.get("output_type") == "stream":
                texts.append(output["text"])
            elif kind == "html" and "text/html" in output.get("data", {}):
                texts.append(output["data"]["text/html"])
    return "\n".join(texts)


@pytest.mark.timeout(900)
def test_the_example_notebook_trains_follows_downloads_and_chains_runs(
    cluster: LocalCluster, stack: DemoStack, e2e_namespace: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import nbformat
    from nbclient import NotebookClient

    del stack  # the Ray head, the operator and the pod shim must be up: the runs really train
    # What a user's workbench has after `source .cluster/env`, and the e2e namespace in place of loka-demo.
    workbench = {**cluster.env, "LOKA_NAMESPACE": e2e_namespace, "LOKA_QUEUE": "e2e",
                 "LOKA_CLUSTER_QUEUE": e2e_namespace, "LOKA_CHECKPOINTS": f"s3://{S3_BUCKET}/checkpoints/"}  # fmt: skip
    for key, value in workbench.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(NOTEBOOK, as_version=4)  # type: ignore[no-untyped-call]
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # fmt: skip

    text, html = outputs(notebook, "text"), outputs(notebook, "html")
    # Live progress: the display ends on the finished run's bar, step and reward curve.
    assert "<b>notebook-grpo</b> Succeeded" in html and "<progress value='12' max='12'>" in html, html[-1000:]
    assert "notebook-grpo: Succeeded after 12 steps, reward" in text, text
    # Checkpoints every 6 steps, the final one downloaded and verified.
    assert "step   6" in text and "step  12" in text and "(latest)" in text, text
    assert "downloaded step 12:" in text and "files verified into" in text, text
    # The second run started from the first one's final checkpoint, as its status records it.
    assert "notebook-grpo-more started from run notebook-grpo, checkpoint step 12" in text, text
    second = json.loads(cluster.kubectl("-n", e2e_namespace, "get", "trainingrun", "notebook-grpo-more",
                                        "-o", "json").stdout)  # fmt: skip
    assert second["status"]["phase"] == "Succeeded"
    assert second["status"]["source"]["run"] == "notebook-grpo" and second["status"]["source"]["step"] == 12
