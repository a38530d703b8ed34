"""Write permissions checked before the first write, from ``allowedAttributesEffective``.

Why: without it, an export learns that the account may not write ``thumbnailPhoto`` only when a
write fails, after other objects (or other attributes of the same object) were already written,
and the failures arrive one object at a time as ``permission-issue``. The DC computes, for the
bound account, which attributes of an object it may write (``allowedAttributesEffective``, a
constructed attribute that evaluates the object's security descriptor, inherited and explicit
ACEs, deny ACEs included). On Samba 4.17 its answer matched real writes for an administrator, a
low-privilege user and a delegated service account.

Cost: the export already searches each batch's objects by objectGUID (the scope guard); the
check asks that same search for ``allowedAttributesEffective``, so it adds no round trip where
the DC computes the attribute in subtree searches (Samba does). An object whose entry comes back
without it (a DC that computes it for BASE searches only, or an account with no right at all) is
read again with one BASE search each, only then.

The refusal names the account, each attribute and OU, and the ``dsacls`` line that grants it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ldap3 import BASE, LEVEL, SUBTREE, Connection
from ldap3.utils.dn import parse_dn

from connector.agents.active_directory._connection import (
    Link,
    cookie_gone,
    dc_entries,
    paged_cookie,
    result_detail,
)
from connector.agents.active_directory._kerberos import bound_principal
from connector.agents.active_directory._settings import ActiveDirectorySettings
from connector.sdk import StopRunError

__all__ = [
    "EFFECTIVE",
    "SIBLINGS_MAX",
    "STATUS",
    "Gap",
    "account_label",
    "blocked_object",
    "configured_account",
    "container_of",
    "dsacls_line",
    "effective_of",
    "find_gaps",
    "read_effective",
    "refusal",
    "sample_gaps",
    "writable_elsewhere",
]

EFFECTIVE = "allowedAttributesEffective"
#: The step status of a refused export (MIM's per-object error name is ``permission-issue``).
STATUS = "stopped-permission-issue"


@dataclass
class Gap:
    """One attribute the account may not write on some objects of one container."""

    attribute: str
    container: str
    dns: list[str] = field(default_factory=list)
    #: Objects of the same container (in the same check) on which the account may write the attribute:
    #: then a grant on the container exists and does not reach ``dns``, and granting it again would not help.
    writable_siblings: int = 0


def effective_of(entry: Mapping[str, Any]) -> frozenset[str] | None:
    """Lower-case attribute names the bound account may write, or None if the entry lacks the list."""
    raw = entry.get("raw_attributes", {})
    for name, values in raw.items():
        if name.lower() == EFFECTIVE.lower():
            return frozenset(bytes(v).decode("utf-8").lower() for v in values)
    return None


def read_effective(link: Link, dn: str) -> frozenset[str]:
    """One object's writable attributes by a BASE search (empty when the DC returns none)."""

    def operation(conn: Connection) -> frozenset[str]:
        conn.search(dn, "(objectClass=*)", BASE, attributes=[EFFECTIVE])
        entries = dc_entries(conn, f"the read of the rights on {dn}")
        return (effective_of(entries[0]) if entries else None) or frozenset()

    return link.run(operation)


#: Objects of a container one page of ``writable_elsewhere``'s search asks for.
_SIBLINGS_PAGE = 100
#: Most objects of a container ``writable_elsewhere`` reads (README, "Rights are checked before the first
#: write"): past them, with none writable, it takes the grant for missing. Why a bound: this is the bad path of
#: an OU of possibly tens of thousands, and each object read costs the DC the rights computation.
SIBLINGS_MAX = 1000
#: Most pages of that search. Why: RFC 2696 promises no full pages (ASSUMPTION: a DC may answer one with fewer
#: objects than asked, none included, and a cookie); this bounds the round trips however short they are.
_SIBLINGS_PAGES = 2 * SIBLINGS_MAX // _SIBLINGS_PAGE
#: Most times that search starts again from its first page after a later page's cookie is gone (``cookie_gone``).
#: Why a few and not the import's 10 a step: it is one search of one container; a DC that discards its result set
#: that often within it is overloaded now, and the export is better asked again later (``_unfinished``).
_SIBLINGS_RESTARTS = 3


