"""A small Microsoft Graph client: adaptive concurrency, free retries for throttling, ``$batch``.

Why not the Graph SDK: we need exactly four things it does not give together: per-item retries
inside ``$batch`` (SDKs do not retry throttled batch items), a run-wide budget for *failures*, an
in-flight limit that counts batch items the way Graph does and adapts to the tenant, and
access-token refresh on 401 mid-run. Everything here is synchronous and thread-safe; the import
pipeline runs it on threads.

Two kinds of retry, on purpose:

* **Throttling** (429, or 503 with ``Retry-After``) is Graph saying "not now", not a failure. The
  request waits its turn and is sent again, as often as it takes, without spending anything: the
  shared :class:`~connector.throttling.AdaptiveLimiter` lowers the in-flight limit and pauses new
  sends from every thread for the ``Retry-After``. Only a run that makes *no* progress for
  ``max_throttled_wait_minutes`` stops (``stopped-throttled``), keeping what it imported. A 401
  for the access token in use is likewise sent again once with a new token, free.
* **Failures** (500, 502, 503 and 504 without ``Retry-After``, connection resets, truncated
  bodies, a 401 for a new token) are retried with exponential backoff, at most
  ``max_attempts`` times per request, and each retry spends one unit of the step's
  ``retry_budget``; an empty budget turns failures into per-object errors instead of endless
  waiting. A request that used its attempts is Graph's outage, not the object's, when nothing
  answered meanwhile and it found nobody there (refused, timed out), or when a request that had
  worked, asked again, fails too (after 5xx, or connections reset once made): the step then
  stops (``stopped-server-down``) instead of failing every user in turn.

Every answer is read streamed and capped (``connector.net.read_capped``), never whole: a photo at
``MAX_PHOTO_BYTES``, any other answer at ``MAX_JSON_BYTES``, a ``$batch`` envelope at what its
items allow and never past ``MAX_JSON_BYTES`` (``_envelope_cap``). An answer over its cap is left
unread (see ``GraphResponse.oversized`` and ``GraphClient.batch`` for what it then means).
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
from urllib.parse import urlsplit

import requests
import tenacity

from connector import metrics
from connector.agents.exchange_online._auth import GraphAuth
from connector.agents.exchange_online._settings import ExchangeOnlineSettings
from connector.net import (
    RECHECKED,
    SILENCE,
    AnswerClock,
    describe_request_error,
    fails_again,
    failure_kind,
    host_port,
    on_host,
    read_capped,
    service_at,
    unanswered_outage,
)
from connector.sdk import ServerDownError, StopRunError, wait_event
from connector.throttling import (
    AdaptiveLimiter,
    Signal,
    ThrottledTooLongError,
    ThrottleWatch,
    Ticket,
    parse_retry_after,
    shared_limiter,
)

__all__ = [
    "MAX_JSON_BYTES",
    "MAX_PHOTO_BYTES",
    "BatchItem",
    "GraphClient",
    "GraphResponse",
    "GraphStats",
    "RetryBudget",
    "RetryableError",
    "ThrottledError",
    "ThrottledTooLongError",
    "backoff_seconds",
    "parse_retry_after",
]

log = logging.getLogger("mvsync.agent.exchange_online.graph")

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
#: Graph runs at most this many items of one ``$batch`` at a time against Outlook (photos).
BATCH_PARALLELISM = 4


#: The largest photo body read: Graph takes a photo "under 8 MB" (and 4 MB per request today: Learn,
#: "Update profilePhoto") and serves its HD sizes, which this agent downloads, far smaller (tens of KB).
MAX_PHOTO_BYTES = 8 * 1024 * 1024
#: The largest JSON answer read, a ``$batch`` envelope included: a users/delta page of 999 users with
#: the five properties selected is about 0.5 MB; photo metadata and error bodies are a few hundred bytes.
MAX_JSON_BYTES = 16 * 1024 * 1024
#: The most one ``$batch`` item other than a photo adds to its envelope (metadata, an error: a few
#: hundred bytes), and what each item adds besides its body (id, status, headers).
_ITEM_JSON_BYTES = 64 * 1024
_ITEM_OVERHEAD_BYTES = 4 * 1024

#: Seconds between two warnings that Graph gives no answer: one outage meets every thread at once.
UNANSWERED_WARNING_S = 30.0


def backoff_seconds(attempt: int, retry_after: float | None, settings: ExchangeOnlineSettings) -> float:
    """How long to wait before retry number ``attempt`` (1-based) of a *failed* request.

    The server's Retry-After wins (Graph says exactly when capacity returns; waiting less only earns
    another 429); without one, exponential backoff with "equal jitter" spreads the workers out.
    """
    if retry_after is not None:
        return min(retry_after, settings.retry_after_max_s)
    ceiling = min(settings.backoff_max_s, settings.backoff_initial_s * 2.0 ** (attempt - 1))
    return float(ceiling / 2 + random.uniform(0, ceiling / 2))


def is_pushback(status: int, retry_after: float | None) -> bool:
    """Graph asking us to slow down: 429 always, 503 when it says when to come back."""
    return status == 429 or (status == 503 and retry_after is not None)


@dataclass(slots=True)
class GraphResponse:
    """One answer (a whole HTTP response or one ``$batch`` item), body already read."""

    status: int
    headers: dict[str, str]
    body: bytes = b""
    json_body: Any = None
    #: The cap the body went over (then left unread, ``body`` empty); 0 when it was read whole.
    oversized: int = 0

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
        if self.oversized:
            return f"HTTP {self.status} with more than {self.oversized:,} bytes (the rest was not read)"
        code = self.error_code
        return f"HTTP {self.status}" + (f" {code}: {self.error_message}" if code else "")


class RetryableError(Exception):
    """A failure worth retrying (server error, connection trouble); see :class:`ThrottledError`.

    ``network`` is the connection failure when Graph gave no answer at all.
    """

    def __init__(
        self,
        detail: str,
        *,
        retry_after: float | None = None,
        response: GraphResponse | None = None,
        network: requests.RequestException | None = None,
    ):
        super().__init__(detail)
        self.retry_after = retry_after
        self.response = response
        self.network = network


class ThrottledError(RetryableError):
    """Graph pushed back (429, or 503 with Retry-After): wait and resend, spending no budget."""


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


def _is_photo_read(method: str, url: str) -> bool:
    """Whether a request downloads a photo's bytes (``GET .../photo/$value``, ``.../photos/{size}/$value``)."""
    return method == "GET" and url.partition("?")[0].endswith("$value")


