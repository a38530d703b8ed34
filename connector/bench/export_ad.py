"""``mvsync bench export-ad``: thumbnailPhoto export throughput against a real AD DC.

It starts the Samba AD DC the way the tests do (``tests/harness/samba_dc.py``, from a source checkout), or uses the
directory the ``AD_*`` variables describe, creates ``--users`` users in its own OU and measures, in
one run, over the same connection settings (LDAPS, certificate validation, TCP_NODELAY):

* ``raw_ldap3_writes_per_s``: a plain ldap3 loop, one ``MODIFY_REPLACE`` per user, one connection;
* ``writes_per_s``: the agent's export with the rate cap off. With ``--driver engine`` (the default)
  the export runs through ``connector.engine.Engine``: a synthetic source agent supplies the photos,
  sync joins them to the AD users, and the timed step is the engine's AD export step;
  ``--driver direct`` hands the agent batches of updates itself;
* ``--auth kerberos``: the agent binds with a keytab as a least-privilege account the harness
  makes (thumbnailPhoto delegated on the benchmark's OU) instead of the administrator's password;
* ``--no-check-permissions``: skip reading ``allowedAttributesEffective`` before writing
  (``rights_checked`` / ``rights_base_reads`` count that work when it is on);
* ``second_run_writes``: LDAP writes of a second export with unchanged photos. Through the engine
  this follows a confirming import and sync, exactly like production; directly, the agent gets the
  changes the engine would stage after that import: only photos that differ from the ones it holds
  (none; the agent no longer repeats that check). Either way the target is 0.

It prints one JSON object. Targets: ``writes_per_s`` >= 300 and >= 70% of the raw rate.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ldap3 import MODIFY_REPLACE

from connector.agents.active_directory import ActiveDirectoryConnector, ExportStats
from connector.bench import generated
from connector.bench._harness import harness
from connector.bench._util import peak_rss_mb
from connector.demo import SharedNames
from connector.demo.ad import ADSettings, UserSpec, connect, create_users, delete_subtree, ensure_ou
from connector.sdk import AttributeChange, ConnectorContext, CSEntryChange

__all__ = ["BenchmarkStopped", "CountingActiveDirectoryConnector", "run"]

_PASSWORD_ENV = "MVSYNC_BENCH_AD_PASSWORD"
#: Export statistics of every CountingActiveDirectoryConnector closed in this process, in order.
_CLOSED_STATS: list[ExportStats] = []


class BenchmarkStopped(Exception):
    """A run profile of the benchmark did not succeed (the DC went away, a step stopped): its figures would
    mean nothing. The CLI says it with the step's own message and the step's exit code, not as a bug."""

    def __init__(self, message: str, status: str) -> None:
        super().__init__(message)
        self.status = status


def _check_run(profile: str, result: Any) -> None:
    """Raise BenchmarkStopped, naming the first step that did not succeed and why, unless ``result`` succeeded."""
    if str(result.status).startswith("success"):
        return
    step = next((s for s in result.steps if not str(s.status).startswith("success")), None)
    why = f": {step.kind} of {step.agent} ended {step.status}: {step.message or '(no message)'}" if step else ""
    msg = f"the benchmark's engine run {profile!r} ended {result.status}{why}{_object_errors(step)}"
    raise BenchmarkStopped(msg, str(result.status))


def _object_errors(step: Any) -> str:
    """The per-object errors a step recorded, by name, and the first one's detail: a step's message says
    where it ran, not what went wrong ("served by domain controller ..."), and the detail says what to do."""
    if step is None or not step.errors:
        return ""
    counts = Counter(e.error_name for e in step.errors)
    names = ", ".join(f"{count} {name}" for name, count in counts.most_common())
    kept = len(step.errors)
    of = f" (of the first {kept} of {step.error_count} errors)" if step.error_count > kept else ""
    first = step.errors[0]
    return f"; errors: {names}{of}; the first, {first.display or first.anchor}: {first.error_name}: {first.detail}"


class CountingActiveDirectoryConnector(ActiveDirectoryConnector):
    """The real agent, recording its export statistics on close so the benchmark can count writes."""

    def close(self) -> None:
        if self._exporter is not None:
            _CLOSED_STATS.append(self._exporter.stats)
        super().close()


def _photo(n: int, size: int, revision: int = 0) -> bytes:
    """Person ``n``'s photo as the synthetic ``generated`` agent of ``_engine`` makes it (seed 1): a JPEG."""
    return generated.photo(1, n, revision, size)


def _account(names: SharedNames, n: int) -> str:
    """The generated agent's account name of person ``n`` in this run (see ``GeneratedSettings``)."""
    return f"{names.account_prefix}u{n:07d}"


@dataclass(frozen=True)
class _Bind:
    """How the agent binds in this run: simple (the DC's administrator) or a least-privilege keytab."""

    kerberos: Any = None  # tests.harness.samba_dc.KerberosAccount
    check_permissions: bool = True

    @property
    def auth(self) -> str:
        return "kerberos" if self.kerberos is not None else "simple"


