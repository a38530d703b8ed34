"""Prometheus metrics for runs, steps and the agents' traffic.

A site already monitors its services with Prometheus; mvsync fits in two ways:

* a scheduled ``mvsync run`` (cron, systemd timer) writes a *textfile* at the end
  (``--metrics-textfile PATH``) for node_exporter's textfile collector, atomically, so the
  collector never reads half a file, and carrying on from the file's figures, so its counters grow
  from run to run (:func:`write_textfile`);
* a long-lived process (``--metrics-port PORT``) serves ``/metrics`` over HTTP (GET and HEAD;
  any other path is 404, and the ``Server`` header names mvsync, not the Python version).

Either way the CLI calls :func:`configure` once, and :func:`write_textfile` when it finishes. The
engine records every step (:func:`step`); agents record their traffic with the one-line helpers
:func:`graph_request`, :func:`graph_throttle`, :func:`graph_retry`, :func:`ldap_write` and
:func:`photo`. Recording is cheap (no I/O), so the helpers are safe on hot paths and a no-op cost
when nothing is configured.

Metrics live in their own registry (not prometheus-client's global one), so the textfile holds
mvsync's figures only, not the Python process collectors that mean nothing for a finished cron job.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from filelock import FileLock
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import ALLOWUTF8
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from connector.files import atomic_write

if TYPE_CHECKING:
    from _typeshed import OptExcInfo

__all__ = [
    "REGISTRY",
    "concurrency_limit",
    "configure",
    "graph_request",
    "graph_retry",
    "graph_throttle",
    "ldap_write",
    "photo",
    "step",
    "throttle_pause",
    "write_textfile",
]

log = logging.getLogger("mvsync.metrics")

REGISTRY = CollectorRegistry(auto_describe=True)

_STEP_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

STEPS = Counter(
    "mvsync_steps",
    "Run-profile steps finished, by agent, step kind and MIM-style status.",
    ("agent", "kind", "status"),
    registry=REGISTRY,
)
STEP_SECONDS = Histogram(
    "mvsync_step_duration_seconds",
    "Wall-clock duration of run-profile steps.",
    ("agent", "kind"),
    buckets=_STEP_BUCKETS,
    registry=REGISTRY,
)
STEP_OBJECTS = Counter(
    "mvsync_step_objects",
    "Objects counted by steps (adds, updates, deletes, unchanged, joins, exports ...), by counter name.",
    ("agent", "kind", "counter"),
    registry=REGISTRY,
)
STEP_ERRORS = Counter(
    "mvsync_step_object_errors",
    "Per-object errors recorded by steps.",
    ("agent", "kind"),
    registry=REGISTRY,
)
LAST_STEP_END = Gauge(
    "mvsync_step_last_end_timestamp_seconds",
    "Unix time the last step of this agent and kind ended (alert when a schedule stops running).",
    ("agent", "kind", "status"),
    registry=REGISTRY,
)
RUNS_REFUSED = Counter(
    "mvsync_runs_refused",
    "Runs that ended before their first step, by status (stopped-configuration: a configuration error; "
    "stopped-locked: another run held an agent or the metaverse).",
    ("profile", "status"),
    registry=REGISTRY,
)
GRAPH_REQUESTS = Counter(
    "mvsync_graph_requests",
    "Microsoft Graph HTTP requests, by response status code (or 'error' for no response).",
    ("status",),
    registry=REGISTRY,
)
GRAPH_THROTTLES = Counter(
    "mvsync_graph_throttles",
    "Graph responses that asked us to slow down (429 / 503 with Retry-After).",
    registry=REGISTRY,
)
GRAPH_RETRIES = Counter(
    "mvsync_graph_retries",
    "Graph requests retried (after throttling, timeouts or 5xx).",
    registry=REGISTRY,
)
CONCURRENCY_LIMIT = Gauge(
    "mvsync_concurrency_limit",
    "The adaptive in-flight limit a client has found for a throttled service (units: requests as the "
    "service counts them).",
    ("limiter",),
    registry=REGISTRY,
)
THROTTLE_PAUSES = Counter(
    "mvsync_throttle_pauses",
    "Client-wide pauses of new sends after a service pushed back (Retry-After or backoff).",
    ("limiter",),
    registry=REGISTRY,
)
THROTTLE_PAUSE_SECONDS = Counter(
    "mvsync_throttle_pause_seconds",
    "Seconds during which new sends were paused because the service pushed back.",
    ("limiter",),
    registry=REGISTRY,
)
LDAP_WRITES = Counter(
    "mvsync_ldap_writes",
    "LDAP modify/add/delete operations sent to a directory, by result.",
    ("result",),
    registry=REGISTRY,
)
PHOTOS = Counter(
    "mvsync_photos",
    "Photos handled, by outcome (e.g. exported, unchanged, cleared, too-large, invalid, failed).",
    ("outcome",),
    registry=REGISTRY,
)

_textfile: Path | None = None
#: The status each agent and kind last ended with in this process (its ``LAST_STEP_END`` series).
_last_status: dict[tuple[str, str], str] = {}
_http_ports: tuple[int, int] | None = None  # (asked for, bound): 0 asks for any free port


def step(agent: str, kind: str, status: str, seconds: float, counters: dict[str, object], errors: int) -> None:
    """Record one finished step (the engine calls this for every step, dry runs included)."""
    STEPS.labels(agent, kind, status).inc()
    STEP_SECONDS.labels(agent, kind).observe(max(seconds, 0.0))
    for name, value in counters.items():
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            STEP_OBJECTS.labels(agent, kind, name).inc(value)
    if errors:
        STEP_ERRORS.labels(agent, kind).inc(errors)
    previous = _last_status.get((agent, kind))
    if previous is not None and previous != status:
        with contextlib.suppress(KeyError):  # (prometheus-client before 0.21 raises for a series gone)
            LAST_STEP_END.remove(agent, kind, previous)  # one series per agent and kind: see ``_LATEST_BY``
    _last_status[agent, kind] = status
    LAST_STEP_END.labels(agent, kind, status).set_to_current_time()


def run_refused(profile: str, status: str) -> None:
    """A run refused before its first step: no step ran, so no step metric says it."""
    RUNS_REFUSED.labels(profile, status).inc()


def graph_request(status: int | str, count: int = 1) -> None:
    """``count`` Graph requests finished with ``status`` (an HTTP code, or a word such as ``"timeout"``).

    Requests are counted as Graph counts them: each item of a ``$batch``, not its envelope.
    """
    GRAPH_REQUESTS.labels(str(status)).inc(count)


def graph_throttle(count: int = 1) -> None:
    """Graph throttled ``count`` requests (429; items of a ``$batch`` count one by one)."""
    GRAPH_THROTTLES.inc(count)


def graph_retry(count: int = 1) -> None:
    """``count`` Graph requests (or batch items) are being retried."""
    GRAPH_RETRIES.inc(count)


def concurrency_limit(limiter: str, limit: int) -> None:
    """The adaptive limit of ``limiter`` is now ``limit``."""
    CONCURRENCY_LIMIT.labels(limiter).set(limit)


def throttle_pause(limiter: str, seconds: float) -> None:
    """``limiter`` paused new sends for ``seconds`` more (a Retry-After or a backoff)."""
    THROTTLE_PAUSES.labels(limiter).inc()
    THROTTLE_PAUSE_SECONDS.labels(limiter).inc(max(seconds, 0.0))


def ldap_write(result: str = "success") -> None:
    """One LDAP write operation finished (``result``: ``success`` or the LDAP result name)."""
    LDAP_WRITES.labels(result).inc()


def photo(outcome: str) -> None:
    """One photo reached ``outcome`` (exported, unchanged, cleared, too-large, invalid, failed ...)."""
    PHOTOS.labels(outcome).inc()


def configure(*, textfile: Path | str | None = None, port: int | None = None, addr: str = "127.0.0.1") -> int | None:
    """Set up the CLI's outputs: a textfile written by :func:`write_textfile`, and/or an HTTP exporter.

    The exporter binds to loopback by default; expose it deliberately (``addr``) if Prometheus
    scrapes from another host. Calling again with the same port does not start a second server.
    Returns the port the exporter listens on (``port=0`` lets the system pick one), None without one.
    """
    global _textfile, _http_ports
    if textfile is not None:
        path = Path(textfile)
        if not path.parent.is_dir():
            msg = f"--metrics-textfile: directory {path.parent} does not exist"
            raise ValueError(msg)
        if path.is_dir():
            raise ValueError(f"--metrics-textfile: {path} is a folder; name a file in it, e.g. {path / 'mvsync.prom'}")
        if not os.access(path.parent, os.W_OK):
            # found now, not when the command ends: the file is written beside, then renamed over
            raise ValueError(f"--metrics-textfile: the folder {path.parent} cannot be written by this account")
        _textfile = path
    if port is not None and (_http_ports is None or port != _http_ports[0]):
        _http_ports = (port, int(_serve(port, addr).server_port))
    return None if _http_ports is None else _http_ports[1]


#: What the exporter says it is: prometheus-client's server sent ``WSGIServer/0.2 CPython/3.11.7``.
_SERVER = "mvsync"
_NOT_FOUND = b"not found: the metrics are at /metrics\n"


class _QuietHandler(WSGIRequestHandler):
    """No log line per scrape (stderr is the run's log), and no Python version in error pages."""

    server_version = _SERVER
    sys_version = ""

    def log_message(self, format: str, *args: object) -> None:
        pass


def _routed(metrics_app: WSGIApplication) -> WSGIApplication:
    """prometheus-client's app behind the one path the README documents.

    Why: that app answers every path with the metrics (a typo in a scrape config "works" and a
    scanner's probe of ``/admin`` gets a 200), and refuses HEAD, which HTTP servers must support for a
    resource they GET (RFC 9110, 9.1): a load balancer's HEAD health check saw 405.
    """

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        def respond(
            status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
        ) -> Callable[[bytes], object]:
            return start_response(status, [*headers, ("Server", _SERVER)], exc_info)

        if environ.get("PATH_INFO") != "/metrics":
            headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(_NOT_FOUND)))]
            respond("404 Not Found", headers)
            return [_NOT_FOUND]
        if environ.get("REQUEST_METHOD") == "HEAD":
            return _head(metrics_app, environ, respond)
        return metrics_app(environ, respond)

    return app


