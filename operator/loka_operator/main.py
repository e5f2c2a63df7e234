"""`loka-operator`: run the TrainingRun operator against the current kubeconfig (or in-cluster identity)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any
from urllib.parse import urlparse

import kopf
from aiohttp import web
from prometheus_client import start_http_server

import loka_operator.handlers  # noqa: F401  (registers the kopf handlers)
from loka_operator.config import ConfigError, LeaderElection, OperatorConfig
from loka_operator.credentials import login
from loka_operator.handlers import Shared
from loka_operator.kube import KubeClient
from loka_operator.leader import LeaseElector
from loka_operator.metrics import OperatorMetrics
from loka_operator.naming import LABEL_RUN

log = logging.getLogger(__name__)

ENV_POD_NAMESPACE = "POD_NAMESPACE"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="loka-operator", description=__doc__)
    parser.add_argument("-n", "--namespace", action="append", default=[], help="watch only this namespace (repeatable)")
    parser.add_argument("--liveness", default="http://0.0.0.0:8080/healthz", help="liveness endpoint URL")
    parser.add_argument("--metrics-port", type=int, default=9090, help="Prometheus metrics port (0: off)")
    parser.add_argument("--resync-seconds", type=float, default=600.0, help="interval of the pass over every run")
    parser.add_argument("--max-concurrent", type=int, default=16, help="reconciles running at once")
    parser.add_argument(
        "--workload-selector",
        default=LABEL_RUN,
        help=f"label selector for Kueue Workloads (default {LABEL_RUN}: Kueue's Configuration must copy it, "
        f"integrations.labelKeysToCopy: [{LABEL_RUN}]; '': every Workload in scope, the others ignored)",
    )
    parser.add_argument(
        "--leader-elect", action="store_true", help="compete for a Lease; only its holder runs (for replicas > 1)"
    )
    parser.add_argument("--leader-elect-lease", default="loka-operator", help="name of the Lease")
    parser.add_argument(
        "--leader-elect-namespace",
        default="",
        help=f"namespace of the Lease (default: ${ENV_POD_NAMESPACE}, the operator's own namespace)",
    )
    defaults = LeaderElection(namespace="")
    parser.add_argument(
        "--leader-elect-lease-duration",
        type=float,
        default=defaults.lease_seconds,
        help="seconds a standby waits after the leader's last renewal before it takes over",
    )
    parser.add_argument(
        "--leader-elect-renew-deadline",
        type=float,
        default=defaults.renew_deadline_seconds,
        help="seconds the leader keeps leading without a successful renewal (less than the lease duration)",
    )
    parser.add_argument(
        "--leader-elect-retry-period",
        type=float,
        default=defaults.retry_seconds,
        help="seconds between renewals (and between a standby's tries)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser.parse_args(argv)


def config_from(args: argparse.Namespace) -> OperatorConfig:
    election = None
    if args.leader_elect:
        namespace = args.leader_elect_namespace or os.environ.get(ENV_POD_NAMESPACE, "")
        if not namespace:
            raise ConfigError(
                f"--leader-elect needs the Lease's namespace: --leader-elect-namespace or ${ENV_POD_NAMESPACE}"
            )
        election = LeaderElection(
            namespace=namespace,
            name=args.leader_elect_lease,
            lease_seconds=args.leader_elect_lease_duration,
            renew_deadline_seconds=args.leader_elect_renew_deadline,
            retry_seconds=args.leader_elect_retry_period,
        )
        election.check()
    return OperatorConfig.from_env(
        namespaces=tuple(args.namespace),
        metrics_port=args.metrics_port,
        resync_seconds=args.resync_seconds,
        max_concurrent_reconciles=args.max_concurrent,
        workload_selector=args.workload_selector,
        leader_election=election,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = config_from(args)
    except ConfigError as error:
        print(f"loka-operator: {error}", file=sys.stderr)
        return 2
    kopf.configure(verbose=args.verbose)
    if not args.verbose:
        # One "Handler ... succeeded" line per watch event is noise at any scale; failures are still logged.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    with contextlib.suppress(asyncio.CancelledError):
        return asyncio.run(serve(config, args))
    return 0


async def serve(config: OperatorConfig, args: argparse.Namespace) -> int:
    """Stand by until elected (when leader election is on), then run kopf until stopped or the lead is lost."""
    metrics = OperatorMetrics()
    if config.metrics_port:
        start_http_server(config.metrics_port, registry=metrics.registry)
    count = lambda verb: metrics.api_requests.labels(verb=verb).inc()  # noqa: E731
    elector: LeaseElector | None = None
    lease_client: KubeClient | None = None
    if config.leader_election is not None:
        election = config.leader_election
        # The Lease's own client: its calls never wait behind reconciles, and time out well inside the deadline.
        lease_client = KubeClient(
            login(), relogin=login, timeout=election.renew_deadline_seconds / 2, max_connections=2, on_request=count
        )
        elector = LeaseElector(lease_client, election, on_lost=_exit_lost)
    client = KubeClient(
        login(), relogin=login, on_request=count, write_deadline=elector.write_deadline if elector else None
    )
    stop = asyncio.Event()
    memo = kopf.Memo(config=config, shared=Shared(client=client, metrics=metrics))
    holding: asyncio.Task[None] | None = None
    try:
        with _on_signals(stop.set):
            if elector is not None:
                async with _standby_liveness(args.liveness):
                    if not await elector.acquire(stop):
                        return 0
                holding = asyncio.create_task(elector.hold(stop), name="loka lease renewal")
            metrics.leader.set(1)
            # Created before kopf starts, so that kopf's shutdown (which cancels the tasks created while it ran)
            # leaves the hand-over alone.
            handing_over = asyncio.create_task(_step_down_when(stop, elector, holding, client, memo), name="loka stop")
            try:
                existing = asyncio.all_tasks()
                tasks = await kopf.spawn_tasks(
                    memo=memo,
                    standalone=True,
                    clusterwide=not config.namespaces,
                    namespaces=config.namespaces,
                    liveness_endpoint=args.liveness or None,
                    stop_flag=stop,
                )
                # kopf has put its own SIGTERM/SIGINT handlers in place: ours again, so that a signal steps down first.
                _handle_signals(stop.set)
                await kopf.run_tasks(tasks, ignored=existing)
            finally:
                stop.set()  # kopf ended on its own: step down all the same
                await handing_over
    finally:
        metrics.leader.set(0)
        stop.set()
        if holding is not None:
            holding.cancel()
        await client.close()
        if lease_client is not None:
            await lease_client.close()
    return 1 if elector is not None and elector.lost else 0


async def _step_down_when(
    stop: asyncio.Event, elector: LeaseElector | None, holding: asyncio.Task[None] | None, client: KubeClient, memo: Any
) -> None:
    """Once `stop` is set (SIGTERM, or kopf ended): write nothing new, cancel the reconciles in flight, let the
    writes already sent be answered, then release the Lease. The standby leads by its next try, and nothing of
    this process lands after it let go. kopf meanwhile stops its watches at its own pace."""
    await stop.wait()
    if elector is None or elector.lost:
        return
    log.info("stopping: handing the lead over")
    elector.step_down()
    state = getattr(memo, "loka", None)  # absent when stopped before kopf's startup handler ran
    if state is not None:
        await asyncio.gather(state.queue.drain(), state.evaluation_queue.drain())
    if holding is not None:
        with contextlib.suppress(asyncio.CancelledError):
            await holding  # the round in flight ends (the renewer sees `stop`); a release must come after it
    await client.writes_settled()
    await elector.release()


def _exit_lost() -> None:
    """The lead is lost: end the process now (client-go's OnStoppedLeading is fatal). Writes are fenced already, so
    nothing is left to do cleanly; the pod restarts and stands by."""
    logging.shutdown()
    os._exit(1)


def _handle_signals(handler: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, handler)


@contextlib.contextmanager
def _on_signals(handler: Callable[[], None]) -> Iterator[None]:
    """SIGTERM/SIGINT call `handler` (standing by, they end the wait; leading, they start the hand-over)."""
    _handle_signals(handler)
    try:
        yield
    finally:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)


@contextlib.asynccontextmanager
async def _standby_liveness(endpoint: str) -> AsyncIterator[None]:
    """A standby is alive while it waits: answer the liveness probe until kopf serves it."""
    if not endpoint:
        yield
        return
    url = urlparse(endpoint)

    async def alive(_: web.Request) -> web.Response:
        return web.json_response({"standby": True})

    app = web.Application()
    app.router.add_get(url.path or "/", alive)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, url.hostname, url.port or 80, reuse_address=True).start()
    try:
        yield
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    raise SystemExit(main())
