"""This machine's side of a port-forward: whether a local port is free to listen on."""

from __future__ import annotations

import socket


def port_free(address: str, port: int) -> bool:
    """No one listens on ``address:port``. SO_REUSEADDR, as servers set it: TIME_WAIT leftovers of a stopped
    listener don't count."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True
