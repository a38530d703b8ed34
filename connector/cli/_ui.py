"""``mvsync ui``: serve the read-only web console (extra ``[web]``)."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape

from connector.cli._common import DEFAULT_CONFIG, EXIT_CONFIG, ConfigOption, err_console, fail, handle_errors

if TYPE_CHECKING:
    from connector.store import SqlStore

__all__ = ["register"]

WEB_EXTRA_HINT = "the web console needs the [web] extra: pip install 'mvsync[web]' (FastAPI, Jinja2, uvicorn)"


def register(app: typer.Typer) -> None:
    @app.command()
    @handle_errors
    def ui(
        config: ConfigOption = DEFAULT_CONFIG,
        host: Annotated[
            str, typer.Option(help="Address to listen on. Anything but loopback needs MVSYNC_UI_TOKEN or basic auth.")
        ] = "127.0.0.1",
        port: Annotated[
            int, typer.Option(min=0, max=65535, help="TCP port (0: any free port, shown when it starts).")
        ] = 8765,
        tls_cert: Annotated[
            Path | None, typer.Option(help="Serve HTTPS: the PEM certificate (chain first), with --tls-key.")
        ] = None,
        tls_key: Annotated[Path | None, typer.Option(help="The PEM private key of --tls-cert (not encrypted).")] = None,
        forwarded_allow_ips: Annotated[
            str | None,
            typer.Option(
                help="An HTTPS reverse proxy in front: its addresses (comma-separated), whose X-Forwarded-Proto "
                "and X-Forwarded-For are believed (the sign-in cookie is then marked Secure)."
            ),
        ] = None,
    ) -> None:
        """Serve the read-only web console: operations, metaverse search, persons, pending exports, coverage.

        Listens on 127.0.0.1 by default. On any other address set MVSYNC_UI_TOKEN (32 characters or
        more; open the console once with ?token=..., or send 'Authorization: Bearer ...') or MVSYNC_UI_USER and
        MVSYNC_UI_PASSWORD (basic authentication). Off loopback, serve HTTPS (--tls-cert and --tls-key)
        or put an HTTPS reverse proxy in front (--forwarded-allow-ips): else the password, the token and
        every page cross the network in clear text.
        """
        try:
            import uvicorn

            from connector.web import (
                AccessPolicy,
                InsecureBindError,
                create_app,
                is_loopback,
                page_deadline,
                quiet_when_stopped,
            )
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] in ("fastapi", "jinja2", "uvicorn", "starlette"):
                raise fail(escape(f"{WEB_EXTRA_HINT} (missing module {exc.name!r})"), EXIT_CONFIG) from None
            raise
        from connector.config import load_config

        host = _unbracketed(host)
        try:
            policy = AccessPolicy.from_env(bind_host=host)
            policy.check_bind(host)
        except InsecureBindError as exc:
            raise fail(escape(str(exc)), EXIT_CONFIG) from None
        tls = _tls_files(tls_cert, tls_key)
        if tls is None and forwarded_allow_ips is None and not is_loopback(host):
            err_console.print(
                f"warning: the console on {host} speaks plain HTTP: sign-ins and pages cross the network in clear "
                "text. Serve HTTPS with --tls-cert and --tls-key, or put an HTTPS reverse proxy in front of it "
                "(--forwarded-allow-ips)",
                highlight=False,
            )
        cfg = load_config(config)
        store = _open_store(cfg.store_url())
        deadline = page_deadline(store)
        application = create_app(cfg, store=store, policy=policy, page_deadline_s=deadline)
        shown = f"[{host}]" if ":" in host else host
        listening = _listen(host, port, shown)
        port = int(listening.getsockname()[1])
        how = "token" if policy.token else ("basic authentication" if policy.user else "loopback only, no sign-in")
        scheme = "https" if tls else "http"
        err_console.print(f"mvsync console on {scheme}://{shown}:{port}/ ({how}); Ctrl+C stops it", highlight=False)
        settings = uvicorn.Config(
            quiet_when_stopped(application),
            host=host,
            port=port,
            log_level="warning",
            server_header=False,
            # a client's own X-Forwarded-* would otherwise pass for the proxy's: believed only from the proxy
            proxy_headers=forwarded_allow_ips is not None,
            forwarded_allow_ips=forwarded_allow_ips,
            ssl_certfile=tls[0] if tls else None,
            ssl_keyfile=tls[1] if tls else None,
            lifespan="off",  # no startup or shutdown hooks: and none cancelled (with a traceback) at a stop
        )
        _console_server(settings, deadline).run(sockets=[listening])


def _unbracketed(host: str) -> str:
    """``--host`` as the socket takes it: ``[::1]``, as IPv6 addresses are written in URLs (and as the
    console announces itself), is ``::1``; it was "cannot listen on [[::1]]:8765 (Name or service not known)"."""
    host = host.strip()
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def _open_store(url: str) -> SqlStore:
    """The console's store, opened read-only; one whose server does not answer yet is opened all the same.

    Why: a console already running rides out a PostgreSQL restart with 503 pages, but one started while
    the server was down (still starting at boot, restarting, its database closed for maintenance)
    exited, and a service started before its database stayed down. It now says so and starts; its pages
    answer 503 until the store answers (a schema of another version is then said by the page that fails).
    A store it could never use (a wrong password, a missing database) still stops it.
    """
    from connector.store import SqlStore, StoreUnreachableError
    from connector.web import CONSOLE_READER

    try:
        return SqlStore(url, create=False, reader=CONSOLE_READER)
    except StoreUnreachableError as exc:
        err_console.print(
            f"warning: {escape(str(exc))}; the console starts, and its pages say so until the store answers",
            highlight=False,
        )
        return SqlStore(url, create=False, migrate_schema=False, reader=CONSOLE_READER)


def _tls_files(cert: Path | None, key: Path | None) -> tuple[str, str] | None:
    """The certificate and key to serve HTTPS with, tried before anything listens (None: plain HTTP).

    Why tried here: uvicorn reads them only once it starts, and a wrong file was its traceback after
    the console had said it was up. A mismatch or a bad file is exit 2 naming both files.
    """
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise fail("--tls-cert and --tls-key go together: give the certificate and its private key", EXIT_CONFIG)
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except OSError as exc:  # ssl.SSLError is one: a file that is no PEM, or a key of another certificate
        why = exc.strerror or getattr(exc, "reason", None) or str(exc)
        raise fail(
            escape(
                f"cannot serve HTTPS with --tls-cert {cert} and --tls-key {key}: {why}; give a PEM certificate "
                "(its chain after it) and the unencrypted PEM private key that belongs to it"
            ),
            EXIT_CONFIG,
        ) from None
    return str(cert), str(key)


def _console_server(settings: Any, deadline_s: float) -> Any:
    """uvicorn's server for ``settings``, saying why a stop waits: pages still reading the store are
    waited for (at most ``deadline_s``) unless Ctrl+C comes again; it used to go quiet that long."""
    import uvicorn

    class ConsoleServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            pages = len(self.server_state.tasks)
            if not self.should_exit and pages:
                err_console.print(
                    f"stopping: {pages} page(s) still read the store (at most {deadline_s:g} s); "
                    "Ctrl+C again stops at once",
                    highlight=False,
                )
            super().handle_exit(sig, frame)

        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            """uvicorn's shutdown, with idle HTTPS connections dropped instead of closed politely.

            Why: closing a TLS connection waits for the browser's close_notify, which a browser
            keeping the connection alive for its next page never sends; asyncio gives up after 30 s,
            so a service stop took 30 s. A connection whose answer is still being written is not
            touched (its write buffer is not empty), and one serving a page is not closing at all.
            """
            stopping = asyncio.ensure_future(super().shutdown(sockets))
            while not stopping.done():
                for connection in list(self.server_state.connections):
                    transport = getattr(connection, "transport", None)
                    if transport is not None and transport.is_closing() and not transport.get_write_buffer_size():
                        transport.abort()
                await asyncio.wait({stopping}, timeout=0.1)
            await stopping

    return ConsoleServer(settings)


def _listen(host: str, port: int, shown: str) -> socket.socket:
    """The console's socket, bound before anything says the console is up.

    Why here and not in uvicorn: a port in use is then one line that says what to do and exit 2,
    not uvicorn's log line and its exit code 3 (which means "completed with errors" to a scheduler
    reading mvsync's codes).
    """
    from connector.web import bind_console_socket  # the [web] extra is known to be there by now

    try:
        return bind_console_socket(host, port)
    except OSError as exc:
        why = exc.strerror or str(exc)
        raise fail(
            escape(
                f"cannot listen on {shown}:{port} ({why}): if another program (another `mvsync ui`?) uses "
                "the port, choose another with --port; check --host names an address of this machine"
            ),
            EXIT_CONFIG,
        ) from None
