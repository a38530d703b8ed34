"""Run locks: one run per agent at a time, and one synchronization at a time (the metaverse lock).

SQLite stores use OS file locks beside the database, through ``filelock`` (``flock`` on POSIX,
``LockFileEx`` via ``msvcrt.locking`` on Windows): the operating system drops them when a process
dies, so a crashed or killed run never leaves a stale lock. PostgreSQL stores use session advisory
locks on a dedicated connection. Both record who holds a lock so a refused run can name the holder;
for lock files that record is a separate ``.holder`` file, since Windows forbids reading the
locked bytes of the lock file itself.

An advisory lock lives as long as its session, and a session can end under a running step: a server
restart or failover, a DBA's ``pg_terminate_backend``, a pooler or firewall dropping an idle
connection. The lock is then gone while the step goes on, and a second run could take it and write
the same agent. So the store asks :meth:`LockManager.verify` before each unit of work: a lock whose
session ended stops the step with a store error instead (its committed pages are kept, as after any
stop; history, which is the run's own record, may still be written). The lock's own session is kept
from idling out (``idle_session_timeout`` off for it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import filelock
from filelock import FileLock, Timeout
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from connector.files import atomic_write
from connector.store._faults import LockHeldError, StoreError, first_line, store_faults
from connector.timestamps import local_time

__all__ = ["OPENING_LOCK", "READER_LOCK_PREFIX", "LockManager", "table_lock_holders"]

#: The lock a SQLite store is checked, created or upgraded under when a run opens it (``SqlStore``), and
#: that ``mvsync store restore`` holds while it replaces the file: a run that starts then waits for it.
OPENING_LOCK = "store-open"
#: The names of the locks that processes holding a SQLite store open read-only hold (``reader-PID-TOKEN``):
#: see :meth:`LockManager.register_reader`.
READER_LOCK_PREFIX = "reader-"

log = logging.getLogger("mvsync.store")


#: Locks the OS drops when the holder dies: ``LockFileEx`` on Windows, ``flock`` elsewhere. Without
#: either (a Python built without ``fcntl``) filelock falls back to a lock *file*, which a killed run
#: leaves behind; a refusal then says how to clear it.
_OS_FILE_LOCKS = sys.platform == "win32" or filelock.has_fcntl


def _holder_info(what: str) -> dict[str, Any]:
    return {"lock": what, "pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}


def _read_record(holder_path: Path) -> dict[str, Any] | None:
    """The record a lock's holder left (None: none, or not one mvsync wrote)."""
    with contextlib.suppress(OSError, ValueError):
        record = json.loads(holder_path.read_text(encoding="utf-8") or "null")
        return record if isinstance(record, dict) else None
    return None


def _remove_while_held(path: Path, holder_path: Path) -> None:
    """Remove a lock file and its record before the lock is released, never after.

    Why before: a process that opened the file and waits for it then locks a file no longer at its
    path, which filelock notices (``st_nlink`` 0 after ``flock``) and tries again on the path, where
    only one process can create and lock the new file. Removed after the release, the waiter could
    lock the old file while a third process created and locked a new one: two holders. On Windows
    the open file cannot be removed (the error is ignored): filelock removes it once it is closed,
    where Windows refuses that too while another process has it open.
    """
    for leftover in (holder_path, path):
        with contextlib.suppress(OSError):
            leftover.unlink(missing_ok=True)


def _describe(info: dict[str, Any] | None) -> str:
    """Who holds a lock: the run its holder noted (the engine's ``run`` note), its pid, host and since when."""
    if not info:
        return "another mvsync process"
    since = local_time(float(info.get("since", 0)))
    run = f"{info['run']}, " if isinstance(info.get("run"), str) else ""
    return f"{run}pid {info.get('pid')} on {info.get('host')} since {since}"


