"""Servers that misbehave at the socket level, for the agents' network-failure tests."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

__all__ = ["silent_server"]


@contextlib.contextmanager
def silent_server() -> Iterator[int]:
    """A loopback port that accepts TCP connections and never sends a byte (a hung DC, a wedged IIS).

    Yields the port. Accepted sockets are held open until the ``with`` ends, so clients wait for
    their own timeouts instead of seeing a reset.
    """
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        for conn in held:
            conn.close()
        server.close()
