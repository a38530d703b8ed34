"""Run locks: one run per agent at a time, and one synchronization at a time (the metaverse lock).

SQLite stores use ``fcntl`` lock files beside the database (the kernel drops them when a process
dies, so a crashed run never leaves a stale lock); PostgreSQL stores use session advisory locks on
a dedicated connection. Both record who holds a lock so a refused run can name the holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

__all__ = ["LockHeldError", "LockManager"]


class LockHeldError(Exception):
    """Another mvsync process holds a lock this run needs."""


def _holder_info(what: str) -> dict[str, Any]:
    return {"lock": what, "pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}


def _describe(info: dict[str, Any] | None) -> str:
    if not info:
        return "another mvsync process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info.get("since", 0))))
    return f"pid {info.get('pid')} on {info.get('host')} since {since}"


class LockManager:
    """Hands out named locks (``agent:<name>``, ``metaverse``) for the duration of a ``with``."""

    def __init__(self, engine: Engine, lock_dir: Path | None) -> None:
        self._engine = engine
        self._lock_dir = lock_dir

    @contextlib.contextmanager
    def hold(self, name: str, *, wait_s: float = 0.0) -> Iterator[None]:
        if self._engine.dialect.name == "postgresql":
            with self._pg_lock(name, wait_s):
                yield
        else:
            with self._file_lock(name, wait_s):
                yield

    # -- SQLite: lock files --------------------------------------------------------------------
    @contextlib.contextmanager
    def _file_lock(self, name: str, wait_s: float) -> Iterator[None]:
        if self._lock_dir is None:  # in-memory store: single process by construction
            yield
            return
        self._lock_dir.mkdir(parents=True, exist_ok=True)
        path = self._lock_dir / (name.replace(":", "-").replace("/", "_") + ".lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        holder = None
                        with contextlib.suppress(OSError, ValueError):
                            holder = json.loads(path.read_text() or "null")
                        msg = (
                            f"{name} is locked by {_describe(holder)}; wait for it to finish, "
                            "or rerun with --wait SECONDS"
                        )
                        raise LockHeldError(msg) from None
                    time.sleep(0.2)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(_holder_info(name)).encode(), 0)
            yield
        finally:
            os.close(fd)  # closing releases the flock

    # -- PostgreSQL: advisory locks ---------------------------------------------------------------
    @contextlib.contextmanager
    def _pg_lock(self, name: str, wait_s: float) -> Iterator[None]:
        key = int.from_bytes(hashlib.sha256(f"mvsync:{name}".encode()).digest()[:8], "big", signed=True)
        with self._engine.connect() as conn:
            deadline = time.monotonic() + wait_s
            while not conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar():
                if time.monotonic() >= deadline:
                    holder = conn.execute(
                        text(
                            "SELECT a.pid, a.client_addr, a.backend_start FROM pg_locks l "
                            "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
                            "AND l.objid = (:k & 4294967295) LIMIT 1"
                        ),
                        {"k": key},
                    ).first()
                    who = f"PostgreSQL backend pid {holder[0]}" if holder else "another mvsync process"
                    msg = f"{name} is locked by {who}; wait for it to finish, or rerun with --wait SECONDS"
                    raise LockHeldError(msg)
                conn.rollback()
                time.sleep(0.2)
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
