"""Shared CLI plumbing: exit codes, the --config option, JSON output and error reporting.

Exit codes (documented in the README for schedulers):

====  =====================================================================
0     success (also ``completed-warnings``)
1     unexpected internal error (a bug: please report it with the traceback)
2     usage or configuration error (the message names the key and the file)
3     the run completed with per-object errors (``completed-*-errors``)
4     a step stopped (``stopped-*``: threshold, error limit, authentication, server down ...)
5     another mvsync process holds the agent or metaverse lock, or another process the store (see ``--wait``)
6     ``mvsync doctor`` found a problem (the report names each check)
130   ``mvsync run`` interrupted by Ctrl-C; 143 by SIGTERM, 129 by SIGHUP (128 + the signal's number)
====  =====================================================================
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from functools import wraps
from pathlib import Path
from types import FrameType
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

__all__ = [
    "EXIT_COMPLETED_ERRORS",
    "EXIT_CONFIG",
    "EXIT_INTERNAL",
    "EXIT_LOCKED",
    "EXIT_STOPPED",
    "EXIT_SUCCESS",
    "ConfigOption",
    "JsonOption",
    "console",
    "err_console",
    "exit_code_for_status",
    "fail",
    "fit_consoles",
    "handle_errors",
    "interrupted_exit_code",
    "print_json",
    "stop_signals_interrupt",
]

EXIT_SUCCESS = 0
EXIT_INTERNAL = 1
EXIT_CONFIG = 2
EXIT_COMPLETED_ERRORS = 3
EXIT_STOPPED = 4
EXIT_LOCKED = 5

console = Console()
err_console = Console(stderr=True)

ConfigOption = Annotated[
    Path,
    typer.Option("--config", "-c", help="Configuration file.", envvar="MVSYNC_CONFIG", show_default=True),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]

DEFAULT_CONFIG = Path("mvsync.toml")

#: Width of output that goes to a file or pipe: rich's 80-column default would cut tables short in
#: cron mail and logs, so off a terminal nothing is folded (``COLUMNS`` still wins when set).
UNBOUNDED_WIDTH = 100_000


def fit_consoles() -> None:
    """Give each console the width of where it writes: the terminal's, ``COLUMNS``, or unbounded.

    Called at the start of every command (the streams are only known then: tests and wrappers
    replace ``sys.stdout``).
    """
    columns = os.environ.get("COLUMNS", "")
    for out, stream in ((console, sys.stdout), (err_console, sys.stderr)):
        if not (hasattr(stream, "isatty") and stream.isatty()):
            out.size = (int(columns) if columns.isdigit() else UNBOUNDED_WIDTH, 25)


def exit_code_for_status(status: str) -> int:
    """Map a MIM-style run or step status to the documented exit code."""
    if status in ("success", "completed-warnings", "completed-no-objects", "in-progress"):
        return EXIT_SUCCESS
    if status == "stopped-configuration":
        return EXIT_CONFIG
    if status == "stopped-locked":
        return EXIT_LOCKED
    if status.startswith("completed-"):
        return EXIT_COMPLETED_ERRORS
    if status.startswith("stopped-"):
        return EXIT_STOPPED
    return EXIT_INTERNAL


def print_json(obj: Any) -> None:
    """One JSON document on stdout (no rich markup, no wrapping)."""
    sys.stdout.write(json.dumps(obj, default=str, sort_keys=False) + "\n")
    sys.stdout.flush()


def fail(message: str, code: int = EXIT_CONFIG) -> typer.Exit:
    """Print ``message`` to stderr and return the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


#: Signals that end a run the way Ctrl-C does: SIGTERM (systemd stop, ``docker stop``, ``kill``),
#: SIGHUP (the terminal or SSH session went away; POSIX) and SIGBREAK (Ctrl-Break; Windows).
_STOP_SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGTERM", "SIGHUP", "SIGBREAK")) if s is not None)


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """While the block runs, a stop signal raises ``connector.engine.Interrupted`` in it.

    Python's default for SIGTERM is to die on the spot: no ``finally`` runs, so history would keep
    the run ``in-progress`` (until the next run finds its process gone) and the step's last figures
    would be lost. Raised as an interruption, the run ends as after Ctrl-C: recorded as
    ``stopped-interrupted``, the committed pages of a full import kept for the next run to resume.
    """
    if threading.current_thread() is not threading.main_thread():  # handlers are the main thread's
        yield
        return
    from connector.engine import Interrupted

    raised: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # once: a second signal while the first one unwinds would cut short the very history
        # writes it is unwinding to (a service manager that will not wait sends SIGKILL anyway)
        if not raised:
            raised.append(signum)
            raise Interrupted(signal.Signals(signum).name, signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in _STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def interrupted_exit_code(exc: KeyboardInterrupt) -> int:
    """128 + the signal's number, as shells report a process a signal ended (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + int(getattr(exc, "signal_number", signal.SIGINT))


P = ParamSpec("P")
R = TypeVar("R")


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn known errors into their exit codes with a one-line message instead of a traceback."""

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from connector.config import ConfigError
        from connector.sdk import ConfigurationError
        from connector.store import LockHeldError, StoreError

        try:
            return func(*args, **kwargs)
        # an error's text is text, not rich markup: "pip install 'mvsync[emulator]'" must arrive whole
        except (ConfigError, ConfigurationError) as exc:
            raise fail(escape(str(exc)), EXIT_CONFIG) from None
        except StoreError as exc:  # read-only, damaged, busy (5, a lock) or missing (2); never a traceback
            raise fail(escape(str(exc)), exc.exit_code) from None
        except LockHeldError as exc:
            raise fail(escape(str(exc)), EXIT_LOCKED) from None

    return wrapper
