"""A small Microsoft Graph client: retries that honour Retry-After, ``$batch``, and a request budget.

Why not the Graph SDK: we need exactly four things it does not give together: per-item retries
inside ``$batch`` (SDKs do not retry throttled batch items), a per-run retry budget, a cap on
requests in flight that counts batch items the way Graph does, and access-token refresh on 401
mid-run. Everything here is synchronous and thread-safe; the import pipeline runs it on threads.

Retry policy (one function, ``backoff_seconds``, used for whole requests through tenacity and for
batch items): a ``Retry-After`` (integer or decimal seconds) is honoured as given (capped at
``retry_after_max_s``); otherwise exponential backoff with jitter. 429, 500, 502, 503, 504,
connection resets and truncated bodies are retried; every retry spends one unit of the run's budget,
and an empty budget turns failures into per-object errors instead of endless waiting.
"""

from __future__ import annotations

import base64
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import requests
import tenacity

from connector import metrics
from connector.agents.exchange_online._auth import GraphAuth
from connector.agents.exchange_online._settings import ExchangeOnlineSettings

__all__ = [
    "BatchItem",
    "GraphClient",
    "GraphResponse",
    "GraphStats",
    "RetryBudget",
    "RetryableError",
    "backoff_seconds",
    "parse_retry_after",
]

log = logging.getLogger("mvsync.agent.exchange_online.graph")

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
#: Graph runs at most this many items of one ``$batch`` at a time against Outlook (photos).
BATCH_PARALLELISM = 4


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header: ``10`` and ``2.128`` both occur (HTTP dates too)."""
    if value is None:
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        from email.utils import parsedate_to_datetime

        try:
            seconds = float(parsedate_to_datetime(text).timestamp()) - time.time()
        except (TypeError, ValueError):
            return None
    return max(0.0, seconds)


def backoff_seconds(attempt: int, retry_after: float | None, settings: ExchangeOnlineSettings) -> float:
    """How long to wait before retry number ``attempt`` (1-based).

    The server's Retry-After wins (Graph says exactly when capacity returns; waiting less only earns
    another 429); without one, exponential backoff with "equal jitter" spreads the workers out.
    """
    if retry_after is not None:
        return min(retry_after, settings.retry_after_max_s)
    ceiling = min(settings.backoff_max_s, settings.backoff_initial_s * 2.0 ** (attempt - 1))
    return float(ceiling / 2 + random.uniform(0, ceiling / 2))


@dataclass(slots=True)
class GraphResponse:
    """One answer (a whole HTTP response or one ``$batch`` item), body already read."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    json_body: Any = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def error_code(self) -> str:
        error = self.json_body.get("error") if isinstance(self.json_body, dict) else None
        return str(error.get("code", "")) if isinstance(error, dict) else ""

    @property
    def error_message(self) -> str:
        error = self.json_body.get("error") if isinstance(self.json_body, dict) else None
        return str(error.get("message", ""))[:300] if isinstance(error, dict) else ""

    @property
    def retry_after(self) -> float | None:
        return parse_retry_after(self.headers.get("retry-after"))

    def describe(self) -> str:
        code = self.error_code
        return f"HTTP {self.status}" + (f" {code}: {self.error_message}" if code else "")


class RetryableError(Exception):
    """A failure worth retrying (throttled, server error, connection trouble)."""

    def __init__(self, detail: str, *, retry_after: float | None = None, response: GraphResponse | None = None):
        super().__init__(detail)
        self.retry_after = retry_after
        self.response = response


