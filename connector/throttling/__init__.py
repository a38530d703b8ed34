"""Manners toward throttled services, shared by every agent that talks to one.

:class:`AdaptiveLimiter` finds a service's in-flight ceiling from its answers (see ``_limiter``);
:func:`shared_limiter` hands every caller of one service identity (the Exchange Online import, its
photo export, any later Graph agent in the same process) the *same* limiter, because the service
counts their requests together: a Retry-After that one of them receives must pause all of them.
:class:`LimitMemory` carries the wall a run measured to the next run (another process), through
the agent's state. :class:`ThrottleWatch` stops a step that has had nothing but push-back for too long.
"""

from __future__ import annotations

import threading
import time
from email.utils import parsedate_to_datetime
from typing import Any

from connector import metrics
from connector.throttling._limiter import AdaptiveLimiter, Cancelled, LimiterStats, Signal, Ticket
from connector.throttling._memory import LimitKeeper, LimitMemory
from connector.throttling._watch import ThrottledTooLongError, ThrottleWatch

__all__ = [
    "AdaptiveLimiter",
    "Cancelled",
    "LimitKeeper",
    "LimitMemory",
    "LimiterStats",
    "Signal",
    "ThrottleWatch",
    "ThrottledTooLongError",
    "Ticket",
    "forget_shared_limiters",
    "parse_retry_after",
    "shared_limiter",
]

_REGISTRY: dict[str, AdaptiveLimiter] = {}
_REGISTRY_LOCK = threading.Lock()


def shared_limiter(key: str, *, ceiling: int, **options: Any) -> AdaptiveLimiter:
    """The process-wide limiter for ``key`` (a service and the identity it counts requests by).

    The first caller creates it; later callers share what it has learned. A changed ``ceiling``
    (the setting was edited between steps) applies to the shared limiter too.
    """
    with _REGISTRY_LOCK:
        limiter = _REGISTRY.get(key)
        if limiter is None:
            limiter = _REGISTRY[key] = AdaptiveLimiter(key, ceiling=ceiling, **options)
            limiter.on_change(_MetricsExporter(key))
        limiter.ceiling = max(limiter.floor, ceiling)
        for name, value in options.items():  # settings edited between steps apply too
            setattr(limiter, name, value)
        return limiter


def forget_shared_limiters() -> None:
    """Drop every shared limiter (what they learned goes with them); for tests and long-lived hosts."""
    with _REGISTRY_LOCK:
        _REGISTRY.clear()


class _MetricsExporter:
    """Publishes a limiter's limit and pauses as Prometheus series (``connector.metrics``)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pauses = 0
        self.pause_seconds = 0.0

    def __call__(self, limiter: AdaptiveLimiter) -> None:
        stats = limiter.stats
        metrics.concurrency_limit(self.name, stats.limit)
        if stats.pauses > self.pauses:
            metrics.throttle_pause(self.name, stats.pause_seconds - self.pause_seconds)
            self.pauses, self.pause_seconds = stats.pauses, stats.pause_seconds


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: ``10`` and ``2.128`` both occur, and HTTP dates."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            seconds = float(parsedate_to_datetime(text).timestamp()) - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, seconds)
