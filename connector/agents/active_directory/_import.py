"""Full and delta import from Active Directory.

**Full import** is a simple-paged search (one LDAP page per ``import_page`` call) under each base
DN with the configured filter. Before it starts, the DC's position is recorded as the watermark:
its ``invocationId`` and ``highestCommittedUSN``, plus a DirSync cookie when the account may use
DirSync. A change made while the full import runs is then seen again by the next delta (harmless:
the engine compares against what it holds). A paged search whose cookie is no longer good (a
reconnect, a Kerberos rebind, a result set the DC discarded) starts again from its first page, and
what the step already returned is left out (``Importer._paged``). At the end, each base DN is searched
once more for objects changed since the import started, so that one moved into territory already read
is not missed (and deleted).

**Delta import** uses one of two methods, chosen at full import (``delta_method = "auto"`` tries
DirSync first):

* *DirSync* (control 1.2.840.113556.1.4.841, searched at the naming-context root as AD requires):
  it names the objects whose requested attributes changed, tombstones included. Samba (and AD for
  cleared values) does not reliably say which attributes were *removed*, so the changed objects are
  read again in batches by GUID under the base DNs with the configured filter: the engine receives
  whole objects, and an object that is no longer under a base DN or no longer matches the filter is
  reported deleted.
* *uSNChanged* watermark: objects with ``lo < uSNChanged <= hi`` under the base DNs (``hi`` read
  when the delta starts, so the next delta starts exactly where this one stopped), then the same
  USN range at the naming-context root with the show-deleted control, which finds tombstones, moves
  out of scope and objects that stopped matching the filter: every changed user not returned by the
  first search is reported deleted. (Deletes of objects the engine never held are ignored by it.)

**Another DC, or a restored one.** USNs only mean something on the DC that issued them, and a
restored DC gets a new ``invocationId`` (Microsoft, "Example Code to Retrieve Changes Using USNChanged":
incremental synchronizations on the same DC; a new invocationId, a full synchronization). So the
watermark records the DC (its configured name, ``dsServiceName`` and invocationId), and a delta goes
to that DC first when several are configured (``Link.prefer``). When it reaches another one anyway
(that DC is down, or the name now leads elsewhere), the delta import *stops* with a ``StopRunError``
that names both DCs and tells the user to run a full import, with one exception: a DirSync cookie, which
Microsoft documents as good on any DC holding a replica of the same directory partition ("Polling for
Changes Using the DirSync Control": no change is missed; changes the first DC reported may come again,
at worst everything, as in a full synchronization). A DirSync delta therefore carries on against
another DC (a different ``dsServiceName``) of the same partition (the same objectGUID of its root),
and reads again whole what it names, so a repeat changes nothing. A restored DC (the same
``dsServiceName``, a new invocationId) is not another replica, and stops. Returning a partial USN delta
instead would silently miss deletions; stopping is the only answer that cannot lose data.

The same holds *within* a step: the connection layer reconnects when the transport breaks, and the
reconnect may reach another DC (a host name that resolves to several, a load balancer) or a restored
one. So the step pins the DC it started on (``Importer._pin``), and the first operation on every new
connection (a reconnect, a Kerberos rebind) reads the DC's identity again on that connection before
anything else (``Importer._verify_dc``). A different invocationId (or a highest USN gone backwards)
stops the step with a ``StopRunError`` that names both: a delta before reading anything there, its
watermark unchanged; a full import before reading anything there too, nothing marked deleted and no
watermark saved (it cannot go on, since what it already returned came from the first DC and the engine
takes each object once per step), so the next full import reads everything from one DC and records that
DC's position.
"""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from ldap3 import BASE, SUBTREE, Connection
from ldap3.protocol.microsoft import dir_sync_control, show_deleted_control

from connector.agents.active_directory._connection import (
    DcRefused,
    Link,
    Outcome,
    ServerUnreachable,
    cookie_gone,
    dc_entries,
    dc_state_stop,
    paged_cookie,
    result_detail,
)
from connector.agents.active_directory._ldap import (
    and_filter,
    decode_values,
    dn_in_scope,
    dn_within,
    equals_filter,
    filter_attributes,
    guid_filter,
    guid_text,
    normalize_dn,
)
from connector.agents.active_directory._schema import ANCHOR, OBJECT_CLASS, unknown_attributes
from connector.agents.active_directory._settings import ActiveDirectorySettings
from connector.sdk import (
    Attribute,
    ConfigurationError,
    ConnectorContext,
    CSEntryChange,
    ImportMode,
    ImportPage,
    ImportRequest,
    ObjectModificationType,
    Schema,
    ServerDownError,
    StopRunError,
    Values,
    parse_psma_attribute,
)

__all__ = ["IMPORT_STOPPED", "DcIdentity", "Importer", "Watermark"]

T = TypeVar("T")

_DIRSYNC_OID = "1.2.840.113556.1.4.841"
_DIRSYNC_MAX_BYTES = 1 << 20
#: Matches nothing: a DirSync round with it yields a cookie for "now" without reading the domain.
_NOTHING = "(&(objectClass=user)(!(objectClass=user)))"
#: DirSync filter. Not objectCategory: tombstones lose it, so deletions would be missed.
_DIRSYNC_FILTER = "(objectClass=user)"
_REREAD_CHUNK = 100
#: What the rootDSE tells of the DC: who it is (``dsServiceName`` names its NTDS Settings object, which
#: holds its invocationId), how far its change numbers have come, its naming contexts and its DNS name.
_ROOT_DSE = ["highestCommittedUSN", "dsServiceName", "namingContexts", "schemaNamingContext", "dnsHostName"]
#: Paged searches one import step may start again from their first page (see ``Importer._paged``) before
#: it stops: past that the DC keeps discarding them, or the connection keeps being replaced.
_RESTARTS_MAX = 10
#: What an import that stopped on a DC's answer kept (``dc_state_stop``, ``Importer._raise_for``).
IMPORT_STOPPED = Outcome(
    "the import stopped there: no object it did not read is marked deleted and the delta-import watermark stays "
    "where it was",
    "the import",
)


