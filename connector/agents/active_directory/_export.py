"""Export to Active Directory: plan, guard, resolve, then write (or write LDIF).

A batch goes through four stages, and nothing is sent before the first three are done for all of
it, so a refused batch has no partial effects:

1. **Plan** each change into LDAP operations. A replaced value is written as the engine staged it:
   the engine stages an export only for a value that differs from what it expects the directory to
   hold (its last import, or a write not yet confirmed), so comparing again here would repeat that
   check against an older baseline (the hologram alone) and needs the old photo's bytes loaded.
   Only multi-valued adds and deletes read ``change.previous``, to send just the values that change.
   A change left with nothing to do succeeds without a write. Photos over 102,400 bytes
   (``thumbnailPhoto``'s ``rangeUpper``) fail here as ``constraint-violation``; a photo a DC refuses
   all the same (its schema's rangeUpper lowered) is that person's ``constraint-violation`` too,
   naming the size and the limit read from that DC's schema.
2. **Scope guard, attributes**: an attribute that no export flow names
   (``context.export_attributes[object_class]``), or one AD computes (import-only), means the
   request is wrong, not the object: the whole batch is refused with ``ScopeViolationError``.
   Creating or deleting objects is never done by this agent (per-object ``cd-error``). Once a step,
   before stage 3's first search, the attributes export flows name are looked up in the DC's schema: one
   it lacks (a misspelt ``cs``) stops the step with a ``ConfigurationError`` naming it
   (``unknown_flow_attributes``).
3. **Scope guard, objects**: the anchors (objectGUIDs) are looked up under the base DNs, in
   batches with the agent's filter, which also yields each object's current DN (it may have been renamed
   since the last import). An object that exists elsewhere, or under a base DN no longer matching the
   filter, is refused (``scope-violation``); one that does not
   exist is ``cd-missing-object``. The same search reads ``allowedAttributesEffective``: if the
   account may not write an attribute in an OU, the step stops here, before any write
   (``stopped-permission-issue``, naming the account, attribute, OU and the ``dsacls`` grant; see
   ``_permissions``). When the OU's grant exists (the account may write the attribute on others
   there) and does not reach some objects (a protected account, a deny entry), those alone fail
   as ``permission-issue`` without a write, and the others are written. ``check_permissions =
   false`` turns the check off.
4. **Write** with ``MODIFY_REPLACE`` (``[]`` clears, and is idempotent even when the attribute is
   absent) through a small pool of connections in threads, paced by the write-rate cap. Result
   codes map to MIM error names. Transport failures are ``RETRY`` and, once the reconnects fail,
   stop the step after the batch (a write sent whose answer never came says its outcome is unknown).
   Busy, unavailable and timeLimitExceeded answers are the DC's state, not the person's: that
   write is ``RETRY`` and the step stops after the batch, the batch's writes not started untried;
   the same answer to a search of stage 3 stops the step the same way before the batch writes.
   An interruption (Ctrl-C, a stop signal) starts no more writes, waits for those under way and
   hands their results back with it (``carry_export_results``), so the engine records them.

In LDIF mode stage 4 appends change records to a file instead of writing.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ldap3 import BASE, MODIFY_ADD, MODIFY_DELETE, MODIFY_REPLACE, SUBTREE, Connection

from connector import metrics
from connector.agents.active_directory._connection import (
    DC_STATE_CODES,
    DcRefused,
    LinkPool,
    Outcome,
    ServerUnreachable,
    dc_entries,
    dc_state_stop,
    result_detail,
    search_entries,
)
from connector.agents.active_directory._ldap import (
    and_filter,
    dn_in_scope,
    encode_values,
    guid_bytes,
    guid_filter,
    guid_text,
)
from connector.agents.active_directory._ldif import LdifWriter, modify_record
from connector.agents.active_directory._permissions import (
    EFFECTIVE,
    STATUS,
    Gap,
    blocked_object,
    container_of,
    dsacls_line,
    effective_of,
    find_gaps,
    read_effective,
    refusal,
    writable_elsewhere,
)
from connector.agents.active_directory._schema import ANCHOR, PHOTO, PHOTO_MAX_BYTES, Search, unknown_attributes
from connector.imaging import sniff_format
from connector.net import RefusedEverywhere
from connector.sdk import (
    Attribute,
    AttributeModificationType,
    ConfigurationError,
    CSEntryChange,
    ExportResult,
    ExportStatus,
    ObjectClass,
    ObjectModificationType,
    ScopeViolationError,
    ServerDownError,
    StopRunError,
    Underway,
    Value,
    Values,
    carry_export_results,
    wait_all,
    wait_until,
)

__all__ = [
    "REFUSED_EVERYWHERE_AFTER",
    "ExportStats",
    "Exporter",
    "Operation",
    "RateLimiter",
    "classify_result",
    "computed",
    "not_in_schema",
    "plan_change",
    "unknown_flow_attributes",
]

#: (LDIF/LDAP verb, attribute, values). ``replace`` with no values clears the attribute.
Operation = tuple[str, str, list[bytes | str]]

_LDAP_VERBS = {"replace": MODIFY_REPLACE, "add": MODIFY_ADD, "delete": MODIFY_DELETE}
_RESOLVE_CHUNK = 200
#: Refusals RFC 4511 (4.1.9, appendix A) words as about the client or the server, not the value written:
#: insufficientAccessRights ("the client does not have sufficient access rights"), unwillingToPerform
#: ("the server is unwilling to perform the operation"), adminLimitExceeded ("an administrative limit
#: has been exceeded"). Each is a person's error, unless ``REFUSED_EVERYWHERE_AFTER`` people in a row get it
#: (``connector.net.RefusedEverywhere``) and, for 50, the account may write no one else in their OU either
#: (``Exporter._grant_missing``): then it is the account's or the DC's, and the step stops once.
#: constraintViolation and invalidAttributeSyntax are about the value written, noSuchObject about the
#: object: always the person's.
_EVERYWHERE_CODES = {50: "insufficientAccessRights", 53: "unwillingToPerform", 11: "adminLimitExceeded"}
#: Distinct people refused in a row with the same code, none written meanwhile, that are judged as a
#: refusal of the account (or the DC) rather than of each person (``RefusedEverywhere``).
#: Why 5: AD refuses a few people on their own (accounts AdminSDHolder protects, a deny entry), and they
#: can come together (an OU of administrators). If a share p of the people is refused on its own, five
#: in a row happen by chance with odds p**5 (1e-5 at 10 %, 3 % even at half), and for 50 such a streak
#: costs one read (the confirmation), never a stop while the OU's grant reaches others; 53 and 11, which
#: AD answers about the request rather than the person (and no read can confirm), stop on the streak alone.
#: An account refused everywhere costs five errors, not one per pending person.
REFUSED_EVERYWHERE_AFTER = 5
_NAMED = {
    19: "constraint-violation",
    21: "constraint-violation",
    32: "cd-missing-object",
    50: "permission-issue",
}


def classify_result(code: int) -> tuple[ExportStatus, str]:
    """An LDAP result code as (status, MIM-style error name); code 0 is success."""
    if code == 0:
        return ExportStatus.SUCCESS, ""
    if code in DC_STATE_CODES:  # "try again later": the DC's state (see _dc_state)
        return ExportStatus.RETRY, "cd-server-busy"
    return ExportStatus.FAILED, _NAMED.get(code, "cd-error")


class RateLimiter:
    """Paces calls to at most ``rate`` per second across threads (no bursts); None: no pacing."""

    def __init__(
        self,
        rate: float | None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._interval = 1.0 / rate if rate else 0.0
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0
        self._lock = threading.Lock()
        #: Seconds the calls waited for their slot, summed over threads (what the cap cost).
        self.waited_s = 0.0

    def wait(self) -> None:
        if not self._interval:
            return
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self._interval
            self.waited_s += max(0.0, slot - now)
        if slot > now:
            self._sleep(slot - now)


@dataclass
class ExportStats:
    """What the export calls of one run step did (the benchmark and the logs read it)."""

    changes: int = 0
    writes: int = 0
    noops: int = 0
    ldif_records: int = 0
    failed: int = 0
    retry: int = 0
    #: Objects whose write rights were checked before writing, and extra BASE reads that took.
    rights_checked: int = 0
    rights_reads: int = 0
    #: Seconds writes waited for ``max_writes_per_second``, summed over the writing threads.
    paced_s: float = 0.0

    def count(self, results: Sequence[ExportResult]) -> None:
        self.changes += len(results)
        self.failed += sum(r.status == ExportStatus.FAILED for r in results)
        self.retry += sum(r.status == ExportStatus.RETRY for r in results)


# ------------------------------------------------------------------------------------- planning
def _as_list(values: Values | None) -> list[Value]:
    if values is None:
        return []
    return list(values) if isinstance(values, list) else [values]


def _comparable(values: Sequence[Value]) -> list[bytes]:
    return sorted(v if isinstance(v, bytes) else v.encode("utf-8") for v in encode_values(values))


def plan_change(
    change: CSEntryChange, object_class: ObjectClass, allowed: frozenset[str]
) -> list[Operation] | ExportResult:
    """The LDAP operations ``change`` needs (empty: nothing to write), or a per-object failure.

    Raises ScopeViolationError for an attribute outside ``allowed`` (lower-case names) or one the
    directory computes. Replacements are taken as staged (the engine made the no-op check); only
    multi-valued adds and deletes leave out values ``change.previous`` already has or lacks.
    """
    identifier = change.identifier
    if change.modification in (ObjectModificationType.ADD, ObjectModificationType.DELETE):
        what = "create" if change.modification == ObjectModificationType.ADD else "delete"
        return ExportResult.failed(
            identifier,
            "cd-error",
            f"the active-directory agent does not {what} objects (it only updates existing users)",
        )
    index = {a.name.lower(): a for a in object_class.attributes}
    requested: list[tuple[AttributeModificationType, str, list[Value]]] = []
    if change.modification == ObjectModificationType.REPLACE:
        # the whole exportable object: what it does not name is cleared
        for name in sorted(allowed):
            attribute = index.get(name)
            if attribute is not None and attribute.exportable:
                value = next((v for k, v in change.attributes.items() if k.lower() == name), None)
                requested.append((AttributeModificationType.REPLACE, attribute.name, _as_list(value)))
        extra = sorted(k for k in change.attributes if k.lower() not in allowed)
        if extra:
            _refuse(change, extra[0], allowed)
    else:
        requested = [(c.modification, c.name, list(c.values)) for c in change.changes]
    previous = {k.lower(): _as_list(v) for k, v in change.previous.items()}

    operations: list[Operation] = []
    for modification, name, values in requested:
        attribute = index.get(name.lower())
        if name.lower() not in allowed:
            _refuse(change, name, allowed)
        if attribute is not None and not attribute.exportable:
            raise ScopeViolationError(f"refusing to export {attribute.name!r}: {computed(attribute.name)}")
        failure = _check_values(identifier, attribute, name, values)
        if failure is not None:
            return failure
        operation = _operation(modification, attribute, name, values, previous.get(name.lower(), []))
        if operation is not None:
            operations.append(operation)
    return operations


def _refuse(change: CSEntryChange, name: str, allowed: frozenset[str]) -> None:
    named = ", ".join(sorted(allowed)) or "none"
    msg = (
        f"refusing to export attribute {name!r} of {change.object_class} {change.anchor}: "
        "no export flow names it "
        f"(attributes export flows name: {named}); nothing in this batch was written"
    )
    raise ScopeViolationError(msg)


def computed(name: str) -> str:
    """Why an export flow to ``name``, an attribute the directory computes, can write nothing, and what to do
    (the export's refusal and ``mvsync doctor`` say it alike: doctor advised a dsacls grant for it)."""
    return (
        f"the directory computes {name} (import-only), and no right makes it writable; remove the export flow "
        f"that names it (`mvsync schema` lists what can be written)"
    )


def _check_values(identifier: str, attribute: Attribute | None, name: str, values: list[Value]) -> ExportResult | None:
    if attribute is not None and not attribute.multivalued and len(values) > 1:
        return ExportResult.failed(
            identifier, "constraint-violation", f"{name} is single-valued; got {len(values)} values"
        )
    if name.lower() == "thumbnailphoto":
        for value in values:
            size = len(value) if isinstance(value, (bytes, str)) else 0
            if size > PHOTO_MAX_BYTES:
                return ExportResult.failed(
                    identifier,
                    "constraint-violation",
                    f"thumbnailPhoto is {size:,} bytes; AD accepts at most {PHOTO_MAX_BYTES:,} (not sent): give "
                    'its export flow a transform that makes it smaller, transform = "thumbnail(size=96, '
                    'max_bytes=10240)"',
                )
            if isinstance(value, bytes) and value and sniff_format(value[:16]) is None:
                return ExportResult.failed(identifier, "not-an-image", _NOT_AN_IMAGE.format(size=size))
    return None


#: A thumbnailPhoto value that is no image: AD stores any bytes, and Outlook, Teams and the address book
#: would show none (found by QA: only a flow from the wrong metaverse attribute sends such bytes, since
#: imports refuse photos that are no image, and they were written all the same). Empty is a removal.
_NOT_AN_IMAGE = (
    "thumbnailPhoto would be {size:,} bytes that are no image (not sent): the export flow to thumbnailPhoto "
    "should carry a photo; `mvsync mv show` shows the metaverse attribute it reads, and "
    'transform = "thumbnail(size=96, max_bytes=10240)" makes a JPEG of any photo'
)


def _operation(
    modification: AttributeModificationType,
    attribute: Attribute | None,
    name: str,
    values: list[Value],
    previous: list[Value],
) -> Operation | None:
    """One attribute change as an operation, or None when a multi-valued add or delete changes nothing.

    A replacement (and a single-valued add, or a delete of every value) is a ``replace``: the
    engine staged it because the value differs from what it expects, and ``MODIFY_REPLACE`` is
    idempotent, a clear of an absent attribute included.
    """
    single = attribute is None or not attribute.multivalued
    if modification == AttributeModificationType.REPLACE or (single and modification == AttributeModificationType.ADD):
        return ("replace", name, encode_values(values))
    if modification == AttributeModificationType.DELETE and not values:
        return ("replace", name, [])
    have = set(_comparable(previous))
    if modification == AttributeModificationType.ADD:  # multi-valued: only values not there yet
        new = [v for v in values if _comparable([v])[0] not in have]
        return ("add", name, encode_values(new)) if new else None
    gone = [v for v in values if _comparable([v])[0] in have]  # delete listed values: only those present
    return ("delete", name, encode_values(gone)) if gone else None


# ------------------------------------------------------------------------------------- exporter
@dataclass
class _Planned:
    position: int
    change: CSEntryChange
    operations: list[Operation]
    dn: str = ""
    result: ExportResult | None = field(default=None)
    #: Attributes the account may write here (lower case); None until read.
    writable: frozenset[str] | None = None


class Exporter:
    """Runs the four stages for each batch ``Connector.export`` receives."""

    def __init__(
        self,
        *,
        pool: LinkPool,
        object_class: ObjectClass,
        allowed: frozenset[str],
        bases: Sequence[str],
        normalized_bases: Sequence[str],
        write_rate: float | None,
        threads: int,
        ldif: LdifWriter | None,
        dry_run: bool,
        log: Any,
        check_rights: bool = False,
        account_label: Callable[[Any], str] | None = None,
        scope_filter: str = "",
        flow_key: str = "export_flow",
    ) -> None:
        self.pool = pool
        self.object_class = object_class
        self.allowed = frozenset(a.lower() for a in allowed)
        #: Where the export flows are in the configuration (``agents.ad.export_flow``), and the names they write
        #: as they spell them: an attribute the DC's schema lacks is said once, there (``_check_flows``).
        self.flow_key = flow_key
        self._flow_names = sorted(allowed)
        self._flows_checked = False
        self.bases = list(bases)
        self.normalized_bases = list(normalized_bases)
        #: The agent's filter (with filter_equals): an object under a base DN that no longer matches it is out
        #: of scope too, as the import takes it (``_out_of_scope``).
        self.scope_filter = scope_filter
        self.limiter = RateLimiter(write_rate)
        self.ldif = ldif
        self.dry_run = dry_run
        self.log = log
        self.stats = ExportStats()
        self.check_rights = check_rights
        self._account_label = account_label or (lambda _link: "the bound account")
        #: The bound account as dsacls names it, looked up at the first refused write.
        self._account: str | None = None
        self._account_lock = threading.Lock()
        #: thumbnailPhoto's rangeUpper in this DC's schema, read at the first refused photo write.
        self._photo_limit: tuple[int, str] | None = None
        self._threads = threads
        self._executor: ThreadPoolExecutor | None = None
        #: Writes a worker has started and not yet recorded (``_write_into``): what an interruption waits for.
        self._writes = Underway()
        self._down = threading.Event()
        #: Ctrl-C or a stop signal came: no write starts after it.
        self._interrupted = threading.Event()
        self._stats_lock = threading.Lock()
        #: The engine handed the whole step to ``prepare`` and its rights were checked there.
        self._prechecked = False
        #: Objects (by anchor) the container's grant does not reach, found by the rights check: each is
        #: a per-object ``permission-issue`` (its detail here), not written; the others are.
        self._blocked: dict[str, str] = {}
        #: What stops the step once the batch that met it is recorded (the DC went away, a rebind failed, a
        #: reconnect found a setting's file gone: ``ConfigurationError``).
        self._stop: StopRunError | ConfigurationError | None = None
        self._unreachable = ""
        #: Whether the DC refuses the account (or every write), not the people refused so far.
        self._refusals = RefusedEverywhere(REFUSED_EVERYWHERE_AFTER)
        #: Streaks judged so far (``_judge_streak``): only the step's first is "the first writes of this step".
        self._streaks_judged = 0

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def _check_flows(self, link: Any) -> None:
        """Once a step, before its first write (the rights check's and stage 3's search come after): the
        ``ConfigurationError`` naming the export flows' key and each attribute they write that the DC's schema
        lacks (a misspelt ``cs``), if any (``unknown_flow_attributes``). On stage 3's link, so a DC out of reach
        costs the step one wait for it, not two."""
        if self._flows_checked:
            return
        unknown = unknown_flow_attributes(link, self._flow_names)
        self._flows_checked = True
        if unknown:
            msg = f"{not_in_schema(unknown, link.host)}; the export stopped before any write"
            raise ConfigurationError(msg, key=self.flow_key)

    def _plan(self, changes: Sequence[CSEntryChange]) -> tuple[list[_Planned], dict[int, ExportResult]]:
        """Stages 1 and 2 for a whole batch: what to write per object, or its result already."""
        planned: list[_Planned] = []
        results: dict[int, ExportResult] = {}
        for position, change in enumerate(changes):
            outcome = plan_change(change, self.object_class, self.allowed)
            if isinstance(outcome, ExportResult):
                results[position] = outcome
            elif not outcome:
                results[position] = ExportResult.success(change.identifier)
            elif change.dn and not dn_in_scope(change.dn, self.normalized_bases):
                results[position] = self._out_of_scope(change, change.dn)
            else:
                planned.append(_Planned(position, change, outcome))
        return planned, results

    def prepare(self, changes: Sequence[CSEntryChange]) -> None:
        """Check the rights for the step's changes before its first batch is written (raises to stop).

        The engine calls this for every pending change of the step (in chunks, values left out), so
        a right missing in the last batch stops the step before the first batch is written.
        """
        if not self.check_rights or self.ldif is not None or self.dry_run:
            return
        planned, _ = self._plan(changes)
        self._resolve(planned)
        self._check_rights([p for p in planned if p.result is None])
        if self._stop is not None:  # nothing is written yet: stop before the first batch
            raise self._stop
        self._prechecked = True

    def export(self, changes: Sequence[CSEntryChange]) -> list[ExportResult]:
        """The four stages for one batch; one result per change, in order.

        When the DC cannot be reached (or a reconnect is refused) the step stops with this batch:
        its results, writes done before the failure included, go with the error for the engine to
        record, and no later batch waits for the same timeouts again. A hung DC therefore costs one
        batch's timeouts, not one per batch of the step, and the step ends ``stopped-server-down``.
        """
        planned, results = self._plan(changes)  # stages 1 and 2 for the whole batch first
        self.stats.noops += sum(1 for r in results.values() if r.status == ExportStatus.SUCCESS)
        try:
            self._resolve(planned)  # stage 3
            ready = [p for p in planned if p.result is None]
            if self.check_rights and self.ldif is None and not self._prechecked:
                self._check_rights(ready)  # raises (stops the step) before any write
        except ServerDownError as exc:  # the DC answered a lookup busy: what planning decided is recorded
            exc.results = _ordered(planned, results)
            raise
        self._refuse_blocked(ready)
        ready = [p for p in ready if p.result is None]
        try:
            self._deliver(ready)  # stage 4
        except KeyboardInterrupt as exc:  # Ctrl-C or a stop signal: what the DC took goes with it
            carry_export_results(exc, _ordered(planned, results))
            raise
        ordered = _ordered(planned, results)
        self.stats.count(ordered)
        self.stats.paced_s = self.limiter.waited_s
        if self._stop is not None:
            carry_export_results(self._stop, ordered)
            raise self._stop
        return ordered

    # -- stage 3 ------------------------------------------------------------------------------------
    def _out_of_scope(self, change: CSEntryChange, dn: str) -> ExportResult:
        """The error of an object outside the agent's scope: not under a base DN, or under one and no longer
        matching the filter (the import would take it for gone; a write would reach a user the filter leaves
        out, an administrator or a disabled account)."""
        if dn_in_scope(dn, self.normalized_bases):
            return ExportResult.failed(
                change.identifier,
                "scope-violation",
                f"refusing to modify {dn}: it no longer matches the agent's filter {self.scope_filter} (changed since "
                "the last import?); an import of this agent takes it out of scope (change filter or filter_equals "
                "if it should be written)",
            )
        return ExportResult.failed(
            change.identifier,
            "scope-violation",
            f"refusing to modify {dn}: it is not under the configured base DNs ({'; '.join(self.bases)}); "
            "moved since the last import? An import of this agent takes it out of scope (widen base_dns if the "
            "move was intended)",
        )

    def _resolve(self, planned: list[_Planned]) -> None:
        """Current DN of each object if it lies under a base DN; failures set ``result``."""
        valid: dict[str, list[_Planned]] = {}
        for p in planned:
            try:
                key = guid_text(guid_bytes(p.change.anchor))
            except ValueError:
                p.result = ExportResult.failed(
                    p.change.identifier, "cd-error", f"anchor {p.change.anchor!r} is not an objectGUID"
                )
                continue
            valid.setdefault(key, []).append(p)
        anchors = list(valid)
        found: dict[str, str] = {}
        writable: dict[str, frozenset[str] | None] = {}
        attributes = [ANCHOR, EFFECTIVE] if self.check_rights else [ANCHOR]
        with self.pool.lease() as link:
            try:
                self._check_flows(link)
                for start in range(0, len(anchors), _RESOLVE_CHUNK):
                    search_filter = and_filter(self.scope_filter, guid_filter(anchors[start : start + _RESOLVE_CHUNK]))
                    for base in self.bases:
                        for entry in _found(link, base, link.run(_scoped_searcher(base, search_filter, attributes))):
                            anchor = guid_text(entry["raw_attributes"][ANCHOR][0])
                            found[anchor] = entry["dn"]
                            writable[anchor] = effective_of(entry)
                missing = [a for a in anchors if a not in found]
                elsewhere = {a: dn for a in missing for dn in self._locate(link, a)}
            except DcRefused as exc:
                raise _dc_state(link, exc.what, exc.detail) from None
            except ServerUnreachable as exc:
                for group in valid.values():
                    for p in group:
                        p.result = ExportResult.retry(p.change.identifier, "cd-server-down", str(exc))
                self._server_down(exc)
                return
        for anchor, group in valid.items():
            for p in group:
                if anchor in found:
                    p.dn = found[anchor]
                    p.writable = writable.get(anchor)
                elif anchor in elsewhere:
                    p.result = self._out_of_scope(p.change, elsewhere[anchor])
                else:
                    p.result = ExportResult.failed(
                        p.change.identifier,
                        "cd-missing-object",
                        f"no object with objectGUID {anchor} exists in the directory (deleted since the last "
                        "import?); a full import of this agent marks it deleted",
                    )

    @staticmethod
    def _locate(link: Any, anchor: str) -> list[str]:
        """Where an object not found under the base DNs is, if anywhere (for the error message)."""
        base = f"<GUID={uuid.UUID(anchor)}>"
        return [e["dn"] for e in link.run(_searcher(base, "(objectClass=*)", BASE, what=f"the search for {base}"))]

    def _check_rights(self, ready: list[_Planned]) -> None:
        """Stop the step (StopRunError) if the account may not write what ``ready`` needs in an OU; remember
        the objects an existing grant does not reach (``_refuse_blocked`` fails them, unwritten)."""
        with self.pool.lease() as link:
            try:
                gaps = self._gaps(link, ready)
            except DcRefused as exc:
                raise _dc_state(link, exc.what, exc.detail) from None
            except ServerUnreachable as exc:
                for p in ready:
                    p.result = ExportResult.retry(p.change.identifier, "cd-server-down", str(exc))
                self._server_down(exc)
                return
            if not gaps:
                return
            account = self._account_label(link)
        if any(not gap.writable_siblings for gap in gaps):  # a grant missing: no write anywhere
            raise refusal(gaps, account, self.object_class.name)
        anchors = {p.dn: p.change.anchor for p in ready}
        for gap in gaps:  # the grant exists and does not reach these: they alone are not written
            for dn in gap.dns:
                self._blocked.setdefault(anchors[dn], blocked_object(gap, dn, account))

    def _gaps(self, link: Any, ready: list[_Planned]) -> list[Gap]:
        """What the account may not write where ``ready`` needs it, each gap with the objects of its
        container it may write it on (this check's, else its neighbours': ``writable_elsewhere``)."""
        for p in ready:
            if p.writable is None:  # not in the resolve search's answer: ask for this object alone
                p.writable = read_effective(link, p.dn)
                self.stats.rights_reads += 1
        self.stats.rights_checked += len(ready)
        gaps = find_gaps((p.dn, [op[1] for op in p.operations], p.writable or frozenset()) for p in ready)
        for gap in gaps:
            if not gap.writable_siblings:
                gap.writable_siblings = writable_elsewhere(link, gap, self.object_class.name)
        return gaps

    def _refuse_blocked(self, ready: list[_Planned]) -> None:
        """The per-object ``permission-issue`` of each object the rights check found out of the grant's reach."""
        for p in ready:
            if p.change.anchor in self._blocked:
                p.result = ExportResult.failed(p.change.identifier, "permission-issue", self._blocked[p.change.anchor])

    def _server_down(self, exc: ServerUnreachable) -> None:
        """Stop the step once this batch is recorded: the next batch would wait for the same DC."""
        self._unreachable = str(exc)
        msg = f"{exc}; the objects written before are recorded, the rest stay pending for the next export"
        self._stop_after_batch(ServerDownError(msg))

    def _stop_after_batch(self, error: StopRunError | ConfigurationError) -> None:
        """Remember the first error that stops the step, and keep the batch's other threads from writing."""
        with self._stats_lock:
            if self._stop is None:
                self._stop = error
        self._down.set()

    # -- stage 4 ------------------------------------------------------------------------------------
    def _deliver(self, ready: list[_Planned]) -> None:
        """Stage 4 as configured: log (dry run), append to the LDIF file, or write to the DC."""
        if self.dry_run:
            for p in ready:
                self.log.info("dry run: would modify %s (%s)", p.dn, ", ".join(op[1] for op in p.operations))
                p.result = ExportResult.success(p.change.identifier)
        elif self.ldif is not None:
            self.ldif.write([modify_record(p.dn, p.operations) for p in ready])
            self.stats.ldif_records += len(ready)
            for p in ready:
                p.result = ExportResult.success(p.change.identifier)
        else:
            self._write_all(ready)

    def _write_all(self, ready: list[_Planned]) -> None:
        """Write ``ready`` in the worker threads, one connection each, while this thread waits.

        Why in workers even with one connection: the signal handler interrupts this (the main) thread,
        and an interruption raised in the middle of a write on it would lose the write's answer; here
        the writes under way finish and are recorded (``_finish_interrupted``).
        """
        if not ready:
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=max(1, self._threads), thread_name_prefix="ad-export")
        futures: list[Future[None]] = []
        try:  # handing over too: the writes handed over before an interruption start at once
            for p in ready:
                futures.append(self._executor.submit(self._write_into, p))
            wait_all(futures)  # not ``future.result()``: on Windows that wait ignores Ctrl-C (``wait_all``)
            for future in futures:
                future.result()
        except KeyboardInterrupt:
            self._finish_interrupted(futures)
            raise

    def _write_into(self, p: _Planned) -> None:
        """Write ``p`` and record its result on it, in the worker.

        Why the worker records it, not this thread from the future: an interruption can come in after
        ``submit`` handed a write over and before its future was kept, and that write (the DC took it)
        was then left pending, to be written again by the next export.
        """
        with self._writes.one():
            p.result = self._write_one(p)

    def _finish_interrupted(self, futures: list[Future[None]]) -> None:
        """After Ctrl-C or a stop signal: start no more writes, wait for those under way; each records its result.

        A second interruption while waiting stops the wait; the writes finished by then are still recorded.
        """
        self._interrupted.set()
        for future in futures:
            future.cancel()
        running = self._writes.count
        if running:
            self.log.warning(
                "interrupted: waiting for %d LDAP write%s under way so that %s recorded; interrupt again to stop "
                "at once (the next export may then write %s again)",
                running,
                "s" if running != 1 else "",
                "they are" if running != 1 else "it is",
                "them" if running != 1 else "it",
            )
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)  # the writes not started never start
        # every write under way, kept in ``futures`` or not (one handed over as the interruption came in);
        # a worker that takes one after this returns before writing (``_interrupted``). Polled, not
        # ``shutdown(wait=True)``: on Windows a thread join ignores the second Ctrl-C (``wait_until``)
        wait_until(self._writes.idle)

    def _write_one(self, p: _Planned) -> ExportResult | None:
        """Write one object; None when it was not tried because a reconnect or an interruption stopped the step."""
        identifier = p.change.identifier
        if self._down.is_set():  # one unreachable verdict per batch, not one timeout per change
            if self._unreachable:
                return ExportResult.retry(identifier, "cd-server-down", f"modify {p.dn}: not sent: {self._unreachable}")
            return None  # not tried: what stopped the step says why
        changes: dict[str, list[tuple[str, list[bytes | str]]]] = {}
        for verb, attribute, values in p.operations:
            changes.setdefault(attribute, []).append((_LDAP_VERBS[verb], values))
        self.limiter.wait()
        if self._interrupted.is_set():  # after the pacing wait, which the interruption may have come in
            return None
        sent: list[bool] = []

        def write(conn: Connection) -> dict[str, Any]:
            sent.append(True)
            return _modify(conn, p.dn, changes)

        with self.pool.lease() as link:
            try:
                # an interruption ends the reconnects: it waits for this write, not for a hung DC's timeouts
                result: dict[str, Any] = link.run(write, stop=self._interrupted)
            except ServerUnreachable as exc:
                self._server_down(exc)
                metrics.ldap_write("cd-server-down")
                return ExportResult.retry(identifier, "cd-server-down", _lost_write(p.dn, exc, sent=bool(sent)))
            except (StopRunError, ConfigurationError) as exc:  # a reconnect refused (password changed, certificate,
                # ca_file or keytab gone): not written; the batch's writes made before are recorded with the stop
                self._stop_after_batch(exc)
                return None
            code = int(result.get("result", 80))
            status, name = classify_result(code)
            metrics.ldap_write("success" if status == ExportStatus.SUCCESS else name)
            if status == ExportStatus.SUCCESS:
                self._refusals.worked(p.dn)
                with self._stats_lock:
                    self.stats.writes += 1
                return ExportResult.success(identifier)
            answer = detail = result_detail(result)
            if status == ExportStatus.RETRY:  # the whole DC's state, not this person's: stop the step
                self._dc_refused(link, p.dn, detail)
            elif name == "permission-issue":
                detail += f"; {self._refused_write(link, p)}"
            elif name == "constraint-violation" and (size := _photo_size(p.operations)) is not None:
                detail += f"; {self._refused_photo(link, size)}"
            elif name == "cd-missing-object":  # it was there when this batch looked it up
                detail += (
                    "; it was deleted, moved or renamed while this batch was written: the next export looks it "
                    "up again by objectGUID and writes it where it is now, if under base_dns (a full import marks it "
                    "deleted if it is gone)"
                )
            if code in _EVERYWHERE_CODES and (streak := self._refusals.refused(p.dn, str(code))) is not None:
                self._judge_streak(link, p, code, answer, streak)
        return ExportResult(identifier, status, name, f"modify {p.dn}: {detail}")

    def _judge_streak(self, link: Any, p: _Planned, code: int, answer: str, streak: list[str]) -> None:
        """Stop the step after the batch if ``streak`` (people refused ``code`` in a row) is the account's or
        the DC's refusal; else each refusal stays that person's error and the count starts again.

        The confirmation for 50 (``_grant_missing``) is a read, never a write: writing a person again would
        change the directory (a new USN, replication) to learn what a read tells. 53 and 11 have none.
        """
        with self._stats_lock:
            self._streaks_judged += 1
            first = self._streaks_judged == 1
        missing: list[tuple[str, str]] = []
        if code == 50:
            try:
                missing = self._grant_missing(link, p, streak)
            except DcRefused as exc:
                self._stop_after_batch(_dc_state(link, exc.what, exc.detail))
                return
            except ServerUnreachable as exc:
                self._server_down(exc)
                return
            except (StopRunError, ConfigurationError) as exc:
                self._stop_after_batch(exc)
                return
            if not missing:  # the OU's grant still reaches others: these people are refused on their own
                return
        self._stop_after_batch(self._refused_everywhere(link, code, answer, streak, missing, first=first))

    def _grant_missing(self, link: Any, p: _Planned, streak: list[str]) -> list[tuple[str, str]]:
        """(container, attribute) pairs of ``streak``'s OUs where the account may write the attribute on no
        one else either: the grant is gone (or never was), which is the account's condition, not the people's.

        Why this read: ``allowedAttributesEffective`` is what the DC computes, for the bound account, from
        each object's security descriptor, inherited and deny ACEs included (MS-ADTS 3.1.1.4.5.7: the
        attributes for which the object's nTSecurityDescriptor grants the requester
        RIGHT_DS_WRITE_PROPERTY); the up-front rights check reads it too
        (``writable_elsewhere``, the same judgement: a grant that reaches others there exists, and what it
        does not reach is a protected account or a deny entry). A person refused while the grant reaches
        their neighbours is refused on their own; with no neighbour writable, the OU's grant is missing.
        """
        attributes = list(dict.fromkeys(op[1] for op in p.operations))
        containers: dict[str, list[str]] = {}
        for dn in streak:
            containers.setdefault(container_of(dn), []).append(dn)
        return [
            (container, attribute)
            for container, dns in containers.items()
            for attribute in attributes
            if not writable_elsewhere(link, Gap(attribute, container, dns), self.object_class.name)
        ]

    def _refused_everywhere(
        self, link: Any, code: int, detail: str, dns: list[str], missing: list[tuple[str, str]], *, first: bool
    ) -> StopRunError:
        """The stop for a refusal ``REFUSED_EVERYWHERE_AFTER`` people got in a row (``_judge_streak``): the
        account lacks a right (50: ``missing``, what and where, and the grant), or the DC will not write for
        anyone (53, 11)."""
        shown = "; ".join(dns)
        if self._refusals.worked_last is None:
            which = f"the first {len(dns)} writes of this step" if first else f"{len(dns)} more writes in a row"
            head = (
                f"{link.describe()} refused {which} ({shown}) with {_EVERYWHERE_CODES[code]} and not one "
                f"succeeded (the last: {detail})"
            )
        else:
            head = (
                f"{link.describe()} refused {len(dns)} writes in a row ({shown}) with {_EVERYWHERE_CODES[code]} "
                f"after writes of this step had succeeded, none since (the last: {detail})"
            )
        tail = (
            "the export stopped: the people written before are recorded; those refused have an error each and "
            "stay pending with the rest, for the next export"
        )
        if code == 50:
            with self._account_lock:
                if self._account is None:
                    self._account = self._account_label(link)
                account = self._account
            attributes = ", ".join(dict.fromkeys(attribute for _container, attribute in missing))
            where = ", ".join(dict.fromkeys(container for container, _attribute in missing))
            grants = "; ".join(dsacls_line(c, account, a, self.object_class.name) for c, a in missing)
            msg = (
                f"{head}: {account} may not write {attributes}, whoever the person (allowedAttributesEffective "
                f"shows it on no one else in {where} either); grant it with: {grants}; {tail}"
            )
            return StopRunError(msg, status=STATUS)
        why = (
            "AD will not make this change for anyone: its text (the DSID and problem) says why, e.g. an attribute "
            "the schema marks systemOnly"
            if code == 53
            else 'a limit of the DC\'s LDAP policy (ntdsutil "LDAP policies", e.g. MaxReceiveBuffer): raise it on '
            "the DC, or list another DC first"
        )
        return StopRunError(f"{head}: an answer about the DC or the account, not the people ({why}); {tail}")

    def _dc_refused(self, link: Any, dn: str, detail: str) -> None:
        """Stop the step once this batch is recorded: the DC answered a write busy, unavailable or out of time
        (``_dc_state``). The refused write stays pending (RETRY); the batch's writes not started are not
        tried and stay pending without an error of their own."""
        self._stop_after_batch(_dc_state(link, f"the write of {dn}", detail))

    def _refused_write(self, link: Any, p: _Planned) -> str:
        """What to do about a write the DC refused for lack of rights: who may not write what, and the grant.

        Why here too: the up-front check is off (``check_permissions = false``) or the rights changed
        after it, and the DC's own text names neither the account nor a way out.
        """
        with self._account_lock:  # the label may take two searches: once per step, not per refused write
            if self._account is None:
                self._account = self._account_label(link)
            account = self._account
        container = container_of(p.dn)
        attributes = list(dict.fromkeys(op[1] for op in p.operations))
        grants = "; ".join(dsacls_line(container, account, a, self.object_class.name) for a in attributes)
        return (
            f"{account} may not write {', '.join(attributes)} here: grant it with: {grants} (if others in that OU "
            f'are written, that grant exists and does not reach this person: see why with dsacls "{p.dn}")'
        )

    def _refused_photo(self, link: Any, size: int) -> str:
        """What to do about a photo the DC refused (constraintViolation, or invalidAttributeSyntax as Samba
        says it): its size and the limit. Why: the check before sending knows AD's default rangeUpper only;
        a DC whose schema was given a lower one refuses with its own text, which names neither."""
        with self._account_lock:  # one schema read per step, not per refused photo
            if self._photo_limit is None:
                self._photo_limit = _schema_photo_limit(link)
            limit, source = self._photo_limit
        if size <= limit:
            return (
                f"thumbnailPhoto is {size:,} bytes, within the {limit:,} that {source} allows: the DC refused "
                "the value (or another attribute of this write) for the reason in its text"
            )
        return (
            f"thumbnailPhoto is {size:,} bytes and {source} allows at most {limit:,}: give its export flow a "
            'transform that makes it smaller, transform = "thumbnail(size=96, max_bytes=10240)"'
        )