def _agent_settings(ad: ADSettings, ou: str, password: Any, bind: _Bind = _Bind()) -> dict[str, Any]:
    who: dict[str, Any] = {"bind_dn": ad.bind_dn, "password": password}
    if bind.kerberos is not None:
        account = bind.kerberos
        who = {
            "auth": "kerberos",
            "keytab": str(account.keytab),
            "principal": account.principal,
            "kerberos_host": account.spn_host,
        }
    return {
        "host": ad.host,
        "port": ad.ldaps_port,
        "ca_file": str(ad.ca_cert) if ad.ca_cert else None,
        **who,
        "base_dns": [ou],
        "max_writes_per_second": 0,
        "delta_method": "usn",
        "check_permissions": bind.check_permissions,
    }


def _raw_ldap3(ad: ADSettings, dns: list[str], photo: Callable[[int], bytes]) -> float:
    """Writes per second of a plain ldap3 loop over one connection (LDAPS, validated, NODELAY)."""
    conn = connect(ad)
    try:
        started = time.perf_counter()
        for n, dn in enumerate(dns):
            conn.modify(dn, {"thumbnailPhoto": [(MODIFY_REPLACE, [photo(n)])]})
        elapsed = time.perf_counter() - started
    finally:
        conn.unbind()
    return len(dns) / elapsed


def _direct(ad: ADSettings, ou: str, guids: list[str], size: int, batch: int, tmp: Path, bind: _Bind) -> dict[str, Any]:
    """Export straight through the agent: updates first, then the same values with ``previous`` set."""
    from connector.agents.active_directory import ActiveDirectorySettings

    settings = ActiveDirectorySettings.model_validate(
        _agent_settings(ad, ou, None if bind.kerberos else ad.password, bind)
    )
    context = ConnectorContext(agent="ad", data_dir=tmp, export_attributes={"user": frozenset({"thumbnailPhoto"})})

    def changes(with_previous: bool) -> list[CSEntryChange]:
        out = []
        for n, guid in enumerate(guids):
            photo = _photo(n, size, revision=1)
            change = CSEntryChange.update("user", guid, [AttributeChange.replace("thumbnailPhoto", photo)])
            change.identifier = str(n)
            change.previous = {"thumbnailPhoto": photo} if with_previous else {"thumbnailPhoto": _photo(n, size)}
            out.append(change)
        return out

    figures: dict[str, Any] = {}
    for run_name, with_previous in (("first", False), ("second", True)):
        connector = ActiveDirectoryConnector(settings, context)
        todo = [c for c in changes(with_previous) if c.changes[0].values[0] != c.previous["thumbnailPhoto"]]
        connector.open()
        try:
            started = time.perf_counter()
            for start in range(0, len(todo), batch):
                connector.export(todo[start : start + batch])
            elapsed = time.perf_counter() - started
            stats = connector.export_stats
        finally:
            connector.close()
        figures[run_name] = (stats, elapsed)
    first, elapsed = figures["first"]
    return {
        "writes_per_s": first.writes / elapsed,
        "export_s": elapsed,
        "first_run_writes": first.writes,
        "second_run_writes": figures["second"][0].writes,
        "rights_checked": first.rights_checked,
        "rights_base_reads": first.rights_reads,
        "paced_s": round(first.paced_s, 3),  # what max_writes_per_second cost (0: the DC set the pace)
    }


