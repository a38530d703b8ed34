"""The store's own key/value facts (``store_meta``): what the store remembers about itself.

One reader and one writer for every key (the next metaverse id, when the pages were last checked),
so an insert-or-update is written once.
"""

from __future__ import annotations

from sqlalchemy import Connection, select

from connector.store.tables import store_meta

__all__ = ["read_meta", "write_meta"]


def read_meta(conn: Connection, key: str) -> str | None:
    """The value kept under ``key``, or None when none is."""
    value = conn.execute(select(store_meta.c.value).where(store_meta.c.key == key)).scalar()
    return None if value is None else str(value)


def write_meta(conn: Connection, key: str, value: str) -> None:
    """Keep ``value`` under ``key`` (in the caller's transaction), replacing what was there."""
    if conn.execute(store_meta.update().where(store_meta.c.key == key).values(value=value)).rowcount == 0:
        conn.execute(store_meta.insert().values(key=key, value=value))
