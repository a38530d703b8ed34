"""Remembering a limiter's measured wall between runs, in the agent's own state.

Why: MIM-style schedulers start every run profile in a new process, so a process-wide limiter
starts cold each time. A cold start finds the service's limit by overshooting it once, and the
push-back costs every thread of the client a whole ``Retry-After`` pause: a second or more out of
a delta import that may take only a few seconds. The wall a run measured (the limiter's census of
what the service carried, see ``_limiter``) is a fact about the tenant worth keeping: the next
run starts at it instead.

What keeps a remembered wall honest: it is written only when a run *measured* one (a census, or
a refused probe confirming it; a run that merely started at a recalled wall does not renew it), so
it expires ``max_age`` after the last measurement and a later run measures again; it is recalled
only by the limiter of the same service identity (the name says host, tenant and client); a wall
that fell meets the limiter's usual decrease; a limit that rose is found by its probes, which
drop the memory.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from connector.throttling._limiter import AdaptiveLimiter

__all__ = ["LimitKeeper", "LimitMemory"]


@dataclass(frozen=True, slots=True)
class LimitMemory:
    """Where one limiter's measured wall left it, and when the wall was measured (seconds since the epoch).

    ``wall`` is the lower of the census and the limit the run reached under it: a census counts
    units, and a ``$batch`` holds its units for its whole round trip while running fewer items in its
    last rounds, so the census can overstate the service's cap; starting a later run above the cap
    would make its first push-back a pause at full load. ``rate_bound``: the wall was a rate
    (``AdaptiveLimiter.rate_bound``), so a later run sends short batches from its first request on,
    instead of learning it again from a batch cascade (a memory written before it was kept reads False).
    """

    limiter: str
    wall: int
    measured_at: float
    rate_bound: bool = False

    def dumps(self) -> dict[str, Any]:
        return {
            "limiter": self.limiter,
            "wall": self.wall,
            "measured_at": self.measured_at,
            "rate_bound": self.rate_bound,
        }

    @classmethod
    def loads(cls, value: Any) -> LimitMemory | None:
        """The memory in ``value`` (as ``dumps`` wrote it), or None for anything else."""
        if not isinstance(value, Mapping):
            return None
        limiter, wall, at = value.get("limiter"), value.get("wall"), value.get("measured_at")
        if not isinstance(limiter, str) or not isinstance(wall, int) or not isinstance(at, int | float):
            return None
        return cls(limiter, wall, float(at), value.get("rate_bound") is True) if wall >= 1 else None

    @classmethod
    def of(cls, limiter: AdaptiveLimiter, measured_at: float | None = None) -> LimitMemory | None:
        """What ``limiter`` knows, to keep; None when it has no measured wall."""
        wall = limiter.wall()
        if wall is None:
            return None
        at = time.time() if measured_at is None else measured_at
        return cls(limiter.name, min(wall, limiter.limit), at, limiter.rate_bound)

    def fresh(self, max_age_s: float) -> bool:
        """Measured no longer than ``max_age_s`` ago (and not in the future: a clock set back)."""
        return 0 <= time.time() - self.measured_at <= max_age_s

    def recall(self, limiter: AdaptiveLimiter, *, max_age_s: float) -> bool:
        """Start ``limiter`` at this wall if it is its own, fresh enough, and the limiter learned nothing yet."""
        if self.limiter != limiter.name or not self.fresh(max_age_s):
            return False
        return limiter.recall(self.wall, rate_bound=self.rate_bound)


_UNSAVED = object()


class LimitKeeper:
    """One run's side of the memory: recall at the start, hand over what changed while it runs.

    Thread-safe: the workers of a run call :meth:`changed` after their requests, and exactly one of
    them gets each change.
    """

    def __init__(self, limiter: AdaptiveLimiter) -> None:
        self.limiter = limiter
        self._lock = threading.Lock()
        self._seen = limiter.measurements
        #: When this run last measured (None: not yet, so nothing of it is worth keeping).
        self._measured_at: float | None = None
        #: The value last handed over (``_UNSAVED``: none yet; None is a value: "forget it").
        self._kept: object = _UNSAVED

    def recall(self, memory: LimitMemory | None, *, max_age_s: float) -> LimitMemory | None:
        """Start the limiter at ``memory`` if it applies; the memory if it did."""
        with self._lock:
            self._seen = self.limiter.measurements
        return memory if memory is not None and memory.recall(self.limiter, max_age_s=max_age_s) else None

    def changed(self) -> tuple[bool, dict[str, Any] | None]:
        """``(True, value)`` once per change of what to keep (None: forget), after this run measured.

        The limit regrowing toward a new wall changes the value too (not its time): what is kept is
        the level the run reached, never more than the census.
        """
        with self._lock:
            if self.limiter.measurements != self._seen:
                self._seen = self.limiter.measurements
                self._measured_at = time.time()
            if self._measured_at is None:
                return False, None
            memory = LimitMemory.of(self.limiter, self._measured_at)
            value = memory.dumps() if memory is not None else None
            if value == self._kept:
                return False, None
            self._kept = value
            return True, value
