"""What every run step shares: the store, its configuration, result counters, errors and progress."""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from connector.config import MvsyncConfig, RunStepConfig
from connector.engine._results import ObjectError, StepResult, StepStopped
from connector.store import RunHistory, SqlStore, StoreConnection, people

__all__ = ["NullProgress", "Progress", "StepContext"]

log = logging.getLogger("mvsync.engine")

#: Per-object errors kept in memory for the result (all are written to the store).
_MEMORY_ERRORS = 1000


class Progress(Protocol):
    """Progress reporting for long steps (the CLI shows a rich progress bar)."""

    def start(self, label: str, total: int | None = None) -> None: ...
    def advance(self, n: int = 1) -> None: ...
    def finish(self) -> None: ...


class NullProgress:
    def start(self, label: str, total: int | None = None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        pass

    def finish(self) -> None:
        pass


@dataclass
class StepContext:
    store: SqlStore
    config: MvsyncConfig
    step: RunStepConfig
    result: StepResult
    step_id: int
    progress: Progress = field(default_factory=NullProgress)
    #: Dry runs send every would-be change here (the CLI prints JSON lines; with --json, its result lists them).
    emit: Callable[[dict[str, Any]], None] | None = None
    _pending_errors: list[ObjectError] = field(default_factory=list)

    @property
    def agent(self) -> str:
        return self.step.agent

    @property
    def dry_run(self) -> bool:
        return self.emit is not None

    def error(self, err: ObjectError) -> None:
        """Record a per-object error or warning; it is written with the current unit of work."""
        if err.severity == "warning":
            self.result.warning_count += 1
        else:
            self.result.error_count += 1
        if len(self.result.errors) < _MEMORY_ERRORS:
            self.result.errors.append(err)
        self._pending_errors.append(err)

    def errors_mark(self) -> tuple[int, int, int, int]:
        """Where the record of errors stands now, for :meth:`forget_errors_since`."""
        result = self.result
        return result.error_count, result.warning_count, len(result.errors), len(self._pending_errors)

    def forget_errors_since(self, mark: tuple[int, int, int, int]) -> None:
        """Forget the errors recorded since ``mark``: their unit of work was rolled back (Ctrl-C in the
        middle of a page), so the store holds none of them, and the step's count, its log line and its
        metrics must not either."""
        errors, warnings, kept, pending = mark
        self.result.error_count, self.result.warning_count = errors, warnings
        del self.result.errors[kept:]
        del self._pending_errors[pending:]

    @contextlib.contextmanager
    def unit_of_work(self, unit: str, number: int) -> Iterator[StoreConnection]:
        """Unit ``number`` of the step's work (an import's page, a synchronization's chunk, the record of an
        export batch's results; ``unit`` is the counter that numbers them) in one transaction, with what the
        step counted and the errors it recorded in the block.

        At the block's end, in the same transaction, the errors are written and the step's counters noted
        (``RunHistory.note_progress``, ``unit`` = ``number``): a process killed later leaves them in history.
        When the block or its COMMIT raises (Ctrl-C, a stop signal, a store error), the step stops, and its
        recorded figures must be what the store kept: the unit's counts and errors are dropped when its
        transaction was rolled back, and kept when it committed after all (see :meth:`_unit_kept`). The
        error is raised either way.
        """
        counted, errors = self.result.counters.copy(), self.errors_mark()
        try:
            with self.store.transaction() as conn:
                yield conn
                self.flush_errors(conn)
                self.result.counters[unit] = number
                RunHistory(conn).note_progress(self.step_id, json.dumps(dict(self.result.counters), default=str))
        except BaseException:
            if not self._unit_kept(unit, number):
                self.result.counters.clear()
                self.result.counters.update(counted)
                self.forget_errors_since(errors)
            raise

    def _unit_kept(self, unit: str, number: int) -> bool:
        """Whether unit ``number``'s transaction committed although it raised.

        Why ask: Ctrl-C that arrives while the store runs the COMMIT (in the database driver, where Python
        handles no signal) surfaces in the first Python code after it, with the unit already in. Taken for a
        rollback, the step's figures left out what the store kept (999 adds where an import's connector
        space held 1,499; a resume "after page 2" where the checkpoint said 3). The store knows: the progress
        note written in the unit's own transaction carries its number. A dry run commits nothing; a store
        that cannot be read now counts as not kept (the unit's own error is the one raised).
        """
        if self.dry_run:
            return False
        try:
            with self.store.read() as conn:
                step = RunHistory(conn).step(self.step_id)
            return step is not None and json.loads(step.counters or "{}").get(unit) == number
        except Exception:  # (this only decides the unit's counts)
            return False

    def flush_errors(self, conn: StoreConnection) -> None:
        """Write recorded errors in the caller's transaction, then enforce the error limit."""
        if self._pending_errors:
            self._name_people(conn, self._pending_errors)
            RunHistory(conn).record_errors(self.step_id, self._pending_errors)
            self._pending_errors.clear()

    def _name_people(self, conn: StoreConnection, errors: list[ObjectError]) -> None:
        """Fill in who each error is about from its connector-space object, and the object, where
        the error does not say (sync and export errors; import errors of objects already in the
        connector space, which may name the person from the entry but not the object)."""
        unnamed = [e for e in errors if (e.display is None or e.cs_id is None) and e.anchor]
        if not unnamed:
            return
        found = people(conn, self.agent, (e.anchor for e in unnamed))
        for err in unnamed:
            person = found.get(err.anchor or "")
            if person is not None:
                err.display = err.display or person.display
                if err.cs_id is None:
                    err.cs_id = person.cs_id

    def check_error_limit(self) -> None:
        if self.result.error_count > self.step.error_limit:
            msg = (
                f"{self.result.error_count} per-object errors exceed the step's error_limit "
                f"({self.step.error_limit}); see `mvsync history show` for the errors"
            )
            raise StepStopped("stopped-error-limit", msg)

    def emit_change(self, change: dict[str, Any]) -> None:
        if self.emit is not None:
            self.emit({"agent": self.agent, "step": self.step.type.value, **change})
