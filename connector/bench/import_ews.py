"""``mvsync bench import-ews``: Exchange Server (on-premises) photo import against the EWS emulator.

The emulator runs in its own process (so it shares neither the GIL nor the memory figure) with
``--mailboxes`` mailboxes, ``--latency-ms`` added to every request and the account's
EWSMaxConcurrency (27 by default since Exchange 2013; field-notes-2.md §1.8) enforced. The agent
authenticates with NTLM (one handshake per connection) and is driven through the engine
(stage-only full and delta import steps into a real SQLite store), as in production.

What the concurrency limit allows: the agent's ceiling (``--concurrency``) stays below
EWSMaxConcurrency, so at most ``concurrency`` requests are in flight and, by Little's law, the
import cannot beat ``concurrency / latency`` requests per second (``ceiling_requests_per_s``).
``full_import_share_of_ceiling`` is the share of that the full import reached, and
``ceiling_share_of_ews_max_concurrency`` the share of the account's EWS allowance the ceiling uses.
The delta re-checks every mailbox (``photo_recheck_hours = 0``, the worst case) by ETag: 304s.
``--budget-per-s`` adds the account's budget (``ErrorServerBusy`` with ``BackOffMilliseconds`` once
spent), to show the shared limiter pausing for it.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

from connector.agents.exchange_server import ExchangeServerPhotosConnector
from connector.bench._util import peak_rss_mb, server_info, step_metrics, stop_child

__all__ = ["BenchEwsConnector", "run"]

_SERVE = """
import json, sys
from connector.emulator import EwsConfig, EwsEmulator
emu = EwsEmulator(EwsConfig(**json.loads(sys.argv[1]))).start()
print(json.dumps({**emu.info, "mailboxes": [m["email"] for m in emu.mailboxes()]}), flush=True)
sys.stdin.read()  # serve until the benchmark closes our stdin
print(json.dumps(emu.stats()), flush=True)
emu.stop()
"""


class BenchEwsConnector(ExchangeServerPhotosConnector):
    """The real agent, keeping each step's metrics where the benchmark can read them."""

    last_metrics: ClassVar[dict[str, Any]] = {}

    def close(self) -> None:
        super().close()
        BenchEwsConnector.last_metrics = self.metrics


def _config(tmp: Path, info: dict[str, Any], concurrency: int, ews_max: int) -> Path:
    from connector.demo import dump_toml, write_secret

    listing = tmp / "mailboxes.txt"
    listing.write_text("\n".join(info["mailboxes"]) + "\n", encoding="utf-8")
    settings = {
        "ews_url": info["ews_url"],
        "ca_bundle": info["ca_cert"],
        "auth": "ntlm",
        "username": info["username"],
        "password": {"file": str(write_secret(tmp / "secrets" / "ews-password", info["password"]))},
        "mailbox_file": str(listing),
        "concurrency": concurrency,
        "ews_max_concurrency": ews_max,
        "photo_recheck_hours": 0,
    }

    def step(kind: str) -> dict[str, Any]:
        return {"steps": [{"type": kind, "agent": "exs", "page_size": 500}]}

    data = {
        "data_dir": "data",
        "store": {"url": "sqlite:///bench.db"},
        "metaverse": {"schema": "person"},
        "agents": {"exs": {"type": f"{__name__}:BenchEwsConnector", "settings": settings}},
        "run_profiles": {"Full Import": step("full-import"), "Delta Import": step("delta-import")},
    }
    path = tmp / "mvsync.toml"
    path.write_text(dump_toml(data), encoding="utf-8")
    return path


