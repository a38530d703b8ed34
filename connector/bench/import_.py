"""``mvsync bench import``: Exchange Online photo import against the Graph emulator.

The emulator runs in its own process (``mvsync emulator serve``) with the throttling model named by
``--throttle`` (``default``: 50 requests in flight and 2,000 requests/s per app, 4 per mailbox, 4
items of a ``$batch`` at a time; see ``connector.emulator._throttle.THROTTLE_MODELS``), so it neither
shares the GIL with the client nor counts towards the client's memory. The client is not told the
model: its limiter has to find the ceiling, and ``full_import_share_of_model_ceiling`` says how
close it came (photos/s against what the model's tightest limit allows for the requests made). The
import is driven through the engine (``Engine.run_profile``, stage-only full and delta import
steps), so photos land in a real SQLite store exactly as in production.

Figures: the full import's photos per second; a no-change delta with every user's photo metadata
probed (``photo_recheck_hours = 0``, the worst case: with the default 24 h window a delta right
after a full import probes nobody); the share of Graph requests (batch items counted one by one)
that were throttled; this process's peak RSS; and, for comparison, a plain sequential client doing
what the classic PowerShell MA did (list the users, then GET each photo one by one), time-boxed
and extrapolated. With ``one_pause_bound``, the most a cold run could reach: the warm run paused
once, the way a first push-back pauses it (``_one_pause_after_first_wave``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import requests
from cryptography.fernet import Fernet

from connector.agents.exchange_online import (
    BATCH_PARALLELISM,
    ExchangeOnlinePhotosConnector,
    ExchangeOnlineSettings,
    not_a_mailbox_user,
)
from connector.bench._util import peak_rss_mb, server_info, step_metrics
from connector.config import ConfigError
from connector.emulator import (
    EmulatorConfig,
    ceiling_requests_per_s,
    exo_agent_settings,
    model_assumptions,
    parse_throttle,
)
from connector.engine import NullProgress
from connector.net import verifying_session
from connector.sdk import StopRunError
from connector.throttling import AdaptiveLimiter, Ticket, forget_shared_limiters

__all__ = ["BenchConnector", "run"]


class BenchConnector(ExchangeOnlinePhotosConnector):
    """The real connector, keeping each step's Graph figures where the benchmark can read them."""

    last_metrics: ClassVar[dict[str, Any]] = {}
    #: Called with the Graph client's limiter when a step opens the agent (the one-pause bound's hook).
    on_open: ClassVar[Callable[[AdaptiveLimiter], None] | None] = None

    def open(self) -> None:
        super().open()
        if BenchConnector.on_open is not None:
            BenchConnector.on_open(self.graph.limiter)

    def close(self) -> None:
        BenchConnector.last_metrics = self.metrics
        super().close()


def _bench_config(base: Path, info: dict[str, Any], page_size: int, users: int) -> Any:
    """The exo agent against the emulator, with full and delta import profiles, in ``base``."""
    from connector.config import config_from_dict

    settings = exo_agent_settings(info, refresh_token={"env": "MVSYNC_BENCH_EXO_RT"}, photo_recheck_hours=0)
    step = {"agent": "exo", "page_size": page_size, "error_limit": users + 1}
    return config_from_dict(
        {
            "store": {"url": f"sqlite:///{base / 'bench.db'}"},
            "data_dir": str(base / "data"),
            "agents": {"exo": {"type": f"{__name__}:BenchConnector", "settings": settings}},
            "run_profiles": {
                "full": {"steps": [{"type": "full-import", **step}]},
                "delta": {"steps": [{"type": "delta-import", **step}]},
            },
        },
        base_dir=base,
    )


class _InterruptAfter(NullProgress):
    """Interrupts a step once ``pages`` pages are committed, as Ctrl-C or a reboot would."""

    def __init__(self, pages: int) -> None:
        self.pages = pages

    def advance(self, n: int = 1) -> None:
        self.pages -= 1
        if self.pages == 0:
            raise StopRunError("interrupted by the benchmark", status="stopped-interrupted")


