"""The rights check's read of a container's other objects (``writable_elsewhere``) when the first objects the
DC answers are ones the account may not write, against the real (Samba) DC.

Found in a review of the rights check: it read at most 20 objects of the OU (one LEVEL search, size limit 20)
and dropped the blocked people from them. In an OU of thousands whose first 20 answered were the blocked
people themselves or objects the grant does not reach (protected accounts, deny entries), a grant that
exists looked missing: the export stopped with ``stopped-permission-issue``, advising the grant that is there.

Samba 4.17 does not apply a search's sizeLimit (it answered all 25 of an OU to a search limited to 20, result
0), where AD returns at most that many objects ("For Active Directory, the size limit specifies the maximum
number of objects to be returned by the search": "Size Limit with IDirectorySearch", Microsoft Learn; RFC 4511
4.5.1.4, 4.5.2: sizeLimitExceeded). ``_as_ad_limits_size`` makes the searches of these tests answer as AD does.

How the OU is built without relying on the DC's answer order: none of its users may be written by the
account but one, and that one is the last the DC answers (read before the test, and checked to come after the
first 20). The tests that need no writable object at all (the bound, a refused later page) have none.

A later page answered "cookie gone" (the DC discarded the search's result set, as AD does under load: Microsoft,
"How LDAP server cookies are handled": "Retrying the search will result in restarting the search from the first
page") stopped the export with "run the export again later", where the import starts its search again. Samba's
own answer (53) is had by sending it a cookie it does not hold; AD's (12, or "Error processing control" with any
code), which Samba never gives, is made up in process as in test_ad_import_later_page.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
from ldap3 import LEVEL, Connection

from connector.agents.active_directory import _permissions
from connector.agents.active_directory._connection import Link
from connector.agents.active_directory._permissions import Gap, writable_elsewhere
from connector.sdk import AttributeChange, ExportStatus, ServerDownError, StopRunError
from tests.agents.active_directory.conftest import ADTestEnv, jpeg
from tests.agents.active_directory.test_ad_export import update
from tests.agents.active_directory.test_ad_import_later_page import _COOKIE_GONE
from tests.agents.active_directory.test_ad_kerberos import kerberos_settings
from tests.harness.samba_dc import KerberosAccount, allow_write

pytestmark = pytest.mark.samba

_USERS = 25
#: What the check used to read of the OU: the writable user must come after them.
_OLD_READ = 20
_PHOTO = "thumbnailPhoto"


@dataclass
class _People:
    ou: str
    #: DN -> objectGUID of every user in the OU.
    guids: dict[str, str]
    #: The one user the account may write (None: no one), the last the DC answers.
    writable: str | None

    def others(self) -> list[str]:
        return [dn for dn in self.guids if dn != self.writable]


def _answer_order(ad_env: ADTestEnv, ou: str) -> list[str]:
    """The DNs of the OU's users in the order the DC answers a one-level search for them."""
    ad_env.admin.search(ou, "(objectClass=user)", LEVEL, attributes=["1.1"])
    return [e["dn"] for e in ad_env.admin.response if e.get("type") == "searchResEntry"]


def _people(ad_env: ADTestEnv, account: KerberosAccount, *, one_writable: bool) -> _People:
    """An OU of ``_USERS`` users the account may not write thumbnailPhoto on (no grant reaches them), but, with
    ``one_writable``, the last the DC answers: an explicit allow on it alone."""
    ou = ad_env.sub_ou("people")
    created = ad_env.add_users(ad_env.specs(_USERS, photos=False), ou=ou)
    guids = {f"CN={name},{ou}": guid for name, guid in created.items()}
    writable = None
    if one_writable:
        writable = _answer_order(ad_env, ou)[-1]
        allow_write(ad_env.ad, account, writable, _PHOTO)
        order = [dn.lower() for dn in _answer_order(ad_env, ou)]
        assert order.index(writable.lower()) >= _OLD_READ, f"the writable user is not past the first 20: {order}"
    return _People(ou, guids, writable)


