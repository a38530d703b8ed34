"""``mvsync bench sync``: full and no-change delta synchronization over synthetic agents.

Two generated agents of ``--objects`` people each: ``source`` projects persons and flows six
strings and a photo; ``target`` joins on the account name and gets export flows (photo checksum and
display name). The imports are set-up (timed separately); the figures are the full synchronization
of both agents (objects/s over both connector spaces) and a delta synchronization with no changes.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

from connector.bench import generated
from connector.bench._util import peak_rss_mb
from connector.config import config_from_dict
from connector.engine import Engine

__all__ = ["run", "run_on_postgres"]


def bench_config(objects: int, store_url: str, base: Path) -> dict[str, Any]:
    people = [
        ("accountName", "accountName"),
        ("displayName", "displayName"),
        ("mail", "mail"),
        ("userPrincipalName", "userPrincipalName"),
        ("employeeID", "employeeID"),
        ("photo", "photo"),
        ("photoChecksum", "photoChecksum"),
    ]
    return {
        "store": {"url": store_url},
        "data_dir": str(base / "data"),
        "agents": {
            "source": {
                "type": "generated",
                "settings": {"count": objects, "seed": 1, "photo_bytes": 64},
                "projection": [{"object_class": "person"}],
                "import_flow": [{"object_class": "person", "cs": cs, "mv": mv} for cs, mv in people],
            },
            "target": {
                "type": "generated",
                "settings": {"count": objects, "seed": 2, "photo_bytes": 0},
                "join": [{"object_class": "person", "match": [{"cs": "accountName", "mv": "accountName"}]}],
                "export_flow": [
                    {"object_class": "person", "mv": "photo", "cs": "thumbnailChecksum", "transform": "sha256"},
                    {"object_class": "person", "mv": "displayName", "cs": "displayName"},
                ],
            },
        },
        "run_profiles": {
            "import": {"steps": [{"type": "full-import", "agent": a, "page_size": 5000} for a in ("source", "target")]},
            "full-sync": {"steps": [{"type": "full-sync", "agent": a} for a in ("source", "target")]},
            "delta-sync": {"steps": [{"type": "delta-sync", "agent": a} for a in ("source", "target")]},
        },
    }


def run(objects: int = 100_000, store: str | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="mvsync-bench-") as tmp:
        base = Path(tmp)
        url = store or f"sqlite:///{base / 'bench.db'}"
        config = config_from_dict(bench_config(objects, url, base), base_dir=base)
        generated.register()
        engine = Engine(config)
        if store:
            engine.store.clear()  # PostgreSQL benchmarks reuse one database
        t0 = time.perf_counter()
        imported = engine.run_profile("import")
        import_s = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        full = engine.run_profile("full-sync")
        full_s, full_cpu_s = time.perf_counter() - t0, time.process_time() - c0
        t0 = time.perf_counter()
        delta = engine.run_profile("delta-sync")
        delta_s = time.perf_counter() - t0
        engine.close()
        pending = full.steps[0].counters.get("export_updates", 0) + full.steps[1].counters.get("export_updates", 0)
        return {
            "benchmark": "sync",
            "store": engine.store.dialect,
            "objects_per_agent": objects,
            "connector_space_objects": 2 * objects,
            "import_s": round(import_s, 2),
            "import_objects_per_s": round(2 * objects / import_s),
            "full_sync_s": round(full_s, 2),
            "full_sync_objects_per_s": round(2 * objects / full_s),
            # CPU seconds of this process: on a noisy (shared) machine this varies far less than the
            # wall clock; wall minus CPU is mostly the store waiting on the disk (or the server)
            "full_sync_cpu_s": round(full_cpu_s, 2),
            "projections": full.steps[0].counters.get("projections", 0),
            "joins": full.steps[1].counters.get("joins", 0),
            "pending_exports_staged": pending,
            "delta_sync_no_change_s": round(delta_s, 3),
            "statuses": [imported.status, full.status, delta.status],
            "peak_rss_mb": peak_rss_mb(),
        }


def run_on_postgres(objects: int = 100_000) -> dict[str, Any]:
    """``run`` on a throwaway PostgreSQL cluster that the test harness starts (from a source checkout)."""
    from connector.bench._harness import harness

    postgres_server = harness("postgres_server", benchmark="sync --postgres").postgres_server
    with postgres_server(durable=True) as server:  # durable: default fsync, as a production server
        return run(objects, server.create_database())
