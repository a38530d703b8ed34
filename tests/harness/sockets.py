"""Servers that misbehave at the socket level, for the agents' network-failure tests."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["Relay", "connect_proxy", "relay", "silent_server"]


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


@contextlib.contextmanager
def connect_proxy(*, refuse: str | None = None, hosts: dict[str, str] | None = None) -> Iterator[tuple[int, list[str]]]:
    """A loopback HTTP proxy that tunnels ``CONNECT host:port`` (what clients send for https URLs).

    Yields its port and the list of ``host:port`` targets it was asked for. With ``refuse`` (a
    status line such as ``"407 Proxy Authentication Required"``) it answers every CONNECT with it.
    ``hosts`` resolves names as the proxy sees them (a test name to 127.0.0.1).
    """
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    targets: list[str] = []
    stop = threading.Event()

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def tunnel(client: socket.socket) -> None:
        # a client that resets or sends garbage ends its tunnel quietly: an exception escaping a thread
        # would be printed with a traceback while the test session goes on
        with client, contextlib.suppress(OSError, ValueError):
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = client.recv(4096)
                if not chunk:
                    return
                head += chunk
            method, target = head.split(b" ", 2)[:2]
            if method != b"CONNECT":
                client.sendall(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                return
            targets.append(target.decode())
            if refuse is not None:
                client.sendall(f"HTTP/1.1 {refuse}\r\nContent-Length: 0\r\n\r\n".encode())
                return
            host, port = target.decode().rsplit(":", 1)
            with socket.create_connection(((hosts or {}).get(host, host), int(port))) as upstream:
                client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                back = threading.Thread(target=pipe, args=(upstream, client), daemon=True)
                back.start()
                pipe(client, upstream)
                back.join()

    def accept() -> None:
        while not stop.is_set():
            try:
                client = server.accept()[0]
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=tunnel, args=(client,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1], targets
    finally:
        stop.set()
        thread.join()
        server.close()


@dataclass
class Relay:
    """A TCP relay to a real server that can go quiet: :meth:`freeze` holds every byte either way
    (a hung server, a paused VM: the connections stay open and nothing answers), :meth:`thaw`
    delivers them."""

    port: int
    flowing: threading.Event = field(default_factory=threading.Event)
    #: set when a byte arrived while frozen: a client is waiting on the server now
    held: threading.Event = field(default_factory=threading.Event)

    def freeze(self) -> None:
        self.held.clear()
        self.flowing.clear()

    def thaw(self) -> None:
        self.flowing.set()


@contextlib.contextmanager
def relay(target_port: int) -> Iterator[Relay]:
    """A loopback port relayed to ``127.0.0.1:target_port`` (flowing until :meth:`Relay.freeze`)."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    state = Relay(server.getsockname()[1])
    state.flowing.set()
    stop = threading.Event()
    held: list[socket.socket] = []

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if not state.flowing.is_set():
                    state.held.set()
                    state.flowing.wait()
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def accept() -> None:
        while not stop.is_set():
            try:
                client = server.accept()[0]
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", target_port))
            held.extend((client, upstream))
            threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        stop.set()
        state.thaw()
        thread.join()
        for sock in held:
            with contextlib.suppress(OSError):
                sock.close()
        server.close()
