"""The demo stack (Ray head, dashboard router, operator, pod shim) for end-to-end tests."""

from __future__ import annotations

import uuid
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from localcluster.controlplane import LocalCluster
from localcluster.demo import prepare_namespace, upload_tiny_assets
from localcluster.stack import DemoStack

# After this many end-to-end tests failed, the rest fail at once: each waits up to ten minutes on runs that a broken
# stack never moves, which would spend CI's whole time limit on one cause (the reports above say which).
FAILURES_BEFORE_GIVING_UP = 2
_failed: list[str] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if Path(str(item.fspath)).parent == Path(__file__).parent:
            item.add_marker(pytest.mark.e2e)


# The two hooks below take an item: pytest calls a conftest's such hooks for the items under its folder only.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed and item.nodeid not in _failed:
        _failed.append(item.nodeid)
    return report


def pytest_runtest_setup(item: pytest.Item) -> None:
    if len(_failed) >= FAILURES_BEFORE_GIVING_UP:
        pytest.fail(f"not run: {len(_failed)} end-to-end tests failed before it ({', '.join(_failed)}); see above")


@pytest.fixture(scope="session")
def stack(cluster: LocalCluster) -> Iterator[DemoStack]:
    """The demo's stack: reused when `make demo` left it running, else started here and stopped after."""
    demo = DemoStack(cluster)
    started = not demo.is_up()
    demo.up()
    upload_tiny_assets(cluster, demo.layout.root, prefix="e2e")
    yield demo
    if started:
        demo.down()


@pytest.fixture
def e2e_namespace(cluster: LocalCluster, stack: DemoStack, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace the demo operator watches (lokae2e-*), with S3 credentials and its own ClusterQueue."""
    name = f"lokae2e-{uuid.uuid4().hex[:6]}"
    # 4 CPUs: room for exactly one e2e run (head 1 + worker 2), so a second one must queue or preempt.
    prepare_namespace(cluster, name, cluster_queue=name, cpu=4)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)
    cluster.kubectl("delete", "clusterqueue", name, "--wait=false", check=False)
