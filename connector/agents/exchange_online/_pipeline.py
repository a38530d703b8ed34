"""The import pipeline: a lister thread, photo workers, and the engine's thread deciding.

Why a pipeline: the engine asks for one page at a time, and a page of photos fetched strictly
page by page leaves Graph idle while the last batches of a page finish and while the engine
writes. Here a *source* thread walks the directory (``users/delta`` pages, or the state file)
and emits events; *workers* send ``$batch`` requests (up to 20 items; as many batches in flight as
keep ``concurrency`` requests busy, counted the way Graph counts them); the engine's thread, in
``import_page``, turns events into photo tasks and finished tasks into connector-space changes.

Memory stays flat: the source blocks once ``max_ahead`` users are between listing and the engine
(so photo bytes held at once are bounded by ``max_ahead``, whatever the tenant's size).

Manners: a user's requests never overlap beyond ``per_mailbox_concurrency`` (the queue will not
hand out a second task for a busy mailbox); throttled or failed batch items go back into the
queue with their own ``Retry-After`` (or backoff) as a not-before time, spending the run's retry
budget; other work proceeds meanwhile.
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

from connector.agents.exchange_online._graph import GraphClient, GraphResponse, RetryableError
from connector.agents.exchange_online._photos import PhotoTask, read_response, task_request

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

    def done(self, tasks: list[PhotoTask]) -> None:
        with self._cond:
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
        workers = max(1, self.settings.concurrency // 4)
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
        client = self.client
        while not self._stop.is_set():
            tasks = self.queue.take(self.settings.batch_size)
            if tasks is None:
                return
            try:
                try:
                    responses = client.batch([task_request(t) for t in tasks])
                except RetryableError as exc:  # connection trouble outlasted the retries
                    failed = GraphResponse(503, {}, b"", {"error": {"code": "ConnectionError", "message": str(exc)}})
                    responses = [failed for _ in tasks]
            except BaseException as exc:
                self.queue.done(tasks)
                self.results.put(Fatal(exc))
                self._stop.set()
                self.queue.close()
                return
            self.queue.done(tasks)
            for task, resp in zip(tasks, responses, strict=True):
                self._settle(task, resp)

    def _settle(self, task: PhotoTask, resp: GraphResponse) -> None:
        wait = self.client.item_retry(task.attempt, resp) if not resp.ok and resp.status != 404 else None
        if wait is not None:
            task.attempt += 1
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
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()


class _Stopped(Exception):
    """The pipeline is shutting down: the source unwinds quietly."""
