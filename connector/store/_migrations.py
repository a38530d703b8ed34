"""Versioned store schema. Each migration runs once, in order, inside one transaction.

A store written by a newer mvsync (higher version than ``SCHEMA_VERSION``) is refused rather than
guessed at.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import Connection, select

from connector.store.tables import metadata, store_meta

__all__ = ["SCHEMA_VERSION", "StoreVersionError", "migrate"]


class StoreVersionError(Exception):
    """The store's schema is newer than this mvsync understands."""


def _v1(conn: Connection) -> None:
    metadata.create_all(conn)


def _v2_search_index(conn: Connection) -> None:
    """Index ``mv_object(search_text, id)`` for the console's person search (``mvsync ui``).

    A substring search cannot seek in a b-tree, but it can scan this index instead of the table:
    the index holds only the short search text, while table rows carry every person's JSON
    documents, so a search that matches nobody reads a few MB instead of hundreds. The index is
    also in name order (search text starts with the display name), so a page of results stops
    after fifty matches, and keyset pages seek straight to their cursor.
    """
    conn.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_mv_search ON mv_object (search_text, id)")


MIGRATIONS: tuple[Callable[[Connection], None], ...] = (_v1, _v2_search_index)
SCHEMA_VERSION = len(MIGRATIONS)


def current_version(conn: Connection) -> int:
    if not conn.dialect.has_table(conn, "store_meta"):
        return 0
    value = conn.execute(select(store_meta.c.value).where(store_meta.c.key == "schema_version")).scalar()
    return int(value) if value is not None else 0


def migrate(conn: Connection) -> int:
    """Bring the store to ``SCHEMA_VERSION``; returns the version found before."""
    found = current_version(conn)
    if found > SCHEMA_VERSION:
        msg = (
            f"the store has schema version {found}, newer than this mvsync understands ({SCHEMA_VERSION}); "
            "upgrade mvsync"
        )
        raise StoreVersionError(msg)
    for version in range(found + 1, SCHEMA_VERSION + 1):
        MIGRATIONS[version - 1](conn)
        if version == 1:
            conn.execute(store_meta.insert().values(key="schema_version", value="1"))
        else:
            conn.execute(store_meta.update().where(store_meta.c.key == "schema_version").values(value=str(version)))
    return found
