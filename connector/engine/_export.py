"""Export: pending exports -> connector, in batches, exactly one result per change.

Before anything is sent, the deletion threshold is checked over the whole step (object deletes plus
clears of the listed attributes, as a count and as a percentage of the connector space): if it
trips, nothing is exported (all-or-nothing) and the step stops with ``stopped-deletion-threshold``.
A delete or clear staged after the check (another agent's synchronization may run during an export)
is not sent by this step: it stays pending for the next export, whose threshold counts it.
A success moves the change to ``unconfirmed`` until an import confirms it; a failure stays pending
with its error and is retried by the next export.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from typing import Any

from connector import metrics
from connector.config import DeletionThreshold
from connector.engine._context import StepContext
from connector.engine._import import DELETE_MARK
from connector.engine._provenance import export_sources
from connector.engine._results import ObjectError, StepStopped
from connector.sdk import (
    AttributeChange,
    AttributeModificationType,
    ConfigurationError,
    Connector,
    CSEntryChange,
    ExportResult,
    ExportStatus,
    ObjectModificationType,
    StopRunError,
    export_results,
)
from connector.store import (
    ConnectorSpace,
    ExportState,
    PendingExportRow,
    StoreConnection,
    decode_value,
    dumps,
    is_blob_ref,
    loads,
    parse_blob_ref,
)

__all__ = ["run_export", "threshold_report"]

_loads = loads
_dumps = dumps


def threshold_report(conn: StoreConnection, agent: str, threshold: DeletionThreshold | None) -> dict[str, Any] | None:
    """The deletion-threshold check of an export step of ``agent``: None when it sets no threshold,
    else the figures and the verdict (the console shows the same report the next export decides on)."""
    judged = _judge(conn, agent, threshold)
    return None if judged is None else judged[0]


def _removals(row: PendingExportRow, watched: set[str]) -> tuple[bool, list[str]]:
    """What a deletion threshold counts in ``row``'s pending export: (an object delete, the watched
    attributes it clears)."""
    if row.export_type == "delete":
        return True, []
    if not row.export_changes:
        return False, []
    return False, [
        attr
        for attr, value in _loads(row.export_changes, "cs_object", row.id, "export_changes").items()
        if value is None and attr in watched
    ]


def _judge(
    conn: StoreConnection, agent: str, threshold: DeletionThreshold | None
) -> tuple[dict[str, Any], set[int]] | None:
    """The threshold report and the ids of the objects it counted (None: no threshold)."""
    if threshold is None:
        return None
    space = ConnectorSpace(conn)
    watched = set(threshold.attributes)
    deletes = clears = 0
    examples: list[str] = []
    counted: set[int] = set()
    for row in space.all_pending_exports(agent):
        deleted, cleared = _removals(row, watched)
        if deleted or cleared:
            counted.add(row.id)
        if deleted:
            deletes += 1
            examples.append(f"delete {row.anchor}")
        for attr in cleared:
            clears += 1
            if len(examples) < 20:
                examples.append(f"clear {attr} on {row.dn or row.anchor}")
    total = space.count(agent)
    count = deletes + clears
    percent, exceeded = threshold.exceeded(count, total)
    report = {
        "deletes": deletes,
        "clears": clears,
        "count": count,
        "connector_space": total,
        "percent": round(percent, 2),
        "limit_count": threshold.count,
        "limit_percent": threshold.percent,
        "tripped": bool(exceeded),
        #: the limits the figures exceed, as the message names them (only these)
        "exceeded": exceeded,
        "examples": examples[:20],
    }
    return report, counted


def _tripped_message(agent: str, report: dict[str, Any]) -> str:
    """What a tripped deletion threshold tells the operator: the figures, the limit(s) they exceed
    (only those), and what to do next.

    Why: both configured limits were named as exceeded, so a small directory's single photo clear
    under "count 5 / 50 %" read "1 attribute clears (100.0% of 1) exceed count 5 / 50.0%"; and the
    advice "raise the threshold for this run" named an option that does not exist (a copy of the
    profile, as the README says, is how one run gets a higher threshold).
    """
    limits = " and ".join(report["exceeded"])
    return (
        f"deletion threshold exceeded: {report['deletes']} object deletes and {report['clears']} attribute "
        f"clears ({report['percent']}% of {report['connector_space']}) exceed {limits}; nothing was exported. "
        f"Inspect with `mvsync pending-exports {agent}`; if the removals are intended, raise "
        f'deletion_threshold of the export step of "{agent}" in a copy of the run profile and run that copy once; '
        "if not, fix the source (the staged removals are withdrawn when the values come back)"
    )


def _judged_only(ctx: StepContext, rows: list[PendingExportRow], counted: set[int]) -> list[PendingExportRow]:
    """The rows of a page the step's deletion threshold judged: a delete or a watched clear staged
    after the check (by another agent's synchronization, which an export's lock does not keep out)
    stays pending for the next export, whose threshold counts it.

    Why: the threshold was counted once, before the first page. A synchronization that removed
    every photo while a long export ran had its clears read with the later pages and sent: 13 of 20
    thumbnails cleared through a threshold of 5 objects or 50 %.
    """
    assert ctx.step.deletion_threshold is not None
    watched = set(ctx.step.deletion_threshold.attributes)
    kept = []
    for row in rows:
        deleted, cleared = _removals(row, watched)
        if row.id not in counted and (deleted or cleared):
            ctx.result.counters["exports_held_for_threshold"] += 1
            continue
        kept.append(row)
    return kept


def _to_change(row: PendingExportRow, get_blob: Any) -> CSEntryChange:
    hologram = _loads(row.hologram, "cs_object", row.id, "hologram") if row.hologram else {}
    if row.export_type == "delete":
        change = CSEntryChange.delete(row.object_class, row.anchor, dn=row.dn)
    else:
        attrs = _loads(row.export_changes, "cs_object", row.id, "export_changes") if row.export_changes else {}
        changes = []
        previous = {}
        for name, value in sorted(attrs.items()):
            if value is None:
                changes.append(AttributeChange(name, AttributeModificationType.REPLACE, ()))
            else:
                decoded = decode_value(value, get_blob)
                values = tuple(decoded) if isinstance(decoded, list) else (decoded,)
                changes.append(AttributeChange(name, AttributeModificationType.REPLACE, values))
            if name in hologram and not _holds_blob(hologram[name]):
                # a photo's old bytes are not loaded: the change was staged because the value differs
                previous[name] = decode_value(hologram[name], get_blob)
        mod = ObjectModificationType.ADD if row.export_type == "add" else ObjectModificationType.UPDATE
        change = CSEntryChange(row.object_class, row.anchor, mod, changes=changes, dn=row.dn)
        change.previous = previous
    change.identifier = str(row.id)
    return change


def _keep_restaged_exports(space: ConnectorSpace, rows: list[PendingExportRow], updates: list[dict[str, Any]]) -> None:
    """Keep a pending export that a synchronization staged while this batch was being exported.

    An export holds only its agent's lock, so another agent's synchronization may stage newer values
    on these rows while the connector writes. Recording the result must not wipe them: the values
    just written become unconfirmed as usual, and the newer pending export stays for the next export.
    The rows are read again inside the recording transaction (locked on PostgreSQL).
    """
    sent = {r.id: ExportState(r.export_type, r.export_changes) for r in rows}
    current = space.export_states(sent)
    for entry in updates:
        now = current.get(entry["_id"])
        if now is not None and now != sent[entry["_id"]]:
            entry["export_type"], entry["export_changes"] = now


def _holds_blob(value: Any) -> bool:
    return any(is_blob_ref(v) for v in value) if isinstance(value, list) else is_blob_ref(value)


def photo_outcomes(change: CSEntryChange, result: ExportResult, hologram: str | None, cs_id: int = 0) -> list[str]:
    """What happened to each binary (photo) value ``change`` carries, for the photo metrics.

    ``exported`` or ``cleared`` (the object's ``hologram`` held a photo there) when the connector
    succeeded, otherwise the error name (``constraint-violation`` for a photo the directory finds
    too large, ``cd-server-down`` ...).
    """
    outcomes = []
    for attribute in change.changes:
        if any(isinstance(v, bytes) for v in attribute.values):
            done = "exported"
        elif (
            not attribute.values
            and hologram
            and _holds_blob(_loads(hologram, "cs_object", cs_id, "hologram").get(attribute.name))
        ):
            done = "cleared"
        else:
            continue
        outcomes.append(done if result.status == ExportStatus.SUCCESS else result.error_name or "failed")
    return outcomes


def _prepare(ctx: StepContext, connector: Connector[Any]) -> None:
    """Show the connector the whole step before its first write (``Connector.prepare_export``).

    In keyset pages, values left out (binary values empty): what is checked up front is which
    objects and attributes the step will touch, not their bytes.
    """
    if type(connector).prepare_export is Connector.prepare_export:
        return  # nothing to look at: skip the extra pass over the pending exports
    for rows, _ in _pending_pages(ctx, _PREPARE_PAGE, with_blobs=False):
        connector.prepare_export([_to_change(r, _no_bytes) for r in rows])


def _pending_pages(
    ctx: StepContext, limit: int, *, with_blobs: bool
) -> Iterator[tuple[list[PendingExportRow], dict[str, bytes]]]:
    """The step's pending exports in keyset pages of ``limit``, with the photos they name if asked.

    Each page is read in a transaction of its own that is closed before the caller exports it: no
    read stays open while a directory is written.
    """
    last = -1
    while True:
        with ctx.store.read() as conn:
            rows = ConnectorSpace(conn).pending_exports(ctx.agent, after_id=last, limit=limit)
            if not rows:
                return
            last = rows[-1].id
            hashes = [  # the values to write; the old ones (hologram) are not needed
                parse_blob_ref(v)[0]
                for r in rows
                if r.export_changes and with_blobs
                for v in _loads(r.export_changes, "cs_object", r.id, "export_changes").values()
                if is_blob_ref(v)
            ]
            blobs = ctx.store.get_blobs(conn, hashes) if hashes else {}
        yield rows, blobs


def _no_bytes(_sha256: str) -> bytes:
    return b""


#: Pending exports shown to ``prepare_export`` at a time (bounded memory, whatever the step's size).
_PREPARE_PAGE = 5000


def run_export(ctx: StepContext, connector: Connector[Any] | None) -> dict[str, Any] | None:
    """Run one export step. ``connector`` is None in a dry run (nothing is sent)."""
    if connector is not None and not connector.capabilities.export:
        raise StepStopped("stopped-configuration", f"agent {ctx.agent!r} does not support export")
    counters = ctx.result.counters
    with ctx.store.read() as conn:
        judged = _judge(conn, ctx.agent, ctx.step.deletion_threshold)
        total = ConnectorSpace(conn).count(ctx.agent, pending_export=True)
    report, counted = judged if judged is not None else (None, None)
    if report is not None:
        counters["threshold_count"] = report["count"]
        if report["tripped"]:
            message = _tripped_message(ctx.agent, report)
            raise StepStopped("stopped-deletion-threshold", message, report)  # figures to history, not only text
    batch_size = (
        ctx.step.batch_size if connector is None else min(ctx.step.batch_size, connector.capabilities.max_batch_size)
    )
    if connector is not None:
        _prepare(ctx, connector)
    ctx.progress.start(f"{ctx.agent}: export", total)
    for page, blobs in _pending_pages(ctx, batch_size, with_blobs=True):
        rows = page if counted is None else _judged_only(ctx, page, counted)
        changes = [_to_change(r, blobs.__getitem__) for r in rows]
        if connector is None:
            for change in changes:
                ctx.emit_change(
                    {
                        "anchor": change.anchor,
                        "dn": change.dn,
                        "export": change.modification.value,
                        "attributes": {
                            c.name: (
                                "clear"
                                if not c.values
                                else [{"bytes": len(v)} if isinstance(v, bytes) else v for v in c.values]
                            )
                            for c in change.changes
                        },
                    }
                )
                counters[f"export_{change.modification.value}s"] += 1
            ctx.progress.advance(len(changes))
            continue
        try:
            results = connector.export(changes)
        except (StopRunError, ConfigurationError, KeyboardInterrupt) as exc:
            # a stop, a setting found wrong part-way (a CA file or keytab gone at a reconnect), Ctrl-C or a
            # stop signal: keep what was written
            _record_before_stop(ctx, rows, changes, export_results(exc))
            raise
        _apply_results(ctx, rows, changes, results)
        ctx.progress.advance(len(changes))
        ctx.check_error_limit()
    ctx.progress.finish()
    held = counters["exports_held_for_threshold"]
    if held:
        ctx.result.message = (
            f"{held} object deletes or attribute clears staged while this export ran were left pending: "
            "the next export counts them against the deletion threshold"
        )
    return report


def _record_before_stop(
    ctx: StepContext, rows: list[PendingExportRow], changes: list[CSEntryChange], results: Sequence[ExportResult]
) -> None:
    """Record the results a connector handed back with the error that stopped its step mid-batch
    (``StopRunError.results``), or with an interruption (``connector.sdk.carry_export_results``).

    Those are what the batch did before the stop (objects written, verdicts reached): unrecorded,
    the next export would write the same objects again. Changes without a result stay pending as
    they were, with no per-object error (they were not tried).
    """
    given = {result.identifier for result in results}
    kept = [(row, change) for row, change in zip(rows, changes, strict=True) if change.identifier in given]
    if kept:
        _apply_results(ctx, [row for row, _ in kept], [change for _, change in kept], list(results))


def _apply_results(
    ctx: StepContext, rows: list[PendingExportRow], changes: list[CSEntryChange], results: list[ExportResult]
) -> None:
    """Record a batch's results, and count them, in one unit of work (``StepContext.unit_of_work``).

    Why one unit: the connector already wrote the batch, and Ctrl-C may still roll its record back (before
    the COMMIT) or land after it. Rolled back, the exports stay pending and the next export sends them again
    (a replace of the same values, which the shipped agents' exports are), so history must not count them
    as exported: it did (13 exports and 2 errors where the store recorded 9 and 1). Committed, it counts
    them. The counter ``batches`` numbers the batches recorded.
    """
    with ctx.unit_of_work("batches", ctx.result.counters["batches"] + 1) as conn:
        by_id = _results_by_identifier(ctx, changes, results)
        answers = [by_id.get(change.identifier) or _no_result(change) for change in changes]
        failed = [row for row, r in zip(rows, answers, strict=True) if r.status != ExportStatus.SUCCESS]
        sources = export_sources(conn, ctx.config, ctx.agent, failed) if failed else {}
        updates = [
            _result_update(ctx, row, change, result, sources.get(row.id))
            for row, change, result in zip(rows, changes, answers, strict=True)
        ]
        space = ConnectorSpace(conn)
        _keep_restaged_exports(space, rows, updates)
        space.record_exports(updates)


def _result_update(
    ctx: StepContext, row: PendingExportRow, change: CSEntryChange, result: ExportResult, source: str | None
) -> dict[str, Any]:
    """The connector-space update that records ``result`` on ``row`` (counted, and a failure recorded as
    the person's error); ``source``: where a failed value came from."""
    counters = ctx.result.counters
    for outcome in photo_outcomes(change, result, row.hologram, row.id):
        metrics.photo(outcome)
    now = time.time()
    if result.status == ExportStatus.SUCCESS:
        unconfirmed = _loads(row.unconfirmed, "cs_object", row.id, "unconfirmed") if row.unconfirmed else {}
        if row.export_type == "delete":
            unconfirmed = {DELETE_MARK: True}
        else:
            unconfirmed.update(
                _loads(row.export_changes, "cs_object", row.id, "export_changes") if row.export_changes else {}
            )
        counters[f"export_{change.modification.value}s"] += 1
        return {
            "_id": row.id,
            "export_type": None,
            "export_changes": None,
            "unconfirmed": _dumps(unconfirmed) if unconfirmed else None,
            "export_error": None,
            "anchor": result.anchor or row.anchor,
            "updated_at": now,
        }
    counters["export_errors" if result.status == ExportStatus.FAILED else "export_retryable"] += 1
    previous = _loads(row.export_error, "cs_object", row.id, "export_error") if row.export_error else {}
    detail = _with_source(result.error_detail, source)
    error = {
        "name": result.error_name or "cd-error",
        "detail": detail,
        "status": result.status.value,
        "attempts": int(previous.get("attempts", 0)) + 1,
    }
    ctx.error(
        ObjectError(
            "export",
            str(error["name"]),
            detail or "(no detail)",
            anchor=row.anchor,
            object_class=row.object_class,
            cs_id=row.id,
        )
    )
    return {
        "_id": row.id,
        "export_type": row.export_type,
        "export_changes": row.export_changes,
        "unconfirmed": row.unconfirmed,
        "export_error": _dumps(error),
        "anchor": row.anchor,
        "updated_at": now,
    }


def _no_result(change: CSEntryChange) -> ExportResult:
    """The result of a change the connector returned none for: it stays pending."""
    return ExportResult.retry(
        change.identifier, "cd-error", "the connector returned no result for this change; it stays pending"
    )


def _with_source(detail: str | None, source: str | None) -> str | None:
    """The connector's detail, then where the value came from, so that the error says what to fix where."""
    if source is None:
        return detail
    return f"{detail.rstrip('. ')}; {source}" if detail else source


def _results_by_identifier(
    ctx: StepContext, changes: list[CSEntryChange], results: list[ExportResult]
) -> dict[str, ExportResult]:
    """The connector's results by the change they answer; its mistakes are said, never a traceback.

    A result for an identifier that is no change of the batch (a connector author's likeliest slip:
    the anchor for ``change.identifier``) leaves the change without a result, so it stays pending:
    the warning names the identifiers it got instead, once per batch.
    """
    if not isinstance(results, list | tuple):
        msg = f"export returned {type(results).__name__}, not a list of ExportResult, one per change (connector.sdk)"
        raise TypeError(msg)
    by_id: dict[str, ExportResult] = {}
    for returned in results:
        if not isinstance(returned, ExportResult):
            msg = f"export returned {type(returned).__name__} {returned!r:.80} as a result, not an ExportResult"
            raise TypeError(msg)
        if returned.identifier in by_id:
            ctx.error(
                ObjectError(
                    "export",
                    "duplicate-export-result",
                    f"connector returned two results for change {returned.identifier}",
                    severity="warning",
                )
            )
        by_id[returned.identifier] = returned
    stray = sorted(set(by_id) - {change.identifier for change in changes})
    if stray:
        named = ", ".join(repr(i) for i in stray[:3]) + (" ..." if len(stray) > 3 else "")
        ctx.error(
            ObjectError(
                "export",
                "unknown-export-result",
                f"connector returned {len(stray)} results for no change of this batch ({named}): an ExportResult "
                "carries the change's identifier (change.identifier), not its anchor",
                severity="warning",
            )
        )
    return by_id
