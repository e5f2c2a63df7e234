"""Which port block a test session takes: a control plane left running by a checkout that is gone (a CI job killed
at its time limit) must not fail every cluster test of the next session with "port taken"."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from localcluster import ports
from localcluster.ports import OFFSET_ENV, Ports, descends_from, holders, session_offset

TRIAL_OFFSETS = (0, 100, 200)

LISTENER = """
import socket, sys
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen()
print(sock.getsockname()[1], flush=True)
sys.stdin.read()
"""


@pytest.fixture
def squatter(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """Another process listening on a port of the first trial block, stopped by its PID afterwards. Which ports
    of a block are taken is narrowed to that one: on a busy machine any port may be in use for a moment, and
    which process holds it is what these tests are about."""
    proc = subprocess.Popen([sys.executable, "-c", LISTENER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    port = int(proc.stdout.readline())
    first_block = set(Ports.at(TRIAL_OFFSETS[0]).every_port())
    monkeypatch.setattr(ports, "taken", lambda block: [port] if set(block) == first_block else [])
    yield proc, port
    proc.kill()
    proc.wait(timeout=10)


@pytest.fixture(autouse=True)
def no_offset_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(OFFSET_ENV, raising=False)


def test_a_block_held_by_a_process_this_checkout_did_not_start_moves_the_session_to_the_next(
    squatter: tuple[subprocess.Popen[str], int],
) -> None:
    proc, port = squatter
    offset, why = session_offset(own=set(), offsets=TRIAL_OFFSETS)
    assert offset == TRIAL_OFFSETS[1]
    assert f"{port} by pid {proc.pid}" in why, "the note names the port and who holds it"
    assert f"{OFFSET_ENV}={TRIAL_OFFSETS[1]}" in why


def test_a_block_held_by_this_checkouts_own_processes_is_kept_for_reuse(
    squatter: tuple[subprocess.Popen[str], int],
) -> None:
    proc, _ = squatter
    assert session_offset(own={proc.pid}, offsets=TRIAL_OFFSETS) == (TRIAL_OFFSETS[0], "")
    # Ray's head holds its ports in child processes: the recorded parent makes them this checkout's too.
    assert session_offset(own={os.getpid()}, offsets=TRIAL_OFFSETS) == (TRIAL_OFFSETS[0], "")


def test_an_offset_set_in_the_environment_is_kept_even_when_its_block_is_busy(
    squatter: tuple[subprocess.Popen[str], int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(OFFSET_ENV, "300")
    assert session_offset(own=set(), offsets=TRIAL_OFFSETS) == (300, "")
    monkeypatch.setenv(OFFSET_ENV, "150")
    with pytest.raises(ValueError, match="LOKA_CLUSTER_PORT_OFFSET='150': expected one of 0, 100"):
        session_offset(own=set(), offsets=TRIAL_OFFSETS)


def test_every_block_busy_keeps_the_first_and_says_the_cluster_cannot_start(
    squatter: tuple[subprocess.Popen[str], int], monkeypatch: pytest.MonkeyPatch
) -> None:
    _, port = squatter
    monkeypatch.setattr(ports, "taken", lambda block: [port])  # every block has the squatter's port taken
    offset, why = session_offset(own=set(), offsets=TRIAL_OFFSETS)
    assert offset == TRIAL_OFFSETS[0]
    assert "every port block is in use" in why and str(port) in why


def test_holders_and_ancestry_name_the_listening_process(squatter: tuple[subprocess.Popen[str], int]) -> None:
    proc, port = squatter
    assert [pid for pid, _ in holders([port])[port]] == [proc.pid]
    assert "-c" in holders([port])[port][0][1], "with its command line"
    assert descends_from(proc.pid, {os.getpid()}), "the squatter is this test's child"
    assert not descends_from(os.getpid(), {proc.pid})


def test_the_block_lists_each_port_once_with_the_ray_workers_spelled_out() -> None:
    block = Ports.at(100)
    every = block.every_port()
    assert len(every) == len(set(every))
    assert {block.apiserver, block.minio, block.ray_gcs, block.operator_metrics} <= set(every)
    assert set(range(block.ray_first_worker, block.ray_last_worker + 1)) <= set(every)
    assert block.apiserver == Ports().apiserver + 100