@pytest.fixture(autouse=True)
def _as_ad_limits_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """Searches with a sizeLimit get at most that many entries and sizeLimitExceeded (4), as from AD.

    RFC 4511 4.5.1.4: the sizeLimit "restricts the maximum number of entries to be returned as a result of the
    Search"; A.2: sizeLimitExceeded "Indicates that the size limit specified by the client was exceeded before the
    operation could be completed" (the entries sent before it stand). ASSUMPTION: which entries AD keeps is the first
    it would answer without the limit (Samba's order here). Searched: MS-ADTS 3.1.1.3.4.1.1 and 3.1.1.3.4.6, "Search
    Size and Page Size", "Retrieving Large Results Sets", RFC 4511; Microsoft says "the first" only for its own
    MaxPageSize cap ("Retrieving Large Results Sets": without paging, "a maximum of the first 1000 records"), nothing
    for a client's sizeLimit. The agent's own size-limited searches (a sample user, the bound account) take any one.
    """
    real = Connection.search

    def search(self: Connection, *args: Any, **kwargs: Any) -> Any:
        done = real(self, *args, **kwargs)
        limit = kwargs.get("size_limit") or 0
        entries = [e for e in (self.response or []) if e.get("type") == "searchResEntry"]
        if limit and len(entries) > limit:
            self.response = entries[:limit]
            self.result = {**self.result, "result": 4, "description": "sizeLimitExceeded"}
        return done

    monkeypatch.setattr(Connection, "search", search)


@pytest.fixture
def link(ad_env: ADTestEnv, samba_kerberos: KerberosAccount) -> Iterator[Link]:
    """A connection bound as the delegated service account (what the export's rights check uses)."""
    made = Link(ad_env.settings(**kerberos_settings(samba_kerberos)), logging.getLogger("mvsync.agent.ad"))
    try:
        yield made
    finally:
        made.close()


def _pages(monkeypatch: pytest.MonkeyPatch, size: int) -> list[list[str]]:
    """Pages of ``size`` objects for ``writable_elsewhere``; the DNs each page answered are recorded."""
    monkeypatch.setattr(_permissions, "_SIBLINGS_PAGE", size)
    real = _permissions.dc_entries
    pages: list[list[str]] = []

    def recorded(conn: Any, what: str) -> list[dict[str, Any]]:
        entries = real(conn, what)
        if what.startswith("the read of the rights in"):
            pages.append([e["dn"] for e in entries])
        return entries

    monkeypatch.setattr(_permissions, "dc_entries", recorded)
    return pages


@pytest.mark.parametrize("exported", ["one-person", "everyone-blocked"])
def test_a_grant_that_reaches_only_a_neighbour_past_the_first_20_answered_is_found(
    ad_env: ADTestEnv, samba_kerberos: KerberosAccount, exported: str
) -> None:
    """The export of one person the grant does not reach, or of all 24 (more than 20 blocked people): each is
    a per-object permission-issue saying the grant exists, nothing is written, and the step does not stop.
    Before: the step stopped (stopped-permission-issue) advising ``dsacls <the OU> /G ...``."""
    people = _people(ad_env, samba_kerberos, one_writable=True)
    names = people.others()[:1] if exported == "one-person" else people.others()
    connector = ad_env.connector(**kerberos_settings(samba_kerberos, base_dns=[people.ou]))
    results = connector.export(
        [update(people.guids[dn], AttributeChange.replace(_PHOTO, jpeg(i))) for i, dn in enumerate(names)]
    )
    assert [(r.status, r.error_name) for r in results] == [(ExportStatus.FAILED, "permission-issue")] * len(names)
    for result in results:
        assert f"it may write it on 1 other object(s) there, so the grant on {people.ou} exists" in (
            result.error_detail
        ), result.error_detail
        assert f'dsacls "{people.ou}" /I:S /G' not in result.error_detail
    assert connector.export_stats.writes == 0


