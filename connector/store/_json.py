"""JSON documents as the store keeps them (text, the same on SQLite and PostgreSQL).

orjson: the stdlib encoder was among the largest costs in profiles of a synchronization.
"""

from __future__ import annotations

from typing import Any

import orjson

from connector.store._faults import DamagedDocumentError
from connector.store._values import undecodable

__all__ = ["dumps", "loads", "loads_object"]


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


def loads_object(text: str | bytes, table: str, row: object, column: str) -> dict[str, Any]:
    """The JSON object ``text`` read from ``column`` of ``table``'s ``row``, as :func:`loads`, for the
    documents mvsync always writes as objects whose encoded values decode (holograms, pending and
    unconfirmed exports, errors, metaverse attributes, lineage, step counters).

    Why: damage may leave the text JSON (a changed digit of a photo's reference, a changed date, or
    rarer, no longer an object); such a document failed later, far from its row. The console shows
    the row as damaged, and ``mvsync doctor`` lists it, both through this one check.
    """
    document = loads(text, table, row, column)
    if not isinstance(document, dict):
        problem = f"is not the JSON object mvsync wrote (it is a JSON {type(document).__name__})"
    else:
        kind = undecodable(document)
        if kind is None:
            return document
        problem = f"holds a {kind} that is not one mvsync wrote"
    raise DamagedDocumentError(f"{table} row {row}: its {column} {problem}")
