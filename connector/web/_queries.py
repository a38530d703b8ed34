"""The console's reads. Every query is bounded (a page, an indexed lookup or one aggregate), so a
page costs the same with 1,000 or 100,000 persons; see ``connector/bench/ui.py`` for the figures.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from connector.config import MvsyncConfig, RunStepKind
from connector.engine import (
    ENDED_UNRECORDED,
    ended_unrecorded,
    load_metaverse_schema,
    shown_status,
    threshold_report,
    unrecorded_message,
)
from connector.registry import connector_name
from connector.sdk import AttributeType
from connector.store import (
    ConnectorSpace,
    CsObject,
    DamagedDocumentError,
    Metaverse,
    RunHistory,
    SqlStore,
    StepRow,
    StoreConnection,
    decode_value,
    loads_object,
    people,
)
from connector.web._photos import PhotoInfo, photo_infos
from connector.web._values import BinaryRef, Shown, binary_refs, format_time, show_value

__all__ = [
    "AgentCoverage",
    "Console",
    "PendingRow",
    "PersonHit",
    "PhotoCard",
    "RunView",
    "SearchPage",
    "StepView",
    "status_class",
]

log = logging.getLogger("mvsync.web")

PAGE = 50
#: The error name coverage counts an object under when its error document is damaged.
DAMAGED_KIND = "(damaged row: run mvsync doctor)"
#: Search counts stop here: "10,000+ match" is as useful as the exact figure and stays cheap.
COUNT_CAP = 10_000

#: Friendly names of the shipped agent types, in the order photos are shown side by side.
SOURCE_LABELS = {
    "exchange-online-photos": "Exchange Online",
    "photo-folder": "Folder",
    "active-directory": "AD thumbnail",
    # mvsync demo's directory stand-in (an LDIF snapshot) plays the same part
    "active-directory-snapshot": "AD thumbnail",
}


def status_class(status: str) -> str:
    """CSS class for a MIM-style status: ok, warn, error or running."""
    if status in ("success", "completed-no-objects"):
        return "ok"
    if status == "in-progress":
        return "running"
    if status == ENDED_UNRECORDED:  # its process is gone without recording its end
        return "error"
    if status == "completed-warnings":
        return "warn"
    return "error" if status.startswith(("stopped-", "completed-")) else "warn"


@dataclass
class StepView:
    id: int
    run_id: int
    seq: int
    agent: str
    kind: str
    status: str
    started: str
    seconds: float | None
    message: str | None
    counters: list[tuple[str, Any]]
    error_count: int = 0
    #: why the step's counters cannot be shown (its row is damaged), else None
    damaged: str | None = None

    @property
    def css(self) -> str:
        return status_class(self.status)


@dataclass
class RunView:
    id: int
    profile: str
    status: str
    dry_run: bool
    started: str
    seconds: float | None
    host: str | None
    steps: list[StepView] = field(default_factory=list)
    #: why the run ended before its first step (a configuration error, a store fault)
    message: str | None = None

    @property
    def css(self) -> str:
        return status_class(self.status)


@dataclass
class ErrorView:
    """A per-object error with the person it is about (linked when joined to one)."""

    id: int
    anchor: str | None
    object_class: str | None
    stage: str
    error_name: str
    severity: str
    detail: str | None
    display: str | None
    mv_id: int | None

    @property
    def search_text(self) -> str:
        """What finds the person when the object is not joined: the name, else the anchor."""
        return (self.display or self.anchor or "").split(" (", 1)[0]


@dataclass
class PersonHit:
    id: int
    display_name: str
    account: str
    mail: str
    upn: str
    photo: BinaryRef | None
    #: why the person's attributes cannot be shown (its row is damaged), else None
    damaged: str | None = None


@dataclass
class SearchPage:
    query: str
    hits: list[PersonHit]
    total: int
    capped: bool
    next_after: int | None
    prev_before: int | None


@dataclass
class PhotoCard:
    """One source's photo of a person, or its absence."""

    agent: str
    source: str
    attribute: str
    ref: BinaryRef | None
    info: PhotoInfo | None
    last_checked: str
    cs_id: int
    anchor: str
    #: what the next export writes here: a ref, "clear", or None for nothing pending
    export_after: BinaryRef | str | None = None


