"""Full and delta synchronization: connector space -> metaverse -> pending exports.

For each connector-space object of the agent (all of them on a full sync; on a delta sync those
with a pending import or a previous sync error, and the disconnectors when the metaverse changed
since the agent's last synchronization, so that a delta joins what a full sync would):

1. *inbound*: apply the pending import to the hologram; join (ordered rules, first rule with
   candidates wins, several candidates = ``ambiguous-join``) or project; flow attributes into the
   metaverse with ranked precedence (each agent's contribution is kept, so when the top source goes
   null the next one takes over); a deleted object disconnects, and the metaverse object is deleted
   when the deletion rule says so, deprovisioning its other connectors;
2. *outbound*: for every connector of a metaverse object that changed (or, on a full sync, of every
   object seen), evaluate export flows (through transforms) against the hologram and the exports
   still awaiting confirmation, and stage the difference as the pending export.

Work is done in chunks, one transaction each, with everything the chunk needs loaded in bulk. What a
chunk counts (joins, projections, staged exports, errors) is the step's only once its transaction is in:
a chunk that Ctrl-C rolls back takes its counts with it (``StepContext.unit_of_work``), so history says
what the store kept, and the counter ``chunks`` says how many chunks it kept.
"""

from __future__ import annotations

import gc
import time
import unicodedata
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from connector.config import AgentConfig, Deprovision, ExportFlow, ImportFlow, JoinRule
from connector.engine._context import StepContext
from connector.engine._provenance import contributor, source_text
from connector.engine._renderings import holds_rendering
from connector.engine._results import ObjectError
from connector.engine.transforms import TransformRunner
from connector.sdk import Schema, TransformError, person_display
from connector.store import (
    ConnectorSpace,
    Metaverse,
    RunHistory,
    StoreConnection,
    SyncRow,
    dumps,
    loads,
    plain_value,
)

__all__ = ["SEARCH_ATTRIBUTES", "run_sync", "search_fields"]

CHUNK = 2000
#: Metaverse attributes folded into ``mv_object.search_text`` (UI and ``mv search``).
SEARCH_ATTRIBUTES = ("displayName", "accountName", "mail", "userPrincipalName", "mailNickname", "employeeID")

_dumps = dumps
_loads = loads


def search_fields(attributes: dict[str, Any]) -> tuple[str | None, str]:
    display = attributes.get("displayName") or attributes.get("accountName") or attributes.get("mail")
    values = [attributes.get(a) for a in SEARCH_ATTRIBUTES]
    text = "\n".join([v.lower() for v in values if isinstance(v, str)])
    return (display if isinstance(display, str) else None), text


class _MV:
    """A metaverse object being synchronized. Contributions and lineage are parsed on first use:
    most objects in a full synchronization change nothing, and parsing is the dominant cost."""

    __slots__ = (
        "_contributions",
        "_lineage",
        "attributes",
        "changed",
        "contributions_changed",
        "deleted",
        "id",
        "new",
        "object_type",
        "touched",
    )

    def __init__(
        self,
        id: int,
        object_type: str,
        attributes: dict[str, Any],
        contributions: Any,
        lineage: Any,
        *,
        new: bool = False,
        changed: bool = False,
    ) -> None:
        self.id = id
        self.object_type = object_type
        self.attributes = attributes
        self._contributions = contributions
        self._lineage = lineage
        self.new = new
        self.changed = changed
        self.deleted = False
        self.touched = False
        self.contributions_changed = False

    @property
    def contributions(self) -> dict[str, dict[str, Any]]:
        if isinstance(self._contributions, str):
            self._contributions = _loads(self._contributions, "mv_object", self.id, "contributions")
        return self._contributions  # type: ignore[no-any-return]

    def may_hold(self, agent: str) -> bool:
        """Whether ``agent`` may have contributed, without parsing the contributions when they are
        still the stored JSON text (an agent's name can only be there as a quoted key or value).

        Why: a full synchronization of an agent without import flows asks it of every object, to
        recall what removed flows left behind; parsing each object's contributions for that cost an
        eighth of such a synchronization."""
        if isinstance(self._contributions, str):
            return f'"{agent}"' in self._contributions
        return any(agent in by for by in self.contributions.values())

    @property
    def lineage(self) -> dict[str, list[str]]:
        if isinstance(self._lineage, str):
            self._lineage = _loads(self._lineage, "mv_object", self.id, "lineage")
        return self._lineage  # type: ignore[no-any-return]


def _staged_state(row: SyncRow) -> dict[str, Any]:
    """The state ``row``'s pending import (add, update) brings, else its hologram ({} without either)."""
    if row.pending_type in ("add", "update"):
        state: dict[str, Any] = _loads(row.pending or "", "cs_object", row.id, "pending")
    else:
        state = _loads(row.hologram, "cs_object", row.id, "hologram") if row.hologram else {}
    return state


@dataclass(slots=True)
class _CS:
    """A connector-space row loaded for outbound evaluation."""

    id: int
    agent: str
    object_class: str
    anchor: str
    hologram: dict[str, Any]
    unconfirmed: dict[str, Any]
    #: What the target shows for exported values it re-encoded (``connector.engine._renderings``).
    renderings: dict[str, Any]
    export_type: str | None
    export_changes: dict[str, Any] | None
    mv_id: int | None
    dirty: bool = False
    sync_error: dict[str, str] | None = None
    errors: list[ObjectError] = field(default_factory=list)


def _who(cs: _CS, mv: _MV) -> str | None:
    """Who an export-flow error is about, named here because the error belongs to another agent's
    object: the step's agent cannot find its anchor when history names the error's person (the
    thumbnail of someone's photo failing in Exchange Online's sync is about their AD account).

    The same display as every other per-object error: the object's own attributes, with the
    metaverse display name when the object has none (``connector.store.people``)."""
    attributes = dict(cs.hologram)
    name = search_fields(mv.attributes)[0]
    if name and "displayName" not in attributes:
        attributes["displayName"] = name
    return person_display(attributes)


