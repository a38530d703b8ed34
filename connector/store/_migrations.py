"""Versioned store schema. Each migration runs once, in order, inside one transaction.

A store written by a newer mvsync (higher version than ``SCHEMA_VERSION``) is refused rather than
guessed at.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from sqlalchemy import Connection, func, inspect, select, text
from sqlalchemy.exc import DBAPIError

from connector.store._faults import DamagedDocumentError, StoreBusyError, StoreError, empty_store, first_line
from connector.store._store_meta import write_meta
from connector.store.tables import agent_data, metadata, run_history, store_meta

__all__ = [
    "DISCONNECTED_PREDICATE",
    "ERROR_PREDICATE",
    "RUN_LOCKS_FROM_KEY",
    "SCHEMA_VERSION",
    "StoreVersionError",
    "current_version",
    "holds_tables",
    "migrate",
    "photo_predicate",
]


class StoreVersionError(StoreError):
    """The store's schema is not this mvsync's: newer (a newer mvsync wrote it), or older where a
    read-only command must not upgrade it. Exit code 4, as any store that cannot be used."""


def _v1(conn: Connection) -> None:
    metadata.create_all(conn)


#: Partial-index predicates of migration 2. Queries that want these indexes must use the very same
#: SQL text (SQLite matches a partial index's WHERE against the query's terms, and never against a
#: bound parameter), so the console imports them from here.
ERROR_PREDICATE = "import_error IS NOT NULL OR sync_error IS NOT NULL OR export_error IS NOT NULL"
DISCONNECTED_PREDICATE = "mv_id IS NULL"


def photo_predicate(dialect: str) -> str:
    """Joined objects whose hologram holds a binary value (``"\\u0000b:`` in the stored JSON text)."""
    position = "strpos" if dialect == "postgresql" else "instr"
    return f"mv_id IS NOT NULL AND {position}(hologram, '\"\\u0000b:') > 0"


def _v2_console_indexes(conn: Connection) -> None:
    """Indexes for the web console (``mvsync ui``), so its pages stay fast on 100,000 persons.

    * ``ix_mv_search (search_text, id)``: a substring search cannot seek in a b-tree, but it can
      scan this index instead of the table, which carries every person's JSON documents (a few MB
      instead of hundreds); the index is in name order (search text starts with the display name),
      so a page stops after fifty matches and keyset pages seek straight to their cursor.
    * partial indexes holding only the objects the coverage page counts (with a photo, in error,
      not joined): the page reads those entries instead of every connector-space document, and the
      engine pays only for rows in those states.
    """
    dialect = conn.dialect.name
    conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_mv_search ON mv_object (search_text, id)")
    conn.exec_driver_sql(
        f"CREATE INDEX IF NOT EXISTS ix_cs_photo ON cs_object (agent) WHERE {photo_predicate(dialect)}"
    )
    conn.exec_driver_sql(f"CREATE INDEX IF NOT EXISTS ix_cs_error ON cs_object (agent) WHERE {ERROR_PREDICATE}")
    conn.exec_driver_sql(
        f"CREATE INDEX IF NOT EXISTS ix_cs_disconnected ON cs_object (agent) WHERE {DISCONNECTED_PREDICATE}"
    )


def _add_missing_columns(conn: Connection, columns: tuple[tuple[str, str], ...]) -> None:
    """Add TEXT columns where they are missing: stores created at version 1 by a later mvsync
    already have them (``_v1``'s ``create_all`` writes today's tables)."""
    for table, column in columns:
        if column not in {c["name"] for c in inspect(conn).get_columns(table)}:
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column} TEXT")


def _v3_history_messages(conn: Connection) -> None:
    """``run_history.message``: why a run ended before any step ran (a configuration error, a store
    fault), which no step's message can carry; ``run_error.display``: who an error is about (display
    name with UPN or account name)."""
    _add_missing_columns(conn, (("run_history", "message"), ("run_error", "display")))


