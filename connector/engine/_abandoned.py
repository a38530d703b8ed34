"""Runs and steps that a dead process left ``in-progress`` in history, closed by the next run.

A run ends its history rows in ``finally`` blocks, so Ctrl-C, SIGTERM and errors are recorded. A
process that dies without running them (kill -9, the OOM killer, Task Scheduler's "End" or a
service stop that calls TerminateProcess, a power cut or reboot) leaves its run and its current
step ``in-progress`` for ever: ``history list`` and the console would call it running, and nobody
would see that it ended, or that the next full import resumed it. The next run closes such rows as
``stopped-interrupted``, with a message that says what happened, but only on proof that their
process is gone, never on a guess:

* **A step, by its lock.** A step holds its agent's lock (a synchronization also the metaverse
  lock) from the history row that starts it to the one that ends it, and the operating system
  (PostgreSQL, for advisory locks) drops a lock when its process dies. So a step of an agent whose
  lock this run now holds, still ``in-progress``, was left by a process that is gone, on any host.
  Its run goes with it.
* **A run, by its run lock.** A run holds a lock of its own (``run:<id>``, taken before its history
  row is committed, released after its end is recorded or found unrecordable) for as long as it
  runs. A run still ``in-progress`` whose run lock this run can take has no process left, on any
  host: killed between two steps or while it waited for a lock, or its end not recorded because the
  store stopped answering (PostgreSQL shut down under its last step). Only runs recorded since the
  store's migration 7 took one (``RunHistory.holds_run_lock``).
* **A run, by its process.** For a run recorded by an earlier mvsync, on this host its process is
  looked up: a pid that no longer runs, or that now belongs to a process started after the run began
  (a reused pid), is gone. Such a run of another host waits until one of its steps proves it.

The end time of such a row stays unknown (NULL): when the process died is not recorded anywhere. A
step's counters are what its last committed unit of work wrote (``RunHistory.note_progress``).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable

from connector.config import RunStepKind
from connector.store import RunHistory, RunRow, SqlStore, StepRow

__all__ = [
    "ABANDONED_STATUS",
    "ENDED_UNRECORDED",
    "SYNC_KINDS",
    "abandoned_runs",
    "close_abandoned_runs",
    "close_abandoned_steps",
    "ended_unrecorded",
    "process_gone",
    "run_lock",
    "shown_status",
    "unrecorded_message",
]

ABANDONED_STATUS = "stopped-interrupted"

#: What history shows (``mvsync history``, the console) as the status of a run, and of its open step,
#: recorded ``in-progress`` whose process is provably gone (:func:`ended_unrecorded`), until the next
#: run records it as ``ABANDONED_STATUS``. Never written to the store.
ENDED_UNRECORDED = "ended-unrecorded"

#: Seconds a process's start time may trail its run's recorded start and still be the run's own
#: process (clock resolution of process start times): a later one reuses the pid.
_START_SLACK_S = 1.0

#: The step kinds that hold the metaverse lock as well as their agent's.
SYNC_KINDS = (RunStepKind.FULL_SYNC.value, RunStepKind.DELTA_SYNC.value)

log = logging.getLogger("mvsync.engine")


def run_lock(run_id: int | None) -> str:
    """The name of the lock a run holds while it runs (see the module docstring)."""
    return f"run:{run_id}"


def process_gone(run: RunRow) -> bool:
    """True only when the process that ran ``run`` is provably gone (see the module docstring)."""
    if run.pid is None or run.host != socket.gethostname() or run.pid == os.getpid():
        return False
    # imported here: only a run left in progress needs it (psutil's Linux backend imports the POSIX
    # `resource` module, which the tests' Windows lane removes; its Windows backend does not)
    import psutil

    try:
        started = float(psutil.Process(run.pid).create_time())
    except psutil.NoSuchProcess:  # a zombie too: it ran no more code
        return True
    except psutil.Error:  # access denied (another account's process on Windows): it may be ours
        return False
    return started > run.started_at + _START_SLACK_S


def _where(run: RunRow | None) -> str:
    if run is None or run.pid is None:
        return "the mvsync process"
    return f"the mvsync process (pid {run.pid} on {run.host})"


def _close_step(history: RunHistory, step: StepRow, run: RunRow | None, by_run: int | None) -> bool:
    message = (
        f"{_where(run)} ended while this step ran, without recording its end (killed, crashed, its machine "
        f"restarted, or the store unreachable when it ended: its error output says which); found by run {by_run}"
    )
    if step.kind == RunStepKind.FULL_IMPORT.value:
        message += (
            "; the next full import of the agent resumes from its last committed page if the agent keeps "
            "checkpoints (Exchange Online's does), or starts over"
        )
    done = history.close_abandoned_step(step.id, ABANDONED_STATUS, message)
    if done:
        log.warning(
            "history: step %d (%s %s) of run %d was left in progress: %s",
            step.id,
            step.agent,
            step.kind,
            step.run_id,
            message,
        )
    return done


def shown_status(status: str, gone: bool) -> str:
    """The status history shows: ``ENDED_UNRECORDED`` for what is recorded ``in-progress`` of a run whose
    process is gone (``gone``: its id is among :func:`ended_unrecorded`'s), else the recorded one."""
    return ENDED_UNRECORDED if gone and status == "in-progress" else status


def unrecorded_message(run: RunRow) -> str:
    """What history says of a run recorded ``in-progress`` whose process is gone, until the next run
    records it (:func:`ended_unrecorded`)."""
    return (
        f"{_where(run)} ended without recording the end of the run (killed, crashed, the machine restarted, or "
        f"the store unreachable when it ended); the next run records it as {ABANDONED_STATUS}"
    )


def _close_run(history: RunHistory, run: RunRow, by_run: int | None) -> bool:
    """Close ``run`` and any step of it still open."""
    open_steps = history.open_steps(run_id=run.id)
    for step in open_steps:
        _close_step(history, step, run, by_run)
    during = (
        f" during its step {open_steps[-1].seq} ({open_steps[-1].agent} {open_steps[-1].kind})" if open_steps else ""
    )
    message = (
        f"{_where(run)} ended{during} without recording the end of the run (killed, crashed, the machine "
        f"restarted, or the store unreachable when it ended); found by run {by_run}"
    )
    done = history.close_abandoned_run(run.id, ABANDONED_STATUS, message)
    if done:
        log.warning("history: run %d (%s) was left in progress: %s", run.id, run.profile, message)
    return done


def close_abandoned_steps(history: RunHistory, agent: str, *, metaverse: bool, by_run: int | None) -> list[int]:
    """Close the open steps the locks this run holds prove abandoned, with their runs; the steps' ids."""
    open_steps = history.open_steps(agent=agent)
    if metaverse:
        known = {s.id for s in open_steps}
        open_steps += [s for s in history.open_steps(kinds=SYNC_KINDS) if s.id not in known]
    closed: list[int] = []
    for step in open_steps:
        if step.run_id == by_run:
            continue
        run = history.run(step.run_id)
        if run is not None and run.status == "in-progress":
            _close_run(history, run, by_run)  # the step too
            closed.append(step.id)
        elif _close_step(history, step, run, by_run):
            closed.append(step.id)
    return closed


def abandoned_runs(
    history: RunHistory, *, lock_free: Callable[[str], bool] | None = None, but: int | None = None
) -> list[RunRow]:
    """The runs still ``in-progress`` (other than ``but``) whose process is provably gone.

    ``lock_free(name)``: whether a lock is free (taken and let go at once), for the proof by run lock;
    None: only the proof by process (a dry run must not touch the lock files of other runs)."""

    def gone(run: RunRow) -> bool:
        if lock_free is not None and history.holds_run_lock(run):
            return lock_free(run_lock(run.id))
        return process_gone(run)

    return [run for run in history.open_runs() if run.id != but and gone(run)]


def ended_unrecorded(store: SqlStore) -> dict[int, RunRow]:
    """The runs recorded ``in-progress`` whose process is provably gone, by id, found without writing:
    what ``mvsync history`` shows as ended without a recorded end, before the next run records it.

    Why a second read: a run's lock found free proves its process gone only while its row still reads
    ``in-progress`` after the lock was looked at, since a live run lets its lock go only once its end
    is committed; a run that ended between the first read and the look is not in the second. The
    locks are looked at with :meth:`~connector.store.LockManager.held`, which takes nothing that a
    run could wait for and removes nothing a killed run left; a lock this account cannot look at
    proves nothing, and the run stays ``in-progress``.
    """
    with store.read() as conn:
        candidates = abandoned_runs(RunHistory(conn), lock_free=lambda name: store.locks.held(name) is False)
    if not candidates:
        return {}
    with store.read() as conn:
        still_open = {run.id for run in RunHistory(conn).open_runs()}
    return {run.id: run for run in candidates if run.id in still_open}


def close_abandoned_runs(
    history: RunHistory, *, by_run: int | None, lock_free: Callable[[str], bool] | None = None
) -> list[int]:
    """Close the open runs whose process is gone (:func:`abandoned_runs`), with their open steps; the runs' ids."""
    gone = abandoned_runs(history, lock_free=lock_free, but=by_run)
    return [run.id for run in gone if _close_run(history, run, by_run)]