def _resumed(info: dict[str, Any], page_size: int, users: int, after_pages: int) -> dict[str, Any]:
    """A full import interrupted after ``after_pages`` committed pages, then the run that resumes it.

    A full import with fewer pages than that ends before the interruption (how many pages it commits
    depends on how many users have mailboxes): then there is nothing to resume, and the figures say so
    instead of reporting a second full import as a resumed one.
    """
    from connector.engine import Engine

    with tempfile.TemporaryDirectory(prefix="mvsync-bench-resume-") as tmp:
        engine = Engine(_bench_config(Path(tmp), info, page_size, users))
        try:
            t0 = time.monotonic()
            first = engine.run_profile("full", progress=_InterruptAfter(after_pages))
            interrupted = {
                "resume_interrupted_status": first.status,
                "resume_interrupted_after_page": after_pages,
                "resume_interrupted_s": round(time.monotonic() - t0, 2),
                "resume_interrupted_users_listed": first.steps[0].counters.get("connector.users", 0),
            }
            if first.status != "stopped-interrupted":
                return interrupted | {
                    "resumed_status": None,
                    "resume_note": f"the full import ended before {after_pages} pages were committed, "
                    "so nothing was left to resume: choose a smaller --interrupt-after-pages",
                }
            t0 = time.monotonic()
            second = engine.run_profile("full")
            second_s = time.monotonic() - t0
        finally:
            engine.close()
    step = second.steps[0]
    return interrupted | {
        "resumed_status": second.status,
        "resumed_message": step.message,
        "resumed_from_page": step.counters.get("resumed_after_page"),
        "resumed_entries_already_committed": step.counters.get("resumed_entries"),
        "resumed_s": round(second_s, 2),
        "resumed_users_listed": step.counters.get("connector.users", 0),
    }


def _start_emulator(
    users: int, photo_ratio: float, latency_ms: float, seed: int, throttle: str = "default"
) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    cmd = [
        sys.executable,
        "-c",
        "from connector.cli import main; main()",
        "emulator",
        "serve",
        "--users",
        str(users),
        "--photo-ratio",
        str(photo_ratio),
        "--latency-ms",
        str(latency_ms),
        "--seed",
        str(seed),
        "--throttle",
        throttle,
        # the sized downloads the agent makes (photo_size 648x648): rendered before the clock starts
        "--warm-sizes",
        "648",
        "--json",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    return proc, server_info(proc, "the Graph emulator")


#: The agent's timeout for a request (its settings' default), which the plain clients keep too.
_AGENT_TIMEOUT_S: float = ExchangeOnlineSettings.model_fields["timeout_s"].default


def _session(ca: str) -> requests.Session:
    """An HTTPS client of the emulator that verifies TLS as the agent does: ``verifying_session`` with
    the agent's ``ca_bundle`` (the emulator's CA, as ``exo_agent_settings`` gives it) and its timeout.

    Why not a plain requests session (``verify=ca``): the figures the agent is read against would not
    include the same verification (urllib3 loads a CA path for every new connection; the agent's
    session loads its CAs once into one context), and a plain session without a timeout could wait
    forever on a wedged emulator.
    """
    return verifying_session(Path(ca), timeout_s=_AGENT_TIMEOUT_S)


def _list_mailbox_users(info: dict[str, Any], session: requests.Session) -> tuple[dict[str, str], list[str]]:
    """A token by the stored refresh token, and the ids of the users with a mailbox, by the agent's own
    rule (``not_a_mailbox_user``: ``mail`` set, and no B2B guest)."""
    token = session.post(
        info["token_url"],
        data={
            "client_id": info["client_id"],
            "grant_type": "refresh_token",
            "refresh_token": info["refresh_token"],
            "scope": "https://graph.microsoft.com/User.Read.All offline_access",
        },
    ).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}", "ConsistencyLevel": "eventual"}
    url: str | None = (
        f"{info['graph_url']}/users?$select=id,mail,userPrincipalName&$filter=mail ne null&$count=true&$top=999"
    )
    ids: list[str] = []
    while url:
        body = session.get(url, headers=headers).json()
        ids += [u["id"] for u in body.get("value", []) if not not_a_mailbox_user(u)]
        url = body.get("@odata.nextLink")
    return headers, ids


