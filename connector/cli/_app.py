"""The ``mvsync`` command. Each area registers its commands from its own module."""

from __future__ import annotations

import importlib
import inspect
import logging
from enum import StrEnum
from pathlib import Path

import typer

from connector import metrics
from connector._version import __version__
from connector.cli._common import JsonFailureGroup, err_console, fail, fit_consoles
from connector.cli._output import guard_output
from connector.logging import logs_as_json, setup_logging

app = typer.Typer(
    name="mvsync",
    cls=JsonFailureGroup,
    help="MIM-style identity sync: connector spaces, a metaverse and run profiles, for user photos.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

log = logging.getLogger("mvsync.cli")

# One module per area; each defines register(app). Order is the order of `mvsync --help`.
_COMMAND_MODULES = (
    "_core",  # init, connectors, schema, run, history, cs, mv, pending-exports
    "_auth",  # auth login / status
    "_photo",  # photo convert
    "_emulator",  # emulator serve
    "_demo",  # demo
    "_doctor",  # doctor
    "_store",  # store backup
    "_ui",  # ui
    "_bench",  # bench ...
)


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"mvsync {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Show the version."
    ),
    log_level: str = typer.Option(
        "WARNING", "--log-level", envvar="MVSYNC_LOG_LEVEL", help="DEBUG, INFO, WARNING or ERROR (to stderr)."
    ),
    log_format: LogFormat = typer.Option(
        LogFormat.TEXT,
        "--log-format",
        envvar="MVSYNC_LOG_FORMAT",
        help="text, or json: one JSON object per line for log shippers. Secrets are redacted either way.",
    ),
    metrics_textfile: Path | None = typer.Option(
        None,
        "--metrics-textfile",
        envvar="MVSYNC_METRICS_TEXTFILE",
        help="Write Prometheus metrics to this file when the command ends (node_exporter's textfile collector).",
    ),
    metrics_port: int | None = typer.Option(
        None,
        "--metrics-port",
        envvar="MVSYNC_METRICS_PORT",
        min=1,
        max=65535,
        help="Serve Prometheus metrics on 127.0.0.1:PORT/metrics while the command runs (long-lived processes).",
    ),
) -> None:
    """MIM-style identity sync for user photos: Exchange Online, Active Directory and photo folders."""
    fit_consoles()
    try:
        setup_logging(log_level, json_format=log_format == LogFormat.JSON)
    except ValueError as exc:
        raise fail(f"--log-level: {exc}; use DEBUG, INFO, WARNING or ERROR") from None
    try:
        metrics.configure(textfile=metrics_textfile, port=metrics_port)
    except ValueError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"--metrics-port {metrics_port}: cannot listen ({exc.strerror}); choose a free port") from None
    if metrics_textfile is not None:
        # also after a failed or stopped run: the scheduler's alert reads these figures
        ctx.call_on_close(_write_metrics_textfile)


def _write_metrics_textfile() -> None:
    """The textfile at the command's end; a failure is said, and the command's own exit code stands
    (the run is in history either way; a traceback here would hide the run's outcome). With
    ``--log-format json`` it is said as a JSON log record, like every other line on stderr then."""
    try:
        metrics.write_textfile()
    except OSError as exc:
        reason = exc.strerror or exc
        message = (
            f"--metrics-textfile: cannot write {exc.filename or ''}: {reason}; the command's own exit code "
            "stands; free space there, or fix the folder"
        )
        if logs_as_json():
            log.error("%s", message, extra={"status": "error-metrics-textfile"})
        else:
            err_console.print(f"error: {message}", markup=False)


def _unwrapped(help_text: str) -> str:
    """``help_text`` with each paragraph on one line (a paragraph click marks ``\\b`` kept as written).

    Why: typer (0.29) keeps the single line breaks of a docstring's later paragraphs, so the source's
    wrapping at 120 columns showed in ``--help`` as stray breaks ("... or MVSYNC_UI_USER and" /
    "MVSYNC_UI_PASSWORD ...") once rich wrapped the lines again to the terminal's width.
    """
    paragraphs = inspect.cleandoc(help_text).split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(p.split("\n")) for p in paragraphs)


def _unwrap_help(typer_app: typer.Typer) -> None:
    """Give every command of ``typer_app`` (and of its sub-apps) its docstring unwrapped as its help."""
    for command in typer_app.registered_commands:
        text = command.help or (command.callback.__doc__ if command.callback else None)
        if text:
            command.help = _unwrapped(text)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _unwrap_help(group.typer_instance)


for _name in _COMMAND_MODULES:
    importlib.import_module(f"connector.cli.{_name}").register(app)
_unwrap_help(app)


def main() -> None:
    guard_output()  # a full disk under stdout or stderr ends no command (its exit code stands)
    app()
