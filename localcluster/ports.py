"""Every port the local control plane and the stack on it bind, which process holds one, and which block a test
session can use.

The block moves by ``LOKA_CLUSTER_PORT_OFFSET`` (0, 100, ... 900). A test session picks a free block itself when
the default one is held by processes this checkout did not start (`settle_session_block`, called by
tests/conftest.py before it imports the control plane): a control plane left running by an earlier checkout that
was removed without `make cluster-down` (a CI job killed at its time limit) otherwise fails every cluster test
with "port taken".

Imports nothing of localcluster that reads the block: it has to be settled before `localcluster.controlplane` reads it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from localcluster.procfs import stat_fields
from loka_client.localhost import port_free

LOCALHOST = "127.0.0.1"
OFFSET_ENV = "LOKA_CLUSTER_PORT_OFFSET"
OFFSETS = tuple(range(0, 1000, 100))
# /proc/net/tcp states that hold a port against a new listener (SO_REUSEADDR lets one bind over the rest).
_HOLDING_STATES = {"01", "02", "03", "04", "05", "08", "09", "0A", "0B"}  # all but TIME_WAIT (06) and CLOSE (07)


@dataclass(frozen=True)
class Ports:
    """Every port the control plane and the stack bind, in one block away from the usual defaults and below the
    kernel's ephemeral range (32768-60999 on Linux), where any client connection may hold a port for as long as
    it stays open: a watch on the API server for minutes."""

    etcd_client: int = 22379
    etcd_peer: int = 22380
    apiserver: int = 26443
    controller_manager: int = 20257
    scheduler: int = 20259
    kwok: int = 20247
    kuberay_metrics: int = 28080
    kuberay_probe: int = 28082
    kueue_probe: int = 28081
    kueue_metrics: int = 28443
    kueue_webhook: int = 29443
    minio: int = 29000
    minio_console: int = 29001
    # KubeRay reaches Ray dashboards through this HTTP proxy. Nothing listens here unless the
    # demo or an e2e test starts its dashboard router, which forwards to a real local Ray.
    dashboard_router: int = 28265
    # The stack's (localcluster.stack) Ray head and operator. Away from Ray's defaults (agent 52365, client 10001,
    # workers 10002-19999), which any other Ray started on this machine takes too: a clash leaves the head without
    # a job agent, and every submission fails with 500.
    ray_dashboard: int = 8265
    ray_gcs: int = 26379
    ray_agent: int = 26365
    ray_client: int = 26366
    ray_first_worker: int = 26400
    ray_last_worker: int = 26439  # below the API server's port
    operator_health: int = 28090
    operator_metrics: int = 28091

    @classmethod
    def at(cls, offset: int) -> Ports:
        return cls(**{name: port + offset for name, port in dataclasses.asdict(cls()).items()})

    @classmethod
    def from_env(cls) -> Ports:
        """The block, shifted by ``LOKA_CLUSTER_PORT_OFFSET``: a second checkout can run its own control plane
        beside the first (give it its own LOKA_CLUSTER_DIR too)."""
        return cls.at(offset_from_env())

    def every_port(self) -> list[int]:
        """Each port the block binds, the Ray workers' range spelled out."""
        singles = [port for name, port in dataclasses.asdict(self).items() if not name.endswith("_worker")]
        return sorted({*singles, *range(self.ray_first_worker, self.ray_last_worker + 1)})


def offset_from_env() -> int:
    raw = os.environ.get(OFFSET_ENV, "0") or "0"
    try:
        offset = int(raw)
    except ValueError:
        offset = -1
    if offset not in OFFSETS:
        raise ValueError(f"{OFFSET_ENV}={raw!r}: expected one of 0, 100, 200, ... 900")
    return offset


def taken(ports: Iterable[int]) -> list[int]:
    return [port for port in ports if not port_free(LOCALHOST, port)]


