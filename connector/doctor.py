"""``mvsync doctor``: is the store intact and can the configured agents work?

Why: a store is the only memory of what was exported and confirmed; a missing blob or a dangling
join silently turns into wrong exports (a photo cleared, an object re-provisioned). The engine
never writes such states, but disks fill, people restore backups of one table, and bugs happen.
The doctor finds them before a scheduled run acts on them, and the configuration checks find an
expired certificate or an unreadable token cache before 3 a.m.

Store checks (read-only, in bounded pages, so they run on a production-size store):

* ``schema``: the store's schema version is the one this mvsync writes;
* ``blobs``: every blob referenced by a hologram, pending import, pending or unconfirmed export, a
  metaverse object or the transform cache exists, with the size the reference records, and its
  bytes hash to its name;
* ``links``: no connector-space object joined to a metaverse object that does not exist, and no
  two objects of one agent joined to the same metaverse object;
* ``pending-exports``: no pending export on an object that has no hologram (nothing was ever
  imported for it, so there is nothing to update or delete).

Configuration checks: the rules validate; each agent's connector instantiates with its settings;
certificate files named by settings (``*ca_file*``, ``*cert*``) are readable, parse, and have not
expired; the agent's token cache (where it has one) is readable; and ``connector.check()``
reaches the directory (skipped with ``connect=False``).

Exit codes (``mvsync doctor``): 0 nothing wrong (warnings allowed), :data:`EXIT_PROBLEMS` (6)
when any check found an error, and the CLI's usual 2 when the configuration cannot even be loaded.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from sqlalchemy import Connection, and_, func, or_, select
from sqlalchemy.exc import DBAPIError

from connector.config import ConfigError, MvsyncConfig
from connector.sdk import ConfigurationError
from connector.store import (
    SCHEMA_VERSION,
    SqlStore,
    StoreCorruptError,
    StoreError,
    StoreMissingError,
    StoreVersionError,
    blob_refs,
    loads,
)
from connector.store._faults import RESTORE_HINT
from connector.store._migrations import current_version
from connector.store.tables import blob, cs_object, metadata, mv_object, transform_cache

__all__ = ["EXIT_PROBLEMS", "Finding", "Report", "check_config", "check_store", "run_doctor"]

#: ``mvsync doctor`` exit code when a check found an error (0: all good; 2: unusable configuration).
EXIT_PROBLEMS = 6

#: Examples kept per problem kind (counts are always complete).
_EXAMPLES = 10
_PAGE = 2000
#: How an encoded binary value's prefix appears inside stored JSON text.
_BLOB_IN_JSON = "\\u0000b:"

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
def _pages(conn: Connection, table: Any, columns: list[Any], key: Any) -> Iterator[list[Any]]:
    last: Any = None
    while True:
        query = select(key, *columns).order_by(key).limit(_PAGE)
        if last is not None:
            query = query.where(key > last)
        rows = conn.execute(query).all()
        if not rows:
            return
        yield list(rows)
        last = rows[-1][0]


def _referenced_blobs(conn: Connection) -> dict[str, tuple[int, str]]:
    """sha256 -> (size recorded by the reference, where one reference is) over every document."""
    refs: dict[str, tuple[int, str]] = {}
    docs = [
        (
            cs_object,
            "cs",
            [cs_object.c.hologram, cs_object.c.pending, cs_object.c.export_changes, cs_object.c.unconfirmed],
        ),
        (mv_object, "mv", [mv_object.c.attributes, mv_object.c.contributions]),
    ]
    for table, label, columns in docs:
        for rows in _pages(conn, table, columns, table.c.id):
            for row in rows:
                for column, text in zip(columns, row[1:], strict=True):
                    if text and _BLOB_IN_JSON in text:  # skip parsing documents without binaries
                        for ref in blob_refs(loads(text)):
                            refs.setdefault(ref.sha256, (ref.size, f"{label} {row[0]} {column.name}"))
    for rows in _pages(conn, transform_cache, [transform_cache.c.output], transform_cache.c.input):
        for inp, output in rows:
            for ref in [*blob_refs(inp), *(blob_refs(loads(output)) if output else [])]:
                refs.setdefault(ref.sha256, (ref.size, "transform cache"))
    return refs


#: What the integrity check is called on each database.
_INTEGRITY = {"sqlite": "SQLite's integrity_check", "postgresql": "reading every table and index"}


def _integrity_problems(conn: Connection) -> list[str]:
    """What the database's own consistency check reports (empty: intact).

    SQLite: ``PRAGMA integrity_check`` (every page, index and constraint). PostgreSQL has no
    built-in equivalent without the ``amcheck`` extension; with it, every mvsync b-tree index is
    verified (``bt_index_check``), and every table is read in full either way, which makes a page
    whose checksum fails an error here rather than in the middle of a run.
    """
    if conn.dialect.name == "sqlite":
        rows = [str(r[0]) for r in conn.exec_driver_sql("PRAGMA integrity_check").all()]
        return [] if rows == ["ok"] else rows
    problems: list[str] = []
    amcheck = conn.exec_driver_sql("SELECT 1 FROM pg_extension WHERE extname = 'amcheck'").first() is not None
    for table in metadata.sorted_tables:
        try:
            with conn.begin_nested():
                conn.exec_driver_sql(f"SELECT count(*) FROM (SELECT * FROM {table.name}) AS t").all()
                if amcheck:
                    for index in table.indexes:
                        conn.exec_driver_sql(f"SELECT bt_index_check('{index.name}'::regclass)")
        except DBAPIError as exc:
            problems.append(f"{table.name}: {str(exc.orig).strip()}")
    return problems


def check_writable(store: SqlStore) -> Finding:
    """Whether runs can write the store: a read-only file or folder (mode, ``chattr +i``, a read-only
    mount) reads fine, so every other check passes, and the next run fails at its first write."""
    if store.path is None:
        return Finding("store", "writable", "ok", "the database server grants writes per session")
    blocked = [p for p in (store.path, store.path.parent) if not os.access(p, os.W_OK)]
    if blocked:
        return Finding(
            "store",
            "writable",
            "error",
            f"runs cannot write {blocked[0]}: check its permissions (ls -l, lsattr for chattr +i) and the mount",
        )
    return Finding("store", "writable", "ok", f"{store.path} and its folder are writable")


def check_store(store: SqlStore) -> list[Finding]:
    """Integrity of the store (see the module docstring); read-only."""
    found: list[Finding] = []
    with store.read() as conn:
        damage = _integrity_problems(conn)
        if damage:
            found.append(
                Finding(
                    "store",
                    "integrity",
                    "error",
                    f"the store {store.where} is damaged: {RESTORE_HINT}",
                    len(damage),
                    damage[:_EXAMPLES],
                )
            )
            return found  # the other checks would read damaged pages
        found.append(Finding("store", "integrity", "ok", f"{_INTEGRITY[conn.dialect.name]} found no damage"))
        version = current_version(conn)
        if version == 0:
            found.append(Finding("store", "schema", "error", f"the store {store.where} holds no mvsync tables"))
            return found
        if version == SCHEMA_VERSION:
            found.append(Finding("store", "schema", "ok", f"schema version {version} is current"))
        else:
            found.append(
                Finding(
                    "store",
                    "schema",
                    "error",
                    f"schema version {version}, this mvsync writes {SCHEMA_VERSION}: "
                    + (
                        "upgrade mvsync"
                        if version > SCHEMA_VERSION
                        else "any mvsync command that opens the store migrates it"
                    ),
                )
            )
            return found  # the other checks assume the current tables

        # blobs: references -> existence and recorded size; stored bytes -> their hash
        refs = _referenced_blobs(conn)
        missing: list[str] = []
        wrong_size: list[str] = []
        keys = sorted(refs)
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            sizes = dict(conn.execute(select(blob.c.sha256, blob.c.size).where(blob.c.sha256.in_(chunk))).all())
            for sha in chunk:
                size, where = refs[sha]
                if sha not in sizes:
                    missing.append(f"{sha[:16]}… ({where})")
                elif size != sizes[sha]:
                    wrong_size.append(f"{sha[:16]}… referenced as {size} bytes, stored {sizes[sha]} ({where})")
        corrupt: list[str] = []
        stored = 0
        for rows in _pages(conn, blob, [blob.c.size], blob.c.sha256):
            stored += len(rows)
            hashes = [r[0] for r in rows]
            data = store.get_blobs(conn, hashes)  # bounded queries (BLOB_QUERY_BYTES)
            for sha, size in rows:
                content = data.get(sha)
                if content is None or hashlib.sha256(content).hexdigest() != sha or len(content) != size:
                    corrupt.append(f"{sha[:16]}…")
        for name, problems, what in (
            ("blobs-missing", missing, "referenced blobs are missing"),
            ("blobs-size", wrong_size, "blob references record a different size than the stored blob"),
            ("blobs-corrupt", corrupt, "stored blobs do not match their SHA-256"),
        ):
            if problems:
                found.append(
                    Finding("store", name, "error", f"{len(problems)} {what}", len(problems), problems[:_EXAMPLES])
                )
        if not (missing or wrong_size or corrupt):
            found.append(
                Finding("store", "blobs", "ok", f"{len(refs)} referenced blobs present; {stored} stored blobs verified")
            )

        # links between connector space and metaverse
        dangling = conn.execute(
            select(cs_object.c.agent, cs_object.c.anchor, cs_object.c.mv_id)
            .select_from(cs_object.outerjoin(mv_object, mv_object.c.id == cs_object.c.mv_id))
            .where(cs_object.c.mv_id.is_not(None), mv_object.c.id.is_(None))
            .order_by(cs_object.c.id)
        ).all()
        doubles = conn.execute(
            select(cs_object.c.agent, cs_object.c.mv_id, func.count())
            .where(cs_object.c.mv_id.is_not(None))
            .group_by(cs_object.c.agent, cs_object.c.mv_id)
            .having(func.count() > 1)
        ).all()
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
        if not dangling and not doubles:
            found.append(Finding("store", "links", "ok", "connector-space and metaverse links agree"))

        # an export needs an imported object; an update's values come from its person (a delete may
        # outlive the person: deprovisioning stages it as the person goes)
        orphans = conn.execute(
            select(cs_object.c.agent, cs_object.c.anchor, cs_object.c.export_type, cs_object.c.hologram)
            .where(
                cs_object.c.export_type.is_not(None),
                or_(
                    cs_object.c.hologram.is_(None),
                    and_(cs_object.c.export_type != "delete", cs_object.c.mv_id.is_(None)),
                ),
            )
            .order_by(cs_object.c.id)
        ).all()
        if orphans:
            found.append(
                Finding(
                    "store",
                    "pending-exports-orphan",
                    "error",
                    f"{len(orphans)} pending exports are on objects never imported, or not joined to a person",
                    len(orphans),
                    [
                        f"{a} {anchor}: {kind} ({'never imported' if hologram is None else 'not joined'})"
                        for a, anchor, kind, hologram in orphans[:_EXAMPLES]
                    ],
                )
            )
        else:
            found.append(
                Finding("store", "pending-exports", "ok", "every pending export is on an imported, joined object")
            )
    return found


# ------------------------------------------------------------------------------------------ config
def check_config(config: MvsyncConfig, *, connect: bool = True) -> list[Finding]:
    """Rules, connectors, TLS material, token caches and reachability of every agent."""
    from connector.demo._config import uses_stopped_emulator
    from connector.engine import Engine
    from connector.engine._agents import open_connector, setting_paths

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
        for field_name, path, problem in setting_paths(connector.settings):
            check = f"{where}.settings.{field_name}"
            found.append(
                Finding("config", check, "error", problem)
                if problem
                else Finding("config", check, "ok", f"{path} is valid")
            )
        if connect:
            offline = uses_stopped_emulator(config.base_dir, config.agents[name].settings)
            found.extend(_demo_aware(_connect_findings(connector, where), offline))
    return found


def _connect_findings(connector: Any, where: str) -> list[Finding]:
    """The token cache (where the agent has one: ``.auth.status()``) and ``connector.check()``."""
    found: list[Finding] = []
    status = getattr(getattr(connector, "auth", None), "status", None)
    if callable(status):
        try:
            st = status()
            ok = bool(getattr(st, "token_ok", getattr(st, "ok", False)))
            detail = str(getattr(st, "detail", ""))
            found.append(
                Finding("config", f"{where}.token-cache", "ok" if ok else "error", detail or "token cache readable")
            )
        except Exception as exc:
            found.append(Finding("config", f"{where}.token-cache", "error", f"{type(exc).__name__}: {exc}"))
    try:
        result = connector.check()
        severity: Severity = "ok" if result.ok else "error"
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


def _demo_aware(findings: list[Finding], offline: bool) -> list[Finding]:
    """In a demo folder, an agent of the stopped emulator is expected to be unreachable: a warning."""
    from connector.demo._config import EMULATOR_DOWN

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
            opened = SqlStore(config.store_url(), migrate_schema=False, create=False)
        except StoreMissingError as exc:  # not created here: the first run creates it
            report.add(Finding("store", "open", "warning", str(exc)))
            return report
        except StoreError as exc:
            report.add(Finding("store", _fault_check(exc), "error", str(exc)))
            return report
        try:
            report.add(check_writable(opened))
            for finding in check_store(opened):
                report.add(finding)
        except (StoreVersionError, StoreError) as exc:
            report.add(Finding("store", _fault_check(exc), "error", str(exc)))
        finally:
            opened.close()
    return report
