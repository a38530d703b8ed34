"""Reads for ``mvsync doctor``: what the store's consistency rests on, in bounded pages.

Why in the store: these checks look at the store's own invariants (blob references, the links
between connector space and metaverse, indexes and pages), which only this package knows how to
read; ``doctor`` turns the findings into advice.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

from sqlalchemy import Connection, LargeBinary, and_, cast, func, or_, select
from sqlalchemy.exc import DBAPIError

from connector.store._faults import DamagedDocumentError
from connector.store._json import loads, loads_object
from connector.store._migrations import current_version, holds_tables
from connector.store._sql import SqlStore
from connector.store._values import blob_refs
from connector.store.tables import agent_data, blob, cs_object, metadata, mv_object, run_step, transform_cache

__all__ = ["DanglingLink", "DuplicateLink", "OrphanExport", "StoreAudit"]

_PAGE = 2000
#: How an encoded binary value's prefix appears inside stored JSON text.
_BLOB_IN_JSON = "\\u0000b:"
#: The JSON documents of each table by its key, as :meth:`StoreAudit.damaged_documents` reads them, and
#: how: ``loads_object`` for the documents mvsync writes as objects of encoded values (what the console
#: reads them with), ``loads`` for a connector's own state and the transform cache (any JSON).
_DOCUMENTS: list[tuple[Any, tuple[Any, ...], list[Any], Callable[[str | bytes, str, object, str], Any]]] = [
    (
        cs_object,
        (cs_object.c.id,),
        [
            cs_object.c.hologram,
            cs_object.c.pending,
            cs_object.c.export_changes,
            cs_object.c.unconfirmed,
            cs_object.c.renderings,
            cs_object.c.export_error,
            cs_object.c.import_error,
            cs_object.c.sync_error,
        ],
        loads_object,
    ),
    (
        mv_object,
        (mv_object.c.id,),
        [mv_object.c.attributes, mv_object.c.contributions, mv_object.c.lineage],
        loads_object,
    ),
    (run_step, (run_step.c.id,), [run_step.c.counters], loads_object),
    # a connector's own state (ETags, checksums): named by (agent, key), as the store reads it
    (agent_data, (agent_data.c.agent, agent_data.c.key), [agent_data.c.value], loads),
    # a cache (a run recomputes a damaged row), but damage in it is damage in the file all the same
    (transform_cache, (transform_cache.c.transform, transform_cache.c.input), [transform_cache.c.output], loads),
]


def _after(keys: tuple[Any, ...], last: tuple[Any, ...]) -> Any:
    """Rows after ``last`` in the order of ``keys`` (a row-value comparison, spelt out for any database)."""
    first, rest = keys[0], keys[1:]
    if not rest:
        return first > last[0]
    return or_(first > last[0], and_(first == last[0], _after(rest, last[1:])))


class DanglingLink(NamedTuple):
    """A connector-space object joined to a metaverse object that does not exist."""

    agent: str
    anchor: str
    mv_id: int


class DuplicateLink(NamedTuple):
    """A metaverse object with more than one connector of one agent."""

    agent: str
    mv_id: int
    connectors: int


class OrphanExport(NamedTuple):
    """A pending export on an object never imported (``hologram`` None) or not joined."""

    agent: str
    anchor: str
    export_type: str
    hologram: str | None


class StoreAudit:
    """Read-only consistency reads over one store connection."""

    def __init__(self, store: SqlStore, conn: Connection) -> None:
        self._store = store
        self._conn = conn

    @property
    def integrity_check_name(self) -> str:
        """What the integrity check is called on this database."""
        return "SQLite's integrity_check" if self._conn.dialect.name == "sqlite" else "reading every table and index"

    def integrity_problems(self) -> list[str]:
        """What the database's own consistency check reports (empty: intact).

        SQLite: ``PRAGMA integrity_check`` (every page, index and constraint). PostgreSQL has no
        built-in equivalent without the ``amcheck`` extension; with it, every mvsync b-tree index is
        verified (``bt_index_check``), and every table is read in full either way, which makes a page
        whose checksum fails an error here rather than in the middle of a run.
        """
        conn = self._conn
        if conn.dialect.name == "sqlite":
            rows = [str(r[0]) for r in conn.exec_driver_sql("PRAGMA integrity_check").all()]
            return [] if rows == ["ok"] else rows
        problems: list[str] = []
        amcheck = conn.exec_driver_sql("SELECT 1 FROM pg_extension WHERE extname = 'amcheck'").first() is not None
        for table in metadata.sorted_tables:
            try:
                with conn.begin_nested():
                    conn.exec_driver_sql(f"SELECT count(*) FROM (SELECT * FROM {table.name}) AS t").all()
                    if amcheck:
                        for index in table.indexes:
                            conn.exec_driver_sql(f"SELECT bt_index_check('{index.name}'::regclass)")
            except DBAPIError as exc:
                problems.append(f"{table.name}: {str(exc.orig).strip()}")
        return problems

    def schema_version(self) -> int:
        """The store's schema version (0: no mvsync tables)."""
        return current_version(self._conn)

    def holds_tables(self) -> bool:
        """Whether the store holds any of mvsync's tables (False: empty, the first run creates them)."""
        return holds_tables(self._conn)

    def _pages(self, columns: list[Any], key: Any, *more_keys: Any) -> Iterator[list[Any]]:
        """Rows of ``(key, *more_keys, *columns)`` in key order, a bounded page at a time (keyset paging)."""
        keys = (key, *more_keys)
        last: Any = None
        while True:
            query = select(*keys, *columns).order_by(*keys).limit(_PAGE)
            if last is not None:
                query = query.where(_after(keys, last))
            rows = self._conn.execute(query).all()
            if not rows:
                return
            yield list(rows)
            last = tuple(rows[-1][: len(keys)])

    def damaged_documents(self) -> list[str]:
        """Every row whose JSON document is damaged, as ``cs_object row 7: its hologram ...``: not JSON, or
        JSON that is not what mvsync wrote (no longer an object, a date or photo reference that no
        longer decodes), as the console finds a row damaged.

        Why every document is parsed: SQLite's page checks see a page's structure, not the text in a
        value, so bytes changed inside a document pass ``integrity_check`` and stop a run that reads
        the row, or the console shows it as damaged (both send the operator here, so this must find it)."""
        found: list[str] = []
        sqlite = self._conn.dialect.name == "sqlite"
        for table, keys, columns, read_document in _DOCUMENTS:
            # SQLite keeps whatever bytes a damaged value holds; read as bytes, they fail as JSON here
            # (naming the row) instead of failing the read as text (naming only the column)
            read = [cast(c, LargeBinary).label(c.name) for c in columns] if sqlite else columns
            for rows in self._pages(read, *keys):
                for row in rows:
                    ident = row[0] if len(keys) == 1 else tuple(row[: len(keys)])
                    for column, text in zip(columns, row[len(keys) :], strict=True):
                        if text is None:
                            continue
                        try:
                            read_document(text, table.name, ident, column.name)
                        except DamagedDocumentError as exc:
                            found.append(exc.detail)
        return found

    def referenced_blobs(self) -> dict[str, tuple[int, str]]:
        """sha256 -> (size recorded by the reference, where one reference is) over every document."""
        refs: dict[str, tuple[int, str]] = {}
        docs = [
            (
                cs_object,
                "cs",
                [cs_object.c.hologram, cs_object.c.pending, cs_object.c.export_changes, cs_object.c.unconfirmed],
            ),
            (mv_object, "mv", [mv_object.c.attributes, mv_object.c.contributions]),
        ]
        for table, label, columns in docs:
            for rows in self._pages(columns, table.c.id):
                for row in rows:
                    for column, text in zip(columns, row[1:], strict=True):
                        if text and _BLOB_IN_JSON in text:  # skip parsing documents without binaries
                            for ref in blob_refs(loads(text, table.name, row[0], column.name)):
                                refs.setdefault(ref.sha256, (ref.size, f"{label} {row[0]} {column.name}"))
        for rows in self._pages([transform_cache.c.output], transform_cache.c.input):
            for inp, output in rows:
                for ref in [
                    *blob_refs(inp),
                    *(blob_refs(loads(output, "transform_cache", inp, "output")) if output else []),
                ]:
                    refs.setdefault(ref.sha256, (ref.size, "transform cache"))
        return refs

    def blob_sizes(self, hashes: list[str]) -> dict[str, int]:
        """sha256 -> stored size, for the stored ones among ``hashes``."""
        sizes: dict[str, int] = {}
        for i in range(0, len(hashes), 500):
            query = select(blob.c.sha256, blob.c.size).where(blob.c.sha256.in_(hashes[i : i + 500]))
            sizes.update({sha: int(size) for sha, size in self._conn.execute(query)})
        return sizes

    def corrupt_blobs(self) -> tuple[int, list[str]]:
        """(stored blobs, the hashes of those whose bytes do not hash to their name or size)."""
        corrupt: list[str] = []
        stored = 0
        for rows in self._pages([blob.c.size], blob.c.sha256):
            stored += len(rows)
            data = self._store.get_blobs(self._conn, [r[0] for r in rows])  # bounded queries
            for sha, size in rows:
                content = data.get(sha)
                if content is None or hashlib.sha256(content).hexdigest() != sha or len(content) != size:
                    corrupt.append(sha)
        return stored, corrupt

    def dangling_links(self) -> list[DanglingLink]:
        query = (
            select(cs_object.c.agent, cs_object.c.anchor, cs_object.c.mv_id)
            .select_from(cs_object.outerjoin(mv_object, mv_object.c.id == cs_object.c.mv_id))
            .where(cs_object.c.mv_id.is_not(None), mv_object.c.id.is_(None))
            .order_by(cs_object.c.id)
        )
        return [DanglingLink._make(row) for row in self._conn.execute(query)]

    def duplicate_links(self) -> list[DuplicateLink]:
        query = (
            select(cs_object.c.agent, cs_object.c.mv_id, func.count())
            .where(cs_object.c.mv_id.is_not(None))
            .group_by(cs_object.c.agent, cs_object.c.mv_id)
            .having(func.count() > 1)
        )
        return [DuplicateLink._make(row) for row in self._conn.execute(query)]

    def orphan_exports(self) -> list[OrphanExport]:
        """Pending exports on objects never imported, and updates on objects joined to nobody (a
        delete may outlive the person: deprovisioning stages it as the person goes)."""
        query = (
            select(cs_object.c.agent, cs_object.c.anchor, cs_object.c.export_type, cs_object.c.hologram)
            .where(
                cs_object.c.export_type.is_not(None),
                or_(
                    cs_object.c.hologram.is_(None),
                    and_(cs_object.c.export_type != "delete", cs_object.c.mv_id.is_(None)),
                ),
            )
            .order_by(cs_object.c.id)
        )
        return [OrphanExport._make(row) for row in self._conn.execute(query)]
