"""Import contract v2: a connector *yields* what it finds; the engine does the rest.

Why a stream and not pages: with the page-pull contract (``import_page``) a connector that must do
slow per-object work (a photo per user over Graph or EWS) had to build its own threads, queues,
back-pressure and checkpoint bookkeeping to keep the server busy while the engine wrote a page, and
its own state database because the engine's store was not its to write. All of that is the
framework's job (Lithnet's ECMA2 async pipeline, dlt's deferred transformers), so in v2:

* ``Connector.import_changes(run)`` is a generator. It yields ``CSEntryChange`` objects, and
  besides them:

  - ``StateUpdate(key, value)``: a value of the agent's key-value state (an ETag, a checksum, when
    an object was last probed), committed by the engine **in the same transaction as the page
    that holds it**, so the state never names a change the connector space has not got. Read it
    back with ``run.state`` (``get_many``, ``scan``). ``value`` None deletes the key.
  - ``Checkpoint(text)``: "a full import restarted from ``text`` misses nothing yielded before
    this point". The engine stores it with the first page that holds everything yielded before it
    (the results of deferred work included) and hands it back as ``run.resume_from`` after an
    interruption. Raise ``ResumeRefusedError`` before the first yield if it no longer means
    anything, and the engine starts over.
  - ``DeltaWatermark(text)``: what the next delta import starts from (saved when the step ends
    normally; PSMA's ``$global:RunStepCustomData``).
  - ``Count(name, n)``: a counter for run history (``mvsync history show``) and the step's metrics,
    instead of a connector-specific property.
  - ``Deferred(worker, task, key=...)``: concurrent per-object work. The engine queues the task and
    calls ``worker.run(tasks, cancel)`` on its own threads, ``worker.batch_size`` tasks at a time
    (a Graph ``$batch``) with ``worker.concurrency`` threads, never more than ``worker.per_key``
    tasks of one ``key`` (a mailbox) at once, and not before ``not_before`` (a ``Retry-After``).
    ``run`` returns one list of items per task, in order; those items may be anything above,
    including follow-up ``Deferred`` tasks (a probe, then a download; a throttled request again).
    A task returned as it is (not sent: a limiter had no room for it) goes back first in line.
  - ``Stop(error)``: stop the step with ``error`` (a ``StopRunError``: the service is down,
    throttled too long) **after** committing what finished before it. Raising the error from
    ``import_changes`` or ``Worker.run`` does the same for everything the engine had received;
    the item is for a ``run`` whose other tasks finished in the same call (a ``$batch`` whose last
    item met the outage): return their items and ``[Stop(error)]`` in the failing task's place.
    Once the engine meets a stop it sends no more tasks: follow-up ``Deferred`` items are dropped
    (those objects keep what they had and are fetched by the next run), everything else that
    arrived is committed in one last page, and the step ends with ``error``'s status.

  The connector keeps the knowledge (what to list, what to probe, what to download and how to
  batch it); the engine owns paging, buffering, worker threads, back-pressure (it stops pulling
  from the generator while ``max_ahead`` items are unfinished), checkpoints and the state.

* Within a step, ``run.state`` reads what earlier pages committed. The engine forgets, at the end
  of a full import that completes, every state key that import did not write: state is knowledge
  about objects, and a full import has just seen every object there is.

Connectors of the old shape (``import_page`` returning ``ImportPage``) keep working unchanged; the
engine drives them page by page as before.
"""

from __future__ import annotations

import abc
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, Union

from connector.sdk._changes import CSEntryChange
from connector.sdk._errors import StopRunError
from connector.sdk._imports import ImportMode

__all__ = [
    "Checkpoint",
    "Count",
    "Deferred",
    "DeltaWatermark",
    "ImportItem",
    "ImportRun",
    "StateReader",
    "StateUpdate",
    "Stop",
    "Worker",
]

TaskT = TypeVar("TaskT")


