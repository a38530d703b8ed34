"""Who a per-object error is about: the person behind an anchor, for history, the CLI and console.

Why: errors are recorded against anchors (a Graph object id, an objectGUID), which nobody
recognizes. The engine records each error's ``display`` (display name with UPN or account name)
when it writes the error, and readers link the error to the person it concerns through the
connector-space object of that anchor, while it exists.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, and_, desc, func, select

from connector.sdk import person_display
from connector.store._json import loads
from connector.store.tables import cs_object, mv_object, run_error, run_history, run_step

__all__ = ["Person", "import_failures", "people"]

_IMPORT_KINDS = ("full-import", "delta-import")


@dataclass(frozen=True, slots=True)
class Person:
    """The connector-space object of an anchor and the metaverse person it is joined to."""

    cs_id: int
    display: str | None
    mv_id: int | None


def people(conn: Connection, agent: str, anchors: Iterable[str | None]) -> dict[str, Person]:
    """anchor -> :class:`Person`, for the anchors of ``agent`` that have a connector-space object.

    The display comes from the joined person's metaverse display name and the object's own
    attributes (its hologram, or its pending import if it was never confirmed).
    """
    wanted = sorted({a for a in anchors if a})
    found: dict[str, Person] = {}
    for i in range(0, len(wanted), 500):
        rows = conn.execute(
            select(
                cs_object.c.id,
                cs_object.c.anchor,
                cs_object.c.hologram,
                cs_object.c.pending,
                cs_object.c.mv_id,
                mv_object.c.display_name,
            )
            .select_from(cs_object.outerjoin(mv_object, mv_object.c.id == cs_object.c.mv_id))
            .where(cs_object.c.agent == agent, cs_object.c.anchor.in_(wanted[i : i + 500]))
        ).all()
        for row in rows:
            attributes = {
                **_doc(row.hologram, row.id, "hologram"),
                **_doc(row.pending, row.id, "pending"),
            }  # the pending state is the newer
            if row.display_name and "displayName" not in attributes:
                attributes["displayName"] = row.display_name
            found[row.anchor] = Person(row.id, person_display(attributes), row.mv_id)
    return found


def _doc(text: str | None, cs_id: int, column: str) -> dict[str, object]:
    return dict(loads(text, "cs_object", cs_id, column)) if text else {}


def import_failures(conn: Connection, agent: str, *, anchor: str | None = None, limit: int = 50) -> list[Row[Any]]:
    """Import errors about objects the import could not read, so that no connector-space object holds.

    Why: a Graph user whose photo request failed (``mailbox-not-in-exchange-online``) is named in
    history by its object id, and an operator looks that id up with ``mvsync cs show``. With
    ``anchor``: the latest such error for that anchor in any import; without: those of the agent's
    latest import step (what is failing now). Rows carry ``run_id``, ``step_id`` and ``kind``.
    """
    staged = select(cs_object.c.id).where(cs_object.c.agent == agent, cs_object.c.anchor == run_error.c.anchor)
    query = (
        select(run_error, run_step.c.run_id, run_step.c.kind)
        .join(run_step, run_step.c.id == run_error.c.step_id)
        .join(run_history, run_history.c.id == run_step.c.run_id)
        .where(
            run_step.c.agent == agent,
            run_step.c.kind.in_(_IMPORT_KINDS),
            run_error.c.stage == "import",
            run_error.c.anchor.is_not(None),
            run_history.c.dry_run.is_(False),
            ~staged.exists(),
        )
    )
    if anchor is not None:
        query = query.where(run_error.c.anchor == anchor).order_by(desc(run_error.c.id)).limit(1)
    else:
        latest = (
            select(func.max(run_step.c.id))
            .join(run_history, run_history.c.id == run_step.c.run_id)
            .where(
                and_(run_step.c.agent == agent, run_step.c.kind.in_(_IMPORT_KINDS), run_history.c.dry_run.is_(False))
            )
            .scalar_subquery()
        )
        query = query.where(run_step.c.id == latest).order_by(run_error.c.id).limit(limit)
    return list(conn.execute(query).all())
