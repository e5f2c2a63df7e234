"""`loka logs` and `loka dashboard`: what the client library reads from a run's Ray cluster, printed.

The client (``Client.logs``, ``Client.dashboard``: ``loka_client.ray``) reaches the head pod through the API
server's port-forward with the official ``kubernetes`` client's streaming; this module only prints and turns its
exceptions into exit codes.
"""

from __future__ import annotations

import sys
import threading
from typing import TextIO

from loka_cli.errors import EXIT_CLUSTER, EXIT_FAILED, EXIT_OK, CliError, not_found, usage
from loka_client import Client
from loka_client.errors import ClusterError, LokaError, NotFoundError
from loka_client.portforward import LocalPortError
from loka_client.ray import RayJobFailedError


def _notice(message: str) -> None:
    print(f"loka logs: {message}", file=sys.stderr, flush=True)


def _cli_error(error: LokaError) -> CliError:
    if isinstance(error, NotFoundError):
        return not_found(error.message, hint=error.hint)
    return CliError(error.message, hint=error.hint, code=EXIT_CLUSTER if isinstance(error, ClusterError) else 1)


def logs(client: Client, name: str, *, follow: bool, attempt: int | None, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        for chunk in client.logs(name, follow=follow, attempt=attempt, notice=_notice):
            out.write(chunk)
            out.flush()
    except RayJobFailedError:
        return EXIT_FAILED
    except LokaError as error:
        raise _cli_error(error) from error
    return EXIT_OK


def dashboard(client: Client, name: str, *, port: int, address: str, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        forward = client.dashboard(name, local_port=port, address=address)
    except LocalPortError as error:
        raise usage(f"--port: {address}:{port} is already in use on this machine",
                    "pass another one, e.g. --port 8266") from error  # fmt: skip
    except LokaError as error:
        raise _cli_error(error) from error
    try:
        print(f"Ray dashboard of {name}: {forward.url}   (pod/{forward.pod}; Ctrl-C to stop)", file=out, flush=True)
        threading.Event().wait()  # until Ctrl-C or SIGTERM
    finally:
        forward.close()
    return EXIT_OK
