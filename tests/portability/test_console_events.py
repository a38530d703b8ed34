"""Closing the console window (or logging off, or shutting down) ends ``mvsync run`` with its end recorded.

Windows calls a console process's control handlers on a thread of their own and ends the process as
soon as one returns TRUE for these events (learn.microsoft.com, "HandlerRoutine callback function").
The C runtime turns every event but Ctrl-C into SIGBREAK, whose Python handler only notes the signal
and returns: the process was gone before the run's ``finally`` blocks wrote its end to history.

These machines have no console events, so the test plays Windows' part: it calls the guard that
``stop_signals_interrupt`` registers (with ``SetConsoleCtrlHandler`` on Windows) from another thread,
as Windows does, while the main thread is at work. The registration itself (ctypes, kernel32) is
type-checked for win32 and has not run on Windows.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable

import pytest

import connector.cli._common as common
import connector.cli._console as console
from connector.cli._common import stop_signals_interrupt
from connector.engine import Interrupted

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="plays Windows' part with a stand-in registration")

CTRL_C_EVENT, CTRL_BREAK_EVENT = 0, 1


def _registered(monkeypatch: pytest.MonkeyPatch) -> list[console.ConsoleCloseGuard]:
    """The guards ``stop_signals_interrupt`` hands to Windows, kept here instead."""
    guards: list[console.ConsoleCloseGuard] = []

    def register(guard: console.ConsoleCloseGuard) -> Callable[[], None]:
        guards.append(guard)
        return guards.clear  # removed once the run has unwound

    monkeypatch.setattr(common, "install_console_guard", register)
    return guards


def test_closing_the_console_interrupts_the_run_and_holds_the_event_until_it_unwound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # what Windows gives a close (5 s) is not this test's clock: the guard must wait for the unwinding
    monkeypatch.setitem(console.HOLD_S, console.CTRL_CLOSE_EVENT, 600.0)
    guards = _registered(monkeypatch)
    answers: list[bool] = []
    held_while_unwinding: list[bool] = []

    def close_the_window() -> None:  # Windows: a new thread in the process runs the handler
        answers.append(guards[0](console.CTRL_CLOSE_EVENT))

    windows = threading.Thread(target=close_the_window)
    with pytest.raises(Interrupted) as caught, stop_signals_interrupt():
        (guard,) = guards
        # Ctrl-C and Ctrl-Break go on to the C runtime's handler (SIGINT, SIGBREAK) untouched
        assert guard(CTRL_C_EVENT) is False and guard(CTRL_BREAK_EVENT) is False
        try:
            windows.start()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:  # the run at work, until the interruption ends it
                time.sleep(0.01)
            pytest.fail("closing the console did not interrupt the run")
        finally:  # the run's history writes: Windows must not end the process before they are done
            held_while_unwinding.append(windows.is_alive() and not answers)
    windows.join(timeout=60)
    assert held_while_unwinding == [True] and guards == []
    assert answers == [True]  # handled: Windows ends the process now, after the run has recorded its end
    assert caught.value.signal_name == "CTRL_CLOSE_EVENT" and isinstance(caught.value, KeyboardInterrupt)


def test_the_guard_lets_go_when_the_time_windows_gives_is_up() -> None:
    interrupted: list[str] = []
    guard = console.ConsoleCloseGuard(interrupted.append)
    console.HOLD_S[console.CTRL_SHUTDOWN_EVENT], before = 0.0, console.HOLD_S[console.CTRL_SHUTDOWN_EVENT]
    try:
        assert guard(console.CTRL_SHUTDOWN_EVENT) is True  # nobody unwound: it still answers in time
    finally:
        console.HOLD_S[console.CTRL_SHUTDOWN_EVENT] = before
    assert interrupted == ["CTRL_SHUTDOWN_EVENT"]
    assert max(console.HOLD_S.values()) < 20  # Windows waits 5 s for a close, 20 s for log-off or shut-down
    assert console.HOLD_S[console.CTRL_CLOSE_EVENT] < 5


def test_off_windows_nothing_is_registered() -> None:
    remove = console.install_console_guard(console.ConsoleCloseGuard(lambda _why: None))
    remove()  # no error, no effect
