"""``Client``: runs through the API server, typed, with exceptions instead of exit codes.

from loka_client import Client
client = Client(namespace="team-a")             # the kubeconfig's current context, as kubectl
run = client.submit(Path("qwen-math.yaml"))     # server-side apply; returns the typed run
for change in client.watch(run.name):           # the run now, then each change, until it ends
    print(change.run.phase, change.run.status.progress)
client.wait(run.name)                           # the final run; RunFailedError if it failed
"""

from __future__ import annotations

import builtins
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loka_api import RunPhase, TrainingRun, kinds
from loka_api.phases import TERMINAL
from loka_client import ray
from loka_client.checkpoints import DownloadedCheckpoint, RunStorage
from loka_client.connection import Connection
from loka_client.cycles import Cycles
from loka_client.errors import InvalidRunError, NotFoundError
from loka_client.evaluations import Evaluations
from loka_client.portforward import PortForward
from loka_client.queue import QueueStanding, queue_standing
from loka_client.resources import JSON
from loka_client.runs import Run, RunChange, Runs, wire_manifest
from loka_client.storage import upload_files

if TYPE_CHECKING:
    from loka_api.checkpoints import Checkpoint


class Client:
    """TrainingRuns of one cluster (the kubeconfig's, as kubectl picks it) and their checkpoints.

    ``namespace`` is where names are looked up unless a call names another: the one given, else the kube
    context's, else ``default``. Every method raises a ``loka_client.errors.LokaError`` on failure.
    """

    def __init__(
        self,
        namespace: str | None = None,
        *,
        kubeconfig: str | Path | None = None,
        context: str | None = None,
        api_client: Any = None,
        s3_settings: Mapping[str, str] | None = None,
        s3_endpoint: str | None = None,
    ) -> None:
        """``s3_settings``: the AWS variables to reach S3 with (a ``.env`` file's; default: this process's
        environment); ``s3_endpoint`` wins over their ``AWS_ENDPOINT_URL`` and the run's ``storage.endpoint``.
        """
        self.storage = RunStorage(os.environ if s3_settings is None else s3_settings, s3_endpoint)
        self.connection = Connection(
            kubeconfig=None if kubeconfig is None else str(kubeconfig),
            context=context,
            namespace=namespace,
            api_client=api_client,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self.connection.close()

    @property
    def namespace(self) -> str:
        """Where names are looked up unless a call names another namespace."""
        return self.connection.namespace

    @property
    def api(self) -> Any:
        """The ``kubernetes.client.ApiClient`` this client talks through (connected on first use)."""
        return self.connection.api

    @property
    def runs(self) -> Runs:
        """The cluster's TrainingRuns as any of Loka's kinds (get, list, submit, watch, wait, delete): what this
        client's own run methods stand on."""
        return Runs(self.connection)

    @property
    def evaluations(self) -> Evaluations:
        """The cluster's Evaluations (LLM judges over a run's rollouts): get, list, submit, wait, delete."""
        return Evaluations(self.connection)

    @property
    def cycles(self) -> Cycles:
        """The cluster's RewardCycles (RL, Evaluation, reward model, next RL): get, list, submit, wait, delete."""
        return Cycles(self.connection)

    def _ns(self, namespace: str | None) -> str:
        return namespace or self.connection.namespace

    # ------------------------------------------------------------------------------ reading

    def get(self, name: str, namespace: str | None = None) -> Run:
        """The run now. Raises RunNotFoundError when there is none of that name."""
        return self.runs.get(name, namespace)

    def list(self, namespace: str | None = None, *, all_namespaces: bool = False) -> builtins.list[Run]:
        """The runs of the namespace (or of every namespace), sorted by namespace and name."""
        return self.runs.list(namespace, all_namespaces=all_namespaces)

    # ------------------------------------------------------------------------------ writing

    def submit(
        self,
        run: TrainingRun | Mapping[str, Any] | Path,
        namespace: str | None = None,
        *,
        dry_run: bool = False,
        force_conflicts: bool = False,
    ) -> Run:
        """Create or update the run by server-side apply (field manager ``loka``), as ``kubectl apply
        --server-side`` would. ``run`` is a typed run, a manifest, or a YAML file holding one. It is checked
        against the models first: InvalidRunError names the field, the value and what is wrong; nothing is sent.
        ``dry_run``: the API server validates it (schema and CEL rules) and stores nothing.
        """
        given = wire_manifest(run) if isinstance(run, TrainingRun) else run
        return self.runs.submit(given, namespace, dry_run=dry_run, force_conflicts=force_conflicts)

    def apply(self, manifest: JSON, *, dry_run: bool = False, force_conflicts: bool = False) -> Run:
        """Server-side apply of a manifest already checked (``submit`` checks it)."""
        return self.runs.apply(manifest, dry_run=dry_run, force_conflicts=force_conflicts)

    def suspend(self, name: str, namespace: str | None = None) -> Run:
        """Suspend the run: its Ray cluster is released, its checkpoints stay; ``resume`` continues from the last.
        A run already suspended is left as it is. InvalidRunError for a run that ended.
        """
        return self._set_suspend(name, self._ns(namespace), suspend=True)

    def resume(self, name: str, namespace: str | None = None) -> Run:
        """Resume a suspended run (from its last checkpoint). A run not suspended is left as it is."""
        return self._set_suspend(name, self._ns(namespace), suspend=False)

    def _set_suspend(self, name: str, ns: str, *, suspend: bool) -> Run:
        run = self.get(name, ns)
        if run.status.phase in TERMINAL:
            verb = "suspended" if suspend else "resumed"
            raise InvalidRunError(
                f"{name} is {run.status.phase}: a finished run cannot be {verb}", field="spec.suspend", value=suspend
            )
        if run.spec.suspend == suspend:
            return run
        return self.runs.patch(name, ns, {"spec": {"suspend": suspend}})

    def delete(self, name: str, namespace: str | None = None, *, wait: bool = True, timeout: float = 120) -> None:
        """Delete the run; its RayJob and Ray cluster go with it, its checkpoints stay in S3. With ``wait``, return
        once it is gone (WaitTimeoutError when a finalizer holds it longer than ``timeout`` seconds).
        """
        self.runs.delete(name, namespace, wait=wait, timeout=timeout)

    # ------------------------------------------------------------------------------ following

    def watch(
        self, name: str, namespace: str | None = None, *, timeout: float | None = None, until_finished: bool = True
    ) -> Iterator[RunChange]:
        """The run now, then each change of it (phase, progress, metrics, checkpoint, message, spec...), as the API
        server's watch delivers them (reconnecting as needed). Ends after the change that finished the run (with
        ``until_finished``) or once ``timeout`` seconds passed. RunNotFoundError if the run is deleted meanwhile.
        """
        previous: Run | None = None
        for run in self.runs.watch(name, namespace, timeout=timeout, until_finished=until_finished):
            yield RunChange.between(previous, run)
            previous = run

    def wait(
        self,
        name: str,
        namespace: str | None = None,
        *,
        until: Iterable[RunPhase | str] = (),
        timeout: float | None = None,
    ) -> Run:
        """Follow the run until it succeeded (or reached a phase of ``until``); returns it then.

        Raises RunFailedError when it failed (unless Failed is in ``until``), WaitTimeoutError after ``timeout``
        seconds (the run keeps going), RunNotFoundError when it is deleted meanwhile.
        """
        return self.runs.wait(name, namespace, until={RunPhase(p) for p in until}, timeout=timeout)

    # ------------------------------------------------------------------------------ checkpoints

    def checkpoints(self, name: str, namespace: str | None = None) -> builtins.list[Checkpoint]:
        """The run's complete checkpoints in S3, oldest first (``latest``: the one its marker names).
        CheckpointNotFoundError when the run keeps none, StorageError when S3 cannot be read.
        """
        return self.storage.checkpoints(self.get(name, namespace))

    def download(self, name: str, step: int, target: str | Path, namespace: str | None = None) -> DownloadedCheckpoint:
        """Download checkpoint ``step`` of the run into ``target/global_step_<step>``, every file verified against
        the manifest; the folder appears only once all matched (CheckpointMismatchError otherwise, and nothing is
        left). CheckpointNotFoundError when that step is not complete.
        """
        return self.storage.download(self.get(name, namespace), step, Path(target))

    def upload(self, paths: Sequence[str | Path], destination: str) -> builtins.list[str]:
        """Upload files (a dataset's train and validation parquet) under an ``s3://bucket/prefix/``, all or
        nothing; returns their URIs. StorageError when S3 refuses or cannot be reached.
        """
        settings, endpoint = self.storage.settings, self.storage.endpoint
        return upload_files([Path(p) for p in paths], destination, settings=settings, endpoint=endpoint)

    # ------------------------------------------------------------------------------ Kueue

    def queue_standing(self, run: Run) -> QueueStanding | None:
        """Where a Queued run stands in its LocalQueue (position and Kueue's reason); None when it is not queued."""
        return queue_standing(self, run)

    # ------------------------------------------------------------------------------ its Ray cluster

    def logs(
        self,
        name: str,
        namespace: str | None = None,
        *,
        follow: bool = False,
        attempt: int | None = None,
        notice: Callable[[str], None] | None = None,
    ) -> Iterator[str]:
        """The trainer's output (the Ray job's log, read on the head pod through a port-forward), as text chunks;
        with ``follow``, until the job ends. LogsNotFoundError when there is no log to read, RayJobFailedError
        after the last chunk of a followed job that failed (``loka_client.ray``).
        """
        return ray.logs(self.connection, self._ns(namespace), name, follow=follow, attempt=attempt, notice=notice)

    def dashboard(
        self, name: str, namespace: str | None = None, *, local_port: int = 0, address: str = "127.0.0.1"
    ) -> PortForward:
        """The run's Ray dashboard on a local port (``.url``), open until ``close()`` (a context manager)."""
        return ray.dashboard(self.connection, self._ns(namespace), name, local_port=local_port, address=address)

    # ------------------------------------------------------------------------------ children

    def get_child(self, kind: kinds.Kind, name: str, namespace: str | None = None) -> JSON | None:
        """One object of a run's (a RayJob, a RayCluster, a Workload), or None when it is not there."""
        ns = self._ns(namespace)
        try:
            found: JSON = self.connection.call(
                f"reading {kind.kind} {ns}/{name}",
                self.connection.custom.get_namespaced_custom_object,
                kind.group,
                kind.version,
                ns,
                kind.plural,
                name,
            )
        except NotFoundError:
            return None
        return found

    def list_children(
        self, kind: kinds.Kind, namespace: str | None = None, *, label_selector: str = ""
    ) -> builtins.list[JSON]:
        ns = self._ns(namespace)
        answer = self.connection.call(
            f"listing {kind.plural} in {ns!r}",
            self.connection.custom.list_namespaced_custom_object,
            kind.group,
            kind.version,
            ns,
            kind.plural,
            label_selector=label_selector,
        )
        items: builtins.list[JSON] = answer.get("items", [])
        return items