def _head(metrics_app: WSGIApplication, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
    """The GET's status and headers, with the Content-Length of its body, and no body.

    Why the length is counted here: the metrics app leaves it to the server, which counts what is
    returned and would say 0 for a HEAD.
    """
    answered: list[tuple[str, list[tuple[str, str]]]] = []

    def keep(
        status: str, headers: list[tuple[str, str]], exc_info: OptExcInfo | None = None
    ) -> Callable[[bytes], object]:
        answered.append((status, headers))
        return lambda data: None

    body = b"".join(metrics_app({**environ, "REQUEST_METHOD": "GET"}, keep))
    status, headers = answered[-1]
    kept = [(name, value) for name, value in headers if name.lower() != "content-length"]
    start_response(status, [*kept, ("Content-Length", str(len(body)))])
    return []


def _serve(port: int, addr: str) -> WSGIServer:
    """The exporter on ``addr:port``, answering from a daemon thread (one thread per scrape)."""

    class _MetricsServer(ThreadingWSGIServer):
        address_family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM)[0][0]  # "::1" binds IPv6

    server = make_server(addr, port, _routed(make_wsgi_app(REGISTRY)), _MetricsServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="mvsync-metrics", daemon=True).start()
    return server


def write_textfile(path: Path | str | None = None) -> Path | None:
    """Write the metrics in the text exposition format, atomically (temp file + rename), carrying on
    from what the file held before.

    Why carry on: each scheduled ``mvsync run`` is a new process whose counters start at 0, and the
    textfile is all node_exporter sees of it. Written as they were, ``mvsync_steps_total`` read 1 after
    every run (``increase()`` saw no runs at all), and a run refused before its first step left a file
    without ``mvsync_step_last_end_timestamp_seconds``, the series an alert on stopped schedules needs.
    So counters and histograms add this process's figures to the file's, and a series this process did
    not touch (a gauge, a step kind it did not run) stays as the file had it. ``PATH.lock`` beside the
    file keeps two runs that end together from losing each other's figures.

    Writes to ``path`` or the configured textfile; returns the path written, or None when neither.
    """
    target = Path(path) if path is not None else _textfile
    if target is None:
        return None
    # the OS drops the lock with a killed process; a stuck writer is said (a TimeoutError is an OSError)
    with FileLock(target.with_name(f"{target.name}.lock"), timeout=_TEXTFILE_LOCK_WAIT_S, is_singleton=False):
        carried = _Carried(_previous_samples(target), _written.get(target, {}))
        registry = CollectorRegistry(auto_describe=False)
        registry.register(carried)
        # readable by the collector's own account from the moment it appears (not renamed, then opened up);
        # atomic_write, not prometheus_client's writer, also tries again while windows_exporter reads the file
        atomic_write(target, generate_latest(registry, escaping=ALLOWUTF8), mode=0o644)
        _written[target] = carried.seen
    return target


