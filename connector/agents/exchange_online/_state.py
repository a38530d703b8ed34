"""The agent's own per-user photo state, in ``<data_dir>/photo-state.sqlite3``.

Why a file and not the watermark: delta imports need, per user, the photo ETag, checksum and when
it was last probed; for a 100k-user tenant that is megabytes, which the engine would have to load,
hold and rewrite on every run if it lived in the watermark. A small SQLite file costs nothing and
keeps memory flat. The watermark carries only the ``users/delta`` link, the file's identity and a
*generation* number.

Keeping the file honest with the engine: the engine commits each page, but saves the watermark
only when the step closes normally. Every row this run changes is stamped with the run's
generation; the watermark returned at the end names that generation. When the next delta starts
from an older watermark (the last run stopped early), rows stamped after the watermark's
generation are *untrusted*: their ETag and checksum are forgotten and whether the connector space
holds the object becomes unknown, so they are probed, re-downloaded and sent as whole objects,
which the engine applies idempotently. Nothing is lost and nothing is trusted that the engine may
not have committed.
"""

from __future__ import annotations

import json
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["STATE_FILE_NAME", "PhotoState", "UserState", "Watermark"]

STATE_FILE_NAME = "photo-state.sqlite3"

#: ``in_cs`` values: the connector space holds the object / does not / nobody knows (untrusted).
IN_CS_NO, IN_CS_YES, IN_CS_UNKNOWN = 0, 1, -1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS user_state (
    id          TEXT PRIMARY KEY,
    attrs       TEXT NOT NULL,
    etag        TEXT,
    checksum    TEXT,
    size        INTEGER,
    in_cs       INTEGER NOT NULL,
    checked_at  REAL NOT NULL DEFAULT 0,
    verified_at REAL,
    error       TEXT,
    error_at    REAL,
    gen         INTEGER NOT NULL
);
"""


@dataclass(slots=True)
class UserState:
    """What we know about one user's photo. ``etag`` None means "no photo" (when checksum is None too)."""

    id: str
    attrs: dict[str, Any]
    etag: str | None = None
    checksum: str | None = None
    size: int | None = None
    in_cs: int = IN_CS_NO
    checked_at: float = 0.0
    verified_at: float | None = None
    error: str | None = None
    error_at: float | None = None
    gen: int = 0

    @property
    def trusted(self) -> bool:
        return self.in_cs != IN_CS_UNKNOWN


@dataclass(frozen=True, slots=True)
class Watermark:
    delta_link: str
    gen: int
    store: str

    def dumps(self) -> str:
        return json.dumps({"v": 1, "delta": self.delta_link, "gen": self.gen, "store": self.store})

    @classmethod
    def loads(cls, text: str | None) -> Watermark | None:
        if not text:
            return None
        try:
            data = json.loads(text)
            return cls(str(data["delta"]), int(data["gen"]), str(data["store"]))
        except (ValueError, KeyError, TypeError):
            return None


_COLUMNS = "id, attrs, etag, checksum, size, in_cs, checked_at, verified_at, error, error_at, gen"


def _row(values: tuple[Any, ...]) -> UserState:
    return UserState(
        values[0],
        json.loads(values[1]),
        values[2],
        values[3],
        values[4],
        values[5],
        values[6],
        values[7],
        values[8],
        values[9],
        values[10],
    )


class PhotoState:
    """The state file. Used from the import's main thread; readers get their own connection."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._db.execute("BEGIN")
        self.store_id = self._meta("store_id") or self._set_meta("store_id", uuid.uuid4().hex)
        self.gen = int(self._meta("max_gen") or 0)
        self.commit()

    # -- meta ---------------------------------------------------------------------------------
    def _meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return str(row[0]) if row else None

    def _set_meta(self, key: str, value: str) -> str:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
        return value

    def commit(self) -> None:
        """Make this run's changes durable, and open the next transaction."""
        self._db.execute("COMMIT")
        self._db.execute("BEGIN")

    def close(self) -> None:
        if self._db.in_transaction:
            self._db.execute("COMMIT")
        self._db.close()

    # -- runs ---------------------------------------------------------------------------------
    def begin_run(self, previous: Watermark | None) -> int:
        """Start a run: a new generation; distrust rows written after ``previous`` (a delta's base)."""
        if previous is not None:
            self._db.execute(
                "UPDATE user_state SET in_cs = ?, etag = NULL, checksum = NULL, size = NULL, checked_at = 0 "
                "WHERE gen > ?",
                (IN_CS_UNKNOWN, previous.gen),
            )
        self.gen = max(self.gen, int(self._meta("max_gen") or 0)) + 1  # never reused, even after a resume
        self._set_meta("max_gen", str(self.gen))
        self.commit()
        return self.gen

    def resume_run(self, gen: int) -> int:
        """Go on with an interrupted full import's generation (its rows must survive ``forget_unseen``)."""
        self.gen = gen
        return gen

    def matches(self, watermark: Watermark) -> bool:
        """Whether ``watermark`` was produced with this very file (not a copy, not a fresh one)."""
        return watermark.store == self.store_id and watermark.gen <= self.gen

    def forget_unseen(self) -> int:
        """After a full import: drop users it did not see (they left the tenant or the scope)."""
        cur = self._db.execute("DELETE FROM user_state WHERE gen != ?", (self.gen,))
        return cur.rowcount

    # -- rows ---------------------------------------------------------------------------------
    def get(self, user_id: str) -> UserState | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM user_state WHERE id = ?", (user_id,)).fetchone()
        return _row(row) if row else None

    def put(self, state: UserState) -> None:
        self._db.execute(
            f"INSERT OR REPLACE INTO user_state ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                state.id,
                json.dumps(state.attrs, sort_keys=True),
                state.etag,
                state.checksum,
                state.size,
                state.in_cs,
                state.checked_at,
                state.verified_at,
                state.error,
                state.error_at,
                state.gen,
            ),
        )

    def checked(self, user_id: str, when: float) -> None:
        """A probe found nothing new: only the probe time moves (the generation does not)."""
        self._db.execute(
            "UPDATE user_state SET checked_at = ?, error = NULL, error_at = NULL WHERE id = ?",
            (when, user_id),
        )

    def failed(self, user_id: str, error: str, when: float) -> None:
        self._db.execute("UPDATE user_state SET error = ?, error_at = ? WHERE id = ?", (error, when, user_id))

    def delete(self, user_id: str) -> None:
        self._db.execute("DELETE FROM user_state WHERE id = ?", (user_id,))

    def count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM user_state").fetchone()[0])

    def scan(self, chunk: int = 1000) -> Iterator[UserState]:
        """Every row in id order, read through a separate connection (for the producer thread).

        Keyset pagination keeps memory flat; rows the main thread commits meanwhile may or may not
        be seen, which is fine because the delta's second stage starts after the first finished.
        """
        db = sqlite3.connect(self.path)
        try:
            last = ""
            while True:
                rows = db.execute(
                    f"SELECT {_COLUMNS} FROM user_state WHERE id > ? ORDER BY id LIMIT ?", (last, chunk)
                ).fetchall()
                if not rows:
                    return
                for row in rows:
                    yield _row(row)
                last = rows[-1][0]
        finally:
            db.close()
