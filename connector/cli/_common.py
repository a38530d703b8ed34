"""Shared CLI plumbing: exit codes, the --config option, JSON output and error reporting.

Exit codes (documented in the README for schedulers):

====  =====================================================================
0     success (also ``completed-warnings``)
1     unexpected internal error (a bug: please report it with the traceback)
2     usage or configuration error (the message names the key and the file)
3     the run completed with per-object errors (``completed-*-errors``)
4     a step stopped (``stopped-*``: threshold, error limit, authentication, server down ...);
      ``mvsync auth status`` without a token
5     another mvsync process holds the agent or metaverse lock, or another process the store (see ``--wait``)
6     ``mvsync doctor`` found a problem (the report names each check)
130   ``mvsync run`` interrupted by Ctrl-C; 143 by SIGTERM, 129 by SIGHUP (128 + the signal's number);
      any other command interrupted by Ctrl-C: 130 (``mvsync store backup`` and ``restore`` also 143 and 129)
====  =====================================================================

With ``--json`` a command that fails prints one failure object on stdout (:class:`CommandFailed`:
``status``, ``exit_code``, ``message``, ``run_id``), so that a scheduler's ``.jsonl`` file holds one
JSON line per run whatever happened.
"""

from __future__ import annotations

import _thread
import contextlib
import json
import logging
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
from rich.text import Text
from typer.core import TyperGroup

from connector.cli._console import ConsoleCloseGuard, install_console_guard
from connector.logging import logs_as_json, redact