#: How long a run waits for another one writing the same textfile (a write takes milliseconds).
_TEXTFILE_LOCK_WAIT_S = 30.0

#: A sample's identity in the exposition: its name and its labels, sorted.
_SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def _key(sample: Sample) -> _SampleKey:
    return sample.name, tuple(sorted(sample.labels.items()))


def _previous_samples(target: Path) -> dict[_SampleKey, float]:
    """Every sample the textfile holds now; none when there is no file yet, or one mvsync cannot read
    (said in the log: the file starts over from this run's figures)."""
    try:
        text = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    try:
        return {_key(s): s.value for family in text_string_to_metric_families(text) for s in family.samples}
    except (ValueError, TypeError) as exc:
        log.warning(
            "--metrics-textfile %s: not a Prometheus text file mvsync can read (%s); it starts over", target, exc
        )
        return {}


#: Per textfile, this process's own samples as it last wrote them there: a second write of the same
#: process adds only what was counted since, not everything again.
_written: dict[Path, dict[_SampleKey, float]] = {}


class _Carried(Collector):
    """mvsync's metrics as the textfile should hold them: this process's figures since ``written``
    (its last write there) on top of ``previous`` (what the file holds). ``seen``: this process's samples."""

    def __init__(self, previous: dict[_SampleKey, float], written: dict[_SampleKey, float]) -> None:
        self._previous, self._written = previous, written
        self.seen: dict[_SampleKey, float] = {}

    def collect(self) -> Iterator[Metric]:
        for family in REGISTRY.collect():
            current = {_key(s): s.value for s in family.samples}
            self.seen.update(current)
            yield _carried_family(family, current, self._previous, self._written)


