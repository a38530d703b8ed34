"""``mvsync demo``: the sample's photo solution, end to end, on a machine with no tenant and no AD.

What it does, all under one folder (``DIR``, default ``./mvsync-demo``):

1. starts the bundled Graph + Entra ID emulator (an in-process HTTPS server on loopback) with
   ``users`` users, about half of them with photos;
2. builds the on-premises side (``_world``): without ``AD_*`` variables, ``DIR/ad/directory.ldif``
   is the directory -- an LDIF snapshot read by the AD stand-in (``_directory``), whose exports are
   written to ``DIR/ad/changes.ldif`` for ``ldapmodify`` and applied to the snapshot as a DC would;
   with ``AD_*`` variables, the real directory, where the demo (re)creates its users in its own
   ``OU=mvsync-demo`` under ``AD_BASE_DN`` and writes only there;
3. writes the HR photo folder, the secrets (owner-only files) and ``DIR/mvsync.toml``, derived from
   ``samples/mvsync.toml`` (same rules and run profiles, site settings pointing at the above);
4. runs "Full Cycle" on an empty SQLite store, then "Delta Cycle" to show that with nothing
   changed, nothing is done.

Re-running starts afresh: a folder the demo made (it holds the ``.mvsync-demo`` marker) is emptied
first; any other non-empty folder is refused rather than touched.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from connector.config import ConfigError, load_config
from connector.demo._config import (
    AD_SNAPSHOT_TYPE,
    MARKER,
    derive_config,
    dump_toml,
    emulator_exo_settings,
    keep_ca,
    load_sample_document,
    sample_path,
    write_secret,
)
from connector.demo._world import (
    DirectoryUser,
    SharedNames,
    directory_users,
    start_ews,
    write_hr_folder,
    write_mailbox_file,
    write_snapshot,
)
from connector.engine import Engine, RunResult, StepResult

__all__ = [
    "DEMO_SCOPES",
    "MARKER",
    "Scenario",
    "prepare_dir",
    "prepare_scenario",
    "run_demo",
    "step_summary",
    "work_done",
]

SNAPSHOT_BASE_DN = "OU=Staff,DC=contoso,DC=example"
DEMO_OU = "OU=mvsync-demo"
#: Delegated permissions the emulated administrator consented to (the sample's scopes).
DEMO_SCOPES = ("User.Read", "User.Read.All", "ProfilePhoto.Read.All", "ProfilePhoto.ReadWrite.All")

Say = Callable[[str], None]


def prepare_dir(root: Path) -> Path:
    """Make ``root`` an empty demo folder: created, or emptied when an earlier demo made it.

    A folder that cannot be made or emptied (a file where a parent folder should be, no permission,
    a read-only or virtual file system) is a ``ConfigError`` naming the path and what to do: the user
    chose it with ``--data-dir``, so it is a usage problem (exit code 2), never a traceback.
    """
    root = root.expanduser().resolve()
    try:
        return _make_empty_dir(root)
    except OSError as exc:
        raise ConfigError(_cannot_make(root, exc)) from None


def _cannot_make(root: Path, exc: OSError) -> str:
    """Why ``root`` could not be made, naming the path at fault: the first ancestor that is a file, or
    the path the system refused (``exc.filename``)."""
    blocker = next((p for p in (root, *root.parents) if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        why = f"{blocker} is not a folder"
    else:  # the system's reason, and the path it names when that is not root (a folder it had to empty)
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(root) else ""
        why = f"{exc.strerror or exc}{where}"
    return f"cannot make the demo folder {root}: {why}; create the folder or choose another --data-dir"


def _make_empty_dir(root: Path) -> Path:
    """:func:`prepare_dir`'s work; its ``OSError`` is the caller's to explain."""
    if root.exists():
        if not root.is_dir():
            raise ConfigError(f"{root}: exists and is not a folder; choose another --data-dir")
        if any(root.iterdir()):
            if not (root / MARKER).exists():
                msg = f"{root}: exists, is not empty and was not made by `mvsync demo`; choose another --data-dir"
                raise ConfigError(msg)
            for child in root.iterdir():
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("made by `mvsync demo`; the next run empties this folder\n", encoding="utf-8")
    return root


@dataclass
class Scenario:
    """Everything a prepared demo folder holds (the demo, the e2e test and the benchmark use it)."""

    root: Path
    config_path: Path
    ad_mode: str  # "ldif-snapshot" or "directory"
    ad_where: str
    users: list[DirectoryUser]
    hr: dict[str, list[str]]
    ldif: Path | None = None
    snapshot: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def prepare_scenario(
    root: Path,
    emulator_info: dict[str, Any],
    tenant_users: Sequence[dict[str, Any]],
    *,
    ad: Any = None,
    ad_ou: str = DEMO_OU,
    exo_overrides: dict[str, Any] | None = None,
    fallbacks: int = 4,
    account_prefix: str = "",
    ews_info: dict[str, Any] | None = None,
    exs_overrides: dict[str, Any] | None = None,
) -> Scenario:
    """Write the directory (or populate the real one), HR folder, secrets and ``root/mvsync.toml``.

    ``ad`` is a ``connector.demo.ad.ADSettings`` for a real directory, or None for the LDIF
    snapshot stand-in. ``account_prefix`` prefixes every ``sAMAccountName`` (see ``directory_users``).
    ``ews_info`` is a running EWS emulator's ``info`` (``start_ews``): the hybrid part, the ``exs``
    agent reading the on-premises mailboxes' photos; without it the configuration has no ``exs``.
    """
    sample = load_sample_document()  # the written configuration keeps the sample's comments
    secrets = root / "secrets"
    users = directory_users(
        tenant_users, str(emulator_info.get("domain", "contoso.example")), account_prefix=account_prefix
    )
    hr_dir = root / "hr-photos"
    hr = write_hr_folder(hr_dir, users, fallbacks=fallbacks)
    exo = emulator_exo_settings(sample, emulator_info, secrets, **(exo_overrides or {}))
    scenario = Scenario(root, root / "mvsync.toml", "", "", users, hr)
    if ad is None:
        snapshot, ldif = root / "ad" / "directory.ldif", root / "ad" / "changes.ldif"
        write_snapshot(snapshot, users, SNAPSHOT_BASE_DN)
        ad_settings: dict[str, Any]
        ad_type, ad_settings = AD_SNAPSHOT_TYPE, {"snapshot": "ad/directory.ldif", "ldif_output": "ad/changes.ldif"}
        scenario.ad_mode, scenario.ad_where = "ldif-snapshot", str(snapshot)
        scenario.snapshot, scenario.ldif = snapshot, ldif
    else:
        ou = f"{ad_ou},{ad.base_dn}"
        _populate_directory(ad, ou, users)
        password = write_secret(secrets / "ad-password", ad.password)
        ad_type = "active-directory"
        ad_settings = {
            "host": ad.host,
            "port": ad.ldaps_port,
            "ca_file": str(ad.ca_cert) if ad.ca_cert else None,
            "bind_dn": ad.bind_dn,
            "password": {"file": str(password)},
            "base_dns": [ou],
            "max_writes_per_second": 0,
        }
        if ad.ca_cert is None:
            ad_settings.pop("ca_file")
        scenario.ad_mode, scenario.ad_where = "directory", f"ldaps://{ad.host}:{ad.ldaps_port}/{ou}"
    exs = None
    if ews_info is not None:
        exs = {
            "ews_url": ews_info["ews_url"],
            "ca_bundle": keep_ca(ews_info["ca_cert"], secrets, "ews-emulator-ca.pem"),
            "username": ews_info["username"],
            "password": {"file": str(write_secret(secrets / "ews-password", str(ews_info["password"])))},
            "mailbox_file": str(write_mailbox_file(root / "exchange-server" / "mailboxes.txt", tenant_users)),
            **(exs_overrides or {}),
        }
    data = derive_config(
        sample,
        store_url="sqlite:///mvsync.db",
        data_dir="data",
        exo=exo,
        hr={"path": str(hr_dir)},
        ad_type=ad_type,
        ad={k: v for k, v in ad_settings.items() if v is not None},
        exs=exs,
    )
    header = (
        f"# Written by `mvsync demo` from {sample_path()}: the sample's rules and run profiles, with site\n"
        "# settings pointing at the demo's emulated tenant and directory. Secrets are owner-only files in secrets/.\n"
        "# The emulator stopped with the demo, so `mvsync run` against this file needs a new demo run;\n"
        "# history, mv, cs and pending-exports work offline.\n"
    )
    scenario.config_path.write_text(dump_toml(data, header=header), encoding="utf-8")
    return scenario


def _populate_directory(ad: Any, ou: str, users: Sequence[DirectoryUser]) -> None:
    """(Re)create the demo's users in their own OU of a real directory, and nowhere else."""
    from connector.demo.ad import UserSpec, connect, create_users, delete_subtree, ensure_ou

    conn = connect(ad)
    try:
        delete_subtree(conn, ou)
        ensure_ou(conn, ou)
        specs = [
            UserSpec(u.sam, mail=u.mail, display_name=u.display_name, extra={"userPrincipalName": u.upn}) for u in users
        ]
        create_users(conn, ou, specs, ad.upn_suffix)
    finally:
        conn.unbind()


