"""Run history as a repository: the runs, steps and per-object errors the engine records.

Why a repository: history rows are written at the edges of every run and step, often while the run
is failing; the engine says what happened, the store decides how it is kept.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from sqlalchemy import Connection, Table, delete, desc, func, select, update

from connector.store._migrations import RUN_LOCKS_FROM_KEY
from connector.store._store_meta import read_meta
from connector.store.tables import run_error, run_history, run_step

__all__ = ["ClearedRuns", "ErrorRecord", "ErrorRow", "RunHistory", "RunRow", "StepRow"]

#: Longest error detail kept per row (a connector may return a whole response body).
_DETAIL_CHARS = 4000


class ErrorRecord(Protocol):
    """What the store keeps of a per-object error (the engine's ``ObjectError`` has these)."""

    @property
    def stage(self) -> str: ...
    @property
    def error_name(self) -> str: ...
    @property
    def detail(self) -> str: ...
    @property
    def anchor(self) -> str | None: ...
    @property
    def object_class(self) -> str | None: ...
    @property
    def cs_id(self) -> int | None: ...
    @property
    def severity(self) -> str: ...
    @property
    def display(self) -> str | None: ...


def _seconds(started_at: float, ended_at: float | None) -> float | None:
    """How long a run or step took; None while it runs, or when its process died without recording its end."""
    return None if ended_at is None else round(ended_at - started_at, 3)


class RunRow(NamedTuple):
    """A run (columns in table order)."""

    id: int
    profile: str
    status: str
    dry_run: bool
    started_at: float
    ended_at: float | None
    host: str | None
    pid: int | None
    message: str | None

    @property
    def seconds(self) -> float | None:
        return _seconds(self.started_at, self.ended_at)


class StepRow(NamedTuple):
    """A step of a run; ``counters`` is a JSON document."""

    id: int
    run_id: int
    seq: int
    agent: str
    kind: str
    status: str
    started_at: float
    ended_at: float | None
    counters: str
    message: str | None

    @property
    def seconds(self) -> float | None:
        return _seconds(self.started_at, self.ended_at)


class ErrorRow(NamedTuple):
    """A per-object error of a step."""

    id: int
    step_id: int
    cs_id: int | None
    anchor: str | None
    object_class: str | None
    stage: str
    error_name: str
    detail: str | None
    severity: str
    display: str | None


@dataclass(frozen=True, slots=True)
class ClearedRuns:
    """What :meth:`RunHistory.clear_before` deleted."""

    runs: int = 0
    steps: int = 0
    errors: int = 0

    def __add__(self, other: ClearedRuns) -> ClearedRuns:
        return ClearedRuns(self.runs + other.runs, self.steps + other.steps, self.errors + other.errors)


class RunHistory:
    """Run history, written inside one store transaction (``conn``)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def start_run(self, profile: str, *, dry_run: bool, started_at: float) -> int:
        """A run ``in-progress`` on this host and process; returns its id."""
        result = self._conn.execute(
            run_history.insert().values(
                profile=profile,
                status="in-progress",
                dry_run=dry_run,
                started_at=started_at,
                host=socket.gethostname(),
                pid=os.getpid(),
            )
        )
        return int(result.inserted_primary_key[0])  # type: ignore[index]

    def record_refused(self, profile: str, status: str, message: str, at: float) -> int:
        """A run that ended before its first step, with its status and why; returns its id."""
        result = self._conn.execute(
            run_history.insert().values(
                profile=profile,
                status=status,
                dry_run=False,
                started_at=at,
                ended_at=at,
                host=socket.gethostname(),
                pid=os.getpid(),
                message=message,
            )
        )
        return int(result.inserted_primary_key[0])  # type: ignore[index]

    def finish_run(self, run_id: int | None, status: str, ended_at: float, message: str | None) -> None:
        self._conn.execute(
            update(run_history)
            .where(run_history.c.id == run_id)
            .values(status=status, ended_at=ended_at, message=message)
        )

    def start_step(self, run_id: int | None, seq: int, agent: str, kind: str, started_at: float) -> int:
        """Step ``seq`` of a run, ``in-progress``; returns its id."""
        result = self._conn.execute(
            run_step.insert().values(
                run_id=run_id,
                seq=seq,
                agent=agent,
                kind=kind,
                status="in-progress",
                started_at=started_at,
                counters="{}",
            )
        )
        return int(result.inserted_primary_key[0])  # type: ignore[index]

    def finish_step(
        self, step_id: int | None, status: str, ended_at: float, counters: str, message: str | None
    ) -> None:
        """The end of a step: its status, its counters (a JSON document) and message."""
        self._conn.execute(
            update(run_step)
            .where(run_step.c.id == step_id)
            .values(status=status, ended_at=ended_at, counters=counters, message=message)
        )

    def last_sync_end(self, agent: str) -> float | None:
        """When the latest synchronization of ``agent`` that visited all it had to ended (a full or
        delta sync that was not stopped); None when history holds none."""
        query = select(func.max(run_step.c.ended_at)).where(
            run_step.c.agent == agent,
            run_step.c.kind.in_(("full-sync", "delta-sync")),
            run_step.c.status.not_like("stopped-%"),
            run_step.c.status != "in-progress",
        )
        found = self._conn.execute(query).scalar()
        return None if found is None else float(found)

    def note_progress(self, step_id: int | None, counters: str) -> None:
        """A running step's counters so far, written with each unit of work it commits.

        A process that dies without a word (kill -9, a reboot) leaves these as what the step got
        done; the end of the step overwrites them.
        """
        self._conn.execute(
            update(run_step)
            .where(run_step.c.id == step_id, run_step.c.status == "in-progress")
            .values(counters=counters)
        )

    def open_runs(self) -> list[RunRow]:
        """Runs still ``in-progress``: running now, or left so by a process that died."""
        query = select(run_history).where(run_history.c.status == "in-progress").order_by(run_history.c.id)
        return [RunRow._make(row) for row in self._conn.execute(query)]

    def holds_run_lock(self, run: RunRow) -> bool:
        """True when ``run`` held its run lock while it ran: a run of this mvsync (migration 7), not
        one an earlier version recorded."""
        first = read_meta(self._conn, RUN_LOCKS_FROM_KEY)
        return first is not None and run.id >= int(first)

    def open_steps(
        self, *, agent: str | None = None, kinds: Sequence[str] | None = None, run_id: int | None = None
    ) -> list[StepRow]:
        """Steps still ``in-progress``, of one agent, of some kinds and/or of one run."""
        query = select(run_step).where(run_step.c.status == "in-progress").order_by(run_step.c.id)
        if run_id is not None:
            query = query.where(run_step.c.run_id == run_id)
        if agent is not None:
            query = query.where(run_step.c.agent == agent)
        if kinds is not None:
            query = query.where(run_step.c.kind.in_(list(kinds)))
        return [StepRow._make(row) for row in self._conn.execute(query)]

    def close_abandoned_step(self, step_id: int, status: str, message: str) -> bool:
        """End a step its process left ``in-progress``; its end time stays unknown (NULL)."""
        return self._close_open(run_step, step_id, status, message)

    def close_abandoned_run(self, run_id: int, status: str, message: str) -> bool:
        """End a run its process left ``in-progress``; its end time stays unknown (NULL)."""
        return self._close_open(run_history, run_id, status, message)

    def _close_open(self, table: Table, row_id: int, status: str, message: str) -> bool:
        """Only a row still ``in-progress``: a run that closed it meanwhile (or its own process) wins."""
        still_open = update(table).where(table.c.id == row_id, table.c.status == "in-progress")
        return bool(self._conn.execute(still_open.values(status=status, message=message)).rowcount)

    def record_errors(self, step_id: int, errors: Iterable[ErrorRecord]) -> None:
        """Per-object errors of a step (the detail cut to ``_DETAIL_CHARS``)."""
        rows = [
            {
                "step_id": step_id,
                "cs_id": e.cs_id,
                "anchor": e.anchor,
                "object_class": e.object_class,
                "stage": e.stage,
                "error_name": e.error_name,
                "detail": e.detail[:_DETAIL_CHARS],
                "severity": e.severity,
                "display": e.display,
            }
            for e in errors
        ]
        if rows:
            self._conn.execute(run_error.insert(), rows)

    def clear_before(self, before: float, *, limit: int = 20) -> ClearedRuns:
        """Delete up to ``limit`` finished runs that started before ``before``, with their steps and
        per-object errors (MIM's *Clear Runs*); the oldest first.

        Why: every run adds a row per step and one per per-object error (a tenant's on-premises
        mailboxes are reported on every run), so history outgrows everything else within months.
        Kept whatever their age: runs still ``in-progress`` (the next run may prove their process gone
        and close them) and each run that holds an agent's latest step of a kind, because that step's
        errors are what the console and ``mvsync cs show`` call "failing now". ``limit`` keeps each
        transaction small; call again until nothing is cleared.
        """
        latest = select(func.max(run_step.c.id)).group_by(run_step.c.agent, run_step.c.kind)
        kept = select(run_step.c.run_id).where(run_step.c.id.in_(latest))
        ids = list(
            self._conn.execute(
                select(run_history.c.id)
                .where(
                    run_history.c.started_at < before,
                    run_history.c.status != "in-progress",
                    run_history.c.id.not_in(kept),
                )
                .order_by(run_history.c.id)
                .limit(limit)
            ).scalars()
        )
        if not ids:
            return ClearedRuns()
        steps = select(run_step.c.id).where(run_step.c.run_id.in_(ids))
        errors = self._conn.execute(delete(run_error).where(run_error.c.step_id.in_(steps))).rowcount
        step_count = self._conn.execute(delete(run_step).where(run_step.c.run_id.in_(ids))).rowcount
        runs = self._conn.execute(delete(run_history).where(run_history.c.id.in_(ids))).rowcount
        return ClearedRuns(runs, step_count, errors)

    # ------------------------------------------------------------------------------- reads
    def extent(self) -> tuple[int, float | None]:
        """``(runs, when the oldest run started)``: how much history is kept. (Not the error rows: counting
        them reads a whole index, minutes on the very store that keeps too many.)"""
        runs, oldest = self._conn.execute(select(func.count(), func.min(run_history.c.started_at))).one()
        return int(runs), None if oldest is None else float(oldest)

    def recent_runs(self, limit: int, *, before: int | None = None) -> list[RunRow]:
        """The latest ``limit`` runs (older than run ``before``), newest first."""
        query = select(run_history).order_by(desc(run_history.c.id)).limit(limit)
        if before is not None:
            query = query.where(run_history.c.id < before)
        return [RunRow._make(row) for row in self._conn.execute(query)]

    def run(self, run_id: int) -> RunRow | None:
        found = self._conn.execute(select(run_history).where(run_history.c.id == run_id)).first()
        return None if found is None else RunRow._make(found)

    def steps(self, run_id: int) -> list[StepRow]:
        return self.steps_of([run_id])

    def steps_of(self, run_ids: Sequence[int]) -> list[StepRow]:
        """The steps of these runs, by run and then in order."""
        if not run_ids:
            return []
        query = select(run_step).where(run_step.c.run_id.in_(list(run_ids))).order_by(run_step.c.run_id, run_step.c.seq)
        return [StepRow._make(row) for row in self._conn.execute(query)]

    def step(self, step_id: int) -> StepRow | None:
        found = self._conn.execute(select(run_step).where(run_step.c.id == step_id)).first()
        return None if found is None else StepRow._make(found)

    def errors(self, step_id: int, limit: int, *, after: int | None = None) -> list[ErrorRow]:
        """The first ``limit`` errors of a step (after error ``after``), in the order they were recorded."""
        query = select(run_error).where(run_error.c.step_id == step_id).order_by(run_error.c.id).limit(limit)
        if after is not None:
            query = query.where(run_error.c.id > after)
        return [ErrorRow._make(row) for row in self._conn.execute(query)]

    def error_counts(self, step_ids: Sequence[int]) -> dict[int, int]:
        """Step id -> its number of per-object errors (steps without any are absent)."""
        if not step_ids:
            return {}
        query = (
            select(run_error.c.step_id, func.count())
            .where(run_error.c.step_id.in_(list(step_ids)))
            .group_by(run_error.c.step_id)
        )
        return {int(step_id): int(count) for step_id, count in self._conn.execute(query)}

    def error_names(self, step_id: int) -> dict[str, int]:
        """Error name -> count for one step, most frequent first."""
        query = (
            select(run_error.c.error_name, func.count())
            .where(run_error.c.step_id == step_id)
            .group_by(run_error.c.error_name)
            .order_by(desc(func.count()))
        )
        return {str(name): int(count) for name, count in self._conn.execute(query)}

    def latest_step_errors(self) -> list[tuple[str, str, str, int]]:
        """``(agent, step kind, error name, count)`` of each agent's most recent step of each kind."""
        latest = select(func.max(run_step.c.id).label("id")).group_by(run_step.c.agent, run_step.c.kind).subquery()
        query = (
            select(run_step.c.agent, run_step.c.kind, run_error.c.error_name, func.count())
            .join(run_error, run_error.c.step_id == run_step.c.id)
            .where(run_step.c.id.in_(select(latest.c.id)))
            .group_by(run_step.c.agent, run_step.c.kind, run_error.c.error_name)
            .order_by(desc(func.count()))
        )
        return [(a, k, n, int(c)) for a, k, n, c in self._conn.execute(query)]

    def error_count(self, step_id: int) -> int:
        query = select(func.count()).select_from(run_error).where(run_error.c.step_id == step_id)
        return int(self._conn.execute(query).scalar_one())