#: What an export that stopped on a DC's answer kept (``dc_state_stop``).
_STOPPED = Outcome(
    "the export stopped: the objects written before are recorded, the rest stay pending for the next export",
    "the export",
)


def _dc_state(link: Any, what: str, detail: str) -> ServerDownError:
    """The stop for a DC that answered ``what`` (a write, or a search the export makes before writing) busy,
    unavailable or out of time (``dc_state_stop``).

    Why one stop: going on turned every later pending person into an error of their own while the DC kept
    refusing, and a lookup so answered stopped the step as a connector error, with nothing to do about it.
    """
    return dc_state_stop(link, what, detail, _STOPPED)


def _lost_write(dn: str, exc: ServerUnreachable, *, sent: bool) -> str:
    """What is known of a write the DC was lost during: not sent, or sent with no answer (unknown).

    Why say which: a write whose answer never came may have been applied; calling it failed would send
    the operator to look for a fault in the person. Either way it stays pending, and writing it again is
    safe: a replace is idempotent, value adds and deletes go with permissive modify (``_modify``).
    """
    if not sent:
        return f"modify {dn}: not sent: {exc}"
    return (
        f"modify {dn}: sent, and its answer never came: {exc}; whether the DC applied it is unknown (the next "
        "import shows it). It stays pending and the next export writes it again, which is safe (a replace of "
        "the same value changes nothing)"
    )


