"""A domain controller lost in the middle of an import step, against the real (Samba) DC behind a loopback
relay that the test turns into a hung or a resetting server.

Found in the bad-day pass over the import:

* a DC that stayed out of reach after the reconnects stopped a full import as
  ``stopped-connector-exception``, with a Python traceback in the log and the message
  ``ServerUnreachable: ...``, instead of ``stopped-server-down`` (what the README promises for a DC that
  went away); ``mvsync doctor`` printed the same class name before its message;
* a DC that reset the connection once, between two pages, stopped the import although the reconnect
  worked: the repeated search carried the paged-search cookie of the connection that was gone, which the
  DC does not know (AD keeps a paged search per connection; Samba answered "53 unwillingToPerform").
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
from ldap3 import MODIFY_REPLACE

from connector.agents.active_directory._import import Importer
from connector.config import config_from_dict
from connector.engine import Engine
from connector.sdk import ImportMode, ObjectModificationType, StopRunError
from connector.store import ConnectorSpace, CsSearch
from tests.agents.active_directory.conftest import ADTestEnv, after_first_page, photo_sync_config
from tests.agents.active_directory.test_ad_import import run_import
from tests.harness.sockets import faulty_proxy

pytestmark = pytest.mark.samba

#: Pages of 2 for 6 people: the DC goes away once the first page has been read.
_USERS, _PAGE = 6, 2


def relayed_config(ad_env: ADTestEnv, people: str, port: int) -> dict[str, Any]:
    """The photo solution with ``ad`` reached through the relay on ``port``, read in pages of 2, and a
    profile "Import" that is a full import of ``ad`` alone."""
    photos = ad_env.tmp_path / "hr-photos"
    photos.mkdir(exist_ok=True)
    relayed = {
        "host": "localhost",  # a name the DC's certificate holds; the relay listens there
        "port": port,
        "page_size": _PAGE,
        "connect_timeout": 1,
        "receive_timeout": 2,
        "reconnect_attempts": 1,
    }
    config = photo_sync_config(ad_env, people, photos, relayed)
    config["run_profiles"]["Import"] = {"steps": [{"type": "full-import", "agent": "ad", "page_size": _PAGE}]}
    return config


def _people_behind_a_relay(ad_env: ADTestEnv) -> tuple[str, dict[str, str]]:
    """A sub-OU holding ``_USERS`` people without photos (its DN, and their names and GUIDs), for tests
    that put the harness's own DC behind a relay (skipped on an external DC)."""
    if ad_env.ad.external or ad_env.ad.ca_cert is None:
        pytest.skip("the relay needs the harness's own DC, whose certificate names localhost")
    people = ad_env.sub_ou("people")
    return people, ad_env.add_users(ad_env.specs(_USERS, photos=False), ou=people)


def _pending_imports(engine: Engine) -> int:
    with engine.store.read() as conn:
        return len(ConnectorSpace(conn).search("ad", CsSearch(pending_import=True), 1000))


@pytest.mark.parametrize("outage", ["hold", "reset"])
def test_a_dc_lost_mid_full_import_stops_the_step_as_server_down_and_deletes_nobody(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, outage: str
) -> None:
    people, _ = _people_behind_a_relay(ad_env)
    with faulty_proxy((ad_env.ad.host, ad_env.ad.ldaps_port)) as dc:
        engine = Engine(config_from_dict(relayed_config(ad_env, people, dc.port), base_dir=ad_env.tmp_path))
        try:
            first = engine.run_profile("Import")
            pending_before = _pending_imports(engine)
            after_first_page(monkeypatch, getattr(dc, outage))
            with caplog.at_level(logging.INFO):
                stopped = engine.run_profile("Import")
            pending_after = _pending_imports(engine)
        finally:
            engine.close()
    assert first.status == "success" and first.steps[0].counters.get("adds") == _USERS
    step = stopped.steps[0]
    assert (stopped.status, step.status) == ("stopped-server-down", "stopped-server-down"), step.as_dict()
    assert step.message.startswith(f"cannot reach the domain controller at localhost:{dc.port} (ldaps)"), step.message
    assert "no object it did not read is marked deleted" in step.message, step.message
    assert pending_after == pending_before  # no delete staged for the people the import did not reach
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"


def test_doctor_s_rights_check_after_a_dc_out_of_reach_makes_no_connection_of_its_own(ad_env: ADTestEnv) -> None:
    """Found in the QA pass: against a hung DC, ``mvsync doctor`` waited for the reachability check's timeouts
    (43 s with the defaults), then the write-rights check waited for the same again and said the same; now the
    rights check says it was not made, and tries nothing."""
    with faulty_proxy() as dc:  # no upstream: every connection is reset
        connector = ad_env.connector(
            host="localhost", port=dc.port, connect_timeout=1, reconnect_attempts=0, open=False
        )
        assert not connector.check().ok
        tried = dc.accepted
        findings = connector.doctor_checks()
        assert dc.accepted == tried
    assert findings == [("write-permissions", "error", "not checked: no bind to a DC (the reachable check says why)")]


