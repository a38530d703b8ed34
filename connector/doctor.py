"""``mvsync doctor``: is the store intact and can the configured agents work?

Why: a store is the only memory of what was exported and confirmed; a missing blob or a dangling
join silently turns into wrong exports (a photo cleared, an object re-provisioned). The engine
never writes such states, but disks fill, people restore backups of one table, and bugs happen.
The doctor finds them before a scheduled run acts on them, and the configuration checks find an
expired certificate or an unreadable token cache before 3 a.m.

Store checks (read-only, in bounded pages, so they run on a production-size store):

* ``documents``: every stored JSON document (holograms, metaverse attributes, step counters ...)
  reads as JSON, and those mvsync writes as objects are objects whose dates and photo references
  decode (what the console shows as a damaged row): bytes changed inside a value pass the
  database's own page checks;
* ``schema``: the store's schema version is the one this mvsync writes (a store without mvsync's
  tables, such as a new PostgreSQL database, is a warning like a missing one: the first run creates them);
* ``blobs``: every blob referenced by a hologram, pending import, pending or unconfirmed export, a
  metaverse object or the transform cache exists, with the size the reference records, and its
  bytes hash to its name;
* ``links``: no connector-space object joined to a metaverse object that does not exist, and no
  two objects of one agent joined to the same metaverse object;
* ``pending-exports``: no pending export on an object that has no hologram (nothing was ever
  imported for it, so there is nothing to update or delete);
* ``runs``: no run recorded in progress whose process has ended (its run lock free, or for an earlier
  mvsync's run its process on this server gone; a warning: the next run records it as interrupted);
* ``history``: how many runs history holds, and since when (a warning past
  ``HISTORY_WARN_DAYS``: nothing clears history unless ``mvsync history clear`` is scheduled).

Configuration checks: the rules validate; each agent's connector instantiates with its settings;
certificate files named by settings (``*ca_file*``, ``*cert*``) are readable, parse, and have not
expired; the agent's token cache (where it has one: not in app mode, whose check says it does not apply)
is readable; and ``connector.check()``
reaches the directory (skipped with ``connect=False``).

Exit codes (``mvsync doctor``): 0 nothing wrong (warnings allowed), :data:`EXIT_PROBLEMS` (6)
when any check found an error, and the CLI's usual 2 when the configuration cannot even be loaded.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from connector.config import ConfigError, MvsyncConfig
from connector.sdk import ConfigurationError
from connector.store import (
    SCHEMA_VERSION,
    DamagedDocumentError,
    LockManager,
    RunHistory,
    SqlStore,
    StoreAudit,
    StoreCorruptError,
    StoreError,
    StoreMissingError,
    StoreVersionError,
    damaged,
    empty_store,
)

__all__ = ["EXIT_PROBLEMS", "Finding", "Report", "check_config", "check_store", "run_doctor"]

#: ``mvsync doctor`` exit code when a check found an error (0: all good; 2: unusable configuration).
EXIT_PROBLEMS = 6

#: Examples kept per problem kind (counts are always complete).
_EXAMPLES = 10

Severity = Literal["error", "warning", "ok"]


@dataclass
class Finding:
    """One check's verdict: ``ok``, a ``warning`` or an ``error``, with a count and examples."""

    area: Literal["store", "config"]
    check: str
    severity: Severity
    message: str
    count: int = 0
    examples: list[str] = field(default_factory=list)


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else EXIT_PROBLEMS

    def add(self, finding: Finding) -> None:
        self.findings.append(finding)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "findings": [asdict(f) for f in self.findings]}


