"""Waits that Ctrl-C ends at once, on Windows too.

Why: Ctrl-C, Ctrl-Break and a stop signal raise ``KeyboardInterrupt`` in the main thread, and only
when that thread next runs Python code. On Linux a signal also cuts a blocking wait short, so any
wait notices it at once. On Windows, before Python 3.14, a wait on a lock does not wake for it:
``Event.wait``, ``Future.result`` and ``concurrent.futures.wait`` without a time-out, or with a long
one, sit until the thing waited for happens (CPython bpo-29971, "threading.Lock.acquire() not
interruptible on Windows"; Python 3.14 wakes a lock wait for Ctrl-C, gh-125541). A run waiting for
an LDAP write or a Graph PUT to a hung server then ignored Ctrl-C until that request timed out, and
a scheduler's stop signal with it.

These waits wake every :data:`POLL_S` seconds, so Python raises the interruption within that time.
Connector code that waits for its own threads in the main thread uses them instead of the
``threading`` and ``concurrent.futures`` calls.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from concurrent.futures import wait as _wait_futures
from typing import Any

__all__ = ["POLL_S", "Underway", "wait_all", "wait_event", "wait_until"]

#: The longest a wait goes without giving Python a chance to raise an interruption.
POLL_S = 0.25


def wait_until(ready: Callable[[float], bool], timeout: float | None = None) -> bool:
    """Call ``ready(seconds)`` (a wait of at most ``seconds`` that says whether its thing happened)
    in slices of :data:`POLL_S` until it says True, or ``timeout`` has passed; what it said last."""
    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    while True:
        left = POLL_S if deadline is None else min(POLL_S, deadline - time.monotonic())
        if ready(max(0.0, left)):
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False


def wait_event(event: threading.Event, timeout: float | None = None) -> bool:
    """``event.wait(timeout)``, ended by Ctrl-C within :data:`POLL_S` on Windows too."""
    return wait_until(event.wait, timeout)


def wait_all(futures: Iterable[Future[Any]], timeout: float | None = None) -> bool:
    """Wait until every future is done (finished, failed or cancelled), or ``timeout``; whether all are.

    Ended by Ctrl-C within :data:`POLL_S` on Windows too. The futures' results and errors are left
    to the caller (``future.result()`` returns at once afterwards).
    """
    pending = set(futures)

    def ready(seconds: float) -> bool:
        nonlocal pending
        pending = _wait_futures(pending, timeout=seconds).not_done
        return not pending

    return wait_until(ready, timeout)


class Underway:
    """Work that threads have started and not yet recorded: what an interruption waits for.

    Why a count, not the futures: an interruption can come in after ``submit`` handed work to a
    thread that is starting and before its future was kept; that work would then be neither waited
    for nor recorded. A worker counts itself in :meth:`one`, and the interrupted thread waits with
    ``wait_until(underway.idle)`` (a worker that starts after the count fell to 0 checks the
    interruption before doing anything).
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._count = 0

    @property
    def count(self) -> int:
        return self._count

    @contextlib.contextmanager
    def one(self) -> Iterator[None]:
        """Count the calling thread's work as under way for the ``with`` block."""
        with self._cond:
            self._count += 1
        try:
            yield
        finally:
            with self._cond:
                self._count -= 1
                if not self._count:
                    self._cond.notify_all()

    def idle(self, seconds: float) -> bool:
        """Wait at most ``seconds`` until nothing is under way; whether nothing is."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._count, seconds)
