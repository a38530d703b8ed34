"""The step-wide limit on waiting out push-back: throttling slows a run down, but not forever.

A throttled request waits its turn and is sent again, spending no failure attempt. That is right
while the service lets *some* work through. When it lets nothing through for a long time (a tenant
throttled for hours, an IIS application pool that answers 503 to everything), waiting on would hold
the step, and the schedule behind it, without end; so after ``max_throttled_wait_minutes`` of
nothing but push-back the step stops cleanly (``stopped-throttled``), keeping what it imported.
"""

from __future__ import annotations

import threading
import time

from connector.sdk import StopRunError

__all__ = ["ThrottleWatch", "ThrottledTooLongError"]


class ThrottledTooLongError(StopRunError):
    """A service pushed back on every request for longer than ``max_throttled_wait_minutes``."""

    status = "stopped-throttled"


class ThrottleWatch:
    """When one client last made progress, and the stop when push-back alone has lasted too long.

    ``service`` names the service in the stop message ("Microsoft Graph (graph.microsoft.com)");
    ``then`` says what was kept and what to do next.
    """

    def __init__(self, service: str, minutes: float, then: str) -> None:
        self.service = service
        self.minutes = minutes
        self.then = then
        self._lock = threading.Lock()
        self._last_progress = time.monotonic()

    def progressed(self) -> None:
        """An answer that was not push-back: the service lets work through."""
        with self._lock:
            self._last_progress = time.monotonic()

    def check(self, more_s: float = 0.0) -> None:
        """Raise ``ThrottledTooLongError`` if waiting ``more_s`` more would pass the limit.

        Called whenever a throttled request is about to wait again, so a Retry-After that would
        outlast the limit stops the step now instead of sleeping first.
        """
        with self._lock:
            stalled = time.monotonic() - self._last_progress
        if stalled + more_s > self.minutes * 60.0:
            # what passed and what the service asks for apart: "throttled for 2.0 minutes" after 0.1 s
            # misled whoever looked for the cause in the last minutes
            asks = f", and asks to wait {_span(more_s)} more" if more_s > 0 else ""
            raise ThrottledTooLongError(
                f"{self.service} has throttled every request for {_span(stalled)}{asks} "
                f"(max_throttled_wait_minutes = {self.minutes:g}); {self.then}"
            )


def _span(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} minutes"
