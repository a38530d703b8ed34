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
The objects the interrupted step already saw are adopted by the new step (their ``seen_step``
moves to it), so the deletion rule at the end judges the whole listing, not only its second half.
The next import step of the agent consumes the checkpoint: a full import resumes from it, a delta
import discards it (the delta's own changes would otherwise confuse that rule).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, and_, delete, func, or_, select, update

from connector.engine._context import StepContext
from connector.engine._results import ObjectError, StepStopped
from connector.sdk import (
    AttributeModificationType,
    Connector,
    CSEntryChange,
    ImportMode,
    ImportRequest,
    ObjectClass,
    ObjectModificationType,
    ResumeRefusedError,
    Schema,
)
from connector.store import ConnectorSpace, dumps, encode_value, loads, normalize_values
from connector.store.tables import agent_state, cs_object

__all__ = ["DELETE_MARK", "run_import"]

log = logging.getLogger("mvsync.engine")

#: Key in ``unconfirmed`` meaning "an object delete was exported and awaits confirmation".
DELETE_MARK = "\x00delete"

_dumps = dumps
_loads = loads


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
        self.seen: set[str] = set()
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

    def apply(self, conn: Connection, entries: list[CSEntryChange]) -> None:
        ctx = self.ctx
        blobs: dict[str, bytes] = {}
        put = blobs.__setitem__
        valid: list[tuple[CSEntryChange, str]] = []
        page_anchors = [str(e.anchor) for e in entries if e.anchor]
        for entry in entries:
            self.entries_seen += 1
            anchor = str(entry.anchor)
            if entry.error is not None:
                if anchor:
                    self.seen.add(anchor)
                ctx.error(
                    ObjectError(
                        "import",
                        entry.error.name,
                        entry.error.detail,
                        anchor=anchor or None,
                        object_class=entry.object_class or None,
                        display=entry.error.display,
                    )
                )
                ctx.result.counters["import_errors"] += 1
                continue
            checked = self._validate(entry)
            if isinstance(checked, ObjectError):
                if anchor:
                    self.seen.add(anchor)
                ctx.error(checked)
                ctx.result.counters["import_errors"] += 1
                continue
            if anchor in self.seen and entry.modification != ObjectModificationType.DELETE:
                ctx.error(
                    ObjectError(
                        "import",
                        "duplicate-object",
                        f"anchor {anchor!r} was returned more than once in this import",
                        anchor=anchor,
                        object_class=checked[0],
                    )
                )
                continue
            self.seen.add(anchor)
            valid.append((entry, checked[0]))

        existing: dict[str, Any] = {}
        anchors = [e.anchor for e, _ in valid]
        for i in range(0, len(anchors), 500):
            rows = conn.execute(
                select(
                    cs_object.c.id,
                    cs_object.c.anchor,
                    cs_object.c.hologram,
                    cs_object.c.pending_type,
                    cs_object.c.pending,
                    cs_object.c.unconfirmed,
                    cs_object.c.dn,
                    cs_object.c.import_error,
                ).where(cs_object.c.agent == ctx.agent, cs_object.c.anchor.in_(anchors[i : i + 500]))
            )
            for found in rows:
                existing[found.anchor] = found

        now = time.time()
        updates: list[dict[str, Any]] = []
        inserts: list[dict[str, Any]] = []
        removals: list[int] = []
        counters = ctx.result.counters
        for entry, object_class in valid:
            row = existing.get(entry.anchor)
            hologram = _loads(row.hologram) if row is not None and row.hologram is not None else None
            if row is not None and row.pending_type in ("add", "update"):
                base = _loads(row.pending)
            elif row is not None and row.pending_type == "delete":
                base = None
            else:
                base = hologram
            mod = entry.modification
            if mod == ObjectModificationType.DELETE:
                new_state = None
            elif mod == ObjectModificationType.UPDATE:
                if base is None:
                    ctx.error(
                        ObjectError(
                            "import",
                            "need-full-object",
                            "an attribute update arrived for an object the connector space does not hold; "
                            "run a full import",
                            anchor=entry.anchor,
                            object_class=object_class,
                        )
                    )
                    continue
                oc_model = self.schema.object_class(object_class)
                assert oc_model is not None
                new_state = _apply_changes(base, entry, put, oc_model)
            else:
                new_state = {}
                oc = self.schema.object_class(object_class)
                for name, value in entry.attributes.items():
                    if oc is not None and oc.attribute(name) is None:
                        continue
                    encoded = encode_value(value, put)
                    if encoded is not None:
                        attribute = oc.attribute(name) if oc is not None else None
                        if attribute is not None and not attribute.multivalued and isinstance(encoded, list):
                            encoded = encoded[0]
                        elif attribute is not None and attribute.multivalued and not isinstance(encoded, list):
                            encoded = [encoded]
                        new_state[name] = encoded

            # export confirmation ("export memory")
            unconfirmed = _loads(row.unconfirmed) if row is not None and row.unconfirmed else None
            if unconfirmed:
                for attr, expected in list(unconfirmed.items()):
                    if attr == DELETE_MARK:
                        ok = new_state is None
                    else:
                        ok = new_state is not None and new_state.get(attr) == expected
                    if not ok and mod == ObjectModificationType.UPDATE and attr not in {c.name for c in entry.changes}:
                        continue  # an attribute-level delta that does not mention it says nothing about it
                    del unconfirmed[attr]
                    if ok:
                        counters["exports_confirmed"] += 1
                    else:
                        counters["exports_not_reimported"] += 1
                        ctx.error(
                            ObjectError(
                                "import",
                                "exported-change-not-reimported",
                                f"{attr if attr != DELETE_MARK else 'object delete'} was exported but the "
                                "import shows a different value; it will be exported again after sync",
                                anchor=entry.anchor,
                                object_class=object_class,
                                cs_id=row.id if row is not None else None,
                                severity="warning",
                            )
                        )

            if row is None:
                if new_state is None:
                    continue
                counters["adds"] += 1
                inserts.append(
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
                continue

            if new_state is None:
                if hologram is None:
                    removals.append(row.id)  # an add never synchronized, now gone
                    counters["deletes"] += 1
                    continue
                pending_type, pending = "delete", None
            elif hologram is None:
                pending_type, pending = "add", _dumps(new_state)
            elif new_state == hologram:
                pending_type, pending = None, None
            else:
                pending_type, pending = "update", _dumps(new_state)

            if pending_type is None:
                counters["unchanged"] += 1
            elif pending_type == row.pending_type and pending == row.pending:
                counters["unchanged"] += 1  # already staged by an earlier import
            else:
                counters[{"add": "adds", "update": "updates", "delete": "deletes"}[pending_type]] += 1
                changed = sorted(
                    k
                    for k in set(new_state or {}) | set(hologram or {})
                    if (new_state or {}).get(k) != (hologram or {}).get(k)
                )
                ctx.emit_change({"anchor": entry.anchor, "pending_import": pending_type, "attributes": changed})
            updates.append(
                {
                    "_id": row.id,
                    "object_class": object_class,
                    "dn": entry.dn if entry.dn is not None else row.dn,
                    "pending_type": pending_type,
                    "pending": pending,
                    "unconfirmed": _dumps(unconfirmed) if unconfirmed else None,
                    "seen_step": ctx.step_id,
                    "updated_at": now,
                }
            )

        ctx.store.put_blobs(conn, blobs)
        ConnectorSpace(conn).stage_imports(inserts, updates)
        ctx.store.note_inserts(conn, "cs_object", len(inserts))
        if removals:
            conn.execute(delete(cs_object).where(cs_object.c.id.in_(removals)))
        # seen-but-failed objects keep their place (a full import must not delete them)
        valid_anchors = {e.anchor for e, _ in valid}
        failed_seen = [a for a in page_anchors if a in self.seen and a not in valid_anchors]
        if self.full and failed_seen:
            for i in range(0, len(failed_seen), 500):
                conn.execute(
                    update(cs_object)
                    .where(cs_object.c.agent == ctx.agent, cs_object.c.anchor.in_(failed_seen[i : i + 500]))
                    .values(seen_step=ctx.step_id)
                )
        ctx.flush_errors(conn)


def _save_agent_state(conn: Connection, agent: str, values: dict[str, Any]) -> None:
    exists = conn.execute(select(agent_state.c.agent).where(agent_state.c.agent == agent)).first()
    if exists:
        conn.execute(update(agent_state).where(agent_state.c.agent == agent).values(**values))
    else:
        conn.execute(agent_state.insert().values(agent=agent, **values))


def load_watermark(conn: Connection, agent: str) -> str | None:
    return conn.execute(select(agent_state.c.watermark).where(agent_state.c.agent == agent)).scalar()


@dataclass(frozen=True, slots=True)
class _Checkpoint:
    """Where an interrupted full import stands: its step, its last committed page, what it had seen."""

    step_id: int
    checkpoint: str
    pages: int
    entries: int

    def dumps(self) -> str:
        return json.dumps(
            {"step_id": self.step_id, "checkpoint": self.checkpoint, "pages": self.pages, "entries": self.entries}
        )

    @classmethod
    def loads(cls, text: str | None) -> _Checkpoint | None:
        if not text:
            return None
        try:
            data = json.loads(text)
            return cls(int(data["step_id"]), str(data["checkpoint"]), int(data["pages"]), int(data["entries"]))
        except (ValueError, KeyError, TypeError):
            return None


def _take_checkpoint(conn: Connection, ctx: StepContext, full: bool) -> _Checkpoint | None:
    """The checkpoint a full import resumes from; a delta import (or a dry run) leaves none behind."""
    text = conn.execute(select(agent_state.c.import_checkpoint).where(agent_state.c.agent == ctx.agent)).scalar()
    found = _Checkpoint.loads(text)
    if found is None or ctx.dry_run:
        return None  # a dry run neither resumes nor discards anything
    if not full or not ctx.step.resume_interrupted:
        log.warning(
            "%s: the full import interrupted in step %d is not resumed (%s); the next full import starts over",
            ctx.agent,
            found.step_id,
            "a delta import ran" if not full else "resume_interrupted = false",
        )
        _save_agent_state(conn, ctx.agent, {"import_checkpoint": None})
        return None
    return found


def _adopt(conn: Connection, ctx: StepContext, resumed: _Checkpoint) -> None:
    """The resumed step's objects count as seen by this one (the deletion rule needs the whole listing)."""
    conn.execute(
        update(cs_object)
        .where(cs_object.c.agent == ctx.agent, cs_object.c.seen_step == resumed.step_id)
        .values(seen_step=ctx.step_id)
    )
    counters = ctx.result.counters
    counters["resumed_from_step"] = resumed.step_id
    counters["resumed_after_page"] = resumed.pages
    counters["resumed_entries"] = resumed.entries
    ctx.result.message = (
        f"resumed the full import interrupted in step {resumed.step_id} after page {resumed.pages} "
        f"({resumed.entries} entries were already committed)"
    )


def _import_pages(
    ctx: StepContext, connector: Connector[Any], applier: _PageApplier, full: bool, watermark: str | None
) -> tuple[int, str | None, int]:
    """Pull pages until the connector has no more; returns (pages, new watermark, entries resumed)."""
    with ctx.store.transaction() as conn:
        resume = _take_checkpoint(conn, ctx, full)
    page_size = min(ctx.step.page_size, connector.capabilities.max_page_size)
    token: str | None = None
    page_number = 1
    new_watermark: str | None = watermark
    while True:
        request = ImportRequest(
            mode=ImportMode.FULL if full else ImportMode.DELTA,
            page_size=page_size,
            page_number=page_number,
            page_token=token,
            watermark=watermark,
            options=dict(ctx.step.options),
            resume_from=resume.checkpoint if resume is not None and page_number == 1 else None,
        )
        try:
            page = connector.import_page(request)
        except ResumeRefusedError as exc:
            if request.resume_from is None:
                raise StepStopped("stopped-connector-error", f"the connector refused to resume: {exc}") from None
            log.warning("%s: the interrupted full import cannot be resumed (%s); starting over", ctx.agent, exc)
            ctx.result.message = f"could not resume the interrupted full import ({exc}); started over"
            resume = None
            continue
        with ctx.store.transaction() as conn:
            if resume is not None and page_number == 1:
                _adopt(conn, ctx, resume)
            applier.apply(conn, page.entries)
            if full and page.checkpoint is not None and not ctx.dry_run:
                done = _Checkpoint(
                    ctx.step_id,
                    page.checkpoint,
                    page_number + (resume.pages if resume else 0),
                    applier.entries_seen + (resume.entries if resume else 0),
                )
                _save_agent_state(conn, ctx.agent, {"import_checkpoint": done.dumps()})
        ctx.progress.advance(len(page.entries))
        ctx.check_error_limit()
        if page.watermark is not None:
            new_watermark = page.watermark
        if not page.more_to_import:
            break
        if page.page_token is not None and page.page_token == token and not page.entries:
            msg = f"connector returned the same page token {token!r} twice with no entries (paging loop)"
            raise StepStopped("stopped-connector-error", msg)
        token = page.page_token
        page_number += 1
        ctx.result.counters["pages"] = page_number
    return page_number, new_watermark, resume.entries if resume is not None else 0


def run_import(ctx: StepContext, connector: Connector[Any], full: bool) -> None:
    """Run one full or delta import step to its end (or raise ``StepStopped``)."""
    if not full and not connector.capabilities.delta_import:
        msg = f"agent {ctx.agent!r} does not support delta import; use a full-import step"
        raise StepStopped("stopped-configuration", msg)
    schema = connector.get_schema()
    with ctx.store.transaction() as conn:
        _save_agent_state(conn, ctx.agent, {"schema_json": schema.model_dump_json(), "updated_at": time.time()})
        watermark = None if full else load_watermark(conn, ctx.agent)
    applier = _PageApplier(ctx, schema, full)
    ctx.progress.start(f"{ctx.agent}: {'full' if full else 'delta'} import")
    page_number, new_watermark, resumed_entries = _import_pages(ctx, connector, applier, full, watermark)

    ctx.result.counters["pages"] = page_number
    with ctx.store.transaction() as conn:
        if full:
            not_seen = or_(cs_object.c.seen_step.is_(None), cs_object.c.seen_step != ctx.step_id)
            if applier.entries_seen + resumed_entries == 0:
                held = conn.execute(
                    select(func.count()).select_from(cs_object).where(cs_object.c.agent == ctx.agent)
                ).scalar_one()
                if held and not ctx.step.allow_empty_full_import:
                    msg = (
                        f"the full import returned no objects but the connector space of {ctx.agent!r} holds "
                        f"{held}; nothing was marked deleted. If the source really is empty, set "
                        "allow_empty_full_import = true on this step (or run with --allow-empty-import)"
                    )
                    raise StepStopped("stopped-empty-import", msg)
            gone = (
                conn.execute(
                    select(cs_object.c.anchor).where(
                        cs_object.c.agent == ctx.agent,
                        not_seen,
                        cs_object.c.hologram.is_not(None),
                        or_(cs_object.c.pending_type.is_(None), cs_object.c.pending_type != "delete"),
                    )
                )
                .scalars()
                .all()
            )
            for anchor in gone:
                ctx.emit_change({"anchor": anchor, "pending_import": "delete", "attributes": []})
            ctx.result.counters["deletes"] += len(gone)
            conn.execute(
                update(cs_object)
                .where(
                    cs_object.c.agent == ctx.agent,
                    not_seen,
                    cs_object.c.hologram.is_not(None),
                )
                .values(pending_type="delete", pending=None, updated_at=time.time())
            )
            conn.execute(
                delete(cs_object).where(and_(cs_object.c.agent == ctx.agent, not_seen, cs_object.c.hologram.is_(None)))
            )
        values: dict[str, Any] = {"watermark": new_watermark, "updated_at": time.time()}
        if full:
            values["import_checkpoint"] = None  # finished: nothing to resume
        _save_agent_state(conn, ctx.agent, values)
        ctx.flush_errors(conn)
    ctx.progress.finish()