# ------------------------------------------------------------------------------------------- store
def check_writable(store: SqlStore) -> Finding:
    """Whether runs can write the store: a read-only file or folder (mode, ``chattr +i``, a read-only
    mount) reads fine, so every other check passes, and the next run fails at its first write."""
    if store.path is None:
        problem = store.write_problem()
        if problem:
            return Finding("store", "writable", "error", problem)
        return Finding("store", "writable", "ok", f"{store.where} takes writes from this role on every mvsync table")
    blocked = store.unwritable()
    if blocked:
        return Finding(
            "store",
            "writable",
            "error",
            f"runs cannot write {blocked[0]}: check its permissions (ls -l, lsattr for chattr +i) and the mount",
        )
    return Finding("store", "writable", "ok", f"{store.path}, its folder and its -wal and -shm are writable")


def check_connections(store: SqlStore) -> Finding | None:
    """Whether the connection limits of a PostgreSQL store's role and database leave a run the connections it
    holds: below them every run stops by its first synchronization step, and every other check passes."""
    if store.path is not None or store.dialect != "postgresql":
        return None
    problem = store.connection_problem()
    if problem:
        return Finding("store", "connections", "error", problem)
    return Finding(
        "store",
        "connections",
        "ok",
        "neither this role's nor the database's CONNECTION LIMIT is below the four connections a run holds at once",
    )


def check_location(store: SqlStore) -> Finding | None:
    """A SQLite store on a share or an NFS mount: it works until a lost lock corrupts it (a warning)."""
    risk = store.network_warning()
    return Finding("store", "location", "warning", risk) if risk else None


def check_wal(store: SqlStore) -> Finding | None:
    """A SQLite store whose ``-wal`` grows because another process keeps a read open (a warning: runs
    go on, the disk fills): the processes that have the store open, see ``SqlStore.wal_warning``."""
    piling = store.wal_warning()
    return Finding("store", "wal", "warning", piling) if piling else None


def check_store(store: SqlStore) -> list[Finding]:
    """Integrity of the store (see the module docstring); read-only."""
    found: list[Finding] = []
    with store.read() as conn:
        audit = StoreAudit(store, conn)
        if not audit.holds_tables():  # a new database: every check would read tables that are not there yet
            return [Finding("store", "schema", "warning", str(empty_store(store.where)))]
        damage = audit.integrity_problems()
        if damage:
            found.append(
                Finding(
                    "store",
                    "integrity",
                    "error",
                    str(damaged(store.where, f"{audit.integrity_check_name} found {len(damage)} problems")),
                    len(damage),
                    damage[:_EXAMPLES],
                )
            )
            return found  # the other checks would read damaged pages
        found.append(Finding("store", "integrity", "ok", f"{audit.integrity_check_name} found no damage"))
        documents = _check_documents(store, audit)
        found.append(documents)
        if documents.severity == "error":
            return found  # the other checks would stop at the damaged documents
        schema = _check_schema(store, audit)
        found.append(schema)
        if schema.severity == "error":
            return found  # the other checks assume the current tables
        found += _check_blobs(audit)
        found += _check_links(audit)
        found.append(_check_pending_exports(audit))
        found.append(_check_open_runs(RunHistory(conn), store.locks))
        found.append(_check_history_extent(RunHistory(conn)))
    return found


#: History older than this is a sign that nobody clears it (``mvsync history clear`` is not scheduled).
HISTORY_WARN_DAYS = 180


def _check_history_extent(history: RunHistory) -> Finding:
    """History is never cleared by itself; a store that keeps years of it says so here, with the command."""
    runs, oldest = history.extent()
    days = 0.0 if oldest is None else (time.time() - oldest) / 86_400
    what = f"{runs} runs (with their steps and per-object errors) over the last {days:.0f} days"
    if days <= HISTORY_WARN_DAYS:
        return Finding("store", "history", "ok", what)
    return Finding(
        "store",
        "history",
        "warning",
        f"{what}: nothing clears it by itself; schedule `mvsync history clear --older-than 90` "
        "(README: Operations, Clearing history)",
    )


