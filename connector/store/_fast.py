"""Hot-path helpers: fast JSON for stored documents, and driver-level executemany.

The engine writes tens of thousands of rows per second; SQLAlchemy's per-row parameter processing
and the stdlib json encoder were the largest costs in profiles, so bulk statements go straight to
the DB-API cursor (SQL written with ``:name`` placeholders, adapted to the driver's style).

On PostgreSQL even a pipelined ``executemany`` pays a protocol round of bind/execute and a
statement's executor start-up per row (profiles: 60% of a full synchronization's time in the
driver). There, the two statement shapes the engine uses, ``INSERT INTO t (..) VALUES (:a, ..)``
and ``UPDATE t SET .. WHERE ..``, are rewritten into ONE statement per batch over arrays:
``INSERT INTO t (..) SELECT .. FROM unnest(%(a)s::text[], ..)`` and
``UPDATE t SET c = v._p_a .. FROM unnest(..) AS v(_p_a, ..) WHERE ..``. The result is the same as
row-by-row execution; when it might not be (an UPDATE batch naming the same key twice, or a
column of mixed or unknown value types), we fall back to ``executemany``.
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
    """Execute ``sql`` (``:name`` placeholders) once per row, as one batch statement where possible."""
    if not rows:
        return
    style = conn.dialect.paramstyle
    if conn.dialect.name == "postgresql" and len(rows) > 1:
        rewritten = _pg_batch(sql, rows)
        if rewritten is not None:
            conn.exec_driver_sql(rewritten[0], rewritten[1])
            return
    key = (sql, style)
    statement = _converted.get(key)
    if statement is None:
        statement = _NAMED.sub(r"%(\1)s", sql) if style == "pyformat" else sql
        _converted[key] = statement
    conn.exec_driver_sql(statement, list(rows))  # type: ignore[arg-type]


_INSERT = re.compile(r"^\s*INSERT\s+INTO\s+(\w+)\s*\(([^)]*)\)\s*VALUES\s*\((.*)\)\s*$", re.IGNORECASE | re.DOTALL)
_UPDATE = re.compile(r"^\s*UPDATE\s+(\w+)\s+SET\s+(.*?)\s+WHERE\s+(.*?)\s*$", re.IGNORECASE | re.DOTALL)
_PG_TYPES: dict[type, str] = {
    bool: "boolean",
    int: "bigint",
    float: "double precision",
    str: "text",
    bytes: "bytea",
}
_NONE = type(None)


def _pg_array_type(values: list[Any]) -> str | None:
    """The PostgreSQL array element type for a column of values; "" when all are NULL, None if unsure."""
    kinds = set(map(type, values))
    kinds.discard(_NONE)
    if not kinds:
        return ""
    if kinds == {int, float}:
        return "double precision"
    if len(kinds) != 1:
        return None
    return _PG_TYPES.get(kinds.pop())


def _pg_batch(sql: str, rows: Sequence[dict[str, Any]]) -> tuple[str, dict[str, list[Any]]] | None:
    """``sql`` as one statement over ``unnest`` arrays, with its parameters; None to run row by row."""
    insert = _INSERT.match(sql)
    update = None if insert else _UPDATE.match(sql)
    if insert is None and update is None:
        return None
    names = list(dict.fromkeys(_NAMED.findall(sql)))
    columns: dict[str, list[Any]] = {name: [row[name] for row in rows] for name in names}
    types: dict[str, str] = {}
    for name, values in columns.items():
        kind = _pg_array_type(values)
        if kind is None:
            return None
        if kind == "double precision" and any(type(v) is int for v in values):
            columns[name] = [float(v) if type(v) is int else v for v in values]  # psycopg dumps one type
        types[name] = kind

    def ref(match: re.Match[str]) -> str:
        name = match.group(1)
        return f"v._p_{name}" if types[name] else "NULL"

    arrays = [n for n in names if types[n]]
    params = {f"_p_{n}": columns[n] for n in arrays}
    source = (
        "unnest("
        + ", ".join(f"%(_p_{n})b::{types[n]}[]" for n in arrays)
        + ") AS v("
        + ", ".join(f"_p_{n}" for n in arrays)
        + ")"
    )
    if insert is not None:
        table, cols, value_list = insert.groups()
        exprs = _NAMED.sub(ref, value_list)
        if not arrays:
            return None
        return f"INSERT INTO {table} ({cols}) SELECT {exprs} FROM {source}", params
    assert update is not None
    table, assignments, where = update.groups()
    keys = _NAMED.findall(where)
    if not keys or not arrays:
        return None
    seen = list(zip(*(columns[k] for k in keys), strict=True))
    if len(set(seen)) != len(seen):
        return None  # the same row twice: only row-by-row execution applies both in order
    return f"UPDATE {table} SET {_NAMED.sub(ref, assignments)} FROM {source} WHERE {_NAMED.sub(ref, where)}", params
