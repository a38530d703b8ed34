"""``mvsync ui``: serve the read-only web console (extra ``[web]``)."""

from __future__ import annotations

import socket
from types import FrameType
from typing import Annotated, Any

import typer
from rich.markup import escape

from connector.cli._common import DEFAULT_CONFIG, EXIT_CONFIG, ConfigOption, err_console, fail, handle_errors

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
    ) -> None:
        """Serve the read-only web console: operations, metaverse search, persons, pending exports, coverage.

        Listens on 127.0.0.1 by default. On any other address set MVSYNC_UI_TOKEN (open the console
        once with ?token=..., or send 'Authorization: Bearer ...') or MVSYNC_UI_USER and
        MVSYNC_UI_PASSWORD (basic authentication; put TLS in front of it).
        """
        try:
            import uvicorn

            from connector.web import AccessPolicy, InsecureBindError, create_app, page_deadline, quiet_when_stopped
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] in ("fastapi", "jinja2", "uvicorn", "starlette"):
                raise fail(escape(f"{WEB_EXTRA_HINT} (missing module {exc.name!r})"), EXIT_CONFIG) from None
            raise
        from connector.config import load_config
        from connector.store import SqlStore

        try:
            policy = AccessPolicy.from_env(bind_host=host)
            policy.check_bind(host)
        except InsecureBindError as exc:
            raise fail(escape(str(exc)), EXIT_CONFIG) from None
        cfg = load_config(config)
        store = SqlStore(cfg.store_url(), create=False)
        deadline = page_deadline(store)
        application = create_app(cfg, store=store, policy=policy, page_deadline_s=deadline)
        shown = f"[{host}]" if ":" in host else host
        listening = _listen(host, port, shown)
        port = int(listening.getsockname()[1])
        how = "token" if policy.token else ("basic authentication" if policy.user else "loopback only, no sign-in")
        err_console.print(f"mvsync console on http://{shown}:{port}/ ({how}); Ctrl+C stops it", highlight=False)
        settings = uvicorn.Config(
            quiet_when_stopped(application),
            host=host,
            port=port,
            log_level="warning",
            server_header=False,
            proxy_headers=False,
            lifespan="off",  # no startup or shutdown hooks: and none cancelled (with a traceback) at a stop
        )
        _console_server(settings, deadline).run(sockets=[listening])


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
