"""The import pipeline: a lister thread, photo workers, and the engine's thread deciding.

Why a pipeline: the engine asks for one page at a time, and a page of photos fetched strictly
page by page leaves Graph idle while the last batches of a page finish and while the engine
writes. Here a *source* thread walks the directory (``users/delta`` pages, or the state file)
and emits events; *workers* send ``$batch`` requests (up to 20 items); the engine's thread, in
``import_page``, turns events into photo tasks and finished tasks into connector-space changes.

How many requests are in flight is not decided here: each worker takes its tasks, then asks the
client's shared :class:`~connector.throttling.AdaptiveLimiter` for a share of the limit (four units
for a batch, as Graph runs four items of a batch at a time), and sends as many items as it was
granted. There are enough workers to reach ``concurrency`` (the ceiling); the limiter decides how
many of them send at once.

Memory stays flat: the source blocks once ``max_ahead`` users are between listing and the engine
(so photo bytes held at once are bounded by ``max_ahead``, whatever the tenant's size).

Manners: a user's requests never overlap beyond ``per_mailbox_concurrency`` (the queue will not
hand out a second task for a busy mailbox); throttled batch items go back into the queue with their
``Retry-After`` as a not-before time and spend nothing; failed ones (5xx, resets) come back after a
backoff and spend the run's retry budget; other work proceeds meanwhile.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from connector.agents.exchange_online._graph import (
    BATCH_PARALLELISM,
    GraphClient,
    GraphResponse,
    RetryableError,
    is_pushback,
)
from connector.agents.exchange_online._photos import PhotoTask, read_response, task_request
from connector.throttling import Cancelled

__all__ = ["Fatal", "Pipeline", "SourceDone", "WorkQueue"]


@dataclass(slots=True)
class SourceDone:
    """The source finished; ``result`` is what it returned (the new delta link, for instance)."""

    result: Any


@dataclass(slots=True)
class Fatal:
    """A worker or the source hit an error that stops the step (authentication, server down)."""

    error: BaseException


class WorkQueue:
    """Photo tasks: fresh ones in order, retries after their not-before time, busy mailboxes skipped."""

    def __init__(self, per_mailbox: int) -> None:
        self.per_mailbox = per_mailbox
        self._fresh: deque[PhotoTask] = deque()
        self._delayed: list[tuple[float, int, PhotoTask]] = []
        self._seq = itertools.count()
        self._busy: Counter[str] = Counter()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, task: PhotoTask) -> None:
        with self._cond:
            if task.ready_at > time.monotonic():
                heapq.heappush(self._delayed, (task.ready_at, next(self._seq), task))
            else:
                self._fresh.append(task)
            self._cond.notify()

    def take(self, n: int) -> list[PhotoTask] | None:
        """Up to ``n`` ready tasks (blocks until there is one); None once closed."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                now = time.monotonic()
                while self._delayed and self._delayed[0][0] <= now:
                    self._fresh.appendleft(heapq.heappop(self._delayed)[2])
                out: list[PhotoTask] = []
                skipped: list[PhotoTask] = []
                while self._fresh and len(out) < n:
                    task = self._fresh.popleft()
                    if self._busy[task.user_id] >= self.per_mailbox:
                        skipped.append(task)
                        continue
                    self._busy[task.user_id] += 1
                    out.append(task)
                self._fresh.extendleft(reversed(skipped))
                if out:
                    return out
                timeout = self._delayed[0][0] - now if self._delayed else None
                self._cond.wait(timeout)

    def give_back(self, tasks: list[PhotoTask]) -> None:
        """Tasks taken but not sent (the limiter granted fewer units): first in line again."""
        with self._cond:
            self._fresh.extendleft(reversed(tasks))
            self._release(tasks)

    def done(self, tasks: list[PhotoTask]) -> None:
        with self._cond:
            self._release(tasks)

    def _release(self, tasks: list[PhotoTask]) -> None:
        """Their mailboxes are free again (called holding the lock)."""
        for task in tasks:
            self._busy[task.user_id] -= 1
            if self._busy[task.user_id] <= 0:
                del self._busy[task.user_id]
        self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class Pipeline:
    """Runs one source at a time plus the workers; ``events()`` feeds the engine's thread."""

    def __init__(self, client: GraphClient, *, max_ahead: int) -> None:
        self.client = client
        self.settings = client.settings
        self.queue = WorkQueue(self.settings.per_mailbox_concurrency)
        self.results: queue.Queue[Any] = queue.Queue()
        self.ahead = threading.Semaphore(max_ahead)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        # one more than the ceiling needs in whole batches, for the smaller batch that fills the rest
        workers = self.settings.concurrency // BATCH_PARALLELISM + 1
        for i in range(workers):
            self._spawn(self._worker, f"exo-photos-{i}")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    # -- the source -----------------------------------------------------------------------------
    def run_source(self, source: Callable[[Callable[[Any], None]], Any], name: str) -> None:
        """Start ``source(emit)`` on its own thread; ``emit`` blocks while too much is in flight."""

        def emit(event: Any) -> None:
            while not self.ahead.acquire(timeout=0.5):
                if self._stop.is_set():
                    raise _Stopped
            if self._stop.is_set():
                raise _Stopped
            self.results.put(event)

        def body() -> None:
            try:
                result = source(emit)
            except _Stopped:
                return
            except BaseException as exc:  # handed to the engine's thread, which raises it
                self.results.put(Fatal(exc))
                return
            self.results.put(SourceDone(result))

        self._spawn(body, f"exo-source-{name}")

    def release(self) -> None:
        """One emitted user is completely handled (no task left for it)."""
        self.ahead.release()

    # -- the workers ----------------------------------------------------------------------------
    def submit(self, task: PhotoTask) -> None:
        self.queue.put(task)

    def _worker(self) -> None:
        while not self._stop.is_set():
            tasks = self.queue.take(self.settings.batch_size)
            if tasks is None:
                return
            try:
                sent = self._send(tasks)
                for task, resp in sent:
                    self._settle(task, resp)
            except Cancelled:
                return
            except BaseException as exc:  # handed to the engine's thread, which stops the step
                self.results.put(Fatal(exc))
                self._stop.set()
                self.queue.close()
                return

    def _send(self, tasks: list[PhotoTask]) -> list[tuple[PhotoTask, GraphResponse]]:
        """One ``$batch`` of as many of ``tasks`` as the limiter has room for; the rest go back."""
        client = self.client
        # Take the tasks first, then the units: a worker holding units while it waits for tasks
        # would starve the lister that makes them.
        wanted = min(len(tasks), BATCH_PARALLELISM)
        try:
            ticket = client.limiter.acquire(wanted, at_least=1, cancel=self._stop)
        except BaseException:
            self.queue.done(tasks)
            raise
        if ticket.weight < wanted:  # room for a smaller batch only: send what fits
            self.queue.give_back(tasks[ticket.weight :])
            tasks = tasks[: ticket.weight]
        try:
            responses = client.batch([task_request(t) for t in tasks], ticket=ticket)
        except RetryableError as exc:  # connection trouble outlasted the retries
            failed = GraphResponse(503, {}, b"", {"error": {"code": "ConnectionError", "message": str(exc)}})
            responses = [failed for _ in tasks]
        finally:
            self.queue.done(tasks)
        return list(zip(tasks, responses, strict=True))

    def _settle(self, task: PhotoTask, resp: GraphResponse) -> None:
        wait = self.client.item_retry(task.attempt, resp) if not resp.ok and resp.status != 404 else None
        if wait is not None:
            if not is_pushback(resp.status, resp.retry_after):
                task.attempt += 1  # throttling is not an attempt: only failures count toward max_attempts
            task.ready_at = time.monotonic() + wait
            self.queue.put(task)
            return
        nxt = read_response(task, resp, self.settings.photo_size)
        if isinstance(nxt, PhotoTask):
            self.queue.put(nxt)
        else:
            self.results.put(nxt)

    # -- lifecycle ------------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()
        self.queue.close()
        deadline = time.monotonic() + 10.0
        for thread in self._threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._threads.clear()


class _Stopped(Exception):
    """The pipeline is shutting down: the source unwinds quietly."""
