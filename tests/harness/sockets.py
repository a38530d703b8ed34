"""Servers that misbehave at the socket level, for the agents' network-failure tests."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator

__all__ = ["FaultyProxy", "connect_proxy", "faulty_proxy", "handing_to", "silent_server", "trickling_server"]


def _accepting(
    server: socket.socket, stop: threading.Event, handle: Callable[[socket.socket], None]
) -> threading.Thread:
    """Accept connections on ``server`` until ``stop`` is set, each handed to ``handle`` on a daemon
    thread of its own; the accepting thread, started (join it after setting ``stop``)."""
    server.settimeout(0.2)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn = server.accept()[0]
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    return thread


@contextlib.contextmanager
def _listening(server: socket.socket, stop: threading.Event, handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """``server``'s port while it hands each connection to ``handle`` (see :func:`_accepting`); at the
    end the accepting stops and ``server`` is closed."""
    thread = _accepting(server, stop, handle)
    try:
        yield server.getsockname()[1]
    finally:
        stop.set()
        thread.join()
        server.close()


def _request_head(conn: socket.socket) -> bytes | None:
    """An HTTP request's head (up to its blank line), or None when the client closed before it."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(4096)
        if not chunk:
            return None
        head += chunk
    return head


@contextlib.contextmanager
def handing_to(handle: Callable[[socket.socket], None]) -> Iterator[int]:
    """A loopback port whose connections are each handed to ``handle`` (on a thread; closed after it)."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def closing(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            handle(conn)

    with _listening(server, stop, closing) as port:
        yield port


@contextlib.contextmanager
def silent_server(address: tuple[str, int] = ("127.0.0.1", 0)) -> Iterator[int]:
    """A loopback port that accepts TCP connections and never sends a byte (a hung DC, a wedged IIS).

    Yields the port. Accepted sockets are held open until the ``with`` ends, so clients wait for
    their own timeouts instead of seeing a reset. ``address``: where it listens (a loopback address
    of its own, on a given port, plays a DC of a list whose DCs share one port).
    """
    server = socket.create_server(address)
    held: list[socket.socket] = []
    stop = threading.Event()

    try:
        with _listening(server, stop, held.append) as port:
            yield port
    finally:
        for conn in held:
            conn.close()


@contextlib.contextmanager
def connect_proxy(*, refuse: str | None = None, hosts: dict[str, str] | None = None) -> Iterator[tuple[int, list[str]]]:
    """A loopback HTTP proxy that tunnels ``CONNECT host:port`` (what clients send for https URLs).

    Yields its port and the list of ``host:port`` targets it was asked for. With ``refuse`` (a
    status line such as ``"407 Proxy Authentication Required"``) it answers every CONNECT with it.
    ``hosts`` resolves names as the proxy sees them (a test name to 127.0.0.1).
    """
    server = socket.create_server(("127.0.0.1", 0))
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
            head = _request_head(client)
            if head is None:
                return
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

    with _listening(server, stop, tunnel) as port:
        yield port, targets


class FaultyProxy:
    """A loopback TCP relay to ``upstream`` that a test turns into a hung or a resetting server.

    ``hold()``: connections stay open and nothing more is relayed either way, new ones are accepted
    and never answered (a DC that hangs mid-conversation, a paused VM); ``held`` is set once a byte
    arrives while held (a client waits on the server now). ``thaw()`` delivers what was held and
    relays again, connections accepted meanwhile included (the server answers after all).
    ``reset()``: every open connection is reset (RST) and new ones are reset once the client has
    sent its first bytes, its TLS ClientHello (a DC restarting, a firewall cutting connections).
    ``relay()`` relays again, resetting what was held. ``hang_open()``: the connections open now relay
    nothing more, for good (what their client sends is dropped: a DC that took the request and never
    answers), while new connections relay as before. ``accepted`` counts connections accepted.
    Without ``upstream`` it only resets or holds.
    """

    def __init__(self, upstream: tuple[str, int] | None, listen: tuple[str, int] = ("127.0.0.1", 0)) -> None:
        self.upstream = upstream
        self.accepted = 0
        self.mode = "relay"
        self._server = socket.create_server(listen)
        self.port: int = self._server.getsockname()[1]
        self._open: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._relaying = threading.Event()
        self._relaying.set()
        self.held = threading.Event()
        #: connections accepted while held, connected upstream by ``thaw()``
        self._waiting: list[socket.socket] = []
        #: sockets (either end) of the connections ``hang_open()`` hung: what arrives there is dropped
        self._hung: set[socket.socket] = set()
        self._thread = _accepting(self._server, self._stop, self._accepted)

    def hold(self) -> None:
        with self._lock:
            self.mode = "hold"
            self.held.clear()
            self._relaying.clear()

    def thaw(self) -> None:
        with self._lock:
            self.mode = "relay"
            waiting, self._waiting = self._waiting, []
            self._relaying.set()
        for client in waiting:
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def hang_open(self) -> None:
        with self._lock:
            self._hung.update(self._open)

    def reset(self) -> None:
        with self._lock:
            self.mode = "reset"
            self._relaying.set()  # released relays find their sockets reset
            held, self._open = self._open, []
        for sock in held:
            _reset(sock)

    def relay(self) -> None:
        """Relay again; connections held meanwhile are reset (their clients gave up on them)."""
        self.reset()
        with self._lock:
            self.mode = "relay"

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._server.close()
        self.reset()

    def _accepted(self, client: socket.socket) -> None:
        with self._lock:
            self.accepted += 1
            mode = self.mode
            self._open.append(client)
        if mode == "reset" or (mode == "relay" and self.upstream is None):
            _reset_when_spoken_to(client)
        elif mode == "relay":
            self._connect(client)
        elif self.upstream is not None:
            with self._lock:
                self._waiting.append(client)

    def _connect(self, client: socket.socket) -> None:
        assert self.upstream is not None
        try:
            upstream = socket.create_connection(self.upstream)
        except OSError:
            _reset(client)
            return
        with self._lock:
            self._open.append(upstream)
        threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()
        self._pipe(client, upstream)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if src in self._hung or dst in self._hung:
                    self.held.set()
                    continue  # dropped: the other end waits for an answer that never comes
                if not self._relaying.is_set():
                    self.held.set()
                self._relaying.wait()  # held: the bytes go nowhere until thaw(), relay() or reset()
                if self.mode != "relay":
                    return
                dst.sendall(data)


def _reset_when_spoken_to(sock: socket.socket) -> None:
    """Reset ``sock`` once the client has spoken (never before its connect has completed)."""
    with contextlib.suppress(OSError):
        sock.settimeout(30)
        sock.recv(1)
    _reset(sock)


def _reset(sock: socket.socket) -> None:
    """Close ``sock`` with a TCP reset, waking a thread blocked reading it."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        sock.close()