def test_doctor_names_a_dc_out_of_reach_without_a_class_name(ad_env: ADTestEnv) -> None:
    with faulty_proxy() as dc:  # no upstream: every connection is reset
        connector = ad_env.connector(
            host="localhost", port=dc.port, connect_timeout=1, reconnect_attempts=0, open=False
        )
        result = connector.check()
    assert not result.ok
    assert result.detail.startswith(f"cannot reach the domain controller at localhost:{dc.port} (ldaps)"), result.detail


def test_a_dc_that_resets_mid_full_import_is_read_again_from_the_first_page(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The reset comes between the first and the second page; the reconnect works. Before, the step
    stopped (stopped-connector-error, "53 unwillingToPerform"): now every person is imported once."""
    people, _ = _people_behind_a_relay(ad_env)
    with faulty_proxy((ad_env.ad.host, ad_env.ad.ldaps_port)) as dc:
        after_first_page(monkeypatch, dc.relay)  # resets the open connections, then relays new ones
        engine = Engine(config_from_dict(relayed_config(ad_env, people, dc.port), base_dir=ad_env.tmp_path))
        try:
            with caplog.at_level(logging.INFO, logger="mvsync.agent.ad"):
                run = engine.run_profile("Import")
        finally:
            engine.close()
    step = run.steps[0]
    assert run.status == "success", step.as_dict()
    assert step.counters.get("adds") == _USERS and step.error_count == 0, step.as_dict()
    assert "starts again from its first page (the connection its cookie belonged to was replaced)" in caplog.text


def test_a_usn_delta_import_through_a_reset_reports_each_change_once(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The uSNChanged delta pages too (the changed objects under the base DNs, then every changed user for
    the deletions): a reset between its pages reports each change once, and nobody as deleted."""
    people, guids = _people_behind_a_relay(ad_env)
    with faulty_proxy((ad_env.ad.host, ad_env.ad.ldaps_port)) as dc:
        settings = {
            "host": "localhost",
            "port": dc.port,
            "base_dns": [people],
            "page_size": _PAGE,
            "delta_method": "usn",
            "reconnect_attempts": 1,
        }
        _, watermark, _ = run_import(ad_env.connector(**settings), ImportMode.FULL, page_size=_PAGE)
        for name in guids:
            ad_env.admin.modify(f"CN={name},{people}", {"description": [(MODIFY_REPLACE, ["changed"])]})
        after_first_page(monkeypatch, dc.relay)
        delta, _, _ = run_import(ad_env.connector(**settings), ImportMode.DELTA, watermark, page_size=_PAGE)
    # (the deletions phase reads every changed user of the domain: other tests' users may come back too)
    mine = [e for e in delta if e.anchor in set(guids.values())]
    assert sorted(e.anchor for e in mine) == sorted(guids.values())
    assert {e.modification for e in mine} == {ObjectModificationType.REPLACE}


def test_a_paged_search_whose_result_set_the_dc_discarded_starts_again(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AD keeps at most MaxResultSetsPerConn (10) paged searches per connection and discards the oldest (and
    more when its pool passes MaxResultSetSize); a cookie whose result set is gone is refused ("Error
    processing control"; Samba: 53). Here ten other paged searches on the agent's connection, between two
    pages, push the import's result set out."""
    people = ad_env.sub_ou("people")
    guids = ad_env.add_users(ad_env.specs(_USERS, photos=False), ou=people)
    connector = ad_env.connector(base_dns=[people], page_size=_PAGE)

    def ten_other_paged_searches() -> None:
        for _ in range(10):
            connector._require_link().run(
                lambda conn: conn.search(people, "(objectClass=user)", attributes=["cn"], paged_size=1)
            )

    after_first_page(monkeypatch, ten_other_paged_searches)
    entries, _, _ = run_import(connector, ImportMode.FULL, page_size=_PAGE)
    assert sorted(e.anchor for e in entries) == sorted(guids.values())


def test_a_paged_search_that_never_gets_past_a_page_stops_the_step_instead_of_starting_again_for_ever(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection reset after every page the DC sends: the search starts again each time and would never end.

    (After every page the connector hands on, the import gets past each: the connector reads past the pages
    it returned before the reset, test_ad_import_pages.py.)"""
    people, _ = _people_behind_a_relay(ad_env)
    with faulty_proxy((ad_env.ad.host, ad_env.ad.ldaps_port)) as dc:
        connector = ad_env.connector(host="localhost", port=dc.port, base_dns=[people], page_size=_PAGE)
        paged = Importer._paged

        def reset_after_the_page(self: Importer, *args: Any, **kwargs: Any) -> Any:
            answer = paged(self, *args, **kwargs)
            dc.relay()
            return answer

        monkeypatch.setattr(Importer, "_paged", reset_after_the_page)
        with pytest.raises(StopRunError) as caught:
            run_import(connector, ImportMode.FULL, page_size=_PAGE)
    assert str(caught.value).startswith(
        f"the paged search under {people!r} on localhost had to start again from its first page 11 times in this "
        "step (the connection its cookie belonged to was replaced): the DC keeps discarding its result sets"
    ), str(caught.value)
