"""Throttling model: per-app rate and concurrency, Outlook per-mailbox limits, directory resource units.

Each limit answers "admit or wait N seconds"; the Graph layer turns a wait into a 429 with the
documented body and ``Retry-After``. Buckets refill continuously, so a client that honours
Retry-After gets through on its next attempt.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

__all__ = ["Admission", "Throttle", "TokenBucket", "format_retry_after"]


class TokenBucket:
    """``capacity`` tokens, refilled at ``rate`` per second."""

    __slots__ = ("capacity", "level", "rate", "stamp")

    def __init__(self, capacity: float, rate: float) -> None:
        self.capacity = capacity
        self.rate = rate
        self.level = capacity
        self.stamp = time.monotonic()

    def take(self, cost: float = 1.0) -> float:
        """0.0 if admitted, else the seconds until ``cost`` tokens are available."""
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.level >= cost:
            self.level -= cost
            return 0.0
        return (cost - self.level) / self.rate


def format_retry_after(seconds: float, decimal: bool) -> str:
    """Graph sends whole seconds; an older doc shows ``2.128``, so clients must parse both."""
    if decimal:
        return f"{max(seconds, 0.001):.3f}"
    return str(max(1, math.ceil(seconds)))


@dataclass(frozen=True)
class Admission:
    """Why a request was refused (None fields when admitted)."""

    code: str  # "TooManyRequests" | "ApplicationThrottled"
    message: str
    wait_s: float
    scope: str


class Throttle:
    """All limits of one emulator; not thread-safe (event loop only)."""

    def __init__(
        self,
        *,
        app_rate_per_s: float | None,
        app_concurrency: int | None,
        mailbox_concurrency: int | None,
        mailbox_per_10min: int | None,
        mailbox_scope: str,
        directory_ru_per_10s: int | None,
        mailbox_upload_per_5min: int | None = None,
    ) -> None:
        self.app_rate_per_s = app_rate_per_s
        self.app_concurrency = app_concurrency
        self.mailbox_concurrency = mailbox_concurrency
        self.mailbox_per_10min = mailbox_per_10min
        self.mailbox_upload_per_5min = mailbox_upload_per_5min
        self._upload_buckets: dict[tuple[str, str], TokenBucket] = {}
        self.mailbox_scope = mailbox_scope
        self.directory_ru_per_10s = directory_ru_per_10s
        self._app_buckets: dict[str, TokenBucket] = {}
        self._app_inflight: dict[str, int] = {}
        self._mailbox_buckets: dict[tuple[str, str], TokenBucket] = {}
        self._mailbox_inflight: dict[tuple[str, str], int] = {}
        self._ru_buckets: dict[str, TokenBucket] = {}

    def set_limits(self, *, app_rate_per_s: float | None, app_concurrency: int | None) -> None:
        self.app_rate_per_s = app_rate_per_s
        self.app_concurrency = app_concurrency
        self._app_buckets.clear()

    def admit(self, app: str, mailbox: str | None, resource_units: int) -> Admission | None:
        """Admit one Graph request (a $batch item counts as one) or say why not."""
        if self.app_concurrency is not None and self._app_inflight.get(app, 0) >= self.app_concurrency:
            return Admission("TooManyRequests", "Please retry again later.", 1.0, "Application/Concurrency")
        if self.app_rate_per_s is not None:
            bucket = self._app_buckets.get(app)
            if bucket is None:
                bucket = self._app_buckets[app] = TokenBucket(self.app_rate_per_s, self.app_rate_per_s)
            wait = bucket.take()
            if wait:
                return Admission("TooManyRequests", "Please retry again later.", wait, "Application/Rate")
        if mailbox is not None:
            key = (app, mailbox if self.mailbox_scope == "mailbox" else "*")
            if self.mailbox_concurrency is not None and self._mailbox_inflight.get(key, 0) >= self.mailbox_concurrency:
                return Admission(
                    "ApplicationThrottled",
                    "Application is over its MailboxConcurrency limit.",
                    1.0,
                    "Mailbox/Concurrency",
                )
            if self.mailbox_per_10min is not None:
                mbucket = self._mailbox_buckets.get((app, mailbox))
                if mbucket is None:
                    limit = self.mailbox_per_10min
                    mbucket = self._mailbox_buckets[(app, mailbox)] = TokenBucket(limit, limit / 600.0)
                wait = mbucket.take()
                if wait:
                    return Admission(
                        "ApplicationThrottled",
                        "Application is over its MailboxRequests limit.",
                        wait,
                        "Mailbox/Requests",
                    )
        if resource_units and self.directory_ru_per_10s:
            rbucket = self._ru_buckets.get(app)
            if rbucket is None:
                limit = self.directory_ru_per_10s
                rbucket = self._ru_buckets[app] = TokenBucket(limit, limit / 10.0)
            wait = rbucket.take(resource_units)
            if wait:
                return Admission("TooManyRequests", "Please retry again later.", wait, "Tenant_Application/ReadWrite")
        return None

    def admit_upload(self, app: str, mailbox: str, size: int) -> Admission | None:
        """Admit ``size`` bytes of upload (PUT/PATCH/POST body) to one mailbox, or say why not.

        Outlook allows 150 MB per app and mailbox per 5 minutes (throttling-limits); the refusal
        text is not documented, so it follows the other Outlook limits' wording.
        """
        if self.mailbox_upload_per_5min is None or size <= 0:
            return None
        bucket = self._upload_buckets.get((app, mailbox))
        if bucket is None:
            limit = self.mailbox_upload_per_5min
            bucket = self._upload_buckets[(app, mailbox)] = TokenBucket(limit, limit / 300.0)
        wait = bucket.take(size)
        if wait:
            return Admission(
                "ApplicationThrottled", "Application is over its MailboxUploadSize limit.", wait, "Mailbox/Upload"
            )
        return None

    def enter(self, app: str, mailbox: str | None) -> None:
        self._app_inflight[app] = self._app_inflight.get(app, 0) + 1
        if mailbox is not None:
            key = (app, mailbox if self.mailbox_scope == "mailbox" else "*")
            self._mailbox_inflight[key] = self._mailbox_inflight.get(key, 0) + 1

    def leave(self, app: str, mailbox: str | None) -> None:
        self._app_inflight[app] -= 1
        if mailbox is not None:
            key = (app, mailbox if self.mailbox_scope == "mailbox" else "*")
            self._mailbox_inflight[key] -= 1
