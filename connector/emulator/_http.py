"""A lean HTTP/1.1 server on asyncio streams over TLS: keep-alive, Nagle off, one write per response.

The emulator must never be the bottleneck of a benchmark, so this avoids a framework: requests are
parsed by hand (Content-Length bodies only, as Graph clients send), and each response goes out as a
single buffer so no small trailing segment waits for a delayed ACK.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from http import HTTPStatus
from urllib.parse import parse_qsl, unquote

__all__ = ["HttpServer", "Request", "Response", "stop_server_thread"]

MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024


@dataclass
class Request:
    method: str
    target: str  # as sent: path and query, still percent-encoded
    path: str  # decoded path
    raw_query: str
    headers: dict[str, str]  # lower-case names
    body: bytes = b""
    #: State that lives as long as the TCP connection (connection-based auth such as NTLM keeps it here).
    conn: dict[str, object] = field(default_factory=dict)

    @property
    def query(self) -> dict[str, str]:
        """Query options (last one wins); ``+`` is a space, as ASP.NET and requests' ``params=`` have it."""
        return dict(parse_qsl(self.raw_query, keep_blank_values=True))


@dataclass
class Response:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    #: "reset" aborts the connection instead of answering; "truncate" sends half the body and closes.
    fault: str | None = None

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None


Handler = Callable[[Request], Awaitable[Response]]

_REASONS = {s.value: s.phrase for s in HTTPStatus}
_date_cache: tuple[int, str] = (0, "")


def _http_date() -> str:
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


def serialize(resp: Response, keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {resp.status} {_REASONS.get(resp.status, 'Unknown')}", f"Date: {_http_date()}"]
    lines.extend(f"{k}: {v}" for k, v in resp.headers)
    lines.append(f"Content-Length: {len(resp.body)}")
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + resp.body


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    text = head.decode("latin-1")
    request_line, _, rest = text.partition("\r\n")
    method, target, version = request_line.split(" ", 2)
    if not version.startswith("HTTP/1."):
        raise ValueError("unsupported HTTP version")
    headers: dict[str, str] = {}
    for line in rest.split("\r\n"):
        if not line:
            continue
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    if version == "HTTP/1.0" and "connection" not in headers:
        headers["connection"] = "close"
    return method.upper(), target, headers


class HttpServer:
    """Serves ``handler`` on 127.0.0.1 over TLS until ``close()``."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext) -> None:
        self._handler = handler
        self._ssl = ssl_context
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        #: One task per connection, cancelled by ``close()``.
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self, port: int) -> int:
        self._server = await asyncio.start_server(
            self._serve,
            host="127.0.0.1",
            port=port,
            ssl=self._ssl,
            limit=MAX_HEADER_BYTES,
            backlog=512,
            ssl_handshake_timeout=10,
        )
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def close(self) -> None:
        """Stop listening, drop every connection and end its task.

        Why end the tasks: one waiting in a handler (a modelled latency, a throttled request) outlives
        its aborted connection; left pending when the loop stops, it is destroyed whenever the garbage
        collector gets to it, and runs its ``finally`` in the middle of whatever the process does then
        (in a test session: pytest parsing a module, which CPython 3.11 cannot take).
        """
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._writers.add(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            await self._loop(reader, writer, sock, {})
        except (
            asyncio.CancelledError,  # close(): a task that ends cancelled makes asyncio 3.11 log a traceback
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ConnectionError,
            ssl.SSLError,
            TimeoutError,
            ValueError,
        ):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort() if writer.transport.is_closing() else writer.close()

    async def _loop(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        sock: socket.socket | None,
        conn: dict[str, object],
    ) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return  # client closed between requests
            method, target, headers = _parse_head(head[:-4])
            if "chunked" in headers.get("transfer-encoding", "").lower():
                writer.write(serialize(Response(411, b"Length Required"), keep_alive=False))
                await writer.drain()
                return
            length = int(headers.get("content-length", "0") or 0)
            if length > MAX_BODY_BYTES:
                writer.write(serialize(Response(413, b"Request Entity Too Large"), keep_alive=False))
                await writer.drain()
                return
            body = await reader.readexactly(length) if length else b""
            path, _, raw_query = target.partition("?")
            request = Request(method, target, unquote(path), raw_query, headers, body, conn)
            response = await self._handler(request)
            keep_alive = headers.get("connection", "").lower() != "close"
            if response.fault == "reset":
                if sock is not None:
                    with contextlib.suppress(OSError):  # RST instead of FIN
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
                return
            data = serialize(response, keep_alive)
            if response.fault == "truncate":
                cut = len(data) - max(1, len(response.body) // 2)
                writer.write(data[:cut])
                await writer.drain()
                writer.close()
                return
            writer.write(data)
            await writer.drain()
            if not keep_alive:
                return


def stop_server_thread(
    loop: asyncio.AbstractEventLoop | None, thread: threading.Thread | None, server: HttpServer | None
) -> None:
    """Close ``server``'s connections, stop the loop running it in ``thread`` and close the loop.

    The emulators run their server on a loop of their own thread; both stop it this way (idempotent).
    """
    if loop is not None and thread is not None and thread.is_alive():
        if server is not None:
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    if loop is not None and not loop.is_running():
        executor = getattr(loop, "_default_executor", None)
        loop.close()
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
