"""Import pages whose entries the step already returned, through the engine, against the real (Samba) DC.

Found in the QA pass of the AD agent: Samba's paged-search cookie names the search, not a position in it
(every page of a connection's first paged search carries the same cookie), so a page of people the step had
returned already (a search that started again after a reconnect, or the USN delta's search for deletions
meeting the changed users its first search returned) went back to the engine empty with the token it was
asked with, and the engine stopped the step: "connector returned the same page token ... twice with no
entries (paging loop)", exit code 4, the token's internals for a message. A USN delta of more changed
people than page_size stopped so on every run, with no fault at all.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ldap3 import MODIFY_REPLACE

from connector.config import config_from_dict
from connector.engine import Engine
from tests.agents.active_directory.conftest import ADTestEnv, after_first_page, photo_sync_config
from tests.harness.sockets import faulty_proxy

pytestmark = pytest.mark.samba

_USERS = 4


def _engine(ad_env: ADTestEnv, people: str, **settings: object) -> Iterator[Engine]:
    """The photo solution on ``people`` read a page of one person at a time, with profiles "Full" and "Delta"."""
    config = photo_sync_config(ad_env, people, ad_env.tmp_path, {"page_size": 1, **settings})
    config["run_profiles"]["Full"] = {"steps": [{"type": "full-import", "agent": "ad"}]}
    config["run_profiles"]["Delta"] = {"steps": [{"type": "delta-import", "agent": "ad"}]}
    engine = Engine(config_from_dict(config, base_dir=ad_env.tmp_path))
    try:
        yield engine
    finally:
        engine.close()


def test_a_usn_delta_of_more_changed_people_than_a_page_reports_each_once(ad_env: ADTestEnv) -> None:
    people = ad_env.sub_ou("people")
    names = ad_env.add_users(ad_env.specs(_USERS, photos=False), ou=people)
    for engine in _engine(ad_env, people, delta_method="usn"):
        assert engine.run_profile("Full").status == "success"
        for name in names:
            ad_env.admin.modify(f"CN={name},{people}", {"description": [(MODIFY_REPLACE, ["changed"])]})
        run = engine.run_profile("Delta")
    step = run.steps[0]
    assert run.status == "success", step.as_dict()
    assert sum(step.counters.get(k, 0) for k in ("adds", "updates")) == _USERS, step.as_dict()


def test_a_full_import_that_reconnects_after_its_second_page_reads_past_the_pages_it_read(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    if ad_env.ad.external or ad_env.ad.ca_cert is None:
        pytest.skip("the relay needs the harness's own DC, whose certificate names localhost")
    people = ad_env.sub_ou("people")
    ad_env.add_users(ad_env.specs(_USERS, photos=False), ou=people)
    pages = [0]
    with faulty_proxy((ad_env.ad.host, ad_env.ad.ldaps_port)) as dc:

        def reset_after_the_second_page() -> None:
            pages[0] += 1
            if pages[0] == 2:
                dc.relay()  # resets the open connection; the reconnect is relayed

        after_first_page(monkeypatch, reset_after_the_second_page, every_page=True)
        for engine in _engine(ad_env, people, host="localhost", port=dc.port, reconnect_attempts=1):
            run = engine.run_profile("Full")
    step = run.steps[0]
    assert run.status == "success", step.as_dict()
    assert step.counters.get("adds") == _USERS and step.error_count == 0, step.as_dict()