def _source(flow: ExportFlow, mv: _MV) -> str:
    """``; thumbnail came from agent "exo" (metaverse attribute photo)`` for an export flow's error: the
    agent whose value the metaverse holds, where the value to fix is (``connector.engine._provenance``)."""
    agent = contributor(mv.lineage.get(flow.mv))
    return "" if agent is None else f"; {source_text(flow.cs, flow.mv, agent)}"


class _Rules:
    """The configuration's rules, indexed for the agent being synchronized."""

    def __init__(self, ctx: StepContext, mv_schema: Schema) -> None:
        cfg = ctx.config
        self.agent = ctx.agent
        self.agent_cfg: AgentConfig = cfg.agents[ctx.agent]
        self.agent_order = list(cfg.agents)
        self.precedence = {k: list(v) for k, v in cfg.metaverse.precedence.items()}
        self.delete_when_disconnected_from = set(cfg.metaverse.delete_when_disconnected_from)
        self.import_flows: dict[str, list[ImportFlow]] = defaultdict(list)
        for flow in self.agent_cfg.import_flow:
            self.import_flows[flow.object_class.lower()].append(flow)
        self.joins: dict[str, list[JoinRule]] = defaultdict(list)
        for rule in self.agent_cfg.join:
            self.joins[rule.object_class.lower()].append(rule)
        self.projection = {p.object_class.lower(): p.metaverse_type for p in self.agent_cfg.projection}
        self.export_flows: dict[str, dict[str, list[ExportFlow]]] = {}
        self.deprovision: dict[str, Deprovision] = {}
        for name, agent_cfg in cfg.agents.items():
            self.deprovision[name] = agent_cfg.deprovision
            if agent_cfg.export_flow:
                by_class: dict[str, list[ExportFlow]] = defaultdict(list)
                for eflow in agent_cfg.export_flow:
                    by_class[eflow.object_class.lower()].append(eflow)
                self.export_flows[name] = dict(by_class)
        self.mv_types = {oc.name for oc in mv_schema.object_classes}
        self._ranks: dict[str, dict[str, int]] = {}

    def ranks(self, attribute: str) -> dict[str, int]:
        """Agent -> rank (0 is highest) for one metaverse attribute, computed once per attribute."""
        cached = self._ranks.get(attribute)
        if cached is None:
            cached = {a: self.rank(attribute, a) for a in self.agent_order}
            self._ranks[attribute] = cached
        return cached

    def rank(self, attribute: str, agent: str) -> int:
        listed = self.precedence.get(attribute)
        if listed is not None:
            if agent in listed:
                return listed.index(agent)
            return len(listed) + self.agent_order.index(agent) if agent in self.agent_order else 10_000
        return self.agent_order.index(agent) if agent in self.agent_order else 10_000


class _JoinIndex:
    """Metaverse attribute value -> metaverse ids, built on first use, kept current during the step."""

    def __init__(self, typed: bool) -> None:
        self.keys: dict[tuple[str, bool], dict[Any, set[int]]] = {}
        self.joined: set[int] | None = None
        #: metaverse id -> object type, kept when the schema has several types (a join rule names one)
        self.types: dict[int, str] | None = {} if typed else None

    @staticmethod
    def norm(value: Any, ignore_case: bool) -> Any:
        """The form a join compares: text in Unicode's composed form (NFC), lower case if asked.

        Why NFC: ``é`` composed and ``e`` + combining acute (NFD: macOS file names, some HR exports)
        are canonically equivalent, the same name (Unicode's conformance clause C6), and AD's own
        comparison finds one by the other. Compared as code points they missed: the person silently
        got no join, and two people whose names differ only in that form were not an ambiguity.
        """
        if not isinstance(value, str):
            return value
        return unicodedata.normalize("NFC", value.lower() if ignore_case else value)

    def build(self, conn: StoreConnection, needed: Iterable[tuple[str, bool]], agent: str) -> None:
        missing = [k for k in needed if k not in self.keys]
        if missing:
            for key in missing:
                self.keys[key] = defaultdict(set)
            for rows in Metaverse(conn).attribute_pages():
                for mv_id, object_type, attrs_json in rows:
                    if self.types is not None:
                        self.types[mv_id] = object_type
                    attrs = _loads(attrs_json, "mv_object", mv_id, "attributes")
                    for attr, ignore_case in missing:
                        self._add(self.keys[(attr, ignore_case)], attrs.get(attr), mv_id, ignore_case)
        if self.joined is None:
            self.joined = ConnectorSpace(conn).joined_mv_ids(agent)

    def _add(self, index: dict[Any, set[int]], value: Any, mv_id: int, ignore_case: bool) -> None:
        if value is None:
            return
        for v in value if isinstance(value, list) else [value]:
            index[self.norm(v, ignore_case)].add(mv_id)

    def _remove(self, index: dict[Any, set[int]], value: Any, mv_id: int, ignore_case: bool) -> None:
        if value is None:
            return
        for v in value if isinstance(value, list) else [value]:
            index.get(self.norm(v, ignore_case), set()).discard(mv_id)

    def update(self, mv_id: int, old: dict[str, Any], new: dict[str, Any]) -> None:
        for (attr, ignore_case), index in self.keys.items():
            if old.get(attr) != new.get(attr):
                self._remove(index, old.get(attr), mv_id, ignore_case)
                self._add(index, new.get(attr), mv_id, ignore_case)

    def of_type(self, found: set[int], object_type: str) -> set[int]:
        """The objects of ``found`` of ``object_type`` (all of them when the schema has one type).

        Why: a join rule names the metaverse type it joins (``metaverse_type``), and candidates of
        every type were taken: with a ``contact`` type beside ``person``, a mailbox whose mail a
        contact also held was an ambiguous join and got no photo, or joined the contact."""
        if self.types is None:
            return found
        return {mv_id for mv_id in found if self.types.get(mv_id) == object_type}

    def lookup(self, attr: str, ignore_case: bool, value: Any) -> set[int]:
        index = self.keys[(attr, ignore_case)]
        found: set[int] = set()
        for v in value if isinstance(value, list) else [value]:
            found |= index.get(self.norm(v, ignore_case), set())
        return found