class RetryBudget:
    """Retries allowed in one run step, shared by every worker."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.spent = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        with self._lock:
            if self.spent >= self.total:
                return False
            self.spent += 1
            return True

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.total


@dataclass
class GraphStats:
    """Counters for run history and the benchmark (a 429 item counts like a 429 response)."""

    http_requests: int = 0
    batch_requests: int = 0
    batch_items: int = 0
    throttled: int = 0
    server_errors: int = 0
    connection_errors: int = 0
    retries: int = 0
    token_refreshes_on_401: int = 0
    bytes_received: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, **counts: int) -> None:
        with self._lock:
            for name, n in counts.items():
                setattr(self, name, getattr(self, name) + n)
        # the same events, for Prometheus (a long-lived process or the run's textfile)
        if counts.get("throttled"):
            metrics.graph_throttle(counts["throttled"])
        if counts.get("retries"):
            metrics.graph_retry(counts["retries"])

    @property
    def graph_requests(self) -> int:
        """Requests as Graph counts them: plain requests plus batch items (not the envelopes)."""
        return self.http_requests - self.batch_requests + self.batch_items

    @property
    def throttled_ratio(self) -> float:
        return self.throttled / self.graph_requests if self.graph_requests else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "graph_requests": self.graph_requests,
            "http_requests": self.http_requests,
            "batch_requests": self.batch_requests,
            "batch_items": self.batch_items,
            "throttled": self.throttled,
            "throttled_ratio": round(self.throttled_ratio, 5),
            "server_errors": self.server_errors,
            "connection_errors": self.connection_errors,
            "retries": self.retries,
            "token_refreshes_on_401": self.token_refreshes_on_401,
            "bytes_received": self.bytes_received,
        }


class _Slots:
    """A weighted semaphore: requests in flight as Graph counts them (a batch holds up to 4)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._used = 0
        self._cond = threading.Condition()

    def acquire(self, n: int) -> int:
        n = min(n, self.capacity)
        with self._cond:
            while self._used + n > self.capacity:
                self._cond.wait()
            self._used += n
        return n

    def release(self, n: int) -> None:
        with self._cond:
            self._used -= n
            self._cond.notify_all()


@dataclass(slots=True)
class BatchItem:
    """One request inside ``$batch``: a URL relative to the Graph version root."""

    method: str
    url: str
    headers: dict[str, str] | None = None
    body: bytes | None = None


def _batch_payload(items: Sequence[BatchItem]) -> dict[str, Any]:
    requests_ = []
    for i, item in enumerate(items):
        entry: dict[str, Any] = {"id": str(i), "method": item.method, "url": item.url}
        if item.headers:
            entry["headers"] = dict(item.headers)
        if item.body is not None:
            entry["body"] = base64.b64encode(item.body).decode("ascii")
        requests_.append(entry)
    return {"requests": requests_}


def _item_response(raw: dict[str, Any]) -> GraphResponse:
    """A batch item as a GraphResponse: JSON bodies stay JSON, binary bodies are base64 strings."""
    raw_headers = raw.get("headers")
    headers = {str(k).lower(): str(v) for k, v in raw_headers.items()} if isinstance(raw_headers, dict) else {}
    try:
        status = int(raw.get("status", 0))
    except (TypeError, ValueError):
        status = 0
    if not 100 <= status <= 599:
        # An item Graph could not describe is this user's problem (a retryable 502), not the run's.
        detail = f"batch item with status {raw.get('status')!r}"
        return GraphResponse(502, {}, b"", {"error": {"code": "MalformedBatchItem", "message": detail}})
    body = raw.get("body")
    content_type = headers.get("content-type", "")
    if isinstance(body, str) and not content_type.startswith("application/json"):
        try:
            data = base64.b64decode(
                body + "=" * (-len(body) % 4), altchars=b"-_" if ("-" in body or "_" in body) else None
            )
        except ValueError:
            data = body.encode()
        return GraphResponse(status, headers, data)
    if isinstance(body, str):
        try:
            body = json.loads(body)
        except ValueError:
            pass
    return GraphResponse(status, headers, b"", body)