def _check_open_runs(history: RunHistory, locks: LockManager) -> Finding:
    """A run whose process died without a word (kill -9, a reboot, the store down when it ended) reads
    ``in-progress`` until the next run closes it; say so now, so that nobody waits for it or takes it
    for a hung run. Its free run lock proves it on any host (connector/engine/_abandoned.py)."""
    from connector.engine import abandoned_runs

    def lock_free(name: str) -> bool:
        try:
            return locks.free(name)
        except StoreError:  # a lock folder doctor cannot write: no proof either way
            return False

    gone = abandoned_runs(history, lock_free=lock_free)
    if not gone:
        return Finding("store", "runs", "ok", "no run is left in progress by a process that has ended")
    return _store_problem(
        "runs-left-in-progress",
        "warning",
        f"{len(gone)} runs are recorded in progress but their process has ended (killed, crashed, the machine "
        "restarted, or the store unreachable when it ended): the next run records them as stopped-interrupted, "
        "and a full import among them resumes",
        [f"run {run.id} ({run.profile}): pid {run.pid} on {run.host}" for run in gone],
    )


def _store_problem(check: str, severity: Severity, message: str, cases: list[str]) -> Finding:
    """A store finding about ``cases``: all of them counted, the first few as examples."""
    return Finding("store", check, severity, message, len(cases), cases[:_EXAMPLES])


def _check_documents(store: SqlStore, audit: StoreAudit) -> Finding:
    """Every stored JSON document reads as JSON (damage inside a value passes the page checks)."""
    damaged_rows = audit.damaged_documents()
    if not damaged_rows:
        return Finding("store", "documents", "ok", "every stored JSON document reads as mvsync wrote it")
    message = str(damaged(store.where, f"{len(damaged_rows)} stored JSON documents are not what mvsync wrote"))
    return _store_problem("documents", "error", message, damaged_rows)


def _check_schema(store: SqlStore, audit: StoreAudit) -> Finding:
    """The schema version is this mvsync's; a version that is no number mvsync writes is damage."""
    try:
        version = audit.schema_version()
    except DamagedDocumentError as exc:
        return Finding("store", "schema", "error", str(exc.at(store.where)))
    if version == 0:
        return Finding("store", "schema", "error", f"the store {store.where} holds mvsync tables but no schema version")
    if version == SCHEMA_VERSION:
        return Finding("store", "schema", "ok", f"schema version {version} is current")
    advice = (
        "upgrade mvsync here to the version that wrote it"
        if version > SCHEMA_VERSION
        else "`mvsync store upgrade` (or the next `mvsync run`) upgrades it, once every machine that uses it runs "
        "this version"
    )
    return Finding(
        "store", "schema", "error", f"schema version {version}, this mvsync writes {SCHEMA_VERSION}: {advice}"
    )


def _check_blobs(audit: StoreAudit) -> list[Finding]:
    """References -> existence and recorded size; stored bytes -> their hash."""
    refs = audit.referenced_blobs()
    missing: list[str] = []
    wrong_size: list[str] = []
    sizes = audit.blob_sizes(sorted(refs))
    for sha in sorted(refs):
        size, where = refs[sha]
        if sha not in sizes:
            missing.append(f"{sha[:16]}… ({where})")
        elif size != sizes[sha]:
            wrong_size.append(f"{sha[:16]}… referenced as {size} bytes, stored {sizes[sha]} ({where})")
    stored, corrupt_hashes = audit.corrupt_blobs()
    corrupt = [f"{sha[:16]}…" for sha in corrupt_hashes]
    found = [
        Finding("store", name, "error", f"{len(problems)} {what}", len(problems), problems[:_EXAMPLES])
        for name, problems, what in (
            ("blobs-missing", missing, "referenced blobs are missing"),
            ("blobs-size", wrong_size, "blob references record a different size than the stored blob"),
            ("blobs-corrupt", corrupt, "stored blobs do not match their SHA-256"),
        )
        if problems
    ]
    if not found:
        found.append(
            Finding("store", "blobs", "ok", f"{len(refs)} referenced blobs present; {stored} stored blobs verified")
        )
    return found