def test_the_read_goes_on_page_by_page_and_stops_at_the_first_page_with_a_writable_neighbour(
    ad_env: ADTestEnv, samba_kerberos: KerberosAccount, link: Link, monkeypatch: pytest.MonkeyPatch
) -> None:
    people = _people(ad_env, samba_kerberos, one_writable=True)
    assert people.writable is not None
    pages = _pages(monkeypatch, 4)
    gap = Gap(_PHOTO, people.ou, people.others()[:1])
    assert writable_elsewhere(link, gap, "user") == 1
    _read_up_to_the_page_holding(pages, people.writable)
    # the search stopped before its end was abandoned (RFC 2696): the same connection searches on
    pages.clear()
    assert writable_elsewhere(link, gap, "user") == 1
    _read_up_to_the_page_holding(pages, people.writable)


def _read_up_to_the_page_holding(pages: list[list[str]], dn: str) -> None:
    """``pages`` (full but for the last) end with the first that holds ``dn``."""
    holding = [i for i, page in enumerate(pages) if dn.lower() in (d.lower() for d in page)]
    assert holding == [len(pages) - 1], pages
    assert all(len(page) == 4 for page in pages[:-1]), pages


def test_the_read_stops_at_its_bound_and_then_takes_the_grant_for_missing(
    ad_env: ADTestEnv, samba_kerberos: KerberosAccount, link: Link, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At most ``SIBLINGS_MAX`` objects are read (here 10 of 25, in pages of 4, 4 and 2)."""
    people = _people(ad_env, samba_kerberos, one_writable=False)
    monkeypatch.setattr(_permissions, "SIBLINGS_MAX", 10)
    pages = _pages(monkeypatch, 4)
    gap = Gap(_PHOTO, people.ou, people.others()[:1])
    assert writable_elsewhere(link, gap, "user") == 0
    assert [len(page) for page in pages] == [4, 4, 2], pages
    pages.clear()
    assert writable_elsewhere(link, gap, "user") == 0  # the abandoned search left the connection usable
    assert [len(page) for page in pages] == [4, 4, 2], pages


def test_a_busy_answer_to_a_later_page_stops_the_export_as_the_dc_s_state_not_as_a_missing_grant(
    ad_env: ADTestEnv, samba_kerberos: KerberosAccount, monkeypatch: pytest.MonkeyPatch
) -> None:
    people = _people(ad_env, samba_kerberos, one_writable=False)
    monkeypatch.setattr(_permissions, "_SIBLINGS_PAGE", 4)
    real = _permissions.dc_entries
    pages: list[str] = []

    def busy_second_page(conn: Any, what: str) -> list[dict[str, Any]]:
        if what.startswith("the read of the rights in"):
            pages.append(what)
            if len(pages) == 2:
                answer = SimpleNamespace(result={"result": 51, "description": "busy", "message": "problem 5001"})
                return real(answer, what)  # type: ignore[arg-type]
        return real(conn, what)

    monkeypatch.setattr(_permissions, "dc_entries", busy_second_page)
    connector = ad_env.connector(**kerberos_settings(samba_kerberos, base_dns=[people.ou]))
    dn = people.others()[0]
    with pytest.raises(ServerDownError) as caught:
        connector.export([update(people.guids[dn], AttributeChange.replace(_PHOTO, jpeg(1)))])
    message = str(caught.value)
    assert f"answered the read of the rights in {people.ou} with 51 busy: problem 5001" in message, message
    assert "dsacls" not in message and caught.value.status == "stopped-server-down", message
    assert connector.export_stats.writes == 0


def test_a_later_page_the_dc_refuses_is_not_taken_for_a_missing_grant(
    ad_env: ADTestEnv, samba_kerberos: KerberosAccount, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every later page sent with a cookie the DC does not hold (as when it keeps discarding the result set under
    load): the read starts again from its first page 3 times (4 objects each), then the DC's own refusal (Samba:
    53 unwillingToPerform) stops the export naming the OU and the DC, with nothing written, instead of 0
    writable neighbours and the advice to grant what may be granted."""
    people = _people(ad_env, samba_kerberos, one_writable=False)
    monkeypatch.setattr(_permissions, "_SIBLINGS_PAGE", 4)
    real = _permissions.paged_cookie
    monkeypatch.setattr(_permissions, "paged_cookie", lambda result: real(result) and b"discarded")
    connector = ad_env.connector(**kerberos_settings(samba_kerberos, base_dns=[people.ou]))
    dn = people.others()[0]
    with pytest.raises(StopRunError) as caught:
        connector.export([update(people.guids[dn], AttributeChange.replace(_PHOTO, jpeg(1)))])
    message = str(caught.value)
    assert caught.value.status == "stopped-connector-error", message
    again = "started again from its first page 3 time(s): the DC discarded its result set"
    assert f"ended the read of the rights in {people.ou} after 16 object(s) ({again}) with 53 " in message, message
    assert f"whether the grant on {people.ou} exists is unknown" in message, message
    assert f"{ad_env.ad.host}:{ad_env.ad.ldaps_port}" in message and "dsacls" not in message, message
    assert connector.export_stats.writes == 0 and ad_env.read(dn.split(",")[0][3:], _PHOTO, people.ou) == []


def _refuse_later_pages(monkeypatch: pytest.MonkeyPatch, answer: dict[str, Any] | None, times: int) -> list[int]:
    """The first ``times`` pages sent with a cookie are refused: by the real DC (``answer`` None), sent a cookie it
    does not hold instead, or with ``answer`` made up in process and no entries. Returns the list counting them."""
    real = Connection.search
    refused: list[int] = []

    def search(self: Connection, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("paged_cookie") is None or len(refused) >= times:
            return real(self, *args, **kwargs)
        refused.append(1)
        if answer is None:
            return real(self, *args, **{**kwargs, "paged_cookie": b"discarded"})
        self.result = {**answer, "dn": "", "referrals": None, "type": "searchResDone"}
        self.response = []
        return False

    monkeypatch.setattr(Connection, "search", search)
    return refused


_GONE = [None, *({"result": c, "description": d, "message": m} for c, d, m in _COOKIE_GONE if c != 53)]


@pytest.mark.parametrize("answer", _GONE, ids=["samba-53", "12", "error-processing-control"])
def test_a_later_page_whose_cookie_is_gone_starts_the_read_again_from_the_first_page(
    ad_env: ADTestEnv,
    samba_kerberos: KerberosAccount,
    link: Link,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    answer: dict[str, Any] | None,
) -> None:
    """The second page refused once as a discarded result set: the read starts again from its first page and
    finds the writable neighbour on the last. Before: the export stopped, "run the export again later"."""
    people = _people(ad_env, samba_kerberos, one_writable=True)
    assert people.writable is not None
    pages = _pages(monkeypatch, 4)
    refused = _refuse_later_pages(monkeypatch, answer, 1)
    gap = Gap(_PHOTO, people.ou, people.others()[:1])
    with caplog.at_level(logging.INFO, logger="mvsync.agent.ad"):
        assert writable_elsewhere(link, gap, "user") == 1
    assert refused == [1]
    assert pages[1] == [] and pages[2] == pages[0] and len(pages[0]) == 4, pages
    _read_up_to_the_page_holding(pages[2:], people.writable)
    code = 53 if answer is None else answer["result"]
    assert f"the read of the rights in {people.ou} starts again from its first page" in caplog.text, caplog.text
    assert f"the DC refused its cookie: {code} " in caplog.text, caplog.text


def test_what_a_restarted_read_read_before_counts_toward_its_bound(
    ad_env: ADTestEnv, samba_kerberos: KerberosAccount, link: Link, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``SIBLINGS_MAX`` 10, pages of 4, the second refused once: 4, (refused), 4, 2, then 0 writable."""
    people = _people(ad_env, samba_kerberos, one_writable=False)
    monkeypatch.setattr(_permissions, "SIBLINGS_MAX", 10)
    pages = _pages(monkeypatch, 4)
    _refuse_later_pages(monkeypatch, None, 1)
    assert writable_elsewhere(link, Gap(_PHOTO, people.ou, people.others()[:1]), "user") == 0
    assert [len(page) for page in pages] == [4, 0, 4, 2], pages
