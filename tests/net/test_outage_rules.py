"""The pure rules behind "is it the service or this object?" (connector.net), without a network.

The agents' behaviour under real outages is tested against the emulators in
tests/agents/exchange_online/test_network_errors.py and tests/agents/exchange_server.
"""

from __future__ import annotations

import threading
import time

import pytest
import requests

from connector.net import RECHECKED, SILENCE, AnswerClock, fails_again, unanswered_outage


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


def _clock(answered_after_start: bool) -> tuple[AnswerClock, float]:
    started = time.monotonic()
    clock = AnswerClock()
    clock._last = started + (1.0 if answered_after_start else -1.0)  # (no sleep: the order is what counts)
    return clock, started


@pytest.mark.parametrize(
    ("failure", "silent", "recheck", "expected"),
    [
        (requests.ConnectionError("Connection refused"), True, None, SILENCE),  # nobody there: silence settles it
        (requests.ConnectionError("Connection reset by peer"), True, RECHECKED, RECHECKED),
        (requests.ConnectionError("Connection reset by peer"), True, None, None),  # the recheck answered
        (requests.ConnectionError("Connection refused"), False, RECHECKED, None),  # another request worked
    ],
    ids=["refused-silence", "reset-rechecked-down", "reset-rechecked-up", "answered-meanwhile"],
)
def test_a_request_without_an_answer_is_an_outage_by_one_rule(
    failure: requests.RequestException, silent: bool, recheck: str | None, expected: str | None
) -> None:
    """The rule both Exchange clients share (connector.net.unanswered_outage): a reset, which had
    reached the server, is rechecked; a refusal is settled by silence; another working answer clears it."""
    clock, started = _clock(answered_after_start=not silent)
    asked: list[bool] = []

    def ask() -> str | None:
        asked.append(True)
        return recheck

    assert unanswered_outage(failure, clock, started, ask) == expected
    assert asked == ([True] if silent and "reset" in str(failure) else [])