def writable_elsewhere(link: Link, gap: Gap, object_class: str) -> int:
    """How many other objects of ``gap``'s container (of those read) the account may write ``gap.attribute`` on.

    Why: ``find_gaps`` counts writable siblings among the objects of one check only. An export of just
    the people an OU grant does not reach (the retry of yesterday's per-object errors, one photo changed)
    has none of their neighbours, and a grant that exists looked missing: the step stopped, advising a
    grant that is there. One one-level search of the container, on this bad path only, tells them apart.

    Why paged, up to ``SIBLINGS_MAX`` objects, stopping after the first page that holds a writable one: the
    first objects the DC answers can all be ones the grant does not reach (the blocked people themselves,
    protected accounts, deny entries), and reading only the first 20 took an existing grant for missing. The
    count is of the writable objects of the last page read. A search the DC answers busy, unavailable or out of
    time is ``DcRefused`` (``dc_entries``), and one that ends in any other error before a writable object is
    found a ``StopRunError``: either way an unfinished read is never taken for "no grant".

    Why a later page whose cookie is gone (``cookie_gone``) starts the search again from its first page: the DC
    discarded the result set (AD does so under load, oldest first), and Microsoft documents that retrying
    "will result in restarting the search from the first page" ("How LDAP server cookies are handled",
    https://learn.microsoft.com/en-us/windows-server/identity/ad-ds/manage/how-ldap-server-cookies-are-handled); it
    stopped the export with "run the export again later", where the import starts again. The objects read before
    the restart count toward ``SIBLINGS_MAX`` (what it bounds is the DC's work, a rights computation per object
    answered), so restarts cannot read on forever; past ``_SIBLINGS_RESTARTS`` the export stops as before.
    """
    blocked = {dn.lower() for dn in gap.dns}
    wanted = gap.attribute.lower()
    search_filter = f"(objectClass={object_class})"
    what = f"the read of the rights in {gap.container}"

    def writable(entry: Mapping[str, Any]) -> bool:
        return entry["dn"].lower() not in blocked and wanted in (effective_of(entry) or frozenset())

    def operation(conn: Connection) -> int:
        read, found, cookie, restarts = 0, 0, None, 0
        for _page in range(_SIBLINGS_PAGES):
            sent, size = cookie, min(_SIBLINGS_PAGE, SIBLINGS_MAX - read)
            conn.search(gap.container, search_filter, LEVEL, attributes=[EFFECTIVE], paged_size=size, paged_cookie=sent)
            entries = dc_entries(conn, what)
            result = dict(conn.result or {})
            read += len(entries)
            found = sum(1 for entry in entries if writable(entry))
            cookie = paged_cookie(result)
            again = not found and sent is not None and cookie_gone(result) and restarts < _SIBLINGS_RESTARTS
            if again:
                restarts, cookie = restarts + 1, None
                link.logger.info(
                    "%s starts again from its first page on %s (the DC refused its cookie: %s)",
                    what,
                    link.describe(),
                    result_detail(result),
                )
            elif not found and result.get("result") not in (0, None):
                raise _unfinished(link, gap, what, result, read, restarts)
            if found or not (cookie or again) or read >= SIBLINGS_MAX:
                break
        if cookie:  # RFC 2696 (3): a page size of 0 with the cookie abandons the search (the DC frees its result set)
            conn.search(gap.container, search_filter, LEVEL, attributes=["1.1"], paged_size=0, paged_cookie=cookie)
        return found

    return link.run(operation)


def _unfinished(link: Link, gap: Gap, what: str, result: dict[str, Any], read: int, restarts: int) -> StopRunError:
    """The stop for a read of ``gap``'s neighbours that the DC ended with an error before one writable was found.

    Why not 0: with part of the container unread, "no grant" is a guess, and the advice to grant it again sent
    the operator to a grant that may be there. A later page refused with 53, 12 or AD's "Error processing control"
    means the DC discarded the search's result set (``cookie_gone``): the read started again from its first page,
    and ends here only when the DC kept discarding it past ``_SIBLINGS_RESTARTS``; asking again later reads it
    whole."""
    again = (
        f" (started again from its first page {restarts} time(s): the DC discarded its result set)" if restarts else ""
    )
    return StopRunError(
        f"{link.describe()} ended {what} after {read} object(s){again} with {result_detail(result)}, before an object "
        f"{gap.attribute} may be written on was found: whether the grant on {gap.container} exists is unknown; "
        "nothing was written for these people, they stay pending: run the export again later, or list another DC "
        "first"
    )


def container_of(dn: str) -> str:
    """The DN of an object's parent (its OU or container)."""
    parts = parse_dn(dn, escape=True, strip=False)
    return ",".join(f"{attr}={value}" for attr, value, _sep in parts[1:])


def find_gaps(needs: Iterable[tuple[str, Iterable[str], frozenset[str]]]) -> list[Gap]:
    """(dn, attributes to write, writable attributes) triples as gaps per (attribute, container)."""
    gaps: dict[tuple[str, str], Gap] = {}
    granted: dict[tuple[str, str], int] = {}
    for dn, attributes, writable in needs:
        container = container_of(dn)
        for attribute in attributes:
            key = (attribute.lower(), container.lower())
            if attribute.lower() in writable:
                granted[key] = granted.get(key, 0) + 1
            else:
                gaps.setdefault(key, Gap(attribute, container)).dns.append(dn)
    for key, gap in gaps.items():
        gap.writable_siblings = granted.get(key, 0)
    return list(gaps.values())


