"""A domain controller that answers an import's searches with a result code of the whole DC (busy,
unavailable, timeLimitExceeded), through the engine, against the real (Samba) DC.

Why the answer is made up in the test (as in test_ad_export_busy): the agent speaks LDAPS, so a relay cannot
rewrite a search's result code, and Samba cannot be made busy on request. The searches before the DC turns
busy are real; after, ldap3's answer is replaced by what it hands back for such a response (``result``,
``description``, ``message`` and no entries).

Found in a bad-day pass over the import: a busy answer to a full import's second page was taken for a
paged-search cookie the DC refused (the search started again), then stopped the step as
``stopped-connector-error`` ("search under ... failed: 51 busy") instead of ``stopped-server-down``; a
DirSync delta so answered told the operator the account's permission was withdrawn and to run a full import.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from ldap3 import MODIFY_REPLACE, Connection

from connector.agents.active_directory import _import
from connector.config import config_from_dict
from connector.engine import Engine
from tests.agents.active_directory.conftest import ADTestEnv, after_first_page, photo_sync_config
from tests.agents.active_directory.test_ad_export_cli import folder_to_ad
from tests.agents.active_directory.test_ad_import_outage import _pending_imports
from tests.cli._configs import invoke

pytestmark = pytest.mark.samba

_USERS, _PAGE = 6, 2
_CODES = [(51, "busy"), (52, "unavailable"), (3, "timeLimitExceeded")]


def _busy_from_now(monkeypatch: pytest.MonkeyPatch, code: int, description: str) -> None:
    """Every LDAP search from now on is answered with ``code`` and no entries (the DC is not asked)."""

    def busy(self: Connection, *_args: Any, **_kwargs: Any) -> bool:
        self.result = {"result": code, "description": description, "message": "00002024: SvcErr: problem 5003"}
        self.response = []
        return False

    monkeypatch.setattr(Connection, "search", busy)


def _engine(ad_env: ADTestEnv, people: str, **settings: Any) -> Engine:
    photos = ad_env.tmp_path / "hr-photos"
    photos.mkdir(exist_ok=True)
    config = photo_sync_config(ad_env, people, photos, {"page_size": _PAGE, **settings})
    profiles = config["run_profiles"]
    profiles["Import"] = {"steps": [{"type": "full-import", "agent": "ad", "page_size": _PAGE}]}
    profiles["Delta"] = {"steps": [{"type": "delta-import", "agent": "ad", "page_size": _PAGE}]}
    return Engine(config_from_dict(config, base_dir=Path(ad_env.tmp_path)))


def _assert_stopped_naming(step: Any, ad_env: ADTestEnv, what: str, code: int, description: str) -> None:
    assert step.status == "stopped-server-down", step.as_dict()
    assert f"domain controller {ad_env.ad.host}:{ad_env.ad.ldaps_port} (ldaps) answered {what}" in step.message
    assert f"with {code} {description}" in step.message, step.message
    assert "no object it did not read is marked deleted" in step.message, step.message


@pytest.mark.parametrize(("code", "description"), _CODES)
def test_a_busy_answer_mid_full_import_stops_the_step_as_server_down_and_deletes_nobody(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch, code: int, description: str
) -> None:
    people = ad_env.sub_ou("people")
    ad_env.add_users(ad_env.specs(_USERS, photos=False), ou=people)
    engine = _engine(ad_env, people)
    try:
        first = engine.run_profile("Import")
        pending_before = _pending_imports(engine)
        after_first_page(monkeypatch, lambda: _busy_from_now(monkeypatch, code, description))
        stopped = engine.run_profile("Import")
        pending_after = _pending_imports(engine)
        monkeypatch.undo()
        again = engine.run_profile("Import")
    finally:
        engine.close()
    assert first.status == "success" and first.steps[0].counters.get("adds") == _USERS, first.steps[0].as_dict()
    step = stopped.steps[0]
    assert stopped.status == "stopped-server-down", step.as_dict()
    _assert_stopped_naming(step, ad_env, f"the paged search under {people!r}", code, description)
    assert not step.errors, [e.as_dict() for e in step.errors]
    assert pending_after == pending_before  # no delete staged for the people the import did not reach
    assert again.status == "success", [s.as_dict() for s in again.steps]
    assert _pending_imports(engine) == pending_before


def _changes(search_filter: str, kwargs: dict[str, Any]) -> bool:
    """DirSync's read of the changes (its filter is "(objectClass=user)"), or a uSNChanged delta's first search."""
    return search_filter == "(objectClass=user)" or ("uSNChanged" in search_filter and not kwargs.get("controls"))


def _reread(search_filter: str, _kwargs: dict[str, Any]) -> bool:
    """A DirSync delta's read of the changed objects again, by objectGUID under the base DNs."""
    return "objectGUID" in search_filter


def _tombstones(search_filter: str, kwargs: dict[str, Any]) -> bool:
    """A uSNChanged delta's search of the changed users at the naming-context root (show-deleted control)."""
    return "uSNChanged" in search_filter and bool(kwargs.get("controls"))


