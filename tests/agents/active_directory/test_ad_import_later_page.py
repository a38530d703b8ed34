"""A full import's paged search answered with an error on a later page, against the real (Samba) DC.

Why: ``Importer._paged`` took any non-zero answer to a page sent with a cookie for "the DC refused its cookie"
and started the search again from its first page, up to 10 times, then stopped with "the DC keeps discarding
its result sets". Only some answers mean the cookie (or the result set behind it) is gone: a missing right,
a base DN deleted or renamed mid-import, an administrative or size limit, an operations error are not about
the cookie, and a restart meets them again. Those now get the answer the same code gets on the first page.

As in test_ad_import_busy, the answer is made up in process (the agent speaks LDAPS, so a relay cannot rewrite
a result code): ldap3's ``search`` is replaced for the page concerned only; every other search is real.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from ldap3 import Connection

from connector.sdk import ConfigurationError
from tests.agents.active_directory.conftest import ADTestEnv
from tests.agents.active_directory.test_ad_import_busy import _engine
from tests.agents.active_directory.test_ad_import_outage import _pending_imports

pytestmark = pytest.mark.samba

_USERS = 6
#: The agent's logger in the engine (set to INFO for the test: another test may have left it quieter).
_AGENT_LOGGER = "mvsync.agent.ad"

#: Answers a DC gives for a reason other than the cookie (code, description, AD's text for it).
_NOT_THE_COOKIE = [
    (50, "insufficientAccessRights", "00002098: SecErr: DSID-03150F94, problem 4003 (INSUFF_ACCESS_RIGHTS), data 0"),
    (32, "noSuchObject", "0000208D: NameErr: DSID-0310028D, problem 2001 (NO_OBJECT), data 0, best match of:"),
    (11, "adminLimitExceeded", "00002024: SvcErr: DSID-02080490, problem 5008 (ADMIN_LIMIT_EXCEEDED), data -1"),
    (4, "sizeLimitExceeded", ""),
    (1, "operationsError", "000004DC: LdapErr: DSID-0C090A5C, comment: a successful bind must be completed"),
]

#: What the real DC answers to a cookie it no longer holds (Samba 4.17, measured: another connection's cookie or
#: one it does not know: 53; a cookie sent with another request: 12), with AD's text for each; and the answer
#: Microsoft documents for AD without naming its code ("How LDAP server cookies are handled", "Handling Deleted
#: Cookies": "00000057: LdapErr: DSID-xxxxxxxx, comment: Error processing control, data 0, v1db1"), here with
#: protocolError (2), the code AD's rejection of a DirSync cookie carries with the same comment ("Polling for Changes
#: Using the DirSync Control": "A protocol error occurred"). Samba never answers it: made up in process, as above.
_COOKIE_GONE = [
    (53, "unwillingToPerform", "00002024: SvcErr: DSID-03100786, problem 5003 (WILL_NOT_PERFORM), data 0"),
    (12, "unavailableCriticalExtension", "00000057: LdapErr: DSID-0C090A71, comment: Error processing control"),
    (2, "protocolError", "00000057: LdapErr: DSID-0C090753, comment: Error processing control, data 0, v1db1"),
]


def _answer_paged(
    monkeypatch: pytest.MonkeyPatch, admin: Connection, which: Callable[[dict[str, Any]], bool], answer: dict[str, Any]
) -> list[int]:
    """Answer the agent's paged searches that ``which`` picks (by ldap3's keyword arguments) with ``answer``
    and no entries; the others go to the DC. Returns the list that counts the answers made up."""
    real = Connection.search
    made_up: list[int] = []

    def search(self: Connection, base: str, search_filter: str, *args: Any, **kwargs: Any) -> Any:
        if self is admin or not kwargs.get("paged_size") or not which(kwargs):
            return real(self, base, search_filter, *args, **kwargs)
        made_up.append(1)
        self.result = {**answer, "dn": "", "referrals": None, "type": "searchResDone"}
        self.response = []
        return False

    monkeypatch.setattr(Connection, "search", search)
    return made_up


def _first_page(kwargs: dict[str, Any]) -> bool:
    return kwargs.get("paged_cookie") is None


def _later_page(kwargs: dict[str, Any]) -> bool:
    return kwargs.get("paged_cookie") is not None


def _stopped_import(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch, people: str, which: Callable[[dict[str, Any]], bool], code: int
) -> tuple[tuple[str, str], int, list[int]]:
    """A full import whose pages ``which`` picks are answered with ``code``: the step's status and message, the
    pending imports after it (the first import's, which staged everyone), and the count of answers made up."""
    description, message = next((d, m) for c, d, m in _NOT_THE_COOKIE + _COOKIE_GONE if c == code)
    engine = _engine(ad_env, people)
    try:
        assert engine.run_profile("Import").status == "success"
        made_up = _answer_paged(
            monkeypatch, ad_env.admin, which, {"result": code, "description": description, "message": message}
        )
        try:
            step = engine.run_profile("Import").steps[0]
            stopped = (step.status, step.message)
        except ConfigurationError as exc:  # the engine records it (stopped-configuration) and raises it: exit 2
            stopped = ("stopped-configuration", str(exc))
        monkeypatch.undo()
        pending = _pending_imports(engine)
    finally:
        engine.close()
    return stopped, pending, made_up


@pytest.mark.parametrize(("code", "description", "text"), _NOT_THE_COOKIE)
def test_an_error_on_a_later_page_gets_the_answer_it_gets_on_the_first(
    ad_env: ADTestEnv,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    code: int,
    description: str,
    text: str,
) -> None:
    """Before: page 2 answered so restarted the search 10 times ("starts again from its first page") and
    stopped with "the DC keeps discarding its result sets". Now: one answer, naming the DC, the base DN and the
    code, the same as when the first page is answered so; no restart, nobody marked deleted."""
    people = ad_env.sub_ou("people")
    ad_env.add_users(ad_env.specs(_USERS, photos=False), ou=people)
    first, pending_first, _ = _stopped_import(ad_env, monkeypatch, people, _first_page, code)
    with caplog.at_level(logging.INFO, logger=_AGENT_LOGGER):
        later, pending_later, made_up = _stopped_import(ad_env, monkeypatch, people, _later_page, code)
    assert later == first
    status, message = later
    assert len(made_up) == 1, "the search was sent again after the answer"
    assert "starts again from its first page" not in caplog.text
    assert f"{code} {description}" in message or f"({description}" in message, message
    assert repr(people) in message and ad_env.ad.host in message, message
    if code == 32:  # a base DN gone (mistyped, or deleted or renamed during the import): the setting to check
        assert status == "stopped-configuration" and "check base_dns" in message, message
    else:
        assert status == "stopped-connector-error", message
        assert f"domain controller {ad_env.ad.host}:{ad_env.ad.ldaps_port} (ldaps) answered the search" in message
        assert "no object it did not read is marked deleted" in message, message
    assert pending_first == pending_later == _USERS  # the first import's adds; no delete staged by either stop


@pytest.mark.parametrize(("code", "description", "text"), _COOKIE_GONE)
def test_a_cookie_the_dc_no_longer_holds_starts_the_search_again(
    ad_env: ADTestEnv,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    code: int,
    description: str,
    text: str,
) -> None:
    """The answers that do mean the cookie is gone (on the second page, once): the search starts again from its
    first page (INFO, naming the code) and the step succeeds with every user, none twice."""
    people = ad_env.sub_ou("people")
    ad_env.add_users(ad_env.specs(_USERS, photos=False), ou=people)
    once: list[bool] = []

    def second_page_once(kwargs: dict[str, Any]) -> bool:
        if once or not _later_page(kwargs):
            return False
        once.append(True)
        return True

    engine = _engine(ad_env, people)
    try:
        with caplog.at_level(logging.INFO, logger=_AGENT_LOGGER):
            answer = {"result": code, "description": description, "message": text}
            _answer_paged(monkeypatch, ad_env.admin, second_page_once, answer)
            run = engine.run_profile("Import")
            monkeypatch.undo()
    finally:
        engine.close()
    step = run.steps[0]
    assert run.status == "success" and step.counters.get("adds") == _USERS, step.as_dict()
    assert once == [True]
    assert f"starts again from its first page (the DC refused its cookie: {code} {description}" in caplog.text