def _engine(
    ad: ADSettings, ou: str, users: int, size: int, batch: int, tmp: Path, bind: _Bind, names: SharedNames
) -> dict[str, Any]:
    """Export through the engine: source photos -> metaverse -> AD, then a confirming round."""
    from connector.config import config_from_dict
    from connector.engine import Engine

    os.environ[_PASSWORD_ENV] = ad.password
    data: dict[str, Any] = {
        "store": {"url": f"sqlite:///{tmp / 'bench.db'}"},
        "metaverse": {"schema": "person"},
        "agents": {
            "src": {
                "type": "generated",
                "settings": {
                    "count": users,
                    "object_class": "user",
                    "photo_bytes": size,
                    "revision": 1,
                    "change_every": 1,
                    "account_prefix": names.account_prefix,
                },
                "projection": [{"object_class": "user"}],
                "join": [{"object_class": "user", "match": [{"cs": "accountName", "mv": "accountName"}]}],
                "import_flow": [
                    {"object_class": "user", "cs": "accountName", "mv": "accountName"},
                    {"object_class": "user", "cs": "photo", "mv": "photo"},
                ],
            },
            "ad": {
                "type": f"{__name__}:CountingActiveDirectoryConnector",
                "settings": _agent_settings(ad, ou, None if bind.kerberos else {"env": _PASSWORD_ENV}, bind),
                "join": [{"object_class": "user", "match": [{"cs": "sAMAccountName", "mv": "accountName"}]}],
                "import_flow": [{"object_class": "user", "cs": "objectGUID", "mv": "adObjectGUID"}],
                "export_flow": [{"object_class": "user", "mv": "photo", "cs": "thumbnailPhoto", "allow_null": True}],
            },
        },
        "run_profiles": {
            "prepare": {
                "steps": [
                    {"type": "full-import", "agent": "ad"},
                    {"type": "full-import", "agent": "src"},
                    {"type": "full-sync", "agent": "src"},
                    {"type": "full-sync", "agent": "ad"},
                ]
            },
            "export": {"steps": [{"type": "export", "agent": "ad", "batch_size": batch}]},
            "confirm": {"steps": [{"type": "full-import", "agent": "ad"}, {"type": "delta-sync", "agent": "ad"}]},
        },
    }
    generated.register()
    engine = Engine(config_from_dict(data, base_dir=tmp))
    try:

        def run(profile: str) -> float:
            started = time.perf_counter()
            result = engine.run_profile(profile)
            elapsed = time.perf_counter() - started
            _check_run(profile, result)
            return elapsed

        run("prepare")
        before = len(_CLOSED_STATS)
        elapsed = run("export")
        first = _CLOSED_STATS[before:]
        run("confirm")
        before = len(_CLOSED_STATS)
        run("export")
        second = _CLOSED_STATS[before:]
    finally:
        engine.close()
    writes = sum(s.writes for s in first)
    return {
        "writes_per_s": writes / elapsed,
        "export_s": elapsed,
        "first_run_writes": writes,
        "second_run_writes": sum(s.writes for s in second),
        "rights_checked": sum(s.rights_checked for s in first),
        "rights_base_reads": sum(s.rights_reads for s in first),
    }


def run(
    users: int = 2000,
    photo_bytes: int = 5000,
    batch: int = 500,
    driver: Literal["engine", "direct"] = "engine",
    keep: bool = False,
    auth: Literal["simple", "kerberos"] = "simple",
    check_permissions: bool = True,
) -> dict[str, Any]:
    """Run the benchmark and return its figures (see the module docstring)."""
    dc = harness("samba_dc", benchmark="export-ad")
    with dc.samba_lease(keep=keep) as ad, tempfile.TemporaryDirectory(prefix="mvsync-bench-ad-") as tmp_dir:
        tmp = Path(tmp_dir)
        admin = connect(ad)
        names = SharedNames.new()  # other runs and test sessions may use the same DC now
        ou = f"{names.ou('mvsync-bench')},{ad.base_dn}"
        try:
            ensure_ou(admin, ou)
            bind = _Bind(check_permissions=check_permissions)
            if auth == "kerberos":  # a least-privilege keytab account, thumbnailPhoto delegated on the OU
                bind = _Bind(dc.kerberos_account(ad), check_permissions)
                dc.grant_write(ad, bind.kerberos, ou, "thumbnailPhoto")
                os.environ["KRB5_CONFIG"] = str(bind.kerberos.krb5_conf)
            started = time.perf_counter()
            accounts = [_account(names, n) for n in range(users)]
            specs = [UserSpec(name, mail=f"{name}@example.test") for name in accounts]
            guids = create_users(admin, ou, specs, ad.upn_suffix)
            setup_s = time.perf_counter() - started
            dns = [f"CN={name},{ou}" for name in accounts]
            raw = _raw_ldap3(ad, dns, lambda n: _photo(n, photo_bytes))
            anchors = [guids[name] for name in accounts]
            if driver == "engine":
                figures = _engine(ad, ou, users, photo_bytes, batch, tmp, bind, names)
            else:
                figures = _direct(ad, ou, anchors, photo_bytes, batch, tmp, bind)
        finally:
            delete_subtree(admin, ou)
            admin.unbind()
    writes_per_s = figures["writes_per_s"]
    return {
        "benchmark": "export-ad",
        "driver": driver,
        "auth": auth,
        "check_permissions": check_permissions,
        "users": users,
        "photo_bytes": len(_photo(0, photo_bytes)),  # a JPEG: at least about 200 bytes
        "directory": "external (AD_*)" if ad.external else f"samba on {ad.host}",
        "writes_per_s": round(writes_per_s, 1),
        "raw_ldap3_writes_per_s": round(raw, 1),
        "ratio_to_raw": round(writes_per_s / raw, 3),
        "first_run_writes": figures["first_run_writes"],
        "second_run_writes": figures["second_run_writes"],
        "export_s": round(figures["export_s"], 2),
        "rights_checked": figures["rights_checked"],
        "rights_base_reads": figures["rights_base_reads"],
        "user_setup_s": round(setup_s, 1),
        "peak_rss_mb": peak_rss_mb(),
        "targets_met": writes_per_s >= 300 and writes_per_s >= 0.7 * raw and figures["second_run_writes"] == 0,
    }
