"""Closing the console window ends ``mvsync run`` the way Ctrl-Break does, its end recorded (Windows).

Why: Windows tells a console process that its window is being closed (the window's Close button,
Task Manager's *End task*: ``CTRL_CLOSE_EVENT``), that its user logs off or that the machine shuts
down (``CTRL_LOGOFF_EVENT``, ``CTRL_SHUTDOWN_EVENT``) by calling the process's console control
handlers, last registered first, on a new thread, and ends the process as soon as one of them
returns TRUE, or after 5 s (a close) or 20 s (log-off, shut-down) in any case (learn.microsoft.com,
"HandlerRoutine callback function"). The C runtime's handler turns each of these events into
SIGBREAK, and Python's handler for that only notes the signal and returns TRUE: the process was
ended before the ``finally`` blocks that record the run's end could run, and history kept the run
``in-progress`` until the next run found its process gone.

:class:`ConsoleCloseGuard`, registered after the C runtime's handler (so called before it), raises
the interruption in the main thread as Ctrl-Break does and holds the event until the run has
unwound, or until the time Windows gives is nearly up. Ctrl-C and Ctrl-Break it leaves to the C
runtime. Off Windows there are no console events and nothing is registered.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable

__all__ = ["CTRL_CLOSE_EVENT", "HOLD_S", "ConsoleCloseGuard", "install_console_guard"]

log = logging.getLogger("mvsync.cli")

#: The events that end the process (wincon.h values).
CTRL_CLOSE_EVENT = 2
CTRL_LOGOFF_EVENT = 5
CTRL_SHUTDOWN_EVENT = 6
_EVENT_NAMES = {
    CTRL_CLOSE_EVENT: "CTRL_CLOSE_EVENT",
    CTRL_LOGOFF_EVENT: "CTRL_LOGOFF_EVENT",
    CTRL_SHUTDOWN_EVENT: "CTRL_SHUTDOWN_EVENT",
}

#: Seconds the guard holds each event for the run to unwind: a little less than Windows waits before
#: it ends the process anyway, so that the guard, not the time-out, lets the process go.
HOLD_S = {CTRL_CLOSE_EVENT: 4.5, CTRL_LOGOFF_EVENT: 18.0, CTRL_SHUTDOWN_EVENT: 18.0}

#: The ctypes callbacks handed to Windows, kept for the life of the process: Windows may be running
#: one on its thread when the run removes it, and freeing it then would pull the code from under it.
_KEPT: list[object] = []


class ConsoleCloseGuard:
    """A console control handler: ``interrupt(event name)`` for an event that ends the process, then
    wait (at most :data:`HOLD_S`) for :attr:`unwound`, which the run sets once it has recorded its end."""

    def __init__(self, interrupt: Callable[[str], None]) -> None:
        self._interrupt = interrupt
        self.unwound = threading.Event()

    def __call__(self, ctrl_type: int) -> bool:
        name = _EVENT_NAMES.get(ctrl_type)
        if name is None:
            return False  # Ctrl-C, Ctrl-Break: the C runtime's handler makes them SIGINT and SIGBREAK
        self._interrupt(name)
        self.unwound.wait(HOLD_S[ctrl_type])
        return True


def install_console_guard(guard: ConsoleCloseGuard) -> Callable[[], None]:
    """Register ``guard`` as a console control handler; the function that removes it (Windows only)."""
    if sys.platform == "win32":
        import ctypes
        from ctypes import wintypes

        routine = ctypes.WINFUNCTYPE(wintypes.BOOL, wintypes.DWORD)(guard)
        _KEPT.append(routine)
        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        if not kernel32.SetConsoleCtrlHandler(routine, True):  # no console (a service): no console events
            log.debug("no console control handler (error %d)", ctypes.get_last_error())
            return _nothing

        def remove() -> None:
            kernel32.SetConsoleCtrlHandler(routine, False)

        return remove
    return _nothing


def _nothing() -> None:
    """What removes a guard that was never registered."""