@dataclass(frozen=True, slots=True)
class StateUpdate:
    """Set (or, with None, delete) one key of the agent's state, committed with its page."""

    key: str
    #: Anything JSON can hold.
    value: Any


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where a full import can restart once everything yielded before this is committed."""

    text: str


@dataclass(frozen=True, slots=True)
class DeltaWatermark:
    """The watermark the next delta import receives (saved only when the step ends normally)."""

    text: str


@dataclass(frozen=True, slots=True)
class Count:
    """Add ``n`` to the step's counter ``name`` (run history, metrics)."""

    name: str
    n: int = 1


class Worker(abc.ABC, Generic[TaskT]):
    """Runs deferred tasks on the engine's threads. Subclass it once per kind of work.

    ``batch_size``: tasks handed to one ``run`` call (at most). ``concurrency``: threads the engine
    runs for this worker (the ceiling; a limiter inside ``run`` may send fewer at a time).
    ``per_key``: tasks of one ``Deferred.key`` running at once (0: no limit).
    """

    batch_size: int = 1
    concurrency: int = 1
    per_key: int = 0

    def take_size(self, waiting: int) -> int:
        """How many of the ``waiting`` ready tasks one ``run`` call takes at the end of a run (the
        engine caps it at ``batch_size``). Called often, under the engine's queue lock: keep it
        cheap, never block.

        The engine asks only once the stream has yielded everything: before, more work keeps every
        thread busy, and full batches cost the fewest requests. A full batch by default. A worker
        whose batched request runs its items a few at a time overrides it so that the last tasks
        are shared among the batches that can run at once: packed into a few full batches, they
        would keep a few lanes busy for many rounds while the rest idle.
        """
        return self.batch_size

    @abc.abstractmethod
    def run(self, tasks: list[Deferred[TaskT]], cancel: threading.Event) -> list[list[ImportItem]]:
        """Do the work; return exactly one list of items per task, in order.

        ``cancel`` is set when the step stops: return (or raise) promptly. An exception stops the
        step (raise ``StopRunError`` or one of its kinds to say how, and what the engine had
        received is committed first; return ``Stop(error)`` in a task's place to keep the other
        tasks of this call too); per-object failures belong in the task's items as
        ``CSEntryChange.import_error``.
        """


@dataclass(frozen=True, slots=True)
class Stop:
    """Stop the step with ``error`` once what finished before it is committed (see the module docstring)."""

    error: StopRunError


@dataclass(slots=True)
class Deferred(Generic[TaskT]):
    """One piece of concurrent work for ``worker``; its results join the stream when it is done."""

    worker: Worker[TaskT]
    task: TaskT
    #: Tasks with the same key run at most ``worker.per_key`` at once (a mailbox's concurrency limit).
    key: str | None = None
    #: ``time.monotonic()`` before which the task is not started (a throttled request's Retry-After).
    not_before: float = 0.0


ImportItem = Union[CSEntryChange, StateUpdate, Checkpoint, DeltaWatermark, Count, Stop, "Deferred[Any]"]


class StateReader(Protocol):
    """The agent's committed key-value state, as the engine's store holds it."""

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The values of those of ``keys`` that are set."""
        ...

    def scan(self) -> Iterator[tuple[str, Any]]:
        """Every key and value in key order (read in bounded chunks)."""
        ...


@dataclass(frozen=True, slots=True)
class ImportRun:
    """What ``import_changes`` is told about the step it serves."""

    mode: ImportMode
    state: StateReader
    #: The last delta watermark (delta imports only).
    watermark: str | None = None
    #: A full import resuming an interrupted one: the last checkpoint the engine committed.
    resume_from: str | None = None
    #: Entries (and state updates) the engine commits per page; a hint for listing page sizes.
    page_size: int = 500
    #: Set when the step stops (Ctrl-C, a stop signal, a ``Stop``): ``import_changes`` waits on it
    #: (``run.stopping.wait(seconds)``) instead of sleeping, so that a step stops at once, not after
    #: the wait (the engine gives the stream 10 s, then leaves it behind).
    stopping: threading.Event = field(default_factory=threading.Event, compare=False)

    @property
    def full(self) -> bool:
        return self.mode == ImportMode.FULL