def _check_links(audit: StoreAudit) -> list[Finding]:
    """Links between connector space and metaverse."""
    dangling = audit.dangling_links()
    doubles = audit.duplicate_links()
    found: list[Finding] = []
    if dangling:
        found.append(
            Finding(
                "store",
                "links-dangling",
                "error",
                f"{len(dangling)} connector-space objects are joined to metaverse objects that do not exist",
                len(dangling),
                [f"{a} {anchor} -> mv {mv}" for a, anchor, mv in dangling[:_EXAMPLES]],
            )
        )
    if doubles:
        found.append(
            Finding(
                "store",
                "links-duplicate",
                "error",
                f"{len(doubles)} metaverse objects have more than one connector of the same agent",
                len(doubles),
                [f"mv {mv}: {n} objects of {a}" for a, mv, n in doubles[:_EXAMPLES]],
            )
        )
    if not found:
        found.append(Finding("store", "links", "ok", "connector-space and metaverse links agree"))
    return found


def _check_pending_exports(audit: StoreAudit) -> Finding:
    """An export needs an imported object; an update's values come from its person."""
    orphans = audit.orphan_exports()
    if not orphans:
        return Finding("store", "pending-exports", "ok", "every pending export is on an imported, joined object")
    return _store_problem(
        "pending-exports-orphan",
        "error",
        f"{len(orphans)} pending exports are on objects never imported, or not joined to a person",
        [
            f"{a} {anchor}: {kind} ({'never imported' if hologram is None else 'not joined'})"
            for a, anchor, kind, hologram in orphans
        ],
    )


# ------------------------------------------------------------------------------------------ config
def check_config(config: MvsyncConfig, *, connect: bool = True) -> list[Finding]:
    """Rules, connectors, TLS material, token caches and reachability of every agent."""
    from connector.demo import uses_stopped_emulator
    from connector.engine import Engine, open_connector, setting_paths, trust_problem

    found: list[Finding] = []
    try:
        Engine(config, store=_NoStore()).validate()  # type: ignore[arg-type]
        found.append(Finding("config", "rules", "ok", "rules, transforms and connector types resolve"))
    except (ConfigError, ConfigurationError) as exc:
        found.append(Finding("config", "rules", "error", str(exc)))
    for name in config.agents:
        where = f"agents.{name}"
        try:
            connector = open_connector(config, name, dry_run=True)
        except (ConfigError, ConfigurationError) as exc:
            found.append(Finding("config", f"{where}.connector", "error", str(exc)))
            continue
        for field_name, path, problem in setting_paths(connector.settings, name):
            check = f"{where}.settings.{field_name}"
            found.append(
                Finding("config", check, "error", problem)
                if problem
                else Finding("config", check, "ok", f"{path} is valid")
            )
        for field_name, why in connector.settings.unused_settings().items():
            found.append(Finding("config", f"{where}.settings.{field_name}", "ok", f"not used: {why}"))
        trust = trust_problem(connector.settings)
        if trust:  # every request would meet it first: the agent is not contacted
            found.append(Finding("config", f"{where}.trust", "error", trust))
        elif connect:
            offline = uses_stopped_emulator(config.base_dir, config.agents[name].settings)
            found.extend(_demo_aware(_connect_findings(connector, where), offline))
    return found


def _connect_findings(connector: Any, where: str) -> list[Finding]:
    """The token cache (``_token_cache``) and ``connector.check()``."""
    found: list[Finding] = [] if (cache := _token_cache(connector, f"{where}.token-cache")) is None else [cache]
    try:
        result = connector.check()
        severity: Severity = ("warning" if result.warning else "ok") if result.ok else "error"
        found.append(Finding("config", f"{where}.reachable", severity, result.detail or "reachable"))
    except Exception as exc:
        found.append(Finding("config", f"{where}.reachable", "error", f"{type(exc).__name__}: {exc}"))
    else:
        found.extend(_agent_checks(connector, where))
    finally:
        try:
            connector.close()
        except Exception:  # closing a connector that never opened must not hide the verdict
            pass
    return found