def _carried_family(
    family: Metric,
    current: dict[_SampleKey, float],
    previous: dict[_SampleKey, float],
    written: dict[_SampleKey, float],
) -> Metric:
    """``family`` with the previous file's figures: counted samples (a counter's total, a histogram's
    buckets, count and sum) added up, ``_created`` the earliest, a gauge this process's value; a series
    only the file has is kept as it was."""
    carried = Metric(family.name, family.documentation, family.type, family.unit)
    names = {family.name + suffix for suffix in _SUFFIXES.get(family.type, ("",))}
    ours = {key: value for key, value in previous.items() if key[0] in names}
    if _bucket_layout(current) not in (set(), _bucket_layout(ours)):
        ours = {}  # the buckets changed (an upgrade): adding them up would make no histogram
    counted = family.type in ("counter", "histogram")
    samples: dict[_SampleKey, float] = {}
    for key, now in current.items():
        before = ours.pop(key, None)
        since = now - written.get(key, 0.0) if counted and not key[0].endswith("_created") else now
        samples[key] = since if before is None else _combined(counted, key[0], since, before)
    samples.update(ours)  # series this process did not touch
    for key, value in _latest(family.name, samples).items():
        carried.add_sample(key[0], dict(key[1]), value)
    return carried


#: Gauges that hold a time, one series per identity (these labels); their other labels say how that last
#: time went (a step's status). Carried over as they were, a step that ended ``stopped-authentication`` once
#: kept that series, with its old time, beside every later ``success``, and an alert on
#: ``time() - mvsync_step_last_end_timestamp_seconds`` fired for ever.
_LATEST_BY = {"mvsync_step_last_end_timestamp_seconds": ("agent", "kind")}


def _latest(name: str, samples: dict[_SampleKey, float]) -> dict[_SampleKey, float]:
    """``samples``, keeping only the latest of each identity for a family in ``_LATEST_BY``."""
    identity = _LATEST_BY.get(name)
    if identity is None:
        return samples
    newest: dict[tuple[str, ...], _SampleKey] = {}
    for key, value in samples.items():
        labels = dict(key[1])
        who = tuple(labels.get(label, "") for label in identity)
        if who not in newest or value > samples[newest[who]]:
            newest[who] = key
    return {key: samples[key] for key in newest.values()}


#: The sample names a family of each type writes (text format 0.0.4), after its own name.
_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"), "gauge": ("",)}


def _bucket_layout(samples: dict[_SampleKey, float]) -> set[str]:
    """The ``le`` bounds a histogram's bucket samples use (none for other types)."""
    return {dict(labels)["le"] for name, labels in samples if name.endswith("_bucket") and "le" in dict(labels)}


def _combined(counted: bool, name: str, now: float, before: float) -> float:
    """One sample's value in the textfile, from this process's (``now``) and the file's (``before``)."""
    if name.endswith("_created"):
        return min(now, before)
    return now + before if counted else now
