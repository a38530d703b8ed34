"""Where an exported value came from: the agent, and its object, whose contribution the metaverse holds.

Why: a per-object export error named the person and the target's answer (a photo Exchange Online
refused, a thumbnail AD found too large), not the source of the value. The fix is at the source (the
HR folder's file, another directory's photo), and the engineer reading history or the console had
to work it out from the precedence rules. The metaverse keeps, per attribute, the agent whose value
won and the rule (its lineage); the connector space names that agent's object joined there.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from connector.config import MvsyncConfig
from connector.store import ConnectorSpace, Metaverse, PendingExportRow, SourceObject, StoreConnection, loads

__all__ = ["contributor", "export_sources", "source_text"]


def contributor(held: Any) -> str | None:
    """The agent an attribute's lineage entry (``[agent, rule]``) names; None when it names none."""
    if isinstance(held, list | tuple) and held and isinstance(held[0], str):
        return held[0]
    return None


def source_text(cs_attribute: str, mv_attribute: str, agent: str, source: SourceObject | None = None) -> str:
    """``EXOPhoto came from agent "hr", object "jdoe.jpg" (metaverse attribute photo)``.

    The object is its DN where it has one (a folder's file path, an AD distinguished name), else its
    anchor; neither holds a secret."""
    where = "" if source is None else f', object "{source.dn or source.anchor}"'
    return f'{cs_attribute} came from agent "{agent}"{where} (metaverse attribute {mv_attribute})'


def _exported(config: MvsyncConfig, agent: str, row: PendingExportRow) -> list[tuple[str, str]]:
    """(connector-space attribute, metaverse attribute) of each value ``row``'s pending export writes
    (clears have no source), by the agent's export flows."""
    if row.mv_id is None or not row.export_changes or row.export_type == "delete":
        return []
    flows = {
        flow.cs: flow.mv
        for flow in config.agents[agent].export_flow
        if flow.object_class.lower() == row.object_class.lower()
    }
    changes = loads(row.export_changes, "cs_object", row.id, "export_changes")
    return [(cs, flows[cs]) for cs, value in sorted(changes.items()) if value is not None and cs in flows]


def export_sources(
    conn: StoreConnection, config: MvsyncConfig, agent: str, rows: Sequence[PendingExportRow]
) -> dict[int, str]:
    """Connector-space id -> where the values its pending export writes came from (rows whose values
    have no known source are left out). Two queries, whatever the number of rows."""
    wanted = {row.id: _exported(config, agent, row) for row in rows}
    mv_ids = sorted({row.mv_id for row in rows if row.mv_id is not None and wanted[row.id]})
    if not mv_ids:
        return {}
    lineages = {mv.id: loads(mv.lineage, "mv_object", mv.id, "lineage") for mv in Metaverse(conn).load(mv_ids)}
    objects = ConnectorSpace(conn).identities(mv_ids)
    found: dict[int, list[str]] = defaultdict(list)
    for row in rows:
        if row.mv_id is None:
            continue
        lineage = lineages.get(row.mv_id, {})
        for cs, mv in wanted[row.id]:
            agent_of = contributor(lineage.get(mv))
            if agent_of is not None:
                found[row.id].append(source_text(cs, mv, agent_of, objects.get((row.mv_id, agent_of))))
    return {cs_id: "; ".join(texts) for cs_id, texts in found.items()}