class _LazyMV:
    """Join candidates of a chunk, loaded in one query when the chunk starts."""

    def __init__(self, sync: _Sync, conn: StoreConnection, ids: list[int]) -> None:
        self._loaded = sync._load_mv(conn, ids) if ids else {}
        self._sync, self._conn = sync, conn

    def __getitem__(self, mv_id: int) -> _MV:
        found = self._loaded.get(mv_id)
        if found is None:  # projected earlier in this step, after the chunk was prepared
            found = self._sync._load_mv(self._conn, [mv_id])[mv_id]
        return found


@dataclass(slots=True)
class _Chunk:
    """What one chunk gathers from its inbound pass for the deletion rule, outbound and writes."""

    conn: StoreConnection
    now: float
    #: metaverse objects of the chunk: joined ones, join candidates once joined, projections
    mvs: dict[int, _MV]
    #: the metaverse objects the chunk's unjoined rows may join (loaded in one query)
    joined_mvs: _LazyMV
    #: binary values transforms produced, stored with the chunk
    blobs: dict[str, bytes] = field(default_factory=dict)
    #: the chunk's own rows whose agent has export flows (evaluated against their new state)
    own: dict[int, _CS] = field(default_factory=dict)
    #: connectors of the metaverse objects outbound visits, by metaverse id
    others: dict[int, list[_CS]] = field(default_factory=dict)
    cs_updates: list[dict[str, Any]] = field(default_factory=list)
    cs_deletes: list[int] = field(default_factory=list)
    deleted_ids: set[int] = field(default_factory=set)
    disconnected_mv: set[int] = field(default_factory=set)
    deleted_mv: set[int] = field(default_factory=set)


