"""A connect that fails closes its socket: a scheduler retrying against a bad DC must not leak one file
descriptor per attempt.

Why these servers: each is a failure path of ``Link._open_once`` before a bind (nothing listens, a
port that speaks garbage, a TLS server whose certificate is not trusted, a DC that accepts and never
answers), on ldaps and on StartTLS. The count is taken with the cyclic garbage collector off: ldap3's
Connection and its strategy refer to each other, so a socket left open is otherwise closed only
whenever the collector next runs (with a ResourceWarning), and a leak would depend on timing.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import socket
import ssl
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trustme

from connector.agents.active_directory._connection import Link
from connector.agents.active_directory._settings import ActiveDirectorySettings
from connector.sdk import StopRunError
from tests.agents.active_directory.test_ad_network_errors import _settings as network_settings
from tests.harness.sockets import faulty_proxy, handing_to, silent_server

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/fd").is_dir(), reason="counts open file descriptors in /proc/self/fd (Linux)"
)

_ATTEMPTS = 5


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _garbage(conn: socket.socket) -> None:
    """Not LDAP and not TLS: what a wrong port (a web server, a mail server) answers."""
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 4)
    conn.settimeout(5)
    with contextlib.suppress(OSError):
        conn.recv(65536)  # until the client gives up and closes


def _untrusted_tls(conn: socket.socket) -> None:
    """TLS with a certificate from a CA no client trusts."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    conn.settimeout(5)
    with context.wrap_socket(conn, server_side=True):
        pass  # the client refuses the certificate: the handshake raises, and the block closes


def _settings(port: int, security: str) -> ActiveDirectorySettings:
    return network_settings(port, security, receive_timeout=5)


@contextlib.contextmanager
def _refused_port() -> Iterator[int]:
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))  # bound and never listening: refused, and no other process can take it
        yield bound.getsockname()[1]


@contextlib.contextmanager
def _resetting() -> Iterator[int]:
    with faulty_proxy() as dc:  # no upstream: each connection is reset when accepted
        yield dc.port


_SERVERS: dict[str, Callable[[], contextlib.AbstractContextManager[int]]] = {
    "refused": _refused_port,
    "reset": _resetting,
    "garbage": lambda: handing_to(_garbage),
    "untrusted-certificate": lambda: handing_to(_untrusted_tls),
    "hung": silent_server,
}


#: (An untrusted certificate behind StartTLS needs a server that speaks LDAP first: the Samba tests
#: refuse a foreign CA there.)
_CASES = [
    (server, security)
    for server in sorted(_SERVERS)
    for security in ("ldaps", "starttls")
    if (server, security) != ("untrusted-certificate", "starttls")
]


@pytest.mark.parametrize(("server", "security"), _CASES)
def test_a_failed_connect_leaves_no_socket_open(server: str, security: str) -> None:
    attempts = 2 if server == "hung" else _ATTEMPTS  # each waits for connect_timeout (1 s)
    errors: list[str] = []
    gc.collect()
    gc.disable()
    try:
        before = _open_fds()
        with _SERVERS[server]() as port:  # the server's own sockets are closed when the block ends
            link = Link(_settings(port, security), logging.getLogger("test"))
            for _ in range(attempts):
                try:
                    link.connect()
                except StopRunError as exc:  # ServerDownError, or a TLS failure retrying cannot fix
                    errors.append(str(exc))
        leaked = _open_fds() - before
    finally:
        gc.enable()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        gc.collect()
    assert len(errors) == attempts and all(f"127.0.0.1:{port} ({security})" in e for e in errors), errors
    assert leaked == 0, f"{leaked} descriptor(s) left open by {attempts} failed connects: {errors[-1]}"
    unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert unclosed == [], unclosed
