"""A domain controller that answers an export's writes with a result code of the whole DC (busy,
unavailable, timeLimitExceeded), through the engine, against the real (Samba) DC.

Why the answer is made up in the test: the agent speaks LDAPS, so a proxy cannot rewrite the result
code of a modify response without terminating TLS, and Samba cannot be made busy on request. The
writes before the DC turns busy are real; the refusals replace ``_modify``'s answer (what ldap3
hands back for such a response: its ``result``, ``description`` and ``message``).

Found in a bad-day pass over the export: every write after the DC turned busy was refused in turn,
the step went on through every batch and ended ``completed-export-errors`` with one
``cd-server-busy`` error per pending person, when nothing about those people was wrong.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from connector.agents.active_directory import _export, _permissions
from connector.config import config_from_dict
from connector.engine import Engine
from tests.agents.active_directory.conftest import ADTestEnv, jpeg, photo_sync_config
from tests.agents.active_directory.test_ad_export_cli import _pending as _cli_pending
from tests.agents.active_directory.test_ad_export_cli import _people_with_photos, folder_to_ad
from tests.agents.active_directory.test_ad_export_outage import _pending, export_then_again
from tests.cli._configs import invoke

pytestmark = pytest.mark.samba

#: Batches of 3 for 7 people: the DC turns busy after the 4th write, the first of the second batch.
_USERS, _BATCH, _WRITES_BEFORE_BUSY = 7, 3, 4


def _busy_after(monkeypatch: pytest.MonkeyPatch, count: int | None, code: int, description: str) -> list[str]:
    """Writes after the ``count``-th (None: none) are refused with ``code`` and not applied; the DNs written
    are returned."""
    original = _export._modify
    written: list[str] = []

    def modify_or_refuse(conn: Any, dn: str, changes: Any) -> dict[str, Any]:
        if count is not None and len(written) >= count:
            return {"result": code, "description": description, "message": "00002024: SvcErr: DSID-0208, problem 5003"}
        result = original(conn, dn, changes)
        written.append(dn)
        return result

    monkeypatch.setattr(_export, "_modify", modify_or_refuse)
    return written


@pytest.mark.parametrize(("code", "description"), [(51, "busy"), (52, "unavailable"), (3, "timeLimitExceeded")])
def test_a_busy_dc_stops_the_export_step_once_and_the_next_export_writes_the_rest(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch, code: int, description: str
) -> None:
    people, names, photos = ad_env.people_with_photos(_USERS, seed=900)
    settings = {"export_connections": 1}
    config = photo_sync_config(ad_env, people, photos, settings, export_step={"batch_size": _BATCH})
    engine = Engine(config_from_dict(config, base_dir=Path(ad_env.tmp_path)))
    try:
        assert engine.run_profile("Prepare").status == "success"
        _busy_after(monkeypatch, _WRITES_BEFORE_BUSY, code, description)
        again = export_then_again(engine, monkeypatch)
        confirmed = engine.run_profile("Prepare")  # the next import confirms every write
    finally:
        engine.close()
    assert again.stopped.status == "stopped-server-down", [s.as_dict() for s in again.stopped.steps]
    step = again.stopped.steps[0]
    assert f"{ad_env.ad.host}:{ad_env.ad.ldaps_port}" in step.message, step.message
    assert f"{code} {description}" in step.message, step.message
    assert "the rest stay pending for the next export" in step.message, step.message
    assert step.counters.get("export_updates") == _WRITES_BEFORE_BUSY, step.counters
    # one verdict for the person whose write was refused, none for those not tried: a DC-wide answer
    assert [e.error_name for e in step.errors] == ["cd-server-busy"], [e.as_dict() for e in step.errors]
    assert again.pending_after == _USERS - _WRITES_BEFORE_BUSY
    assert again.resumed.status == "success", [s.as_dict() for s in again.resumed.steps]
    assert again.resumed.steps[0].counters.get("export_updates") == _USERS - _WRITES_BEFORE_BUSY
    assert again.pending_final == 0
    assert confirmed.status == "success", [s.as_dict() for s in confirmed.steps]
    assert not [e for s in confirmed.steps for e in s.errors]  # no exported-change-not-reimported
    for i, name in enumerate(names):
        assert ad_env.read(name, "thumbnailPhoto", people) == [jpeg(900 + i)], name


def test_mvsync_run_of_an_export_against_a_busy_dc_exits_4_naming_the_dc(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the operator sees (``mvsync run Export``): exit code 4, the DC, its answer and what happens next,
    no traceback; the next run writes what is left."""
    people, names, photos = _people_with_photos(ad_env, _USERS)
    config = folder_to_ad(ad_env, people, photos, export_connections=1)
    code, out, err = invoke("run", "Prepare", "-c", str(config))
    assert code == 0, out + err
    _busy_after(monkeypatch, _WRITES_BEFORE_BUSY, 51, "busy")
    code, out, err = invoke("run", "Export", "-c", str(config))
    assert code == 4, out + err
    shown = " ".join((out + err).split())
    assert "stopped-server-down" in shown and "Traceback" not in shown, shown
    assert f"{ad_env.ad.host}:{ad_env.ad.ldaps_port} (ldaps) answered the write of" in shown, shown
    assert "51 busy" in shown and "the rest stay pending for the next export" in shown, shown
    assert _cli_pending(config) == _USERS - _WRITES_BEFORE_BUSY
    monkeypatch.undo()
    code, out, err = invoke("run", "Export", "-c", str(config))
    assert code == 0, out + err
    assert _cli_pending(config) == 0
    for i, name in enumerate(names):
        assert ad_env.read(name, "thumbnailPhoto", people) == [jpeg(700 + i)], name