@dataclass
class PendingRow:
    cs_id: int
    anchor: str
    dn: str | None
    export_type: str
    person: str
    mv_id: int | None
    before: BinaryRef | None
    after: BinaryRef | None
    clears: bool
    others: list[tuple[str, str]]
    error: str | None
    #: why the row's documents cannot be shown (it is damaged), else None
    damaged: str | None = None


@dataclass
class AgentCoverage:
    agent: str
    source: str
    objects: int
    joined: int
    with_photo: int
    pending_exports: int
    object_errors: int
    #: binary export flows: attribute -> (writes pending, clears pending)
    differing: dict[str, tuple[int, int]] = field(default_factory=dict)


def _readable(text: str | None, table: str, row: object, column: str, damage: list[str]) -> Any:
    """The document ``text`` (None where there is none); None, with why in ``damage``, where it is damaged.

    Why: one row whose bytes changed on the disk made its whole page a 500 (the operations history
    for one step's counters); the page shows the other rows, and this one as damaged with the hint
    to run ``mvsync doctor``, which lists every damaged row by the same check
    (:func:`~connector.store.loads_object`: damage may leave the text JSON).
    """
    if not text:
        return None
    try:
        return loads_object(text, table, row, column)
    except DamagedDocumentError as exc:
        damage.append(_noted(exc))
        return None


def _noted(exc: DamagedDocumentError) -> str:
    """What is damaged, logged for the operator where the console runs."""
    log.warning("a row of the store is damaged: %s; `mvsync doctor` lists every damaged row", exc.detail)
    return exc.detail


def _damage_text(damage: list[str]) -> str | None:
    """What a view shows of its row's damage (None: none)."""
    return "; ".join(damage) or None


@dataclass
class _Connector:
    """A connector of a person with its documents read: a damaged one reads as empty and is named."""

    row: CsObject
    hologram: dict[str, Any]
    changes: dict[str, Any]
    export_error: dict[str, Any] | None
    sync_error: dict[str, Any] | None
    damaged: str | None

    @classmethod
    def read(cls, c: CsObject) -> _Connector:
        damage: list[str] = []

        def doc(text: str | None, column: str) -> Any:
            return _readable(text, "cs_object", c.id, column, damage)

        hologram, changes = doc(c.hologram, "hologram") or {}, doc(c.export_changes, "export_changes") or {}
        errors = doc(c.export_error, "export_error"), doc(c.sync_error, "sync_error")
        return cls(c, hologram, changes, *errors, _damage_text(damage))


def _counters(row: StepRow, damage: list[str]) -> list[tuple[str, Any]]:
    """Scalar counters first, nested ones flattened as ``outer.inner``."""
    flat: list[tuple[str, Any]] = []
    for key, value in sorted((_readable(row.counters, "run_step", row.id, "counters", damage) or {}).items()):
        if isinstance(value, dict):
            flat.extend((f"{key}.{k}", v) for k, v in sorted(value.items()))
        else:
            flat.append((key, value))
    return flat


def _step_view(row: StepRow, errors: int = 0, *, gone: bool = False) -> StepView:
    """A step as the console shows it (``gone``: its run's process is gone, see ``Console.runs``)."""
    damage: list[str] = []
    return StepView(
        row.id,
        row.run_id,
        row.seq,
        row.agent,
        row.kind,
        shown_status(row.status, gone),
        format_time(row.started_at),
        row.seconds,
        row.message,
        _counters(row, damage),
        errors,
        _damage_text(damage),
    )


def _first_binary(doc: dict[str, Any], prefer: str) -> BinaryRef | None:
    refs = binary_refs(doc.get(prefer))
    if refs:
        return refs[0]
    for value in doc.values():
        refs = binary_refs(value)
        if refs:
            return refs[0]
    return None


def _threshold_or_damage(conn: StoreConnection, agent: str, threshold: Any) -> dict[str, Any] | None:
    """The engine's deletion-threshold report, or ``{"damaged": why}`` when a pending export it reads is
    damaged (the page shows the other pending exports; the next export stops on it as a damaged store)."""
    try:
        return threshold_report(conn, agent, threshold)
    except DamagedDocumentError as exc:
        return {"damaged": _noted(exc)}


