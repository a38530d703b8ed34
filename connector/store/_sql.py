"""``SqlStore``: the connection to the store database and its transactions.

SQLite runs in WAL mode with ``synchronous=NORMAL``: a crash loses at most the last committed
transactions, never consistency. The engine writes one transaction per import page, sync chunk or
export batch, so a crash never leaves half a page applied.

A *dry run* opens one outer transaction for the whole run; each unit of work becomes a savepoint
inside it, and the outer transaction is rolled back at the end, leaving the store byte-identical.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TypeAlias

from sqlalchemy import Connection, Engine, create_engine, event, select, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.pool import StaticPool

from connector.files import network_location, processes_with_open, read_only_mount
from connector.logging import REDACTED, mask_url
from connector.store._faults import (
    EXIT_STORE_CONFIG,
    RESTORE_HINT,
    RUN_CONNECTIONS,
    LockHeldError,
    StoreBusyError,
    StoreCorruptError,
    StoreError,
    StoreMissingError,
    StoreReadOnlyError,
    StoreUnreachableError,
    damaged,
    database_busy,
    folder_write_advice,
    read_only_server,
    store_faults,
)
from connector.store._locks import OPENING_LOCK, LockManager, table_lock_holders
from connector.store._migrations import SCHEMA_VERSION, current_version, migrate
from connector.store._store_meta import read_meta, write_meta
from connector.store.tables import blob, metadata

__all__ = [
    "ROW_ID_MAX",
    "SqlStore",
    "StoreConnection",
    "StoreError",
    "page_damage",
    "parse_store_url",
    "sqlite_files",
    "tables_read_only",
]

#: The connection of one store transaction: what callers hand to the repositories. Callers use it
#: as an opaque handle; only code inside ``connector.store`` runs statements on it.
StoreConnection: TypeAlias = Connection


#: The largest row id (run, step, metaverse object) either backend can hold: a 64-bit signed INTEGER.
#: A larger number typed into a command or a console URL names nothing (and SQLite would overflow).
ROW_ID_MAX = 2**63 - 1
#: Rows a table gains before the first ``ANALYZE`` on PostgreSQL (see ``SqlStore.note_inserts``).
ANALYZE_MIN_ROWS = 1000
#: Upper bound of blob bytes fetched by one query (see ``SqlStore.get_blobs``).
BLOB_QUERY_BYTES = 16 * 1024 * 1024
#: How long a write waits for another process's database lock before it fails as busy (SQLite's
#: ``busy_timeout``; PostgreSQL's ``lock_timeout`` on a table lock). Other mvsync runs hold it for one
#: page, chunk or batch; longer means someone else holds the file, or on PostgreSQL a ``VACUUM FULL``,
#: a ``REINDEX`` or a transaction left open: the run stops as busy (exit 5) instead of hanging silently.
#: Also how long a statement waits for a free connection of the pool (a console whose pages all wait on a
#: hung server): then it is a store fault naming the store, before the console's page deadline.
BUSY_TIMEOUT_S = 30.0
#: How long a run's start waits for the database lock before saying it waits (SQLite): enough for
#: another mvsync run's unit of work, too short to be a backup agent or antivirus scan.
BUSY_GRACE_S = 5.0
#: What a SQLite store's ``-wal`` file is cut back to once its writes are folded into the store
#: (SQLite's ``journal_size_limit``). Why: SQLite reuses the log's file rather than shrink it, so one
#: big run (a first full import), or the runs while a read was held open, left a log that size for as
#: long as any process had the store open (a console, a tool). Read when a connection opens.
WAL_LIMIT_BYTES = 64 * 1024 * 1024
#: A ``-wal`` this big at a run's start that a checkpoint cannot fold into the store is said (see
#: ``SqlStore.wal_warning``): SQLite lets it grow without bound while another process keeps a read open.
WAL_WARN_BYTES = 64 * 1024 * 1024
#: How long connecting to a PostgreSQL store may take (psycopg's ``connect_timeout``). Without it a
#: host that accepts TCP but never answers (a hung server, a firewall or proxy holding the connection)
#: keeps every command waiting psycopg's own 130 s in silence, then ends in a traceback. A
#: ``connect_timeout`` in ``store.url`` (or libpq's ``PGCONNECT_TIMEOUT``) wins.
CONNECT_TIMEOUT_S = 20
#: TCP keepalives on PostgreSQL connections (libpq's parameters), unless ``store.url`` sets its own.
#: Without them a store host that goes away without a reset (a failover, a VM gone, a firewall that
#: drops the connection silently) leaves a run or a console page waiting on its idle connection until
#: the OS gives up, which by default is hours; with them libpq finds it dead in about 70 s
#: (30 s idle, then 4 probes 10 s apart; Windows has no probe count and uses its own). They also keep
#: a firewall from dropping the connection a run lock is held on while a long step runs.
PG_KEEPALIVES: dict[str, int] = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 4,
}
#: How long data sent to a PostgreSQL store may stay unacknowledged before the connection is dropped
#: (libpq's ``tcp_user_timeout``, the OS's TCP_USER_TIMEOUT), unless ``store.url`` sets it. Keepalives
#: probe only an idle connection: a host that vanished while a query or a commit was on the wire held
#: the run for the OS's retransmission limit (about 15 minutes on Linux) before this. 70 s is the
#: keepalives' own 30 + 4 x 10, so neither cuts the other short. libpq sets it only where the OS has
#: the option and ignores it elsewhere (Windows has none), so it is safe to send everywhere.
PG_TCP_USER_TIMEOUT_MS = 70_000


#: Whether SQLAlchemy leaves a statement's parameters out of its error texts (both databases). Why: the
#: parameters are people's data (names, addresses, photos), and a database error no store fault stands
#: for (a DBA's trigger that fails) reached the step's message with every row of the page in it: printed,
#: logged with a traceback, and kept in run history. The statement and the database's words are enough.
_HIDE_PARAMETERS = True

#: The execution option of a SQLite connection whose transactions write: they begin with ``BEGIN
#: IMMEDIATE``. Why: a deferred transaction that read first and then wrote while another process had
#: committed a write (WAL: its snapshot is stale) failed at once with "database is locked", without
#: waiting the busy timeout; two runs of different agents, each writing its own rows, stopped each other
#: as busy ("a backup or antivirus scan"). An immediate one takes the write lock first, and waits for it.
_WRITER = "mvsync_writer"


#: SQLite's page cache per connection, in KiB (``PRAGMA cache_size`` takes a negative number as KiB).
#: Why 16 MB and not more: the cache keeps every page a transaction touched, and an import's pages are
#: mostly photos written once and never read again through it, so a larger cache only held more of them.
#: At 64 MB (this store's earlier setting) the 50,000-user ``bench import`` peaked at 262-273 MB in about
#: half its runs, SQLite's memory reaching 76 MB in the import's first seconds, and glibc kept that heap
#: for the rest of the process; at 16 MB it peaked at 221-223 MB (3 runs each, its full import as fast:
#: 32.4-32.9 s against 32.9-33.4), and ``bench sync --objects 100000`` (200,000 connector-space objects,
#: lookups by anchor and join) ran as fast (38,600-40,000 objects/s against 36,400-41,000) with a 151 MB
#: peak instead of 204. What a bigger store reads repeatedly is its indexes'
#: interior pages, a small share of them; the rest comes from the operating system's file cache, one copy
#: away (SQLite, "PRAGMA cache_size"; its default is 2 MB).
SQLITE_CACHE_KIB = 16 * 1024


def _busy_ms() -> int:
    """``BUSY_TIMEOUT_S`` in the milliseconds both databases take (read when asked: tests shorten it)."""
    return int(BUSY_TIMEOUT_S * 1000)


def _sqlite_setup(engine: Engine, *, wal: bool) -> None:
    """Each connection's settings; ``wal``: switch the file to WAL (a dry run, which writes nothing,
    leaves the journal mode as it is: switching rewrites the database header)."""

    # pysqlite's own transaction handling breaks SAVEPOINTs; take control of BEGIN ourselves.
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        if wal:
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={_busy_ms()}")
        cur.execute(f"PRAGMA journal_size_limit={int(WAL_LIMIT_BYTES)}")
        cur.execute(f"PRAGMA cache_size=-{SQLITE_CACHE_KIB}")
        cur.execute("PRAGMA temp_store=MEMORY")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get(_WRITER) else "BEGIN")


def _analyze_unless_busy(conn: Connection, table: str) -> bool:
    """``ANALYZE table`` if its lock comes within a second; False (try again later) if not.

    ANALYZE is the one statement of a run that waits for a (auto)vacuum of the table, and an
    anti-wraparound vacuum does not give way: a statistics refresh must not stop a run as busy.
    It runs without a ``statement_timeout`` the DBA set: one shorter than that second (or than the
    sample of a large table read from a cold disk) canceled it first, and the run stopped as a canceled
    statement for a refresh that is only ever deferred. The lock timeout still bounds its wait.
    """
    try:
        with conn.begin_nested():
            kept = conn.exec_driver_sql(
                "SELECT current_setting('lock_timeout'), current_setting('statement_timeout')"
            ).one()
            conn.exec_driver_sql("SET LOCAL lock_timeout = 1000")
            conn.exec_driver_sql("SET LOCAL statement_timeout = 0")
            conn.exec_driver_sql(f"ANALYZE {table}")
            # SET LOCAL outlives the savepoint: the rest of the page's transaction gets the session's back
            restore = "SELECT set_config('lock_timeout', :lock, true), set_config('statement_timeout', :stmt, true)"
            conn.execute(text(restore), {"lock": kept[0], "stmt": kept[1]})
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != "55P03":
            raise
        return False
    return True


def _masked(url: str, parsed: URL) -> str:
    """``url`` as messages and history show it: without its password (see :func:`mask_url`).

    A password with a raw ``@``, ``/``, ``?`` or ``#`` is refused: SQLAlchemy would read part of it
    as the host or the path, try to connect there, and the driver's error would show that part.
    """
    masked = mask_url(url)
    if "@" in (parsed.host or "") or (parsed.password is not None and f":{REDACTED}@" not in masked):
        msg = (  # not the URL: where its password ends is the question
            f"store.url ({parsed.drivername}://...): its password holds a character a URL must percent-encode "
            "(@ as %40, / as %2F, ? as %3F, # as %23); write it encoded"
        )
        raise StoreError(msg, exit_code=EXIT_STORE_CONFIG)
    return masked


def _postgresql_engine(url: str, parsed: URL, where: str) -> tuple[Engine, float | None]:
    """The engine of a PostgreSQL store, and the seconds its connection attempt may take (None: unbounded).

    ``connect_timeout`` bounds the attempt (see ``CONNECT_TIMEOUT_S``) unless the user chose one, and
    TCP keepalives and a TCP user timeout find a host gone silent (``PG_KEEPALIVES``,
    ``PG_TCP_USER_TIMEOUT_MS``) unless the URL sets them. The
    driver is an extra (``mvsync[postgres]``): without it SQLAlchemy's import of psycopg would end the
    command in a traceback, where the operator needs the line that installs it.
    """
    given = parsed.query.get("connect_timeout") or os.environ.get("PGCONNECT_TIMEOUT")
    connect_args: dict[str, int] = {} if given else {"connect_timeout": CONNECT_TIMEOUT_S}
    if not any(key.startswith("keepalives") for key in parsed.query):  # the URL's own choice wins whole
        connect_args.update(PG_KEEPALIVES)
    if "tcp_user_timeout" not in parsed.query:
        connect_args["tcp_user_timeout"] = PG_TCP_USER_TIMEOUT_MS
    try:
        engine = create_engine(
            url,
            pool_pre_ping=True,
            pool_timeout=BUSY_TIMEOUT_S,
            connect_args=connect_args,
            hide_parameters=_HIDE_PARAMETERS,
        )
    except ModuleNotFoundError as exc:
        msg = (
            f"the store {where} needs the PostgreSQL driver {exc.name or 'psycopg'}, which is not installed: "
            "install it with pip install 'mvsync[postgres]' and write store.url as postgresql+psycopg://..."
        )
        raise StoreError(msg, exit_code=EXIT_STORE_CONFIG) from None
    _postgresql_setup(engine)
    return engine, _seconds(given) if given else float(CONNECT_TIMEOUT_S)


def _seconds(value: str | tuple[str, ...]) -> float | None:
    """A ``connect_timeout`` as seconds; None where psycopg waits without bound (0, negative, not a number)."""
    try:
        seconds = float(value if isinstance(value, str) else value[-1])
    except ValueError:
        return None
    return seconds if seconds > 0 else None


def _postgresql_setup(engine: Engine) -> None:
    """Each session waits at most ``BUSY_TIMEOUT_S`` for a table lock (a plain ``SET``, which poolers
    pass), unless a ``lock_timeout`` was chosen for it: by the DBA for the role or the database
    (``ALTER ROLE ... SET lock_timeout``) or in ``store.url`` (``options=-c lock_timeout=MS``). The
    server's default, 0, waits for ever: that is the one replaced (see :func:`_lock_wait_ms`)."""

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        with dbapi_conn.cursor() as cur:
            cur.execute(
                "SELECT current_setting('lock_timeout')::interval = interval '0', "
                "extract(epoch FROM current_setting('statement_timeout')::interval) * 1000"
            )
            row = cur.fetchone()
            if row is not None and row[0]:
                cur.execute(f"SET lock_timeout = {_lock_wait_ms(float(row[1]))}")
        dbapi_conn.commit()  # outside any transaction the run opens: a rollback must not undo it