def delta_answered(
    ad_env: ADTestEnv,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    which: Callable[[str, dict[str, Any]], bool],
    answer: dict[str, Any],
) -> tuple[Any, Any, Any, Any]:
    """A full import, a change to one user, then a delta import whose search ``which`` picks is answered
    ``answer`` (no entries; every other search is real), then the next delta with the DC answering again.

    Returns the stopped delta's result, the pending imports before and after it, and the next delta's result.
    """
    people = ad_env.sub_ou("people")
    names = ad_env.add_users(ad_env.specs(_USERS, photos=False), ou=people)
    engine = _engine(ad_env, people, delta_method=method)
    try:
        assert engine.run_profile("Import").status == "success"
        pending_before = _pending_imports(engine)
        changed = next(iter(names))
        ad_env.admin.modify(f"CN={changed},{people}", {"displayName": [(MODIFY_REPLACE, ["Changed Name"])]})
        real = Connection.search

        def answered(self: Connection, base: str, search_filter: str, *args: Any, **kwargs: Any) -> Any:
            schema = "attributeSchema" in search_filter  # the schema check names every attribute read
            if self is ad_env.admin or schema or not which(search_filter, kwargs):
                return real(self, base, search_filter, *args, **kwargs)
            self.result = {**answer, "dn": "", "referrals": None, "type": "searchResDone"}
            self.response = []
            return False

        monkeypatch.setattr(Connection, "search", answered)
        stopped = engine.run_profile("Delta")
        monkeypatch.undo()
        pending_after = _pending_imports(engine)
        again = engine.run_profile("Delta")
    finally:
        engine.close()
    return stopped, pending_before, pending_after, again


#: (delta_method, which search turns busy, what the message names, code, description)
_DELTA_CASES = [
    *[("auto", _changes, "the DirSync search under", code, text) for code, text in _CODES],
    ("auto", _reread, "the search under", 51, "busy"),
    ("usn", _changes, "the paged search under 'OU=people", 51, "busy"),
    ("usn", _tombstones, "the paged search under 'DC=", 52, "unavailable"),
]


@pytest.mark.parametrize(("method", "which", "what", "code", "description"), _DELTA_CASES)
def test_a_busy_answer_to_a_delta_import_keeps_its_watermark(
    ad_env: ADTestEnv,
    monkeypatch: pytest.MonkeyPatch,
    method: str,
    which: Callable[[str, dict[str, Any]], bool],
    what: str,
    code: int,
    description: str,
) -> None:
    """A delta's read of the changes answered busy (DirSync's, its read again by objectGUID, a uSNChanged
    delta's search in scope or its search for tombstones): the step stops as server down, stages no delete,
    and the next delta (the DC answering again) still reads the change made before: the watermark stayed."""
    answer = {"result": code, "description": description, "message": "problem 5001"}
    stopped, pending_before, pending_after, again = delta_answered(ad_env, monkeypatch, method, which, answer)
    step = stopped.steps[0]
    _assert_stopped_naming(step, ad_env, what, code, description)
    assert "the delta-import watermark stays where it was" in step.message, step.message
    assert pending_after == pending_before, step.as_dict()  # no delete staged
    assert again.status == "success", [s.as_dict() for s in again.steps]
    # the change is read again (staged as an update, or unchanged when the stopped step had read it before
    # its tombstone search was refused): a watermark moved past it would have read nothing
    counters = again.steps[0].counters
    read = sum(counters.get(name, 0) for name in ("adds", "updates", "unchanged"))
    assert read == 1, again.steps[0].as_dict()
    assert not counters.get("deletes"), again.steps[0].as_dict()


def test_a_busy_answer_to_the_dirsync_round_of_a_full_import_is_not_read_as_dirsync_refused(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full import first asks DirSync for a cookie for "now". Before, a busy answer there was read as
    "DirSync is not permitted for this account": the import went on, and its watermark fell back to
    uSNChanged for every delta until the next full import. Now the step stops as server down."""
    people = ad_env.sub_ou("people")
    ad_env.add_users(ad_env.specs(_USERS, photos=False), ou=people)
    real = Connection.search

    def busy_dirsync(self: Connection, base: str, search_filter: str, *args: Any, **kwargs: Any) -> Any:
        if self is ad_env.admin or search_filter != _import._NOTHING:
            return real(self, base, search_filter, *args, **kwargs)
        self.result = {"result": 51, "description": "busy", "message": "problem 5001"}
        self.response = []
        return False

    engine = _engine(ad_env, people)
    try:
        monkeypatch.setattr(Connection, "search", busy_dirsync)
        stopped = engine.run_profile("Import")
        monkeypatch.undo()
        pending = _pending_imports(engine)
    finally:
        engine.close()
    step = stopped.steps[0]
    assert stopped.status == "stopped-server-down", step.as_dict()
    assert "answered the DirSync search under" in step.message and "with 51 busy" in step.message, step.message
    assert not step.counters.get("adds") and pending == 0, step.as_dict()


def test_mvsync_run_of_an_import_against_a_busy_dc_exits_4_naming_the_dc(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the operator sees (``mvsync run Prepare``): exit code 4, the DC, the search and its answer, no
    traceback; the next run, the DC answering again, succeeds."""
    people, _names, photos = ad_env.people_with_photos(_USERS)
    config = folder_to_ad(ad_env, people, photos, page_size=_PAGE)
    after_first_page(monkeypatch, lambda: _busy_from_now(monkeypatch, 51, "busy"))
    code, out, err = invoke("run", "Prepare", "-c", str(config))
    shown = " ".join((out + err).split())
    assert code == 4, shown
    assert "stopped-server-down" in shown and "Traceback" not in shown, shown
    assert f"{ad_env.ad.host}:{ad_env.ad.ldaps_port} (ldaps) answered the paged search under" in shown, shown
    assert "51 busy" in shown and "no object it did not read is marked deleted" in shown, shown
    monkeypatch.undo()
    code, out, err = invoke("run", "Prepare", "-c", str(config))
    assert code == 0, out + err
