"""``mvsync bench resilience``: faults, crashes and hostile input, with the figures as one JSON object.

The scenarios live here (not in the tests) so that ``tests/resilience`` and this benchmark run the
very same code; the tests assert on the figures these functions return, the benchmark prints them
with more trials.

* :func:`exo_import_under_faults`: a full Exchange Online import under the emulator's
  ``resilience`` fault mix (10 % 429 with Retry-After, 2 % 503, 1 % connection resets, 1 %
  truncated bodies) while access tokens expire every couple of seconds, compared photo by photo
  with a fault-free import of the same tenant. Time is scaled down: the issue's two-minute token
  lifetime against a ~20 s import becomes ~2 s, so a token still expires many times per import.
* :func:`export_across_dc_restart`: the AD export in batches, with the domain controller stopped
  after the first batch and started again (the Samba harness): what was not written stays pending,
  the next export finishes it, and what was written is not written again.
* :func:`crash_trials`: ``connector.testing.crash`` (kill -9 of the real CLI at seeded points).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = [
    "crash_trials",
    "exo_import_under_faults",
    "exo_photo_checksums",
    "export_across_dc_restart",
    "register",
    "run",
]

#: The issue's token lifetime is 2 minutes; scaled down with the tenant (see the module docstring).
SCALED_TOKEN_LIFETIME_S = 2


def _exo_only_config(root: Path, info: dict[str, Any], **exo_overrides: Any) -> Any:
    """A configuration with only the exo agent and one full-import profile (sample settings)."""
    from connector.config import config_from_dict
    from connector.demo._config import emulator_exo_settings, load_sample

    exo = emulator_exo_settings(load_sample(), info, root / "secrets", **exo_overrides)
    return config_from_dict(
        {
            "store": {"url": "sqlite:///mvsync.db"},
            "data_dir": "data",
            "agents": {"exo": {"type": "exchange-online-photos", "settings": exo}},
            "run_profiles": {"Full Import": {"steps": [{"type": "full-import", "agent": "exo"}]}},
        },
        base_dir=root,
    )


def exo_photo_checksums(config: Any) -> dict[str, str | None]:
    """Connector-space anchor -> staged ``EXOPhotoChecksum`` (None: the user has no photo)."""
    from sqlalchemy import select

    from connector.store import SqlStore, loads
    from connector.store.tables import cs_object

    store = SqlStore(config.store_url())
    try:
        with store.read() as conn:
            rows = conn.execute(
                select(cs_object.c.anchor, cs_object.c.pending, cs_object.c.hologram).where(
                    cs_object.c.agent == "exo"
                )
            ).all()
    finally:
        store.close()
    out: dict[str, str | None] = {}
    for row in rows:
        doc = loads(row.pending or row.hologram or "{}")
        out[row.anchor] = doc.get("EXOPhotoChecksum")
    return out


def exo_import_under_faults(
    root: Path,
    *,
    users: int = 300,
    seed: int = 9,
    faults: str = "resilience",
    token_lifetime_s: int = SCALED_TOKEN_LIFETIME_S,
    batch_size: int = 4,
) -> dict[str, Any]:
    """Import the same tenant without and with faults; the figures, and whether every photo matched.

    ``batch_size`` is small so that many whole HTTP requests cross the wire: resets and truncated
    bodies hit only whole requests (a ``$batch`` item can only be throttled or fail).
    """
    from connector.emulator import GraphEmulator
    from connector.engine import Engine
    from connector.testing.crash import lab_emulator_config

    started = time.monotonic()
    cfg = lab_emulator_config(users=users, seed=seed)
    with GraphEmulator(cfg) as emu:
        info = emu.info
        results: dict[str, Any] = {}
        sums: dict[str, dict[str, str | None]] = {}
        for label, fault_spec, lifetime in (("clean", "none", 3600), ("faulted", faults, token_lifetime_s)):
            emu.admin.set_faults(fault_spec)
            emu.admin.set_access_token_lifetime(lifetime)
            emu.admin.reset_stats()
            config = _exo_only_config(root / label, info, batch_size=batch_size)
            engine = Engine(config)
            t0 = time.monotonic()
            try:
                result = engine.run_profile("Full Import")
            finally:
                engine.close()
            stats = emu.admin.stats()
            step = result.steps[0]
            sums[label] = exo_photo_checksums(config)
            results[label] = {
                "status": result.status,
                "seconds": round(time.monotonic() - t0, 1),
                "errors": step.error_count,
                "error_names": dict(Counter(e.error_name for e in step.errors)),
                "faults_injected": dict(stats.get("faults", {})),
                "throttled_429": int(stats.get("by_status", {}).get("429", 0)),
                "token_requests": int(stats.get("token_requests", 0)),
                "http_by_status": stats.get("http_by_status", {}),
                "graph": {k: v for k, v in step.counters.items() if isinstance(v, int | float)},
            }
        emu.admin.set_faults("none")
        expected_photos = sum(1 for u in emu.admin.users() if u.get("hasPhoto") and u.get("mail"))
    clean, faulted = sums["clean"], sums["faulted"]
    missing = sorted(a for a in clean if a not in faulted)
    different = sorted(a for a in clean if a in faulted and faulted[a] != clean[a])
    photos = sum(1 for v in clean.values() if v)
    return {
        "users": users,
        "seed": seed,
        "fault_profile": faults,
        "token_lifetime_s": token_lifetime_s,
        "objects": len(clean),
        "photos": photos,
        "tenant_photos": expected_photos,
        "objects_missing": len(missing),
        "checksums_different": len(different),
        "identical": not missing and not different and len(clean) == len(faulted),
        "clean": results["clean"],
        "faulted": results["faulted"],
        "seconds": round(time.monotonic() - started, 1),
    }


def export_across_dc_restart(
    root: Path,
    dc: Any,
    *,
    restart: Callable[[], None],
    stop: Callable[[], None],
    seed: int = 5,
    users: int = 24,
    batch_size: int = 4,
    ou: str | None = None,
) -> dict[str, Any]:
    """Export thumbnails in batches; the DC goes down after the first batch and comes back.

    ``stop`` and ``restart`` stop and start the domain controller ``dc`` (the Samba harness).
    Returns what was written before the outage, what stayed pending, what the next export wrote,
    and whether anything was written twice (``uSNChanged`` of the first batch's objects).
    """
    from connector.agents.active_directory import ActiveDirectoryConnector
    from connector.config import RunStepConfig, RunStepKind, load_config
    from connector.demo import prepare_scenario
    from connector.emulator import GraphEmulator
    from connector.engine import Engine
    from connector.testing.crash import CrashLab, lab_emulator_config, lab_tag, metaverse_state

    started = time.monotonic()
    with GraphEmulator(lab_emulator_config(users=users, seed=seed)) as emu:
        lab = CrashLab(root, emu, ad=dc, ou=ou or f"OU=mvsync-restart-{lab_tag()}")
        scenario = prepare_scenario(
            root / "world", emu.info, lab.users, ad=dc, ad_ou=lab.ou, fallbacks=2, account_prefix=f"{lab.tag}-"
        )
        config = load_config(scenario.config_path)
        engine = Engine(config)
        original = ActiveDirectoryConnector.export
        batches: list[int] = []

        def export_then_outage(self: ActiveDirectoryConnector, changes: Any) -> Any:
            results = original(self, changes)
            batches.append(len(changes))
            if len(batches) == 1:
                stop()  # the DC goes away between two batches of one export step
            return results

        export_step = RunStepConfig(type=RunStepKind.EXPORT, agent="ad", batch_size=batch_size)
        try:
            for profile in ("Full Import (Stage Only)", "Full Synchronization"):
                engine.run_profile(profile)
            _, staged, _ = metaverse_state(config.store_url())
            with _patched(ActiveDirectoryConnector, "export", export_then_outage):
                during = engine.run_steps("export during outage", [export_step])
            _, pending_after_outage, _ = metaverse_state(config.store_url())
            restart()
            photos_between, usn_between = lab.directory(scenario)
            after = engine.run_steps("export after restart", [export_step])
            confirm = engine.run_profile("Delta Cycle")
            final = engine.run_profile("Delta Cycle")
        finally:
            engine.close()
        photos_after, usn_after = lab.directory(scenario)
        _, pending_final, _ = metaverse_state(config.store_url())
        lab.cleanup()
    written_before = {sam for sam, sha in photos_between.items() if sha}
    step = during.steps[0]
    return {
        "staged_exports": staged,
        "batch_size": batch_size,
        "exported_before_outage": len(written_before),
        "outage_step_status": step.status,
        "outage_error_names": dict(Counter(e.error_name for e in step.errors)),
        "pending_after_outage": pending_after_outage,
        "exported_after_restart": int(after.steps[0].counters.get("export_updates", 0)),
        "after_restart_status": after.status,
        "rewritten_after_restart": sorted(sam for sam in written_before if usn_after[sam] != usn_between[sam]),
        "photos_in_directory": sum(1 for sha in photos_after.values() if sha),
        "pending_final": pending_final,
        "confirm_status": confirm.status,
        "final_cycle_exports": sum(int(s.counters.get("export_updates", 0)) for s in final.steps),
        "seconds": round(time.monotonic() - started, 1),
    }


@contextlib.contextmanager
def _patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


def crash_trials(root: Path, *, trials: int, seed: int, ad: Any = None, users: int = 24) -> dict[str, Any]:
    """``trials`` kill -9 trials (phases in turn) against a fresh tenant; the summary figures."""
    from connector.emulator import GraphEmulator
    from connector.testing.crash import CrashLab, lab_emulator_config

    with GraphEmulator(lab_emulator_config(users=users, seed=seed)) as emu:
        lab = CrashLab(root, emu, ad=ad)
        try:
            return lab.run_trials(trials, seed).as_dict()
        finally:
            lab.cleanup()


def run(trials: int = 20, seed: int = 1, *, samba: bool = True) -> dict[str, Any]:
    """Everything, with one JSON-able result (``mvsync bench resilience``)."""
    raise NotImplementedError


def register(bench_app: typer.Typer) -> None:
    @bench_app.command("resilience")
    def resilience(
        trials: Annotated[int, typer.Option(help="kill -9 trials (phases import, sync, export in turn)")] = 20,
        seed: Annotated[int, typer.Option(help="seed of the kill points, tenant and faults")] = 1,
        samba: Annotated[bool, typer.Option(help="use the Samba AD harness when it can run")] = True,
        as_json: Annotated[bool, typer.Option("--json/--no-json", help="one JSON object (the default)")] = True,
    ) -> None:
        """Fault, crash and hostile-input suites against the emulator and Samba AD: the figures."""
        result = run(trials, seed, samba=samba)
        typer.echo(json.dumps(result) if as_json else json.dumps(result, indent=2))


_ = tempfile  # used by run()
