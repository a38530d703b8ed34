"""Throttling model: per-app rate and concurrency, Outlook per-mailbox limits, directory resource units.

Each limit answers "admit or wait N seconds"; the Graph layer turns a wait into a 429 with the
documented body and ``Retry-After``. Buckets refill continuously, so a client that honours
Retry-After gets through on its next attempt.

Which limits govern photo requests is not clearly documented, so the emulator offers *named
models*, one per plausible reading, chosen with ``mvsync emulator serve --throttle NAME`` (or a
JSON object of limits, optionally ``{"base": NAME, ...}``) and ``Admin.set_throttle`` mid-run.
A client must do well under every one of them (see ``THROTTLE_MODELS`` for what each models and
its source). The numbers that no Microsoft page gives (50 in flight, 2,000 requests/s, 12, 150)
are assumptions of this emulator, stated as such.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from pydantic import Field, TypeAdapter

from connector.emulator._checks import checked, json_object

__all__ = [
    "THROTTLE_FIELDS",
    "THROTTLE_MODELS",
    "Admission",
    "Throttle",
    "ThrottleModel",
    "TokenBucket",
    "ceiling_requests_per_s",
    "format_retry_after",
    "parse_throttle",
]

_LIMITS_PAGE = "https://learn.microsoft.com/graph/throttling-limits"

_Count = Annotated[int, Field(ge=1, strict=True)]
#: A cap on requests in flight: 0 admits nothing (a tenant that refuses every request), None is no cap.
_Cap = Annotated[int, Field(ge=0, strict=True)]

#: The EmulatorConfig fields a throttling model sets (the rest of the tenant is not its business), and
#: the values each takes: a limit given as JSON is checked here, so ``"app_concurrency": "x"`` is an
#: error that names the limit instead of an emulator that fails on its first request.
_LIMIT_TYPES: Mapping[str, TypeAdapter[Any]] = {
    "app_rate_per_s": TypeAdapter(Annotated[float, Field(gt=0, strict=True)] | None),
    "app_concurrency": TypeAdapter(_Cap | None),
    "mailbox_concurrency": TypeAdapter(_Cap | None),
    "mailbox_requests_per_10min": TypeAdapter(_Count | None),
    "mailbox_upload_bytes_per_5min": TypeAdapter(_Count | None),
    "mailbox_concurrency_scope": TypeAdapter(Literal["mailbox", "app"]),
    # 0 sizes the budget by the tenant's user count (EmulatorConfig.directory_ru_per_10s)
    "directory_ru_per_10s": TypeAdapter(Annotated[int, Field(ge=0, strict=True)] | None),
    "retry_after_format": TypeAdapter(Literal["integer", "decimal"]),
}
THROTTLE_FIELDS = tuple(_LIMIT_TYPES)


@dataclass(frozen=True)
class ThrottleModel:
    """A named set of limits: what it stands for, and where that reading comes from."""

    name: str
    models: str
    source: str
    limits: Mapping[str, Any] = field(default_factory=dict)


#: The defaults every model starts from (EmulatorConfig's defaults).
DEFAULT_LIMITS: Mapping[str, Any] = {
    "app_rate_per_s": 2000.0,
    "app_concurrency": 50,
    "mailbox_concurrency": 4,
    "mailbox_requests_per_10min": 10_000,
    "mailbox_upload_bytes_per_5min": 150 * 1024 * 1024,
    "mailbox_concurrency_scope": "mailbox",
    "directory_ru_per_10s": 0,
    "retry_after_format": "integer",
}

THROTTLE_MODELS: dict[str, ThrottleModel] = {
    model.name: model
    for model in (
        ThrottleModel(
            "default",
            "Outlook's limits per app and mailbox (4 concurrent, 10,000 requests per 10 minutes, 150 MB "
            "upload per 5 minutes), Entra ID resource units by tenant size, and per app 50 requests in "
            "flight and 2,000 requests/s (the last two are this emulator's assumptions: Graph documents "
            "only a global 130,000 requests per 10 s per app)",
            f"{_LIMITS_PAGE} (Outlook service limits; identity and access service limits; global limits)",
        ),
        ThrottleModel(
            "outlook-per-app",
            "the current page's reading of Outlook's '4 concurrent requests' as per app, across all "
            "mailboxes: at most 4 photo requests in flight for the whole app",
            f"{_LIMITS_PAGE} (Outlook service limits, current text)",
            {"mailbox_concurrency_scope": "app"},
        ),
        ThrottleModel(
            "in-flight-12",
            "a stricter, undocumented per-app concurrency limit of 12 requests in flight (an assumption: "
            "stands for any limit tighter than the client's configured ceiling)",
            "assumption of this emulator; Graph documents no per-app concurrency limit",
            {"app_concurrency": 12},
        ),
        ThrottleModel(
            "rate-150",
            "a per-app rate of 150 requests/s (token bucket, 1 s burst), for a service that limits by rate "
            "rather than by concurrency (an assumption)",
            "assumption of this emulator; Graph's documented rates are per 10 s or 10 minutes",
            {"app_rate_per_s": 150.0},
        ),
    )
}


def parse_throttle(spec: str | Mapping[str, Any] | None) -> dict[str, Any]:
    """Every throttling field's value for a model name, JSON text, or mapping (``base`` picks a model).

    Unknown names and fields, and values a limit cannot take, are errors that say what is allowed.
    """
    if spec is None:
        spec = "default"
    if isinstance(spec, str):
        text = spec.strip()
        if not text.startswith("{"):
            model = THROTTLE_MODELS.get(text)
            if model is None:
                known = ", ".join(THROTTLE_MODELS)
                raise ValueError(f"unknown throttling model {text!r}; known: {known}, or a JSON object of limits")
            return {**DEFAULT_LIMITS, **model.limits}
        spec = json_object(text, "throttling model", "limits")
    values = dict(spec)
    base = values.pop("base", "default")
    if not isinstance(base, str) or base.strip().startswith("{"):
        raise ValueError(f"a throttling model's base must be a model name, not {base!r}")
    limits = parse_throttle(base)
    for key, value in values.items():
        adapter = _LIMIT_TYPES.get(key)
        if adapter is None:
            raise ValueError(f"unknown throttling limit {key!r}; known: {', '.join(THROTTLE_FIELDS)}")
        limits[key] = checked(adapter, f"throttling limit {key!r}", value)
    return limits


def ceiling_requests_per_s(limits: Mapping[str, Any], latency_s: float) -> float | None:
    """Graph requests per second the model's tightest limit allows (None: no finite ceiling).

    A concurrency limit allows ``limit / latency`` (Little's law); a rate limit its rate. Outlook's
    per-mailbox limits bind a whole client only when scoped to the app. Listing requests are a
    fraction of a percent of a photo import's, so the photo limits stand for all of them.
    """
    candidates: list[float] = []
    if limits.get("app_rate_per_s"):
        candidates.append(float(limits["app_rate_per_s"]))
    if latency_s > 0 and limits.get("app_concurrency"):
        candidates.append(float(limits["app_concurrency"]) / latency_s)
    if latency_s > 0 and limits.get("mailbox_concurrency") and limits.get("mailbox_concurrency_scope") == "app":
        candidates.append(float(limits["mailbox_concurrency"]) / latency_s)
    return min(candidates) if candidates else None


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

    def apply(self, limits: Mapping[str, Any], directory_ru_per_10s: int | None) -> None:
        """Switch to another model's limits mid-run (requests in flight keep their place)."""
        self.set_limits(app_rate_per_s=limits["app_rate_per_s"], app_concurrency=limits["app_concurrency"])
        self.mailbox_concurrency = limits["mailbox_concurrency"]
        self.mailbox_per_10min = limits["mailbox_requests_per_10min"]
        self.mailbox_upload_per_5min = limits["mailbox_upload_bytes_per_5min"]
        self.mailbox_scope = limits["mailbox_concurrency_scope"]
        self.directory_ru_per_10s = directory_ru_per_10s
        self._mailbox_buckets.clear()
        self._upload_buckets.clear()
        self._ru_buckets.clear()

    def ru_used(self, app: str) -> float | None:
        """Share of the app's directory resource-unit budget in use (for ``x-ms-throttle-limit-percentage``)."""
        bucket = self._ru_buckets.get(app)
        if bucket is None or not bucket.capacity:
            return None
        level = min(bucket.capacity, bucket.level + (time.monotonic() - bucket.stamp) * bucket.rate)
        return 1.0 - level / bucket.capacity

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

    def enter(self, app: str, mailbox: str | None) -> tuple[str, tuple[str, str] | None]:
        """Count a request in flight; hand the result to ``leave`` (the model may change meanwhile)."""
        self._app_inflight[app] = self._app_inflight.get(app, 0) + 1
        key = None
        if mailbox is not None:
            key = (app, mailbox if self.mailbox_scope == "mailbox" else "*")
            self._mailbox_inflight[key] = self._mailbox_inflight.get(key, 0) + 1
        return app, key

    def leave(self, entered: tuple[str, tuple[str, str] | None]) -> None:
        app, key = entered
        self._app_inflight[app] -= 1
        if key is not None:
            self._mailbox_inflight[key] -= 1