class LockManager:
    """Hands out named locks (``agent:<name>``, ``metaverse``) for the duration of a ``with``."""

    def __init__(
        self,
        engine: Engine,
        lock_dir: Path | None,
        where: str = "the store",
        *,
        faults: Callable[[], contextlib.AbstractContextManager[None]] | None = None,
    ) -> None:
        self._engine = engine
        self._lock_dir = lock_dir
        self._where = where
        #: The store's own translation of database errors (``SqlStore.faults``: it knows the connect timeout).
        self._faults = faults or (lambda: store_faults(where))
        #: PostgreSQL locks this process holds: name -> the connection whose session holds it.
        self._held: dict[str, Connection] = {}
        #: Held locks :meth:`verify` found lost, with the message it raised.
        self._lost: dict[str, str] = {}
        #: A SQLAlchemy connection is not for two threads at once: verify() and the release share it.
        self._guard = threading.Lock()

    def verify(self) -> None:
        """Raise :class:`StoreError` if a run lock this process holds was lost with its session.

        One ``SELECT 1`` per held PostgreSQL lock (file locks cannot be lost while the process lives).
        A lock found lost stays lost: every later call raises the same error without asking again.
        """
        with self._guard:
            for name, conn in self._held.items():
                if name in self._lost:
                    raise StoreError(self._lost[name])
                try:
                    conn.exec_driver_sql("SELECT 1")
                    conn.rollback()  # never left "idle in transaction"
                except SQLAlchemyError as exc:
                    reason = first_line(str(getattr(exc, "orig", None) or exc))
                    self._lost[name] = (
                        f"the run lock {name} on the store {self._where} was lost with its database session "
                        f"({reason}; a server restart or failover, a terminated backend or a dropped connection ends "
                        "one): the step stops so that two runs never write the same agent at once; what it committed "
                        "is kept; run it again once the store answers"
                    )
                    raise StoreError(self._lost[name]) from None

    @contextlib.contextmanager
    def hold(
        self,
        name: str,
        *,
        wait_s: float = 0.0,
        transient: bool = False,
        note: dict[str, str] | None = None,
        wait_option: str = "--wait",
    ) -> Iterator[None]:
        """Hold the lock ``name`` for the ``with`` (waiting up to ``wait_s`` for it), or raise ``LockHeldError``.

        ``wait_option``: the option that set ``wait_s``, named in the line that says a wait began ("" for
        a wait no option sets, such as a read-only command's for a restore).

        ``note``: fields added to the record of who holds it (a lock file's ``.holder``), read back by
        :meth:`recorded`. ``transient``: a lock file and its record are removed when it is released, for
        locks named after something that comes and goes (a backup's target: one pair per dated name
        piled up for good otherwise); see :func:`_remove_while_held` for why that is safe.
        """
        if self._engine.dialect.name == "postgresql":
            with self._pg_lock(name, wait_s, wait_option):
                yield
        else:
            with self._file_lock(name, wait_s, transient=transient, note=note or {}, wait_option=wait_option):
                yield

    def free(self, name: str) -> bool:
        """Whether no process holds the lock ``name``, by taking it and letting it go at once (its lock
        file and record, left by a holder that died, go with it)."""
        try:
            with self.hold(name, transient=True):
                return True
        except LockHeldError:
            return False

    def held(self, name: str) -> bool | None:
        """Whether a process holds the lock ``name`` now (None: this process cannot tell), for readers.

        Why not :meth:`free`: a read (``mvsync history list``) must leave the store and the lock
        folder as it found them, and :meth:`free` removes the lock file and holder record a killed
        run left (what ``doctor`` names it by). On PostgreSQL this reads ``pg_locks`` and takes
        nothing. A lock file is taken and let go at once without removing it or its record (on
        Windows the OS lock's own release deletes a lock file nobody holds, as every run's does); no
        lock file means no holder, since a holder creates it before it holds it. A lock folder this
        account cannot open the file in answers None.
        """
        if self._engine.dialect.name == "postgresql":
            with self._faults(), self._engine.connect() as conn:
                return _pg_holder_row(conn, _pg_key(name)) is not None
        if self._lock_dir is None:  # in-memory store: single process by construction
            return None
        path = self._lock_path(self._lock_dir, name)
        if not path.exists():
            return False
        lock = _file_lock(path)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        except OSError:  # (after Timeout, which is one) a folder or file this account cannot open
            return None
        lock.release()
        return False

    def recorded(self, prefix: str) -> list[tuple[str, dict[str, Any]]]:
        """Every lock file of this store whose name starts with ``prefix``, held now or not, with its
        holder's record ({} without one): a lock file stays after its holder was killed."""
        if self._lock_dir is None:
            return []
        try:
            paths = sorted(self._lock_dir.glob(f"{prefix}*.lock"))
        except OSError:
            return []
        return [(path.stem, _read_record(path.with_name(path.name + ".holder")) or {}) for path in paths]

    def other_holders(self) -> list[str]:
        """Who the records of this store's lock files name, other than this process: the mvsync runs
        (and backups) that hold its locks, or held them when they were killed (a record stays then; a
        lock released as usual takes its record with it)."""
        me = (os.getpid(), socket.gethostname())
        records = [record for _name, record in self.recorded("") if record]
        return sorted({_describe(record) for record in records if (record.get("pid"), record.get("host")) != me})

    def live_holders(self, *, besides: str) -> list[str]:
        """Who holds this store's locks now, other than the lock ``besides`` (this process's own): each
        named as a refused run names its holder, with the lock; [] when none is held.

        Why not :meth:`other_holders`: a record stays after its holder was killed, and a killed run holds
        nothing; each lock here is tried (as :meth:`held` does, leaving its file and record as they are).
        """
        return [
            f"{_describe(record)} ({name})" for name, record in self.recorded("") if name != besides and self.held(name)
        ]

    def register_reader(self, who: str, *, wait_s: float) -> contextlib.ExitStack:
        """Register this process as a reader of the SQLite store until the returned stack is closed: a lock
        of its own (``reader-PID-TOKEN``, noted as ``who``), taken while it holds the opening lock (waiting
        up to ``wait_s`` for it). Nothing is held for PostgreSQL or a store in memory.

        Why: read-only commands (``history``, ``cs``, ``mv``, ``doctor``, the console) opened the store
        without a word to ``mvsync store restore``, which could then swap the file under one that opened
        it after the restore's checks (on Linux it read the replaced store for as long as it ran; on
        Windows the rename fails on the open file). The restore holds the opening lock from before its
        checks to after its rename and refuses while any other lock of the store is held, so a reader
        registered under that lock is either seen by the restore (refused, naming ``who``) or waits
        for it and opens the restored file. The OS drops the lock with a killed reader; its files are
        removed by the next registration. Raises ``LockHeldError`` (the opening lock stayed held) or
        ``StoreError`` (a lock folder this account cannot use).
        """
        registration = contextlib.ExitStack()
        if self._lock_dir is None or self._engine.dialect.name == "postgresql":
            return registration
        name = f"{READER_LOCK_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        with self.hold(OPENING_LOCK, wait_s=wait_s, wait_option=""):
            for dead, _record in self.recorded(READER_LOCK_PREFIX):
                self.free(dead)  # a killed reader's files (a live reader's lock is held: left as it is)
            registration.enter_context(self.hold(name, transient=True, note={"run": who}))
        return registration

    # -- SQLite: lock files --------------------------------------------------------------------
    @staticmethod
    def _lock_path(lock_dir: Path, name: str) -> Path:
        """The lock file of the lock ``name`` (``agent:hr`` -> ``agent-hr.lock``)."""
        return lock_dir / (name.replace(":", "-").replace("/", "_") + ".lock")

    @contextlib.contextmanager
    def _file_lock(
        self, name: str, wait_s: float, *, transient: bool, note: dict[str, str], wait_option: str
    ) -> Iterator[None]:
        if self._lock_dir is None:  # in-memory store: single process by construction
            yield
            return
        path = self._lock_path(self._lock_dir, name)
        holder_path = path.with_name(path.name + ".holder")
        lock = _file_lock(path)
        try:
            self._lock_dir.mkdir(parents=True, exist_ok=True)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                if wait_s <= 0:
                    raise
                _say_waiting(name, _describe(_read_record(holder_path)), wait_s, wait_option)
                lock.acquire(timeout=wait_s, poll_interval=0.2)
        except Timeout:
            message = _refusal(name, _describe(_read_record(holder_path)))
            if not _OS_FILE_LOCKS:
                message += f" (this Python has no OS file locks: if no mvsync runs, delete {path})"
            raise LockHeldError(message) from None
        except OSError as exc:  # (after Timeout, which is one) the folder or file cannot be created or opened
            raise StoreError(
                f"cannot take the run lock {path} ({exc.strerror or exc}): the folder {self._lock_dir} beside "
                "the store must be a folder the account that runs mvsync can write; check its permissions, "
                "and that nothing else (a file or folder of that name) is in the way"
            ) from None
        try:
            # Advisory only: on Windows a refused run reading the old record at this instant makes the
            # replace fail, and that must not fail the run that holds the lock.
            with contextlib.suppress(OSError):
                atomic_write(holder_path, json.dumps({**_holder_info(name), **note}).encode(), durable=False)
            yield
        finally:
            if transient:
                _remove_while_held(path, holder_path)
            else:  # the record names who holds the lock: a run that ended holds nothing (its lock file stays)
                with contextlib.suppress(OSError):
                    holder_path.unlink(missing_ok=True)
            lock.release()

    # -- PostgreSQL: advisory locks ---------------------------------------------------------------
    @contextlib.contextmanager
    def _pg_lock(self, name: str, wait_s: float, wait_option: str) -> Iterator[None]:
        """A session advisory lock on a connection held for the ``with``.

        The server releases it when the session ends, including when the holding process is killed.
        The session's ``application_name`` carries the holder (pid, host, start time) so a refused
        run can name it: other sessions see it in ``pg_stat_activity``.
        """
        key = _pg_key(name)
        with self._faults(), self._engine.connect() as conn:
            deadline = time.monotonic() + wait_s
            said = False
            while not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
                if time.monotonic() >= deadline:
                    raise LockHeldError(_refusal(name, _pg_holder_of(conn, key)))
                if not said:
                    _say_waiting(name, _pg_holder_of(conn, key), wait_s, wait_option)
                    said = True
                conn.rollback()
                time.sleep(0.2)
            info = _holder_info(name)
            label = f"mvsync {name} pid={info['pid']} host={info['host']} since={int(info['since'])}"
            conn.execute(text("SELECT set_config('application_name', :n, false)"), {"n": label[:63]})
            if (conn.dialect.server_version_info or (0,)) >= (14,):
                # the session idles for the whole step: a server-wide idle_session_timeout would end it
                conn.execute(text("SELECT set_config('idle_session_timeout', '0', false)"))
            conn.commit()
            with self._guard:  # verify() may be iterating from a worker thread
                self._held[name] = conn
            try:
                yield
            finally:
                with self._guard:
                    del self._held[name]
                    self._lost.pop(name, None)
                    _pg_release(conn, key)


