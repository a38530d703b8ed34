"""The pure rules behind "is it the service or this object?" (connector.net), without a network.

The agents' behaviour under real outages is tested against the emulators in
tests/agents/exchange_online/test_network_errors.py and tests/agents/exchange_server.
"""

from __future__ import annotations

import threading
import time

from connector.net import fails_again


class _Asked:
    """A recheck whose answers are scripted: True (a working answer) or False (a 5xx, no answer)."""

    def __init__(self, *answers: bool) -> None:
        self.answers = list(answers)
        self.calls = 0

    def __call__(self) -> bool:
        self.calls += 1
        return self.answers.pop(0)


def test_a_recheck_that_fails_twice_says_the_service_is_down() -> None:
    asked = _Asked(False, False)
    assert fails_again(asked, threading.Event(), 0.0) is True
    assert asked.calls == 2


def test_a_recheck_that_answers_once_clears_the_service_and_asks_no_more() -> None:
    first = _Asked(True)
    assert fails_again(first, threading.Event(), 0.0) is False and first.calls == 1
    second = _Asked(False, True)  # one stray 5xx does not stop a step
    assert fails_again(second, threading.Event(), 0.0) is False and second.calls == 2


def test_a_stopping_step_blames_nobody_and_sends_nothing() -> None:
    stopping = threading.Event()
    stopping.set()
    asked = _Asked()
    assert fails_again(asked, stopping, 10.0) is False and asked.calls == 0


def test_a_step_stopping_during_the_wait_ends_the_recheck_at_once() -> None:
    stopping = threading.Event()

    def fail_then_stop() -> bool:
        stopping.set()  # the step is told to stop while the first recheck is out
        return False

    started = time.monotonic()
    assert fails_again(fail_then_stop, stopping, 30.0) is False
    assert time.monotonic() - started < 30.0  # did not sit out the wait
