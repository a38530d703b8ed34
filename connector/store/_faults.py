"""Store faults an operator can act on: read-only, corrupt, busy, missing or empty.

Why: at 03:00 a SQLAlchemy traceback ("attempt to write a readonly database") tells the operator
neither which file nor what to do, and exit code 1 says "a bug" to the scheduler. Every database
error that reaches the store's boundary is turned into one of these, naming the file and the
remedy, with the documented exit code it ends with:

* :class:`StoreBusyError` (5, like any lock): another process holds the database (a backup agent,
  antivirus, a ``BEGIN EXCLUSIVE``); it is a :class:`LockHeldError` so the engine records the run
  as ``stopped-locked``;
* :class:`StoreReadOnlyError` and :class:`StoreCorruptError` (4, a stop): the run cannot go on;
* :class:`StoreMissingError` (2): a read-only command pointed at a store that does not exist, or
  holds no mvsync tables yet (it never creates one: a typo in ``store.url`` must not look like an
  empty history).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

__all__ = [
    "EXIT_STORE_CONFIG",
    "EXIT_STORE_LOCKED",
    "EXIT_STORE_STOPPED",
    "RUN_CONNECTIONS",
    "DamagedDocumentError",
    "LockHeldError",
    "StoreBusyError",
    "StoreCorruptError",
    "StoreError",
    "StoreMissingError",
    "StoreReadOnlyError",
    "StoreUnreachableError",
    "damaged",
    "database_busy",
    "empty_store",
    "first_line",
    "folder_write_advice",
    "read_only_server",
    "store_faults",
]

#: The CLI's documented exit codes (connector/cli/_common.py), repeated here so the store does not
#: import the CLI: configuration (2), a stop (4), a lock (5).
EXIT_STORE_CONFIG = 2
EXIT_STORE_STOPPED = 4
EXIT_STORE_LOCKED = 5

#: Where to read about restoring a store (the README section's title).
RESTORE_HINT = (
    "restore it from a backup `mvsync store backup` wrote (README: Backup and restore: `mvsync store restore "
    "BACKUP` keeps the damaged file beside it, then run `mvsync doctor`), or move it aside to start afresh with a "
    "full cycle"
)


class LockHeldError(Exception):
    """Another mvsync process holds a lock this run needs (a run lock, or the database itself)."""


class StoreError(Exception):
    """The store cannot be opened or used; the message says what to check."""

    #: The exit code the CLI ends with (see the module docstring).
    exit_code = EXIT_STORE_STOPPED
    #: The run status history records for it, where the store can still be written.
    status = "stopped-store-error"
    #: Whether the store added its note on the cause (``SqlStore.faults``), which it does once.
    noted = False

    def __init__(self, message: str, *, exit_code: int | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code
        if self.exit_code == EXIT_STORE_CONFIG:
            # a store.url, a backup target or a driver to fix: the status of exit code 2 (README:
            # Exit codes), which a script reading --json's failure object branches on as on the code
            self.status = "stopped-configuration"

    def at(self, where: str) -> StoreError:
        """This error naming the store ``where`` it was met in: itself, for the faults that name it when
        raised (see :class:`DamagedDocumentError` for one that cannot)."""
        return self


class StoreReadOnlyError(StoreError):
    """The store (or its folder) cannot be written: file mode, ``chattr +i``, a read-only mount."""


class StoreCorruptError(StoreError):
    """The store file is damaged: truncated, overwritten, or not a database at all."""

    status = "stopped-store-corrupt"


def damaged(where: str, detail: str) -> StoreCorruptError:
    """The one answer to damage found in the store ``where``: what is damaged, how to restore, ``doctor``."""
    return StoreCorruptError(f"the store {where} is damaged ({detail}): {RESTORE_HINT}; `mvsync doctor` checks it")


def empty_store(where: str) -> StoreMissingError:
    """The one answer to a store that holds no mvsync tables: a new PostgreSQL database (what README:
    Production store on PostgreSQL has the operator create), or a SQLite file whose first run stopped
    before it created them. Like a missing store (exit 2 for a read-only command; a warning in
    ``mvsync doctor``): nothing is lost, the first run creates the tables."""
    return StoreMissingError(
        f"the store {where} is empty: it holds no mvsync tables yet (a new database, or a first run that stopped "
        "before it created them); the first `mvsync run` creates them, or store.url points elsewhere: check it"
    )


def folder_write_advice(folder: Path) -> str:
    """What to do about a folder a copy of the store (a backup, a restored store) cannot be written into.

    Why one sentence for both: SQLite says only "unable to open database file", which names neither the
    folder nor its permissions; ``store backup`` said just that where ``store restore`` named the folder.
    """
    return (
        f"the account that runs mvsync must be able to write the folder {folder}, on a file system mounted read-write"
    )


def database_busy(where: str, detail: str) -> StoreBusyError:
    """The one answer to a SQLite store whose database another process holds (``detail``: SQLite's
    words, or how long the run waited): who that may be, and what to do."""
    return StoreBusyError(
        f"the store {where} is busy: another process holds its database lock ({detail}), such as a backup "
        "or antivirus scan, or a tool with the file open; let it finish, or rerun with --wait SECONDS"
    )


class DamagedDocumentError(StoreCorruptError):
    """A JSON document of a row reads (its page is sound) but is not JSON: bytes changed on the disk.

    Why a store fault: SQLite checks a page's structure, not the text in it, so damage inside a
    value passes ``quick_check`` and reached the engine as a ``JSONDecodeError`` (a step stopped as a
    connector's exception). The decoder names the table, row and column; the store that read the row
    adds its file or URL (:meth:`at`), so the message is :func:`damaged`'s. The same holds for any stored
    value read before the store can name itself (``store_meta``'s schema version: see ``current_version``).
    """

    def __init__(self, detail: str, where: str | None = None) -> None:
        self.detail, self.where = detail, where
        super().__init__(str(damaged(where or "(store.url in the configuration)", detail)))

    def at(self, where: str) -> DamagedDocumentError:
        """This error naming the store it was read from (itself if it names one already)."""
        return self if self.where is not None else DamagedDocumentError(self.detail, where)


class StoreUnreachableError(StoreError):
    """The store's server refused or dropped the connection, or did not answer, for now: down, starting
    or restarting, full, or its database closed to connections. Exit 4 like any store fault; a console
    (``mvsync ui``) starts anyway and serves its pages once the store answers."""


class StoreMissingError(StoreError):
    """A read-only command found no store where the configuration points."""

    exit_code = EXIT_STORE_CONFIG


class StoreBusyError(StoreError, LockHeldError):
    """Another process holds the store's database lock longer than this run may wait."""

    exit_code = EXIT_STORE_LOCKED
    status = "stopped-locked"


def classify(exc: DBAPIError, where: str, connect_timeout_s: float | None = None) -> StoreError | None:
    """The store fault ``exc`` stands for (None: not one the operator can act on: a bug).

    ``connect_timeout_s``: how long a connection attempt could take, named when the server never answered.
    """
    orig = exc.orig
    name = str(getattr(orig, "sqlite_errorname", "") or "")
    text = str(orig)
    if name.startswith("SQLITE_READONLY") or "readonly database" in text:
        return StoreReadOnlyError(
            f"the store {where} is read-only ({text}): check the file's and its folder's permissions "
            "(ls -l, lsattr for chattr +i) and that the file system is mounted read-write"
        )
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in text or "not a database" in text:
        return damaged(where, text)
    if "Could not decode to UTF-8" in text:  # Python's sqlite3 reading a text value whose bytes were damaged
        return damaged(where, _not_utf8(text))
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "database is locked" in text:
        return database_busy(where, text)
    if name.startswith("SQLITE_FULL") or "database or disk is full" in text:
        return StoreError(
            f"the store {where} cannot grow: the disk is full ({text}); free space on that volume (the store "
            "also needs room for its -wal file) and run again: what was committed before is kept"
        )
    if name.startswith(("SQLITE_CANTOPEN", "SQLITE_IOERR", "SQLITE_PERM")):
        return StoreError(f"cannot use the store {where} ({text}): check the disk, the path and its permissions")
    sqlstate = getattr(orig, "sqlstate", None)
    first = first_line(text)
    if sqlstate == "25006":  # PostgreSQL's read_only_sql_transaction
        return StoreReadOnlyError(
            f"the store {where} is read-only: the server refused a write ({first}); store.url "
            "may point at a standby (a read replica) or at a database set default_transaction_read_only "
            f"(`mvsync doctor` says which): point it at the primary ({_FOLLOW_PRIMARY})"
        )
    if sqlstate == "42501":  # insufficient_privilege
        return _privilege_refused(where, first, exc.statement)
    if sqlstate == "55P03":  # PostgreSQL's lock_not_available: lock_timeout ran out
        return StoreBusyError(
            f"the store {where} is busy: another session holds a lock on its tables ({first}), such as a "
            "VACUUM FULL, a REINDEX or a transaction left open (pg_stat_activity, pg_blocking_pids() show which); "
            "let it finish and run again: what was committed before is kept"
        )
    if sqlstate == "53100":  # PostgreSQL's disk_full: "could not extend file ...: No space left on device"
        return StoreError(
            f"the store {where} cannot grow: the database server's disk is full ({first}); free space on the "
            "server's volume that holds the file named (its data directory, or a tablespace's folder: "
            "pg_tblspc/OID is the tablespace of that oid in pg_tablespace) and run again: what was committed "
            "before is kept"
        )
    if sqlstate in ("53200", "53400"):  # PostgreSQL's out_of_memory, configuration_limit_exceeded
        hint = getattr(getattr(orig, "diag", None), "message_hint", None)
        return StoreError(_server_limit(where, sqlstate, first + (f"; {hint}" if hint else "")))
    if sqlstate == "57014":  # PostgreSQL's query_canceled: a statement_timeout, or pg_cancel_backend
        return StoreError(
            f"the store {where} canceled a statement ({first}): a statement_timeout set for the role or the "
            "database (SHOW statement_timeout) or a DBA (pg_cancel_backend) ended it, often while it waited for "
            "a lock; what was committed before is kept; run again, and if the timeout is the cause, lift it for "
            "mvsync's role (ALTER ROLE NAME SET statement_timeout = 0)"
        )
    if "invalid connection option" in text:  # psycopg: a query parameter of the URL libpq does not know
        return StoreError(
            f"store.url {where}: {first_line(text)}: its query takes libpq's connection parameters, in lower "
            "case (sslmode, connect_timeout, password ...); correct or remove it",
            exit_code=EXIT_STORE_CONFIG,
        )
    if type(orig).__name__ == "ConnectionTimeout":  # psycopg's: the host took the connection, nothing answered
        return StoreUnreachableError(_no_answer(where, connect_timeout_s))
    if not name and (exc.connection_invalidated or type(orig).__name__ == "OperationalError"):
        # PostgreSQL: the server is down, refuses the login, or dropped the connection
        return _connection_refused(where, text)
    return None


#: What to do when the server ended a session under a unit of work: a restart or failover, a DBA's
#: ``pg_terminate_backend``, a dropped connection. Each unit (an import page, a sync chunk, an export
#: batch) is one transaction, so the one cut short is rolled back and the ones before it are kept.
_SESSION_ENDED = (
    "the server ended the session (a restart or failover, pg_terminate_backend, a dropped connection): what was "
    "committed before is kept; run again once the store answers (pg_isready -h HOST -p PORT)"
)

#: How libpq (or the server) says that a session ended under it.
_SESSION_ENDED_PHRASES = (
    "terminating connection",
    "server closed the connection unexpectedly",
    "connection is lost",
    "consuming input failed",
)

#: What to do when store.url's host and port answer, but not as PostgreSQL does (an HTTP or SSH server there).
_NOT_POSTGRESQL = (
    "the service at that host and port is not PostgreSQL (its first answer is none PostgreSQL sends: a web, SSH "
    "or other server listens there): correct the host or port in store.url (PostgreSQL's is 5432 unless set "
    "otherwise) and check it with pg_isready -h HOST -p PORT"
)

#: How libpq says that the first answer to its connection request was not PostgreSQL's.
_NOT_POSTGRESQL_PHRASES = (
    "received invalid response to SSL negotiation",
    "received invalid response to GSSAPI negotiation",
    "expected authentication request from server",
)

#: How many sessions a run holds, for the advice on a connection limit: one for each of its locks, which
#: lives as long as its session (see ``_locks``), and one for its units of work.
_RUN_SESSIONS = (
    "a run holds up to four connections at once (a session for each of its locks: the run's, the agent's and, "
    "while it synchronizes, the metaverse's; and one for its work)"
)
#: The number :data:`_RUN_SESSIONS` says ("four"): a connection limit below it stops every run (``mvsync doctor``).
RUN_CONNECTIONS = 4

#: What to do at a limit of the PostgreSQL server, by the setting its words name (the first found).
_SERVER_LIMIT_ADVICE = (
    (
        "max_locks_per_transaction",
        "its shared lock table is full: sessions hold locks on many tables at once (pg_locks shows which pids hold "
        "the most; each of mvsync's holds a few): end the session that holds them, or raise "
        "max_locks_per_transaction (postgresql.conf; it takes a server restart)",
    ),
    (
        "temp_file_limit",
        "a statement spilled more to temporary files than temp_file_limit allows (a sort, or a page or chunk of "
        "rows, larger than work_mem): raise it for mvsync's role (ALTER ROLE NAME SET temp_file_limit = '1GB', or "
        "-1 for none) or the role's work_mem (an import step with a smaller page_size spills less)",
    ),
)


#: What to do about a PostgreSQL connection the server or libpq refused, by a phrase of libpq's (or the
#: server's) message, which carries no SQLSTATE on a failed connection. The message says which host,
#: port, user and database (the store's URL, password masked); this says what to change. A phrase not
#: here (another language, another cause) keeps libpq's message alone.
_CONNECTION_ADVICE: tuple[tuple[str, str], ...] = (
    *((phrase, _NOT_POSTGRESQL) for phrase in _NOT_POSTGRESQL_PHRASES),
    *((phrase, _SESSION_ENDED) for phrase in _SESSION_ENDED_PHRASES),
    (
        "password authentication failed",
        "the server refused this user's password: check the user and the password in store.url (or in the "
        "environment variable it comes from; percent-encode @ / ? # in it) against the role's password on the "
        "server (ALTER ROLE NAME PASSWORD ...)",
    ),
    (
        "does not exist",
        "create the database or the role on the server (CREATE DATABASE NAME OWNER ROLE; CREATE ROLE NAME LOGIN "
        "PASSWORD ...), or correct the name in store.url",
    ),
    (
        "pg_hba.conf",
        "the server's pg_hba.conf admits no such connection (this client's address, user and database, with or "
        "without TLS as the message says): ask its administrator for a line for them and a reload of PostgreSQL; "
        "where the line is hostssl, connect with TLS (sslmode=require or verify-full in store.url)",
    ),
    (
        "server does not support SSL",
        "store.url asks for TLS (sslmode) and this server offers none: enable TLS on the server (ssl = on with a "
        "certificate), or point store.url at the server that has it",
    ),
    (
        "certificate",
        "the server's TLS certificate could not be verified: give store.url the CA that issued it "
        "(sslrootcert=PATH) and the host name the certificate names",
    ),
    (
        "Connection refused",
        "check that PostgreSQL runs at that host and port and listens there (pg_isready -h HOST -p PORT; "
        "listen_addresses), and that no firewall is in the way; then run again",
    ),
    (
        "failed to resolve host",
        "check the host name in store.url and the DNS of this machine",
    ),
    (
        "too many clients",
        "the server has no connection left (max_connections): run again later, or ask its administrator "
        f"({_RUN_SESSIONS})",
    ),
    (
        "remaining connection slots are reserved",  # a server at max_connections, to a role not a superuser
        "the server has no connection left (max_connections, less those reserved for superusers): run again later, "
        f"or ask its administrator ({_RUN_SESSIONS})",
    ),
    (
        "too many connections for role",
        "the role's connection limit is reached (ALTER ROLE NAME CONNECTION LIMIT N; rolconnlimit in pg_roles): its "
        f"other sessions (another mvsync run, the console, other tools) hold the rest, and {_RUN_SESSIONS}: raise the "
        "limit, or run again once the others end",
    ),
    (
        "too many connections for database",
        "the database's connection limit is reached (ALTER DATABASE NAME CONNECTION LIMIT N; datconnlimit in "
        f"pg_database; 0 closes it, for maintenance), and {_RUN_SESSIONS}: run again once it is open, or raise the "
        "limit",
    ),
    (
        "the database system is",
        "the server is starting, stopping or recovering: run again once it answers (pg_isready -h HOST -p PORT)",
    ),
    _SERVER_LIMIT_ADVICE[0],  # a full lock table refuses a new session too ("FATAL: out of shared memory")
    (
        "is not currently accepting connections",
        "the database is closed to connections (ALTER DATABASE ... ALLOW_CONNECTIONS false, for maintenance): run "
        "again once it is open",
    ),
)

#: The phrases of :data:`_CONNECTION_ADVICE` that say the server is away for now rather than that the
#: connection is wrong (a password, a database name, pg_hba.conf, TLS): :class:`StoreUnreachableError`.
_SERVER_AWAY = (
    *_SESSION_ENDED_PHRASES,
    "Connection refused",
    "too many clients",
    "remaining connection slots are reserved",
    "too many connections for",
    "the database system is",
    "is not currently accepting connections",
    "max_locks_per_transaction",
)


#: How ``store.url`` follows the primary through a failover: libpq's documented way (a list of hosts
#: with ``target_session_attrs``), where a fixed host or a DNS name may come to name a standby.
_FOLLOW_PRIMARY = (
    "to follow a failover, name every server in store.url (?host=A:5432&host=B:5432) with "
    "target_session_attrs=read-write: libpq then connects to whichever of them is the primary"
)

#: How to lift ``default_transaction_read_only`` where it was set (``pg_settings.source``; {role}, {database}).
_READ_ONLY_RESET = {
    "database": "ALTER DATABASE {database} RESET default_transaction_read_only",
    "user": "ALTER ROLE {role} RESET default_transaction_read_only",
    "database user": "ALTER ROLE {role} IN DATABASE {database} RESET default_transaction_read_only",
    "configuration file": "default_transaction_read_only in postgresql.conf or by ALTER SYSTEM, then a reload",
    "client": "-c default_transaction_read_only=on in store.url's options or in PGOPTIONS: remove it",
}


def read_only_server(where: str, server: str, *, standby: bool, source: str, role: str, database: str) -> str:
    """Why no transaction can write the PostgreSQL store ``where``, as the ``server`` (host:port) that
    answered said: a hot standby, or ``default_transaction_read_only`` on for ``role`` in ``database``,
    with where it was set (``source``, from ``pg_settings``) and how to lift it.

    Why both name the server: after a failover a DNS name, or a fixed host, can come to name the
    replica, and the URL alone does not say which machine answered.
    """
    if standby:
        return (
            f"the store {where} is a hot standby, a read-only replica ({server} answered, and pg_is_in_recovery() "
            f"is true there): no run, nor dry run, can write it; point store.url at the primary ({_FOLLOW_PRIMARY})"
        )
    lift = _READ_ONLY_RESET.get(source, "where it was set: " + source).format(role=role, database=database)
    return (
        f"the store {where} is set read-only: default_transaction_read_only is on for this role on {server} "
        f"(set in: {source}), so every transaction refuses writes (a DBA's freeze): no run, nor dry run, can write "
        f"it; once the freeze ends, lift it ({lift})"
    )


def _connection_refused(where: str, text: str) -> StoreError:
    """The store fault of a failed PostgreSQL connection: libpq's reason on one line, and what to do.

    A libpq parameter with a value it does not take (``sslmode=bogus``: "connection is bad: invalid sslmode
    value") is a configuration error (exit 2), like one it does not know.
    """
    reason = "; ".join(part.strip() for part in text.strip().splitlines() if part.strip())
    if reason.startswith("connection is bad: invalid "):
        msg = f"store.url {where}: {reason}: correct that parameter of its query (libpq's connection parameters)"
        return StoreError(msg, exit_code=EXIT_STORE_CONFIG)
    advice = next((hint for phrase, hint in _CONNECTION_ADVICE if phrase in reason), None)
    away = any(phrase in reason for phrase in _SERVER_AWAY)
    fault = StoreUnreachableError if away else StoreError
    return fault(f"cannot use the store {where}: {reason}" + (f"; {advice}" if advice else ""))


def _server_limit(where: str, sqlstate: str, said: str) -> str:
    """A statement the PostgreSQL server ended at one of its limits: out of memory (53200, of which its
    lock table is one) or a configured limit (53400), with the server's words and hint, and what to do.

    Why a store fault: each was an unknown database error, a traceback at the store's creation and a
    step blamed on the connector (stopped-connector-exception) later, with no word of the setting.
    """
    advice = next((hint for setting, hint in _SERVER_LIMIT_ADVICE if setting in said), None)
    if advice is None and sqlstate == "53200":
        advice = (
            "the server is short of memory: check its memory against shared_buffers, work_mem and its other "
            "sessions (its log says which allocation failed)"
        )
    return (
        f"the store {where}: the database server refused a statement at one of its limits ({said}): "
        f"{advice or 'raise the setting its words name (SHOW NAME; ALTER ROLE NAME SET NAME = ...)'}; what was "
        "committed before is kept; run again once that is done"
    )


def _privilege_refused(where: str, first: str, statement: str | None) -> StoreError:
    """A PostgreSQL role refused a read or a write on mvsync's tables, and the grant it lacks.

    Why the statement: a read-only command (history, the console) as an auditor's role without SELECT
    was told the store refused a write and to grant the writes a run needs.
    """
    if (statement or "").lstrip().upper().startswith("SELECT"):
        return StoreError(
            f"the store {where} refused this role a read ({first}): grant it SELECT on mvsync's tables (a role "
            "that runs mvsync also needs INSERT, UPDATE and DELETE: README: Production store on PostgreSQL)"
        )
    return StoreReadOnlyError(
        f"the store {where} refused this role a write ({first}): grant it SELECT, INSERT, "
        "UPDATE and DELETE on mvsync's tables (README: Production store on PostgreSQL)"
    )


def _not_utf8(text: str) -> str:
    """What Python's "Could not decode to UTF-8 column 'C' with text '...'" says, without the value.

    Why not the value: it is the damaged row's text, a person's data, which messages and logs do not carry.
    """
    column = re.search(r"column '([^']*)'", text)
    return f"a value of its column {column.group(1) if column else '?'} is not UTF-8 text: its bytes were changed"


def _no_answer(where: str, connect_timeout_s: float | None) -> str:
    """Why a connection attempt to a PostgreSQL store timed out, and what to check."""
    within = f"{connect_timeout_s:g} s" if connect_timeout_s else "the connect timeout"
    return (
        f"cannot use the store {where}: no answer within {within} (its host accepts connections but no PostgreSQL "
        "answers: a hung or overloaded server, or a firewall or proxy that holds the connection); check that "
        "PostgreSQL runs at the host and port in store.url (pg_isready -h HOST -p PORT) and run again; over a slow "
        "network give store.url a longer connect_timeout=SECONDS"
    )


def _no_connection_free(where: str, pool_wait_s: float | None) -> str:
    """Why a statement got no connection from the pool: every one this process may open is taken.

    Why a store fault: the console's pages left waiting on a hung server keep their connections, and
    once they hold them all, the next page waited for one and got SQLAlchemy's ``TimeoutError``: a bare
    "Internal Server Error" and tracebacks, where the store's 503 page belongs. The pool's wait is the
    store's ``BUSY_TIMEOUT_S`` on PostgreSQL (see ``SqlStore``), ``pool_wait_s`` here.
    """
    within = f"within {pool_wait_s:g} s" if pool_wait_s else "in time"
    return (
        f"cannot use the store {where}: no connection to it came free {within}, every one this "
        "process may open still waits for the store's answer (a hung or overloaded server, or a network that "
        "drops its packets); check that it runs (for PostgreSQL: pg_isready -h HOST -p PORT)"
    )


def first_line(text: str) -> str:
    """A database error's first line: PostgreSQL adds ``LINE``/caret lines that say nothing to an operator."""
    return next(iter(text.strip().splitlines()), "")


@contextlib.contextmanager
def store_faults(
    where: str, *, connect_timeout_s: float | None = None, pool_wait_s: float | None = None
) -> Iterator[None]:
    """Turn database errors inside the ``with`` into the store fault they stand for (``pool_wait_s``: how
    long a statement waits for a free connection, named when none came)."""
    try:
        yield
    except DamagedDocumentError as exc:  # decoded while reading: this store's
        raise exc.at(where) from None
    except PoolTimeoutError:
        raise StoreUnreachableError(_no_connection_free(where, pool_wait_s)) from None
    except DBAPIError as exc:
        fault = classify(exc, where, connect_timeout_s)
        if fault is None:
            raise
        raise fault from None
