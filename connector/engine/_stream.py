"""Import contract v2, the engine's half: turn a connector's stream into committed pages.

The connector's ``import_changes`` generator runs on a *source* thread; ``Deferred`` tasks run on
*worker* threads (per ``Worker``: ``concurrency`` threads taking ``batch_size`` tasks at a time,
or its ``take_size`` of those waiting once the stream has ended, never more than ``per_key`` of one
key, not before ``not_before``); the engine's thread receives
everything through one queue, buffers it and hands out a ``Page`` once it holds ``page_size``
entries and state updates. The caller commits the page before asking for the next one.

Back-pressure: every item the source yields takes a permit from a semaphore of ``max_ahead``; the
permit comes back when the item is finished: committed (an entry, a state update) or, for a
deferred task, when the task and every follow-up it spawned are done and their results committed.
So memory stays bounded by ``max_ahead`` objects whatever the directory's size. A page never
waits for more than ``page_size`` buffered items, and ``max_ahead`` is at least twice that, so the
source can always make progress.

Bytes, too: ``max_bytes_ahead`` (``MAX_BYTES_AHEAD``) bounds the binary values (photos) of the entries
handed to the engine's thread and not yet committed. Objects alone do not bound them: a photo is tens
of KB or up to 8 MB (Graph's limit), so ``max_ahead`` objects may hold 30 MB or 8 GB. Once that much is
held, a worker starts no new call and the source yields no new item, and the page being built is
committed as it is (smaller than ``page_size``); what was held then is released and the work goes on.
One call's answers, or one item, may take it over the bound once: nothing waits for a page that
cannot fill.

Checkpoints: each item the source yields gets an *origin* number, in order, which the results of
its deferred work inherit. A ``Checkpoint`` yielded at origin ``n`` is valid once no work of an
origin below ``n`` is still running: everything yielded before it is then in the page being
committed or in an earlier one. The page carries the latest such checkpoint.

Stops: a ``StopRunError`` raised by the source or a worker, or a ``Stop`` item, ends the step after
one last page holding everything that had arrived (finished work is not fetched again by the next
run); the engine then sends no more tasks, and follow-up tasks that arrive are dropped. Any other
exception is a bug: it stops the step at once, and the page being built is not committed.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from connector.sdk import (
    Checkpoint,
    Connector,
    Count,
    CSEntryChange,
    Deferred,
    DeltaWatermark,
    ImportItem,
    ImportMode,
    ImportRun,
    StateUpdate,
    Stop,
    StopRunError,
    Worker,
)

__all__ = [
    "MAX_BYTES_AHEAD",
    "Job",
    "MemoryState",
    "Page",
    "StreamPager",
    "WorkQueue",
    "binary_size",
    "close_pages",
    "import_in_memory",
]

log = logging.getLogger("mvsync.engine")

#: How long a stopping step waits for its threads' work under way (a request to a service that hangs ends
#: only with its own timeout), and after how long it says so.
STOP_WAIT_S = 10.0
STOP_NOTICE_S = 1.0

#: Binary bytes (photos) of entries handed to the engine's thread and not yet committed, at most (once
#: over it, no new work starts until a page is committed). 64 MB: four times what a 500-entry page of
#: people with HD photos at the sizes Graph serves holds (tens of KB each; 13 MB measured with
#: ``mvsync bench import``), so a page of such photos never ends early, while a directory of large
#: photos (Graph takes up to 8 MB: Learn, "Update profilePhoto") holds 64 MB, not ``max_ahead`` of them.
MAX_BYTES_AHEAD = 64 * 1024 * 1024


def binary_size(item: ImportItem) -> int:
    """The bytes of an entry's binary values (a whole object's or its attribute changes'); 0 for other items."""
    if not isinstance(item, CSEntryChange):
        return 0
    size = 0
    for value in item.attributes.values():
        for one in value if isinstance(value, list) else (value,):
            size += len(one) if isinstance(one, bytes) else 0
    for change in item.changes:
        size += sum(len(one) for one in change.values if isinstance(one, bytes))
    return size


