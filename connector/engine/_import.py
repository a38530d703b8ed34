"""Full and delta import (stage only): connector pages -> pending imports in the connector space.

Per page, one transaction: the page's entries become pending imports (add / update / delete)
computed against the hologram, so re-importing the same data is a no-op and a rerun after a crash
converges. Exported values waiting for confirmation are confirmed (or reported as
``exported-change-not-reimported``) here. A full import marks objects it did not see as pending
deletes, unless it saw nothing at all while the connector space is not empty (then it stops).
The watermark is saved only when the step closes normally.

A full import resumes: each page's ``checkpoint`` (when the connector gives one) is saved with the
page, in the same transaction, so a full import stopped by a crash, Ctrl-C, a reboot or
``stopped-throttled`` starts its next run from its last committed page instead of from scratch.
The objects the interrupted step already saw are adopted by the new step at its end (their
``seen_step`` moves to it), so the deletion rule judges the whole listing, not only its second half.
The next full import of the agent resumes from the checkpoint; a delta import discards it with its
first page that changes objects (the delta's own changes would otherwise confuse that rule), and
leaves it when it changes nothing.

What the step met is kept in the connector space, not in memory: each object it stages carries its
``seen_step``, which both the deletion rule and the duplicate check (an anchor met twice) read. So a
full import's memory does not grow with the directory; only the anchors it met without staging them
(refused entries, deletes that leave no object) are held, as many as its errors and such deletes.
Adopting at the end, not the start, keeps the objects the interrupted step committed apart from those
this one met: a connector that resumes a little before its last committed page lists some again.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from connector.engine._agents import rule_problems
from connector.engine._context import StepContext
from connector.engine._renderings import rendering
from connector.engine._results import ObjectError, StepStopped
from connector.engine._stream import Page, StreamPager, close_pages
from connector.sdk import (
    AttributeModificationType,
    Connector,
    CSEntryChange,
    ImportMode,
    ImportPage,
    ImportRequest,
    ImportRun,
    ObjectClass,
    ObjectModificationType,
    ResumeRefusedError,
    Schema,
    person_display,
)
from connector.store import (
    AgentStateReader,
    AgentStateRepository,
    ConnectorSpace,
    ImportRow,
    StoreConnection,
    dumps,
    encode_value,
    loads,
    normalize_values,
)

__all__ = ["DELETE_MARK", "run_import"]

log = logging.getLogger("mvsync.engine")

#: Key in ``unconfirmed`` meaning "an object delete was exported and awaits confirmation".
DELETE_MARK = "\x00delete"
#: Why an exported object delete that the import still finds is said apart: an attribute is staged
#: again by the next sync (it still differs), but the deleted object is no longer joined, so no sync
#: deletes it again, and "exported again after sync" sent the reader to wait for nothing.
_NOT_REIMPORTED_DELETE = (
    "the object was exported as deleted, but the import still finds it: the delete did not take (the "
    "directory refused it quietly, or the object was created again), and no sync deletes it again; delete it "
    "in the directory if it should go, then import again"
)

#: Empty pages in a row a page-pull import (``import_page``) may return with more to import and no page
#: token before the step stops as a paging loop (see ``_refuse_paging_loop``). Generous: a connector that
#: keeps its own cursor and filters what it reads may pass a long stretch of objects it leaves out.
EMPTY_PAGES_MAX = 100_000

_dumps = dumps
_loads = loads


def _entry_display(entry: CSEntryChange) -> str | None:
    """Who an entry is about, from what it carries (``person_display``).

    Why: the engine names the person of an error from the connector space, and an object refused
    on its first import (a value of the wrong type, no anchor, returned twice) is not there yet:
    its errors named a GUID while the entry itself held "Ada Lovelace" and her account name.
    """
    if entry.modification == ObjectModificationType.UPDATE:
        return person_display({c.name: list(c.values) for c in entry.changes if c.values})
    return person_display(entry.attributes)


def _apply_changes(base: dict[str, Any], entry: CSEntryChange, put: Any, oc: ObjectClass) -> dict[str, Any]:
    """Apply attribute-level changes to an encoded state (attributes outside the schema are skipped)."""
    state = dict(base)
    for change in entry.changes:
        attribute = oc.attribute(change.name)
        if attribute is None:
            continue
        values = [encode_value(v, put) for v in change.values]
        current = state.get(change.name)
        current_list = current if isinstance(current, list) else ([] if current is None else [current])
        if change.modification == AttributeModificationType.REPLACE:
            new = values
        elif change.modification == AttributeModificationType.ADD:
            new = current_list + [v for v in values if v not in current_list] if attribute.multivalued else values
        else:  # DELETE: the listed values, or the whole attribute
            new = [v for v in current_list if v not in values] if values else []
        if not new:
            state.pop(change.name, None)
        elif attribute.multivalued:
            state[change.name] = normalize_values(new)
        else:
            state[change.name] = new[-1]
    return state


class _PageApplier:
    def __init__(self, ctx: StepContext, schema: Schema, full: bool) -> None:
        self.ctx = ctx
        self.schema = schema
        self.full = full
        #: Anchors met without staging them (refused entries, deletes that leave no object): the
        #: connector space cannot say this step met them. Every other anchor met is in the connector
        #: space with this step's ``seen_step`` (see the module's docstring).
        self.unstaged: set[str] = set()
        self.entries_seen = 0
        self.unknown_attributes: set[tuple[str, str]] = set()

    def _validate(self, entry: CSEntryChange) -> tuple[str, dict[str, Any] | None] | ObjectError:
        """Returns (object class name, encoded attributes or None for update/delete) or an error."""
        err = ObjectError
        if not entry.anchor:
            return err(
                "import", "missing-anchor-value", "the entry has no anchor value", object_class=entry.object_class
            )
        if entry.modification == ObjectModificationType.DELETE and not entry.object_class:
            return "", None
        oc = self.schema.object_class(entry.object_class) if entry.object_class else None
        if oc is None:
            name = "missing-objectclass-value" if not entry.object_class else "invalid-objecttype"
            return err("import", name, f"object class {entry.object_class!r} is not in the schema", anchor=entry.anchor)
        if entry.modification == ObjectModificationType.DELETE:
            return oc.name, None
        names = (
            [c.name for c in entry.changes]
            if entry.modification == ObjectModificationType.UPDATE
            else list(entry.attributes)
        )
        for name in names:
            attribute = oc.attribute(name)
            if attribute is None:
                if (oc.name, name) not in self.unknown_attributes:
                    self.unknown_attributes.add((oc.name, name))
                    self.ctx.error(
                        ObjectError(
                            "import",
                            "unknown-attribute",
                            f"attribute {name!r} is not in the schema of {oc.name!r}; its values are skipped "
                            "(reported once per step)",
                            anchor=entry.anchor,
                            object_class=oc.name,
                            severity="warning",
                            display=_entry_display(entry),
                        )
                    )
                continue
            values: Any
            if entry.modification == ObjectModificationType.UPDATE:
                values = [v for c in entry.changes if c.name == name for v in c.values]
            else:
                values = entry.attributes[name]
            as_list = values if isinstance(values, list | tuple) else [values]
            if not attribute.multivalued and len(as_list) > 1 and entry.modification != ObjectModificationType.UPDATE:
                return err(
                    "import",
                    "invalid-attribute-value",
                    f"{name} is single-valued but {len(as_list)} values were given",
                    anchor=entry.anchor,
                    object_class=oc.name,
                )
            bad = next((v for v in as_list if not attribute.accepts(v)), None)
            if bad is not None:
                return err(
                    "import",
                    "invalid-attribute-value",
                    f"{name} is {attribute.type.value} but got {type(bad).__name__}",
                    anchor=entry.anchor,
                    object_class=oc.name,
                )
        return oc.name, None

    def apply(self, conn: StoreConnection, entries: list[CSEntryChange]) -> None:
        """One page: validate, compare with the connector space, stage pending imports, write."""
        existing = self._existing(conn, list(dict.fromkeys(str(e.anchor) for e in entries if e.anchor)))
        valid, refused = self._triage(entries, existing)
        writes = _Writes()
        for entry, object_class in valid:
            self._stage(entry, object_class, existing.get(entry.anchor), writes)
        self._write(conn, writes)
        if self.full and refused:  # seen-but-failed objects keep their place (a full import must not delete them)
            ConnectorSpace(conn).mark_seen(self.ctx.agent, refused, self.ctx.step_id)
        self.ctx.flush_errors(conn)

    def _met(self, anchor: str, page_met: set[str], row: ImportRow | None) -> bool:
        """Whether this step met ``anchor`` before: on this page (``page_met``), refused or deleted
        without an object left (``unstaged``), or staged on an earlier page (the row's ``seen_step``)."""
        return anchor in page_met or anchor in self.unstaged or (row is not None and row.seen_step == self.ctx.step_id)

    def _triage(
        self, entries: list[CSEntryChange], existing: dict[str, ImportRow]
    ) -> tuple[list[tuple[CSEntryChange, str]], list[str]]:
        """The entries to stage, with their object class, and the anchors refused; the others become
        per-object errors (``existing``: the connector-space rows of the page's anchors)."""
        ctx = self.ctx
        valid: list[tuple[CSEntryChange, str]] = []
        refused: list[str] = []
        page_met: set[str] = set()
        for entry in entries:
            self.entries_seen += 1
            anchor = str(entry.anchor)
            checked: tuple[str, dict[str, Any] | None] | ObjectError
            if entry.error is not None:
                checked = ObjectError(
                    "import",
                    entry.error.name,
                    entry.error.detail,
                    anchor=anchor or None,
                    object_class=entry.object_class or None,
                    display=entry.error.display,
                )
            else:
                checked = self._validate(entry)
            if isinstance(checked, ObjectError):
                if anchor:
                    self.unstaged.add(anchor)
                    refused.append(anchor)
                checked.display = checked.display or _entry_display(entry)
                ctx.error(checked)
                ctx.result.counters["import_errors"] += 1
                continue
            if entry.modification != ObjectModificationType.DELETE and self._met(
                anchor, page_met, existing.get(anchor)
            ):
                ctx.error(
                    ObjectError(
                        "import",
                        "duplicate-object",
                        f"anchor {anchor!r} was returned more than once in this import",
                        anchor=anchor,
                        object_class=checked[0],
                        display=_entry_display(entry),
                    )
                )
                continue
            page_met.add(anchor)
            valid.append((entry, checked[0]))
        return valid, refused

    def _existing(self, conn: StoreConnection, anchors: list[str]) -> dict[str, ImportRow]:
        """The connector-space rows of ``anchors`` (keyed by anchor)."""
        return ConnectorSpace(conn).import_rows(self.ctx.agent, anchors)

    def _new_state(
        self, entry: CSEntryChange, object_class: str, base: dict[str, Any] | None, put: Any
    ) -> dict[str, Any] | ObjectError | None:
        """The object's encoded attributes after ``entry`` (None: deleted), or why it cannot be applied."""
        oc = self.schema.object_class(object_class)
        if entry.modification == ObjectModificationType.DELETE:
            return None
        if entry.modification == ObjectModificationType.UPDATE:
            if base is None:
                return ObjectError(
                    "import",
                    "need-full-object",
                    "an attribute update arrived for an object the connector space does not hold; run a full import",
                    anchor=entry.anchor,
                    object_class=object_class,
                    display=_entry_display(entry),
                )
            assert oc is not None
            return _apply_changes(base, entry, put, oc)
        new_state: dict[str, Any] = {}
        for name, value in entry.attributes.items():
            attribute = oc.attribute(name) if oc is not None else None
            if oc is not None and attribute is None:
                continue
            encoded = encode_value(value, put)
            if encoded is None:
                continue
            if attribute is not None and not attribute.multivalued and isinstance(encoded, list):
                encoded = encoded[0]
            elif attribute is not None and attribute.multivalued and not isinstance(encoded, list):
                encoded = [encoded]
            new_state[name] = encoded
        return new_state

    def _confirm(
        self,
        entry: CSEntryChange,
        object_class: str,
        row: Any,
        before: dict[str, Any] | None,
        after: dict[str, Any] | None,
    ) -> _Confirmation:
        """Confirm (or report) the exported values this import shows, which takes the object from
        ``before`` to ``after``."""
        unconfirmed: dict[str, Any] | None = (
            _loads(row.unconfirmed, "cs_object", row.id, "unconfirmed") if row is not None and row.unconfirmed else None
        )
        renderings: dict[str, Any] | None = (
            _loads(row.renderings, "cs_object", row.id, "renderings") if row is not None and row.renderings else None
        )
        lost = False
        if not unconfirmed:
            return _Confirmation(unconfirmed, renderings, lost)
        counters = self.ctx.result.counters
        for attr, expected in list(unconfirmed.items()):
            ok = after is None if attr == DELETE_MARK else after is not None and after.get(attr) == expected
            silent = entry.modification == ObjectModificationType.UPDATE and attr not in {c.name for c in entry.changes}
            if not ok and silent:
                continue  # an attribute-level delta that does not mention it says nothing about it
            del unconfirmed[attr]
            if ok:
                counters["exports_confirmed"] += 1
                continue
            shown = after.get(attr) if after is not None and attr != DELETE_MARK else None
            if self._shows_rendering(object_class, attr, expected, shown, before):
                renderings = {**(renderings or {}), attr: rendering(expected, shown)}
                counters["exports_confirmed_rendered"] += 1
                continue
            counters["exports_not_reimported"] += 1
            lost = lost or attr != DELETE_MARK
            self.ctx.error(
                ObjectError(
                    "import",
                    "exported-change-not-reimported",
                    _NOT_REIMPORTED_DELETE
                    if attr == DELETE_MARK
                    else f"{attr} was exported but the import shows a different value; it will be exported "
                    "again after sync",
                    anchor=entry.anchor,
                    object_class=object_class,
                    cs_id=row.id if row is not None else None,
                    severity="warning",
                )
            )
        return _Confirmation(unconfirmed, renderings, lost)

    def _shows_rendering(
        self, object_class: str, attr: str, expected: Any, shown: Any, before: dict[str, Any] | None
    ) -> bool:
        """Whether the target took the write of ``expected`` and shows its own rendering of it: the
        attribute is ``rendered_by_target`` and the import shows a new value (the one shown before
        means the write did not take; see ``connector.engine._renderings``)."""
        oc = self.schema.object_class(object_class)
        attribute = oc.attribute(attr) if oc is not None else None
        if attribute is None or not attribute.rendered_by_target or expected is None or shown is None:
            return False
        return bool(shown != (before or {}).get(attr))

    def _stage(self, entry: CSEntryChange, object_class: str, row: Any, writes: _Writes) -> None:
        """Stage ``entry`` against its connector-space row (None: not held yet) into ``writes``."""
        ctx = self.ctx
        counters = ctx.result.counters
        hologram = (
            _loads(row.hologram, "cs_object", row.id, "hologram")
            if row is not None and row.hologram is not None
            else None
        )
        if row is not None and row.pending_type in ("add", "update"):
            base = _loads(row.pending, "cs_object", row.id, "pending")
        elif row is not None and row.pending_type == "delete":
            base = None
        else:
            base = hologram
        new_state = self._new_state(entry, object_class, base, writes.blobs.__setitem__)
        if isinstance(new_state, ObjectError):
            self.unstaged.add(entry.anchor)
            ctx.error(new_state)
            return
        confirmation = self._confirm(entry, object_class, row, base, new_state)
        now = time.time()
        if row is None:
            if new_state is None:
                self.unstaged.add(entry.anchor)  # a delete of what the connector space does not hold
                return
            counters["adds"] += 1
            writes.inserts.append(
                {
                    "agent": ctx.agent,
                    "object_class": object_class,
                    "anchor": entry.anchor,
                    "dn": entry.dn,
                    "hologram": None,
                    "pending_type": "add",
                    "pending": _dumps(new_state),
                    "seen_step": ctx.step_id,
                    "updated_at": now,
                }
            )
            ctx.emit_change({"anchor": entry.anchor, "pending_import": "add", "attributes": sorted(new_state)})
            return
        if new_state is None and hologram is None:
            writes.removals.append(row.id)  # an add never synchronized, now gone
            self.unstaged.add(entry.anchor)
            counters["deletes"] += 1
            return
        pending_type, pending = _pending(new_state, hologram)
        if pending_type is None or (pending_type == row.pending_type and pending == row.pending):
            counters["unchanged"] += 1  # the same, or already staged by an earlier import
        else:
            # MIM's staging counters: "Adds" are objects the anchor did not find in the connector space; one
            # found there that the change alters is an update, even a staged add never synchronized, whose
            # pending import stays an add
            counters["deletes" if pending_type == "delete" else "updates"] += 1
            changed = sorted(
                k
                for k in set(new_state or {}) | set(hologram or {})
                if (new_state or {}).get(k) != (hologram or {}).get(k)
            )
            ctx.emit_change({"anchor": entry.anchor, "pending_import": pending_type, "attributes": changed})
        if pending_type is None and confirmation.lost and new_state is not None:
            # nothing changed, but a write did not take: a pending import of the same state has the next
            # delta synchronization visit the object, and its export flow stage the write again
            pending_type, pending = "update", _dumps(new_state)
        unconfirmed, renderings = confirmation.unconfirmed, confirmation.renderings
        writes.updates.append(
            {
                "_id": row.id,
                "object_class": object_class,
                "dn": entry.dn if entry.dn is not None else row.dn,
                "pending_type": pending_type,
                "pending": pending,
                "unconfirmed": _dumps(unconfirmed) if unconfirmed else None,
                "renderings": _dumps(renderings) if renderings else None,
                "seen_step": ctx.step_id,
                "updated_at": now,
            }
        )

    def _write(self, conn: StoreConnection, writes: _Writes) -> None:
        ctx = self.ctx
        ctx.store.put_blobs(conn, writes.blobs)
        ConnectorSpace(conn).stage_imports(writes.inserts, writes.updates)
        ctx.store.note_inserts(conn, "cs_object", len(writes.inserts))
        if writes.removals:
            ConnectorSpace(conn).remove(writes.removals)


class _Confirmation(NamedTuple):
    """What a confirming import leaves on an object (see ``_PageApplier._confirm``)."""

    #: Exported values still awaiting confirmation.
    unconfirmed: dict[str, Any] | None
    #: The object's renderings (``connector.engine._renderings``).
    renderings: dict[str, Any] | None
    #: An exported attribute value the import does not show: the export flow must stage it again.
    lost: bool


@dataclass(slots=True)
class _Writes:
    """What one page writes to the connector space, gathered before the page's statements run."""

    blobs: dict[str, bytes] = field(default_factory=dict)
    inserts: list[dict[str, Any]] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)
    removals: list[int] = field(default_factory=list)