def _lookup_busy_after(monkeypatch: pytest.MonkeyPatch, count: int, code: int, description: str) -> list[str]:
    """Once ``count`` writes are made, the search that looks a batch's objects up (by objectGUID, before
    writing) is answered with ``code``; the writes stay real. The DNs written are returned."""
    searcher = _export._scoped_searcher
    written = _busy_after(monkeypatch, None, code, description)  # the writes stay real, and are counted

    def busy_searcher(base: str, search_filter: str, attributes: Any) -> Any:
        real = searcher(base, search_filter, attributes)

        def operation(conn: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
            if len(written) >= count:
                return {"result": code, "description": description, "message": "00002024: SvcErr: problem 5003"}, []
            return real(conn)

        return operation

    monkeypatch.setattr(_export, "_scoped_searcher", busy_searcher)
    return written


@pytest.mark.parametrize(("code", "description"), [(51, "busy"), (52, "unavailable"), (3, "timeLimitExceeded")])
def test_a_busy_answer_to_the_lookup_before_the_writes_stops_the_step_as_a_busy_write_does(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch, code: int, description: str
) -> None:
    """The search that finds a batch's objects (and their current DN) before writing them, answered busy,
    unavailable or out of time: the same stop as a write so answered (``stopped-server-down``, exit 4,
    naming the DC and the code), not ``stopped-connector-error``; nobody gets an error of their own."""
    people, names, photos = ad_env.people_with_photos(_USERS, seed=950)
    config = photo_sync_config(ad_env, people, photos, {"export_connections": 1}, export_step={"batch_size": _BATCH})
    engine = Engine(config_from_dict(config, base_dir=Path(ad_env.tmp_path)))
    try:
        assert engine.run_profile("Prepare").status == "success"
        written = _lookup_busy_after(monkeypatch, _BATCH, code, description)  # the second batch's lookup
        again = export_then_again(engine, monkeypatch)
    finally:
        engine.close()
    assert again.stopped.status == "stopped-server-down", [s.as_dict() for s in again.stopped.steps]
    step = again.stopped.steps[0]
    assert f"domain controller {ad_env.ad.host}:{ad_env.ad.ldaps_port} (ldaps) answered" in step.message, step.message
    assert f"{code} {description}" in step.message, step.message
    assert f"the search for this batch's objects under {people!r}" in step.message, step.message
    assert "the rest stay pending for the next export" in step.message, step.message
    assert step.counters.get("export_updates") == _BATCH == len(written), step.counters
    assert not step.errors, [e.as_dict() for e in step.errors]  # the DC's state, nobody's fault
    assert again.pending_after == _USERS - _BATCH
    assert again.resumed.status == "success", [s.as_dict() for s in again.resumed.steps]
    assert again.resumed.steps[0].counters.get("export_updates") == _USERS - _BATCH
    assert again.pending_final == 0
    for i, name in enumerate(names):
        assert ad_env.read(name, "thumbnailPhoto", people) == [jpeg(950 + i)], name


def test_a_busy_answer_to_the_rights_read_before_the_writes_stops_the_step_as_a_busy_write_does(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rights check reads allowedAttributesEffective of an object by itself when the lookup's answer
    lacks it (a DC that computes it for BASE searches only); that read answered busy stops the step the
    same way, writing nothing. Before, a busy answer read as "no right at all": the step stopped with
    stopped-permission-issue, advising a dsacls grant that exists."""
    people, _names, photos = ad_env.people_with_photos(_USERS, seed=980)
    config = photo_sync_config(ad_env, people, photos, {"export_connections": 1}, export_step={"batch_size": _BATCH})
    engine = Engine(config_from_dict(config, base_dir=Path(ad_env.tmp_path)))
    try:
        assert engine.run_profile("Prepare").status == "success"
        real = _permissions.dc_entries

        def busy(conn: Any, what: str) -> list[dict[str, Any]]:
            answer = SimpleNamespace(
                result={"result": 51, "description": "busy", "message": "problem 5001"}, response=[]
            )
            return real(answer, what)  # type: ignore[arg-type]

        monkeypatch.setattr(_export, "effective_of", lambda _entry: None)  # the lookup's answer lacks the rights
        monkeypatch.setattr(_permissions, "dc_entries", busy)
        stopped = engine.run_profile("Export")
        pending = _pending(engine)
    finally:
        engine.close()
    assert stopped.status == "stopped-server-down", [s.as_dict() for s in stopped.steps]
    step = stopped.steps[0]
    assert f"(ldaps) answered the read of the rights on CN={ad_env.tag}" in step.message, step.message
    assert "with 51 busy: problem 5001" in step.message, step.message
    assert not step.errors and not step.counters.get("export_updates"), step.as_dict()
    assert pending == _USERS


def test_a_busy_answer_to_the_search_for_an_object_moved_out_of_scope_stops_the_step(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An object not found under base_dns is looked for by its GUID (to tell "moved out of scope" from
    "deleted"); that search answered busy stops the step as a busy write does. Before, the empty answer
    read as "no object with objectGUID ... exists (deleted since the last import?)": a cd-missing-object
    error for a person who exists."""
    people, names, photos = ad_env.people_with_photos(_USERS, seed=990)
    config = photo_sync_config(ad_env, people, photos, {"export_connections": 1}, export_step={"batch_size": _BATCH})
    engine = Engine(config_from_dict(config, base_dir=Path(ad_env.tmp_path)))
    try:
        assert engine.run_profile("Prepare").status == "success"
        elsewhere = ad_env.sub_ou("elsewhere")
        assert ad_env.admin.modify_dn(f"CN={names[0]},{people}", f"CN={names[0]}", new_superior=elsewhere)
        real = _export.dc_entries

        def busy_for_guid(conn: Any, what: str) -> list[dict[str, Any]]:
            if what.startswith("the search for <GUID="):
                answer = SimpleNamespace(
                    result={"result": 52, "description": "unavailable", "message": ""}, response=[]
                )
                return real(answer, what)  # type: ignore[arg-type]
            return real(conn, what)

        monkeypatch.setattr(_export, "dc_entries", busy_for_guid)
        stopped = engine.run_profile("Export")
        pending = _pending(engine)
    finally:
        engine.close()
    assert stopped.status == "stopped-server-down", [s.as_dict() for s in stopped.steps]
    step = stopped.steps[0]
    assert "(ldaps) answered the search for <GUID=" in step.message and "with 52 unavailable" in step.message
    assert not step.errors, [e.as_dict() for e in step.errors]  # no cd-missing-object for someone who exists
    assert pending == _USERS