def account_label(link: Link, settings: ActiveDirectorySettings, domain_root: str) -> str:
    """``DOMAIN\\sAMAccountName`` of the bound account, as ``dsacls`` takes it (best effort).

    Why best effort: the label only decorates a refusal (or a doctor finding) already decided; a DC that answers
    its searches busy, unavailable or not at all must not turn that verdict into another stop. Such an answer is
    not "no such account" either: the account is then named as configured (:func:`configured_account`), and a
    warning says why the messages do not name it ``DOMAIN\\name``.
    """
    if settings.auth == "simple" and settings.bind_dn and "\\" in settings.bind_dn:
        return settings.bind_dn
    named = configured_account(settings)
    if settings.auth == "simple" and settings.bind_dn and "=" in settings.bind_dn:
        search = (settings.bind_dn, "(objectClass=*)", BASE)
    elif principal := _configured_principal(settings) or bound_principal(settings):
        search = _by_principal(domain_root, principal)
    else:
        return named

    def operation(conn: Connection) -> str | None:
        conn.search(*search, attributes=["sAMAccountName"], size_limit=1)
        entries = dc_entries(conn, "the search for the bound account's sAMAccountName")
        if not entries:
            return None
        name = entries[0]["raw_attributes"].get("sAMAccountName", [b""])[0]
        conn.search(
            f"CN=Partitions,CN=Configuration,{domain_root}",
            f"(&(nETBIOSName=*)(nCName={_escape(domain_root)}))",
            SUBTREE,
            attributes=["nETBIOSName"],
        )
        found = dc_entries(conn, "the search for the domain's NetBIOS name")
        netbios = next((e["raw_attributes"]["nETBIOSName"][0] for e in found), b"")
        return f"{bytes(netbios).decode()}\\{bytes(name).decode()}" if netbios and name else None

    try:
        return link.run(operation) or named
    except Exception as exc:  # the label only decorates a refusal; never let it hide the refusal itself
        link.logger.warning(
            "the messages name the bound account as %s, not DOMAIN\\name: %s (%s)",
            named,
            exc,
            type(exc).__name__,
        )
        return named


def _configured_principal(settings: ActiveDirectorySettings) -> str:
    """The ``principal`` setting, or a bind DN written as ``user@domain``; "" when neither names one (the
    principal is then the keytab's or the credential cache's, ``bound_principal``)."""
    return settings.principal or (settings.bind_dn if settings.bind_dn and "@" in settings.bind_dn else "")


def _by_principal(domain_root: str, principal: str) -> tuple[str, str, str]:
    """The search for the account a principal names: a user's (``svc@REALM``, or a UPN) by the sAMAccountName
    of its name part; a service principal's (``host/sync01.contoso.com@REALM``) by the SPN on its account.

    Why the SPN: a sync server's own keytab (``host/<fqdn>``, from joining the domain) or a service account's
    binds as a service principal, which AD's KDC finds by ``servicePrincipalName``; searched as a
    sAMAccountName it matched nothing, and the ``dsacls`` advice named the SPN, which dsacls cannot resolve
    (``configured_account``). Found, the account is ``DOMAIN\\SYNC01$`` (a computer) or ``DOMAIN\\svc``.
    """
    name = principal.rpartition("@")[0] if "@" in principal else principal
    if "/" in name:
        return (domain_root, f"(servicePrincipalName={_escape(name)})", SUBTREE)
    return (domain_root, f"(sAMAccountName={_escape(name)})", SUBTREE)


def configured_account(settings: ActiveDirectorySettings) -> str:
    """The bound account as the settings (and the keytab or credential cache they name) tell it, for when the
    directory does not: a Kerberos bind without ``principal`` is named by the principal read from the credential
    cache or keytab (:func:`~._kerberos.bound_principal`) when that is a user's, ``user@REALM``; else
    ``settings.account``.

    Why only a user's: ``dsacls /G`` takes a user as ``DOMAIN\\name`` or ``name@domain`` (see ``dsacls /?``;
    https://learn.microsoft.com/previous-versions/windows/it-pro/windows-server-2012-r2-and-2012/cc771151(v=ws.11)),
    and ``svc@CONTOSO.COM`` is that second form. A service principal (``host/app.contoso.com@CONTOSO.COM``,
    several components) is not: it names an SPN of some account, which dsacls cannot resolve, so the text
    keeps saying where the identity comes from ("the principal of keytab ..."). Before, a keytab without
    ``principal`` always gave that text, and the grant line it went into failed at a Windows prompt.
    """
    if settings.auth != "kerberos" or settings.principal:
        return settings.account
    principal = bound_principal(settings)
    if principal is None or not _is_user_principal(principal):
        return settings.account
    return principal