def _photo_size(operations: list[Operation]) -> int | None:
    """The size of the photo an object's write sets, if it sets one."""
    for _verb, attribute, values in operations:
        if attribute.lower() == PHOTO.lower() and values:
            return max(len(value) for value in values)
    return None


def _schema_photo_limit(link: Any) -> tuple[int, str]:
    """``(rangeUpper, where it comes from)`` of thumbnailPhoto in the DC's schema; AD's default when the
    schema cannot be read (the limit is then named as the default, not as this DC's)."""
    default = (PHOTO_MAX_BYTES, "AD's schema (rangeUpper) by default")
    try:
        entries = _schema_search(link)(_schema_context(link), f"(lDAPDisplayName={PHOTO})", ["rangeUpper"])
        found = entries[0]["raw_attributes"].get("rangeUpper") or []
    except (ServerUnreachable, StopRunError, DcRefused, LookupError, UnicodeDecodeError):
        return default
    text = bytes(found[0]).decode("ascii", "replace") if found else ""
    return (int(text), f"this DC's schema (rangeUpper of {PHOTO})") if text.isdigit() else default


def unknown_flow_attributes(link: Any, names: Sequence[str]) -> list[str]:
    """Those of ``names`` (what export flows write) that the DC's schema lacks; none when it cannot tell.

    Why: a DC refuses every write of an attribute it does not know (noSuchAttribute), so a flow to a misspelt
    ``cs`` was each person's ``cd-error``, and with the rights check a stop that gave a dsacls grant for it,
    which cannot help (found by QA). When the schema cannot be read there is no verdict; a DC out of reach
    or busy raises as any search does (``ServerUnreachable``, ``DcRefused``).
    """
    try:
        return unknown_attributes(_schema_search(link), _schema_context(link), names) or []
    except (LookupError, UnicodeDecodeError):  # a rootDSE without the schema's DN, or not text
        return []


