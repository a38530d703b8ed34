"""``mvsync bench e2e``: the whole photo solution at the blog's scale, from an empty store to AD.

The classic PowerShell MA took about 19 minutes for ~1,100 photos among 2,200 users. This runs
the sample's "Full Cycle" (full import of AD, Exchange Online and the HR folder, full sync, the AD
export through ``thumbnail(96, 10 KB)``, the confirming import) and then its "Delta Cycle" with
nothing changed, against:

* the Graph emulator in its own process (so it shares neither the GIL nor the memory figure),
  with ``--latency-ms`` added to every request and its default throttling model;
* the EWS emulator (in this process) for the tenant's on-premises mailboxes, with the same latency:
  the hybrid people, whose photos the ``exs`` agent reads from Exchange Server;
* AD as the demo's LDIF directory stand-in (``connector.demo``), or a real directory: the one
  ``AD_*`` describes, or with ``--samba`` the harness's Samba DC; there the users are created in
  a throwaway OU first (not timed) and deleted afterwards.

The delta cycle uses the sample's settings, so Exchange Online photo ETags are not re-probed
within the 24-hour window: the figure is what a scheduled run right after a full cycle costs.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from connector.bench._util import peak_rss_mb, server_info, stop_child
from connector.net import verifying_session

__all__ = ["run"]

_SERVE = """
import json, sys
from connector.emulator import EmulatorConfig, GraphEmulator
emu = GraphEmulator(EmulatorConfig(**json.loads(sys.argv[1]))).start()
print(json.dumps(emu.info), flush=True)
sys.stdin.read()  # serve until the benchmark closes our stdin
emu.stop()
"""


@contextlib.contextmanager
def _emulator(**config: Any) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """A Graph emulator in a child process: its info and its users (read over the admin API)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVE, json.dumps(config)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        info = server_info(proc, "the Graph emulator")
        with verifying_session(Path(info["ca_cert"]), timeout_s=60) as http:  # (TLS verified as the agents do)
            users = http.get(f"{info['admin_url']}/users").json()
        yield info, users
    finally:
        stop_child(proc)


def _cpu_s() -> float:
    return time.process_time()  # user + system CPU of this process, on POSIX and Windows alike


def run(
    users: int = 2200, photo_ratio: float = 0.5, latency_ms: float = 100.0, seed: int = 1, samba: bool = False
) -> dict[str, Any]:
    """Run the benchmark and return its figures (see the module docstring)."""
    from connector.config import load_config
    from connector.demo import (
        DEMO_SCOPES,
        SharedNames,
        prepare_scenario,
        start_ews,
        work_done,
    )
    from connector.demo.ad import connect, delete_subtree, settings_from_env
    from connector.emulator import EmulatorConfig, model_assumptions
    from connector.engine import Engine

    use_directory = samba or settings_from_env() is not None
    names = SharedNames.new()  # other runs and test sessions may use the same DC now
    emulator_config = {
        "users": users,
        "photo_ratio": photo_ratio,
        "latency_ms": latency_ms,
        "seed": seed,
        "delegated_scopes": list(DEMO_SCOPES),
        "domain": names.domain(),
    }
    with contextlib.ExitStack() as stack:
        ad = stack.enter_context(_samba_lease()) if use_directory else None
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mvsync-bench-e2e-")))
        info, tenant = stack.enter_context(_emulator(**emulator_config))
        ou = names.ou("mvsync-bench-e2e")
        setup_started = time.perf_counter()
        ews = start_ews(tenant, latency_ms=latency_ms)
        stack.callback(ews.stop)
        scenario = prepare_scenario(
            tmp, info, tenant, ad=ad, ad_ou=ou, account_prefix=names.account_prefix, ews_info=ews.info
        )
        setup_s = time.perf_counter() - setup_started
        if ad is not None:

            def cleanup() -> None:
                conn = connect(ad)
                try:
                    delete_subtree(conn, f"{ou},{ad.base_dn}")
                finally:
                    conn.unbind()

            stack.callback(cleanup)
        engine = Engine(load_config(scenario.config_path))
        stack.callback(engine.close)
        cpu0, t0 = _cpu_s(), time.perf_counter()
        full = engine.run_profile("Full Cycle")
        full_s, full_cpu = time.perf_counter() - t0, _cpu_s() - cpu0
        cpu0, t0 = _cpu_s(), time.perf_counter()
        delta = engine.run_profile("Delta Cycle")
        delta_s, delta_cpu = time.perf_counter() - t0, _cpu_s() - cpu0

    def count(result: Any, kind: str, key: str, agent: str | None = None) -> int:
        return sum(
            int(s.counters.get(key, 0)) for s in result.steps if s.kind == kind and (agent is None or s.agent == agent)
        )

    return {
        "benchmark": "e2e",
        "users": users,
        "photo_ratio": photo_ratio,
        "latency_ms": latency_ms,
        "emulator_assumptions": model_assumptions(latency_ms, EmulatorConfig().batch_parallelism),
        "tenant_photos": sum(1 for u in tenant if u.get("hasPhoto")),
        # B2B guests have no account on-premises (connector.demo._world.directory_users)
        "tenant_guests": sum(1 for u in tenant if u.get("userType") == "Guest"),
        "directory_users": len(scenario.users),
        # people on-premises with a photo in Exchange Online, Exchange Server or the HR folder
        "directory_users_with_source_photo": sum(
            1
            for u in scenario.users
            if u.exo_photo or u.exs_photo or u.sam in {*scenario.hr["fallback"], *scenario.hr["shadowed"]}
        ),
        "ad": scenario.ad_mode,
        "full_cycle_status": full.status,
        "full_cycle_s": round(full_s, 2),
        "full_cycle_cpu_s": round(full_cpu, 2),
        "full_cycle_steps": [
            {"agent": s.agent, "step": s.kind, "status": s.status, "seconds": round(s.seconds, 2)} for s in full.steps
        ],
        "photos_exported": count(full, "export", "export_updates", "ad"),
        "exports_confirmed": count(full, "delta-import", "exports_confirmed", "ad"),
        "exo_import_errors": count(full, "full-import", "import_errors", "exo"),
        "exs_import_errors": count(full, "full-import", "import_errors", "exs"),
        # per-object errors of the full cycle by name: people with an on-premises mailbox are not among
        # them (the exo agent imports them as a known state, EXOMailboxLocation = on-premises)
        "full_cycle_error_names": dict(Counter(e.error_name for s in full.steps for e in s.errors)),
        "delta_cycle_status": delta.status,
        "delta_cycle_no_change_s": round(delta_s, 2),
        "delta_cycle_cpu_s": round(delta_cpu, 2),
        "delta_cycle_work_done": work_done(delta),
        "setup_s": round(setup_s, 2),
        "peak_rss_mb": peak_rss_mb(),
        "peak_rss_scope": "this process (engine, connectors, transforms); the emulator runs separately",
        "target_full_cycle_s": 60,
        "target_met": full_s <= 60 and not full.status.startswith("stopped-"),
    }


def _samba_lease() -> Any:
    """The harness's DC (or the ``AD_*`` directory): test machinery, from a source checkout only."""
    from connector.bench._harness import harness

    return harness("samba_dc", benchmark="e2e --samba").samba_lease()
