"""Hot-path helpers: fast JSON for stored documents, and driver-level executemany.

The engine writes tens of thousands of rows per second; SQLAlchemy's per-row parameter processing
and the stdlib json encoder were the largest costs in profiles, so bulk statements go straight to
the DB-API cursor (SQL written with ``:name`` placeholders, adapted to the driver's style).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import Connection

__all__ = ["dumps", "loads", "run_many"]

_NAMED = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")
_converted: dict[tuple[str, str], str] = {}


def dumps(obj: Any) -> str:
    """JSON text of ``obj`` (compact, UTF-8 preserved)."""
    return orjson.dumps(obj).decode()


def loads(text: str | bytes) -> Any:
    return orjson.loads(text)


def run_many(conn: Connection, sql: str, rows: Sequence[dict[str, Any]]) -> None:
    """Execute ``sql`` (``:name`` placeholders) once per row through the driver's executemany."""
    if not rows:
        return
    style = conn.dialect.paramstyle
    key = (sql, style)
    statement = _converted.get(key)
    if statement is None:
        statement = _NAMED.sub(r"%(\1)s", sql) if style == "pyformat" else sql
        _converted[key] = statement
    conn.exec_driver_sql(statement, list(rows))  # type: ignore[arg-type]
