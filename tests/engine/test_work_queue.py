"""The engine's queue of deferred import work: per-key limits, not-before times, closing.

(Moved from the Exchange Online agent's pipeline with the machinery itself: import contract v2.)
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from connector.engine._stream import Job, WorkQueue
from connector.sdk import Deferred, ImportItem, Worker


class _Idle(Worker[str]):
    def run(self, tasks: list[Deferred[str]], cancel: threading.Event) -> list[list[ImportItem]]:
        return [[] for _ in tasks]


_WORKER = _Idle()


def job(key: str, ready_at: float = 0.0) -> Job:
    """A task for mailbox ``key``, not to start before ``ready_at`` (``time.monotonic()``)."""
    return Job(Deferred(_WORKER, key, key=key, not_before=ready_at), origin=0)


def _take_in_thread(q: WorkQueue, n: int) -> tuple[threading.Thread, list[Any]]:
    got: list[Any] = []

    def run() -> None:
        got.append(q.take(n))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, got


def test_work_queue_never_exceeds_per_mailbox_for_one_user() -> None:
    q = WorkQueue(per_key=1)
    a1, a2, a3, b1 = job("a"), job("a"), job("a"), job("b")
    for task in (a1, a2, a3, b1):
        q.put(task)
    first = q.take(10)
    assert first == [a1, b1]  # one task for "a" although three are ready; "b" is not held up
    # everything left is for the busy mailbox: a second worker waits instead of doubling up
    thread, got = _take_in_thread(q, 10)
    thread.join(0.3)
    assert thread.is_alive() and got == []
    q.done([b1])  # another mailbox finishing frees nothing for "a"
    thread.join(0.3)
    assert thread.is_alive() and got == []
    q.done([a1])
    thread.join(5)
    assert got == [[a2]]  # the skipped tasks kept their order
    q.done([a2])
    assert q.take(10) == [a3]
    q.close()

    two = WorkQueue(per_key=2)
    for task in (job("a"), job("a"), job("a"), job("b")):
        two.put(task)
    assert [t.deferred.key for t in two.take(10) or []] == ["a", "a", "b"]
    two.close()


def test_work_queue_per_mailbox_holds_under_concurrent_workers() -> None:
    per_mailbox = 2
    q = WorkQueue(per_key=per_mailbox)
    users = [f"user-{i}" for i in range(3)]
    total = 90
    for i in range(total):
        q.put(job(users[i % len(users)]))
    lock = threading.Lock()
    in_flight: Counter[str] = Counter()
    peak: Counter[str] = Counter()
    handled: list[str] = []

    def worker() -> None:
        while True:
            tasks = q.take(4)
            if tasks is None:
                return
            with lock:
                for task in tasks:
                    in_flight[task.deferred.key] += 1
                    peak[task.deferred.key] = max(peak[task.deferred.key], in_flight[task.deferred.key])
            time.sleep(0.002)
            with lock:
                for task in tasks:
                    in_flight[task.deferred.key] -= 1
                    handled.append(task.deferred.key)
                finished = len(handled) == total
            q.done(tasks)
            if finished:
                q.close()

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert not any(t.is_alive() for t in threads)
    assert len(handled) == total and Counter(handled) == Counter({u: total // len(users) for u in users})
    assert max(peak.values()) == per_mailbox  # reached, never exceeded


def test_work_queue_hands_out_retries_only_after_ready_at() -> None:
    q = WorkQueue(per_key=4)
    delay = 0.4
    retry = job("late", ready_at=time.monotonic() + delay)
    q.put(retry)
    fresh = job("early")
    q.put(fresh)
    assert q.take(10) == [fresh]  # the fresh task goes first, the retry waits
    q.done([fresh])

    started = time.monotonic()
    thread, got = _take_in_thread(q, 10)
    thread.join(delay / 2)
    assert thread.is_alive() and got == []  # not before its not-before time
    thread.join(5)
    assert got == [[retry]]
    assert time.monotonic() >= retry.deferred.not_before
    assert time.monotonic() - started >= delay / 2

    # a retry whose time has already come is handed out at once, ahead of fresh work put after it
    past = job("past", ready_at=time.monotonic() - 1)
    q.put(past)
    q.put(job("new"))
    assert [t.deferred.key for t in q.take(1) or []] == ["past"]
    q.close()


def test_work_queue_take_returns_none_after_close() -> None:
    q = WorkQueue(per_key=1)
    # a worker blocked on an empty queue wakes up with None when the queue closes
    thread, got = _take_in_thread(q, 5)
    thread.join(0.2)
    assert thread.is_alive()
    q.close()
    thread.join(5)
    assert not thread.is_alive() and got == [None]
    # and once closed, take() answers None at once, even with tasks (ready or delayed) still queued
    q.put(job("a"))
    q.put(job("b", ready_at=time.monotonic() + 60))
    started = time.monotonic()
    assert q.take(120) is None
    assert time.monotonic() - started < 60  # did not sit out the two-minute wait (however busy the machine)


def test_work_queue_puts_a_task_handed_back_unsent_first_in_line() -> None:
    q = WorkQueue(per_key=1)
    first, second, back = job("a"), job("b"), job("c")
    q.put(first)
    q.put(second)
    q.put(back, front=True)  # taken earlier, not sent (no room in the limiter): it keeps its turn
    assert [j.deferred.key for j in q.take(3) or []] == ["c", "a", "b"]
    q.close()


def test_a_take_gets_the_workers_share_of_what_waits_never_more_than_asked() -> None:
    """Once the stream has yielded everything, ``Worker.take_size`` sizes a take by the tasks
    waiting; ``take(n)`` still caps it.

    Shared among four lanes, 30 waiting tasks go 8, 6, 4, 3, ...: the last tasks of a run spread
    over the lanes instead of filling one batch while the others idle. Before the end, more work
    keeps coming: a take gets a full batch.
    """
    waiting_seen: list[int] = []

    def four_lanes(waiting: int) -> int:
        waiting_seen.append(waiting)
        return -(-waiting // 4)

    q = WorkQueue(per_key=0, take_size=four_lanes)
    for n in range(50):
        q.put(job(f"u{n}"))
    assert len(q.take(20) or []) == 20 and waiting_seen == []  # mid-run: a full batch
    q.ending()
    sizes = [len(q.take(20) or []) for _ in range(4)]
    assert sizes == [8, 6, 4, 3]
    assert waiting_seen == [30, 22, 16, 12]
    assert len(q.take(2) or []) == 2  # the caller's n still caps it (ceil(9/4) = 3)
    q.close()

    whole = WorkQueue(per_key=0, take_size=_WORKER.take_size)  # the default: a full batch_size (1)
    whole.ending()
    for n in range(3):
        whole.put(job(f"v{n}"))
    assert len(whole.take(20) or []) == 1
    plain = WorkQueue(per_key=0)  # no worker rule: n
    plain.ending()
    for n in range(3):
        plain.put(job(f"w{n}"))
    assert len(plain.take(2) or []) == 2
    whole.close()
    plain.close()
