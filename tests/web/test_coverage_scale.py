"""The console's coverage page with many people in error: its error counts are aggregated by the store,
so the rows it fetches do not grow with the people in error (counted at the SQLite driver, not timed)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from connector.config import config_from_dict
from connector.store import SqlStore, dumps
from connector.store.tables import cs_object
from connector.web._queries import DAMAGED_KIND, Console


class _Counts:
    rows = 0
    queries = 0


class _CountingCursor(sqlite3.Cursor):
    """A cursor that counts the statements it runs and the rows it hands to SQLAlchemy."""

    def execute(self, sql: str, parameters: Any = ()) -> _CountingCursor:
        _Counts.queries += 1
        super().execute(sql, parameters)
        return self

    def fetchone(self) -> Any:
        row = super().fetchone()
        _Counts.rows += row is not None
        return row

    def fetchmany(self, size: int | None = None) -> list[Any]:
        rows = super().fetchmany(size) if size is not None else super().fetchmany()
        _Counts.rows += len(rows)
        return rows

    def fetchall(self) -> list[Any]:
        rows = super().fetchall()
        _Counts.rows += len(rows)
        return rows


class _CountingConnection(sqlite3.Connection):
    def cursor(self, factory: Any = _CountingCursor) -> Any:  # type: ignore[override]
        return super().cursor(factory)


def _errors(count: int) -> Iterator[dict[str, Any]]:
    """Connector-space rows of ``count`` people in error, and a few odd ones (see the test)."""
    base = {"agent": "ad", "object_class": "user", "hologram": "{}", "sync_error": None, "export_error": None}
    for i in range(count):
        name = "ambiguous-join" if i % 3 else "constraint-violation"
        stage = "sync_error" if i % 3 else "export_error"
        yield {**base, "anchor": f"guid-{i}", stage: dumps({"name": name, "detail": f"person {i}", "attempts": 1})}
    yield {**base, "anchor": "damaged", "sync_error": '{"name":"ambig'}  # bytes lost on the disk
    yield {**base, "anchor": "quoted", "export_error": dumps({"name": 'a "quoted" name'})}
    yield {**base, "anchor": "reordered", "export_error": json.dumps({"detail": "d", "name": "late-name"})}


def _counted(store: SqlStore) -> None:
    """From now on, a SQLite store's connections count what they run and fetch (``_Counts``)."""
    event.listen(store.engine, "do_connect", lambda _d, _r, _a, kw: kw.update(factory=_CountingConnection))
    store.engine.dispose()  # new connections, through the counting factory
    _Counts.rows = _Counts.queries = 0


@pytest.mark.parametrize("people_in_error", [300, 3000])
def test_coverage_fetches_a_few_rows_whatever_the_people_in_error(
    tmp_path: Path, store_url: str, people_in_error: int
) -> None:
    config = config_from_dict(
        {"store": {"url": store_url}, "agents": {"ad": {"type": "photo-folder"}}}, base_dir=tmp_path
    )
    store = SqlStore(config.store_url())
    try:
        with store.transaction() as conn:
            conn.execute(cs_object.insert(), list(_errors(people_in_error)))
        if store.dialect == "sqlite":
            _counted(store)
        with store.read() as conn:
            agents, kinds, _persons = Console(config, store).coverage(conn)
        fetched, queries = _Counts.rows, _Counts.queries
    finally:
        store.close()
    constraint = len(range(0, people_in_error, 3))
    assert sorted(kinds) == sorted(
        [
            ("ad", "sync", "ambiguous-join", people_in_error - constraint),
            ("ad", "export", "constraint-violation", constraint),
            ("ad", "sync", DAMAGED_KIND, 1),
            ("ad", "export", 'a "quoted" name', 1),
            ("ad", "export", "late-name", 1),
        ]
    ), kinds
    [ad] = [a for a in agents if a.agent == "ad"]
    assert ad.object_errors == people_in_error + 3 and ad.objects == people_in_error + 3
    if store.dialect == "sqlite":  # before: a row fetched per person in error
        assert fetched <= 40 and queries <= 20, (fetched, queries)
