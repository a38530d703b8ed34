"""Standard output (or error) that cannot be written (a full disk, a file system gone read-only, a pipe whose
reader went away) ends no command.

A scheduled run writes its result where the scheduler sends stdout: ``>> /var/log/mvsync/cycle.jsonl``
in the README's cron line. When that disk is full, the run has already done its work and recorded it
in history, and only printing its result fails. Raised, the ``OSError`` became a traceback and exit
code 1 ("a bug"), and the run's own exit code (0, 3, 4, 5, 2 ...), which is what the scheduler alerts
on, was lost with it. So a write that fails is said once on stderr, naming where stdout goes, the
rest of the output is dropped, and the command ends with its own exit code.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
from typing import Any, TextIO, cast

from connector.logging import logs_as_json

__all__ = ["guard_output"]

log = logging.getLogger("mvsync.cli")


class _GuardedStream:
    """A text stream that passes everything to ``stream``, until a write or flush of it fails.

    ``say``: whether to say so on stderr (stdout's guard); stderr's own guard has nowhere to say it.
    """

    def __init__(self, stream: TextIO, *, say: bool) -> None:
        self._stream = stream
        self._where = _where(stream)
        self._say = say
        self._lost = False

    def write(self, text: str) -> int:
        if not self._lost:
            try:
                return self._stream.write(text)
            except OSError as exc:
                self._lose(exc)
        return len(text)

    def flush(self) -> None:
        if not self._lost:
            try:
                self._stream.flush()
            except OSError as exc:
                self._lose(exc)

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding ... as the stream has them
        return getattr(self._stream, name)

    def _lose(self, exc: OSError) -> None:
        """Drop the output from now on, and say why (a reader that went away is no news)."""
        self._lost = True
        _discard(self._stream)
        if not self._say or exc.errno == errno.EPIPE:
            return
        message = (
            f"cannot write to {self._where}: {exc.strerror or exc}; what the command prints there is lost, "
            "it goes on and its exit code says how it ended (a run is in `mvsync history list`); free space "
            "there, or fix the file"
        )
        with contextlib.suppress(OSError, ValueError):  # stderr may be on the same full disk
            if logs_as_json():
                log.error("%s", message, extra={"status": "error-output"})
            else:
                sys.stderr.write(f"error: {message}\n")
                sys.stderr.flush()


def _where(stream: TextIO) -> str:
    """The file stdout goes to, where the system says it (Linux's /proc), else 'the standard output'."""
    with contextlib.suppress(OSError, ValueError):
        target = os.readlink(f"/proc/self/fd/{stream.fileno()}")
        if target.startswith("/"):  # not pipe:[...] or socket:[...]
            return f"the standard output ({target})"
    return "the standard output"


def _discard(stream: TextIO) -> None:
    """Point the stream's file descriptor at the null device, so that what its buffer still holds
    goes nowhere when the interpreter flushes it on exit (a failure there would make the exit code 120)."""
    with contextlib.suppress(OSError, ValueError):
        null = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, stream.fileno())
        finally:
            os.close(null)


def guard_output() -> None:
    """Replace ``sys.stdout`` and ``sys.stderr`` by guarded ones (once; the consoles, ``print_json``
    and the log handlers write through them). A full disk under stderr must not turn a command's
    ``error:`` line into exit code 1 either."""
    if not isinstance(sys.stdout, _GuardedStream):
        _escape_what_the_encoding_lacks(sys.stdout)
        sys.stdout = cast(TextIO, _GuardedStream(sys.stdout, say=True))
    if not isinstance(sys.stderr, _GuardedStream):
        sys.stderr = cast(TextIO, _GuardedStream(sys.stderr, say=False))


def _escape_what_the_encoding_lacks(stream: TextIO) -> None:
    """Write a character that ``stream``'s encoding lacks as ``\\uXXXX`` rather than fail.

    Why: on Windows, stdout redirected to a file or a pipe is in the ANSI code page (cp1252 on a
    Western European server) with the 'strict' error handler (Python docs, ``sys.stdout``), so the first
    check mark or ``Łukasz`` that a command prints raised ``UnicodeEncodeError``: a traceback, exit code
    1, the rest of the report lost. stderr already escapes so. The encoding stays what Windows tools
    expect of a redirected program; UTF-8 output (a console, Linux) has nothing to escape.
    """
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        with contextlib.suppress(ValueError):  # a stream that cannot change now: left as it is
            reconfigure(errors="backslashreplace")
