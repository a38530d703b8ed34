"""JSON documents as the store keeps them (text, the same on SQLite and PostgreSQL).

orjson: the stdlib encoder was among the largest costs in profiles of a synchronization.
"""

from __future__ import annotations

from typing import Any

import orjson

from connector.store._faults import DamagedDocumentError

__all__ = ["dumps", "loads"]


def dumps(obj: Any) -> str:
    """JSON text of ``obj`` (compact, UTF-8 preserved)."""
    return orjson.dumps(obj).decode()


def loads(text: str | bytes, table: str, row: object, column: str) -> Any:
    """The document ``text`` read from ``column`` of ``table``'s ``row`` (its id or key).

    Text that is not JSON is damage on the disk that SQLite's page checks cannot see (the bytes of a
    value changed): :class:`DamagedDocumentError` names the row, never a ``JSONDecodeError``.
    """
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        detail = f"{table} row {row}: its {column} is not the JSON mvsync wrote ({exc})"
        raise DamagedDocumentError(detail) from None