def _pending(new_state: dict[str, Any] | None, hologram: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """The pending import (type, encoded attributes) that takes a hologram to ``new_state``."""
    if new_state is None:
        return "delete", None
    if hologram is None:
        return "add", _dumps(new_state)
    if new_state == hologram:
        return None, None
    return "update", _dumps(new_state)


def load_watermark(conn: StoreConnection, agent: str) -> str | None:
    return AgentStateRepository(agent).watermark(conn)


@dataclass(frozen=True, slots=True)
class _Checkpoint:
    """Where an interrupted full import stands: its step, its last committed page, what it had seen."""

    step_id: int
    checkpoint: str
    pages: int
    entries: int
    #: The earlier interrupted steps it resumed, whose objects it had not adopted yet (adoption waits
    #: for the step's end: see the module's docstring), oldest first.
    resumed: tuple[int, ...] = ()

    def dumps(self) -> str:
        return json.dumps(
            {
                "step_id": self.step_id,
                "checkpoint": self.checkpoint,
                "pages": self.pages,
                "entries": self.entries,
                "resumed": list(self.resumed),
            }
        )

    @property
    def steps(self) -> tuple[int, ...]:
        """Every step whose objects a step resuming this checkpoint adopts."""
        return (*self.resumed, self.step_id)

    @classmethod
    def loads(cls, text: str | None) -> _Checkpoint | None:
        if not text:
            return None
        try:
            data = json.loads(text)
            resumed = tuple(int(step) for step in data.get("resumed", ()))
            return cls(int(data["step_id"]), str(data["checkpoint"]), int(data["pages"]), int(data["entries"]), resumed)
        except (ValueError, KeyError, TypeError, AttributeError):
            return None


def _take_checkpoint(conn: StoreConnection, ctx: StepContext, full: bool) -> _Checkpoint | None:
    """The checkpoint a full import resumes from. A delta import leaves it until it changes objects
    (``_drop_interrupted``); a dry run neither resumes nor discards anything."""
    repo = AgentStateRepository(ctx.agent)
    found = _Checkpoint.loads(repo.checkpoint(conn))
    if found is None or ctx.dry_run or not full:
        return None
    if not ctx.step.resume_interrupted:
        log.warning(
            "%s: the full import interrupted in step %d is not resumed (resume_interrupted = false); it starts over",
            ctx.agent,
            found.step_id,
        )
        repo.save(conn, import_checkpoint=None)
        return None
    return found


def _drop_interrupted(conn: StoreConnection, ctx: StepContext) -> None:
    """A delta import is changing objects: an interrupted full import can no longer be resumed.

    Why: a full import marks deleted, at its end, whatever its listing did not see, and a resumed one
    lists only what comes after its checkpoint; an object a delta import added before that point would
    be marked deleted. Why not as soon as the delta import starts: one that stops before it changes
    anything (Graph unreachable, no delta state yet to read) leaves the checkpoint as good as it was,
    and dropping it then threw away every page committed (found by QA: all 37 listed again after a
    delta import that had found Graph down). Said in the step's message, so history shows it.
    """
    repo = AgentStateRepository(ctx.agent)
    found = _Checkpoint.loads(repo.checkpoint(conn))
    if found is None:
        return
    repo.save(conn, import_checkpoint=None)
    note = (
        f"the full import interrupted in step {found.step_id} will start over: this delta import changed "
        "objects it may have listed already"
    )
    log.warning("%s: %s", ctx.agent, note)
    ctx.result.message = f"{ctx.result.message}; {note}" if ctx.result.message else note


def _adopt(conn: StoreConnection, ctx: StepContext, resumed: _Checkpoint) -> None:
    """The state the resumed step wrote counts as written by this one: the forgetting of state nobody
    wrote needs the whole listing. (Its objects are adopted at the end: ``_adopt_seen``.)"""
    AgentStateRepository(ctx.agent).adopt(conn, resumed.step_id, ctx.step_id)
    counters = ctx.result.counters
    counters["resumed_from_step"] = resumed.step_id
    counters["resumed_after_page"] = resumed.pages
    counters["resumed_entries"] = resumed.entries
    ctx.result.message = (
        f"resumed the full import interrupted in step {resumed.step_id} after page {resumed.pages} "
        f"({resumed.entries} entries were already committed)"
    )


@dataclass(frozen=True, slots=True)
class _Source:
    """What both import contracts are told: the mode, the last watermark, where to resume."""

    full: bool
    watermark: str | None
    resume_from: str | None
    page_size: int

    @property
    def mode(self) -> ImportMode:
        return ImportMode.FULL if self.full else ImportMode.DELTA


def _paged(connector: Connector[Any], source: _Source) -> Iterator[Page]:
    """The page-pull contract (``import_page``), each page as the connector returns it."""
    token: str | None = None
    page_number = 1
    empty = 0  # pages in a row with more to import and no entries
    while True:
        request = ImportRequest(
            mode=source.mode,
            page_size=source.page_size,
            page_number=page_number,
            page_token=token,
            watermark=source.watermark,
            resume_from=source.resume_from if page_number == 1 else None,
        )
        result = connector.import_page(request)
        entries = _page_entries(result)
        more = result.more_to_import
        empty = empty + 1 if more and not entries else 0
        _refuse_paging_loop(result.page_token, token, empty)
        checkpoint = result.checkpoint if source.full else None
        yield Page(entries, checkpoint=checkpoint, watermark=result.watermark, last=not more)
        if not more:
            return
        token = result.page_token
        page_number += 1


def _page_entries(result: ImportPage) -> list[CSEntryChange]:
    """The page's entries, once each is known to be one (a custom connector's mistake is named as such,
    not as an ``AttributeError`` deep in the engine)."""
    if not isinstance(result, ImportPage):
        msg = f"import_page returned {type(result).__name__}, not an ImportPage (connector.sdk)"
        raise TypeError(msg)
    entries = list(result.entries)
    for entry in entries:
        if not isinstance(entry, CSEntryChange):
            what = f"{type(entry).__name__} {entry!r:.80}"
            msg = f"import_page returned {what} as an entry, not a CSEntryChange (connector.sdk)"
            raise TypeError(msg)
    return entries


def _refuse_paging_loop(returned: str | None, asked: str | None, empty: int) -> None:
    """Stop a page-pull import that can never end: ``empty`` pages in a row with more to import and nothing
    in them, under the same page token (twice), or with none at all (``EMPTY_PAGES_MAX`` times: the
    connector may keep its own cursor). Such an import would hold the agent's lock for good, and every
    later run would stop as locked."""
    if not empty:
        return
    if returned is not None and returned == asked:
        msg = f"connector returned the same page token {asked!r} twice with no entries (paging loop)"
        raise StepStopped("stopped-connector-error", f"{msg}; {_CONNECTOR_DEFECT}")
    if returned is None and empty >= EMPTY_PAGES_MAX:
        msg = (
            f"connector returned {empty} empty pages in a row with more to import and no page token (paging loop): "
            "its import_page must set more_to_import=False at the end, or return a page token that moves"
        )
        raise StepStopped("stopped-connector-error", f"{msg}; {_CONNECTOR_DEFECT}")


#: What an operator does about a paging loop: the import would never end, whatever is tried at the source.
_CONNECTOR_DEFECT = (
    "a defect of the agent's connector, stopped so that the import does not run for ever: the pages committed "
    "before are kept; report it to the connector's author with this message"
)


def _streamed(ctx: StepContext, connector: Connector[Any], source: _Source) -> Iterator[Page]:
    """Import contract v2 (``import_changes``): the engine pages the stream and runs deferred work."""
    run = ImportRun(
        mode=source.mode,
        state=AgentStateReader(ctx.store, ctx.agent),
        watermark=source.watermark,
        resume_from=source.resume_from,
        page_size=source.page_size,
    )
    max_ahead = min(4000, max(200, 2 * source.page_size))
    pager = StreamPager(
        connector.import_changes(run), page_size=source.page_size, max_ahead=max_ahead, stop=run.stopping
    )
    return pager.pages()


def _pages(ctx: StepContext, connector: Connector[Any], source: _Source) -> Iterator[Page]:
    if connector.streams_imports():
        return _streamed(ctx, connector, source)
    if connector.pages_imports():
        return _paged(connector, source)
    msg = (
        f"the connector of agent {ctx.agent!r} ({type(connector).__name__}) implements neither import_changes "
        '(import contract v2) nor import_page (the page-pull contract); see the README\'s "Writing a connector"'
    )
    raise StepStopped("stopped-configuration", msg)


def _commit_page(
    ctx: StepContext, applier: _PageApplier, page: Page, number: int, resume: _Checkpoint | None, full: bool
) -> None:
    """One page in one transaction: its entries, the agent state that goes with them, the checkpoint.

    What the page counted while it was applied (adds, updates, errors and their count) goes with it when its
    transaction is rolled back (Ctrl-C or a stop signal in the middle of it, a store error), and stands when
    it committed after all (Ctrl-C during the COMMIT): see ``StepContext.unit_of_work``. Before, an
    interrupted import recorded the rolled-back page's adds (1,499 for the 999 objects two committed pages
    held). The step stops either way, so the entries it saw (``entries_seen``) are not used again.
    """
    with ctx.unit_of_work("pages", number) as conn:
        if resume is not None and number == 1:
            _adopt(conn, ctx, resume)
        if not full and page.entries and not ctx.dry_run:
            _drop_interrupted(conn, ctx)
        applier.apply(conn, page.entries)
        repo = AgentStateRepository(ctx.agent)
        if page.state:
            repo.put(conn, page.state, ctx.step_id)
        if full and page.checkpoint is not None and not ctx.dry_run:
            done = _Checkpoint(
                ctx.step_id,
                page.checkpoint,
                number + (resume.pages if resume else 0),
                applier.entries_seen + (resume.entries if resume else 0),
                resume.steps if resume else (),
            )
            repo.save(conn, import_checkpoint=done.dumps())
        # counted with the page: noted with it in history (a process killed before the step's end, by
        # kill -9 or a reboot, leaves them there instead of nothing)
        _page_counters(ctx.result.counters, page, number)


def _page_counters(counters: Counter[str], page: Page, number: int) -> None:
    for name, value in page.counters.items():
        counters[f"connector.{name}"] += value
    counters["pages"] = number


def _import_pages(
    ctx: StepContext, connector: Connector[Any], applier: _PageApplier, full: bool, watermark: str | None
) -> tuple[int, str | None, _Checkpoint | None]:
    """Commit pages until the connector has no more; returns (pages, new watermark, the checkpoint resumed)."""
    with ctx.store.transaction() as conn:
        resume = _take_checkpoint(conn, ctx, full)
    page_size = min(ctx.step.page_size, connector.capabilities.max_page_size)
    new_watermark: str | None = watermark
    number = 0
    source = _Source(full, watermark, resume.checkpoint if resume else None, page_size)
    pages = _pages(ctx, connector, source)
    try:
        while True:
            try:
                page = next(pages)
            except StopIteration:
                break
            except ResumeRefusedError as exc:
                if source.resume_from is None or number > 0:
                    raise StepStopped("stopped-connector-error", f"the connector refused to resume: {exc}") from None
                log.warning("%s: the interrupted full import cannot be resumed (%s); starting over", ctx.agent, exc)
                ctx.result.message = f"could not resume the interrupted full import ({exc}); started over"
                resume = None
                source = _Source(full, watermark, None, page_size)
                pages = _pages(ctx, connector, source)
                continue
            number += 1
            _commit_page(ctx, applier, page, number, resume, full)
            ctx.progress.advance(len(page.entries))
            ctx.check_error_limit()
            if page.watermark is not None:
                new_watermark = page.watermark
            if page.last:
                break
    finally:
        close_pages(pages)
    return number, new_watermark, resume


def _over_deletion_threshold(ctx: StepContext, conn: StoreConnection) -> StepStopped | None:
    """The stop of a full import whose deletes would exceed its step's ``deletion_threshold``; None
    when it sets none, or they do not.

    Why: a source that suddenly lists a few of many objects (a permission change, a filter error, a
    share half-mounted) is a full import that marks everyone else deleted, and the synchronization
    then removes them from the metaverse and from every other agent. The empty-import guard saw only
    a listing of none; an export step's threshold protects only its own agent. The same setting on
    the import step stops it before anyone is marked deleted; what it read is kept (object deletes
    only: an import clears no attribute of its own).
    """
    threshold = ctx.step.deletion_threshold
    if threshold is None:
        return None
    space = ConnectorSpace(conn)
    gone = space.unseen_by_full_import(ctx.agent, ctx.step_id)
    total = space.count(ctx.agent)
    percent, exceeded = threshold.exceeded(len(gone), total)
    if not exceeded:
        return None
    report = {
        "deletes": len(gone),
        "clears": 0,
        "count": len(gone),
        "connector_space": total,
        "percent": round(percent, 2),
        "limit_count": threshold.count,
        "limit_percent": threshold.percent,
        "tripped": True,
        "exceeded": exceeded,
        "examples": [f"delete {anchor}" for anchor in gone[:20]],
    }
    msg = (
        f"deletion threshold exceeded: the full import of {ctx.agent!r} did not see {len(gone)} of the {total} "
        f"objects in its connector space ({report['percent']}%), which exceed {' and '.join(exceeded)}; nothing was "
        "marked deleted. Check the source (a permission or filter change that hides objects, a share not fully "
        "mounted) and run again; if the deletes are intended, raise deletion_threshold of the full-import step "
        f'of "{ctx.agent}" in a copy of the run profile and run that copy once'
    )
    return StepStopped("stopped-deletion-threshold", msg, report)


def _adopt_seen(conn: StoreConnection, ctx: StepContext, resumed: _Checkpoint) -> None:
    """The objects the resumed steps saw count as seen by this one, before the deletion rule judges
    the listing. Why at the end: until then, ``seen_step`` tells what this step met (its duplicate
    check) from what they met, which a connector resuming before its last committed page lists again."""
    space = ConnectorSpace(conn)
    for step_id in resumed.steps:
        space.adopt_seen(ctx.agent, step_id, ctx.step_id)


def run_import(ctx: StepContext, connector: Connector[Any], full: bool) -> None:
    """Run one full or delta import step to its end (or raise ``StepStopped``)."""
    if not full and not connector.capabilities.delta_import:
        msg = f"agent {ctx.agent!r} does not support delta import; use a full-import step"
        raise StepStopped("stopped-configuration", msg)
    if full and not connector.capabilities.full_import:
        msg = f"agent {ctx.agent!r} does not support full import (its capabilities say so); use a delta-import step"
        raise StepStopped("stopped-configuration", msg)
    schema = connector.get_schema()
    problems = rule_problems(ctx.config, ctx.agent, schema)
    if problems:
        raise StepStopped("stopped-configuration", "\n".join(problems))
    with ctx.store.transaction() as conn:
        AgentStateRepository(ctx.agent).save(conn, schema_json=schema.model_dump_json(), updated_at=time.time())
        watermark = None if full else load_watermark(conn, ctx.agent)
    applier = _PageApplier(ctx, schema, full)
    ctx.progress.start(f"{ctx.agent}: {'full' if full else 'delta'} import")
    page_number, new_watermark, resumed = _import_pages(ctx, connector, applier, full, watermark)
    resumed_entries = resumed.entries if resumed is not None else 0

    ctx.result.counters["pages"] = page_number
    with ctx.store.transaction() as conn:
        if resumed is not None:
            _adopt_seen(conn, ctx, resumed)
        stopped = _over_deletion_threshold(ctx, conn) if full else None
        if stopped is not None:  # the listing is complete: the next full import starts over, not resumes
            AgentStateRepository(ctx.agent).save(conn, import_checkpoint=None)
            ctx.flush_errors(conn)
    if stopped is not None:
        raise stopped
    with ctx.store.transaction() as conn:
        if full:
            space = ConnectorSpace(conn)
            if applier.entries_seen + resumed_entries == 0:
                held = space.count(ctx.agent)
                if held and not ctx.step.allow_empty_full_import:
                    msg = (
                        f"the full import returned no objects but the connector space of {ctx.agent!r} holds "
                        f"{held}; nothing was marked deleted. If the source really is empty, set "
                        "allow_empty_full_import = true on this step (or run with --allow-empty-import)"
                    )
                    raise StepStopped("stopped-empty-import", msg)
            gone = space.close_full_import(ctx.agent, ctx.step_id, time.time())
            for anchor in gone:
                ctx.emit_change({"anchor": anchor, "pending_import": "delete", "attributes": []})
            ctx.result.counters["deletes"] += len(gone)
        values: dict[str, Any] = {"watermark": new_watermark, "updated_at": time.time()}
        repo = AgentStateRepository(ctx.agent)
        if full:
            values["import_checkpoint"] = None  # finished: nothing to resume
            forgotten = repo.forget_unwritten(conn, ctx.step_id)
            if forgotten:
                ctx.result.counters["agent_state_forgotten"] += forgotten
        repo.save(conn, **values)
        ctx.flush_errors(conn)
    ctx.progress.finish()
