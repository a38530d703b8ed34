"""Rows straight into the store, for tools that build a synthetic one (the benchmarks).

No engine rule applies: the caller writes finished rows (documents already encoded as JSON text),
as a restore would. The engine itself never uses this.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from connector.store._batch import BatchInsert
from connector.store.tables import metadata

__all__ = ["bulk_insert"]


def bulk_insert(conn: Connection, table: str, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` (every row with the same columns) into the store table ``table`` in one batch."""
    if not rows:
        return
    known = metadata.tables.get(table)
    columns = list(rows[0])
    if known is None or any(c not in known.c for c in columns):
        msg = f"bulk_insert: {table!r} is not a store table with the columns {columns}"
        raise ValueError(msg)
    BatchInsert(known, tuple(columns)).run(conn, rows)