def _v4_import_checkpoint(conn: Connection) -> None:
    """``agent_state.import_checkpoint``: where an interrupted full import resumes."""
    _add_missing_columns(conn, (("agent_state", "import_checkpoint"),))


def _v5_agent_data(conn: Connection) -> None:
    """``agent_data``: each agent's key-value state, committed with its import pages (import contract v2)."""
    agent_data.create(conn, checkfirst=True)


def _v6_export_renderings(conn: Connection) -> None:
    """``cs_object.renderings``: the value a connected system shows for an export it re-encoded."""
    _add_missing_columns(conn, (("cs_object", "renderings"),))


#: The ``store_meta`` key of the first run id that holds its run lock while it runs (migration 7).
RUN_LOCKS_FROM_KEY = "run_locks_from"


def _v7_run_locks(conn: Connection) -> None:
    """From which run on every run holds its own run lock for as long as it runs (``RUN_LOCKS_FROM_KEY``).

    Why: a free run lock proves that the run's process is gone (on any host) only for a run that took
    one; the runs an earlier mvsync recorded never did. An earlier mvsync refuses the store from now
    on, so every later run takes it.
    """
    last = conn.execute(select(func.max(run_history.c.id))).scalar()
    write_meta(conn, RUN_LOCKS_FROM_KEY, str(int(last or 0) + 1))


MIGRATIONS: tuple[Callable[[Connection], None], ...] = (
    _v1,
    _v2_console_indexes,
    _v3_history_messages,
    _v4_import_checkpoint,
    _v5_agent_data,
    _v6_export_renderings,
    _v7_run_locks,
)
SCHEMA_VERSION = len(MIGRATIONS)


def current_version(conn: Connection) -> int:
    """The store's schema version (0: no version in it, see :func:`holds_tables`).

    A value that is no version mvsync writes (bytes changed on the disk, a hand edit) is damage
    (:class:`DamagedDocumentError`, which the store names itself in): every command, ``mvsync doctor``
    and ``mvsync store restore`` of such a backup too, read it first and ended in a ``ValueError``.
    """
    if not conn.dialect.has_table(conn, "store_meta"):
        return 0
    value = conn.execute(select(store_meta.c.value).where(store_meta.c.key == "schema_version")).scalar()
    if value is None:
        return 0
    text = str(value)
    if not (text.isascii() and text.isdigit() and int(text) > 0):
        shown = repr(text[:40]) + ("…" if len(text) > 40 else "")
        raise DamagedDocumentError(f"store_meta's schema_version is {shown}, not a version number mvsync writes")
    return int(text)


def holds_tables(conn: Connection) -> bool:
    """Whether the database holds any of mvsync's tables (False: an empty store, which the first run creates).

    Why not the schema version alone: on an empty PostgreSQL database every read of a table fails
    ("relation ... does not exist"), and ``mvsync doctor`` reported those as damage.
    """
    return any(conn.dialect.has_table(conn, name) for name in metadata.tables)


#: The PostgreSQL advisory lock key migrations are serialized on (the first 8 bytes of
#: sha256("mvsync:schema-migration"), as a signed 64-bit number).
_MIGRATION_LOCK_KEY = int.from_bytes(hashlib.sha256(b"mvsync:schema-migration").digest()[:8], "big", signed=True)


def _version_to_migrate(conn: Connection, where: str, *, upgrade: bool) -> int:
    """The store's schema version, read once no other session migrates it (PostgreSQL).

    Why: two runs that start together against a new database (or after mvsync was upgraded) both
    found the store behind and both migrated it; the second's ``CREATE TABLE`` waited for the first's
    and then failed on PostgreSQL's catalog (a traceback). A store that needs a migration is migrated
    under a transaction advisory lock, and read again once it is taken: the second run finds what the
    first committed. A current store takes no lock. (SQLite: ``SqlStore._opening`` orders them.)
    """
    found = current_version(conn)
    if found >= SCHEMA_VERSION or not upgrade or conn.dialect.name != "postgresql":
        return found
    try:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK_KEY})
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != "55P03":  # lock_not_available: the lock_timeout ran out
            raise
        raise _migration_busy(where, first_line(str(exc.orig))) from None
    return current_version(conn)