def not_in_schema(names: Sequence[str], host: str) -> str:
    """What an export flow to ``names``, no attributes of the directory on ``host``, is told (the export's stop
    and ``mvsync doctor`` alike)."""
    return (
        f"{', '.join(names)}: not an attribute of the directory on {host} (its schema has no such lDAPDisplayName), "
        "so it would refuse every write of it; correct the cs of the export flow that names it (`mvsync schema` "
        "lists the agent's attributes)"
    )


def _schema_context(link: Any) -> str:
    """The DN of the DC's schema partition, from its rootDSE (LookupError if it names none)."""
    root = link.run(_searcher("", "(objectClass=*)", BASE, ["schemaNamingContext"], what="the rootDSE"))
    return bytes(root[0]["raw_attributes"]["schemaNamingContext"][0]).decode()


def _schema_search(link: Any) -> Search:
    """A subtree search of the schema partition over ``link`` (``unknown_attributes``)."""
    return lambda base, search_filter, attributes: link.run(
        _searcher(base, search_filter, SUBTREE, attributes, what="the schema")
    )


def _ordered(planned: list[_Planned], results: dict[int, ExportResult]) -> list[ExportResult]:
    """The batch's results so far, in the order of its changes; a change not tried (yet) has none."""
    for p in planned:
        if p.result is not None:
            results[p.position] = p.result
    return [results[i] for i in sorted(results)]