def holders(ports: Iterable[int]) -> dict[int, list[tuple[int, str]]]:
    """Which processes hold each of ``ports`` on this machine: (pid, command line), from /proc. A port held by a
    process this user cannot look into, or by none (a socket being torn down), maps to an empty list."""
    wanted = set(ports)
    inodes: dict[str, int] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            port = int(fields[1].rsplit(":", 1)[1], 16)
            if port in wanted and fields[3] in _HOLDING_STATES and fields[9] != "0":
                inodes[f"socket:[{fields[9]}]"] = port
    found: dict[int, list[tuple[int, str]]] = {port: [] for port in wanted}
    if not inodes:
        return found
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        matched = {inodes[link] for link in _fd_links(proc) if link in inodes}
        if not matched:
            continue
        try:
            cmdline = " ".join((proc / "cmdline").read_bytes().decode(errors="replace").replace("\0", " ").split())
        except OSError:  # gone since
            continue
        for port in matched:
            found[port].append((int(proc.name), cmdline[:160]))
    return found


def _fd_links(proc: Path) -> set[str]:
    """What each of a process's open files is (``socket:[inode]`` for a socket); none for one not ours to read."""
    links: set[str] = set()
    try:
        fds = list((proc / "fd").iterdir())
    except OSError:
        return links
    for fd in fds:
        with contextlib.suppress(OSError):  # closed since the listing (the listing's own, for one)
            links.add(str(fd.readlink()))
    return links


def descends_from(pid: int, ancestors: set[int]) -> bool:
    """``pid`` is one of ``ancestors`` or their child, grandchild, ... (Ray's head holds its ports in children)."""
    while pid > 1:
        if pid in ancestors:
            return True
        try:
            pid = int(stat_fields(pid)[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


def recorded_pids(*folders: Path) -> set[int]:
    """The PIDs in each folder's ``pids/*.pid`` files (the control plane's and the stack's records)."""
    pids: set[int] = set()
    for folder in folders:
        for pidfile in (folder / "pids").glob("*.pid"):
            try:
                pids.add(int(pidfile.read_text().split()[0]))
            except (OSError, ValueError, IndexError):
                continue
    return pids


def describe(held: dict[int, list[tuple[int, str]]]) -> str:
    parts = []
    for port in sorted(held):
        who = ", ".join(f"pid {pid} ({cmd})" for pid, cmd in held[port]) or "a process this user cannot see"
        parts.append(f"{port} by {who}")
    return "; ".join(parts)


def session_offset(own: set[int], offsets: Sequence[int] = OFFSETS) -> tuple[int, str]:
    """The block a test session should use (the first of ``offsets`` unless foreign processes hold one of its
    ports), and why when it is not the first. ``own``: the PIDs this checkout recorded, whose ports (their
    children's included) are its own to reuse. An offset set in the environment is always kept."""
    if os.environ.get(OFFSET_ENV):
        return offset_from_env(), ""
    first = offsets[0]
    busy = taken(Ports.at(first).every_port())
    if not busy:
        return first, ""
    held = holders(busy)
    foreign = {
        port: procs for port, procs in held.items() if not procs or not all(descends_from(pid, own) for pid, _ in procs)
    }
    if not foreign:
        return first, ""  # this checkout's own cluster or stack: the session reuses it
    shown = dict(sorted(foreign.items())[:3])
    for offset in offsets[1:]:
        if not taken(Ports.at(offset).every_port()):
            return offset, (
                f"the default port block is held by processes this checkout did not start ({describe(shown)}); "
                f"this session runs its own control plane on {OFFSET_ENV}={offset}"
            )
    return first, f"every port block is in use ({describe(shown)} in the default one); the cluster cannot start"


def settle_session_block() -> str:
    """Before anything reads the block (``localcluster.controlplane`` does on import), choose the one a test
    session uses and put it in the environment, where the session's processes find it too. Says why when it is
    not the default one."""
    root = Path(__file__).resolve().parents[1]
    cluster_dir = Path(os.environ.get("LOKA_CLUSTER_DIR", root / ".cluster"))
    offset, why = session_offset(recorded_pids(cluster_dir, root / ".demo"))
    if offset:
        os.environ[OFFSET_ENV] = str(offset)
    return why