def work_done(result: RunResult) -> int:
    """Objects a run changed anywhere: staged imports, metaverse changes, exports staged or sent."""
    keys = (
        "adds",
        "updates",
        "deletes",
        "projections",
        "joins",
        "mv_updates",
        "mv_deletes",
        "export_updates",
        "export_updates_changed",
        "export_adds",
        "export_deletes",
    )
    return sum(int(step.counters.get(k, 0)) for step in result.steps for k in keys)


def step_summary(step: StepResult) -> dict[str, Any]:
    """One step for the report: what it was, how it ended, its non-zero counters (not the numbers of its units
    of work: pages, chunks, batches) and time."""
    counters = {k: v for k, v in sorted(step.counters.items()) if v and k not in ("pages", "chunks", "batches")}
    return {
        "agent": step.agent,
        "step": step.kind,
        "status": step.status,
        "seconds": round(step.seconds, 2),
        "counters": counters,
        **({"message": step.message} if step.message else {}),
    }


def _exported(result: RunResult, agent: str = "ad") -> int:
    return sum(
        int(s.counters.get("export_updates", 0)) for s in result.steps if s.agent == agent and s.kind == "export"
    )


def run_demo(
    users: int = 200,
    data_dir: Path = Path("mvsync-demo"),
    *,
    photo_ratio: float = 0.5,
    seed: int = 1,
    use_ad_env: bool = True,
    say: Say | None = None,
    names: SharedNames | None = None,
) -> dict[str, Any]:
    """Run the whole demo and return its report (the ``--json`` object).

    ``names`` tags the OU, the account names and the tenant's domain, for a directory that other runs
    use at the same time (tests sharing one DC); without it the demo writes to ``OU=mvsync-demo``."""
    from connector.demo.ad import settings_from_env
    from connector.emulator import EmulatorConfig, GraphEmulator

    say = say or (lambda _m: None)
    started = time.monotonic()
    root = prepare_dir(data_dir)
    ad = settings_from_env() if use_ad_env else None
    say(f"starting the emulated tenant ({users} users)")
    config = EmulatorConfig(users=users, photo_ratio=photo_ratio, seed=seed, delegated_scopes=DEMO_SCOPES)
    if names is not None:
        config = replace(config, domain=names.domain(config.domain))
    with GraphEmulator(config) as emulator:
        tenant = emulator.admin.users()
        say("starting the emulated Exchange Server (EWS) for the on-premises mailboxes")
        ews = start_ews(tenant)
        say("writing the directory, HR folder, secrets and mvsync.toml")
        ad_ou, prefix = (names.ou(DEMO_OU.removeprefix("OU=")), names.account_prefix) if names else (DEMO_OU, "")
        scenario = prepare_scenario(
            root, emulator.info, tenant, ad=ad, ad_ou=ad_ou, account_prefix=prefix, ews_info=ews.info
        )
        scenario.extra["ews_mailboxes"] = ews.mailboxes()
        engine = Engine(load_config(scenario.config_path))
        try:
            say('running "Full Cycle" (full import, full sync, export to AD, confirming import)')
            full = engine.run_profile("Full Cycle")
            say('running "Delta Cycle" (nothing changed: expect no work)')
            delta = engine.run_profile("Delta Cycle")
        finally:
            engine.close()
            ews.stop()
    return _report(scenario, full, delta, users, sum(1 for u in tenant if u.get("hasPhoto")), started)


