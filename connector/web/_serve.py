"""Where the console listens: a socket bound before anything says the console is up.

``mvsync ui`` binds its own socket and hands it to uvicorn, and so does a console started in a
background thread (the UI benchmark, the browser tests). Binding first is what lets a port in use
be one clear line, and lets port 0 mean "a port the operating system picks" with no window in
which another program can take the port between choosing it and listening on it.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BackgroundConsole", "bind_console_socket", "quiet_when_stopped", "serve_in_background"]

#: uvicorn's own default backlog (it calls ``listen`` again with it when it starts serving the socket).
BACKLOG = 2048


def bind_console_socket(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host``:``port`` (0: any free port); raises ``OSError`` as bind does.

    On Windows, SO_REUSEADDR (uvicorn's choice) lets a second console bind a port another program
    listens on; SO_EXCLUSIVEADDRUSE refuses that. Elsewhere SO_REUSEADDR only spares a restarted
    console the old connections' TIME_WAIT.

    It listens at once, not when uvicorn has started: ``mvsync ui`` says "console on http://..." as
    soon as this returns, and a browser or script that went there before uvicorn called ``listen()``
    was refused. Connections made meanwhile wait in the backlog until uvicorn accepts them.
    """
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on connections of a socket that says it
    # is TCP, and without it every request after the first on a kept-alive connection (a browser's)
    # waited ~40 ms for the client's delayed ACK (Nagle), 44 ms a page instead of 1-5 ms
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        if sys.platform == "win32":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def quiet_when_stopped(app: ASGIApp) -> ASGIApp:
    """``app``, answering 503 "the console is stopping" to a request the server cancels as it stops.

    Why: told to stop at once (a second Ctrl-C), uvicorn cancels the requests still running, such as
    a page that waits for a store that does not answer, and logged each cancellation as "Exception in
    ASGI application" with a traceback, though nothing went wrong.
    """

    async def run(scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def sending(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await app(scope, receive, sending)
        except asyncio.CancelledError:
            if scope["type"] != "http" or started:
                raise
            headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close")]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": b"the console is stopping"})

    return run


@dataclass
class BackgroundConsole:
    """A console served by uvicorn in a daemon thread of this process."""

    server: Any  # uvicorn.Server
    thread: threading.Thread
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)


def serve_in_background(app: Any, host: str = "127.0.0.1", start_timeout: float = 20.0) -> BackgroundConsole:
    """Serve ``app`` on a port the OS picks; returns once uvicorn accepts connections.

    Raises ``RuntimeError`` if uvicorn has not started within ``start_timeout`` seconds or its
    thread ended first (uvicorn logs why).
    """
    import uvicorn

    sock = bind_console_socket(host, 0)
    port = int(sock.getsockname()[1])
    config = uvicorn.Config(
        quiet_when_stopped(app), host=host, port=port, log_level="warning", server_header=False, lifespan="off"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="mvsync-console", daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            msg = f"the console did not start on {host}:{port} within {start_timeout:g} s"
            raise RuntimeError(msg)
        time.sleep(0.02)
    return BackgroundConsole(server, thread, host, port)