def _scoped_searcher(
    base: str, search_filter: str, attributes: Sequence[str]
) -> Callable[[Connection], tuple[dict[str, Any], list[dict[str, Any]]]]:
    """A subtree search under a base DN that also hands back the search's result (``_found`` checks it)."""

    def operation(conn: Connection) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        conn.search(base, search_filter, SUBTREE, attributes=list(attributes))
        return conn.result, search_entries(conn)

    return operation


def _found(link: Any, base: str, answer: tuple[dict[str, Any], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The entries of a search under ``base``, or the error that stops the step before this batch writes.

    Why: a failed search has no entries, and every object of the batch was then taken for moved out of
    scope or deleted, one error per person, when the base DN itself was gone (an OU renamed) or the DC
    refused the search (busy, a time limit). The import stops on the same answers.
    """
    result, entries = answer
    code = result.get("result")
    if code in (0, None):
        return entries
    if code in DC_STATE_CODES:  # the DC's state, not the base DN's: the same stop as a write so answered
        raise DcRefused(result, f"the search for this batch's objects under {base!r}")
    host = link.host
    if code == 32:
        msg = (
            f"the base DN {base!r} does not exist on {host} (noSuchObject): renamed or deleted? check base_dns; "
            "nothing of this batch was written"
        )
        raise ConfigurationError(msg, key="base_dns")
    detail = result_detail(result)
    raise StopRunError(
        f"the search for this batch's objects under {base!r} on {host} failed ({detail}); nothing of this batch "
        "was written, it stays pending for the next export"
    )


def _searcher(
    base: str, search_filter: str, scope: str, attributes: Sequence[str] = (ANCHOR,), *, what: str
) -> Callable[[Connection], list[dict[str, Any]]]:
    """A search whose entries are handed back, or ``DcRefused`` (naming ``what``) for a DC busy or unavailable."""

    def operation(conn: Connection) -> list[dict[str, Any]]:
        conn.search(base, search_filter, scope, attributes=list(attributes))
        return dc_entries(conn, what)

    return operation


#: LDAP_SERVER_PERMISSIVE_MODIFY_OID: adding a value that is there, or deleting one that is not, succeeds.
_PERMISSIVE_MODIFY = "1.2.840.113556.1.4.1413"


def _modify(conn: Connection, dn: str, changes: dict[str, list[tuple[str, list[bytes | str]]]]) -> dict[str, Any]:
    """One LDAP modify, repeatable: ``Link.run`` sends it again after a lost answer.

    Why permissive modify: a replace is idempotent by itself, a multi-valued add or delete is not;
    repeated after the DC applied it, it was refused (attributeOrValueExists, noSuchAttribute) and
    reported failed although the directory held what was asked. Not critical: a DC that does not
    know the control ignores it.
    """
    permissive = any(verb != MODIFY_REPLACE for operations in changes.values() for verb, _ in operations)
    conn.modify(dn, changes, controls=[(_PERMISSIVE_MODIFY, False, None)] if permissive else None)
    result: dict[str, Any] = conn.result
    return result
