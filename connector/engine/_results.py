"""Run and step results, MIM-style statuses, and the per-object error sink."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Interrupted",
    "ObjectError",
    "RunResult",
    "StepResult",
    "StepStopped",
    "interruption_message",
    "step_status",
]

#: How each step kind names its "completed with errors" status (MIM's names).
_ERROR_STATUS = {
    "full-import": "completed-discovery-errors",
    "delta-import": "completed-discovery-errors",
    "full-sync": "completed-sync-errors",
    "delta-sync": "completed-sync-errors",
    "export": "completed-export-errors",
}


class StepStopped(Exception):
    """Raised inside a step to stop it with a ``stopped-*`` status (work done so far is kept)."""

    def __init__(self, status: str, message: str, report: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        #: figures that explain the stop, kept in the step's history (e.g. the deletion threshold's)
        self.report = report


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop by a signal other than Ctrl-C (SIGTERM from systemd, ``docker
    stop`` or ``kill``; SIGHUP; Ctrl-Break on Windows). A KeyboardInterrupt, so every path that stops
    cleanly on Ctrl-C stops the same way: the step and the run are recorded as ``stopped-interrupted``
    and a full import keeps its committed pages for the next run to resume."""

    def __init__(self, signal_name: str, signal_number: int) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.signal_number = signal_number


#: The attribute by which :func:`tie_to_run` names a run on the exception that ended it.
_RUN_ID_ATTR = "mvsync_run_id"


def tie_to_run(exc: BaseException, run_id: int | None) -> None:
    """Name, on ``exc``, the run in history it ended (or refused), for whoever reports it.

    Why on the exception: it is the one thing that travels from the engine to the CLI's error
    handler on every failure path (a refusal, a lock, the store, Ctrl-C), and ``--json`` must name
    the run that history recorded for it. Never called for a dry run (history keeps none).
    """
    setattr(exc, _RUN_ID_ATTR, run_id)


def recorded_run_id(exc: BaseException) -> int | None:
    """The run in history that ``exc`` ended (see :func:`tie_to_run`); None when it ended none."""
    run_id = getattr(exc, _RUN_ID_ATTR, None)
    return run_id if isinstance(run_id, int) else None


def interruption_message(exc: BaseException) -> str | None:
    """What history says of a step or run that ``exc`` ended, when it was an interruption."""
    if isinstance(exc, Interrupted):
        asker = "a service manager, a scheduler, kill, or a closed terminal"
        return f"stopped by {exc.signal_name} ({asker} asked mvsync to stop)"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted (Ctrl-C)"
    return None


@dataclass(slots=True)
class ObjectError:
    stage: str
    error_name: str
    detail: str
    anchor: str | None = None
    object_class: str | None = None
    cs_id: int | None = None
    severity: str = "error"
    #: who the object is (display name with UPN or account name); the engine fills it in if unset
    display: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "display": self.display,
            "stage": self.stage,
            "error_name": self.error_name,
            "detail": self.detail,
            "anchor": self.anchor,
            "object_class": self.object_class,
            "cs_id": self.cs_id,
            "severity": self.severity,
        }


#: Per-object errors a run's output shows per step (the text table's lines, ``--json``'s
#: ``object_errors``); ``mvsync history show`` has them all.
SHOWN_ERRORS = 10


def elapsed_end(started_at: float, started_monotonic: float) -> float:
    """The end time of something that started at ``started_at``: its start plus the time elapsed on
    the monotonic clock.

    Why not the wall clock at the end: it may jump while a run goes on (NTP stepping it back after a
    VM resumed, an administrator setting it), and history's durations are end minus start: a step of
    4 s was recorded as -3587 s (the run's --json said 0.0, clamped). A duration is then right
    whatever the clock did, and ``started_at`` still says, by the wall clock, when it began.
    """
    return started_at + (time.monotonic() - started_monotonic)


@dataclass(slots=True)
class StepResult:
    agent: str
    kind: str
    status: str = "in-progress"
    message: str = ""
    counters: Counter[str] = field(default_factory=Counter)
    errors: list[ObjectError] = field(default_factory=list)
    error_count: int = 0
    warning_count: int = 0
    started_at: float = 0.0
    ended_at: float = 0.0
    step_id: int | None = None
    #: ``time.monotonic()`` when it started (see :func:`elapsed_end`)
    started_monotonic: float = field(default_factory=time.monotonic)

    @property
    def seconds(self) -> float:
        return max(0.0, self.ended_at - self.started_at)

    def end(self) -> None:
        """Set ``ended_at`` (see :func:`elapsed_end`)."""
        self.ended_at = elapsed_end(self.started_at, self.started_monotonic)

    def as_dict(self) -> dict[str, Any]:
        return {
            "step_id": self.step_id,
            "agent": self.agent,
            "kind": self.kind,
            "status": self.status,
            "message": self.message,
            "counters": dict(self.counters),
            "errors": self.error_count,
            "warnings": self.warning_count,
            "seconds": round(self.seconds, 3),
            # who failed and why, in the one line a scheduled run leaves (cycle.jsonl)
            "object_errors": [e.as_dict() for e in self.errors[:SHOWN_ERRORS]],
        }


def step_status(result: StepResult) -> str:
    """The MIM-style status of a step that ran to its end."""
    if result.error_count:
        return _ERROR_STATUS.get(result.kind, "completed-errors")
    if result.warning_count:
        return "completed-warnings"
    return "success"


@dataclass(slots=True)
class RunResult:
    profile: str
    run_id: int | None
    dry_run: bool
    steps: list[StepResult] = field(default_factory=list)
    status: str = "in-progress"
    started_at: float = 0.0
    ended_at: float = 0.0
    #: ``time.monotonic()`` when it started (see :func:`elapsed_end`)
    started_monotonic: float = field(default_factory=time.monotonic)
    #: Steps that began (held their locks and have a history row): each one is in the step metrics,
    #: also the one an exception ended, which ``steps`` does not hold
    steps_begun: int = 0

    def end(self) -> None:
        """Set ``ended_at`` (see :func:`elapsed_end`)."""
        self.ended_at = elapsed_end(self.started_at, self.started_monotonic)

    def as_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "profile": self.profile,
            "dry_run": self.dry_run,
            "status": self.status,
            "seconds": round(max(0.0, self.ended_at - self.started_at), 3),
            "steps": [s.as_dict() for s in self.steps],
        }


def run_status(steps: list[StepResult]) -> str:
    """A run's status: its first stopped step's, else the worst completed one."""
    for step in steps:
        if step.status.startswith("stopped-"):
            return step.status
    for step in steps:
        if step.status.startswith("completed-") and step.status.endswith("-errors"):
            return step.status
    if any(s.status == "completed-warnings" for s in steps):
        return "completed-warnings"
    return "success"
