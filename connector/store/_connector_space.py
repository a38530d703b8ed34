"""The connector space as a repository: the reads and writes the engine's synchronization and export
make on ``cs_object``, with typed rows.

Why here: the schema, its indexes and the statements that depend on them (which index a query must
hit, which statements run as one batch) change together, so they live together; the engine works
on rows and documents and never writes SQL.

Rows are ``NamedTuple``s: typed like a dataclass, built from a driver row in one C call (a
synchronization reads 200,000 of them, so construction cost shows). JSON documents (hologram,
pending, exports) stay text: the engine parses only those it needs.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from sqlalchemy import ColumnElement, Connection, and_, case, delete, func, literal, or_, select, update
from sqlalchemy import text as sql_text

from connector.store._batch import BatchInsert, BatchUpdate
from connector.store._migrations import DISCONNECTED_PREDICATE, ERROR_PREDICATE, photo_predicate
from connector.store.tables import cs_object

__all__ = [
    "ConnectorRow",
    "ConnectorSpace",
    "CsObject",
    "CsSearch",
    "ExportState",
    "ImportRow",
    "PendingExportRow",
    "SourceObject",
    "SyncRow",
]

#: Ids per ``IN (...)`` list: below SQLite's default limit of host parameters, few round trips.
_IN_BATCH = 900


class SyncRow(NamedTuple):
    """A connector-space object as a synchronization step reads it (its own agent's objects)."""

    id: int
    object_class: str
    anchor: str
    hologram: str | None
    pending_type: str | None
    pending: str | None
    mv_id: int | None
    unconfirmed: str | None
    renderings: str | None
    export_type: str | None
    export_changes: str | None
    sync_error: str | None


class ConnectorRow(NamedTuple):
    """A connector of a metaverse object, as outbound attribute flow reads it."""

    id: int
    agent: str
    object_class: str
    anchor: str
    hologram: str | None
    unconfirmed: str | None
    renderings: str | None
    export_type: str | None
    export_changes: str | None
    mv_id: int


class SourceObject(NamedTuple):
    """How an agent's object names itself: its anchor, and its DN where it has one."""

    anchor: str
    dn: str | None


class PendingExportRow(NamedTuple):
    """A connector-space object with a pending export."""

    id: int
    object_class: str
    anchor: str
    dn: str | None
    hologram: str | None
    #: ``add``, ``update`` or ``delete`` (objects without a pending export are not read)
    export_type: str
    export_changes: str | None
    unconfirmed: str | None
    export_error: str | None
    mv_id: int | None


class CsObject(NamedTuple):
    """A whole connector-space object, as the CLI and console show it (columns in table order)."""

    id: int
    agent: str
    object_class: str
    anchor: str
    dn: str | None
    hologram: str | None
    pending_type: str | None
    pending: str | None
    mv_id: int | None
    joined_at: float | None
    seen_step: int | None
    export_type: str | None
    export_changes: str | None
    unconfirmed: str | None
    renderings: str | None
    export_error: str | None
    import_error: str | None
    sync_error: str | None
    updated_at: float | None


class CsSearch(NamedTuple):
    """MIM's connector-space search scopes; every scope that is set must hold."""

    #: a substring of the anchor or the DN
    text: str | None = None
    pending_import: bool = False
    pending_export: bool = False
    #: joined to no metaverse object
    disconnectors: bool = False
    #: with an import, sync or export error
    errors: bool = False


class ExportState(NamedTuple):
    """The pending export of an object as it is now (to tell whether a sync restaged it)."""

    export_type: str | None
    export_changes: str | None


_SYNC_COLUMNS = (
    cs_object.c.id,
    cs_object.c.object_class,
    cs_object.c.anchor,
    cs_object.c.hologram,
    cs_object.c.pending_type,
    cs_object.c.pending,
    cs_object.c.mv_id,
    cs_object.c.unconfirmed,
    cs_object.c.renderings,
    cs_object.c.export_type,
    cs_object.c.export_changes,
    cs_object.c.sync_error,
)
_CONNECTOR_COLUMNS = (
    cs_object.c.id,
    cs_object.c.agent,
    cs_object.c.object_class,
    cs_object.c.anchor,
    cs_object.c.hologram,
    cs_object.c.unconfirmed,
    cs_object.c.renderings,
    cs_object.c.export_type,
    cs_object.c.export_changes,
    cs_object.c.mv_id,
)
_PENDING_EXPORT_COLUMNS = (
    cs_object.c.id,
    cs_object.c.object_class,
    cs_object.c.anchor,
    cs_object.c.dn,
    cs_object.c.hologram,
    cs_object.c.export_type,
    cs_object.c.export_changes,
    cs_object.c.unconfirmed,
    cs_object.c.export_error,
    cs_object.c.mv_id,
)
#: Objects a delta synchronization visits: a pending import, or an error to retry.
_NEEDS_SYNC = or_(cs_object.c.pending_type.is_not(None), cs_object.c.sync_error.is_not(None))
#: The same and the disconnectors, which may join what the metaverse gained since they were last judged.
_NEEDS_SYNC_OR_UNJOINED = or_(_NEEDS_SYNC, cs_object.c.mv_id.is_(None))


#: A joined object whose deletion an import staged, and every other object (NULL-safe): a synchronization
#: visits the first kind before the second (``ConnectorSpace.sync_rows``).
_JOINED_DELETE = and_(cs_object.c.pending_type == "delete", cs_object.c.mv_id.is_not(None))
_NOT_JOINED_DELETE = or_(
    cs_object.c.pending_type.is_(None), cs_object.c.pending_type != "delete", cs_object.c.mv_id.is_(None)
)


def _delta(disconnectors: bool) -> ColumnElement[bool]:
    """What a delta synchronization visits (``disconnectors``: the disconnectors too)."""
    return _NEEDS_SYNC_OR_UNJOINED if disconnectors else _NEEDS_SYNC


#: An applied import, and the same staging the export the synchronization computed for the row.
_APPLY_IMPORT = BatchUpdate(
    cs_object,
    ("hologram", "mv_id", "joined_at", "sync_error", "updated_at"),
    nulls=("pending_type", "pending"),
    keep_when_null=frozenset({"joined_at"}),
)
_APPLY_IMPORT_AND_EXPORT = BatchUpdate(
    cs_object,
    ("hologram", "mv_id", "joined_at", "sync_error", "updated_at", "export_type", "export_changes"),
    nulls=("pending_type", "pending", "export_error"),
    keep_when_null=frozenset({"joined_at"}),
)
_STAGE_EXPORT = BatchUpdate(cs_object, ("export_type", "export_changes", "mv_id"), nulls=("export_error",))
_RECORD_EXPORT = BatchUpdate(
    cs_object, ("export_type", "export_changes", "unconfirmed", "export_error", "anchor", "updated_at")
)
#: What an import stages: new objects, and the pending import of known ones.
_ADD_STAGED = BatchInsert(
    cs_object,
    ("agent", "object_class", "anchor", "dn", "hologram", "pending_type", "pending", "seen_step", "updated_at"),
)
_UPDATE_STAGED = BatchUpdate(
    cs_object,
    ("object_class", "dn", "pending_type", "pending", "unconfirmed", "renderings", "seen_step", "updated_at"),
    nulls=("import_error",),
)


class ImportRow(NamedTuple):
    """What an import page needs of an object it meets again: its hologram and what is pending."""

    id: int
    anchor: str
    hologram: str | None
    pending_type: str | None
    pending: str | None
    unconfirmed: str | None
    renderings: str | None
    dn: str | None
    import_error: str | None
    #: The import step that last saw the object (an anchor met twice in one step is a duplicate).
    seen_step: int | None


def _unseen(agent: str, step_id: int) -> ColumnElement[bool]:
    """Objects of ``agent`` that the full import step ``step_id`` did not see."""
    return and_(cs_object.c.agent == agent, or_(cs_object.c.seen_step.is_(None), cs_object.c.seen_step != step_id))


#: The error document of each stage in the connector space.
_ERROR_COLUMNS = {
    "sync": cs_object.c.sync_error,
    "export": cs_object.c.export_error,
    "import": cs_object.c.import_error,
}
#: Objects in error, as ``ix_cs_error``'s predicate (verbatim, so that the planners use it), in
#: parentheses: ANDed with more terms, its ORs must stay together.
_IN_ERROR = sql_text(f"({ERROR_PREDICATE})")
#: How an error document as mvsync writes it starts: its name first (see ``ConnectorSpace._error_name``).
_NAME_START = '{"name":"'


class ConnectorSpace:
    """The connector space, read and written inside one store transaction (``conn``)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    # ------------------------------------------------------------------------------ counts
    def count(
        self, agent: str, *, needing_sync: bool = False, pending_export: bool = False, disconnectors: bool = False
    ) -> int:
        """Objects of ``agent``; only those a delta sync visits (``disconnectors``: with the
        disconnectors), or only those with a pending export."""
        query = select(func.count()).select_from(cs_object).where(cs_object.c.agent == agent)
        if needing_sync:
            query = query.where(_delta(disconnectors))
        if pending_export:
            query = query.where(cs_object.c.export_type.is_not(None))
        return int(self._conn.execute(query).scalar_one())

    # ---------------------------------------------------------------------------- lookups
    def get(self, agent: str, anchor: str) -> CsObject | None:
        row = self._conn.execute(select(cs_object).where(cs_object.c.agent == agent, cs_object.c.anchor == anchor))
        found = row.first()
        return None if found is None else CsObject._make(found)

    def search(self, agent: str, scope: CsSearch, limit: int) -> list[CsObject]:
        """The first ``limit`` objects of ``agent`` in ``scope``, in id order."""
        query = select(cs_object).where(cs_object.c.agent == agent)
        if scope.text:
            like = f"%{scope.text}%"
            query = query.where(or_(cs_object.c.anchor.like(like), cs_object.c.dn.like(like)))
        if scope.pending_import:
            query = query.where(cs_object.c.pending_type.is_not(None))
        if scope.pending_export:
            query = query.where(cs_object.c.export_type.is_not(None))
        if scope.disconnectors:
            query = query.where(cs_object.c.mv_id.is_(None))
        if scope.errors:
            query = query.where(
                or_(
                    cs_object.c.export_error.is_not(None),
                    cs_object.c.sync_error.is_not(None),
                    cs_object.c.import_error.is_not(None),
                )
            )
        return [CsObject._make(row) for row in self._conn.execute(query.order_by(cs_object.c.id).limit(limit))]

    def objects(self, agent: str, page: int = 5000) -> Iterator[CsObject]:
        """Every object of ``agent`` in id order, read in keyset pages so memory stays bounded."""
        last = -1
        while True:
            query = select(cs_object).where(cs_object.c.agent == agent, cs_object.c.id > last)
            rows = [CsObject._make(row) for row in self._conn.execute(query.order_by(cs_object.c.id).limit(page))]
            if not rows:
                return
            yield from rows
            last = rows[-1].id

    def joined_to(self, mv_id: int) -> list[CsObject]:
        """The connectors of one metaverse object."""
        query = select(cs_object).where(cs_object.c.mv_id == mv_id).order_by(cs_object.c.id)
        return [CsObject._make(row) for row in self._conn.execute(query)]

    # ----------------------------------------------------------------------- synchronization
    def sync_rows(
        self,
        agent: str,
        *,
        after_id: int,
        limit: int,
        delta: bool,
        disconnectors: bool = False,
        joined_deletes: bool | None = None,
    ) -> list[SyncRow]:
        """The next ``limit`` objects of ``agent`` after ``after_id`` (on a delta, only those to visit,
        with the disconnectors when ``disconnectors``); with ``joined_deletes``, only the joined objects
        whose deletion is staged (True) or all the others (False)."""
        query = select(*_SYNC_COLUMNS).where(cs_object.c.agent == agent, cs_object.c.id > after_id)
        if delta:
            query = query.where(_delta(disconnectors))
        if joined_deletes is not None:
            query = query.where(_JOINED_DELETE if joined_deletes else _NOT_JOINED_DELETE)
        rows = self._conn.execute(query.order_by(cs_object.c.id).limit(limit))
        return [SyncRow._make(row) for row in rows]

    def has_disconnectors(self, agent: str) -> bool:
        """Whether ``agent`` has an object joined to no metaverse object."""
        query = select(cs_object.c.id).where(cs_object.c.agent == agent, cs_object.c.mv_id.is_(None)).limit(1)
        return self._conn.execute(query).first() is not None

    def has_joined_deletes(self, agent: str) -> bool:
        """Whether ``agent`` has a joined object whose deletion an import staged (a synchronization
        disconnects it, which frees its metaverse object for the agent's disconnectors)."""
        query = select(cs_object.c.id).where(cs_object.c.agent == agent, _JOINED_DELETE)
        return self._conn.execute(query.limit(1)).first() is not None

    def joined_mv_ids(self, agent: str) -> set[int]:
        """Metaverse objects ``agent`` already has a connector to (a join never takes a second one)."""
        query = select(cs_object.c.mv_id).where(cs_object.c.agent == agent, cs_object.c.mv_id.is_not(None))
        return set(self._conn.execute(query).scalars())

    def connectors_of(self, mv_ids: Sequence[int]) -> Iterator[ConnectorRow]:
        """Every connector of these metaverse objects, in any agent.

        Callers filter agents themselves: with ``agent IN (...)`` SQLite picks the agent index and
        scans the whole connector space once per chunk.
        """
        for i in range(0, len(mv_ids), _IN_BATCH):
            query = select(*_CONNECTOR_COLUMNS).where(cs_object.c.mv_id.in_(mv_ids[i : i + _IN_BATCH]))
            for row in self._conn.execute(query):
                yield ConnectorRow._make(row)

    def identities(self, mv_ids: Sequence[int]) -> dict[tuple[int, str], SourceObject]:
        """(metaverse id, agent) -> the object joined there: its anchor and DN (a file's path, for a
        folder), to name where a metaverse value came from."""
        found: dict[tuple[int, str], SourceObject] = {}
        for i in range(0, len(mv_ids), _IN_BATCH):
            query = select(cs_object.c.mv_id, cs_object.c.agent, cs_object.c.anchor, cs_object.c.dn).where(
                cs_object.c.mv_id.in_(mv_ids[i : i + _IN_BATCH])
            )
            for mv_id, agent, anchor, dn in self._conn.execute(query):
                found[(mv_id, agent)] = SourceObject(anchor, dn)
        return found

    def agents_joined_to(self, mv_ids: Sequence[int], *, ignoring: Sequence[int]) -> dict[int, set[str]]:
        """Metaverse id -> the agents still connected to it, leaving out the objects ``ignoring``."""
        joined: dict[int, set[str]] = defaultdict(set)
        for i in range(0, len(mv_ids), _IN_BATCH):
            query = select(cs_object.c.mv_id, cs_object.c.agent).where(
                cs_object.c.mv_id.in_(mv_ids[i : i + _IN_BATCH]), cs_object.c.id.not_in(list(ignoring) or [-1])
            )
            for mv_id, agent in self._conn.execute(query):
                joined[mv_id].add(agent)
        return joined

    def apply_sync(
        self,
        imports: list[dict[str, Any]],
        imports_with_export: list[dict[str, Any]],
        exports: list[dict[str, Any]],
        deletes: list[int],
    ) -> None:
        """Write a synchronization chunk's connector-space changes.

        ``imports``: applied pending imports (``_id``, ``hologram``, ``mv_id``, ``joined_at``,
        ``sync_error``, ``updated_at``); ``imports_with_export``: the same plus the export staged on
        the row (``export_type``, ``export_changes``), written once instead of twice; ``exports``:
        staged exports of other rows (``_id``, ``mv_id``, ``export_type``, ``export_changes``);
        ``deletes``: ids of objects whose pending delete was applied.
        """
        _APPLY_IMPORT.run(self._conn, imports)
        _APPLY_IMPORT_AND_EXPORT.run(self._conn, imports_with_export)
        _STAGE_EXPORT.run(self._conn, exports)
        if deletes:
            self._conn.execute(delete(cs_object).where(cs_object.c.id.in_(deletes)))

    # ---------------------------------------------------------------------------- exports
    def pending_exports(self, agent: str, *, after_id: int = -1, limit: int | None = None) -> list[PendingExportRow]:
        """The pending exports of ``agent`` after ``after_id``, in id order (keyset pages)."""
        query = (
            select(*_PENDING_EXPORT_COLUMNS)
            .where(cs_object.c.agent == agent, cs_object.c.export_type.is_not(None), cs_object.c.id > after_id)
            .order_by(cs_object.c.id)
        )
        if limit is not None:
            query = query.limit(limit)
        return [PendingExportRow._make(row) for row in self._conn.execute(query)]

    def all_pending_exports(self, agent: str, page: int = 5000) -> Iterator[PendingExportRow]:
        """Every pending export of ``agent``, read in keyset pages so memory stays bounded."""
        last = -1
        while rows := self.pending_exports(agent, after_id=last, limit=page):
            yield from rows
            last = rows[-1].id

    def export_states(self, ids: Iterable[int]) -> dict[int, ExportState]:
        """The pending export of each object now, locked until the transaction ends (PostgreSQL)."""
        wanted = list(ids)
        found: dict[int, ExportState] = {}
        for i in range(0, len(wanted), _IN_BATCH):
            query = (
                select(cs_object.c.id, cs_object.c.export_type, cs_object.c.export_changes)
                .where(cs_object.c.id.in_(wanted[i : i + _IN_BATCH]))
                .with_for_update()
            )
            for row in self._conn.execute(query):
                found[row.id] = ExportState(row.export_type, row.export_changes)
        return found

    def record_exports(self, updates: list[dict[str, Any]]) -> None:
        """Write export results: ``_id``, ``export_type``, ``export_changes``, ``unconfirmed``,
        ``export_error``, ``anchor`` (a connector may rename) and ``updated_at`` of each object."""
        _RECORD_EXPORT.run(self._conn, updates)

    # ---------------------------------------------------------------------------- imports
    def stage_imports(self, added: list[dict[str, Any]], updated: list[dict[str, Any]]) -> None:
        """Write an import page: ``added`` objects (``agent``, ``object_class``, ``anchor``, ``dn``,
        ``hologram``, ``pending_type``, ``pending``, ``seen_step``, ``updated_at``) and the pending
        import of ``updated`` ones (``_id``, ``object_class``, ``dn``, ``pending_type``, ``pending``,
        ``unconfirmed``, ``renderings``, ``seen_step``, ``updated_at``; their import error is cleared)."""
        _ADD_STAGED.run(self._conn, added)
        _UPDATE_STAGED.run(self._conn, updated)

    def import_rows(self, agent: str, anchors: Sequence[str]) -> dict[str, ImportRow]:
        """The objects of ``agent`` among ``anchors`` (keyed by anchor), for an import page."""
        columns = [cs_object.c[name] for name in ImportRow._fields]
        found: dict[str, ImportRow] = {}
        for i in range(0, len(anchors), _IN_BATCH):
            chunk = anchors[i : i + _IN_BATCH]
            for row in self._conn.execute(
                select(*columns).where(cs_object.c.agent == agent, cs_object.c.anchor.in_(chunk))
            ):
                found[row.anchor] = ImportRow._make(row)
        return found

    def mark_seen(self, agent: str, anchors: Sequence[str], step_id: int) -> None:
        """``anchors`` were seen by step ``step_id`` although their entries failed: a full import keeps them."""
        for i in range(0, len(anchors), _IN_BATCH):
            chunk = anchors[i : i + _IN_BATCH]
            self._conn.execute(
                update(cs_object)
                .where(cs_object.c.agent == agent, cs_object.c.anchor.in_(chunk))
                .values(seen_step=step_id)
            )

    def remove(self, ids: Sequence[int]) -> None:
        """Drop objects outright (an import's delete of an object that never reached the metaverse)."""
        for i in range(0, len(ids), _IN_BATCH):
            self._conn.execute(delete(cs_object).where(cs_object.c.id.in_(ids[i : i + _IN_BATCH])))

    def adopt_seen(self, agent: str, from_step: int, to_step: int) -> None:
        """What step ``from_step`` saw counts as seen by ``to_step`` (a full import resuming another)."""
        self._conn.execute(
            update(cs_object)
            .where(cs_object.c.agent == agent, cs_object.c.seen_step == from_step)
            .values(seen_step=to_step)
        )

    def unseen_by_full_import(self, agent: str, step_id: int) -> list[str]:
        """The anchors :meth:`close_full_import` would newly mark deleted: objects with a hologram that
        step ``step_id`` did not see and that hold no pending delete yet."""
        newly = or_(cs_object.c.pending_type.is_(None), cs_object.c.pending_type != "delete")
        query = select(cs_object.c.anchor).where(_unseen(agent, step_id), cs_object.c.hologram.is_not(None), newly)
        return [str(anchor) for anchor in self._conn.execute(query).scalars()]

    def close_full_import(self, agent: str, step_id: int, now: float) -> list[str]:
        """The full import's deletion rule: what step ``step_id`` did not see is gone.

        Objects with a hologram get a pending delete (the synchronization decides what it means);
        those that never had one (staged adds) simply go. Returns the anchors newly marked deleted.
        """
        mine = _unseen(agent, step_id)
        gone = self.unseen_by_full_import(agent, step_id)
        self._conn.execute(
            update(cs_object)
            .where(mine, cs_object.c.hologram.is_not(None))
            .values(pending_type="delete", pending=None, updated_at=now)
        )
        self._conn.execute(delete(cs_object).where(mine, cs_object.c.hologram.is_(None)))
        return gone

    def pending_export_fingerprint(self, agent: str) -> tuple[Any, ...]:
        """What changes whenever the agent's pending exports or its object count change.

        Read from the ``ix_cs_export`` partial index plus the agent's object count; every engine
        write sets ``updated_at``, so a reader may cache what it computed from the pending set.
        """
        pending = select(func.count(), func.sum(cs_object.c.id), func.max(cs_object.c.updated_at)).where(
            cs_object.c.agent == agent, cs_object.c.export_type.is_not(None)
        )
        return (*self._conn.execute(pending).one(), self.count(agent))

    # ------------------------------------------------------------- console figures (indexed)
    def counts_per_agent(self, *, only: str | None = None) -> dict[str, int]:
        """Objects per agent; ``only``: ``"disconnected"``, ``"with-photo"``, ``"pending-export"`` or ``"in-error"``.

        Each count reads one index: ``ix_cs_agent_id``, or migration 2's partial indexes, whose
        predicates are used verbatim (that is how the planners recognize them), so no JSON
        document is read.
        """
        query = select(cs_object.c.agent, func.count()).group_by(cs_object.c.agent)
        if only == "disconnected":
            query = query.where(sql_text(DISCONNECTED_PREDICATE))
        elif only == "with-photo":
            query = query.where(sql_text(photo_predicate(self._conn.dialect.name)))
        elif only == "pending-export":
            query = query.where(cs_object.c.export_type.is_not(None))
        elif only == "in-error":
            query = query.where(sql_text(ERROR_PREDICATE))
        elif only is not None:
            msg = f"unknown connector-space count {only!r}"
            raise ValueError(msg)
        return {agent: int(n) for agent, n in self._conn.execute(query)}

    def error_names(self) -> list[tuple[str, str, str | None, int]]:
        """``(agent, stage, error name, objects)`` of the objects in error now, counted by the database.

        Why in SQL: the console's coverage page read every object in error and parsed its documents
        (2-3 s with 100,000 people in error); this reads the ``ix_cs_error`` rows once and returns a row
        per agent, stage and name. The name is read from the text as mvsync writes it (see
        :meth:`_error_name`); a document written otherwise, or damaged there, is counted under the
        name None, and :meth:`unnamed_errors` returns those few for the caller to read one by one.
        """
        names = [self._error_name(column).label(stage) for stage, column in _ERROR_COLUMNS.items()]
        named = select(cs_object.c.agent, *names).where(_IN_ERROR).subquery()
        stages = [named.c[stage] for stage in _ERROR_COLUMNS]
        query = select(named.c.agent, *stages, func.count()).group_by(named.c.agent, *stages)
        counts: Counter[tuple[str, str, str | None]] = Counter()
        for agent, *found, n in self._conn.execute(query):
            for stage, name in zip(_ERROR_COLUMNS, found, strict=True):
                if name is not None:  # '' (or an escape in it): a name the text does not give as it is
                    counts[(agent, stage, None if not name or "\\" in name else name)] += int(n)
        return [(agent, stage, name, n) for (agent, stage, name), n in counts.items()]

    def unnamed_errors(self, stage: str) -> list[tuple[str, int, str]]:
        """``(agent, object id, error document)`` of the objects whose ``stage`` error :meth:`error_names`
        counted under None: documents not written as mvsync writes them, or damaged."""
        column = _ERROR_COLUMNS[stage]
        name = self._error_name(column)
        unnamed = or_(name == "", self._position(name, "\\") > 0)
        query = select(cs_object.c.agent, cs_object.c.id, column).where(_IN_ERROR, unnamed)
        return [(agent, int(cs_id), doc) for agent, cs_id, doc in self._conn.execute(query)]

    def _error_name(self, column: Any) -> ColumnElement[Any]:
        """The error name at the start of an error document as mvsync writes it (orjson, ``name`` the
        first key: ``{"name":"cd-error",...`` or ``{"name":"cd-error"}``); NULL where there is no
        document; '' where the text does not start so (damaged, or written otherwise): those are read
        as JSON instead, as is a name that holds an escape (``\\"``: :meth:`error_names` leaves it to
        :meth:`unnamed_errors`). No quote is unescaped inside the name, so the first ``",`` (or ``"}``)
        ends it.

        Why string positions on the whole text: cutting the rest of the text out first (a copy of each
        document) took twice as long on 100,000 objects in error. A CASE, whose branches the database
        evaluates in order: the name is cut only where its end was found (PostgreSQL refuses a negative
        length)."""
        comma = self._position(column, '",')
        end = case((comma > 0, comma), else_=self._position(column, '"}'))
        start = len(_NAME_START) + 1
        return case(
            (column.is_(None), None),
            (func.substr(column, 1, len(_NAME_START)) != _NAME_START, literal("")),
            (end <= start, literal("")),
            else_=func.substr(column, start, end - start),
        )

    def export_writes_and_clears(self, agent: str, attribute: str) -> tuple[int, int]:
        """(writes, clears) of ``attribute`` among the agent's pending exports, from the JSON text
        (a value after ``"attribute":`` is a write, ``null`` a clear) without parsing documents."""
        key = f'"{attribute}":'
        changes = cs_object.c.export_changes
        writes = func.sum(case((self._position(changes, key + '"') > 0, 1), else_=0))
        clears = func.sum(case((self._position(changes, key + "null") > 0, 1), else_=0))
        row = self._conn.execute(
            select(writes, clears).where(cs_object.c.agent == agent, cs_object.c.export_type.is_not(None))
        ).one()
        return int(row[0] or 0), int(row[1] or 0)

    def _position(self, column: Any, needle: str) -> ColumnElement[Any]:
        """Position of ``needle`` in a text column (instr on SQLite, strpos on PostgreSQL)."""
        name = "strpos" if self._conn.dialect.name == "postgresql" else "instr"
        return getattr(func, name)(column, literal(needle))  # type: ignore[no-any-return]