def _report(
    scenario: Scenario, full: RunResult, delta: RunResult, users: int, photos: int, started: float
) -> dict[str, Any]:
    root = scenario.root
    cfg = f"-c {scenario.config_path}"
    fallback = scenario.hr["fallback"][:1]
    ad_note = (
        "No AD configured (AD_* unset): the 'ad' agent reads a directory snapshot (LDIF, one entry per "
        "on-premises user built from the tenant: sAMAccountName = mailNickname) and writes its changes "
        "as LDIF change records, which it also applies to the snapshot as a domain controller would, so "
        "the confirming import sees them. Apply the LDIF to a real DC with ldapmodify -f."
        if scenario.ad_mode == "ldif-snapshot"
        else f"AD from AD_* variables: users were (re)created in {scenario.ad_where} and written there only."
    )
    return {
        # per-object errors (on-premises mailboxes) are part of the story; a stopped step is not
        "status": next((r.status for r in (full, delta) if r.status.startswith("stopped-")), "success"),
        "seconds": round(time.monotonic() - started, 1),
        "data_dir": str(root),
        "config": str(scenario.config_path),
        "store": str(root / "mvsync.db"),
        "ldif": str(scenario.ldif) if scenario.ldif else None,
        "ad": {"mode": scenario.ad_mode, "where": scenario.ad_where, "note": ad_note},
        "tenant": {"users": users, "photos": photos, "note": "the bundled Graph emulator; stopped when the demo ended"},
        "exchange_server": {
            "mailboxes": len(scenario.extra.get("ews_mailboxes", [])),
            "photos": sum(1 for m in scenario.extra.get("ews_mailboxes", []) if m["hasPhoto"]),
            "note": "on-premises mailboxes (hybrid) served by the bundled EWS emulator; the exs agent reads them",
        },
        "directory_users": len(scenario.users),
        "hr_folder": {"path": str(root / "hr-photos"), **scenario.hr},
        "full_cycle": {
            "status": full.status,
            "seconds": round(full.ended_at - full.started_at, 2),
            "run_id": full.run_id,
            "steps": [step_summary(s) for s in full.steps],
        },
        "delta_cycle": {
            "status": delta.status,
            "seconds": round(delta.ended_at - delta.started_at, 2),
            "run_id": delta.run_id,
            "steps": [step_summary(s) for s in delta.steps],
            "work_done": work_done(delta),
        },
        "photos_exported": _exported(full),
        "delta_exports": _exported(delta),
        "try_next": [
            f"mvsync history list {cfg}",
            f"mvsync history show {full.run_id} {cfg}",
            f"mvsync mv show {fallback[0] if fallback else 'svc.backup'} {cfg}",
            f"mvsync cs search ad --pending-export {cfg}",
            f"mvsync pending-exports ad {cfg}",
            f"mvsync run 'Delta Cycle' --dry-run {cfg}   (needs a running tenant: run the demo again)",
        ]
        + ([f"less {scenario.ldif}"] if scenario.ldif else []),
    }
