"""The metaverse as a repository: the reads and writes a synchronization makes on ``mv_object``.

Documents (attributes, contributions, lineage) stay JSON text in the rows: a full synchronization
parses contributions and lineage only for the objects whose flows changed.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, Connection, and_, delete, desc, func, literal, select, tuple_

from connector.store._batch import BatchInsert, BatchUpdate
from connector.store._store_meta import read_meta, write_meta
from connector.store.tables import mv_object

__all__ = ["Metaverse", "MetaverseRow", "MvObject"]

_IN_BATCH = 900
_INSERT = BatchInsert(
    mv_object,
    (
        "id",
        "object_type",
        "attributes",
        "contributions",
        "lineage",
        "display_name",
        "search_text",
        "created_at",
        "updated_at",
    ),
)
_UPDATE = BatchUpdate(
    mv_object, ("attributes", "contributions", "lineage", "display_name", "search_text", "updated_at")
)
_UPDATE_CONTRIBUTIONS = BatchUpdate(mv_object, ("contributions", "lineage"))


class MetaverseRow(NamedTuple):
    """A metaverse object with its documents as stored (JSON text)."""

    id: int
    object_type: str
    attributes: str
    contributions: str
    lineage: str


class MvObject(NamedTuple):
    """A whole metaverse object (columns in table order; documents as JSON text)."""

    id: int
    object_type: str
    attributes: str
    contributions: str
    lineage: str
    display_name: str | None
    search_text: str | None
    created_at: float | None
    updated_at: float | None


#: The ``store_meta`` key of the next metaverse id (see :meth:`Metaverse.next_id`).
_NEXT_ID_KEY = "mv_next_id"


class Metaverse:
    """The metaverse, read and written inside one store transaction (``conn``)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def next_id(self) -> int:
        """The id the next projected object gets (ids are assigned by the one synchronizing run):
        above every id ever given, not only those still there.

        Why remembered (:meth:`keep_next_id`): an id names a person in run history, in the console's
        links and bookmarks and in ``mvsync mv show``. The highest id + 1 gave the id of a person
        deleted last to the next one projected, so each of those then named somebody else.
        """
        highest = int(self._conn.execute(select(func.max(mv_object.c.id))).scalar() or 0)
        kept = read_meta(self._conn, _NEXT_ID_KEY)
        return max(highest + 1, int(kept) if kept else 1)

    def keep_next_id(self, next_id: int) -> None:
        """Remember that every id below ``next_id`` has been given (in the projecting transaction)."""
        write_meta(self._conn, _NEXT_ID_KEY, str(next_id))

    def last_change(self) -> float | None:
        """When an object was last projected or changed (None: the metaverse is empty)."""
        found = self._conn.execute(select(func.max(mv_object.c.updated_at))).scalar()
        return None if found is None else float(found)

    def attribute_pages(self, page: int = 20_000) -> Iterator[list[tuple[int, str, str]]]:
        """``(id, object type, attributes JSON)`` of every object, in keyset pages (to build a join index)."""
        last = -1
        while True:
            query = select(mv_object.c.id, mv_object.c.object_type, mv_object.c.attributes).where(mv_object.c.id > last)
            rows = [(row[0], row[1], row[2]) for row in self._conn.execute(query.order_by(mv_object.c.id).limit(page))]
            if not rows:
                return
            yield rows
            last = rows[-1][0]

    def load(self, ids: Sequence[int]) -> Iterator[MetaverseRow]:
        """The objects of ``ids`` that exist."""
        columns = (
            mv_object.c.id,
            mv_object.c.object_type,
            mv_object.c.attributes,
            mv_object.c.contributions,
            mv_object.c.lineage,
        )
        for i in range(0, len(ids), _IN_BATCH):
            for row in self._conn.execute(select(*columns).where(mv_object.c.id.in_(ids[i : i + _IN_BATCH]))):
                yield MetaverseRow._make(row)

    def get(self, mv_id: int) -> MvObject | None:
        found = self._conn.execute(select(mv_object).where(mv_object.c.id == mv_id)).first()
        return None if found is None else MvObject._make(found)

    def search(self, text: str, limit: int) -> list[MvObject]:
        """Objects whose name, mail, UPN or account name contains ``text`` (any case), by display name."""
        query = select(mv_object)
        if text:
            query = query.where(mv_object.c.search_text.like(f"%{text.lower()}%"))
        query = query.order_by(mv_object.c.display_name, mv_object.c.id).limit(limit)
        return [MvObject._make(row) for row in self._conn.execute(query)]

    def count(self) -> int:
        return int(self._conn.execute(select(func.count()).select_from(mv_object)).scalar_one())

    def display_names(self, ids: Sequence[int]) -> dict[int, str | None]:
        """Metaverse id -> display name, for the ids that exist."""
        found: dict[int, str | None] = {}
        for i in range(0, len(ids), _IN_BATCH):
            query = select(mv_object.c.id, mv_object.c.display_name).where(mv_object.c.id.in_(ids[i : i + _IN_BATCH]))
            found.update({row[0]: row[1] for row in self._conn.execute(query)})
        return found

    def objects(self, ids: Sequence[int]) -> dict[int, MvObject]:
        """The whole objects of ``ids`` that exist, by id."""
        found: dict[int, MvObject] = {}
        for i in range(0, len(ids), _IN_BATCH):
            for row in self._conn.execute(select(mv_object).where(mv_object.c.id.in_(ids[i : i + _IN_BATCH]))):
                found[row.id] = MvObject._make(row)
        return found

    def search_page(self, needle: str, *, after: int | None, before: int | None, limit: int) -> list[int]:
        """Ids of up to ``limit`` objects whose search text contains ``needle``, in search-text order,
        after (or before) the object of that id: a keyset page.

        Walks the ``(search_text, id)`` index (migration 2) in order and stops after a page: the
        index holds only the short search text, so even a match-nothing query scans a few MB instead
        of every object's JSON documents, and page 2,000 costs what page 1 costs. A page read
        ``before`` comes back in descending order.
        """
        key = tuple_(mv_object.c.search_text, mv_object.c.id)
        cond: list[ColumnElement[bool]] = [mv_object.c.search_text.is_not(None)]
        if needle:
            cond.append(mv_object.c.search_text.contains(needle, autoescape=True))
        cursor_id = after if after is not None else before
        if cursor_id is not None:
            anchor = self._conn.execute(select(mv_object.c.search_text).where(mv_object.c.id == cursor_id)).scalar()
            if anchor is not None:
                bound = tuple_(literal(anchor), literal(cursor_id))
                cond.append(key > bound if after is not None else key < bound)
        backwards = before is not None and after is None
        order = (
            (desc(mv_object.c.search_text), desc(mv_object.c.id))
            if backwards
            else (mv_object.c.search_text, mv_object.c.id)
        )
        query = select(mv_object.c.id).where(and_(*cond)).order_by(*order).limit(limit)
        return [int(i) for i in self._conn.execute(query).scalars()]

    def count_matching(self, needle: str, cap: int) -> int:
        """How many objects' search text contains ``needle``, counting at most ``cap + 1``."""
        inner = (
            select(literal(1))
            .where(mv_object.c.search_text.contains(needle, autoescape=True))
            .limit(cap + 1)
            .subquery()
        )
        return int(self._conn.execute(select(func.count()).select_from(inner)).scalar_one())

    def write(
        self, new: list[dict[str, Any]], changed: list[dict[str, Any]], contributions_only: list[dict[str, Any]]
    ) -> None:
        """Insert projected objects and update changed ones, each kind as one batch.

        ``new`` rows carry every column; ``changed`` rows ``_id`` and the documents, display name,
        search text and ``updated_at``; ``contributions_only`` rows ``_id``, ``contributions`` and
        ``lineage`` (a lower-ranked source changed, the final values did not).
        """
        _INSERT.run(self._conn, new)
        _UPDATE.run(self._conn, changed)
        _UPDATE_CONTRIBUTIONS.run(self._conn, contributions_only)

    def delete(self, ids: Sequence[int]) -> None:
        if ids:
            self._conn.execute(delete(mv_object).where(mv_object.c.id.in_(list(ids))))