def _is_user_principal(principal: str) -> bool:
    """One component and a realm (``svc@CONTOSO.COM``), no escaped separator: a user's principal."""
    name, at, realm = principal.rpartition("@")
    return bool(at and name and realm) and "/" not in name and "\\" not in name


def _escape(value: str) -> str:
    from ldap3.utils.conv import escape_filter_chars

    return str(escape_filter_chars(value))


def dsacls_line(container: str, account: str, attribute: str, object_class: str) -> str:
    return f'dsacls "{container}" /I:S /G "{account}:RPWP;{attribute};{object_class}"'


def refusal(gaps: list[Gap], account: str, object_class: str, *, examples: int = 3) -> StopRunError:
    """The error that stops the export step: what is missing where, and how to grant it."""
    lines = []
    for gap in gaps:
        shown = "; ".join(gap.dns[:examples]) + (f"; ... ({len(gap.dns)} in all)" if len(gap.dns) > examples else "")
        what = f"{account} may not write {gap.attribute} on {len(gap.dns)} object(s) in {gap.container} ({shown})"
        if gap.writable_siblings:
            lines.append(f"{what}; {_not_inherited(gap, account)}")
        else:
            lines.append(f"{what}; grant it with: {dsacls_line(gap.container, account, gap.attribute, object_class)}")
    msg = "the export stopped before writing anything (allowedAttributesEffective, read up front): " + " | ".join(lines)
    return StopRunError(msg, status=STATUS)


def blocked_object(gap: Gap, dn: str, account: str) -> str:
    """The per-object error of one object of ``gap`` that the container's grant does not reach.

    Why per object and not a stopped step: the grant exists (``gap.writable_siblings``), so the others
    of the container can be written; one protected account (an administrator with a photo) stopped the
    export of everyone, on every run, until someone changed its permissions."""
    alone = Gap(gap.attribute, gap.container, [dn], gap.writable_siblings)
    return (
        f"{account} may not write {gap.attribute} on {dn} (allowedAttributesEffective, read before writing; "
        f"nothing was written to it); {_not_inherited(alone, account)}"
    )


def _not_inherited(gap: Gap, account: str) -> str:
    """What to do when the container's grant exists but does not reach some objects in it.

    Why not the container's dsacls line: it is there already (the account may write the attribute on
    other objects of the container), so granting it again changes nothing and the export stops again.
    In AD the usual cause is a protected account (adminCount = 1: SDProp replaces its permissions
    with AdminSDHolder's every hour, inheritance off), otherwise inheritance turned off by hand or
    a deny entry on the object.
    """
    first = gap.dns[0]
    domain = ",".join(part for part in container_of(first).split(",") if part.strip().lower().startswith("dc="))
    return (
        f"it may write it on {gap.writable_siblings} other object(s) there, so the grant on {gap.container} exists "
        "but does not reach these: a protected account (adminCount = 1, whose permissions AdminSDHolder resets "
        "every hour), inheritance turned off, or a deny entry on the object. See which with: "
        f'dsacls "{first}"; for protected accounts grant it on AdminSDHolder: '
        f'dsacls "CN=AdminSDHolder,CN=System,{domain}" /G "{account}:RPWP;{gap.attribute}"; otherwise restore '
        "inheritance or remove the deny entry, or leave these people out of the export"
    )


def sample_gaps(
    link: Link,
    bases: Iterable[str],
    search_filter: str,
    attributes: Iterable[str],
) -> dict[str, tuple[str | None, list[str]]]:
    """For each base DN: a sample object (its DN, or None if the base holds none) and what it may not write.

    ``mvsync doctor`` runs this: one object per OU tells whether the delegation reaches there.
    """
    wanted = sorted(set(attributes))
    out: dict[str, tuple[str | None, list[str]]] = {}
    for base in bases:
        found: Callable[[Connection], list[dict[str, Any]]] = _sampler(base, search_filter)
        entries = link.run(found)
        if not entries:
            out[base] = (None, [])
            continue
        dn = entries[0]["dn"]
        writable = effective_of(entries[0])
        if writable is None:
            writable = read_effective(link, dn)
        out[base] = (dn, [a for a in wanted if a.lower() not in writable])
    return out


def _sampler(base: str, search_filter: str) -> Callable[[Connection], list[dict[str, Any]]]:
    def operation(conn: Connection) -> list[dict[str, Any]]:
        conn.search(base, search_filter, SUBTREE, attributes=[EFFECTIVE], size_limit=1)
        # not search_entries: a busy answer has no entries, and read as an empty OU it said "no user to check".
        # An OU of more than one user answers sizeLimitExceeded (4) with one entry (RFC 4511 4.5.1.4, A.2): kept, as
        # any one user is a sample (which one AD sends is not documented, and does not matter here)
        return dc_entries(conn, f"the search for a sample user under {base!r}")

    return operation