class GraphClient:
    """Thread-safe Graph access for one run step."""

    def __init__(
        self,
        settings: ExchangeOnlineSettings,
        auth: GraphAuth,
        *,
        session_factory: Callable[[], requests.Session],
        budget: RetryBudget | None = None,
    ) -> None:
        self.settings = settings
        self.auth = auth
        self.base = settings.graph_url.rstrip("/")
        self._session_factory = session_factory
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()
        self.budget = budget or RetryBudget(settings.retry_budget)
        self.stats = GraphStats()
        self.slots = _Slots(settings.concurrency)

    # -- plumbing -------------------------------------------------------------------------------
    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._session_factory()
            self._local.session = session
            with self._sessions_lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        with self._sessions_lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()

    def url(self, path_or_url: str) -> str:
        if path_or_url.startswith("https://"):
            return path_or_url
        return f"{self.base}/{path_or_url.lstrip('/')}"

    def _send_once(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None,
        body: bytes | None,
        json_body: Any,
        weight: int,
        envelope: bool = False,
    ) -> GraphResponse:
        token = self.auth.token()
        all_headers = {"Authorization": f"Bearer {token}", "client-request-id": str(uuid.uuid4())}
        if self.settings.low_priority:
            all_headers["x-ms-throttle-priority"] = "low"
        all_headers.update(headers or {})
        taken = self.slots.acquire(weight)
        try:
            self.stats.add(http_requests=1)
            try:
                resp = self._session().request(
                    method,
                    self.url(url),
                    headers=all_headers,
                    data=body,
                    json=json_body,
                    timeout=self.settings.timeout_s,
                )
                content = resp.content  # reads the whole body: a truncated one raises here
            except requests.RequestException as exc:
                self.stats.add(connection_errors=1)
                metrics.graph_request("connection-error")
                raise RetryableError(f"{type(exc).__name__} talking to Graph") from None
        finally:
            self.slots.release(taken)
        self.stats.add(bytes_received=len(content))
        if not envelope:  # a batch's items are counted one by one, as Graph counts them
            metrics.graph_request(resp.status_code)
        out = GraphResponse(resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, content)
        if resp.headers.get("content-type", "").startswith("application/json") and content:
            try:
                out.json_body = json.loads(content)
            except ValueError:
                if out.ok:
                    self.stats.add(connection_errors=1)
                    raise RetryableError("truncated JSON body from Graph") from None
        if out.status == 401:
            self.stats.add(token_refreshes_on_401=1)
            self.auth.invalidate(token)
            raise RetryableError("access token rejected (401); refreshing", retry_after=0.0, response=out)
        if out.status in RETRYABLE_STATUS:
            if out.status == 429:
                self.stats.add(throttled=1)
            else:
                self.stats.add(server_errors=1)
            raise RetryableError(out.describe(), retry_after=out.retry_after, response=out)
        return out

    def _stop(self, state: tenacity.RetryCallState) -> bool:
        if state.attempt_number >= self.settings.max_attempts:
            return True
        if not self.budget.take():
            return True
        self.stats.add(retries=1)
        return False

    def _wait(self, state: tenacity.RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        retry_after = exc.retry_after if isinstance(exc, RetryableError) else None
        return backoff_seconds(state.attempt_number, retry_after, self.settings)

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        json_body: Any = None,
        weight: int = 1,
        envelope: bool = False,
    ) -> GraphResponse:
        """Send with retries. Returns the final response; a retryable one if retries ran out.

        Raises ``RetryableError`` only for connection trouble that outlasted the retries.
        """
        retrying = tenacity.Retrying(
            stop=self._stop,
            wait=self._wait,
            retry=tenacity.retry_if_exception_type(RetryableError),
            reraise=True,
        )
        try:
            return retrying(self._send_once, method, url, headers, body, json_body, weight, envelope)
        except RetryableError as exc:
            if exc.response is not None:
                return exc.response
            raise

    def get_json(self, url: str, *, headers: dict[str, str] | None = None) -> GraphResponse:
        return self.request("GET", url, headers=headers)

    def batch(self, items: Sequence[BatchItem]) -> list[GraphResponse]:
        """One ``$batch`` round trip (the envelope retried as a whole); one response per item, in order.

        Items are *not* retried here: callers re-queue throttled items after their own Retry-After.
        """
        if not items:
            return []
        resp = self.request(
            "POST",
            "$batch",
            json_body=_batch_payload(items),
            weight=min(len(items), BATCH_PARALLELISM),
            envelope=True,
        )
        self.stats.add(batch_requests=1)
        if not resp.ok or not isinstance(resp.json_body, dict):
            # the whole batch failed: every item shares its fate
            metrics.graph_request(resp.status, len(items))
            return [resp for _ in items]
        self.stats.add(batch_items=len(items))
        listed = resp.json_body.get("responses")
        by_id = {str(r.get("id")): r for r in listed if isinstance(r, dict)} if isinstance(listed, list) else {}
        out: list[GraphResponse] = []
        throttled = 0
        for i in range(len(items)):
            raw = by_id.get(str(i))
            if raw is None:
                out.append(GraphResponse(503, {}, b"", {"error": {"code": "MissingBatchItem"}}))
                continue
            item = _item_response(raw)
            metrics.graph_request(item.status)
            if item.status == 429:
                throttled += 1
            elif item.status >= 500:
                self.stats.add(server_errors=1)
            out.append(item)
        if throttled:
            self.stats.add(throttled=throttled)
        return out

    def item_retry(self, attempt: int, response: GraphResponse) -> float | None:
        """Seconds until a failed batch item may be resent, or None when it must not be retried."""
        if response.status not in RETRYABLE_STATUS and response.status != 401:
            return None
        if attempt >= self.settings.max_attempts or not self.budget.take():
            return None
        self.stats.add(retries=1)
        return backoff_seconds(attempt, response.retry_after, self.settings)