def _file_lock(path: Path) -> FileLock:
    """The OS lock on the lock file ``path``, as every lock of a SQLite store takes it.

    thread_local=False: the lock belongs to the run, not to the thread that happened to take it;
    is_singleton=False: a second hold() in this process must be refused like another process;
    fallback_to_soft=False: a "soft" lock (a file that exists) would wedge every later run after a crash.
    """
    return FileLock(path, thread_local=False, is_singleton=False, fallback_to_soft=False)


def _pg_key(name: str) -> int:
    """The advisory lock key of the lock ``name`` (a signed 64-bit number from its SHA-256)."""
    return int.from_bytes(hashlib.sha256(f"mvsync:{name}".encode()).digest()[:8], "big", signed=True)


def _pg_release(conn: Connection, key: int) -> None:
    """Unlock, or, when the session already ended (the store restarted), let it go: its lock went with it.

    Never raises: a release runs while a step's own error (often the same outage) is on its way out.
    """
    try:
        conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        conn.execute(text("SELECT set_config('application_name', '', false)"))
        conn.commit()
    except SQLAlchemyError:  # the session is gone (or verify() found it gone and left its transaction invalid)
        with contextlib.suppress(SQLAlchemyError):
            conn.rollback()
        conn.invalidate()  # not back into the pool