def _token_cache(connector: Any, check: str) -> Finding | None:
    """The agent's token cache, where it has one (``.auth.status()``); None for an agent that signs in to
    nothing. An agent in a mode without one (``.auth.without_cache``: app-only credentials) is said not to
    apply: its credential is ``reachable``'s to check, and was reported here too, as a cache's failure."""
    try:  # the agent's sign-in, built on first use: its token cache may be unreadable
        auth = getattr(connector, "auth", None)
    except Exception as exc:
        return Finding("config", check, "error", f"{type(exc).__name__}: {exc}")
    without = getattr(auth, "without_cache", None)
    if isinstance(without, str):
        return Finding("config", check, "ok", f"does not apply: {without}")
    status = getattr(auth, "status", None)
    if not callable(status):
        return None
    try:
        st = status()
    except Exception as exc:
        return Finding("config", check, "error", f"{type(exc).__name__}: {exc}")
    ok = bool(getattr(st, "token_ok", getattr(st, "ok", False)))
    return Finding("config", check, "ok" if ok else "error", str(getattr(st, "detail", "")) or "token cache readable")


def _demo_aware(findings: list[Finding], offline: bool) -> list[Finding]:
    """In a demo folder, an agent of the stopped emulator is expected to be unreachable: a warning."""
    from connector.demo import EMULATOR_DOWN

    if not offline:
        return findings
    return [
        Finding(f.area, f.check, "warning", f"{EMULATOR_DOWN} ({f.message})") if f.severity != "ok" else f
        for f in findings
    ]


def _fault_check(exc: Exception) -> str:
    """The check a store fault is reported under: damage (a truncated, empty or overwritten file)
    is what the integrity check is about; anything else kept the store from opening."""
    return "integrity" if isinstance(exc, StoreCorruptError) else "open"


def _agent_checks(connector: Any, where: str) -> list[Finding]:
    """An agent's own checks (``doctor_checks() -> [(check, severity, message)]``), e.g. AD write rights.

    Why a hook: what "can this agent do its job" means is the agent's knowledge (the AD agent reads
    its write rights on a sample object per OU, the Exchange Online agent the tenant's photo policy).
    """
    checks = getattr(connector, "doctor_checks", None)
    if not callable(checks):
        return []
    try:
        return [Finding("config", f"{where}.{name}", severity, message) for name, severity, message in checks()]
    except Exception as exc:
        return [Finding("config", f"{where}.agent-checks", "error", f"{type(exc).__name__}: {exc}")]


class _NoStore:
    """Stands in for the store when only the rules are validated (no database is opened)."""

    def close(self) -> None:
        pass


def run_doctor(config: MvsyncConfig, *, store: bool = True, connect: bool = True) -> Report:
    """Every check; the report says what is wrong and ``report.exit_code`` what to exit with."""
    report = Report()
    for finding in check_config(config, connect=connect):
        report.add(finding)
    if store:
        try:
            opened = SqlStore(config.store_url(), migrate_schema=False, create=False, reader="mvsync doctor")
        except StoreMissingError as exc:  # not created here: the first run creates it
            report.add(Finding("store", "open", "warning", str(exc)))
            return report
        except StoreError as exc:
            report.add(Finding("store", _fault_check(exc), "error", str(exc)))
            return report
        try:
            report.add(check_writable(opened))
            for optional in (check_connections(opened), check_location(opened), check_wal(opened)):
                if optional is not None:
                    report.add(optional)
            for finding in check_store(opened):
                report.add(finding)
        except (StoreVersionError, StoreError) as exc:
            report.add(Finding("store", _fault_check(exc), "error", str(exc)))
        finally:
            opened.close()
    return report