def _migration_busy(where: str, refusal: str) -> StoreBusyError:
    """Another mvsync holds the schema-upgrade lock longer than this run's ``lock_timeout``.

    Why its own words: only mvsync takes that lock, so the store's answer to a lock wait in vain (a
    VACUUM FULL, a REINDEX or a transaction left open) named causes that were not there.
    """
    return StoreBusyError(
        f"the store {where} is busy: another mvsync process is creating or upgrading its schema ({refusal} "
        "waiting for it; an upgrade of a large store can take minutes while it builds indexes): let it finish, "
        "then run again"
    )


def migrate(conn: Connection, where: str = "the store", *, upgrade: bool = True) -> int:
    """Bring the store to ``SCHEMA_VERSION``; returns the version found before.

    ``upgrade=False`` (read-only commands: history, the console) checks instead: an older store is
    refused, not upgraded. Why: a console or a second machine that runs a newer mvsync against a
    shared store would upgrade it under the sync server, whose older mvsync then refuses it as
    newer than it understands; the sync (``mvsync run``) or ``mvsync store upgrade`` upgrades it.
    """
    found = _version_to_migrate(conn, where, upgrade=upgrade)
    if found > SCHEMA_VERSION:
        msg = (
            f"the store {where} has schema version {found}, newer than this mvsync understands ({SCHEMA_VERSION}): "
            "a newer mvsync wrote it; upgrade mvsync here to that version (every machine that uses one store must "
            "run the same version)"
        )
        raise StoreVersionError(msg)
    if found < SCHEMA_VERSION and not upgrade:
        if found == 0:
            raise empty_store(where)
        msg = (
            f"the store {where} has schema version {found}, older than this mvsync's ({SCHEMA_VERSION}), and this "
            "command only reads it: upgrade the store with `mvsync store upgrade` (or the next `mvsync run`), once "
            "every machine that uses it runs this version"
        )
        raise StoreVersionError(msg)
    try:
        for version in range(found + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[version - 1](conn)
            if version == 1:
                conn.execute(store_meta.insert().values(key="schema_version", value="1"))
            else:
                conn.execute(store_meta.update().where(store_meta.c.key == "schema_version").values(value=str(version)))
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != "42501":  # PostgreSQL's insufficient_privilege
            raise
        raise _may_not_migrate(where, found, first_line(str(exc.orig))) from None
    return found


def _may_not_migrate(where: str, found: int, refusal: str) -> StoreError:
    """A PostgreSQL role that may not create or alter mvsync's tables met a migration (``refusal``: why).

    Why not the store's answer to any refused write: that asks for grants on the tables (SELECT,
    INSERT, UPDATE, DELETE), which a role that only runs mvsync has (README); creating the tables needs
    CREATE on the schema, and altering them is their owner's alone, so the owner upgrades the store once.
    The migration's transaction is rolled back: nothing was changed.
    """
    if found == 0:
        return StoreError(
            f"the store {where} holds no mvsync tables yet, and this role may not create them ({refusal}): run "
            "the first `mvsync store upgrade` (or run) as the role that owns the database, or let its owner "
            "GRANT CREATE ON SCHEMA NAME TO this role (the schema the message names); then grant the role that "
            "runs mvsync what README: Production store on PostgreSQL gives"
        )
    return StoreError(
        f"the store {where} has schema version {found}, older than this mvsync's ({SCHEMA_VERSION}), and this role "
        f"may not upgrade it ({refusal}): only the role that owns mvsync's tables may alter them: run `mvsync store "
        "upgrade` once as the role that owns them (store.url naming it), then run as before; nothing was changed"
    )