class _Sync:
    def __init__(self, ctx: StepContext, mv_schema: Schema, transforms: TransformRunner, full: bool) -> None:
        self.ctx = ctx
        self.rules = _Rules(ctx, mv_schema)
        self.transforms = transforms
        self.full = full
        self.index = _JoinIndex(typed=len(self.rules.mv_types) > 1)
        self.next_mv_id = 0
        #: The next id the store remembers (``Metaverse.keep_next_id``), as of this run's last chunk.
        self._kept_mv_id = 0
        #: a delta synchronization visits the disconnectors too (see ``_metaverse_changed``)
        self.disconnectors = False
        #: the agent has joined objects whose deletion is staged: visited first (see ``_chunks``)
        self.deletes_first = False
        self.counters = ctx.result.counters
        self._candidates: dict[int, list[tuple[JoinRule, set[int]]]] = {}
        #: states of the chunk's unjoined rows, parsed once for the join lookups and reused after
        self._states: dict[int, dict[str, Any]] = {}
        #: object classes whose join keys are in ``index`` (built once per step, then kept current)
        self._index_ready: set[str] = set()

    # ---------------------------------------------------------------------------------- inbound
    def _computed(
        self, conn: StoreConnection, row: SyncRow, state: dict[str, Any], blobs: dict[str, bytes]
    ) -> tuple[dict[str, tuple[Any, str]], set[str], str | None]:
        """What the row's import flows give: {metaverse attribute: (value, rule)}, the attributes whose
        transform failed, and the first failure's error name."""
        computed: dict[str, tuple[Any, str]] = {}
        failed: set[str] = set()
        error: str | None = None
        for flow in self.rules.import_flows.get(row.object_class.lower(), ()):
            value = state.get(flow.cs)
            if flow.transform:
                try:
                    value = self.transforms.apply(conn, flow.transform, value, blobs)
                except TransformError as exc:
                    self.ctx.error(
                        ObjectError(
                            "sync",
                            exc.name,
                            f"import flow {flow.cs} -> {flow.mv}: {exc.detail}",
                            anchor=row.anchor,
                            object_class=row.object_class,
                            cs_id=row.id,
                        )
                    )
                    failed.add(flow.mv)
                    error = error or exc.name
                    continue
            if value is not None:
                computed[flow.mv] = (value, f"{flow.cs}{' via ' + flow.transform if flow.transform else ''}")
        return computed, failed, error

    def _flow_in(
        self, conn: StoreConnection, row: SyncRow, state: dict[str, Any], mv: _MV, blobs: dict[str, bytes]
    ) -> str | None:
        """Flow the row's attributes into ``mv``; returns the error name of a failed transform.

        An attribute whose transform failed keeps the agent's earlier contribution: a broken photo
        upload to the HR folder is an error on the file, not the removal of the person's photo
        (which cleared AD's thumbnail). The row keeps the error, so each delta tries it again.
        """
        agent = self.rules.agent
        computed, failed, error = self._computed(conn, row, state, blobs)
        if not computed and not self.rules.import_flows and not (self.full and mv.may_hold(agent)):
            # nothing flows in; a full sync still recalls what flows that were removed left behind
            return None
        if mv.new and not mv.attributes:  # projected just now: this agent is the only contributor
            # one pass, and tuples (stored as JSON arrays like lists): this runs for every projection
            contributions: dict[str, Any] = {}
            lineage: dict[str, Any] = {}
            attributes: dict[str, Any] = {}
            for attr, (value, rule) in computed.items():
                contributions[attr] = {agent: (value, rule)}
                lineage[attr] = (agent, rule)
                attributes[attr] = value
            mv._contributions, mv._lineage, mv.attributes = contributions, lineage, attributes
            mv.contributions_changed = mv.changed = True
            self.counters["attribute_flows"] += len(computed)
            return error
        contributions = mv.contributions
        kept = computed.keys() | failed
        affected = [a for a, by in contributions.items() if agent in by and a not in kept]
        for attr, (value, rule) in computed.items():
            by = contributions.get(attr)
            if by is None:
                contributions[attr] = by = {}
            old = by.get(agent)
            if old is None or old[0] != value or old[1] != rule:
                by[agent] = [value, rule]
                mv.contributions_changed = True
                self._resolve(mv, attr)
            elif self.full and self._outranked(mv, attr, by):
                self._resolve(mv, attr)
        for attr in affected:
            by = contributions[attr]
            del by[agent]
            mv.contributions_changed = True
            if not by:
                del contributions[attr]
            self._resolve(mv, attr)
        return error

    def _resolve(self, mv: _MV, attr: str) -> None:
        by = mv.contributions.get(attr, {})
        if len(by) == 1:
            winner: str | None = next(iter(by))
        elif by:
            ranks = self.rules.ranks(attr)
            winner = min(by, key=lambda a: ranks.get(a, 10_000))
        else:
            winner = None
        old = mv.attributes.get(attr)
        if winner is None:
            if attr in mv.attributes:
                del mv.attributes[attr]
                mv.lineage.pop(attr, None)
                mv.changed = True
                self.counters["attribute_flows"] += 1
            return
        value, rule = by[winner]
        if old != value:
            mv.attributes[attr] = value
            mv.changed = True
            self.counters["attribute_flows"] += 1
        mv.lineage[attr] = [winner, rule]

    def _outranked(self, mv: _MV, attr: str, by: dict[str, Any]) -> bool:
        """True when ``attr`` holds a contribution that the precedence no longer ranks first.

        Why: an unchanged contribution is not resolved again, so after ``[metaverse] precedence``
        was reordered the metaverse kept the old source's photo through every full synchronization,
        which the README names as what applies a rule change. Only a full synchronization asks,
        and only for attributes with more than one contributor (the rest cannot be outranked).
        """
        if len(by) < 2:
            return False
        ranks = self.rules.ranks(attr)
        winner = min(by, key=lambda a: ranks.get(a, 10_000))
        held = mv.lineage.get(attr)
        return mv.attributes.get(attr) != by[winner][0] or not held or held[0] != winner

    def _remove_agent(self, mv: _MV, agent: str) -> None:
        for attr in [a for a, by in mv.contributions.items() if agent in by]:
            del mv.contributions[attr][agent]
            mv.contributions_changed = True
            if not mv.contributions[attr]:
                del mv.contributions[attr]
            self._resolve(mv, attr)

    def _rule_candidates(
        self, conn: StoreConnection, row: SyncRow, state: dict[str, Any]
    ) -> list[tuple[JoinRule, set[int]]]:
        """Per join rule, the metaverse objects all its conditions match (joined ones included)."""
        object_class = row.object_class.lower()
        rules = self.rules.joins.get(object_class, [])
        if not rules:
            return []
        if self.index.joined is None or object_class not in self._index_ready:
            self.index.build(conn, [(c.mv, c.ignore_case) for r in rules for c in r.match], self.rules.agent)
            self._index_ready.add(object_class)
        out = []
        for rule in rules:
            candidates: set[int] | None = None
            for cond in rule.match:
                value = state.get(cond.cs)
                if value is None:
                    candidates = set()
                    break
                found = self.index.lookup(cond.mv, cond.ignore_case, value)
                candidates = found if candidates is None else candidates & found
                if not candidates:
                    break
            out.append((rule, self.index.of_type(candidates or set(), rule.metaverse_type)))
        return out

    def _join(self, conn: StoreConnection, row: Any, state: dict[str, Any]) -> tuple[int | None, str | None]:
        """Returns (metaverse id, error name) for an unjoined object; (None, None) = no rule matched."""
        per_rule = self._candidates.pop(row.id, None)
        if per_rule is None:
            per_rule = self._rule_candidates(conn, row, state)
        if not per_rule:
            return None, None
        assert self.index.joined is not None
        for rule, found in per_rule:
            candidates = found - self.index.joined
            if len(candidates) == 1:
                return next(iter(candidates)), None
            if len(candidates) > 1:
                self.ctx.error(
                    ObjectError(
                        "sync",
                        "ambiguous-join",
                        f"join rule on {', '.join(c.cs + '=' + c.mv for c in rule.match)} matches "
                        f"{len(candidates)} metaverse objects ({', '.join(map(str, sorted(candidates)[:5]))})",
                        anchor=row.anchor,
                        object_class=row.object_class,
                        cs_id=row.id,
                    )
                )
                return None, "ambiguous-join"
        return None, None

    # --------------------------------------------------------------------------------- outbound
    def _flow_out(self, conn: StoreConnection, cs: _CS, mv: _MV, blobs: dict[str, bytes]) -> None:
        flows = self.rules.export_flows.get(cs.agent, {}).get(cs.object_class.lower(), [])
        if cs.export_type == "delete" or (not flows and cs.export_type is None):
            return  # (without flows, a pending update is what removed flows staged: it is withdrawn)
        changes: dict[str, Any] = {}
        for flow in flows:
            value = mv.attributes.get(flow.mv)
            if flow.transform:
                try:
                    value = self.transforms.apply(conn, flow.transform, value, blobs)
                except TransformError as exc:
                    cs.errors.append(
                        ObjectError(
                            "sync",
                            exc.name,
                            f"export flow {flow.mv} -> {cs.agent}.{flow.cs}: {exc.detail}{_source(flow, mv)}",
                            anchor=cs.anchor,
                            object_class=cs.object_class,
                            cs_id=cs.id,
                            display=_who(cs, mv),
                        )
                    )
                    continue
            if value is None and not flow.allow_null:
                continue
            current = cs.unconfirmed[flow.cs] if flow.cs in cs.unconfirmed else cs.hologram.get(flow.cs)
            if value != current and not holds_rendering(cs.renderings, flow.cs, value, current):
                changes[flow.cs] = value
        new_type = "update" if changes else None
        new_changes = changes or None
        if new_type != cs.export_type or new_changes != cs.export_changes:
            if new_changes:
                kind = "export_updates" if cs.export_type is None else "export_updates_changed"
                self.counters[kind] += 1
                self.ctx.emit_change(
                    {
                        "anchor": cs.anchor,
                        "target_agent": cs.agent,
                        "pending_export": "update",
                        "attributes": {k: plain_value(v) for k, v in changes.items()},
                    }
                )
            else:
                self.counters["exports_withdrawn"] += 1
            cs.export_type, cs.export_changes = new_type, new_changes
            cs.dirty = True

    # ----------------------------------------------------------------------------------- chunks
    def _load_mv(self, conn: StoreConnection, ids: Iterable[int]) -> dict[int, _MV]:
        return {
            r.id: _MV(
                r.id, r.object_type, _loads(r.attributes, "mv_object", r.id, "attributes"), r.contributions, r.lineage
            )
            for r in Metaverse(conn).load(list(set(ids)))
        }

    def _load_connectors(
        self, conn: StoreConnection, mv_ids: list[int], skip_agent: str | None, every_agent: set[int] | None = None
    ) -> dict[int, list[_CS]]:
        """Connectors of these metaverse objects in agents with export flows (the ones outbound flow
        can change); for the ids in ``every_agent`` (deleted objects, to deprovision), of all agents."""
        agents = list(self.rules.export_flows)
        if skip_agent is not None:
            agents = [a for a in agents if a != skip_agent]
        out: dict[int, list[_CS]] = defaultdict(list)
        every_agent = every_agent or set()
        if (not agents and not every_agent) or not mv_ids:
            return out
        wanted = set(agents)
        for r in ConnectorSpace(conn).connectors_of(mv_ids):
            if r.agent not in wanted and r.mv_id not in every_agent:
                continue
            out[r.mv_id].append(
                _CS(
                    r.id,
                    r.agent,
                    r.object_class,
                    r.anchor,
                    _loads(r.hologram, "cs_object", r.id, "hologram") if r.hologram else {},
                    _loads(r.unconfirmed, "cs_object", r.id, "unconfirmed") if r.unconfirmed else {},
                    _loads(r.renderings, "cs_object", r.id, "renderings") if r.renderings else {},
                    r.export_type,
                    _loads(r.export_changes, "cs_object", r.id, "export_changes") if r.export_changes else None,
                    r.mv_id,
                )
            )
        return out

    def _metaverse_changed(self, conn: StoreConnection) -> bool:
        """Whether the metaverse changed since this agent's last synchronization, so that a delta
        synchronization visits the agent's disconnectors as well.

        Why: a disconnector has nothing pending, and a delta visited only pending objects. A photo
        filed before its owner's AD account was projected, or a mailbox whose person was deleted and
        came back, stayed unjoined through every scheduled Delta Cycle while a full synchronization
        joined it: on the same data the two must agree. When the metaverse did not change since,
        nothing new can join them, and a delta with nothing to do stays as cheap as it was.

        A joined object of the agent deleted at the source frees its metaverse object for the agent's
        other objects, whether or not that changes the metaverse: the disconnectors are visited then
        as well. Why: a mailbox created again in Exchange Online, imported while the old one was still
        there, stayed unjoined after the old one was deleted (a full synchronization joined it): the
        person's AD thumbnail clear was staged meanwhile, and where the old mailbox's photo was
        outranked (the metaverse unchanged) the new mailbox stayed unjoined through every delta.
        """
        if not ConnectorSpace(conn).has_disconnectors(self.rules.agent):
            return False  # nothing to visit: the metaverse need not be looked at
        if self.deletes_first:
            return True
        last_sync = RunHistory(conn).last_sync_end(self.rules.agent)
        if last_sync is None:
            return True
        last_change = Metaverse(conn).last_change()
        return last_change is not None and last_change >= last_sync

    def _chunks(self) -> Iterator[list[SyncRow]]:
        """The step's objects in chunks of ``CHUNK``, each read in a transaction of its own.

        The agent's joined objects whose deletion an import staged come first. Why: disconnecting one
        frees its metaverse object for the agent's other objects, and in id order an unjoined object
        older than the deleted one was judged while the person was still held (it stayed unjoined,
        and no later delta visited it when the metaverse had not changed)."""
        for joined_deletes in (True, False) if self.deletes_first else (None,):
            last = -1
            while True:
                with self.ctx.store.read() as conn:
                    rows = ConnectorSpace(conn).sync_rows(
                        self.rules.agent,
                        after_id=last,
                        limit=CHUNK,
                        delta=not self.full,
                        disconnectors=self.disconnectors,
                        joined_deletes=joined_deletes,
                    )
                if not rows:
                    break
                yield rows
                last = rows[-1].id

    def _join_candidates(self, conn: StoreConnection, rows: list[Any]) -> list[int]:
        """Metaverse ids the unjoined rows of a chunk may join, to load them in one query.

        The per-rule candidates are kept for ``_join`` so each lookup happens once."""
        self._candidates, self._states = {}, {}
        ids: set[int] = set()
        for row in rows:
            if row.mv_id is not None or row.pending_type == "delete":
                continue
            if not self.rules.joins.get(row.object_class.lower()):
                continue
            state = _staged_state(row)
            if row.pending_type in ("add", "update") or row.hologram:
                self._states[row.id] = state
            per_rule = self._rule_candidates(conn, row, state)
            self._candidates[row.id] = per_rule
            for _rule, found in per_rule:
                ids |= found
        return list(ids)

    def _prefetch_transforms(self, conn: StoreConnection, rows: list[Any], mvs: dict[int, _MV]) -> None:
        pairs: list[tuple[str, Any]] = []
        for row in rows:
            iflows = self.rules.import_flows.get(row.object_class.lower(), ())
            if not any(f.transform for f in iflows):
                continue
            state = _staged_state(row)
            pairs.extend((f.transform, state.get(f.cs)) for f in iflows if f.transform)
        for by_class in self.rules.export_flows.values():
            for flows in by_class.values():
                for eflow in flows:
                    if eflow.transform:
                        pairs.extend((eflow.transform, mv.attributes.get(eflow.mv)) for mv in mvs.values())
        self.transforms.prefetch(conn, pairs)

    def run(self) -> None:
        ctx = self.ctx
        with ctx.store.read() as conn:
            self.next_mv_id = self._kept_mv_id = Metaverse(conn).next_id()
            self.deletes_first = ConnectorSpace(conn).has_joined_deletes(self.rules.agent)
            self.disconnectors = not self.full and self._metaverse_changed(conn)
            total = ConnectorSpace(conn).count(
                self.rules.agent, needing_sync=not self.full, disconnectors=self.disconnectors
            )
        ctx.progress.start(f"{ctx.agent}: {'full' if self.full else 'delta'} synchronization", total)
        with _chunked_gc() as chunk_done:
            for number, rows in enumerate(self._chunks(), 1):
                # the chunk's counts and errors go with it: see StepContext.unit_of_work
                with ctx.unit_of_work("chunks", number) as conn:
                    self._chunk(conn, rows)
                chunk_done()
                ctx.progress.advance(len(rows))
                ctx.check_error_limit()
        ctx.progress.finish()

    def _chunk(self, conn: StoreConnection, rows: list[SyncRow]) -> None:
        """One chunk, one transaction: inbound for each object, the metaverse deletion rule, outbound
        for the metaverse objects that changed, then every write of the chunk in a few batches."""
        mvs = self._load_mv(conn, [r.mv_id for r in rows if r.mv_id is not None])
        chunk = _Chunk(conn, time.time(), mvs, _LazyMV(self, conn, self._join_candidates(conn, rows)))
        self._prefetch_transforms(conn, rows, {})
        for row in rows:
            self._inbound(chunk, row)
        self._apply_deletion_rule(chunk)
        self._outbound(chunk)
        changed = sum(1 for m in chunk.mvs.values() if m.changed and not m.new and not m.deleted)
        if changed:
            self.counters["mv_updates"] += changed
        self._write(chunk)
        if self.next_mv_id > self._kept_mv_id:  # ids given in this chunk are never given again
            Metaverse(conn).keep_next_id(self.next_mv_id)
            self._kept_mv_id = self.next_mv_id

    # ---------------------------------------------------------------------- chunk: inbound
    def _state(self, row: SyncRow) -> dict[str, Any] | None:
        """The object's state after its pending import (None: it is deleted)."""
        if row.pending_type == "delete":
            return None
        if row.id in self._states:
            return self._states.pop(row.id)
        if row.pending_type in ("add", "update"):
            assert row.pending is not None  # an import stages its state with the pending type
        elif not row.hologram:
            return None
        return _staged_state(row)

    def _inbound(self, chunk: _Chunk, row: SyncRow) -> None:
        """Apply one object's pending import: disconnect a deleted object, or join/project it and
        flow its attributes into the metaverse; stage the row's update if anything changed."""
        state = self._state(row)
        if state is None:
            self._disconnect(chunk, row)
            return
        mv_id = row.mv_id
        if mv_id is not None and mv_id not in chunk.mvs:
            mv_id = None  # the metaverse object went away: reconsider joining
        sync_error: str | None = None
        joined_now = False
        if mv_id is None:
            mv_id, sync_error = self._connect(chunk, row, state)
            joined_now = mv_id is not None
        if mv_id is not None:
            sync_error = self._flow_into(chunk, row, state, mv_id)
        if joined_now and row.export_type == "delete":
            self._withdraw_delete(chunk, row, mv_id)
        if (
            row.pending_type is None
            and not joined_now
            and mv_id == row.mv_id
            and sync_error is None
            and row.sync_error is None
        ):
            self.counters["unchanged"] += 1
            return
        chunk.cs_updates.append(
            {
                "_id": row.id,
                # the stored JSON text of ``state`` as it is: no need to encode it again
                "hologram": row.pending if row.pending_type in ("add", "update") else row.hologram,
                "mv_id": mv_id,
                "joined_at": chunk.now if joined_now else None,
                "sync_error": _dumps({"name": sync_error}) if sync_error else None,
                "updated_at": chunk.now,
            }
        )

    def _withdraw_delete(self, chunk: _Chunk, row: SyncRow, mv_id: int | None) -> None:
        """A delete staged when the object's person was deleted (deprovisioning) is void once the object
        joins or projects again: exported, it would delete the account of the person it belongs to now
        (the mailbox restored before the export ran; deprovisioning set back to "disconnect")."""
        cs = chunk.own.get(row.id)
        if cs is None:  # an agent without export flows: nothing else evaluates the row's export
            cs = _CS(row.id, self.rules.agent, row.object_class, row.anchor, {}, {}, {}, None, None, mv_id)
            chunk.own[row.id] = cs
        cs.export_type, cs.export_changes, cs.dirty = None, None, True
        self.counters["export_deletes_withdrawn"] += 1
        self.ctx.emit_change({"anchor": row.anchor, "target_agent": self.rules.agent, "pending_export": None})

    def _disconnect(self, chunk: _Chunk, row: SyncRow) -> None:
        """A deleted object leaves the connector space, and its contributions the metaverse."""
        chunk.cs_deletes.append(row.id)
        chunk.deleted_ids.add(row.id)
        self.counters["connector_deletes"] += 1
        mv_id = row.mv_id
        if mv_id is None or mv_id not in chunk.mvs:
            return
        mv = chunk.mvs[mv_id]
        before = dict(mv.attributes)
        self._remove_agent(mv, self.rules.agent)
        mv.touched = True
        chunk.disconnected_mv.add(mv_id)
        if self.index.keys:
            self.index.update(mv_id, before, mv.attributes)
        self._release(mv_id)

    def _release(self, mv_id: int) -> None:
        """Let the agent's later objects join ``mv_id``, which it just disconnected from, unless the
        deletion rule deletes it for that disconnection.

        Why: a row joined in the same chunk as the disconnection, on candidates looked up before it,
        joined a metaverse object that the chunk's deletion rule then deleted (an AD account deleted
        and created again under the same sAMAccountName). The new account pointed at a deleted id
        that the next projection reused: another person's photo went to its AD account. A doomed
        object stays taken; candidates looked up before the disconnection are looked up again.
        """
        if self.rules.agent in self.rules.delete_when_disconnected_from:
            return
        if self.index.joined is not None:
            self.index.joined.discard(mv_id)
        self._candidates.clear()

    def _connect(self, chunk: _Chunk, row: SyncRow, state: dict[str, Any]) -> tuple[int | None, str | None]:
        """Join an unjoined object, else project it: (metaverse id or None, sync error name or None)."""
        found, err = self._join(chunk.conn, row, state)
        mv_id: int | None = None
        if found is not None:
            mv_id = found
            self.counters["joins"] += 1
            if found not in chunk.mvs:
                chunk.mvs[found] = chunk.joined_mvs[found]
        elif err is not None:
            self.counters["join_errors"] += 1
        else:
            mv_id = self._project(chunk, row)
        if mv_id is not None and self.index.joined is not None:
            self.index.joined.add(mv_id)
        return mv_id, err

    def _project(self, chunk: _Chunk, row: SyncRow) -> int | None:
        """A new metaverse object for ``row`` if a projection rule covers its class (else a disconnector)."""
        mv_type = self.rules.projection.get(row.object_class.lower())
        if mv_type is None:
            self.counters["disconnectors"] += 1
            return None
        mv_id = self.next_mv_id
        self.next_mv_id += 1
        chunk.mvs[mv_id] = _MV(mv_id, mv_type, {}, {}, {}, new=True, changed=True)
        self.counters["projections"] += 1
        if self.index.types is not None:
            self.index.types[mv_id] = mv_type
        if self.index.keys:
            self.index.update(mv_id, {}, {})
        return mv_id

    def _flow_into(self, chunk: _Chunk, row: SyncRow, state: dict[str, Any], mv_id: int) -> str | None:
        """Import attribute flow into the joined object; keep the row for outbound if its agent
        has export flows for its class (its own exports are evaluated against its new state).
        Returns the error name of a transform that failed."""
        mv = chunk.mvs[mv_id]
        before = dict(mv.attributes) if self.index.keys else {}
        error = self._flow_in(chunk.conn, row, state, mv, chunk.blobs)
        mv.touched = True
        if self.index.keys:
            self.index.update(mv_id, before, mv.attributes)
        if self._evaluates_own(row):
            chunk.own[row.id] = _CS(
                row.id,
                self.rules.agent,
                row.object_class,
                row.anchor,
                state,
                _loads(row.unconfirmed, "cs_object", row.id, "unconfirmed") if row.unconfirmed else {},
                _loads(row.renderings, "cs_object", row.id, "renderings") if row.renderings else {},
                row.export_type,
                _loads(row.export_changes, "cs_object", row.id, "export_changes") if row.export_changes else None,
                mv_id,
            )
        return error

    def _evaluates_own(self, row: SyncRow) -> bool:
        """Whether the row's own pending export is evaluated: its agent has export flows for its
        class, or (on a full sync) it holds an update that flows since removed staged.

        Why: without flows the row was never looked at, and a thumbnail staged before the
        engineer removed AD's export flows was still written by the next export (or refused by
        AD's scope guard on every run, pending for ever), whatever Full Synchronization ran."""
        if self.rules.export_flows.get(self.rules.agent, {}).get(row.object_class.lower()):
            return True
        return self.full and row.export_type == "update"

    def _apply_deletion_rule(self, chunk: _Chunk) -> None:
        """Delete the metaverse objects this chunk disconnected that the rule says to delete
        (``delete_when_disconnected_from`` names this agent, or no connector is left)."""
        if not chunk.disconnected_mv:
            return
        ids = list(chunk.disconnected_mv)
        remaining = ConnectorSpace(chunk.conn).agents_joined_to(ids, ignoring=chunk.cs_deletes)
        for mv_id in ids:
            if self.rules.agent in self.rules.delete_when_disconnected_from or not remaining.get(mv_id):
                chunk.mvs[mv_id].deleted = True
                chunk.deleted_mv.add(mv_id)
                self.counters["mv_deletes"] += 1

    # --------------------------------------------------------------------- chunk: outbound
    def _outbound(self, chunk: _Chunk) -> None:
        """Export attribute flow to the connectors of every metaverse object that changed (of all
        touched ones, on a full sync); deprovision the connectors of deleted ones."""
        # an object projected in this chunk has no stored connector yet: nothing to look up
        outbound_ids = [
            m.id for m in chunk.mvs.values() if m.touched and not m.new and (m.changed or self.full or m.deleted)
        ]
        chunk.others = self._load_connectors(chunk.conn, outbound_ids, skip_agent=None, every_agent=chunk.deleted_mv)
        own_by_mv: dict[int, list[_CS]] = defaultdict(list)
        for c in chunk.own.values():
            if c.mv_id is not None:
                own_by_mv[c.mv_id].append(c)
        # only objects that have a connector to export to need their export transforms
        wanted = set(chunk.others) | set(own_by_mv)
        self._prefetch_transforms(chunk.conn, [], {i: chunk.mvs[i] for i in wanted if i in chunk.mvs})
        for mv in chunk.mvs.values():
            if not mv.touched:
                continue
            if mv.deleted:
                self._deprovision(chunk, mv)
                continue
            connectors = [
                c for c in chunk.others.get(mv.id, []) if c.id not in chunk.own and c.id not in chunk.deleted_ids
            ]
            for cs in connectors + own_by_mv.get(mv.id, []):
                if cs.agent == self.rules.agent and cs.id not in chunk.own:
                    continue
                if mv.changed or self.full or cs.id in chunk.own:
                    self._flow_out(chunk.conn, cs, mv, chunk.blobs)
                    for flow_error in cs.errors:
                        self.ctx.error(flow_error)

    def _deprovision(self, chunk: _Chunk, mv: _MV) -> None:
        """The connectors of a deleted metaverse object: a pending delete or a disconnect, per agent."""
        for cs in chunk.others.get(mv.id, []):
            if cs.id in chunk.deleted_ids:
                continue
            if self.rules.deprovision.get(cs.agent) == Deprovision.DELETE:
                cs.export_type, cs.export_changes, cs.dirty = "delete", None, True
                self.counters["export_deletes"] += 1
                self.ctx.emit_change({"anchor": cs.anchor, "target_agent": cs.agent, "pending_export": "delete"})
            else:
                cs.export_type, cs.export_changes, cs.dirty = None, None, True
                self.counters["deprovision_disconnects"] += 1
            cs.mv_id = None

    # ------------------------------------------------------------------------ chunk: writes
    def _write(self, chunk: _Chunk) -> None:
        """Every write of the chunk: blobs, transform results, metaverse, connector space."""
        self.ctx.store.put_blobs(chunk.conn, chunk.blobs)
        self.transforms.flush(chunk.conn)
        Metaverse(chunk.conn).write(*self._metaverse_rows(chunk))
        ConnectorSpace(chunk.conn).apply_sync(*self._connector_space_rows(chunk), chunk.cs_deletes)
        Metaverse(chunk.conn).delete(list(chunk.deleted_mv))

    def _metaverse_rows(self, chunk: _Chunk) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """Rows of the projected objects, of the changed ones, and of those whose contributions
        alone changed (a lower-ranked source changed while the final values did not)."""
        new_rows, changed_rows = [], []
        for mv in chunk.mvs.values():
            if mv.deleted or (not mv.changed and not mv.new):
                continue
            display, text = search_fields(mv.attributes)
            doc = {
                "id": mv.id,
                "attributes": _dumps(mv.attributes),
                "contributions": _dumps(mv.contributions),
                "lineage": _dumps(mv.lineage),
                "display_name": display,
                "search_text": text,
                "updated_at": chunk.now,
            }
            if mv.new:
                new_rows.append({**doc, "object_type": mv.object_type, "created_at": chunk.now})
                self.ctx.emit_change(
                    {"metaverse_id": mv.id, "metaverse": "project", "attributes": sorted(mv.attributes)}
                )
            else:
                changed_rows.append({**doc, "_id": doc.pop("id")})
                self.ctx.emit_change(
                    {"metaverse_id": mv.id, "metaverse": "update", "attributes": sorted(mv.attributes)}
                )
        contrib_only = [
            {"_id": mv.id, "contributions": _dumps(mv.contributions), "lineage": _dumps(mv.lineage)}
            for mv in chunk.mvs.values()
            if mv.touched and mv.contributions_changed and not mv.changed and not mv.new and not mv.deleted
        ]
        return new_rows, changed_rows, contrib_only

    @staticmethod
    def _connector_space_rows(
        chunk: _Chunk,
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """Applied imports, applied imports that also stage an export, and staged exports alone.

        A row whose import was applied and whose export changed is written once, not twice: a
        joining object (every one of them on a first synchronization) is both.
        """
        dirty = [c for cs_list in chunk.others.values() for c in cs_list if c.dirty]
        dirty += [c for c in chunk.own.values() if c.dirty]
        # (the last state of a row listed twice wins, as it did when each was written in turn)
        exports = {
            c.id: {
                "_id": c.id,
                "mv_id": c.mv_id,
                "export_type": c.export_type,
                "export_changes": _dumps(c.export_changes) if c.export_changes else None,
            }
            for c in dirty
        }
        plain, with_export = [], []
        for u in chunk.cs_updates:
            export = exports.get(u["_id"])
            if export is not None and export["mv_id"] == u["mv_id"]:
                del exports[u["_id"]]
                u["export_type"], u["export_changes"] = export["export_type"], export["export_changes"]
                with_export.append(u)
            else:
                plain.append(u)
        return plain, with_export, list(exports.values())


@contextmanager
def _chunked_gc() -> Iterator[Any]:
    """Cyclic garbage collection once per chunk instead of every 700 allocations.

    A synchronization allocates millions of small acyclic objects (states, contributions, rows)
    while it holds large long-lived ones (the join index, the chunk's metaverse objects). CPython's
    collector, triggered by allocation counts, kept rescanning those: 13% of a full
    synchronization's CPU in profiles. Collecting the youngest generation after each chunk still
    frees any reference cycle a chunk made, so memory stays bounded by the chunk size.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield lambda: gc.collect(0)
    finally:
        if enabled:
            gc.enable()


def run_sync(ctx: StepContext, mv_schema: Schema, transforms: TransformRunner, full: bool) -> None:
    """Run one full or delta synchronization step of ``ctx.agent``."""
    _Sync(ctx, mv_schema, transforms, full).run()