__all__ = [
    "EXIT_COMPLETED_ERRORS",
    "EXIT_CONFIG",
    "EXIT_INTERNAL",
    "EXIT_LOCKED",
    "EXIT_STOPPED",
    "EXIT_SUCCESS",
    "CommandFailed",
    "ConfigOption",
    "JsonFailureGroup",
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

log = logging.getLogger("mvsync.cli")

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


#: The command words of the command line being run (``["history", "list"]``), set by ``JsonFailureGroup``.
_invoked: list[str] = []


def command_path() -> str:
    """The command being run as typed (``mvsync history list``), without its arguments (a person's name,
    a path): how a read-only command names itself to ``mvsync store restore``.

    Why not click's current context: typer runs its own copy of click (since 0.26), whose context
    stack a ``click`` import does not see, and the base install has no ``click`` at all."""
    return f"mvsync {' '.join(_invoked)}" if _invoked else "a read-only mvsync command"


def _command_words(group: Any, args: list[str]) -> list[str]:
    """The (sub)command names among ``args``, down to the first command that is no group: ``history list``
    of ``--log-level INFO history list -c mvsync.toml``; its own arguments are never read."""
    words: list[str] = []
    for arg in args:
        commands = getattr(group, "commands", None)
        if not isinstance(commands, dict):
            break  # a command, not a group: what follows is its options and arguments
        if arg in commands:
            words.append(arg)
            group = commands[arg]
    return words


def print_json(obj: Any) -> None:
    """One JSON document on stdout (no rich markup, no wrapping)."""
    sys.stdout.write(json.dumps(obj, default=str, sort_keys=False) + "\n")
    sys.stdout.flush()


#: The failure object's ``status`` for the exit codes whose failures name none of their own
#: (README: Exit codes); the others (a store fault, an interruption) pass theirs to :func:`fail`.
_FAILURE_STATUS = {EXIT_INTERNAL: "error-internal", EXIT_CONFIG: "stopped-configuration", EXIT_LOCKED: "stopped-locked"}


class CommandFailed(typer.Exit):
    """A command's failure: its exit code, and what ``--json`` prints of it on stdout.

    Why an Exit: every ``raise fail(...)`` in the commands ends the command as before, and
    :func:`handle_errors` finds each failure, whoever raised it, in one place to print it as JSON.
    """

    def __init__(
        self, message: str, code: int, status: str, run_id: int | None = None, extra: dict[str, Any] | None = None
    ) -> None:
        super().__init__(code)
        self.message, self.status, self.run_id = message, status, run_id
        #: The command's own result keys, printed with the failure's (``mvsync auth status``'s report).
        self.extra = dict(extra or {})
        #: Printed on stdout already (by :func:`handle_errors`): :class:`JsonFailureGroup` does not repeat it.
        self.printed = False

    def print_json(self) -> None:
        """Print the failure object on stdout (once)."""
        if not self.printed:
            self.printed = True
            print_json(self.as_dict())

    def as_dict(self) -> dict[str, Any]:
        """The failure object (README: Exit codes). Its message is redacted as a JSON log record's
        is: stdout goes to the same log files, and an exception's text may quote a credential.
        ``extra`` keys come first; the documented keys are always the failure's own."""
        return {
            **self.extra,
            "status": self.status,
            "exit_code": self.exit_code,
            "message": redact(self.message),
            "run_id": self.run_id,
        }


def fail(
    message: str,
    code: int = EXIT_CONFIG,
    *,
    status: str | None = None,
    cause: BaseException | None = None,
    extra: dict[str, Any] | None = None,
) -> CommandFailed:
    """Say ``message`` (rich markup) on stderr and return the failure to raise.

    ``status`` defaults to the exit code's; ``cause`` is the exception that ended the command: the
    engine names on it the run that history recorded (``run_id`` in the failure object). ``extra``:
    what the command reports besides, kept in its ``--json`` failure object (a check's findings).
    """
    run_id = None
    if cause is not None:
        from connector.engine import recorded_run_id

        run_id = recorded_run_id(cause)
    failure = CommandFailed(
        Text.from_markup(message).plain, code, status or _FAILURE_STATUS.get(code, "error"), run_id, extra
    )
    if logs_as_json():  # --log-format json: stderr holds only JSON lines, this one too
        log.error("%s", failure.message, extra={"status": failure.status, "exit_code": code, "run_id": run_id})
    else:
        err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return failure


#: Signals that end a run the way Ctrl-C does: SIGTERM (systemd stop, ``docker stop``, ``kill``),
#: SIGHUP (the terminal or SSH session went away; POSIX) and SIGBREAK (Ctrl-Break; Windows).
_STOP_SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGTERM", "SIGHUP", "SIGBREAK")) if s is not None)
#: The signal a console event (the window closed: :mod:`connector.cli._console`) raises in the main
#: thread: SIGBREAK, as the C runtime makes of it (SIGTERM where there is none: only tests call it there).
_CONSOLE_SIGNAL = getattr(signal, "SIGBREAK", signal.SIGTERM)


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
    events: list[str] = []  # a console event that stands behind the signal (Windows)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # once: a second signal while the first one unwinds would cut short the very history
        # writes it is unwinding to (a service manager that will not wait sends SIGKILL anyway)
        if not raised:
            raised.append(signum)
            raise Interrupted(events[0] if events else signal.Signals(signum).name, signum)

    def on_console_event(name: str) -> None:  # on the thread Windows runs console handlers on
        events.append(name)
        _thread.interrupt_main(_CONSOLE_SIGNAL)

    previous = {sig: signal.signal(sig, on_signal) for sig in _STOP_SIGNALS}
    guard = ConsoleCloseGuard(on_console_event)
    remove_guard = install_console_guard(guard)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        guard.unwound.set()  # the run has recorded its end: Windows may end the process now
        remove_guard()


def interrupted_exit_code(exc: KeyboardInterrupt) -> int:
    """128 + the signal's number, as shells report a process a signal ended (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + int(getattr(exc, "signal_number", signal.SIGINT))


P = ParamSpec("P")
R = TypeVar("R")


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn known errors into their exit codes with a one-line message instead of a traceback.

    With ``--json`` (a ``json_out`` argument) every failure also prints one JSON object on stdout,
    a bug's too (its traceback still follows on stderr). Why here: this wrapper sees how every
    command ends, so no command prints a failure of its own and none can forget to.
    """

    @wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        json_out = bool(kwargs.get("json_out"))
        try:
            return func(*args, **kwargs)
        except CommandFailed as exc:
            if json_out:
                exc.print_json()
            raise
        except (typer.Exit, typer.TyperException):
            raise  # the command's own ending (its output says how it went); click's errors: JsonFailureGroup's
        except BaseException as exc:
            failure = _failure(exc)
            if json_out and isinstance(exc, Exception | KeyboardInterrupt):
                (failure or _unexpected(exc)).print_json()
            if failure is None:
                raise  # a bug: its traceback follows
            raise failure from None

    return wrapper


class JsonFailureGroup(TyperGroup):
    """The ``mvsync`` group: with ``--json`` on the command line, the failures no command saw print
    their failure object too.

    Why: click refuses a usage error (an unknown option or command, a value of the wrong type)
    before any command runs, and the root options' checks (``--log-level``) run before the
    command's :func:`handle_errors`; without this a scheduler's ``--json >> cycle.jsonl`` got no
    line for them. click still says them on stderr, with exit code 2, as before.
    """

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        wants_json = "--json" in args
        _invoked[:] = _command_words(self, args)
        try:
            ctx = super().make_context(info_name, args, parent, **extra)
        except typer.TyperException as exc:  # an error in the root's own options
            if wants_json:
                _unexpected(exc).print_json()
            raise
        ctx.meta[_WANTS_JSON] = wants_json
        return ctx

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except typer.TyperException as exc:  # a usage error of a command, or raised in one
            if ctx.meta.get(_WANTS_JSON):
                _unexpected(exc).print_json()
            raise
        except CommandFailed as exc:  # printed already, unless the root's callback refused its options
            if ctx.meta.get(_WANTS_JSON):
                exc.print_json()
            raise


_WANTS_JSON = "mvsync.wants_json"


def _failure(exc: BaseException) -> CommandFailed | None:
    """The failure a known error ends a command with (its line said on stderr); None for the others."""
    from connector.config import ConfigError
    from connector.sdk import ConfigurationError
    from connector.store import LockHeldError, StoreError

    # an error's text is text, not rich markup: "pip install 'mvsync[emulator]'" must arrive whole
    if isinstance(exc, ConfigError | ConfigurationError):
        return fail(escape(str(exc)), EXIT_CONFIG, cause=exc)
    if isinstance(exc, StoreError):  # read-only, damaged, busy (5, a lock) or missing (2); never a traceback
        return fail(escape(str(exc)), exc.exit_code, status=exc.status, cause=exc)
    if isinstance(exc, LockHeldError):
        return fail(escape(str(exc)), EXIT_LOCKED, cause=exc)
    if isinstance(exc, KeyboardInterrupt):  # Ctrl-C, or a stop signal (``mvsync run`` says more)
        how = getattr(exc, "signal_name", "Ctrl-C")
        return fail(f"interrupted by {how}", interrupted_exit_code(exc), status="stopped-interrupted", cause=exc)
    return None


def _unexpected(exc: BaseException) -> CommandFailed:
    """The failure object of an error no rule knows: a bug (exit 1), or click's usage error."""
    if isinstance(exc, typer.TyperException):  # click's (typer's own copy of click, since typer 0.26)
        return CommandFailed(exc.format_message(), exc.exit_code, _FAILURE_STATUS.get(exc.exit_code, "error"))
    from connector.engine import recorded_run_id

    message = f"unexpected {type(exc).__name__}: {exc} (a bug: the traceback is in the error output)"
    return CommandFailed(message, EXIT_INTERNAL, _FAILURE_STATUS[EXIT_INTERNAL], recorded_run_id(exc))
