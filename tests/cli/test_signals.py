"""Stop signals end ``mvsync run`` the way Ctrl-C does (the real process: tests/resilience/test_interruptions.py)."""

from __future__ import annotations

import signal
import sys

import pytest

from connector.cli._common import interrupted_exit_code, stop_signals_interrupt
from connector.engine import Interrupted

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="sends itself POSIX signals")


def test_sigterm_raises_an_interruption_once_and_the_old_handler_comes_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(Interrupted) as caught, stop_signals_interrupt():
        try:
            signal.raise_signal(signal.SIGTERM)  # to this thread: handled before the next line
        finally:
            # a second signal while the first unwinds is not allowed to cut the unwinding short
            signal.raise_signal(signal.SIGHUP)
    assert caught.value.signal_name == "SIGTERM" and isinstance(caught.value, KeyboardInterrupt)
    assert interrupted_exit_code(caught.value) == 143
    assert signal.getsignal(signal.SIGTERM) is before


def test_ctrl_c_exits_130() -> None:
    assert interrupted_exit_code(KeyboardInterrupt()) == 130
    assert interrupted_exit_code(Interrupted("SIGHUP", signal.SIGHUP)) == 129