@contextlib.contextmanager
def faulty_proxy(
    upstream: tuple[str, int] | None = None, listen: tuple[str, int] = ("127.0.0.1", 0)
) -> Iterator[FaultyProxy]:
    """A ``FaultyProxy`` listening on ``listen`` for the duration of a block (closed, its connections
    reset, afterwards)."""
    proxy = FaultyProxy(upstream, listen)
    try:
        yield proxy
    finally:
        proxy.close()


@contextlib.contextmanager
def trickling_server(
    tls: ssl.SSLContext, *, length: int = 1_000_000, every_s: float = 0.05, status: str = "200 OK"
) -> Iterator[int]:
    """A loopback HTTPS port that answers every request with ``status`` and a ``length``-byte body, sent
    one byte at a time, a byte every ``every_s``: at 50 ms each read of the client's gets data well
    within any timeout, so only a deadline on the whole answer ends it (a wedged proxy, a dying
    link); at an hour the answer stalls after its first byte.

    Yields the port. The connections close when the ``with`` ends.
    """
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    kind = "image/jpeg" if status.startswith("200") else "text/html"
    head = f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {length}\r\n\r\n".encode()

    def answer(raw: socket.socket) -> None:
        with contextlib.suppress(OSError), tls.wrap_socket(raw, server_side=True) as conn:
            if _request_head(conn) is None:
                return
            conn.sendall(head + b"\xff")
            while not stop.wait(every_s):
                conn.sendall(b"\x00")

    with _listening(server, stop, answer) as port:
        yield port