@dataclass(frozen=True, slots=True)
class DcIdentity:
    """Who answers: the DC's replica identity and how far its change numbers have come."""

    invocation_id: str
    highest_usn: int
    service: str
    naming_contexts: tuple[str, ...]
    schema_context: str = ""
    #: The DC's DNS name (rootDSE dnsHostName), to name it in messages; empty if it does not say.
    host_name: str = ""

    def describe(self) -> str:
        return f"{self.host_name or self.service} (invocationId {self.invocation_id}, highest USN {self.highest_usn})"

    def departure(self, invocation_id: str, usn: int, whose: str) -> str | None:
        """Why this DC is not the directory state that gave ``invocation_id`` and ``usn`` (``whose``), or None.

        Why both: a restored DC gets a new invocationId; a USN below one already handed out means the same
        replica went back in time all the same (AD never reuses a USN of its own)."""
        if self.invocation_id != invocation_id:
            return f"its invocationId is {self.invocation_id}, {whose} {invocation_id}"
        if self.highest_usn < usn:
            return f"its highest USN {self.highest_usn} is below {whose} {usn}"
        return None


@dataclass(frozen=True, slots=True)
class Watermark:
    """Where the last import left off, bound to the DC (``invocation_id``) that issued it.

    ``host`` is that DC as configured (host or one of fallback_hosts: a delta goes there first),
    ``dsa`` its ``dsServiceName`` and ``partition`` the objectGUID of the naming context DirSync
    reads (a DirSync cookie carries over to another DC of that partition); empty in watermarks
    written before they were recorded.
    """

    invocation_id: str
    usn: int
    dirsync: bytes | None = None
    object_security: bool = False
    host: str = ""
    dsa: str = ""
    partition: str = ""

    def dumps(self) -> str:
        return json.dumps(
            {
                "v": 1,
                "invocation_id": self.invocation_id,
                "usn": self.usn,
                "dirsync": base64.b64encode(self.dirsync).decode() if self.dirsync is not None else None,
                "object_security": self.object_security,
                "host": self.host,
                "dsa": self.dsa,
                "partition": self.partition,
            },
            sort_keys=True,
        )

    def carries_over(self, dc: DcIdentity, partition: str) -> bool:
        """Whether this watermark's DirSync cookie may be used on ``dc``, whose DirSync partition root has
        the objectGUID ``partition``: another DC (not this one restored) holding a replica of the same
        partition, which is what Microsoft documents the cookie as good for."""
        return (
            self.dirsync is not None
            and bool(self.dsa and self.partition)
            and dc.service.lower() != self.dsa.lower()
            and partition == self.partition
        )

    @classmethod
    def loads(cls, text: str) -> Watermark:
        try:
            data = json.loads(text)
            cookie = data.get("dirsync")
            return cls(
                str(data["invocation_id"]),
                int(data["usn"]),
                base64.b64decode(cookie) if cookie else None,
                bool(data.get("object_security", False)),
                str(data.get("host") or ""),
                str(data.get("dsa") or ""),
                str(data.get("partition") or ""),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            msg = "the saved delta-import watermark is not one this agent wrote; run a full import"
            raise StopRunError(msg) from None


#: What to do about an answer to an import search that is neither success nor a code with an answer of its own
#: (``Importer._raise_for``), by LDAP result code (RFC 4511 appendix A); ``{account}`` and ``{base}`` are filled in.
#:
#: 4 (sizeLimitExceeded): not ``page_size``. MS-ADTS 3.1.1.3.4.1.1 (LDAP_PAGED_RESULT_OID_STRING,
#: https://learn.microsoft.com/en-us/openspecs/windows_protocols/ms-adts/1b4a637c-c682-4b5e-9397-fe9142a38887): "DCs
#: limit the number of objects that can be returned in a single search operation to the value specified by the
#: MaxPageSize policy"; the paged control splits a search "into multiple searches, each of which returns no more
#: objects than this limit", so a page_size above MaxPageSize gets shorter pages, which the paged searches follow by
#: their cookie. Only an unpaged search (the re-read, ``_REREAD_CHUNK`` objects at a time) can meet it, and AD then
#: answers the first objects ("Retrieving Large Results Sets": without paging, "a maximum of the first 1000
#: records"); the import keeps none of them (``_raise_for`` stops), so the partial answer is never taken for all.
_REMEDIES = {
    1: "The DC could not carry out the search (AD answers so to a connection whose bind it no "
    "longer holds); the DC's text says why, its Directory Service event log more",
    4: "The DC cut the search short at its LDAP policy MaxPageSize (1000 by default), which caps a search that is "
    f"not paged (the agent re-reads up to {_REREAD_CHUNK} objects at a time so; its paged searches get pages of at "
    "most MaxPageSize whatever page_size is); the agent took none of the objects answered: ask the DC's "
    f"administrators to set MaxPageSize to {_REREAD_CHUNK} or more",
    11: "The search went past a limit of the DC's LDAP policy (MaxResultSetSize, "
    "MaxResultSetsPerConn, MaxQueryDuration): lower page_size or ask the DC's administrators about the policy",
    50: "The account {account} may not read under {base}: grant it read access (List "
    "Contents, Read Property) there, or check base_dns",
}


def _b64(data: bytes | None) -> str | None:
    return base64.b64encode(data).decode() if data else None


def _unb64(text: str | None) -> bytes | None:
    return base64.b64decode(text) if text else None


class Importer:
    """Serves ``import_page`` for one run step; keeps per-step state (the delta's seen anchors)."""

    def __init__(
        self,
        settings: ActiveDirectorySettings,
        link: Link,
        schema: Schema,
        context: ConnectorContext,
        outcome: Outcome = IMPORT_STOPPED,
    ) -> None:
        self.settings = settings
        self.link = link
        self.context = context
        #: What a stop says was kept and what to run again: the import's, or ``mvsync doctor``'s when its checks
        #: use this importer's reads (``ActiveDirectoryConnector.check``).
        self.outcome = outcome
        object_class = schema.object_classes[0]
        self._attributes: dict[str, Attribute] = {a.name.lower(): a for a in object_class.attributes}
        self._requested = [a.name for a in object_class.attributes if a.importable]
        self._bases = list(settings.base_dns)
        self._normalized_bases = [normalize_dn(b) for b in self._bases]
        self._filter = equals_filter(settings.filter, settings.filter_equals)
        self._nonce = secrets.token_hex(6)
        #: Anchors this step has returned (a paged search that starts again returns them again).
        self._seen: set[str] = set()
        self._restarts = 0
        #: Entries the DC sent in the last paged search's page (before those already returned are left out).
        self._read = 0
        #: The DC this step started on (None: no step under way), the step's kind, and the connection
        #: (``Link.connection_number``) on which it was last seen to answer (see ``_verify_dc``).
        self._pinned: DcIdentity | None = None
        self._pinned_kind = ""
        self._pinned_on = 0
        self._pinned_host = ""
        #: objectGUID of the DirSync partition's root on the step's DC ("" when not read).
        self._partition = ""
        #: Lower-case names of the configured extra attributes (the ones a user declares, and can misdeclare).
        self._extras = {parse_psma_attribute(spec)[0].name.lower() for spec in settings.extra_attributes}

    # -- entry point ------------------------------------------------------------------------------
    def page(self, request: ImportRequest) -> ImportPage:
        """The next page with something in it: pages whose entries this step already returned are read past.

        Why: a paged search that started again from its first page (``_paged``) reads again what the step
        returned, and the USN delta's second search meets the changed users its first one returned; such a
        page, handed to the engine empty, came back with the token it was asked with when the DC's cookie
        names the search rather than a position in it (Samba's does: RFC 2696 makes the cookie opaque), and
        the engine stopped the step as a paging loop. A page the DC itself sent empty is handed on as it is.
        """
        while True:
            self._read = 0
            page = self._full(request) if request.mode == ImportMode.FULL else self._delta(request)
            if page.entries or not page.more_to_import or not self._read:
                return page
            request = replace(request, page_token=page.page_token)

    # -- full ---------------------------------------------------------------------------------------
    def _full(self, request: ImportRequest) -> ImportPage:
        if request.page_token:
            token = json.loads(request.page_token)
        else:
            token = {"p": "all", "b": 0, "c": None, "k": None, "w": self.start_watermark().dumps()}
            self._seen = set()
        index = int(token["b"])
        entries, cookie, token["k"] = self._paged(
            self._bases[index], self._full_filter(token), self._page_size(request), _unb64(token["c"]), token.get("k")
        )
        page = self._unseen(entries, ObjectModificationType.ADD)
        token["c"] = _b64(cookie)
        if not cookie:
            token["b"] = index + 1
            if token["b"] == len(self._bases) and token["p"] == "all":
                token.update(p="late", b=0)
        more = int(token["b"]) < len(self._bases)
        next_token = json.dumps(token) if more else None
        return ImportPage(page, more_to_import=more, page_token=next_token, watermark=token["w"])

    def _full_filter(self, token: dict[str, Any]) -> str:
        """The configured filter; at the end ("late"), only objects changed since the import started.

        Why the late pass: an object moved while the full import ran, from a base DN not read yet into one
        already read (or, in AD, within one base DN, behind the paged search's position), is in no search,
        and the full import staged a delete for a person still in scope. A move changes uSNChanged, so one
        more search per base DN for uSNChanged above the watermark taken at the start finds it (usually
        nothing: it reads only what changed during the import).
        """
        if token["p"] == "all":
            return self._filter
        return f"(&{self._filter}(uSNChanged>={Watermark.loads(token['w']).usn + 1}))"

    def _unseen(self, entries: list[dict[str, Any]], modification: ObjectModificationType) -> list[CSEntryChange]:
        """The entries as changes, less those this step already returned (a search that started again)."""
        page: list[CSEntryChange] = []
        for raw in entries:
            entry = self._entry(raw, modification)
            if entry.anchor not in self._seen:
                self._seen.add(entry.anchor)
                page.append(entry)
        return page

    def start_watermark(self) -> Watermark:
        """The DC's position now, with a DirSync cookie when the account may use DirSync; the rest of
        the full import must be read from this DC (``_pin``)."""
        dc = self._pin("full")
        self.check_attributes(dc)
        cookie, object_security = self._initial_dirsync(dc)
        self._partition = self._partition_guid() if cookie is not None else ""
        return self._watermark(dc.highest_usn, cookie, object_security)

    def _watermark(self, usn: int, cookie: bytes | None = None, object_security: bool = False) -> Watermark:
        """The watermark at ``usn`` (and ``cookie``) of the step's DC, naming that DC."""
        dc = self._pinned
        assert dc is not None  # every import step pins its DC first
        return Watermark(dc.invocation_id, usn, cookie, object_security, self._pinned_host, dc.service, self._partition)

    def _partition_guid(self) -> str:
        """objectGUID of the root of the naming context DirSync reads (the same on every replica of it)."""
        root = self._single_root()
        if root is None:
            return ""
        found = self._search(root, "(objectClass=*)", [ANCHOR], scope=BASE)
        return guid_text(found[0]["raw_attributes"][ANCHOR][0]) if found else ""

    # -- delta --------------------------------------------------------------------------------------
    def _delta(self, request: ImportRequest) -> ImportPage:
        if request.page_token:
            token: dict[str, Any] = json.loads(request.page_token)
            if token.get("n") != self._nonce:
                msg = "a delta-import page token from another run step came back; run the delta import again"
                raise StopRunError(msg)
        else:
            if request.watermark is None:
                msg = (
                    f"agent {self.context.agent!r} has no delta-import watermark yet: "
                    "run a full import first (it records where the delta starts)"
                )
                raise StopRunError(msg)
            watermark = Watermark.loads(request.watermark)
            if watermark.host:
                self.link.prefer(watermark.host)  # the DC the watermark belongs to, if it still answers
            dc = self._pin("delta")
            self._check_same_dc(watermark, dc)
            # a DirSync delta reads the naming context, not the base DNs: an OU renamed or deleted since
            # the last full import gave "success" with nothing to import, its people kept under DNs that
            # are gone (a USN delta searched the bases and said so); a base-scope read of each is cheap
            self.check_bases()
            self.check_attributes(dc)
            self._seen = set()
            token = {
                "n": self._nonce,
                "inv": dc.invocation_id,
                "hi": dc.highest_usn,
                "lo": watermark.usn,
                "os": watermark.object_security,
            }
            if watermark.dirsync is not None:
                token.update(m="dirsync", c=_b64(watermark.dirsync))
            else:
                token.update(m="usn", p="a", b=0, c=None)
        if token["m"] == "dirsync":
            return self._dirsync_page(token)
        return self._usn_page(token, self._page_size(request))

    def _check_same_dc(self, watermark: Watermark, dc: DcIdentity) -> None:
        why = dc.departure(watermark.invocation_id, watermark.usn, "the watermark's")
        if why is None:
            self._partition = watermark.partition or (self._partition_guid() if watermark.dirsync else "")
            return
        if watermark.dirsync is not None and watermark.dsa:
            partition = self._partition_guid()
            if watermark.carries_over(dc, partition):
                self._partition = partition
                self.context.logger.warning(
                    "delta import of agent %r on %s (%s): the DirSync watermark came from %s (%s); a DirSync cookie "
                    "is good on any DC of the same directory partition, so the delta goes on there (changes the "
                    "first DC already reported may be read again)",
                    self.context.agent,
                    self.link.host,
                    dc.describe(),
                    watermark.host or "another DC",
                    watermark.dsa,
                )
                return
        came_from = f" ({watermark.host})" if watermark.host and watermark.host != self.link.host else ""
        msg = (
            f"delta import refused: {self.link.host} is not the directory state the last import "
            f"came from{came_from} "
            f"({why}: another domain controller, or this one restored from a backup). Change numbers "
            "only mean something on the DC that issued them (and a DirSync cookie on DCs of the same directory "
            f"partition), so a delta could miss changes and deletions. Run a full import of agent "
            f"{self.context.agent!r}; delta imports continue from there."
        )
        raise StopRunError(msg)

    def _usn_page(self, token: dict[str, Any], size: int) -> ImportPage:
        lo, hi = int(token["lo"]), int(token["hi"])
        usn_range = f"(uSNChanged>={lo + 1})(uSNChanged<={hi})"
        page: list[CSEntryChange] = []
        index = int(token["b"])
        if lo >= hi:
            token["p"], index = "done", 0
        elif token["p"] == "a":  # changed objects in scope that match the filter
            entries, cookie, token["k"] = self._paged(
                self._bases[index], f"(&{self._filter}{usn_range})", size, _unb64(token["c"]), token.get("k")
            )
            page.extend(self._unseen(entries, ObjectModificationType.REPLACE))
            index, token["c"] = (index, _b64(cookie)) if cookie else (index + 1, None)
            if index >= len(self._bases):
                token["p"], index = "d", 0
        else:  # every changed user anywhere, tombstones included: the ones not seen above are gone
            roots = self._naming_context_roots()
            entries, cookie, token["k"] = self._paged(
                roots[index],
                f"(&(objectClass=user){usn_range})",
                size,
                _unb64(token["c"]),
                token.get("k"),
                attributes=[ANCHOR],
                controls=[show_deleted_control(criticality=True)],
            )
            for raw in entries:
                anchor = guid_text(raw["raw_attributes"][ANCHOR][0])
                if anchor not in self._seen:
                    self._seen.add(anchor)
                    page.append(CSEntryChange.delete(OBJECT_CLASS, anchor, dn=raw["dn"]))
            index, token["c"] = (index, _b64(cookie)) if cookie else (index + 1, None)
            if index >= len(roots):
                token["p"] = "done"
        token["b"] = index
        if token["p"] == "done":
            return ImportPage(page, more_to_import=False, watermark=self._watermark(hi).dumps())
        return ImportPage(page, more_to_import=True, page_token=json.dumps(token))

    def _dirsync_page(self, token: dict[str, Any]) -> ImportPage:
        root = self._single_root()
        if root is None:
            msg = "the base DNs span several naming contexts, where DirSync cannot follow; run a full import"
            raise StopRunError(msg)
        # a change DirSync must report: any imported attribute, a deletion, a rename or move (AD records
        # both as a change of ``name``), or a change of an attribute the filter tests
        watched = list(dict.fromkeys([*self._requested, "isDeleted", "name", *filter_attributes(self._filter)]))
        result, entries = self._dirsync(root, _DIRSYNC_FILTER, watched, _unb64(token["c"]), bool(token["os"]))
        if result["result"] != 0:
            raise self._dirsync_refused(root, result)
        page: list[CSEntryChange] = []
        changed: list[str] = []
        for raw in entries:
            anchor = guid_text(raw["raw_attributes"][ANCHOR][0])
            deleted = [v.upper() for v in raw["raw_attributes"].get("isDeleted", [])] == [b"TRUE"]
            if deleted or "\\0ADEL:" in raw["dn"]:
                page.append(CSEntryChange.delete(OBJECT_CLASS, anchor, dn=raw["dn"]))
            else:
                changed.append(anchor)
        page.extend(self.read_by_anchor(changed))
        control = result["controls"][_DIRSYNC_OID]["value"]
        cookie: bytes = control["cookie"]
        if control["more_results"]:
            token["c"] = _b64(cookie)
            return ImportPage(page, more_to_import=True, page_token=json.dumps(token))
        watermark = self._watermark(int(token["hi"]), cookie, bool(token["os"])).dumps()
        return ImportPage(page, more_to_import=False, watermark=watermark)

    def _dirsync_refused(self, root: str, result: dict[str, Any]) -> StopRunError:
        """The stop for a DirSync delta search the DC refused (not busy: ``dc_entries`` took those), with its text.

        Why both causes and the DC's text: Microsoft documents that a DC may reject a DirSync cookie ("Polling for
        Changes Using the DirSync Control",
        https://learn.microsoft.com/en-us/windows/win32/ad/polling-for-changes-using-the-dirsync-control: "It is also
        possible the other DC rejects the cookie returned from the original DC", with "0000203D: LdapErr: ...,
        comment: Error processing control" and "A protocol error occurred"; "The client application should handle
        this case and retry with a full sync"), and a withdrawn right is refused too. The message said only "was
        the account's permission withdrawn?", without the DC's text that tells the two apart. A full import fixes
        either: it takes a new cookie, or falls back to uSNChanged when DirSync is not permitted."""
        return StopRunError(
            f"{self.link.describe()} refused the DirSync search under {root!r} with {result_detail(result)}: the DC "
            "rejected the DirSync cookie (Microsoft documents this for a cookie from another DC or an older Windows "
            "version), or the account may no longer use DirSync ('Replicating Directory Changes' withdrawn); "
            f"{self.outcome.kept}. Run a full import of agent {self.context.agent!r}: it takes a new cookie, or "
            "falls back to uSNChanged when DirSync is not permitted"
        )

    def read_by_anchor(self, anchors: Sequence[str]) -> list[CSEntryChange]:
        """Current state of the given objects: REPLACE when in scope and matching, else DELETE."""
        found: dict[str, CSEntryChange] = {}
        for start in range(0, len(anchors), _REREAD_CHUNK):
            chunk = anchors[start : start + _REREAD_CHUNK]
            for base in self._bases:
                for raw in self._search(base, and_filter(self._filter, guid_filter(chunk)), self._requested):
                    entry = self._entry(raw, ObjectModificationType.REPLACE)
                    found[entry.anchor] = entry
        return [found.get(a) or CSEntryChange.delete(OBJECT_CLASS, a) for a in dict.fromkeys(anchors)]

    # -- DC facts -----------------------------------------------------------------------------------
    def identity(self) -> DcIdentity:
        """invocationId, highestCommittedUSN and naming contexts, from the rootDSE."""
        return self._run(self._read_identity)

    def _read_identity(self, conn: Connection) -> DcIdentity:
        """The identity of the DC behind ``conn``: both reads on that one connection.

        Why one connection: read through two operations, a reconnect between them could pair one DC's
        highest USN with another's invocationId."""
        conn.search("", "(objectClass=*)", BASE, attributes=_ROOT_DSE)
        root = dc_entries(conn, "the read of its rootDSE")
        self._raise_for(conn.result, "")
        if not root:
            raise StopRunError(f"{self.link.host} returned no rootDSE; is it an Active Directory DC?")
        attrs = root[0]["raw_attributes"]
        try:
            service = attrs["dsServiceName"][0].decode()
            usn = int(attrs["highestCommittedUSN"][0])
        except (KeyError, IndexError, ValueError):
            msg = f"{self.link.host} does not publish dsServiceName/highestCommittedUSN: not an AD DC?"
            raise StopRunError(msg) from None
        conn.search(service, "(objectClass=*)", BASE, attributes=["invocationId"])
        ntds = dc_entries(conn, f"the read of {service}")
        self._raise_for(conn.result, service)
        if not ntds or not ntds[0]["raw_attributes"].get("invocationId"):
            raise StopRunError(f"cannot read the invocationId of {service}")
        return DcIdentity(
            guid_text(ntds[0]["raw_attributes"]["invocationId"][0]),
            usn,
            service,
            tuple(v.decode() for v in attrs.get("namingContexts", [])),
            b"".join(attrs.get("schemaNamingContext", [])[:1]).decode(),
            b"".join(attrs.get("dnsHostName", [])[:1]).decode(),
        )

    def _pin(self, kind: str) -> DcIdentity:
        """The DC a step of ``kind`` ("full", "delta") starts on; every later operation of the step must
        reach the same one (``_verify_dc``)."""
        self._pinned = None  # a previous step's DC is not this step's
        dc, on = self._run(lambda conn: (self._read_identity(conn), self.link.connection_number))
        self._pinned, self._pinned_kind, self._pinned_on, self._pinned_host = dc, kind, on, self.link.host
        return dc

    def _verify_dc(self, conn: Connection) -> None:
        """On a connection the step has not used yet (a reconnect, a Kerberos rebind), read which DC answers
        before anything else, and stop the step if it is not the one it started on."""
        pinned, number = self._pinned, self.link.connection_number
        if pinned is None or number == self._pinned_on:
            return
        now = self._read_identity(conn)
        why = now.departure(pinned.invocation_id, pinned.highest_usn, "the first one's")
        if why is not None:
            raise StopRunError(self._moved(pinned, now, why))
        self._pinned_on = number

    def _moved(self, before: DcIdentity, now: DcIdentity, why: str) -> str:
        """Why a step stopped after a reconnect reached another DC, and what to do (by the step's kind)."""
        agent = self.context.agent
        failed_over = self.link.host != self._pinned_host
        where = f" at {self.link.host} ({self._pinned_host} did not answer)" if failed_over else ""
        kind = "another domain controller" if failed_over else "another domain controller behind the same name"
        head = (
            f"the connection to {self._pinned_host} was made again during the {self._pinned_kind} import of agent "
            f"{agent!r} (it broke, or a Kerberos ticket was renewed) and reached another directory state{where}: "
            f"{before.describe()} before, {now.describe()} now ({why}: {kind}, or this one restored from a "
            "backup). Change numbers of the first mean nothing on the second, and a step cannot go on where it "
            "read part of its objects"
        )
        if self._pinned_kind == "delta":
            return (
                f"{head}, so the delta stopped before reading anything there and its watermark stays where it was. "
                f"Run a full import of agent {agent!r}; delta imports continue from there."
            )
        return (
            f"{head}, so the full import stopped before reading anything there: nothing is marked deleted and no "
            f"watermark is saved. Run the full import of agent {agent!r} again: it reads everything from the DC it "
            "reaches and records that DC's position."
        )

    def check_attributes(self, dc: DcIdentity) -> None:
        """Each attribute the import reads or filters on is in the DC's schema, or the ``ConfigurationError``
        a run stops with (``mvsync doctor`` says so too).

        Why: a DC ignores an attribute it does not know (RFC 4511: the attribute list may name
        attributes the server does not recognise), and a filter on one matches nobody. A misspelt
        ``extra_attributes`` entry came back empty for every user, silently, and a flow of it emptied
        that metaverse attribute for everyone. One search of the schema partition, by lDAPDisplayName.
        """
        wanted = [*self._requested, *filter_attributes(self._filter)]
        unknown = unknown_attributes(self._search, dc.schema_context, wanted)
        if unknown is None:
            if dc.schema_context:
                self.context.logger.info(
                    "cannot read the schema partition of %s: attribute names not checked", dc.service
                )
            return
        if unknown:
            key = self._origin(unknown[0])
            msg = (
                f"{', '.join(unknown)}: not an attribute of the directory on {self.link.host} (its schema has no "
                "such lDAPDisplayName), so every user would import it empty and a filter on it matches nobody; "
                f"check the spelling in {key}"
            )
            raise ConfigurationError(msg, key=key)

    def _origin(self, name: str) -> str:
        """The setting an attribute name comes from: extra_attributes, filter_equals or filter."""
        if name.lower() in self._extras:
            return "extra_attributes"
        if name.lower() in {k.lower() for k in self.settings.filter_equals}:
            return "filter_equals"
        return "filter"

    def check_bases(self) -> None:
        """Each of ``base_dns`` is there (a base-scope read of it), or the ``ConfigurationError`` a run
        would stop with: ``mvsync doctor`` finds a mistyped OU before the 03:00 run does."""
        for base in self._bases:
            self._search(base, "(objectClass=*)", ["objectClass"], scope=BASE)

    def _naming_context_roots(self) -> list[str]:
        """The naming context of each base DN (deduplicated); the base itself if none is known."""
        contexts = self._contexts()
        roots: list[str] = []
        for base, normalized in zip(self._bases, self._normalized_bases, strict=True):
            matches = [nc for nc in contexts if dn_within(normalized, normalize_dn(nc))]
            root = max(matches, key=len) if matches else base
            if root not in roots:
                roots.append(root)
        return roots

    def _single_root(self) -> str | None:
        roots = self._naming_context_roots()
        return roots[0] if len(roots) == 1 else None

    def _contexts(self) -> tuple[str, ...]:
        cached: tuple[str, ...] | None = getattr(self, "_cached_contexts", None)
        if cached is None:
            cached = self.identity().naming_contexts
            self._cached_contexts = cached
        return cached

    def _initial_dirsync(self, dc: DcIdentity) -> tuple[bytes | None, bool]:
        """A DirSync cookie for "now", or (None, False) when the agent must use uSNChanged."""
        method = self.settings.delta_method
        if method == "usn":
            return None, False
        root = self._single_root()
        if root is None:
            if method == "dirsync":
                msg = "DirSync needs all base DNs in one naming context; use delta_method = 'usn'"
                raise ConfigurationError(msg, key="delta_method")
            return None, False
        # "auto" does not fall back to OBJECT_SECURITY on its own: that is dirsync_object_security's
        # job (README: auto uses DirSync with 'Replicating Directory Changes', uSNChanged otherwise)
        flags = [self.settings.dirsync_object_security]
        last: dict[str, Any] = {}
        for object_security in flags:
            cookie: bytes | None = None
            while True:
                result, _ = self._dirsync(root, _NOTHING, [ANCHOR], cookie, object_security)
                if result["result"] != 0:
                    last = result
                    break
                control = result["controls"][_DIRSYNC_OID]["value"]
                cookie = control["cookie"]
                if not control["more_results"]:
                    return cookie, object_security
        if method == "dirsync":
            msg = (
                f"the account may not use DirSync ({last.get('result')} {last.get('description')}): grant it "
                "'Replicating Directory Changes', set dirsync_object_security = true, "
                "or use delta_method = 'usn'"
            )
            raise ConfigurationError(msg, key="delta_method")
        self.context.logger.info(
            "DirSync is not permitted for this account; delta imports will use uSNChanged "
            "(grant it 'Replicating Directory Changes' or set dirsync_object_security = true for DirSync)"
        )
        return None, False

    # -- searching ----------------------------------------------------------------------------------
    def _run(self, operation: Callable[[Connection], T]) -> T:
        """``Link.run``, with a DC that stays out of reach after the reconnects as ``ServerDownError``.

        Why: ``ServerUnreachable`` is the export's signal (its batches turn it into RETRY results); an
        import has no such use for it, and raised from a page it reached the engine as a connector bug
        (``stopped-connector-exception``, a traceback in the log) instead of ``stopped-server-down``.
        Each attempt first makes sure a new connection reaches the step's DC (``_verify_dc``): the check
        and the operation share the connection, so no reconnect can come between them.
        """

        def on_the_same_dc(conn: Connection) -> T:
            self._verify_dc(conn)
            return operation(conn)

        try:
            return self.link.run(on_the_same_dc)
        except DcRefused as exc:
            raise self._dc_state(exc) from None
        except ServerUnreachable as exc:
            msg = f"{exc}; {self.outcome.kept}; check the DC and run {self.outcome.again} again"
            raise ServerDownError(msg) from None

    def _dc_state(self, exc: DcRefused) -> ServerDownError:
        """The stop for a search the DC answered busy, unavailable or out of time (``DC_STATE_CODES``).

        Why: such an answer has no entries. Read as an empty answer, or as a paged-search cookie refused, a
        full import could stage a delete for everyone it did not read, a delta save a watermark past changes it
        never read; DirSync so answered was taken for a permission withdrawn. It is the DC's state: stop once
        (``stopped-server-down``, exit 4), as the export does (``_export._dc_state``).
        """
        return dc_state_stop(self.link, exc.what, exc.detail, self.outcome)

    def _page_size(self, request: ImportRequest) -> int:
        return max(1, min(request.page_size, self.settings.page_size))

    def _paged(
        self,
        base: str,
        search_filter: str,
        size: int,
        cookie: bytes | None,
        connection: int | None,
        *,
        attributes: list[str] | None = None,
        controls: list[Any] | None = None,
    ) -> tuple[list[dict[str, Any]], bytes | None, int]:
        """One page of a simple-paged search: its entries, the next cookie (None: done), and the connection
        (``Link.connection_number``) that cookie belongs to.

        Why the connection: AD keeps a paged search's result set per connection, and discards the oldest
        ones under load (LDAP policy MaxResultSetsPerConn, MaxResultSetSize). After a reconnect (a DC that
        reset or stopped answering) or a Kerberos rebind before the ticket runs out, the cookie means
        nothing, and a cookie the DC discarded is refused: both stopped the import (Samba: "53
        unwillingToPerform"; AD: "Error processing control"). The search then starts again from its first page,
        as AD documents for a paged search that failed, and the callers leave out what this step already
        returned. Only for the answers that mean the cookie is gone (``cookie_gone``): any other answer to a
        later page gets the one it gets on the first (``_raise_for``), since starting again would only meet it
        again, up to ``_RESTARTS_MAX`` times, and then be blamed on discarded result sets.
        """

        def operation(conn: Connection) -> tuple[dict[str, Any], list[dict[str, Any]], bool]:
            stale = cookie is not None and connection != self.link.connection_number
            conn.search(
                base,
                search_filter,
                SUBTREE,
                attributes=attributes or self._requested,
                paged_size=size,
                paged_cookie=None if stale else cookie,
                controls=controls,
            )
            return conn.result, dc_entries(conn, f"the paged search under {base!r}"), stale

        result, entries, stale = self._run(operation)
        if stale:
            self._restarted(base, "the connection its cookie belonged to was replaced")
        elif cookie is not None and cookie_gone(result):
            self._restarted(base, f"the DC refused its cookie: {result.get('result')} {result.get('description')}")
            return self._paged(base, search_filter, size, None, None, attributes=attributes, controls=controls)
        self._raise_for(result, base)
        self._read = len(entries)
        return entries, paged_cookie(result), self.link.connection_number

    def _restarted(self, base: str, why: str) -> None:
        """Count a paged search that starts again from its first page; stop the step past ``_RESTARTS_MAX``."""
        self._restarts += 1
        if self._restarts > _RESTARTS_MAX:
            msg = (
                f"the paged search under {base!r} on {self.link.host} had to start again from its first page "
                f"{self._restarts} times in this step ({why}): the DC keeps discarding its result sets (LDAP policy "
                "MaxResultSetSize, MaxResultSetsPerConn) or the connection keeps breaking; check the DC and the "
                "network, then run the import again (nothing it did not read is marked deleted)"
            )
            raise StopRunError(msg)
        self.context.logger.info(
            "the paged search under %r on %s starts again from its first page (%s); "
            "the objects already read are not imported twice",
            base,
            self.link.host,
            why,
        )

    def _search(
        self, base: str, search_filter: str, attributes: list[str], *, scope: str = SUBTREE
    ) -> list[dict[str, Any]]:
        def operation(conn: Connection) -> tuple[dict[str, Any], list[dict[str, Any]]]:
            conn.search(base, search_filter, scope, attributes=attributes)
            return conn.result, dc_entries(conn, f"the search under {base!r}")

        result, entries = self._run(operation)
        self._raise_for(result, base)
        return entries

    def _dirsync(
        self,
        root: str,
        search_filter: str,
        attributes: list[str],
        cookie: bytes | None,
        object_security: bool,
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        control = dir_sync_control(
            criticality=True,
            object_security=object_security,
            ancestors_first=False,
            public_data_only=False,
            incremental_values=False,
            max_length=_DIRSYNC_MAX_BYTES,
            cookie=cookie,
        )

        def operation(conn: Connection) -> tuple[dict[str, Any], list[dict[str, Any]]]:
            conn.search(
                root,
                search_filter,
                SUBTREE,
                attributes=attributes,
                controls=[control, show_deleted_control(criticality=False)],
            )
            return conn.result, dc_entries(conn, f"the DirSync search under {root!r}")

        return self._run(operation)

    def _raise_for(self, result: dict[str, Any], base: str) -> None:
        code = result.get("result")
        if code == 0:
            return
        if code == 32:
            msg = f"the base DN {base!r} does not exist on {self.link.host} (noSuchObject); check base_dns"
            raise ConfigurationError(msg, key="base_dns")
        if code == 10:  # referral: the DN is in a naming context this DC does not hold (another domain)
            elsewhere = ", ".join(result.get("referrals") or []) or "another server"
            msg = (
                f"the base DN {base!r} is not held by {self.link.host}: it referred the search to {elsewhere} "
                "(another domain of the forest); give that domain its own agent with host set to one of its "
                "domain controllers"
            )
            raise ConfigurationError(msg, key="base_dns")
        remedy = _REMEDIES.get(int(code or 0), "The DC's text says why; check the DC (its Directory Service event log)")
        raise StopRunError(
            f"{self.link.describe()} answered the search under {base!r} with {result_detail(result)}; "
            f"{self.outcome.kept}. {remedy.format(account=self.settings.account, base=base)}, then run "
            f"{self.outcome.again} again"
        )

    # -- entries ------------------------------------------------------------------------------------
    def _entry(self, raw: dict[str, Any], modification: ObjectModificationType) -> CSEntryChange:
        """One search entry as a whole-object change (values decoded by schema type)."""
        dn: str = raw["dn"]
        raw_attributes: dict[str, list[bytes]] = raw["raw_attributes"]
        guid = raw_attributes.get(ANCHOR) or raw_attributes.get(ANCHOR.lower())
        if not guid:
            return CSEntryChange.import_error(
                dn, "missing-anchor-value", "entry has no objectGUID", object_class=OBJECT_CLASS
            )
        anchor = guid_text(guid[0])
        values: dict[str, Values] = {}
        for name, raw_values in raw_attributes.items():
            attribute = self._attributes.get(name.lower())
            if attribute is None or not raw_values:
                continue
            try:
                decoded = decode_values(attribute.name, attribute.type, raw_values)
            except (ValueError, UnicodeDecodeError) as exc:
                return _invalid_value(anchor, attribute, exc, raw_attributes, attribute.name.lower() in self._extras)
            values[attribute.name] = decoded if attribute.multivalued else decoded[0]
        values["distinguishedName"] = dn
        return CSEntryChange(OBJECT_CLASS, anchor, modification, values, dn=dn)

    def in_scope(self, dn: str) -> bool:
        return dn_in_scope(dn, self._normalized_bases)


#: Text attributes that name a person in a per-object error (they always decode: AD stores them as UTF-8).
_PERSON = ("displayName", "userPrincipalName", "sAMAccountName", "mail")


def _invalid_value(
    anchor: str, attribute: Attribute, exc: Exception, raw_attributes: dict[str, list[bytes]], declared: bool
) -> CSEntryChange:
    """The import error of an object with a value its declared type cannot hold: it names the person and
    the setting to change. Why: an extra attribute declared ``|integer`` whose values are "E-1234" failed
    every user with "employeeNumber: ValueError: cannot decode as integer", naming nobody."""
    lowered = {name.lower(): values for name, values in raw_attributes.items()}
    person = {
        name: bytes(lowered[name.lower()][0]).decode("utf-8", "replace")
        for name in _PERSON
        if lowered.get(name.lower())
    }
    spelled = f"{attribute.name}|string{'[]' if attribute.multivalued else ''}"
    remedy = f"declare it as '{spelled}' in extra_attributes, or " if declared else ""
    detail = (
        f"{attribute.name}: a value is not {attribute.type.value} ({type(exc).__name__}): "
        f"{remedy}correct the value in the directory"
    )
    return CSEntryChange.import_error(anchor, "cd-invalid-value", detail, object_class=OBJECT_CLASS, attributes=person)
