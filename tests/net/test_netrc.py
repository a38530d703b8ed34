"""A netrc file's credentials never reach a request mvsync sends (``connector.net._Session``)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from connector.net import verifying_session

LEAKED = "Basic bGVha2VkLXVzZXI6bGVha2VkLXNlY3JldA=="  # leaked-user:leaked-secret


@pytest.fixture
def servers() -> Iterator[tuple[list[tuple[int, str | None]], int, int]]:
    """Two loopback servers recording (port, Authorization) per request; the first redirects /away to the second."""
    seen: list[tuple[int, str | None]] = []

    def handler(redirect_to: int | None) -> type[http.server.BaseHTTPRequestHandler]:
        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append((self.server.server_address[1], self.headers.get("Authorization")))
                if redirect_to is not None and self.path == "/away":
                    self.send_response(302)
                    self.send_header("Location", f"http://127.0.0.1:{redirect_to}/here")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        return Handler

    second = http.server.HTTPServer(("127.0.0.1", 0), handler(None))
    first = http.server.HTTPServer(("127.0.0.1", 0), handler(second.server_address[1]))
    for server in (first, second):
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        yield seen, first.server_address[1], second.server_address[1]
    finally:
        for server in (first, second):
            server.shutdown()
            server.server_close()


@pytest.mark.usefixtures("netrc_everywhere")
def test_a_netrc_entry_neither_replaces_a_requests_authorization_nor_adds_one(
    servers: tuple[list[tuple[int, str | None]], int, int],
) -> None:
    """requests puts a matching netrc entry's Basic credentials on every request without ``auth``, over the
    request's own Authorization header: Graph lost its bearer token, the sign-in its client secret, and the
    netrc password went to Microsoft. mvsync's sessions send what the caller set, and nothing on a redirect
    to another host (requests' own rule), where requests would look the new host up in the netrc again."""
    seen, first, second = servers
    session = verifying_session(None, timeout_s=10)
    session.get(f"http://127.0.0.1:{first}/", headers={"Authorization": "Bearer token"})
    session.get(f"http://127.0.0.1:{first}/")
    session.get(f"http://127.0.0.1:{first}/away", headers={"Authorization": "Bearer token"})
    assert seen == [(first, "Bearer token"), (first, None), (first, "Bearer token"), (second, None)]
    assert LEAKED not in {auth for _, auth in seen}