def _answer_cap(method: str, url: str) -> int:
    """The most of an answer to one request that is read: a photo's, or any other's (JSON)."""
    return MAX_PHOTO_BYTES if _is_photo_read(method, url) else MAX_JSON_BYTES


def _envelope_cap(items: Sequence[BatchItem]) -> int:
    """The most of a ``$batch`` answer that is read: what its items' answers can hold in JSON, and
    never more than any other JSON answer (``MAX_JSON_BYTES``).

    A photo's bytes come as base64 (4 characters for 3 bytes), so a photo read adds at most
    ``MAX_PHOTO_BYTES`` in base64; any other item (metadata, an error) ``_ITEM_JSON_BYTES``; each its
    id, status and headers. Twenty metadata probes allow 1.4 MB.

    Why ``MAX_JSON_BYTES`` above that: by its items alone, twenty photo reads (Graph's most in one
    batch) would allow 224 MB, read and then joined on every thread that met such an answer at once
    (gigabytes, for a gzip bomb from a proxy). The agent downloads HD sizes (648x648 at most): twenty
    of them came to 0.7 MB with the emulator's photos, so a healthy envelope is far below 16 MB. One
    over it loses nothing: each of its items is asked on its own, with its own cap (``_one_by_one``).
    """
    photo = -(-MAX_PHOTO_BYTES // 3) * 4
    items_cap = sum(photo if _is_photo_read(item.method, item.url) else _ITEM_JSON_BYTES for item in items)
    return min(items_cap + (len(items) + 1) * _ITEM_OVERHEAD_BYTES, MAX_JSON_BYTES)


def _item_head(raw: dict[str, Any]) -> tuple[int, dict[str, str]]:
    """A batch item's status (0 when it is no HTTP status) and its headers, names in lower case:
    what tells push-back, read without its body."""
    raw_headers = raw.get("headers")
    headers = {str(k).lower(): str(v) for k, v in raw_headers.items()} if isinstance(raw_headers, dict) else {}
    try:
        status = int(raw.get("status", 0))
    except (TypeError, ValueError):
        status = 0
    return (status, headers) if 100 <= status <= 599 else (0, {})


def _item_response(raw: dict[str, Any]) -> GraphResponse:
    """A batch item as a GraphResponse: JSON bodies stay JSON, binary bodies are base64 strings."""
    status, headers = _item_head(raw)
    if not status:
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
    """Thread-safe Graph access for one run step; its in-flight limit is shared process-wide."""

    def __init__(
        self,
        settings: ExchangeOnlineSettings,
        auth: GraphAuth,
        *,
        session_factory: Callable[[], requests.Session],
        budget: RetryBudget | None = None,
        limiter: AdaptiveLimiter | None = None,
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
        # Graph counts requests per app and tenant: every client of that identity shares one limiter.
        host = urlsplit(self.base).netloc
        self.limiter = limiter or shared_limiter(
            f"graph:{host}:{settings.tenant_id}:{settings.client_id}",
            ceiling=settings.concurrency,
            # half the ceiling: slow start doubles once per round trip, and a $batch's round trip is
            # five of Graph's; an overshoot costs one Retry-After pause, after which the limiter's
            # census of what Graph accepted lands on the limit (a strict service refuses the first
            # burst once per process, a small share of any real run)
            initial=max(BATCH_PARALLELISM, settings.concurrency // 2),
            pause_initial_s=settings.backoff_initial_s,
            pause_max_s=settings.retry_after_max_s,
        )
        self.closed = threading.Event()
        #: When any thread last had a working answer from Graph: tells an outage from one request's trouble.
        self.answers = AnswerClock()
        #: A GET that had a working answer (see confirmed_down); until one has, the listing's first user
        self._canary = "users?$top=1&$select=id"
        #: Stops the step once Graph has answered nothing but push-back for max_throttled_wait_minutes
        self.watch = ThrottleWatch(
            f"Microsoft Graph ({host})",
            settings.max_throttled_wait_minutes,
            "everything imported so far is kept. Run the step again later (a full import resumes from its last "
            "committed page), or raise max_throttled_wait_minutes in the agent's settings",
        )
        self.throttled_waits = 0
        self._warned_at = -UNANSWERED_WARNING_S

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
        self.closed.set()
        with self._sessions_lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()

    def url(self, path_or_url: str) -> str:
        """The URL to send to: a path under ``graph_url``, or a link Graph answered with on its host.

        Why a link on another host is refused, not followed: the request carries the access token,
        and Graph's own links (``@odata.nextLink``) never leave its host; Microsoft's SDKs likewise
        attach tokens only to known Graph hosts. A link elsewhere means a wrong ``graph_url`` (a
        national cloud has its own host) or something in between rewriting answers.
        """
        if "://" not in path_or_url:
            return f"{self.base}/{path_or_url.lstrip('/')}"
        if on_host(path_or_url, self.base):
            return path_or_url
        where = f"{urlsplit(path_or_url).scheme}://{host_port(path_or_url)}"
        msg = (
            f"Graph answered with a link to {where}, not to graph_url's "
            f"{host_port(self.base)}: it was not followed, so the access token went nowhere else. Check graph_url "
            "(each national cloud has its own Graph host) and any proxy in between that rewrites answers"
        )
        raise StopRunError(msg)

    def _learn(
        self, ticket: Ticket, resp: GraphResponse, pushback: GraphResponse | None, share: float, items: int | None
    ) -> None:
        """Tell the limiter what an answer says about Graph's capacity (``items``: a ``$batch``'s)."""
        if pushback is not None:
            self.limiter.release(ticket, Signal.THROTTLED, retry_after=pushback.retry_after, share=share, items=items)
            return
        self.limiter.release(ticket, Signal.OK if resp.status < 500 else Signal.FAILED)
        if resp.status < 500:
            self.watch.progressed()
        percentage = resp.headers.get("x-ms-throttle-limit-percentage")
        if percentage:
            try:
                self.limiter.hint(ticket, float(percentage))
            except ValueError:
                pass

    # -- one exchange ---------------------------------------------------------------------------
    def _send_once(
        self,
        method: str,
        url: str,
        headers: dict[str, str] | None,
        body: bytes | None,
        json_body: Any,
        weight: int,
        envelope: int,
        tickets: list[Ticket],
        cancel: threading.Event,
    ) -> GraphResponse:
        """One attempt. ``envelope``: for a ``$batch``, the most of its answer read (``_envelope_cap``);
        0 for any other request, whose answer is read up to ``_answer_cap``."""
        try:
            full_url = self.url(url)
        except StopRunError:  # nothing was sent: a share the caller handed over goes back unused
            for held in tickets:
                self.limiter.release(held, Signal.FAILED)
            tickets.clear()
            raise
        ticket = tickets.pop() if tickets else self.limiter.acquire(weight, cancel=cancel)
        try:
            token = self.auth.token()
            all_headers = {"Authorization": f"Bearer {token}", "client-request-id": str(uuid.uuid4())}
            if self.settings.low_priority:
                all_headers["x-ms-throttle-priority"] = "low"
            all_headers.update(headers or {})
            self.stats.add(http_requests=1)
            resp = self._session().request(
                method,
                full_url,
                headers=all_headers,
                data=body,
                json=json_body,
                timeout=self.settings.timeout_s,
                stream=True,
            )
            cap = envelope or _answer_cap(method, full_url)
            content = read_capped(resp, self.settings.timeout_s, cap)  # a truncated body raises here
        except requests.RequestException as exc:
            self.limiter.release(ticket, Signal.FAILED)
            self.stats.add(connection_errors=1)
            metrics.graph_request("connection-error")
            raise RetryableError(describe_request_error(exc, full_url, "Graph"), network=exc) from None
        except BaseException:
            # the limiter is shared by the whole process: a share never handed back would shrink it
            # for every later step (an authentication stop, a bug, Ctrl-C)
            self.limiter.release(ticket, Signal.FAILED)
            raise
        if content is None:  # over its cap, left unread: what it means is the caller's (batch, read_response)
            content = b""
        else:
            cap = 0
        self.stats.add(bytes_received=len(content))
        if not envelope:  # a batch's items are counted one by one, as Graph counts them
            metrics.graph_request(resp.status_code)
        out = GraphResponse(resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, content, oversized=cap)
        is_json = out.headers.get("content-type", "").startswith("application/json") and bool(content)
        if envelope and out.ok:  # its items are read from the JSON alone: see batch()
            text, encoding = _json_text(content)
            if text is not None:  # the bytes go before the text is parsed
                out.body = content = b""
                out.json_body = _json_or_none(text)
                if not isinstance(out.json_body, dict):  # no envelope: its items get this answer, as it came
                    out.body = text.encode(encoding, "surrogatepass")
        elif is_json or envelope:
            out.json_body = _json_or_none(content)
        if is_json and out.ok and out.json_body is None:
            self.limiter.release(ticket, Signal.FAILED)
            self.stats.add(connection_errors=1)
            raise RetryableError("truncated JSON body from Graph")
        pushback, share = (out, 1.0) if is_pushback(out.status, out.retry_after) else (None, 0.0)
        items: int | None = None  # a $batch's, when it was answered item by item
        if envelope and pushback is None and out.ok:
            pushback, share, items = _worst_item_pushback(out.json_body)
        if pushback is not None or (out.status < 500 and not (envelope and out.ok)):
            self.answers.answered()  # a $batch that went through: its items tell (batch())
        self._learn(ticket, out, pushback, share, items)
        if out.status == 401:
            self.stats.add(token_refreshes_on_401=1)
            self.auth.invalidate(token)
            raise RetryableError("access token rejected (401); refreshing", retry_after=0.0, response=out)
        if is_pushback(out.status, out.retry_after):
            self.stats.add(throttled=1)
            raise ThrottledError(out.describe(), retry_after=out.retry_after, response=out)
        if out.status in RETRYABLE_STATUS:
            self.stats.add(server_errors=1)
            raise RetryableError(out.describe(), retry_after=out.retry_after, response=out)
        return out

    # -- retries --------------------------------------------------------------------------------
    def _send_answered(self, *args: Any) -> GraphResponse:
        """``_send_once`` until Graph answers with something other than push-back.

        Throttling is never a failure: the shared limiter holds every sender until the Retry-After
        has passed, so this loop only has to watch for a run that makes no progress at all. Nor is
        a 401 for the access token in use (it ran out, or continuous access evaluation revoked it):
        one more try with a new token is free. Spending the retry budget on it left a write with
        none when the budget was spent, that person's permission-issue; a new token refused too is
        a failure like any other.
        """
        renewed = False
        while True:
            try:
                return self._send_once(*args)
            except ThrottledError:
                self.watch.check(self.limiter.paused_for())  # push-back alone for too long: stop
                self.throttled_waits += 1
            except RetryableError as exc:
                if renewed or exc.response is None or exc.response.status != 401:
                    raise
                renewed = True

    def _stop(self, state: tenacity.RetryCallState) -> bool:
        if state.attempt_number >= self.settings.max_attempts or not self.budget.take():
            return True
        self.stats.add(retries=1)
        return False

    def _warn_unanswered(self, state: tenacity.RetryCallState) -> None:
        """A request got no answer and is tried again: say so, at most every ``UNANSWERED_WARNING_S``.

        Why: against a Graph (or proxy) that accepts connections and never answers, each attempt
        waits ``timeout_s``; the step stops only after ``max_attempts`` of them (minutes), and the
        operator watching it should know why nothing moves long before that.
        """
        exc = state.outcome.exception() if state.outcome is not None else None
        now = time.monotonic()
        if not isinstance(exc, RetryableError) or exc.network is None or now - self._warned_at < UNANSWERED_WARNING_S:
            return
        self._warned_at = now
        log.warning("%s (attempt %d of %d); trying again", exc, state.attempt_number, self.settings.max_attempts)

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
        envelope: int = 0,
        ticket: Ticket | None = None,
        cancel: threading.Event | None = None,
    ) -> GraphResponse:
        """Send with retries. Returns the final response; a failed one if the retries ran out.

        ``ticket`` is a share of the limit the caller already holds (used for the first attempt).
        ``cancel`` (the step stopping; the connector closing by default) ends waits and retries.
        Raises ``RetryableError`` only for connection trouble that outlasted the retries,
        ``ServerDownError`` when no request of any thread had a working answer from Graph meanwhile
        (Graph, or the way to it, is down: no fault of the object at hand; for a 5xx, see
        :meth:`confirmed_down`), and ``ThrottledTooLongError``
        when throttling left no progress for too long. Only failures count as attempts and spend the
        budget (``_stop``); throttling is waited out inside.
        """
        tickets = [ticket] if ticket is not None else []
        stopping = cancel if cancel is not None else self.closed

        def sleep(seconds: float) -> None:  # a step that stops does not sit out a backoff of up to backoff_max_s
            wait_event(stopping, seconds)

        retrying = tenacity.Retrying(
            stop=lambda state: stopping.is_set() or self._stop(state),
            wait=self._wait,
            sleep=sleep,
            before_sleep=self._warn_unanswered,
            retry=tenacity.retry_if_exception_type(RetryableError),
            reraise=True,
        )
        started = time.monotonic()
        args = (method, url, headers, body, json_body, weight, envelope, tickets, stopping)
        try:
            return retrying(self._send_answered, *args)
        except RetryableError as exc:
            attempts = int(retrying.statistics.get("attempt_number", 1))
            if exc.response is not None:
                if exc.response.status >= 500 and self.confirmed_down(stopping):
                    raise self.down(f"answered with {exc.response.describe()}", attempts, started, RECHECKED) from None
                return exc.response
            if exc.network is not None:
                self._stop_if_down(exc.network, attempts, started, stopping)
            raise

    def _stop_if_down(
        self, failure: requests.RequestException, attempts: int, started: float, stopping: threading.Event
    ) -> None:
        """Raise ``ServerDownError`` when a request that got no answer met Graph down
        (``connector.net.unanswered_outage``): a reset connection had reached Graph, so it is one
        request's trouble unless a request that worked before fails too."""
        evidence = unanswered_outage(
            failure, self.answers, started, lambda: RECHECKED if self.confirmed_down(stopping) else None
        )
        if evidence is not None:
            raise self.down(f"did not answer: {failure_kind(failure)}", attempts, started, evidence) from None

    def confirmed_down(self, cancel: threading.Event | None = None) -> bool:
        """Whether a request that got nothing but 5xx answers (or reset connections) met Graph down,
        not trouble of its own.

        Asks again the latest GET that had a working answer (a photo read; before any, the first
        user of the directory): see ``connector.net.fails_again``. A healthy run pays one request
        for each object that used up its attempts on 5xx.
        """

        def ask() -> bool:
            try:
                self._send_once("GET", self._canary, None, None, None, 1, 0, [], cancel or self.closed)
            except ThrottledError:
                return True  # push-back is Graph at work
            except RetryableError as exc:
                return exc.response is not None and exc.response.status < 500  # a 401's token refresh
            return True

        return fails_again(ask, cancel or self.closed, backoff_seconds(1, None, self.settings))

    def down(
        self,
        failure: str,
        attempts: int,
        started: float,
        evidence: str = SILENCE,
    ) -> ServerDownError:
        """Graph, or the way to it, is down: ``failure`` says how the last attempt failed ("did not
        answer: connection refused"), ``evidence`` why that is Graph and not the object at hand."""
        return ServerDownError(
            self.answers.not_answering(
                service_at("Graph", self.base),
                failure,
                attempts,
                started,
                "nothing is lost (users not fetched yet keep what they had, a full import resumes from its last "
                "committed page, photo exports stay pending); check the network and proxy to Graph, and "
                "Microsoft 365 service health",
                evidence,
            )
        )

    def get_json(self, url: str, *, headers: dict[str, str] | None = None) -> GraphResponse:
        return self.request("GET", url, headers=headers)

    def batch(
        self, items: Sequence[BatchItem], *, ticket: Ticket | None = None, cancel: threading.Event | None = None
    ) -> list[GraphResponse]:
        """One ``$batch`` round trip (the envelope retried as a whole); one response per item, in order.

        Items are *not* retried here: callers re-queue throttled items (see :meth:`item_retry`).

        Why an answered envelope's bytes are dropped once they are text, before that is parsed
        (``_send_once``), and each item's base64 once it is decoded: a ``$batch`` of twenty photos is
        about 0.7 MB of JSON, and every worker thread reads one at a time. ``json.loads`` of the bytes
        held them, their text and the parsed base64 at once: three times the envelope on each thread,
        in its own allocator arena, where the space stays as the process's peak (``mvsync bench
        import``'s ``peak_rss_mb``). Now about twice.
        """
        if not items:
            return []
        resp = self.request(
            "POST",
            "$batch",
            json_body=_batch_payload(items),
            weight=min(len(items), BATCH_PARALLELISM),
            envelope=_envelope_cap(items),
            ticket=ticket,
            cancel=cancel,
        )
        self.stats.add(batch_requests=1)
        if resp.oversized:
            return self._one_by_one(items, resp, cancel)
        if not resp.ok or not isinstance(resp.json_body, dict):
            # the whole batch failed: every item shares its fate
            if resp.ok:
                self.answers.answered()  # an envelope Graph could not fill, but an answer
            metrics.graph_request(resp.status, len(items))
            return [resp for _ in items]
        self.stats.add(batch_items=len(items))
        listed = resp.json_body.get("responses")
        by_id = {str(r.get("id")): r for r in listed if isinstance(r, dict)} if isinstance(listed, list) else {}
        out: list[GraphResponse] = []
        throttled = working = 0
        for i, sent in enumerate(items):
            raw = by_id.get(str(i))
            if raw is None:
                item = GraphResponse(503, {}, b"", {"error": {"code": "MissingBatchItem"}})
            else:
                item = _item_response(raw)
                raw.pop("body", None)  # decoded: the base64 is not held beside the photo (batch's docstring)
                metrics.graph_request(item.status)
            if is_pushback(item.status, item.retry_after):
                throttled += 1
                working += 1
            elif item.status >= 500:
                self.stats.add(server_errors=1)
            else:
                self.watch.progressed()
                working += 1
                if sent.method == "GET" and not _is_photo_read(sent.method, sent.url):
                    self._canary = sent.url  # worked now, and small: what confirmed_down asks again
            out.append(item)
        if working:
            self.answers.answered()
        if throttled:
            self.stats.add(throttled=throttled)
        return out

    def _one_by_one(
        self, items: Sequence[BatchItem], envelope: GraphResponse, cancel: threading.Event | None
    ) -> list[GraphResponse]:
        """The answers to the items of a ``$batch`` whose answer went over its cap, each asked on its own.

        Why: the envelope holds up to twenty people's answers, and which of them is too large cannot be
        told without reading it. Failing every item would give the others an error that is not theirs
        (asked again only after photo_error_recheck_hours); taking it for an outage would stop the step
        for one person; it is neither a photo nor "no photo". Asked on its own, each answer has its own
        cap (``_answer_cap``), so only the person whose answer is too large gets an error
        (``read_response``) and the others their photos, for one request per item, on that day only.
        """
        log.warning(
            "Graph answered a $batch of %d requests with %s: each is asked on its own", len(items), envelope.describe()
        )
        return [self.request(i.method, i.url, headers=i.headers, body=i.body, cancel=cancel) for i in items]

    def item_retry(self, attempt: int, response: GraphResponse) -> float | None:
        """Seconds until a failed batch item may be resent, or None when it must not be retried.

        A throttled item always comes back (after its Retry-After; the limiter pauses everybody
        meanwhile) and spends nothing; other failures spend the budget and count as attempts.
        """
        if is_pushback(response.status, response.retry_after):
            wait = min(response.retry_after or 0.0, self.settings.retry_after_max_s)
            self.watch.check(max(wait, self.limiter.paused_for()))
            self.throttled_waits += 1
            return wait
        if response.status not in RETRYABLE_STATUS and response.status != 401:
            return None
        if attempt >= self.settings.max_attempts or not self.budget.take():
            return None
        self.stats.add(retries=1)
        return backoff_seconds(attempt, response.retry_after, self.settings)


def _json_or_none(content: bytes | str) -> Any:
    try:
        return json.loads(content) if content else None
    except ValueError:
        return None


def _json_text(content: bytes) -> tuple[str | None, str]:
    """``content`` as the text ``json.loads`` would parse, and its encoding (``json.loads``' own
    detection); None when it is no text in that encoding (``json.loads`` raised ValueError for it)."""
    encoding = json.detect_encoding(content)
    try:
        return content.decode(encoding, "surrogatepass"), encoding
    except UnicodeDecodeError:
        return None, encoding


def _worst_item_pushback(envelope: Any) -> tuple[GraphResponse | None, float, int]:
    """The batch item pushing back hardest (longest Retry-After), the share of items pushed back, and
    how many items the envelope answered.

    Why only the pushed-back items are built as answers: the others' bodies are photos in base64,
    which ``batch`` decodes once for its caller; decoding them here too held every photo of the
    envelope a second time (about 0.5 MB a ``$batch`` of twenty) for nothing on every thread.
    """
    listed = envelope.get("responses") if isinstance(envelope, dict) else None
    raws = [raw for raw in listed if isinstance(raw, dict)] if isinstance(listed, list) else []
    pushed = [raw for raw in raws if _pushes_back(raw)]
    if not pushed:
        return None, 0.0, len(raws)
    worst = max((_item_response(raw) for raw in pushed), key=lambda item: item.retry_after or 0.0)
    return worst, len(pushed) / len(raws), len(raws)


def _pushes_back(raw: dict[str, Any]) -> bool:
    status, headers = _item_head(raw)
    return is_pushback(status, parse_retry_after(headers.get("retry-after")))