def _lock_wait_ms(statement_timeout_ms: float) -> int:
    """How long a session waits for a lock where none chose it: ``BUSY_TIMEOUT_S``, or 90 % of a shorter
    ``statement_timeout`` (0: none).

    Why: the statement timeout a DBA set for the role or the database ended a lock wait first, as a
    canceled statement (exit 4) without a word of who held the lock, where a lock held too long is
    exit 5 (stopped-locked) naming the sessions that held it.
    """
    busy = _busy_ms()
    if 0 < statement_timeout_ms <= busy:
        return max(1, int(statement_timeout_ms * 0.9))
    return busy


def parse_store_url(url: str) -> URL:
    """``store.url`` parsed, or a configuration error (exit 2) naming it without its password."""
    try:
        return make_url(url)
    except ArgumentError:
        msg = (
            f"store.url {mask_url(url)!r} is not a database URL (e.g. sqlite:///mvsync.db or postgresql+psycopg://...)"
        )
        raise StoreError(msg, exit_code=EXIT_STORE_CONFIG) from None


class SqlStore:
    """Owns the SQLAlchemy engine, schema migrations, transactions, blobs and run locks."""

    def __init__(
        self,
        url: str,
        *,
        migrate_schema: bool = True,
        create: bool = True,
        wal: bool = True,
        reader: str = "a read-only mvsync command",
    ) -> None:
        """Open the store at ``url``; ``create=False`` (read-only commands) refuses a missing one, and
        registers this process as a reader of a SQLite store, named ``reader`` (see :meth:`_register_reader`);
        ``wal=False`` (a dry run) leaves a SQLite file's journal mode as it is."""
        parsed = parse_store_url(url)
        self.url = url
        self.dialect = parsed.get_backend_name()
        #: How messages name the store: the file for SQLite, the URL without password otherwise.
        self.where = _masked(url, parsed)
        #: The SQLite database file (None in memory and on PostgreSQL).
        self.path: Path | None = None
        lock_dir: Path | None = None
        #: How long connecting may take (PostgreSQL; None for SQLite or an unbounded wait), for messages.
        self.connect_timeout_s: float | None = None
        #: How long a statement waits for a free pooled connection (None: in memory, one shared connection).
        self.pool_wait_s: float | None = None
        if self.dialect == "sqlite":
            database = parsed.database or ""
            memory = database in ("", ":memory:")
            if not memory:
                db_path = Path(database)
                self.path, self.where = db_path, str(db_path)
                if not create:  # before the lock folder beside it is made
                    _check_sqlite_file(db_path, create=create)
                if create:
                    db_path.parent.mkdir(parents=True, exist_ok=True)
                lock_dir = db_path.with_name(db_path.name + ".locks")
            self.pool_wait_s = None if memory else BUSY_TIMEOUT_S
            self.engine = create_engine(
                url,
                connect_args={"check_same_thread": False},
                hide_parameters=_HIDE_PARAMETERS,
                **({"poolclass": StaticPool} if memory else {"pool_timeout": self.pool_wait_s}),
            )
            _sqlite_setup(self.engine, wal=wal)
        elif self.dialect == "postgresql":
            self.engine, self.connect_timeout_s = _postgresql_engine(url, parsed, self.where)
            self.pool_wait_s = BUSY_TIMEOUT_S
        else:
            msg = f"store.url: unsupported database {self.dialect!r} (use sqlite or postgresql+psycopg)"
            raise StoreError(msg, exit_code=EXIT_STORE_CONFIG)
        self.locks = LockManager(self.engine, lock_dir, self.where, faults=self.faults)
        self._dry_conn: Connection | None = None
        self._tx_lock = threading.RLock()
        self._inserted: dict[str, int] = {}
        self._counted: dict[str, int] = {}
        #: This process's registration as a reader of the SQLite store (held until :meth:`close`).
        self._registration = contextlib.ExitStack() if create else self._register_reader(reader)
        try:
            with self._opening(create=create):
                creating = self.path is not None and create and not self.path.exists()
                try:
                    if self.path is not None and create:
                        _check_sqlite_file(self.path, create=create)
                    if migrate_schema:  # a read-only command's (create=False) checks the version, never upgrades
                        self.upgrade(check_only=not create)
                except StoreError:
                    if creating:
                        self._remove_unwritten_file()
                    raise
        except BaseException:
            self.close()
            raise
        #: The OS's identity of the SQLite file this store opened (see :meth:`check_same_file`).
        self._file_id = _file_identity(self.path) if self.path is not None else None

    def _remove_unwritten_file(self) -> None:
        """Remove the SQLite file this store created and could write nothing into (its first open failed).

        Why: SQLite creates the file on the first connection, empty, and switching it to WAL writes its
        first page (4096 bytes, no table); a first run on a full disk (or one whose schema could not be
        written for another reason) left that file behind, although the README says it leaves none: once
        space was freed, a 0-byte one was refused as a truncated store, and ``mvsync doctor`` met a file
        without tables. Only a file that holds no table with no log beside it goes (a schema that reached
        the ``-wal`` but not the file is kept: it is the store). Called under the opening lock.
        """
        assert self.path is not None
        self.engine.dispose()  # SQLite's own handles first (Windows cannot remove an open file)
        wal = self.path.with_name(self.path.name + "-wal")
        with contextlib.suppress(OSError):  # never hide why the store could not be created behind this
            if not (wal.exists() and wal.stat().st_size > 0) and _holds_no_schema(self.path):
                for created in sqlite_files(self.path):
                    created.unlink(missing_ok=True)

    def _register_reader(self, reader: str) -> contextlib.ExitStack:
        """Register this read-only opener of a SQLite store with the store's locks, before its first
        connection, so that ``mvsync store restore`` refuses while it has the store open, naming ``reader``,
        and one that opens it during a restore waits for the restore (see ``LockManager.register_reader``).

        The registration is let go by :meth:`close`, or when this store is collected or the process ends
        (read-only commands leave their store to the end of the process). A lock folder this account
        cannot use registers nothing: the restore still asks SQLite and the OS who has the file open.
        """
        try:
            registration = self.locks.register_reader(reader, wait_s=BUSY_TIMEOUT_S)
        except LockHeldError:
            who = "; ".join(self.locks.live_holders(besides="")) or "another mvsync process"
            msg = (
                f"the store {self.where} has been held for more than {BUSY_TIMEOUT_S:g} s by {who}, which is "
                f"restoring, creating or upgrading it: {reader} reads it once that is over; try again then"
            )
            raise StoreBusyError(msg) from None
        except StoreError:
            return contextlib.ExitStack()
        weakref.finalize(self, _let_go, registration)
        return registration

    @contextlib.contextmanager
    def _opening(self, *, create: bool) -> Iterator[None]:
        """Hold the SQLite store's opening lock while a run checks, creates or upgrades it.

        Why: two runs that started together on a new store (the first night, two tasks at 03:00) met
        the file the other had just created, still 0 bytes, and one stopped with "the store is empty: it
        was truncated ... restore it from a backup", or as busy, as the other created the schema. A
        lock file beside the store (held for that moment only) makes the second wait for the first.
        (PostgreSQL's migrations take an advisory lock of their own; read-only commands create nothing.)
        A lock folder that cannot be used is left to the run's own lock to say, which history records.
        """
        with contextlib.ExitStack() as held:
            if self.path is not None and create:
                with contextlib.suppress(StoreError):  # not LockHeldError: waited for, and still held
                    held.enter_context(self.locks.hold(OPENING_LOCK, wait_s=BUSY_TIMEOUT_S))
            yield

    def schema_version(self) -> int:
        """The schema version the store holds (0: the database holds no mvsync store yet), read
        without upgrading it: a dry run decides from it what it may open (see ``mvsync run``)."""
        with self.read() as conn:
            return current_version(conn)

    def upgrade(self, *, check_only: bool = False) -> tuple[int, int]:
        """Bring the schema to this mvsync's version (see ``migrate``): the versions before and after."""
        if not check_only and self.schema_version() < SCHEMA_VERSION:
            # (a current store needs no write: "nothing to do" is right on a standby too)
            self.refuse_read_only("the schema was not upgraded")
        with self.faults(), self.engine.begin() as conn:
            before = migrate(conn, self.where, upgrade=not check_only)
        return before, SCHEMA_VERSION

    def write_problem(self) -> str | None:
        """Why a run could not write this PostgreSQL store, found without writing; None when it could.

        A standby (a read replica named in ``store.url``), a database or role set read-only, or a role
        without write grants on mvsync's tables all read fine, so every other check passes and the next
        run stops at its first write. (SQLite's file permissions are the caller's to check.)
        """
        if self.dialect != "postgresql":
            return None
        read_only = self.read_only_problem()
        if read_only is not None:
            return read_only
        tables = sorted(metadata.tables)
        with self.read() as conn:
            denied = (
                conn.execute(
                    text(
                        "SELECT c.relname FROM pg_class c WHERE c.relname = ANY(:t) AND c.relkind = 'r' "
                        "AND c.relnamespace = ANY(current_schemas(false)::regnamespace[]) AND NOT ("
                        "has_table_privilege(c.oid, 'INSERT') AND has_table_privilege(c.oid, 'UPDATE') "
                        "AND has_table_privilege(c.oid, 'DELETE')) ORDER BY c.relname"
                    ),
                    {"t": tables},
                )
                .scalars()
                .all()
            )
            conn.rollback()
        if denied:
            return (
                f"this role may not write {', '.join(denied)} in the store {self.where}: grant it SELECT, INSERT, "
                "UPDATE and DELETE on mvsync's tables"
            )
        return None

    def read_only_problem(self) -> str | None:
        """Why no transaction can write this PostgreSQL store, found without writing (see
        :func:`read_only_server`); None when one can, and on SQLite."""
        if self.dialect != "postgresql":
            return None
        with self.read() as conn:
            standby, setting = conn.execute(
                text("SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only')")
            ).one()
            if not standby and setting != "on":
                conn.rollback()
                return None
            # pg_settings builds every setting's row (a temporary file under a small work_mem): only when needed
            source, role, database = conn.execute(
                text(
                    "SELECT source, current_user, current_database() FROM pg_settings "
                    "WHERE name = 'default_transaction_read_only'"
                )
            ).one()
            info = getattr(conn.connection.driver_connection, "info", None)
            server = f"{getattr(info, 'host', '?')}:{getattr(info, 'port', '?')}"
            conn.rollback()
        return read_only_server(self.where, server, standby=standby, source=source, role=role, database=database)

    def refuse_read_only(self, outcome: str = "this run wrote nothing") -> None:
        """Raise :class:`StoreReadOnlyError` before a write (a run, a dry run too, ``history clear``, a
        schema upgrade) where no transaction can write; ``outcome`` ends the message.

        Why before: a standby named by ``store.url`` (a DNS name that follows a failover to the replica)
        or a DBA's ``default_transaction_read_only`` read fine, and the write stopped at its first
        statement with "may point at a standby or at a database set read-only": which one, on which
        server, and how to follow the primary went unsaid.
        """
        problem = self.read_only_problem()
        if problem is not None:
            raise StoreReadOnlyError(f"{problem}; {outcome}")

    def connection_problem(self) -> str | None:
        """Why every run on this PostgreSQL store would stop short of connections; None when none would.

        A role's or a database's ``CONNECTION LIMIT`` below the connections a run holds at once
        (:data:`RUN_CONNECTIONS`) stops every run by its first synchronization step, which holds the
        most; the limits hold no superuser back.
        """
        if self.dialect != "postgresql":
            return None
        with self.read() as conn:
            superuser, role_limit, database_limit = conn.execute(
                text(
                    "SELECT r.rolsuper, r.rolconnlimit, d.datconnlimit FROM pg_roles r, pg_database d "
                    "WHERE r.rolname = current_user AND d.datname = current_database()"
                )
            ).one()
            conn.rollback()
        short = [
            (what, limit, alter)
            for what, limit, alter in (
                ("this role may open", role_limit, "ALTER ROLE NAME"),
                ("the database may take", database_limit, "ALTER DATABASE NAME"),
            )
            if 0 <= limit < RUN_CONNECTIONS
        ]
        if superuser or not short:
            return None
        what, limit, alter = short[0]
        return (
            f"{what} {limit} connections (its CONNECTION LIMIT) to the store {self.where}, fewer than the four a "
            "run holds at once (a session for each of its locks and one for its work): every run stops by its first "
            f"synchronization step; raise it ({alter} CONNECTION LIMIT N, at least four more than its other sessions "
            "use)"
        )

    @functools.cached_property
    def network_location(self) -> str | None:
        """The network share or mount a SQLite store lies on (see :func:`connector.files.network_location`).

        A warning, not a refusal: a share used by one host may work for years, and then corrupt the
        store on a lost lock; the operator decides, told by each run and by ``mvsync doctor``.
        """
        return network_location(self.path) if self.path is not None else None

    def network_warning(self) -> str | None:
        """What to say about a store on a network file system, or None."""
        if self.network_location is None:
            return None
        return (
            f"the store {self.where} is on a network file system ({self.network_location}): SQLite's locks and "
            "write-ahead log are not safe there and the store can be corrupted; keep it on a local disk of the "
            "machine that runs mvsync, or use PostgreSQL (README: Production store on PostgreSQL)"
        )

    @contextlib.contextmanager
    def faults(self) -> Iterator[None]:
        """Database errors inside become store faults naming this store (see ``_faults``), with a note
        on why where the store can tell (``noted``: once, although these blocks nest)."""
        try:
            with store_faults(self.where, connect_timeout_s=self.connect_timeout_s, pool_wait_s=self.pool_wait_s):
                yield
        except StoreError as fault:
            note = None if fault.noted else self._folder_note(fault) or self._lock_holders_note(fault)
            if note is None:
                raise
            noted = type(fault)(f"{fault}; {note}", exit_code=fault.exit_code)
            noted.noted = True
            raise noted from None

    def _folder_note(self, fault: StoreError) -> str | None:
        """Why a SQLite store whose file reads fine cannot be opened or written: its folder, or a ``-wal``
        or ``-shm`` file beside it, is not writable for this account.

        SQLite writes beside a WAL database even to read it (the ``-shm`` index and the ``-wal`` log),
        so an account with read access to the file alone (an auditor's, the console's service
        account) or a read-only folder fails with "readonly database" or "unable to open", and the
        file's own permissions look right. A ``-wal`` or ``-shm`` left by a process of another account
        (an admin's sqlite3, mvsync run as root) lets reads through and refuses the run's first write.
        None when none of these is the cause.
        """
        if self.path is None or type(fault) not in (StoreReadOnlyError, StoreError):
            return None
        folder = self.path.parent
        if folder.is_dir() and not os.access(folder, os.W_OK):
            mount = read_only_mount(folder)
            if mount is not None:
                return (
                    f"the folder of the store {self.path} is on a file system mounted read-only ({mount}), and "
                    f"SQLite writes beside the store even to read it ({self.path.name}-shm and {self.path.name}-wal): "
                    "remount it read-write (after disk errors, check the disk first), or copy the store to a "
                    "writable disk and point store.url at the copy"
                )
            return (
                f"SQLite writes beside the store even to read it ({self.path.name}-shm and {self.path.name}-wal), "
                f"and this account may not write the folder {folder}: give it write access to that folder, or run "
                "mvsync as the account that runs the sync"
            )
        unwritable = self.unwritable()
        if self.path in unwritable:
            # the file itself first: SQLite gives the -wal and -shm it creates beside a store the store's own
            # permissions, so a read-only store left them read-only too, and the note blamed those (QA)
            return (
                f"this account cannot write the store file {self.path} itself: give it write access to that file "
                f"(chown or chmod; lsattr shows chattr +i), and to {self.path.name}-wal and {self.path.name}-shm "
                "beside it if they are there (SQLite makes them with the store's permissions)"
            )
        side = next((p for p in unwritable if p != folder), None)
        if side is None:
            return None
        return f"this account cannot write {side}: {_side_file_advice(side)}"

    def unwritable(self) -> list[Path]:
        """The parts of a SQLite store this account cannot write: the file, its folder, and the ``-wal``
        and ``-shm`` files beside it where they exist (a run writes all of them). [] on PostgreSQL."""
        if self.path is None:
            return []
        sides = [self.path.with_name(self.path.name + side) for side in ("-wal", "-shm")]
        parts = [self.path, self.path.parent, *(p for p in sides if p.exists())]
        return [p for p in parts if not os.access(p, os.W_OK)]

    def _lock_holders_note(self, fault: StoreError) -> str | None:
        """Who held the lock a statement waited for in vain: on PostgreSQL the sessions holding locks on
        the store's tables (see :func:`table_lock_holders`), on SQLite the runs on record as holding the
        store's locks (:meth:`_holders_note`); None for any other fault."""
        if not isinstance(fault, StoreBusyError):
            return None
        if self.dialect == "postgresql":
            return table_lock_holders(self.engine, sorted(metadata.tables))
        return self._holders_note()

    def _holders_note(self) -> str | None:
        """Who may hold this SQLite store's database: the processes of this machine that have it open, and
        the other mvsync runs on record as holding the store's locks; None when none is known.

        Why: SQLite does not say who holds its database. The operator was told "such as a backup or
        antivirus scan" and had to hunt for it; the processes that have the file open (an admin's sqlite3,
        a backup agent, a console) are who to ask. A run suspended or hung in the middle of a write holds
        it too, and a run of another agent then stopped as busy, the one holder it did not name being the
        likeliest one."""
        if self.path is None:
            return None
        notes = []
        opened = processes_with_open(sqlite_files(self.path))
        if opened:
            notes.append(f"processes of this machine that have the store open: {'; '.join(opened)}")
        held = self.locks.other_holders()
        if held:
            notes.append(
                f"mvsync processes on record as holding this store's locks (runs, and readers such as the console): "
                f"{'; '.join(held)} (a run suspended or hung in the middle of a write holds the database too: let it "
                "go on or end it; a record left by a process that was killed holds nothing)"
            )
        return "; ".join(notes) or None

    def wal_warning(self) -> str | None:
        """What to say about a SQLite store whose ``-wal`` has grown because another process keeps a read
        open on the store (None: nothing to say).

        Why: SQLite folds the log into the file (a checkpoint) only up to the oldest read still open, and
        starts the log afresh only once every write is folded in; a read held open (an sqlite3 shell
        after ``BEGIN``, a backup or browsing tool) made every run's writes pile up in the log, in silence,
        until the disk filled. Checked when the log is over ``WAL_WARN_BYTES``: a checkpoint that folds
        it all in (the read ended) leaves the next write to start it afresh and cut it back
        (``WAL_LIMIT_BYTES``); one that cannot names the processes that have the store open.
        """
        if self.path is None or self._dry_conn is not None:
            return None
        wal = self.path.with_name(self.path.name + "-wal")
        try:
            size = wal.stat().st_size
        except OSError:
            return None
        if size <= WAL_WARN_BYTES:
            return None
        with self.faults(), self.engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert isinstance(raw, sqlite3.Connection)
            _busy, frames, folded = raw.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if folded >= frames:
            return None
        holders = processes_with_open(sqlite_files(self.path))
        who = f"processes that have it open: {'; '.join(holders)}" if holders else "SQLite does not say which"
        return (
            f"the store's write-ahead log {wal} is {size / 1048576:.1f} MB and cannot be folded into the store: "
            f"another process has kept a read open on the store since before the last writes ({who}); the log "
            "grows with every run until that read ends: end it (an sqlite3 shell: COMMIT or quit; a backup or "
            "browsing tool: close it), and the next run folds the log in and cuts it back"
        )

    def check_same_file(self, holder: str = "this process") -> None:
        """Raise :class:`StoreError` if the store's path no longer names the SQLite file this store opened
        (``holder``: who has it open, as the message names it).

        Why: the pool keeps its connections open, so a store moved away or deleted while the console
        ran (POSIX lets an open file be renamed or unlinked) was still served from the open file, as if
        it were still at its path; a file copied in its place (a restore) was never shown. One stat
        per page compares the file's identity, device and file id, which ``os.stat`` gives on Windows
        too (the volume's serial number and the file index), where an open file can rarely be moved.
        """
        if self.path is None:
            return
        try:
            now = _file_identity(self.path)
        except OSError:  # the folder cannot be read: not a sign that the file moved
            return
        if self._file_id is None:  # created after this store was opened: the first file seen is its own
            self._file_id = now
            return
        if now == self._file_id:
            return
        if now is None:
            msg = (
                f"the store {self.path} is no longer there: it was moved or deleted while {holder} had it open "
                f"(what it shows is the file it opened, no longer at that path); put the file back at {self.path}, "
                f"or restart {holder} with store.url naming where it is now"
            )
        else:
            msg = (
                f"the store {self.path} was replaced while {holder} had it open (a restore, or a copy over it): "
                f"it still has the file it opened, not the one now at {self.path}; restart {holder} to use that one"
            )
        raise StoreError(msg)

    def wait_writable(self, wait_s: float, on_wait: Callable[[str], None] | None = None) -> None:
        """Return once this process could write the store; a busy store waits up to ``wait_s``.

        Why: a run's first write otherwise waits ``BUSY_TIMEOUT_S`` in silence behind a process that
        holds the database (a backup agent, antivirus, a ``BEGIN EXCLUSIVE``), then fails. Here the
        run waits the grace another mvsync run's unit of work needs, says that it waits (``on_wait``),
        waits the rest of ``--wait``, and ends like any lock (:class:`StoreBusyError`, exit 5).
        """
        if self.dialect != "sqlite" or self.path is None or self._dry_conn is not None:
            return
        budget = [BUSY_GRACE_S, max(0.0, wait_s - BUSY_GRACE_S)]
        for attempt, seconds in enumerate(budget):
            if attempt and seconds <= 0:
                break
            if attempt and on_wait is not None:
                on_wait(f"the store {self.where} is busy (another process holds it); waiting up to {wait_s:g} s")
            with self.faults(), self.engine.connect() as conn:
                raw = conn.connection.dbapi_connection
                assert raw is not None
                raw.execute(f"PRAGMA busy_timeout={int(seconds * 1000)}")
                try:
                    raw.execute("BEGIN IMMEDIATE")
                    raw.execute("ROLLBACK")
                    return
                except sqlite3.OperationalError as exc:
                    if getattr(exc, "sqlite_errorname", "") not in ("SQLITE_BUSY", "SQLITE_LOCKED"):
                        # as SQLAlchemy would wrap it: ``faults`` names the fault (read-only, full ...) and why
                        raise DBAPIError.instance("BEGIN IMMEDIATE", None, exc, sqlite3.Error) from None
                finally:
                    raw.execute(f"PRAGMA busy_timeout={_busy_ms()}")
        busy = database_busy(self.where, f"after waiting {max(wait_s, BUSY_GRACE_S):g} s")
        note = self._holders_note()
        if note:
            busy = StoreBusyError(f"{busy}; {note}")
        busy.noted = True  # said once, whatever ``faults`` block it passes
        raise busy

    # -- transactions --------------------------------------------------------------------------
    @contextlib.contextmanager
    def transaction(self, *, guarded: bool = True) -> Iterator[Connection]:
        """One unit of work: committed on success, rolled back on error (a savepoint in a dry run).

        ``guarded``: refused once a run lock this process holds was lost (:meth:`LockManager.verify`),
        so no step writes an agent another run may have locked. Only the run's own history record
        (its end, with the reason) is written unguarded.
        """
        if self._dry_conn is not None:
            with self.faults(), self._tx_lock, self._dry_session().begin_nested():
                yield self._dry_conn
            return
        if guarded:
            self.locks.verify()
        with self.faults(), self.engine.execution_options(**{_WRITER: True}).begin() as conn:
            yield conn

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A connection for reads (inside the dry-run transaction during a dry run)."""
        if self._dry_conn is not None:
            yield self._dry_session()
            return
        with self.faults(), self.engine.connect() as conn:
            yield conn

    def _dry_session(self) -> Connection:
        """The dry run's connection, or the store fault of a session that ended under it.

        Why: a dry run is one transaction on one session. Once the server ended that session (a restart
        or failover, ``pg_terminate_backend``) SQLAlchemy refuses every later statement on it with
        ``PendingRollbackError``, no database error, so recording the step's end after the step's own
        store fault escaped as a traceback (exit 1).
        """
        assert self._dry_conn is not None
        if self._dry_conn.invalidated:
            msg = (
                f"cannot use the store {self.where}: the dry run's session ended (a restart or failover, "
                "pg_terminate_backend, a dropped connection), and a dry run holds one transaction for the whole "
                "run: run it again once the store answers; it wrote nothing"
            )
            raise StoreUnreachableError(msg)
        return self._dry_conn

    @contextlib.contextmanager
    def dry_run(self) -> Iterator[None]:
        """Everything inside happens in one transaction that is rolled back at the end.

        That transaction idles while a connector reads (a slow directory, a throttled Graph), so on
        PostgreSQL it turns off, for itself alone, an ``idle_in_transaction_session_timeout`` the DBA set
        against forgotten transactions: the server ended the dry run's session after it, and every dry run
        of a long enough import stopped. (The run lock's session turns ``idle_session_timeout`` off alike.)
        """
        with self.faults(), self.engine.connect() as conn:
            trans = conn.begin()
            if self.dialect == "postgresql":
                conn.exec_driver_sql("SET LOCAL idle_in_transaction_session_timeout = 0")
            self._dry_conn = conn
            try:
                yield
            finally:
                self._dry_conn = None
                trans.rollback()

    @property
    def in_dry_run(self) -> bool:
        return self._dry_conn is not None

    # -- planner statistics ------------------------------------------------------------------
    def note_inserts(self, conn: Connection, table: str, count: int) -> None:
        """Keep PostgreSQL's planner statistics current while a table grows within one run.

        Autovacuum analyzes at most once a minute, so during a first import the planner still
        believes ``cs_object`` is empty and looks anchors up through the ``(agent, id)`` index,
        reading the whole connector space for every page: quadratic. ``ANALYZE`` (a sample, ~0.1 s)
        whenever the rows inserted since the last one reach the rows counted so far keeps the plan
        on the ``(agent, anchor)`` index for a few analyzes per doubling. SQLite needs nothing.
        """
        if table not in metadata.tables:
            msg = f"unknown store table {table!r}"
            raise ValueError(msg)
        if self.dialect != "postgresql" or count <= 0 or self._dry_conn is not None:
            return
        pending = self._inserted.get(table, 0) + count
        counted = self._counted.get(table, 0)
        if pending >= max(ANALYZE_MIN_ROWS, counted) and _analyze_unless_busy(conn, table):
            self._counted[table] = counted + pending
            pending = 0
        self._inserted[table] = pending

    # -- blobs ---------------------------------------------------------------------------------
    def put_blobs(self, conn: Connection, blobs: dict[str, bytes]) -> None:
        """Insert blobs not yet stored (content-addressed: an existing hash is the same content)."""
        if not blobs:
            return
        existing: set[str] = set()
        keys = list(blobs)
        for i in range(0, len(keys), 500):
            chunk = keys[i : i + 500]
            existing.update(conn.execute(select(blob.c.sha256).where(blob.c.sha256.in_(chunk))).scalars())
        rows = [{"sha256": k, "size": len(v), "data": v} for k, v in blobs.items() if k not in existing]
        if rows:
            conn.execute(blob.insert(), rows)

    def get_blobs(self, conn: Connection, hashes: Iterable[str]) -> dict[str, bytes]:
        """The stored bytes of ``hashes`` (missing ones are absent from the result).

        Sizes are read first, then the data in queries of at most ``BLOB_QUERY_BYTES`` each: the
        drivers buffer a whole result set, so one query over hundreds of HD photos would hold them
        twice. Callers bound the total by asking for one batch or page at a time.
        """
        keys = list(dict.fromkeys(hashes))
        sized: list[tuple[str, int]] = []
        for i in range(0, len(keys), 500):
            sized.extend(
                (sha, int(size))
                for sha, size in conn.execute(
                    select(blob.c.sha256, blob.c.size).where(blob.c.sha256.in_(keys[i : i + 500]))
                )
            )
        found: dict[str, bytes] = {}
        group: list[str] = []
        budget = 0
        for sha, size in [*sized, ("", BLOB_QUERY_BYTES)]:  # the sentinel flushes the last group
            if group and (budget + size > BLOB_QUERY_BYTES or len(group) >= 500):
                for got, data in conn.execute(select(blob.c.sha256, blob.c.data).where(blob.c.sha256.in_(group))):
                    found[got] = bytes(data)
                group, budget = [], 0
            group.append(sha)
            budget += size
        return found

    def get_blob(self, sha256: str) -> bytes | None:
        with self.read() as conn:
            data = conn.execute(select(blob.c.data).where(blob.c.sha256 == sha256)).scalar()
        return bytes(data) if data is not None else None

    def backup(
        self,
        target: Path,
        *,
        on_stale: Callable[[str], None] | None = None,
        on_removed: Callable[[Path, str, bool], None] | None = None,
    ) -> int:
        """Copy the SQLite store to ``target`` with SQLite's online backup API; returns its bytes.

        Why this and not ``cp``: a copy of the file while a run writes it (or with its ``-wal`` file
        left behind) can be torn; the backup API copies one consistent snapshot while runs go on
        (WAL readers do not block writers). PostgreSQL stores are backed up with ``pg_dump``.

        The copy is written to ``TARGET.partial`` and renamed once checked. A backup killed outright
        (``kill -9``, a power loss) leaves that file behind; the next backup to ``target`` replaces it
        and says so through ``on_stale`` (see :meth:`_replace_stale_partial`), and the next backup to
        any other file removes it and says so through ``on_removed`` (see :meth:`_remove_dead_partials`).
        """
        if self.path is None:
            msg = f"the store {self.where} is not a SQLite file: back it up with pg_dump (README: Backup and restore)"
            raise StoreError(msg, exit_code=EXIT_STORE_CONFIG)
        _check_backup_target(target)
        partial = target.with_name(target.name + PARTIAL_SUFFIX)
        with self._backup_lock(target):
            self._replace_stale_partial(partial, on_stale)
            self._remove_dead_partials(target, on_removed)
            return self._copy_into(partial, target)

    @contextlib.contextmanager
    def _backup_lock(self, target: Path) -> Iterator[None]:
        """Hold the lock of backups to ``target`` (one of the store's run locks: the OS drops it when
        the process dies, so a killed backup never leaves it held).

        Why: a ``.partial`` found while this lock is held is a killed backup's, safe to replace; without
        it a second backup to the same file would delete (or rename as its own) the copy another one is
        still writing. Its record names ``target`` (how a later backup finds a killed one's copy), and its
        files go when it is released (dated targets are never reused: one lock file each piled up).
        """
        try:
            with self.locks.hold(_backup_lock_name(target), transient=True, note={"target": str(target)}):
                yield
        except LockHeldError:
            msg = (
                f"another `mvsync store backup` of the store {self.where} to {target} is running now: let it "
                "finish, or choose another file"
            )
            raise StoreBusyError(msg) from None

    def _replace_stale_partial(self, partial: Path, on_stale: Callable[[str], None] | None) -> None:
        """Remove the unfinished copy (and its SQLite side files) a killed backup left at ``partial``.

        Why: SQLite would open it as the copy's database, and one torn by a power loss ("file is not a
        database", "malformed") failed the next backup as if the store were damaged. Only called with
        the backup lock held, so no running backup is writing it. A file that cannot be removed
        (Windows: another process has it open) stops the backup naming it.
        """
        removed = _remove_partial(partial)
        if removed is None:
            return
        size, failed = removed
        if failed is not None:
            msg = (
                f"cannot remove {failed[0]}, the unfinished copy of an earlier backup that was stopped "
                f"({failed[1].strerror}): close what holds it or delete it, then run the backup again"
            )
            raise StoreError(msg)
        if on_stale is not None:
            on_stale(
                f"replaced {partial} ({size} bytes), the unfinished copy of an earlier backup to the same file "
                "that was killed (kill -9, a power loss) before it finished; it was never a backup"
            )

    def _remove_dead_partials(self, target: Path, on_removed: Callable[[Path, str, bool], None] | None) -> None:
        """Remove the unfinished copies that killed backups of this store left for other files.

        Why: a backup to a dated name is never run again, so no later backup to that name replaced its
        killed predecessor's store-sized ``.partial`` (the README told the operator to delete it). A copy
        is removed only when it is proven to be such a leftover: the lock record of a backup of this store
        names its target (and the lock's name is that target's), and that lock is free, so no backup of
        this store is writing it; only ``TARGET.partial`` and SQLite's side files of it go. Taking the lock
        also removes it and its record (and those of backups that ended before records named targets).
        A copy that cannot be removed is said, not a failure: this backup is another matter.
        """
        for name, record in self.locks.recorded(_BACKUP_LOCK_PREFIX):
            if name == _backup_lock_name(target):
                continue
            dead = _recorded_target(name, record)
            try:
                with self.locks.hold(name, transient=True, note={"target": str(dead)} if dead else None):
                    found = _dead_partial_note(dead) if dead is not None else None
            except (LockHeldError, StoreError):  # a backup writing it now; or the lock folder's own trouble
                continue
            if found is not None and on_removed is not None:
                on_removed(*found)

    def _copy_into(self, partial: Path, target: Path) -> int:
        """Copy the store into ``partial``, check it, and rename it to ``target``; its bytes.

        Anything that stops the copy short of the rename (an error, Ctrl-C, SIGTERM) removes
        ``partial`` on the way out.
        """
        try:
            with self.faults(), self.engine.connect() as conn:
                source = conn.connection.dbapi_connection
                assert isinstance(source, sqlite3.Connection)
                copy = sqlite3.connect(partial)
                try:
                    source.backup(copy)  # all pages in one step: one snapshot
                    self._refuse_damaged_copy(copy, target)
                    copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file, no -wal beside it
                finally:
                    copy.close()
            partial.replace(target)
        except sqlite3.Error as exc:
            raise StoreError(self._backup_failed(target, exc)) from None
        except OSError as exc:
            raise StoreError(f"cannot write the backup {target}: {exc.strerror}") from None
        finally:
            for leftover in sqlite_files(partial):
                with contextlib.suppress(OSError):  # never hide why the backup failed behind its cleanup
                    leftover.unlink(missing_ok=True)
        return target.stat().st_size

    def _backup_failed(self, target: Path, exc: sqlite3.Error) -> str:
        """Why the copy to ``target`` failed, and what to do when it is the volume that is full.

        Why: SQLite says "database or disk is full", which names neither the volume nor the room the
        copy needs; the store's size is that room (the copy holds every page of it)."""
        if getattr(exc, "sqlite_errorname", "") != "SQLITE_FULL":
            folder = target.parent
            if os.access(folder, os.W_OK):
                return f"cannot write the backup {target}: {exc}"
            mount = read_only_mount(folder)
            why = f"its folder is on a file system mounted read-only ({mount})" if mount else "permission denied"
            return (
                f"cannot write the backup {target}: {why} ({exc}): {folder_write_advice(folder)}, or choose another "
                "folder; nothing was written"
            )
        assert self.path is not None
        try:
            needed = f"about {self.path.stat().st_size / 1048576:.1f} MB (the store's size)"
        except OSError:
            needed = "as much room as the store takes"
        return (
            f"cannot write the backup {target}: its volume is full ({exc}); the copy needs {needed}: free space "
            "there, or choose another volume; nothing was written"
        )

    def _refuse_damaged_copy(self, copy: sqlite3.Connection, target: Path) -> None:
        """Raise :class:`StoreCorruptError` if the copy fails SQLite's ``quick_check``.

        Why: the backup API copies pages as they are, damaged ones too, so a damaged store would give
        a damaged backup reported as a success, and rotating backups would push out the good ones.
        ``quick_check`` reads every page of the copy (not the indexes against their tables, which
        ``mvsync doctor``'s ``integrity_check`` adds), so a backup costs one more read of the store.
        """
        detail = page_damage(copy)
        if detail is None:
            return
        msg = (
            f"the store {self.where} is damaged ({detail}): no backup was written to {target}, so "
            f"older backups stay as they were; `mvsync doctor` checks the store; {RESTORE_HINT}"
        )
        raise StoreCorruptError(msg)

    def check_pages(self, *, every_s: float = 0.0, record: bool = True) -> None:
        """Raise :class:`StoreCorruptError` if a page of the SQLite store is damaged (``quick_check``).

        Why at a run's start: a run reads only the pages it needs, so damage elsewhere (an index, the
        blobs of photos not exported) went unnoticed while runs kept writing into the damaged file,
        and rotating backups were all refused. Why not at every run: ``quick_check`` reads the whole
        file, and the file grows with the photos it keeps (1.1 GB for 25,000 photos of 45 KB: 0.3 s
        from the OS cache, 7 s from a cold disk; a 700,000-user tenant's store is ten times that). So
        the check runs when the last clean one is ``every_s`` old or older (0: every run), and
        ``record`` keeps the time of a clean one in ``store_meta`` (a dry run writes nothing).
        """
        if self.path is None:
            return
        now = time.time()
        with self.faults(), self.engine.connect() as conn:
            last = _float_or_none(read_meta(conn, _PAGES_CHECKED_KEY))
            if every_s > 0 and last is not None and 0 <= now - last < every_s:
                return
            raw = conn.connection.dbapi_connection
            assert isinstance(raw, sqlite3.Connection)
            detail = page_damage(raw)
        if detail is not None:
            raise damaged(self.where, f"{detail}; found by SQLite's quick_check before the run wrote anything")
        if record:
            with self.transaction() as conn:
                write_meta(conn, _PAGES_CHECKED_KEY, repr(now))

    def clear(self) -> None:
        """Delete every row but the schema version: a benchmark reusing one server database starts
        empty. Never used on a production store (it forgets everything the store remembers)."""
        with self.transaction() as conn:
            for table in reversed(metadata.sorted_tables):
                if table.name != "store_meta":
                    conn.execute(table.delete())

    def analyze(self) -> None:
        """Refresh the planner's statistics of every table (after a bulk load)."""
        with self.faults(), self.engine.connect() as conn:
            conn.exec_driver_sql("ANALYZE")
            conn.commit()

    def close(self) -> None:
        """Close the store's connections, then let go of its registration as a reader (if any): once a
        restore finds no reader registered, no connection of this process has the file open."""
        self.engine.dispose()
        self._registration.close()

    @staticmethod
    def now() -> float:
        return time.time()


def _let_go(registration: contextlib.ExitStack) -> None:
    """Let go of a reader's registration whose store was never closed, at collection or at the end of the
    process: its files are removed first; a lock the OS already dropped with its file (at the end of the
    process) is no error to print then."""
    with contextlib.suppress(OSError):
        registration.close()


def _check_sqlite_file(path: Path, *, create: bool) -> None:
    """Refuse a missing store (unless creating one) and an empty one (always).

    SQLite treats a 0-byte file as a new, empty database, so a store truncated to nothing (disk
    full, an interrupted copy) would be rebuilt empty without a word, and the next run would
    re-provision everything. A store mvsync wrote is never empty.
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        if create:
            return
        msg = (
            f"there is no store at {path}: nothing has run with this configuration yet (a run creates it), "
            "or store.url points elsewhere; check store.url in the configuration"
        )
        raise StoreMissingError(msg) from None
    except OSError as exc:
        raise StoreError(f"cannot use the store {path}: {exc.strerror}") from None
    wal = path.with_name(path.name + "-wal")
    if size == 0 and not (wal.is_file() and wal.stat().st_size > 0):
        msg = f"the store {path} is empty (0 bytes): it was truncated (a full disk, a failed copy); {RESTORE_HINT}"
        raise StoreCorruptError(msg)
    _refuse_foreign_database(path)


def _holds_no_schema(path: Path) -> bool:
    """Whether the SQLite file at ``path`` (read alone: the caller has made sure no ``-wal`` holds more) is
    empty or defines nothing: no table, index or view. False when it cannot be read (kept, to be safe).

    Read ``immutable``: without the ``-shm`` file, which a full disk may not let SQLite make.
    """
    if path.stat().st_size == 0:
        return True
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro&immutable=1", uri=True)
    except (sqlite3.Error, ValueError):
        return False
    try:
        return bool(conn.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,))
    except sqlite3.Error:
        return False
    finally:
        conn.close()


def _refuse_foreign_database(path: Path) -> None:
    """Refuse a SQLite file that holds another database's tables and no mvsync store.

    Why: SQLite reads a ``-wal`` file beside the store as part of it, whosever it is (another
    database's, or one kept through a restore), and it can also be store.url that names another
    application's file. A run then found no mvsync store, created one among the other tables and ran
    as a first run: history and connector spaces gone without a word, and the file overwritten with
    the foreign log when it closed. The tables are read on a read-only connection, which never folds
    the ``-wal`` into the file when it closes, so moving that ``-wal`` aside gives the store back.
    A file that cannot be read here is left to the store's own open to name.
    """
    wal = path.with_name(path.name + "-wal")
    logged = wal.is_file() and wal.stat().st_size > 0
    tables = tables_read_only(path)
    if not tables or "store_meta" in tables:
        return
    beside = f"the {wal.name} beside it (SQLite reads it as part of the file)" if logged else "a -wal file"
    msg = (
        f"{path} holds no mvsync store but another database's tables ({', '.join(tables[:5])}): store.url "
        f"names another application's database, or {beside} is not this store's (one left from before a "
        f"restore, or copied in with another file); check store.url, or move {wal.name} aside (keep it until "
        "you know whose it is) and run again; nothing was written"
    )
    raise StoreError(msg, exit_code=EXIT_STORE_CONFIG)


def tables_read_only(path: Path) -> list[str]:
    """The names of the tables in the SQLite database at ``path``, read without writing it ([] if unreadable).

    (A read-only connection to a WAL database may leave empty ``-wal`` and ``-shm`` files it cannot
    remove: they are not removed here, another process may have just opened them; the store's own
    connection removes them when it closes.)
    """
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=1.0)
    except (sqlite3.Error, OSError, ValueError):
        return []
    try:
        rows = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' "
            "ORDER BY name"
        ).fetchall()
    except sqlite3.Error:
        return []
    finally:
        conn.close()
    return [str(row[0]) for row in rows]


def _side_file_advice(side: Path) -> str:
    """What to do about a ``-wal`` or ``-shm`` file beside the store that this account cannot write."""
    advice = (
        "another account's process left it (an admin's sqlite3, mvsync run as another user), or it is set "
        "immutable (ls -l, lsattr for chattr +i); give the account that runs mvsync write access to it (chown or "
        "chmod, chattr -i)"
    )
    if side.name.endswith("-wal"):
        return f"{advice}; never delete a -wal file: it holds writes committed to the store"
    return f"{advice}, or delete it while no process has the store open (SQLite makes it again)"


def _file_identity(path: Path) -> tuple[int, int] | None:
    """(device, file id) of the file at ``path``; None when nothing is there (raises other ``OSError``).

    A file system without file ids gives 0 for every file: such a file is then told apart by presence only.
    """
    try:
        found = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    return found.st_dev, found.st_ino


#: What an unfinished backup copy is called: ``TARGET.partial`` until it is checked and renamed.
PARTIAL_SUFFIX = ".partial"
#: How the names of backup locks begin (``backup-`` and 16 hex digits of the target's path).
_BACKUP_LOCK_PREFIX = "backup-"


def _backup_lock_name(target: Path) -> str:
    """The lock of backups to ``target``: one name per file, whatever the case of its path on Windows."""
    return _BACKUP_LOCK_PREFIX + hashlib.sha256(os.path.normcase(str(target)).encode()).hexdigest()[:16]


def _recorded_target(name: str, record: dict[str, Any]) -> Path | None:
    """The target a backup lock's record names, if it is the target that lock is named after."""
    target = record.get("target")
    if not isinstance(target, str) or not target or _backup_lock_name(Path(target)) != name:
        return None
    return Path(target)


def _remove_partial(partial: Path) -> tuple[int, tuple[Path, OSError] | None] | None:
    """Remove a killed backup's unfinished copy ``partial`` and SQLite's side files of it.

    None when nothing is there; else the copy's size, and the first file that could not be removed
    with why (Windows: another process has it open), or None.
    """
    stale = [f for f in sqlite_files(partial) if f.exists()]
    if not stale:
        return None
    size = partial.stat().st_size if partial.exists() else 0
    for leftover in stale:
        try:
            leftover.unlink()
        except OSError as exc:
            return size, (leftover, exc)
    return size, None


def _dead_partial_note(target: Path) -> tuple[Path, str, bool] | None:
    """Remove the unfinished copy a killed backup to ``target`` left: (that copy, what to say, whether it
    went), or None when there is none."""
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    removed = _remove_partial(partial)
    if removed is None:
        return None
    size, failed = removed
    if failed is not None:
        return (
            partial,
            (
                f"cannot remove {failed[0]}, the unfinished copy of an earlier backup to {target} that was killed "
                f"({failed[1].strerror}): close what holds it, or delete it"
            ),
            False,
        )
    return (
        partial,
        (
            f"removed {partial} ({size} bytes), the unfinished copy of an earlier backup to {target} that was killed "
            "(kill -9, a power loss) before it finished; it was never a backup"
        ),
        True,
    )


def sqlite_files(database: Path) -> list[Path]:
    """``database`` and the side files SQLite may keep beside it (rollback journal, WAL, its index)."""
    return [database, *(database.with_name(database.name + side) for side in ("-journal", "-wal", "-shm"))]


def _check_backup_target(target: Path) -> None:
    """Refuse a backup file that exists, whose folder is missing, or named like an unfinished copy.

    Why the name: a file ending in ``.partial`` is what a backup writes before its copy is checked,
    and the next backup to the file without that ending replaces it as a killed backup's leftover;
    a backup must never be named so.
    """
    if target.name.endswith(PARTIAL_SUFFIX):
        msg = (
            f"{target}: a name ending in {PARTIAL_SUFFIX} is kept for the unfinished copy a backup writes "
            "first (the next backup would replace it as a stopped backup's leftover); choose another name"
        )
        raise StoreError(msg, exit_code=EXIT_STORE_CONFIG)
    if target.exists():
        msg = f"{target} already exists: choose a new file, so an older backup is never overwritten"
        raise StoreError(msg, exit_code=EXIT_STORE_CONFIG)
    if not target.parent.is_dir():
        what = "is not a folder" if target.parent.exists() else "does not exist"
        msg = f"cannot write the backup {target}: {target.parent} {what}; create the folder or choose another path"
        raise StoreError(msg, exit_code=EXIT_STORE_CONFIG)


#: The ``store_meta`` key of when a run's ``quick_check`` last found every page readable (epoch seconds).
_PAGES_CHECKED_KEY = "pages_checked_at"


def _float_or_none(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def page_damage(conn: sqlite3.Connection, check: str = "quick_check") -> str | None:
    """The first problem SQLite's ``quick_check`` (or ``check``: ``integrity_check``, which also compares
    the indexes with their tables) finds in the database of ``conn`` (None: every page reads)."""
    try:
        found = [str(row[0]) for row in conn.execute(f"PRAGMA {check}(3)")]
    except sqlite3.DatabaseError as exc:  # too damaged to check at all
        found = [str(exc)]
    if found == ["ok"]:
        return None
    # SQLite heads its report with "*** in database main ***"; the first problem says more
    return next((line for row in found for line in row.splitlines() if not line.startswith("***")), found[0])
