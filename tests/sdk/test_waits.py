"""``connector.sdk``'s waits: what they return, and that Ctrl-C ends them the way it comes on Windows."""

from __future__ import annotations

import _thread
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from connector.sdk import Underway, wait_all, wait_event, wait_until


def test_wait_all_says_whether_every_future_is_done() -> None:
    release = threading.Event()
    with ThreadPoolExecutor(2) as pool:
        quick = pool.submit(lambda: 1)
        held = pool.submit(release.wait)
        assert wait_all([quick]) is True
        assert wait_all([quick, held], timeout=0.05) is False  # not done in time: says so, raises nothing
        release.set()
        assert wait_all([quick, held], timeout=30) is True
    assert wait_all([]) is True


def test_wait_event_and_wait_until_keep_their_time_out() -> None:
    event = threading.Event()
    assert wait_event(event, 0.0) is False
    assert wait_event(event, 0.05) is False
    event.set()
    assert wait_event(event) is True
    calls: list[float] = []

    def never(seconds: float) -> bool:
        calls.append(seconds)
        return False

    assert wait_until(never, 0.0) is False
    assert calls == [0.0]  # asked once, for no time at all


def test_underway_counts_the_work_in_its_blocks_and_says_when_none_is_left() -> None:
    underway = Underway()
    assert underway.count == 0 and underway.idle(0.0)
    inside, leave = threading.Event(), threading.Event()

    def work() -> None:
        with underway.one():
            inside.set()
            leave.wait(30)

    worker = threading.Thread(target=work)
    worker.start()
    assert inside.wait(30)
    assert underway.count == 1 and not underway.idle(0.05)
    leave.set()
    assert wait_until(underway.idle, 30) and underway.count == 0
    worker.join(30)


@pytest.mark.usefixtures("ctrl_c_raises")
@pytest.mark.parametrize("waiting_for", ["a-future", "an-event"])
def test_ctrl_c_the_windows_way_ends_the_wait(waiting_for: str) -> None:
    """On Windows before Python 3.14 nothing cuts a lock wait short (CPython bpo-29971, gh-125541): Ctrl-C is raised
    only when the main thread next runs Python code, so ``future.result()`` or ``event.wait()`` sat until their
    thing happened. ``_thread.interrupt_main`` raises the interruption that same way, on Linux too. The waits here
    wake to let Python raise it while the thing waited for is still pending (it never happens in this test)."""
    never = threading.Event()
    future: Future[None] = Future()  # never finished
    with pytest.raises(KeyboardInterrupt):  # (the timer inside: its interruption may land before the wait)
        threading.Timer(0.05, _thread.interrupt_main).start()
        if waiting_for == "a-future":
            wait_all([future])
        else:
            wait_event(never)
    assert not future.done() and not never.is_set()
