"""``mvsync store restore BACKUP``: a backup put back in place of a SQLite store, as a careful file operation.

Why not ``cp``: a backup copied over the store by hand left the old store's ``-wal`` and ``-shm``
beside it, and SQLite read that log as part of the restored file (the old store's last writes folded
into the backup: silent damage), or mvsync refused it as another database's log. Here the backup is
checked first (:func:`check_backup`); then, while no other process has the store open, the backup is
copied to a file beside the store, the store it replaces is moved aside whole (its log folded into it,
or moved with it) under a name that says when, and the copy takes its place with one atomic rename
(:func:`restore_store`). Anything that fails before that rename leaves the store as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import create_engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import StaticPool

from connector.files import fsync_dir, processes_with_open
from connector.logging import mask_url
from connector.store._faults import (
    EXIT_STORE_CONFIG,
    DamagedDocumentError,
    LockHeldError,
    StoreBusyError,
    StoreError,
    folder_write_advice,
)
from connector.store._locks import OPENING_LOCK, LockManager
from connector.store._migrations import SCHEMA_VERSION, current_version
from connector.store._sql import PARTIAL_SUFFIX, page_damage, parse_store_url, sqlite_files, tables_read_only

__all__ = ["CheckedBackup", "Restored", "check_backup", "restore_store", "sqlite_store_path"]

#: What is said after every refusal or failure: the store is as it was.
_UNCHANGED = "the store was left as it was"


@dataclass(frozen=True)
class CheckedBackup:
    """A backup :func:`check_backup` found sound: its file, its schema version and its size in bytes."""

    path: Path
    schema_version: int
    size: int


@dataclass(frozen=True)
class Restored:
    """What :func:`restore_store` did: the store it wrote, from which backup, and where the store it
    replaced went (None: there was none), with the side files moved with it (a log it could not fold in)."""

    store: Path
    backup: CheckedBackup
    previous: Path | None
    moved: list[Path] = field(default_factory=list)


def sqlite_store_path(url: str) -> Path:
    """The SQLite file ``store.url`` names; any other store is refused (exit 2): PostgreSQL's is pg_restore's."""
    parsed = parse_store_url(url)
    database = parsed.database or ""
    if parsed.get_backend_name() == "sqlite" and database not in ("", ":memory:"):
        return Path(database)
    if parsed.get_backend_name() == "postgresql":
        msg = (
            f"the store {mask_url(url)} is a PostgreSQL database: restore it with pg_restore from a pg_dump file "
            "(README: Backup and restore); `mvsync store restore` puts back SQLite stores only"
        )
    else:
        msg = f"store.url {mask_url(url)} names no SQLite file: `mvsync store restore` puts back SQLite stores only"
    raise StoreError(msg, exit_code=EXIT_STORE_CONFIG)


def _refused(backup: Path, why: str) -> StoreError:
    """A backup that cannot be restored (exit 2: the command's argument is to change, not the store)."""
    return StoreError(f"cannot restore from {backup}: {why}; {_UNCHANGED}", exit_code=EXIT_STORE_CONFIG)


def check_backup(backup: Path, store: Path) -> CheckedBackup:
    """``backup`` if it can be restored over ``store``, else a refusal naming it (exit 2).

    It must be a readable SQLite file other than the store, pass SQLite's ``integrity_check`` (every
    page, and the indexes against their tables), and hold an mvsync store whose schema this mvsync
    opens: an older one is restored and upgraded by the next run as usual; a newer one is refused, as
    a run would refuse it after the restore.
    """
    if not backup.is_file():
        raise _refused(backup, "it is a folder" if backup.is_dir() else "there is no such file")
    if backup.name.endswith(PARTIAL_SUFFIX):
        raise _refused(backup, "it is the unfinished copy of a backup that was stopped, never a backup")
    with contextlib.suppress(OSError):
        if store.exists() and os.path.samefile(backup, store):
            raise _refused(backup, "it is the store itself (store.url names it): name a backup file")
    size = backup.stat().st_size
    if size == 0:
        raise _refused(backup, "it is empty (0 bytes): a truncated or failed copy")
    version = _sound_version(backup)
    if version > SCHEMA_VERSION:
        raise _refused(
            backup,
            f"it has schema version {version}, newer than this mvsync understands ({SCHEMA_VERSION}): a newer "
            "mvsync wrote it; upgrade mvsync here first",
        )
    if version == 0:
        tables = tables_read_only(backup)
        held = f" but another database's tables ({', '.join(tables[:5])})" if tables else ""
        raise _refused(backup, f"it holds no mvsync store{held}")
    return CheckedBackup(backup, version, size)


def _sound_version(backup: Path) -> int:
    """The schema version the backup holds (0: none) once ``integrity_check`` passed, read without writing it."""
    uri = f"{backup.resolve().as_uri()}?mode=ro"
    engine = create_engine(
        "sqlite://", creator=lambda: sqlite3.connect(uri, uri=True, timeout=1.0), poolclass=StaticPool
    )
    try:
        with engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert isinstance(raw, sqlite3.Connection)
            damage = page_damage(raw, "integrity_check")
            if damage is not None and "not a database" in damage:
                raise _refused(backup, f"it is not a SQLite database ({damage})")
            if damage is not None:
                raise _refused(backup, f"it is damaged ({damage}, found by SQLite's integrity_check): choose another")
            return current_version(conn)
    except DamagedDocumentError as exc:  # integrity_check passed: the bytes of the value changed
        raise _refused(backup, f"it is damaged ({exc.detail}): choose another") from None
    except (DBAPIError, sqlite3.Error) as exc:
        reason = getattr(exc, "orig", None) or exc
        raise _refused(backup, f"it cannot be read as a SQLite database ({reason})") from None
    finally:
        engine.dispose()


def restore_store(store: Path, backup: CheckedBackup, *, now: float) -> Restored:
    """Put ``backup`` in place of the SQLite store ``store``; the store it replaces is moved aside with
    the time ``now`` in its name (see the module docstring)."""
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the folder {store.parent} of the store ({exc.strerror})") from None
    partial = store.with_name(store.name + ".restore" + PARTIAL_SUFFIX)
    with _store_held(store):
        _remove_files(partial)  # a killed restore's: this process holds the store, no restore writes it
        try:
            _copy(backup, partial, store)
            _same_access(partial, store)
            moved = _move_aside(store, now)
            try:
                _put_in_place(partial, store)
            except BaseException:  # an error, or Ctrl-C / SIGTERM: the store moved aside goes back
                _move_back(moved)
                raise
        finally:
            _remove_files(partial)
    renamed = dict(moved)
    return Restored(store, backup, renamed.get(store), [target for part, target in moved if part != store])


@contextlib.contextmanager
def _store_held(store: Path) -> Iterator[None]:
    """Hold the store's opening lock (a run that starts now waits for it), once no lock of the store is
    held: a run, a backup, another restore each hold one; busy (exit 5) naming who holds it otherwise."""
    # the lock manager asks its engine only which database it serves: it never connects to it
    engine = create_engine("sqlite://")
    locks = LockManager(engine, store.with_name(store.name + ".locks"), str(store))
    try:
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(locks.hold(OPENING_LOCK, note={"restore": str(store)}))
            except LockHeldError:  # a run opening the store, or another restore
                raise _busy(store, "; ".join(locks.live_holders(besides="")) or "another mvsync process") from None
            except StoreError as exc:  # a lock folder it cannot write (the store's folder read-only, say)
                raise StoreError(f"{exc}; {_UNCHANGED}") from None
            holders = locks.live_holders(besides=OPENING_LOCK)
            if holders:
                raise _busy(store, "; ".join(holders))
            yield
    finally:
        engine.dispose()


def _busy(store: Path, who: str) -> StoreBusyError:
    return StoreBusyError(
        f"the store {store} is in use: {who}; let it finish, or stop it (the schedule: systemctl stop "
        f"mvsync.timer; the console), then restore again; {_UNCHANGED}"
    )


def _copy(backup: CheckedBackup, partial: Path, store: Path) -> None:
    """Copy the backup into ``partial`` beside the store as one self-contained file (no ``-wal``), flushed
    to the disk. Why SQLite's backup API and not a file copy: a backup in WAL mode with its log beside
    it is read whole, and the copy is written in SQLite's own journal mode, never half a page."""
    try:
        source = sqlite3.connect(f"{backup.path.resolve().as_uri()}?mode=ro", uri=True, timeout=1.0)
        try:
            copy = sqlite3.connect(partial)
            try:
                source.backup(copy)
                copy.execute("PRAGMA journal_mode=DELETE")
            finally:
                copy.close()
        finally:
            source.close()
        fd = os.open(partial, os.O_RDWR | getattr(os, "O_BINARY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except (sqlite3.Error, OSError) as exc:
        raise StoreError(_copy_failed(backup, partial, store, exc)) from None


def _same_access(partial: Path, store: Path) -> None:
    """Give the restored copy the store's permissions, and on POSIX, when run as root, its owner.

    Why: the copy is a new file, created with this process's umask and owner; a restore run with
    ``sudo`` left a store that the service account could read but not write (every run stopped,
    read-only), and one run under a wide umask left a store others could read (people's data).
    """
    try:
        found = store.stat()
    except OSError:  # no store before: the new file's defaults
        return
    try:
        os.chmod(partial, stat.S_IMODE(found.st_mode))
        if sys.platform != "win32" and os.geteuid() == 0:
            os.chown(partial, found.st_uid, found.st_gid)
    except OSError as exc:
        msg = f"cannot give the restored copy {partial} the access of {store} ({exc.strerror}); {_UNCHANGED}"
        raise StoreError(msg) from None


def _copy_failed(backup: CheckedBackup, partial: Path, store: Path, exc: sqlite3.Error | OSError) -> str:
    """Why the restored copy could not be written beside the store, and what to do."""
    full = getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL" or getattr(exc, "errno", None) == errno.ENOSPC
    if full:
        return (
            f"cannot restore {backup.path} over {store}: the volume of {store.parent} is full ({exc}); the restored "
            f"copy needs about {backup.size / 1048576:.1f} MB there (the backup's size): free space on it and restore "
            f"again; {_UNCHANGED}"
        )
    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"cannot write the restored copy {partial} ({why}): {folder_write_advice(store.parent)}; {_UNCHANGED}"


def _move_aside(store: Path, now: float) -> list[tuple[Path, Path]]:
    """Move the store (if there is one) and what is left of its side files to ``STORE.before-restore-TIME``
    (side files as ``...-wal``, ``...-shm``, which SQLite reads with it): each file moved, with where to.

    Its log is folded into it first (:func:`_fold_log`), so the file moved aside is the whole store; a
    log that cannot be folded (a damaged store) is moved with it, never left for the restored file.
    """
    sides = [side for side in sqlite_files(store)[1:] if side.exists()]
    if not store.exists() and not sides:
        return []
    if store.exists() and _fold_log(store):
        with contextlib.suppress(OSError):  # the log's index, no data: SQLite makes it again
            store.with_name(store.name + "-shm").unlink(missing_ok=True)
    # a store SQLite cannot read, or one not in WAL mode, proves nothing by the fold: ask the OS
    if opened := processes_with_open(sqlite_files(store)):
        raise _busy(store, f"processes of this machine have it open: {'; '.join(opened)}")
    aside = _aside_name(store, now)
    moved: list[tuple[Path, Path]] = []
    try:
        for part, target in zip(sqlite_files(store), sqlite_files(aside), strict=True):
            if part == store and store.exists():
                _link_or_rename(store, target)
                moved.append((part, target))
            elif part.exists():
                part.rename(target)
                moved.append((part, target))
    except BaseException as exc:  # an error, or Ctrl-C / SIGTERM between two renames
        _move_back(moved)
        if not isinstance(exc, OSError):
            raise
        msg = f"cannot move {store} aside to {aside} ({exc.strerror}): another program may have it open; {_UNCHANGED}"
        raise StoreError(msg) from None
    return moved


def _fold_log(store: Path) -> bool:
    """Fold the store's ``-wal`` into it and leave it in rollback-journal mode: True when done; False when
    SQLite cannot read it (damaged). Busy (exit 5) when another connection has it open.

    Why this proves that no process has it open: leaving WAL mode needs an exclusive lock on the file,
    which SQLite refuses (at once: no busy wait) while any other connection holds its WAL shared lock.
    """
    try:
        conn = sqlite3.connect(store, timeout=0, isolation_level=None)
        try:
            mode = conn.execute("PRAGMA journal_mode=DELETE").fetchone()
        finally:
            conn.close()
    except sqlite3.OperationalError as exc:
        if getattr(exc, "sqlite_errorname", "") in ("SQLITE_BUSY", "SQLITE_LOCKED"):
            opened = processes_with_open(sqlite_files(store))
            who = f"processes of this machine have it open: {'; '.join(opened)}" if opened else "a process has it open"
            raise _busy(store, f"{who} ({exc})") from None
        return False
    except sqlite3.DatabaseError:
        return False
    return mode is not None and str(mode[0]).lower() == "delete"


def _aside_name(store: Path, now: float) -> Path:
    """``STORE.before-restore-20261206T121314Z``, with ``-2``, ``-3`` ... if a restore in the same second
    already took that name."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    base = store.with_name(f"{store.name}.before-restore-{stamp}")
    aside, n = base, 1
    while any(part.exists() for part in sqlite_files(aside)):
        n += 1
        aside = base.with_name(f"{base.name}-{n}")
    return aside


def _put_in_place(partial: Path, store: Path) -> None:
    """Rename the restored copy to the store's name (one atomic rename, on Windows too), flushed: the
    store's name holds the old store or the restored one at every moment."""
    try:
        os.replace(partial, store)
    except OSError as exc:
        if _sharing_violation(exc):
            opened = processes_with_open(sqlite_files(store))
            who = (
                f": {'; '.join(opened)}"
                if opened
                else " (Windows does not say which: a console, a sqlite3 shell, a backup agent or antivirus)"
            )
            msg = (
                f"cannot put the restored copy in place of {store}: another process has it open ({exc.strerror}){who}; "
                f"stop it, then restore again; {_UNCHANGED}"
            )
            raise StoreBusyError(msg) from None
        raise StoreError(f"cannot put the restored copy in place of {store} ({exc.strerror}); {_UNCHANGED}") from None
    with contextlib.suppress(OSError):  # the rename is done; a folder that cannot be flushed changes nothing
        fsync_dir(store.parent)


#: The Windows errors of a rename onto a file another process has open: ERROR_ACCESS_DENIED (5) and
#: ERROR_SHARING_VIOLATION (32) (MoveFileEx needs the target openable for delete; a process that opened
#: it without FILE_SHARE_DELETE, as SQLite and most programs do, stops that). Python raises both as PermissionError.
_WINDOWS_IN_USE = (5, 32)


def _sharing_violation(exc: OSError) -> bool:
    """Whether ``exc`` from a rename onto the store says that another process has the store open (Windows)."""
    return isinstance(exc, PermissionError) and getattr(exc, "winerror", None) in _WINDOWS_IN_USE


def _link_or_rename(store: Path, aside: Path) -> None:
    """Give the store its ``aside`` name as a second link, so that a store stays at its own name until the
    restored copy replaces it; rename it where the file system has no hard links (FAT, some shares).

    Why: with a rename, a restore killed outright (kill -9, a power loss) between it and the copy's
    rename left no store at its name, and the next run created an empty one and started afresh.
    """
    try:
        os.link(store, aside)
    except OSError:
        store.rename(aside)


def _move_back(moved: list[tuple[Path, Path]]) -> None:
    """Undo the moves ``(from, to)`` of :func:`_move_aside`, as far as they can be undone: a second link
    whose first is still there is removed, a renamed file renamed back."""
    for part, target in reversed(moved):
        with contextlib.suppress(OSError):
            if part.exists() and os.path.samefile(part, target):
                target.unlink()
            else:
                target.rename(part)


def _remove_files(database: Path) -> None:
    """Remove ``database`` and SQLite's side files of it: the leftovers of a copy that never became the store."""
    for leftover in sqlite_files(database):
        with contextlib.suppress(OSError):
            leftover.unlink(missing_ok=True)
