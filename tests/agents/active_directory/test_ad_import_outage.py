"""A domain controller lost in the middle of an import step, through the engine, against the real (Samba)
DC behind a loopback relay that the test turns into a hung or a resetting server.

Found in the bad-day pass over the import: a DC that stayed out of reach after the reconnects stopped a
full import as ``stopped-connector-exception``, with a Python traceback in the log and the message
``ServerUnreachable: ...``, instead of ``stopped-server-down`` (what the README promises for a DC that
went away); ``mvsync doctor`` printed the same class name before its message.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest

from connector.agents.active_directory import ActiveDirectoryConnector
from connector.config import config_from_dict
from connector.engine import Engine
from connector.sdk import ImportPage, ImportRequest
from connector.store import ConnectorSpace, CsSearch
from tests.agents.active_directory.conftest import ADTestEnv, photo_sync_config
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


def after_first_page(monkeypatch: pytest.MonkeyPatch, event: Callable[[], None]) -> None:
    """Call ``event`` once the connector has answered the step's first page (the search is under way)."""
    original = ActiveDirectoryConnector.import_page

    def import_page(self: ActiveDirectoryConnector, request: ImportRequest) -> ImportPage:
        page = original(self, request)
        if request.page_number == 1:
            event()
        return page

    monkeypatch.setattr(ActiveDirectoryConnector, "import_page", import_page)


def _pending_imports(engine: Engine) -> int:
    with engine.store.read() as conn:
        return len(ConnectorSpace(conn).search("ad", CsSearch(pending_import=True), 1000))


@pytest.mark.parametrize("outage", ["hold", "reset"])
def test_a_dc_lost_mid_full_import_stops_the_step_as_server_down_and_deletes_nobody(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, outage: str
) -> None:
    if ad_env.ad.external or ad_env.ad.ca_cert is None:
        pytest.skip("the relay needs the harness's own DC, whose certificate names localhost")
    people = ad_env.sub_ou("people")
    ad_env.add_users(ad_env.specs(_USERS, photos=False), ou=people)
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


def test_doctor_names_a_dc_out_of_reach_without_a_class_name(ad_env: ADTestEnv) -> None:
    with faulty_proxy() as dc:  # no upstream: every connection is reset
        connector = ad_env.connector(
            host="localhost", port=dc.port, connect_timeout=1, reconnect_attempts=0, open=False
        )
        result = connector.check()
    assert not result.ok
    assert result.detail.startswith(f"cannot reach the domain controller at localhost:{dc.port} (ldaps)"), result.detail