def run(
    mailboxes: int = 2000,
    photo_ratio: float = 0.5,
    latency_ms: float = 100.0,
    concurrency: int = 16,
    ews_max_concurrency: int = 27,
    seed: int = 1,
    budget_per_s: float | None = None,
) -> dict[str, Any]:
    """Run the benchmark and return its figures (see the module docstring)."""
    from connector.config import ConfigError, load_config
    from connector.engine import Engine

    if concurrency >= ews_max_concurrency:  # the agent's own rule, said in the options' words before anything starts
        msg = (
            f"--concurrency ({concurrency}) must stay below --ews-max-concurrency ({ews_max_concurrency}): "
            "the account's EWSMaxConcurrency is shared with its other clients"
        )
        raise ConfigError(msg)
    emulator = {
        "mailboxes": mailboxes,
        "photo_ratio": photo_ratio,
        "latency_ms": latency_ms,
        "seed": seed,
        "max_concurrency": ews_max_concurrency,
        "budget_per_s": budget_per_s,
        "burst": 50,
        "auth": ["ntlm"],
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE, json.dumps(emulator)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None and proc.stdout is not None
    try:
        info = server_info(proc, "the EWS emulator")
        with tempfile.TemporaryDirectory(prefix="mvsync-bench-ews-") as tmp:
            engine = Engine(load_config(_config(Path(tmp), info, concurrency, ews_max_concurrency)))
            try:
                t0 = time.perf_counter()
                full = engine.run_profile("Full Import")
                full_s = time.perf_counter() - t0
                full_metrics = step_metrics(BenchEwsConnector.last_metrics, full.steps[0].counters)
                t0 = time.perf_counter()
                delta = engine.run_profile("Delta Import")
                delta_s = time.perf_counter() - t0
                delta_metrics = step_metrics(BenchEwsConnector.last_metrics, delta.steps[0].counters)
            finally:
                engine.close()
        proc.stdin.close()
        stats = json.loads(proc.stdout.readline() or "{}")
    finally:
        stop_child(proc)
    ceiling_rps = concurrency / (latency_ms / 1000.0) if latency_ms > 0 else None
    # answered requests (thumbnail checks included); throttled attempts are counted apart
    answered = full_metrics.get("requests", 0) - full_metrics.get("throttled", 0)
    full_rps = answered / full_s if full_s else 0.0
    return {
        "benchmark": "import-ews",
        "mailboxes": mailboxes,
        "photo_ratio": photo_ratio,
        "latency_ms": latency_ms,
        "auth": "ntlm",
        "ews_max_concurrency": ews_max_concurrency,
        "budget_per_s": budget_per_s,
        "concurrency": concurrency,
        "ceiling_share_of_ews_max_concurrency": round(concurrency / ews_max_concurrency, 3),
        "ceiling_requests_per_s": round(ceiling_rps, 1) if ceiling_rps else None,
        "full_import_status": full.status,
        "full_import_s": round(full_s, 2),
        "photos": full_metrics.get("photo", 0),
        "photos_per_s": round(full_metrics.get("photo", 0) / full_s, 1) if full_s else None,
        "mailboxes_per_s": round(mailboxes / full_s, 1) if full_s else None,
        "full_import_requests_per_s": round(full_rps, 1),
        "full_import_share_of_ceiling": round(full_rps / ceiling_rps, 3) if ceiling_rps else None,
        "full_import_throttled": full_metrics.get("throttled", 0),
        "full_import_limiter": full_metrics.get("limiter", {}),
        "delta_import_status": delta.status,
        "delta_recheck_all_s": round(delta_s, 2),
        "delta_not_modified": delta_metrics.get("unchanged", 0),
        "delta_import_throttled": delta_metrics.get("throttled", 0),
        "delta_import_limiter": delta_metrics.get("limiter", {}),
        "delta_checks_per_s": round(mailboxes / delta_s, 1) if delta_s else None,
        "import_errors": full_metrics.get("error", 0) + delta_metrics.get("error", 0),
        "emulator_peak_in_flight": stats.get("peak_in_flight"),
        "emulator_throttled": stats.get("throttled", 0),
        "backoff_ms_honoured": full_metrics.get("backoff_ms_honoured", 0) + delta_metrics.get("backoff_ms_honoured", 0),
        "emulator_ntlm_challenges": stats.get("unauthorized", 0),
        "peak_rss_mb": peak_rss_mb(),
        "assumptions": "latency is the emulator's added delay per request (Microsoft publishes none); "
        "photos are 24 rendered templates served at HR648x648 or their largest size",
    }