#: An item and its ``binary_size``, measured once, where it is handed to the engine's thread: the same
#: number is added to the byte budget there and counted into the page it joins (and released with it).
_Sized = tuple[ImportItem, int]


def _sized(items: list[ImportItem]) -> list[_Sized]:
    return [(item, binary_size(item)) for item in items]


@dataclass(slots=True)
class Page:
    """What the engine commits in one transaction."""

    entries: list[CSEntryChange] = field(default_factory=list)
    #: key -> value (None deletes); the last update of a key within the page wins.
    state: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    #: Set on the last page only (the stream's last ``DeltaWatermark``).
    watermark: str | None = None
    last: bool = False
    #: The connector's ``Count`` items since the previous page.
    counters: Counter[str] = field(default_factory=Counter)

    @property
    def weight(self) -> int:
        return len(self.entries) + len(self.state)


@dataclass(slots=True)
class Job:
    deferred: Deferred[Any]
    origin: int


class WorkQueue:
    """Deferred tasks of one worker: fresh ones in order, delayed ones after their time, busy keys skipped."""

    def __init__(self, per_key: int, take_size: Callable[[int], int] | None = None) -> None:
        self.per_key = per_key
        #: The worker's ``take_size``: how many of the tasks waiting one take gets, once :meth:`ending`.
        self._take_size = take_size
        self._ending = False
        self._fresh: deque[Job] = deque()
        self._delayed: list[tuple[float, int, Job]] = []
        self._seq = itertools.count()
        self._busy: Counter[str] = Counter()
        self._cond = threading.Condition()
        self._closed = False

    def put(self, job: Job, *, front: bool = False) -> None:
        """Queue ``job``; ``front``: first in line (a task handed back unsent, as it was before)."""
        with self._cond:
            if job.deferred.not_before > time.monotonic():
                heapq.heappush(self._delayed, (job.deferred.not_before, next(self._seq), job))
            else:
                self._fresh.insert(0 if front else len(self._fresh), job)
            self._cond.notify()

    def ending(self) -> None:
        """The stream has yielded everything: what waits now, and what it spawns, is the run's last work.

        From now on a take gets the worker's ``take_size`` of the tasks waiting (at most ``n``).
        Before, more work keeps coming to keep every lane busy, and full batches cost the fewest
        requests.
        """
        with self._cond:
            self._ending = True

    def take(self, n: int) -> list[Job] | None:
        """Up to ``n`` ready jobs (fewer once :meth:`ending`; blocks until there is one); None once closed."""
        with self._cond:
            while True:
                if self._closed:
                    return None
                now = time.monotonic()
                while self._delayed and self._delayed[0][0] <= now:
                    self._fresh.appendleft(heapq.heappop(self._delayed)[2])
                out = self._ready(self._size(n))
                if out:
                    return out
                self._cond.wait(self._delayed[0][0] - now if self._delayed else None)

    def _size(self, n: int) -> int:
        if not self._ending or self._take_size is None or not self._fresh:
            return n
        return max(1, min(n, self._take_size(len(self._fresh))))

    def _ready(self, n: int) -> list[Job]:
        """Take up to ``n`` fresh jobs whose key has room (called holding the lock)."""
        out: list[Job] = []
        skipped: list[Job] = []
        while self._fresh and len(out) < n:
            job = self._fresh.popleft()
            key = job.deferred.key
            if key is not None and self.per_key and self._busy[key] >= self.per_key:
                skipped.append(job)
                continue
            if key is not None:
                self._busy[key] += 1
            out.append(job)
        self._fresh.extendleft(reversed(skipped))
        return out

    def done(self, jobs: list[Job]) -> None:
        """Their keys are free again."""
        with self._cond:
            for job in jobs:
                key = job.deferred.key
                if key is not None:
                    self._busy[key] -= 1
                    if self._busy[key] <= 0:
                        del self._busy[key]
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class _ByteBudget:
    """The binary bytes handed to the engine's thread and not yet committed (``MAX_BYTES_AHEAD``).

    Producers (worker threads, the source) ``add`` what they hand over and, before they start more work,
    ``wait`` while the total is at ``limit`` or over; the engine's thread ``release``s a page's bytes
    once it is committed.
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self.held = 0
        #: The most ever held (for tests and figures): at most ``limit`` plus one call's answers per producer.
        self.peak = 0
        self._cond = threading.Condition()

    @property
    def over(self) -> bool:
        return self.held >= self.limit

    def add(self, size: int) -> None:
        if size:
            with self._cond:
                self.held += size
                self.peak = max(self.peak, self.held)

    def release(self, size: int) -> None:
        if size:
            with self._cond:
                self.held -= size
                self._cond.notify_all()

    def wait(self, stop: threading.Event) -> bool:
        """Block while the bytes held are at the limit; False once the step stops."""
        with self._cond:
            while self.held >= self.limit:
                if stop.is_set():
                    return False
                self._cond.wait(0.5)
        return not stop.is_set()


class _Fatal:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class _Stopped(Exception):
    """The pager is shutting down: the source unwinds quietly."""


_END = object()


class StreamPager:
    """Runs one ``import_changes`` stream; ``pages()`` yields what to commit, in order."""

    def __init__(
        self,
        stream: Iterator[ImportItem],
        *,
        page_size: int,
        max_ahead: int,
        stop: threading.Event | None = None,
        max_bytes_ahead: int = MAX_BYTES_AHEAD,
    ) -> None:
        self.page_size = max(1, page_size)
        self.counters: Counter[str] = Counter()
        self._stream = stream
        self._results: queue.Queue[Any] = queue.Queue()
        # twice as many permits as a full page holds objects: a page never waits for items that the
        # source cannot yield for lack of permits, and half of them stay free for work in flight
        self._ahead = threading.Semaphore(max(max_ahead, 2 * self.page_size))
        #: binary bytes handed to this thread and not yet committed; ``_page_bytes``: those in the page being built
        self.bytes_ahead = _ByteBudget(max_bytes_ahead)
        self._page_bytes = 0
        #: Set when the step stops; the connector's ``ImportRun.stopping`` (``stop``), so it can wait on it.
        self._stop = stop if stop is not None else threading.Event()
        self._threads: list[threading.Thread] = []
        self._queues: dict[int, WorkQueue] = {}
        self._running: Counter[int] = Counter()  # origin -> deferred tasks not yet finished
        self._in_page: Counter[int] = Counter()  # origin -> items buffered in the page being built
        #: Items of finished tasks that did not fit in the page being built (their origin stays running).
        self._carry: list[tuple[int, Deferred[Any], list[_Sized]]] = []
        self._checkpoints: deque[tuple[int, str]] = deque()
        self._valid_checkpoint: str | None = None
        self._watermark: str | None = None
        self._source_done = False
        #: Why the step stops (the first StopRunError met): the page being built is its last.
        self._stopping: StopRunError | None = None

    # -- threads ----------------------------------------------------------------------------------
    def _spawn(self, target: Any, name: str, *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(thread)  # first: a Ctrl-C the moment it starts must not leave it unjoined
        thread.start()

    def _source(self) -> None:
        """Send the stream's items to the engine's thread, one permit per origin (back-pressure)."""
        try:
            for origin, items in enumerate(_origins(self._stream)):
                if not self.bytes_ahead.wait(self._stop):
                    raise _Stopped
                while not self._ahead.acquire(timeout=0.5):
                    if self._stop.is_set():
                        raise _Stopped
                if self._stop.is_set():
                    raise _Stopped
                sized = _sized(items)
                self.bytes_ahead.add(sum(size for _, size in sized))
                self._results.put((origin, sized))
        except _Stopped:
            close = getattr(self._stream, "close", None)
            if close is not None:
                close()
            return
        except BaseException as exc:  # handed to the engine's thread, which raises it
            self._results.put(_Fatal(exc))
            return
        self._results.put(_END)

    def _work(self, worker: Worker[Any], jobs_queue: WorkQueue) -> None:
        while self.bytes_ahead.wait(self._stop):
            try:
                jobs = jobs_queue.take(max(1, worker.batch_size))
            except BaseException as exc:  # the worker's take_size failed: stop the step, do not hang it
                self._results.put(_Fatal(exc))
                return
            if jobs is None:
                return
            try:
                results = worker.run([job.deferred for job in jobs], self._stop)
            except BaseException as exc:
                jobs_queue.done(jobs)
                if not self._stop.is_set():  # an error while stopping is the stop's echo
                    self._stop.set()  # no thread starts another task
                    self._results.put(_Fatal(exc))
                return
            jobs_queue.done(jobs)
            if not self._deliver(worker, jobs, results):
                return

    def _deliver(self, worker: Worker[Any], jobs: list[Job], results: list[list[ImportItem]]) -> bool:
        """Hand one ``run`` call's results to the engine's thread; False: this worker thread is done."""
        if len(results) != len(jobs):
            msg = f"{type(worker).__name__}.run returned {len(results)} results for {len(jobs)} tasks"
            self._results.put(_Fatal(RuntimeError(msg)))
            return False
        if any(isinstance(item, Stop) for items in results if isinstance(items, list) for item in items):
            self._stop.set()  # no thread starts another task, not even this one
        elif self._stop.is_set():
            return False  # a call that ended while the step stops: its answers may be the stop's echo (cancelled)
        finished = [(job.origin, job.deferred, _sized(items)) for job, items in zip(jobs, results, strict=True)]
        self.bytes_ahead.add(sum(size for _, _, sized in finished for _, size in sized))
        self._results.put(("done", finished))
        return True

    def _dispatch(self, origin: int, deferred: Deferred[Any], *, front: bool = False) -> None:
        worker = deferred.worker
        jobs = self._queues.get(id(worker))
        if jobs is None:
            jobs = self._queues[id(worker)] = WorkQueue(worker.per_key, worker.take_size)
            if self._source_done:
                jobs.ending()
            for i in range(max(1, worker.concurrency)):
                self._spawn(self._work, f"import-{type(worker).__name__}-{i}", worker, jobs)
        self._running[origin] += 1
        jobs.put(Job(deferred, origin), front=front)

    # -- the engine's thread ----------------------------------------------------------------------
    def _handle(self, origin: int, sized: _Sized, page: Page, ran: Deferred[Any] | None = None) -> None:
        """One item of ``origin`` and its binary size (``ran``: the task whose result it is, if any)."""
        item, size = sized
        if isinstance(item, CSEntryChange):
            page.entries.append(item)
            self._in_page[origin] += 1
            self._page_bytes += size
        elif isinstance(item, StateUpdate):
            page.state[item.key] = item.value
            self._in_page[origin] += 1
        elif isinstance(item, Deferred):
            if self._stopping is None:
                self._dispatch(origin, item, front=item is ran)  # the task itself: handed back unsent
            else:  # left to the next run: its origin stays unfinished, so no checkpoint passes it
                self._running[origin] += 1
        elif isinstance(item, Checkpoint):
            self._checkpoints.append((origin, item.text))
        elif isinstance(item, DeltaWatermark):
            self._watermark = item.text
        elif isinstance(item, Count):
            self.counters[item.name] += item.n
        elif isinstance(item, Stop):
            self._stop_with(item.error)
            self._running[origin] += 1  # the task that met the stop is not done: no checkpoint passes it
        else:
            msg = f"the connector yielded {type(item).__name__}, which is not an import item (connector.sdk)"
            raise TypeError(msg)

    def _settle(self, origin: int) -> None:
        """Give the permit back once nothing of ``origin`` is running or waiting to be committed."""
        if not self._running.get(origin) and not self._in_page.get(origin):
            self._running.pop(origin, None)
            self._ahead.release()

    def _full(self, page: Page, item: ImportItem) -> bool:
        """Whether ``item`` must wait for the next page: ``page_size`` entries, or twice that in all
        (state updates without entries; an entry's own state update still joins it)."""
        if isinstance(item, CSEntryChange):
            return len(page.entries) >= self.page_size
        return isinstance(item, StateUpdate) and page.weight >= 2 * self.page_size

    def _filled(self, page: Page) -> bool:
        """``page_size`` entries, or items of ``page_size`` objects (state updates without entries), or
        ``max_bytes_ahead`` of binary values (the work waits for this page's commit: see the module).

        Counting objects, not items, keeps at least half the permits free for the work in flight
        while a page fills, so the workers never run dry waiting for a commit.
        """
        return (
            len(page.entries) >= self.page_size
            or len(self._in_page) >= self.page_size
            or self._page_bytes >= self.bytes_ahead.limit
        )

    def _take(self, origin: int, ran: Deferred[Any], items: list[_Sized], page: Page) -> None:
        """A finished task's items; what does not fit waits for the next page, its origin still open
        (so no checkpoint after it counts as committed before they are). The state updates after an
        entry that fits go with it, over the page's limit if need be: an entry committed without its
        state would be fetched and staged again by a run resumed in between."""
        entered = False
        for i, sized in enumerate(items):
            item = sized[0]
            if self._full(page, item) and not (entered and isinstance(item, StateUpdate)):
                self._carry.append((origin, ran, items[i:]))
                return
            entered = entered or isinstance(item, CSEntryChange)
            self._handle(origin, sized, page, ran)
        self._running[origin] -= 1
        self._settle(origin)

    def _stop_with(self, error: StopRunError) -> None:
        """The step stops with ``error`` once the page being built is committed: no more tasks start,
        and those running are cancelled (the first stop wins; later ones are its echo)."""
        if self._stopping is None:
            self._stopping = error
            self._stop.set()

    def _receive(self, message: Any, page: Page) -> None:
        if message is _END:
            self._source_done = True
            for jobs in self._queues.values():
                jobs.ending()
        elif isinstance(message, _Fatal):
            if not isinstance(message.error, StopRunError):
                raise message.error  # a bug: nothing of this page is trusted
            self._stop_with(message.error)
        elif isinstance(message, tuple) and message[0] == "done":
            for origin, ran, items in message[1]:
                self._take(origin, ran, items, page)
        else:
            origin, items = message
            for sized in items:
                self._handle(origin, sized, page)
            self._settle(origin)

    def _checkpoint(self) -> str | None:
        """The latest checkpoint all of whose earlier work is in this page or committed before.

        Repeated on every page after it (until a later one is valid), so that what the engine stores
        with it (pages and entries committed so far) stays current.
        """
        oldest_running = min((o for o, n in self._running.items() if n > 0), default=None)
        while self._checkpoints and (oldest_running is None or self._checkpoints[0][0] < oldest_running):
            self._valid_checkpoint = self._checkpoints.popleft()[1]
        return self._valid_checkpoint

    def pages(self) -> Iterator[Page]:
        """Pages to commit, in order; the next one is built once the caller asks for it."""
        try:
            self._spawn(self._source, "import-source")
            while True:
                page = Page()
                carried, self._carry = self._carry, []
                for origin, ran, items in carried:
                    self._take(origin, ran, items, page)
                while not (self._carry or self._filled(page) or self._finished or self._stopping):
                    try:
                        message = self._results.get(timeout=1.0)
                    except queue.Empty:
                        continue
                    self._receive(message, page)
                if self._stopping is not None:
                    yield from self._last_page(page, self._stopping)
                page.last = self._finished
                page.checkpoint = self._checkpoint()
                if page.last:
                    page.watermark = self._watermark
                page.counters, self.counters = self.counters, Counter()
                yield page
                committed, self._in_page = self._in_page, Counter()
                self.bytes_ahead.release(self._page_bytes)
                self._page_bytes = 0
                for origin in committed:
                    self._settle(origin)
                if page.last:
                    return
        finally:
            self.stop()

    def _last_page(self, page: Page, stopping: StopRunError) -> Iterator[Page]:
        """What finished before the stop, committed (if anything did); then the stop itself.

        Results that did not fit in the page join it all the same: there is no next page for them.
        """
        carried, self._carry = self._carry, []
        for origin, ran, items in carried:
            for sized in items:
                self._handle(origin, sized, page, ran)
            self._running[origin] -= 1
        page.checkpoint = self._checkpoint()
        page.counters, self.counters = self.counters, Counter()
        if page.entries or page.state or page.counters or page.checkpoint:
            yield page
        raise stopping

    @property
    def _finished(self) -> bool:
        return self._source_done and not any(self._running.values())

    def stop(self) -> None:
        """Stop every thread of the step: no new task starts, and those under way get ``STOP_WAIT_S`` to end.

        Why say so once a second has passed: a thread inside a request to a service that hangs ends
        only with it, and Ctrl-C then took ten silent seconds to come back (found by QA); a second
        Ctrl-C stops at once.
        """
        self._stop.set()
        for jobs in self._queues.values():
            jobs.close()
        deadline = time.monotonic() + STOP_WAIT_S
        told = False
        for thread in self._threads:
            if thread is threading.current_thread() or thread.ident is None:  # (not started)
                continue
            thread.join(timeout=min(STOP_NOTICE_S, max(0.0, deadline - time.monotonic())))
            if thread.is_alive() and not told:
                told = True
                log.warning(
                    "the step is stopping: waiting up to %.0f s for the requests under way to end "
                    "(Ctrl-C stops at once)",
                    max(0.0, deadline - time.monotonic()),
                )
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._threads.clear()


def close_pages(pages: Iterator[Page]) -> None:
    """Stop a page stream now, whatever ended its reader (Ctrl-C in the middle of committing a page, a store
    fault): its ``finally`` stops the pager's threads and sets the connector's ``ImportRun.stopping``.
    Left to the garbage collector, it ran only once the exception let go of the stream (its traceback
    holds the reader's frame), and meanwhile the step's threads went on sending requests."""
    close = getattr(pages, "close", None)
    if close is not None:
        close()


def _origins(stream: Iterable[ImportItem]) -> Iterator[list[ImportItem]]:
    """The stream's items, one origin each, except that an entry and the state updates that follow
    it (its own) share one, so that no page boundary falls between them."""
    group: list[ImportItem] = []
    for item in stream:
        if group and not isinstance(item, StateUpdate):
            yield group
            group = []
        group.append(item)
        if not isinstance(group[0], CSEntryChange):
            yield group
            group = []
    if group:
        yield group


class MemoryState:
    """A ``StateReader`` over a dict: the agent state of a store-less import (tests, tools)."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        return {key: self.values[key] for key in keys if key in self.values}

    def scan(self) -> Iterator[tuple[str, Any]]:
        yield from sorted(self.values.items())


def import_in_memory(
    connector: Connector[Any],
    mode: ImportMode,
    state: dict[str, Any],
    *,
    watermark: str | None = None,
    resume_from: str | None = None,
    page_size: int = 500,
    on_page: Callable[[int, Page], None] | None = None,
    counters: Counter[str] | None = None,
) -> tuple[list[CSEntryChange], str | None]:
    """Run a v2 connector's import the way the engine does, without a store.

    Each page's state updates are applied to ``state`` when the page is "committed" (after
    ``on_page``, which may act between pages as a slow store or a user would); a full import that
    completes forgets the keys it did not write; the connector's ``Count`` items are added to
    ``counters``. Returns every entry and the last watermark.
    """
    run = ImportRun(
        mode=mode, state=MemoryState(state), watermark=watermark, resume_from=resume_from, page_size=page_size
    )
    pager = StreamPager(
        connector.import_changes(run),
        page_size=page_size,
        max_ahead=min(4000, max(200, 2 * page_size)),
        stop=run.stopping,
    )
    entries: list[CSEntryChange] = []
    written: set[str] = set()
    last_watermark: str | None = None
    pages = pager.pages()
    try:
        for number, page in enumerate(pages, 1):
            if on_page is not None:
                on_page(number, page)
            entries += page.entries
            if counters is not None:
                counters.update(page.counters)
            for key, value in page.state.items():
                written.add(key)
                if value is None:
                    state.pop(key, None)
                else:
                    state[key] = value
            last_watermark = page.watermark if page.watermark is not None else last_watermark
    finally:
        close_pages(pages)
    if mode == ImportMode.FULL:
        for key in set(state) - written:
            del state[key]
    return entries, last_watermark