def _error_kinds(space: ConnectorSpace) -> Counter[tuple[str, str, str]]:
    """Objects in error now per ``(agent, stage, error name)``: counted by the store, and the few error
    documents it could not name from their text read one by one (a damaged one under ``DAMAGED_KIND``)."""
    kinds: Counter[tuple[str, str, str]] = Counter()
    unnamed: set[str] = set()
    for agent, stage, name, count in space.error_names():
        if name is None:
            unnamed.add(stage)
        else:
            kinds[(agent, stage, name)] += count
    for stage in sorted(unnamed):
        for agent, cs_id, doc in space.unnamed_errors(stage):
            read = _readable(doc, "cs_object", cs_id, f"{stage}_error", [])
            kinds[(agent, stage, str(read.get("name", "?")) if read else DAMAGED_KIND)] += 1
    return kinds


class Console:
    """Read-only views over one store and its configuration."""

    def __init__(self, config: MvsyncConfig, store: SqlStore) -> None:
        self.config = config
        self.store = store
        self._binary_mv: set[str] | None = None
        self._threshold_cache: dict[tuple[str, int], tuple[tuple[Any, ...], dict[str, Any]]] = {}

    # ------------------------------------------------------------------------------- helpers
    def source_label(self, agent: str) -> str:
        cfg = self.config.agents.get(agent)
        return SOURCE_LABELS.get(connector_name(cfg.type), cfg.type) if cfg else agent

    def source_order(self, agent: str) -> tuple[int, str]:
        cfg = self.config.agents.get(agent)
        kinds = list(SOURCE_LABELS)
        kind = connector_name(cfg.type) if cfg else ""
        return (kinds.index(kind) if kind in kinds else len(kinds), agent)

    def binary_mv_attributes(self) -> set[str]:
        """Metaverse attributes of binary type (photos), from the configured metaverse schema."""
        if self._binary_mv is None:
            schema = load_metaverse_schema(self.config)
            self._binary_mv = {
                a.name for oc in schema.object_classes for a in oc.attributes if a.type == AttributeType.BINARY
            }
        return self._binary_mv

    def binary_export_attributes(self, agent: str) -> list[str]:
        """The connector attributes this agent's export flows write from a binary metaverse attribute."""
        cfg = self.config.agents.get(agent)
        if cfg is None:
            return []
        binary = self.binary_mv_attributes()
        return sorted({f.cs for f in cfg.export_flow if f.mv in binary})

    # ---------------------------------------------------------------------------- operations
    def runs(
        self, conn: StoreConnection, before: int | None = None, limit: int = PAGE
    ) -> tuple[list[RunView], int | None]:
        """A page of runs, newest first, with their steps; and the cursor of the next page."""
        history = RunHistory(conn)
        gone = ended_unrecorded(self.store)  # as `mvsync history` says them
        rows = history.recent_runs(limit + 1, before=before)
        more = len(rows) > limit
        rows = rows[:limit]
        views = {
            r.id: RunView(
                r.id,
                r.profile,
                shown_status(r.status, r.id in gone),
                bool(r.dry_run),
                format_time(r.started_at),
                r.seconds,
                r.host,
                message=unrecorded_message(r) if r.id in gone and r.status == "in-progress" else r.message,
            )
            for r in rows
        }
        if views:
            steps = history.steps_of(list(views))
            errors = history.error_counts([s.id for s in steps])
            for s in steps:
                views[s.run_id].steps.append(_step_view(s, errors.get(s.id, 0), gone=s.run_id in gone))
        ordered = [views[r.id] for r in rows]
        return ordered, (rows[-1].id if more else None)

    def run(self, conn: StoreConnection, run_id: int) -> RunView | None:
        if RunHistory(conn).run(run_id) is None:
            return None
        views, _ = self.runs(conn, before=run_id + 1, limit=1)
        return views[0] if views else None

    def step(
        self, conn: StoreConnection, step_id: int, after: int | None = None, limit: int = PAGE
    ) -> tuple[StepView, list[ErrorView], dict[str, int], int | None] | None:
        """A step, a page of its per-object errors, its error count per name, and the next cursor."""
        history = RunHistory(conn)
        row = history.step(step_id)
        if row is None:
            return None
        by_name = history.error_names(step_id)
        rows = history.errors(step_id, limit + 1, after=after)
        more = len(rows) > limit
        rows = rows[:limit]
        found = people(conn, row.agent, (e.anchor for e in rows))
        errors = []
        for e in rows:
            person = found.get(e.anchor or "")
            display = e.display or (person.display if person else None)
            mv_id = person.mv_id if person else None
            errors.append(
                ErrorView(e.id, e.anchor, e.object_class, e.stage, e.error_name, e.severity, e.detail, display, mv_id)
            )
        view = _step_view(row, sum(by_name.values()), gone=row.run_id in ended_unrecorded(self.store))
        return view, errors, by_name, (rows[-1].id if more else None)

    # -------------------------------------------------------------------------------- search
    def search(
        self, conn: StoreConnection, text: str, after: int | None = None, before: int | None = None, limit: int = PAGE
    ) -> SearchPage:
        """Persons whose name, mail, UPN or account contains ``text``, in name order, a page at a time.

        Pages are keyset cursors (the id of a page's first or last person) over the search index
        (``Metaverse.search_page``), so page 2,000 costs what page 1 costs.
        """
        needle = text.strip().lower()
        metaverse = Metaverse(conn)
        cursor_id = after if after is not None else before
        backwards = before is not None and after is None
        ids = metaverse.search_page(needle, after=after, before=before, limit=limit + 1)
        more = len(ids) > limit
        ids = ids[:limit]
        if backwards:
            ids.reverse()
        hits = self._hits(conn, ids)
        if cursor_id is None and not more:
            total = len(ids)  # the whole result is this page: no second pass over the index
        elif needle:
            total = metaverse.count_matching(needle, COUNT_CAP)
        else:
            total = metaverse.count()
        has_next = more if not backwards else True
        has_prev = (more if backwards else cursor_id is not None) and bool(ids)
        return SearchPage(
            text,
            hits,
            min(total, COUNT_CAP),
            total > COUNT_CAP,
            ids[-1] if has_next and ids else None,
            ids[0] if has_prev else None,
        )

    def _hits(self, conn: StoreConnection, ids: list[int]) -> list[PersonHit]:
        if not ids:
            return []
        rows = Metaverse(conn).objects(ids)
        hits = []
        for mv_id in ids:
            row = rows[mv_id]
            damage: list[str] = []
            attrs = _readable(row.attributes, "mv_object", mv_id, "attributes", damage) or {}

            def text(name: str, attrs: dict[str, Any] = attrs) -> str:
                value = decode_value(attrs.get(name))
                return value if isinstance(value, str) else ""

            hits.append(
                PersonHit(
                    mv_id,
                    row.display_name or text("accountName") or f"person {mv_id}",
                    text("accountName"),
                    text("mail"),
                    text("userPrincipalName"),
                    _first_binary(attrs, "photo"),
                    _damage_text(damage),
                )
            )
        return hits

    # -------------------------------------------------------------------------------- person
    def person(self, conn: StoreConnection, mv_id: int) -> dict[str, Any] | None:
        """A person: attributes with lineage and every contribution, photos per source, connectors."""
        row = Metaverse(conn).get(mv_id)
        if row is None:
            return None
        damage: list[str] = []
        attrs = _readable(row.attributes, "mv_object", row.id, "attributes", damage) or {}
        lineage = _readable(row.lineage, "mv_object", row.id, "lineage", damage) or {}
        contributions = _readable(row.contributions, "mv_object", row.id, "contributions", damage) or {}
        attributes = []
        for name in sorted(attrs, key=str.lower):
            agent, rule = (lineage.get(name) or [None, None])[:2]
            others = [
                (other, show_value(value_rule[0]), value_rule[1])
                for other, value_rule in sorted(contributions.get(name, {}).items())
                if other != agent
            ]
            attributes.append(
                {"name": name, "value": show_value(attrs[name]), "agent": agent, "rule": rule, "others": others}
            )
        connectors = [_Connector.read(c) for c in ConnectorSpace(conn).joined_to(mv_id)]
        cards = self._photo_cards(connectors)
        refs = [c.ref for c in cards if c.ref]
        refs += [c.export_after for c in cards if isinstance(c.export_after, BinaryRef)]
        mv_photo = _first_binary(attrs, "photo")
        if mv_photo:
            refs.append(mv_photo)
        infos = photo_infos(conn, [r.sha256 for r in refs])
        for card in cards:
            card.info = infos.get(card.ref.sha256) if card.ref else None
        cs_views = [
            {
                "id": c.row.id,
                "agent": c.row.agent,
                "source": self.source_label(c.row.agent),
                "object_class": c.row.object_class,
                "anchor": c.row.anchor,
                "dn": c.row.dn,
                "joined": format_time(c.row.joined_at),
                "updated": format_time(c.row.updated_at),
                "pending_import": c.row.pending_type,
                "pending_export": c.row.export_type,
                "export_error": c.export_error,
                "sync_error": c.sync_error,
                "hologram": [(k, show_value(v)) for k, v in sorted(c.hologram.items())],
                "export_changes": [
                    (k, show_value(v) if v is not None else Shown("(clear)")) for k, v in sorted(c.changes.items())
                ],
                "damaged": c.damaged,
            }
            for c in connectors
        ]
        return {
            "id": row.id,
            "type": row.object_type,
            "display_name": row.display_name or f"person {row.id}",
            "created": format_time(row.created_at),
            "updated": format_time(row.updated_at),
            "attributes": attributes,
            "photo": mv_photo,
            "photo_info": infos.get(mv_photo.sha256) if mv_photo else None,
            "cards": cards,
            "infos": infos,
            "connectors": cs_views,
            "damaged": _damage_text(damage),
        }

    def _photo_cards(self, connectors: list[_Connector]) -> list[PhotoCard]:
        cards: list[PhotoCard] = []
        for read in sorted(connectors, key=lambda x: self.source_order(x.row.agent)):
            c, hologram = read.row, read.hologram
            changes = read.changes if c.export_type else {}
            # photos it holds, and the photo attributes its export flows write (even when still empty)
            binary_attrs = sorted(
                {k for k, v in hologram.items() if binary_refs(v)}
                | {k for k, v in changes.items() if binary_refs(v)}
                | set(self.binary_export_attributes(c.agent))
            )
            checked = self._last_checked(hologram, c.updated_at)
            for attr in binary_attrs:
                refs = binary_refs(hologram.get(attr))
                after: BinaryRef | str | None = None
                if attr in changes:
                    pending = binary_refs(changes[attr])
                    after = pending[0] if pending else "clear"
                cards.append(
                    PhotoCard(
                        c.agent,
                        self.source_label(c.agent),
                        attr,
                        refs[0] if refs else None,
                        None,
                        checked,
                        c.id,
                        c.anchor,
                        after,
                    )
                )
        return cards

    @staticmethod
    def _last_checked(hologram: dict[str, Any], updated_at: float | None) -> str:
        """The source's own "last checked" time when it has one (EXOPhotoLastChecked), else the last import."""
        for name, value in hologram.items():
            if name.lower().endswith("lastchecked") and value is not None:
                return show_value(value).text
        return format_time(updated_at)

    # ------------------------------------------------------------------------ pending exports
    def pending_counts(self, conn: StoreConnection) -> dict[str, int]:
        counts = {agent: 0 for agent in self.config.agents}
        counts.update(ConnectorSpace(conn).counts_per_agent(only="pending-export"))
        return counts

    def pending(
        self, conn: StoreConnection, agent: str, after: int = -1, limit: int = 48
    ) -> tuple[list[PendingRow], int | None, dict[str, PhotoInfo]]:
        """A page of the agent's pending exports as before/after photos, and the next cursor."""
        rows = ConnectorSpace(conn).pending_exports(agent, after_id=after, limit=limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        names = Metaverse(conn).display_names([r.mv_id for r in rows if r.mv_id is not None])
        binary_targets = set(self.binary_export_attributes(agent))
        views = []
        for r in rows:
            damage: list[str] = []
            hologram = _readable(r.hologram, "cs_object", r.id, "hologram", damage) or {}
            changes = _readable(r.export_changes, "cs_object", r.id, "export_changes", damage) or {}
            photo_attrs = [k for k, v in changes.items() if k in binary_targets or binary_refs(v)]
            attr = photo_attrs[0] if photo_attrs else next(iter(binary_targets), None)
            before_refs = binary_refs(hologram.get(attr)) if attr else ()
            after_refs = binary_refs(changes.get(attr)) if attr else ()
            error = _readable(r.export_error, "cs_object", r.id, "export_error", damage)
            views.append(
                PendingRow(
                    r.id,
                    r.anchor,
                    r.dn,
                    r.export_type,
                    (names.get(r.mv_id) if r.mv_id is not None else None) or r.anchor,
                    r.mv_id,
                    before_refs[0] if before_refs else None,
                    after_refs[0] if after_refs else None,
                    attr in changes and changes[attr] is None,
                    [
                        (k, "(clear)" if v is None else show_value(v).text)
                        for k, v in sorted(changes.items())
                        if k not in photo_attrs
                    ],
                    f"{error.get('name')}: {error.get('detail') or ''}" if error else None,
                    _damage_text(damage),
                )
            )
        refs = [ref.sha256 for v in views for ref in (v.before, v.after) if ref]
        return views, (rows[-1].id if more else None), photo_infos(conn, refs)

    def thresholds(self, conn: StoreConnection, agent: str) -> list[tuple[str, dict[str, Any]]]:
        """The deletion-threshold verdict of every export step of ``agent`` that sets one.

        Computed by the engine's own ``threshold_report``, so the console shows exactly what the
        next export would decide. The report reads every pending export of the agent (seconds-old
        figures on 5,000 pending photos cost ~100 ms), so it is kept until the pending set changes:
        every engine write sets ``updated_at``, and ``ConnectorSpace.pending_export_fingerprint``
        reads it from the ``ix_cs_export`` partial index plus the agent's object count.
        """
        fingerprint = ConnectorSpace(conn).pending_export_fingerprint(agent)
        reports = []
        for name, profile in self.config.run_profiles.items():
            for index, step in enumerate(profile.steps):
                if step.agent == agent and step.type == RunStepKind.EXPORT and step.deletion_threshold:
                    key = (name, index)
                    cached = self._threshold_cache.get(key)
                    if cached is None or cached[0] != fingerprint:
                        report = _threshold_or_damage(conn, agent, step.deletion_threshold)
                        if report is None:
                            continue
                        cached = (fingerprint, report)
                        self._threshold_cache[key] = cached
                    reports.append((name, cached[1]))
        return reports

    # ------------------------------------------------------------------------------ coverage
    def coverage(self, conn: StoreConnection) -> tuple[list[AgentCoverage], list[tuple[str, str, str, int]], int]:
        """Photos per source, exports that would change a photo, and current errors per kind.

        Each count reads one index (see ``ConnectorSpace.counts_per_agent``), so no JSON document is read.
        """
        space = ConnectorSpace(conn)
        totals = space.counts_per_agent()
        disconnected = space.counts_per_agent(only="disconnected")
        photos = space.counts_per_agent(only="with-photo")
        pending = self.pending_counts(conn)
        in_error = space.counts_per_agent(only="in-error")
        kinds = _error_kinds(space)
        result = []
        for agent in sorted(set(self.config.agents) | set(totals), key=self.source_order):
            total = totals.get(agent, 0)
            cov = AgentCoverage(
                agent,
                self.source_label(agent),
                total,
                total - disconnected.get(agent, 0),
                photos.get(agent, 0),
                pending.get(agent, 0),
                in_error.get(agent, 0),
            )
            for attr in self.binary_export_attributes(agent):
                cov.differing[attr] = space.export_writes_and_clears(agent, attr)
            result.append(cov)
        persons = Metaverse(conn).count()
        return result, [(a, s, n, c) for (a, s, n), c in kinds.most_common()], persons

    def last_run_errors(self, conn: StoreConnection) -> list[tuple[str, str, str, int]]:
        """Per-object errors of each agent's most recent step of each kind, per error name."""
        return RunHistory(conn).latest_step_errors()