def _pg_holder_of(conn: Connection, key: int) -> str:
    """Who holds the advisory lock ``key`` (another session), as :func:`_pg_holder` describes it."""
    return _pg_holder(_pg_holder_row(conn, key))


def _pg_holder_row(conn: Connection, key: int) -> Any:
    """``(backend pid, application_name, client address)`` of the session holding the advisory lock
    ``key``, or None when no session holds it: a read of ``pg_locks``, which takes no lock."""
    row = conn.execute(
        text(
            "SELECT a.pid, a.application_name, a.client_addr FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid "
            "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.classid = ((:k >> 32) & 4294967295)::oid AND l.objid = (:k & 4294967295)::oid "
            "LIMIT 1"
        ),
        {"k": key},
    ).first()
    conn.rollback()
    return row


def _pg_holder(row: Any) -> str:
    """Describe the backend holding an advisory lock (from its mvsync application_name if set)."""
    if row is None:
        return "another mvsync process"
    pid, app, addr = row
    fields = dict(part.split("=", 1) for part in str(app or "").split() if "=" in part)
    if "pid" in fields and "host" in fields:
        return _describe({"pid": fields["pid"], "host": fields["host"], "since": fields.get("since", 0)})
    return f"PostgreSQL backend pid {pid}" + (f" from {addr}" if addr else "")