def _naive(info: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The classic MA: list users with a mailbox, then one photo GET after another.

    The time box is for the GETs: the listing is the same for every client, and on a large tenant
    it alone outlasts the box (100,000 users: 65 s), which left no GET to measure a rate by.
    """
    session = _session(info["ca_cert"])
    listing_started = time.monotonic()
    headers, ids = _list_mailbox_users(info, session)
    started = time.monotonic()
    photos = looked_up = 0
    for user_id in ids:
        if looked_up and time.monotonic() - started > seconds:
            break
        resp = session.get(f"{info['graph_url']}/users/{user_id}/photo/$value", headers=headers)
        looked_up += 1
        photos += resp.status_code == 200
    elapsed = time.monotonic() - started
    return {
        "naive_photos_per_s": round(photos / elapsed, 2) if looked_up else None,
        "naive_users_looked_up": looked_up,
        "naive_users_total": len(ids),
        "naive_seconds": round(elapsed, 1),
        "naive_listing_s": round(started - listing_started, 1),
        "naive_extrapolated": looked_up < len(ids),
    }


def _one_request_bound(info: dict[str, Any], lanes: int) -> dict[str, Any]:
    """The issue's model of the job, measured: one batched request per user and nothing else.

    ``GET /photo/$value`` in ``$batch``es of 20, ``lanes`` batches in flight (4 items each at a
    time, as the agent runs them), no store, no retries, no metadata. It downloads unbounded
    originals and cannot fetch a size that a photo lacks, so it is not a correct client: it is the
    fastest any client could go on this tenant, the figure the agent's photos/s is to be read
    against together with ``full_import_ceiling_photos_per_s``.
    """
    from concurrent.futures import ThreadPoolExecutor

    lister = _session(info["ca_cert"])
    headers, ids = _list_mailbox_users(info, lister)
    lister.close()
    chunks = [ids[i : i + 20] for i in range(0, len(ids), 20)]
    local = threading.local()

    def send(chunk: list[str]) -> Counter[int]:
        session = getattr(local, "session", None)
        if session is None:
            session = local.session = _session(info["ca_cert"])
        items = [{"id": str(n), "method": "GET", "url": f"/users/{uid}/photo/$value"} for n, uid in enumerate(chunk)]
        resp = session.post(f"{info['graph_url']}/$batch", json={"requests": items}, headers=headers)
        return Counter(int(item["status"]) for item in resp.json()["responses"])

    started = time.monotonic()
    statuses: Counter[int] = Counter()
    with ThreadPoolExecutor(max_workers=lanes) as pool:
        for counts in pool.map(send, chunks):
            statuses += counts
    elapsed = time.monotonic() - started
    return {
        "one_request_bound_photos_per_s": round(statuses[200] / elapsed, 1),
        "one_request_bound_photos": statuses[200],
        "one_request_bound_s": round(elapsed, 2),
        "one_request_bound_throttled": statuses[429],
    }


@contextmanager
def _one_pause_after_first_wave(seconds: float) -> Iterator[dict[str, Any]]:
    """While the block runs, one client-wide pause of ``seconds`` as soon as a step's sends fill its limit.

    Why this is a bound: a client that has never met the service's wall must send past it once to
    find it (nothing answered below a cap says where the cap is), and the push-back that answers
    pauses every thread of the client for its Retry-After (#14's rule). Started at the wall the first
    run measured, as the warm run is (no slow start), and paused at once, before any answer could
    arrive, such a run pays the least a first push-back can cost: the share it reaches is the most a
    cold run of any client that honours that rule can reach, given that wall (a first run whose census
    read the wall low passes that reading on, and the bound is low by as much). The yielded dict says
    whether the pause was made, and at which limit.

    The pause is made by the thread whose ``acquire`` fills the limit, right after it is granted (no
    watcher thread that a busy machine could schedule too late): filled means no room left for a whole
    ``$batch``, with two units in flight at least (the listing's one request alone is no wave), or the one
    unit of a limit of 1.
    """
    lock = threading.Lock()
    seen: dict[str, Any] = {"paused": False, "limit": None}
    armed: list[AdaptiveLimiter] = []

    def arm(limiter: AdaptiveLimiter) -> None:
        real = limiter.acquire

        def acquire(weight: int = 1, *, at_least: int | None = None, cancel: threading.Event | None = None) -> Ticket:
            ticket = real(weight, at_least=at_least, cancel=cancel)
            limit, in_flight = limiter.limit, limiter.in_flight
            if in_flight >= min(limit, 2) and limit - in_flight < BATCH_PARALLELISM:
                with lock:
                    if not seen["paused"]:
                        limiter.pause(seconds)
                        seen.update(paused=True, limit=limit)
            return ticket

        limiter.acquire = acquire  # type: ignore[method-assign]  # this limiter only, for this block
        armed.append(limiter)

    BenchConnector.on_open = arm
    try:
        yield seen
    finally:
        BenchConnector.on_open = None
        for limiter in armed:
            vars(limiter).pop("acquire", None)


def _one_pause_bound(engine: Any, full_limiter: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The warm run again (a new process's limiter at the wall the first run measured), with the pause the
    first run's push-back cost made right after its first wave (see ``_one_pause_after_first_wave``):
    its figures, and its step's metrics for the share."""
    pauses = int(full_limiter.get("pauses", 0))
    if not pauses:
        return {"one_pause_bound_pause_s": None}, {}  # the first run met no wall: no pause to bound
    pause_s = float(full_limiter.get("pause_seconds", 0.0)) / pauses
    forget_shared_limiters()
    with _one_pause_after_first_wave(pause_s) as seen:
        result, seconds, metrics = _timed(engine, "full")
    return {
        "one_pause_bound_status": result.status,
        "one_pause_bound_s": round(seconds, 2),
        "one_pause_bound_pause_s": round(pause_s, 3),
        "one_pause_bound_paused_at_limit": seen["limit"],
        "one_pause_bound_limit_recalled": bool(metrics.get("limit_recalled")),
    }, metrics


def _timed(engine: Any, profile: str) -> tuple[Any, float, dict[str, Any]]:
    """Run ``profile``: its result, seconds, and the step's Graph figures and counters."""
    t0 = time.monotonic()
    result = engine.run_profile(profile)
    seconds = time.monotonic() - t0
    return result, seconds, step_metrics(BenchConnector.last_metrics, result.steps[0].counters)


def _share(
    step: dict[str, Any], seconds: float, ceiling_items_per_s: float | None
) -> tuple[float | None, float | None]:
    """The photos/s the model's ceiling allows for the requests a full import needed, and the share reached.

    Throttled attempts are not counted as needed: the ceiling is what the job's own requests allow.
    """
    photos = step.get("photo_downloads", 0)
    answered = step.get("graph_requests", 0) - step.get("throttled", 0)
    if not ceiling_items_per_s or not answered or not photos or seconds <= 0:
        return None, None
    ceiling_photos = photos * ceiling_items_per_s / answered
    return ceiling_photos, round(photos / seconds / ceiling_photos, 3)


def run(
    users: int = 10_000,
    photo_ratio: float = 0.5,
    latency_ms: float = 100.0,
    seed: int = 1,
    page_size: int = 500,
    naive_seconds: float = 20.0,
    throttle: str = "default",
    interrupt_after_pages: int = 0,
    one_pause_bound: bool = False,
) -> dict[str, Any]:
    from connector.engine import Engine

    try:
        parse_throttle(throttle)  # the caller's mistake, said before an emulator starts
    except ValueError as exc:
        raise ConfigError(f"--throttle: {exc}") from None
    proc, info = _start_emulator(users, photo_ratio, latency_ms, seed, throttle)
    try:
        with tempfile.TemporaryDirectory(prefix="mvsync-bench-import-") as tmp:
            base = Path(tmp)
            os.environ["MVSYNC_TOKEN_CACHE_KEY"] = Fernet.generate_key().decode()
            os.environ["MVSYNC_BENCH_EXO_RT"] = info["refresh_token"]
            engine = Engine(_bench_config(base, info, page_size, users))
            try:
                full, full_s, full_metrics = _timed(engine, "full")
                full_errors = Counter(e.error_name for e in full.steps[0].errors)
                delta, delta_s, delta_metrics = _timed(engine, "delta")
                # a scheduled run: a new process (no limiter learned in it) on the same store
                forget_shared_limiters()
                warm, warm_s, warm_metrics = _timed(engine, "full")
                bound, bound_metrics = (
                    _one_pause_bound(engine, full_metrics.get("limiter", {})) if one_pause_bound else ({}, {})
                )
            finally:
                engine.close()
        rss = peak_rss_mb()
        server = _session(info["ca_cert"]).get(f"{info['admin_url']}/stats").json()
        resumed = _resumed(info, page_size, users, interrupt_after_pages) if interrupt_after_pages else {}
        naive = _naive(info, naive_seconds)
        # 12 batches of 4 items in flight: 48 requests, just inside the default model's 50 (the bound
        # sends no retries, so it is measured only where it is not throttled)
        lanes_bound = _one_request_bound(info, lanes=12) if throttle == "default" else {}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    graph_requests = full_metrics.get("graph_requests", 0) + delta_metrics.get("graph_requests", 0)
    throttled = full_metrics.get("throttled", 0) + delta_metrics.get("throttled", 0)
    photos = full_metrics.get("photo_downloads", 0)
    full_items = full_metrics.get("graph_requests", 0)
    listed = full_metrics.get("users", 0)
    # The model's tightest limit, in Graph requests per second (Little's law for concurrency limits).
    ceiling_items_per_s = ceiling_requests_per_s(info["throttle"], latency_ms / 1000.0)
    ceiling_photos, share = _share(full_metrics, full_s, ceiling_items_per_s)
    _, warm_share = _share(warm_metrics, warm_s, ceiling_items_per_s)
    if bound_metrics:
        _, bound["one_pause_bound_share_of_model_ceiling"] = _share(
            bound_metrics, bound["one_pause_bound_s"], ceiling_items_per_s
        )
        bound["one_pause_bound_note"] = (
            "the warm run again, paused once for the first run's Retry-After as soon as its first wave filled "
            "the limit: the most a cold run can reach if it must meet the wall once and pause the whole client"
        )
    return {
        "users": users,
        "photo_ratio": photo_ratio,
        "latency_ms": latency_ms,
        "driver": "engine (stage-only full-import and delta-import steps into SQLite)",
        "throttle_model": throttle,
        "throttle_limits": info["throttle"],
        "full_import_status": full.status,
        "full_import_message": full.steps[0].message,
        "full_import_error_names": dict(full_errors),
        "full_import_s": round(full_s, 2),
        "full_import_photos": photos,
        "full_import_photos_per_s": round(photos / full_s, 1),
        "full_import_users_per_s": round(full_metrics.get("users", 0) / full_s, 1),
        "full_import_graph_requests": full_items,
        "full_import_throttled": full_metrics.get("throttled", 0),
        "full_import_users": listed,
        "graph_requests_per_user": round(full_items / listed, 3) if listed else None,
        "model_ceiling_requests_per_s": ceiling_items_per_s,
        "full_import_ceiling_photos_per_s": round(ceiling_photos, 1) if ceiling_photos else None,
        "full_import_share_of_model_ceiling": share,
        "full_import_share_of_ceiling": share,
        "emulator_assumptions": model_assumptions(latency_ms, EmulatorConfig().batch_parallelism),
        "ceiling_note": "photos/s if the model's tightest limit were used all the time by the requests the job "
        "needed (one metadata probe per user, one sized download per photo; throttled attempts not counted)",
        "limiter": full_metrics.get("limiter", {}),
        "warm_full_import_status": warm.status,
        "warm_full_import_limit_recalled": bool(warm_metrics.get("limit_recalled")),
        "warm_full_import_s": round(warm_s, 2),
        "warm_full_import_photos": warm_metrics.get("photo_downloads", 0),
        "warm_full_import_share_of_model_ceiling": warm_share,
        "warm_full_import_throttled": warm_metrics.get("throttled", 0),
        "warm_limiter": warm_metrics.get("limiter", {}),
        "warm_note": "the same full import again in a fresh limiter (as a scheduled run's new process), on the "
        "same store: it starts at the in-flight limit the first run reached (limit_memory_hours) and stays "
        "below it until a probe is due (probe_min_s)",
        "delta_status": delta.status,
        "delta_no_change_s": round(delta_s, 2),
        "delta_photo_downloads": delta_metrics.get("photo_downloads", 0),
        "delta_probes": delta_metrics.get("probes", 0),
        "delta_recheck_window_hours": 0,
        "throttled_ratio": round(throttled / graph_requests, 5) if graph_requests else 0.0,
        "server_throttled": server.get("throttled"),
        "server_graph_requests": server.get("graph_requests"),
        "retries": full_metrics.get("retries", 0) + delta_metrics.get("retries", 0),
        "peak_rss_mb": rss,
        "peak_rss_scope": "client process (engine + connector); emulator runs separately",
        **resumed,
        **naive,
        "naive_note": f"sequential GET /photo/$value per user after the listing (naive_listing_s), time-boxed to "
        f"{naive_seconds:g} s; rate extrapolated",
        **bound,
        **lanes_bound,
        "one_request_bound_note": "batched GET /photo/$value, one request per user, same lanes, no store: "
        "unbounded originals and no sized fallback, so not a correct client; the fastest any client can go",
    }
