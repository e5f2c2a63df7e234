"""Faults made real on the local control plane: a TCP proxy that stalls, drops or resets; a frozen process; the
API server's audit log; a watch that expires.

The tests use them to show what the operator does when the network or the API server misbehaves, instead of
mocking a client:

- `FaultProxy` sits between one client (an operator replica) and the API server. TLS passes through untouched, so
  the client still verifies the API server's certificate. On command it passes bytes, stalls (accepts and never
  answers; what is held is delivered on `pass_()`, unless the client gave up on that connection first, as when a
  partition outlives the sender), drops (reads and discards everything, a black hole) or resets (RST on every open
  and every new connection).
- `frozen(pid)` stops a process with SIGSTOP and continues it with SIGCONT: a leader that neither renews nor dies.
- `AuditLog` reads the API server's audit log (`localcluster.controlplane` turns it on): who wrote what, when,
  and what the API server answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import os
import signal
import socket
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})


class Mode(enum.Enum):
    PASS = "pass"
    STALL = "stall"
    DROP = "drop"
    RESET = "reset"


@dataclass
class _Pipe:
    """One direction of one proxied connection."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    held: bytearray


class FaultProxy:
    """A TCP proxy to `upstream` on 127.0.0.1, run on its own thread; `mode` changes take effect at once."""

    def __init__(self, upstream_port: int, *, host: str = "127.0.0.1") -> None:
        self.host = host
        self.upstream_port = upstream_port
        self.port = 0
        self.mode = Mode.PASS
        self.connections = 0  # accepted so far
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._open: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._changed: asyncio.Event | None = None
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"fault-proxy->{upstream_port}", daemon=True
        )

    @property
    def server(self) -> str:
        return f"https://{self.host}:{self.port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=10)
        return self

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.close()

    # ----- commands -----------------------------------------------------------------------------

    def pass_(self) -> None:
        """Forward everything again, first what a stall held."""
        self._set(Mode.PASS)

    def stall(self) -> None:
        """Accept connections and bytes, answer nothing."""
        self._set(Mode.STALL)

    def drop(self) -> None:
        """Accept connections, read and throw away every byte in both directions."""
        self._set(Mode.DROP)

    def reset(self) -> None:
        """RST every open connection and every new one."""
        self._set(Mode.RESET)

    def _set(self, mode: Mode) -> None:
        asyncio.run_coroutine_threadsafe(self._switch(mode), self._loop).result(timeout=10)

    # ----- the proxy ----------------------------------------------------------------------------

    async def _listen(self) -> None:
        self._changed = asyncio.Event()
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _switch(self, mode: Mode) -> None:
        self.mode = mode
        assert self._changed is not None
        self._changed.set()
        self._changed = asyncio.Event()
        if mode is Mode.RESET:
            for client, upstream in list(self._open):
                _rst(client)
                _rst(upstream)
            self._open.clear()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for client, upstream in list(self._open):
            _rst(client)
            _rst(upstream)
        self._open.clear()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.mode is Mode.RESET:
            _rst(client_writer)
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(self.host, self.upstream_port)
        except OSError:
            _rst(client_writer)
            return
        pair = (client_writer, upstream_writer)
        self._open.add(pair)
        up = _Pipe(client_reader, upstream_writer, bytearray())
        down = _Pipe(upstream_reader, client_writer, bytearray())
        try:
            await asyncio.gather(self._pump(up), self._pump(down))
        finally:
            self._open.discard(pair)
            for writer in pair:
                with contextlib.suppress(Exception):
                    writer.close()

    async def _pump(self, pipe: _Pipe) -> None:
        """Copy one direction; on the sender's end of stream, close the other side (dropping what a stall held)."""
        reading: asyncio.Task[bytes] | None = None
        try:
            while True:
                if self.mode is Mode.PASS and pipe.held:
                    pipe.writer.write(bytes(pipe.held))
                    pipe.held.clear()
                    await pipe.writer.drain()
                if reading is None:
                    reading = asyncio.ensure_future(pipe.reader.read(65536))
                assert self._changed is not None
                changed = asyncio.ensure_future(self._changed.wait())
                await asyncio.wait({reading, changed}, return_when=asyncio.FIRST_COMPLETED)
                changed.cancel()
                if self.mode is Mode.RESET:
                    return
                if not reading.done():
                    continue  # the mode changed: flush what is held if it is PASS now
                chunk = reading.result()
                reading = None
                if not chunk:
                    if self.mode is Mode.PASS:
                        with contextlib.suppress(OSError):
                            pipe.writer.write_eof()
                        return
                    # The sender gave up while its bytes were held: they never arrive.
                    _rst(pipe.writer)
                    return
                if self.mode is Mode.PASS:
                    pipe.writer.write(chunk)
                    await pipe.writer.drain()
                elif self.mode is Mode.STALL:
                    pipe.held += chunk
                # DROP: the bytes vanish.
        except (ConnectionError, OSError):
            _rst(pipe.writer)
        finally:
            if reading is not None:
                reading.cancel()


def _rst(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset (SO_LINGER 0), not a FIN: the peer sees 'connection reset by peer'."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(Exception):
        writer.transport.abort()


@contextlib.contextmanager
def frozen(pid: int) -> Iterator[None]:
    """SIGSTOP the process for the block, SIGCONT it after: alive, holding its sockets, doing nothing."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)


@dataclass(frozen=True)
class AuditEvent:
    """One request the API server finished (stage ResponseComplete), as its audit log records it."""

    user: str
    verb: str
    resource: str  # plural, with `/subresource` when there is one
    namespace: str
    name: str
    code: int
    received: datetime  # requestReceivedTimestamp, the API server's clock
    user_agent: str

    @property
    def landed(self) -> bool:
        """The API server took the request (2xx): the write is in etcd."""
        return 200 <= self.code < 300

    def __str__(self) -> str:
        where = f"{self.namespace}/{self.name}" if self.namespace else self.name
        return f"{self.received.isoformat()} {self.user} {self.verb} {self.resource} {where} -> {self.code}"


class AuditLog:
    """The API server's JSON audit log; `events()` parses what it holds now."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def events(self, *, user: str | None = None, writes_only: bool = True) -> list[AuditEvent]:
        found: list[AuditEvent] = []
        if not self.path.exists():
            raise FileNotFoundError(f"{self.path}: the API server writes no audit log (restart the control plane)")
        for line in self.path.read_text(errors="replace").splitlines():
            try:
                raw: dict[str, Any] = json.loads(line)
            except ValueError:
                continue  # a line being written right now
            if raw.get("stage") != "ResponseComplete":
                continue
            event = _audit_event(raw)
            if (user is None or event.user == user) and (not writes_only or event.verb in WRITE_VERBS):
                found.append(event)
        return found


def _audit_event(raw: dict[str, Any]) -> AuditEvent:
    ref = raw.get("objectRef") or {}
    resource = str(ref.get("resource", ""))
    if ref.get("subresource"):
        resource += f"/{ref['subresource']}"
    return AuditEvent(
        user=str((raw.get("user") or {}).get("username", "")),
        verb=str(raw.get("verb", "")),
        resource=resource,
        namespace=str(ref.get("namespace", "")),
        name=str(ref.get("name", "")),
        code=int((raw.get("responseStatus") or {}).get("code", 0)),
        received=datetime.fromisoformat(str(raw["requestReceivedTimestamp"]).replace("Z", "+00:00")),
        user_agent=str(raw.get("userAgent", "")),
    )