def _say_waiting(name: str, who: str, wait_s: float, option: str) -> None:
    """Say once that a run waits for a lock (``--wait``, the ``option``), and for whom: a scheduled run that
    took five minutes must say why in its log, not only when the wait ran out."""
    log.warning("%s is locked by %s; waiting up to %g s for it%s", name, who, wait_s, f" ({option})" if option else "")


def _refusal(name: str, who: str) -> str:
    return f"{name} is locked by {who}; wait for it to finish, or rerun with --wait SECONDS"


def table_lock_holders(engine: Engine, tables: list[str]) -> str | None:
    """Who holds locks on ``tables`` of a PostgreSQL store in a transaction begun a ``lock_timeout`` (the
    store's sessions') or more ago, or since a time this role may not see (another role's session, a
    DBA's ``VACUUM FULL``, without ``pg_read_all_stats``): what a run stopped by that timeout says (None:
    nobody found, or the query failed).

    Why: once the run's wait is over, ``pg_blocking_pids()`` of its pid names nobody, and the operator
    is left to search ``pg_stat_activity``. A session whose transaction is older than the wait held
    its locks all through it (another mvsync run's units of work are shorter); up to three are named
    with pid, user, application, client address, state and since when, never the query (the person
    data a statement typed by hand may carry).
    """
    query = text(
        "SELECT a.pid, a.usename, a.application_name, host(a.client_addr), a.state, "
        "extract(epoch FROM a.xact_start), string_agg(DISTINCT l.mode || ' on ' || c.relname, ', ') "
        "FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid JOIN pg_class c ON c.oid = l.relation "
        "WHERE l.granted AND l.locktype = 'relation' AND c.relname = ANY(:tables) AND a.pid <> pg_backend_pid() "
        "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
        "AND (a.xact_start IS NULL OR a.xact_start <= now() - current_setting('lock_timeout')::interval) "
        "GROUP BY a.pid, a.usename, a.application_name, a.client_addr, a.state, a.xact_start "
        "ORDER BY a.xact_start NULLS LAST LIMIT 3"
    )
    try:
        with engine.connect() as conn:
            rows = conn.execute(query, {"tables": tables}).all()
    except SQLAlchemyError:  # the store's own trouble is already being said
        return None
    if not rows:
        return None
    held = "; ".join(_lock_holder(*row) for row in rows)
    return (
        f"held by {held}: end that transaction (COMMIT or ROLLBACK in its session) or, if it was forgotten, "
        "SELECT pg_terminate_backend(PID)"
    )


def _lock_holder(
    pid: int, user: str, app: str | None, addr: str | None, state: str | None, since: float | None, locks: str
) -> str:
    """One session holding a lock on the store's tables, as :func:`table_lock_holders` names it.

    Another role's session shows no state, address or start to a role without ``pg_read_all_stats``
    (PostgreSQL hides them): it is named all the same, with what to grant to see the rest.
    """
    where = f", from {addr}" if addr else ""
    if state is None or since is None:
        hidden = "its state is hidden from this role: GRANT pg_read_all_stats TO it to see more"
        return f"pid {pid} (user {user}, application {app or '-'}{where}, {locks}; {hidden})"
    started = local_time(float(since))
    return f"pid {pid} (user {user}, application {app or '-'}{where}, {state} since {started}, {locks})"
