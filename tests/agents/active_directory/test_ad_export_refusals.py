"""A domain controller that refuses an export's writes with insufficientAccessRights (50), unwillingToPerform
(53), adminLimitExceeded (11) or constraintViolation (19), through the engine, against the real (Samba) DC.

Why most refusals are made up in the test (as in ``test_ad_export_busy``): the agent speaks LDAPS, so a proxy
cannot rewrite a result code, and Samba cannot be made to answer 53 or 11 on request. The writes that are not
refused are real; a refused one replaces ``_modify``'s answer with AD's own text for that code. A refusal of
the account (50 for everyone) is real: a service account without the grant, or whose grant is withdrawn in
the middle of the step, since the agent confirms it by reading the account's rights
(``allowedAttributesEffective``), which a made-up answer would contradict.

Found in a bad-day pass over the export: a code that every write got (an account without the right to
write thumbnailPhoto, with ``check_permissions = false``; a DC that refuses everyone) gave one identical
error per pending person, thousands of them, and the step "completed", where one stop naming the account
and the grant says it all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from connector.agents.active_directory import _export
from connector.config import config_from_dict
from connector.engine import Engine
from tests.agents.active_directory.conftest import ADTestEnv, jpeg, photo_sync_config
from tests.agents.active_directory.test_ad_export_cli import _pending as _cli_pending
from tests.agents.active_directory.test_ad_export_cli import folder_to_ad
from tests.agents.active_directory.test_ad_export_outage import _pending, export_then_again
from tests.agents.active_directory.test_ad_kerberos import kerberos_settings
from tests.cli._configs import invoke
from tests.harness.samba_dc import KerberosAccount, grant_write, withdraw_write

pytestmark = pytest.mark.samba

_USERS, _BATCH = 7, 3
_K = _export.REFUSED_EVERYWHERE_AFTER
#: AD's own text for each code (its SvcErr/SecErr/AtrErr form), description as ldap3 names it.
_ANSWERS = {
    50: ("insufficientAccessRights", "00002098: SecErr: DSID-03150F94, problem 4003 (INSUFF_ACCESS_RIGHTS), data 0"),
    53: ("unwillingToPerform", "0000209A: SvcErr: DSID-031A1254, problem 5003 (WILL_NOT_PERFORM), data 0"),
    11: ("adminLimitExceeded", "00002024: SvcErr: DSID-03080532, problem 5008 (ADMIN_LIMIT_EXCEEDED), data 0"),
    19: ("constraintViolation", "0000200B: AtrErr: DSID-03152D2C, #1: 0: 0000200B: problem 1005 (CONSTRAINT_ATT_TYPE)"),
}
_ERROR_NAMES = {50: "permission-issue", 53: "cd-error", 11: "cd-error", 19: "constraint-violation"}


def _refuse(monkeypatch: pytest.MonkeyPatch, code: int, refused: int | None) -> list[str]:
    """The first ``refused`` writes (None: all) are answered ``code`` and not applied; the DNs refused."""
    original = _export._modify
    description, message = _ANSWERS[code]
    seen: list[str] = []

    def modify_or_refuse(conn: Any, dn: str, changes: Any) -> dict[str, Any]:
        if refused is None or len(seen) < refused:
            seen.append(dn)
            return {"result": code, "description": description, "message": message}
        return original(conn, dn, changes)

    monkeypatch.setattr(_export, "_modify", modify_or_refuse)
    return seen


def _engine(
    ad_env: ADTestEnv, seed: int, account: KerberosAccount | None = None, users: int = _USERS, **overrides: Any
) -> tuple[Engine, str, list[str]]:
    """The photo solution, prepared; ``account``: bound as that service account (no grant) instead of the
    administrator."""
    people, names, photos = ad_env.people_with_photos(users, seed=seed)
    # check_permissions = false: the rights check up front would otherwise stop a missing grant first
    settings: dict[str, Any] = {"export_connections": 1, "check_permissions": False, **overrides}
    if account is not None:
        settings.update(kerberos_settings(account))
    config = photo_sync_config(ad_env, people, photos, settings, export_step={"batch_size": _BATCH})
    for key in ("bind_dn", "password"):
        if config["agents"]["ad"]["settings"][key] is None:
            del config["agents"]["ad"]["settings"][key]
    engine = Engine(config_from_dict(config, base_dir=Path(ad_env.tmp_path)))
    assert engine.run_profile("Prepare").status == "success"
    return engine, people, names


def _assert_stopped_for_the_grant(step: Any, people: str, errors: int = _K) -> None:
    """``step`` stopped once for the service account's missing grant in ``people``: the message names the
    account, the attribute and the dsacls line, and each person refused before the stop has an error."""
    assert "MVSYNC\\svc-mvsync may not write thumbnailPhoto, whoever the person" in step.message, step.message
    grant = f'grant it with: dsacls "{people}" /I:S /G "MVSYNC\\svc-mvsync:RPWP;thumbnailPhoto;user"'
    assert grant in step.message, step.message
    assert [e.error_name for e in step.errors] == ["permission-issue"] * errors, [e.as_dict() for e in step.errors]


@pytest.mark.parametrize("code", [53, 11])
def test_a_refusal_every_write_gets_stops_the_step_once_naming_the_dc(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """53 and 11 (AD's words about the request, not the person; no read can confirm them): the first 5
    people refused in a row stop the step."""
    engine, people, names = _engine(ad_env, seed=1000 + code)
    try:
        refused = _refuse(monkeypatch, code, None)
        again = export_then_again(engine, monkeypatch)
    finally:
        engine.close()
    assert again.stopped.status == "stopped-connector-error", [s.as_dict() for s in again.stopped.steps]
    step = again.stopped.steps[0]
    message = step.message
    assert f"domain controller {ad_env.ad.host}:{ad_env.ad.ldaps_port} (ldaps) refused the first {_K} writes" in message
    assert _ANSWERS[code][0] in message and "not one succeeded" in message, message
    assert "stay pending with the rest, for the next export" in message, message
    # the people refused before the rule could tell have their error each; nobody else was tried
    assert len(refused) == _K
    assert [e.error_name for e in step.errors] == [_ERROR_NAMES[code]] * _K, [e.as_dict() for e in step.errors]
    assert not step.counters.get("export_updates"), step.counters
    assert again.pending_after == _USERS
    assert again.resumed.status == "success", [s.as_dict() for s in again.resumed.steps]
    assert again.pending_final == 0
    for i, name in enumerate(names):
        assert ad_env.read(name, "thumbnailPhoto", people) == [jpeg(1000 + code + i)], name


@pytest.mark.parametrize("code", [50, 53, 11, 19])
def test_a_refusal_of_one_person_is_that_persons_error_and_the_export_goes_on(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """The first write of the step refused, the others accepted: one error naming that person, the rest
    written, the step completes; the refused person stays pending."""
    engine, _people, _names = _engine(ad_env, seed=1100 + code)
    try:
        refused = _refuse(monkeypatch, code, 1)
        run = engine.run_profile("Export")
        pending = _pending(engine)
    finally:
        engine.close()
    assert run.status == "completed-export-errors", [s.as_dict() for s in run.steps]
    step = run.steps[0]
    assert [e.error_name for e in step.errors] == [_ERROR_NAMES[code]], [e.as_dict() for e in step.errors]
    assert f"modify {refused[0]}: {code} {_ANSWERS[code][0]}" in step.errors[0].detail, step.errors[0].detail
    assert step.counters.get("export_updates") == _USERS - 1, step.counters
    assert pending == 1


def test_a_constraint_violation_every_write_gets_stays_each_persons_error(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """constraintViolation is about the value written (RFC 4511: it "violates constraints placed on the
    attribute"): every photo too large for the DC is each person's error, naming size and limit; no stop."""
    engine, _people, _names = _engine(ad_env, seed=1200)
    try:
        _refuse(monkeypatch, 19, None)
        run = engine.run_profile("Export")
        pending = _pending(engine)
    finally:
        engine.close()
    assert run.status == "completed-export-errors", [s.as_dict() for s in run.steps]
    assert [e.error_name for e in run.steps[0].errors] == ["constraint-violation"] * _USERS
    assert pending == _USERS


def test_an_account_without_the_grant_stops_the_step_once_naming_it_and_the_grant(
    ad_env: ADTestEnv, samba_kerberos: KerberosAccount
) -> None:
    """A service account that may not write thumbnailPhoto anywhere (no grant; check_permissions = false, so
    the DC's refusals are what tells): the first 5 people refused, the account may write no one else in
    their OU either (allowedAttributesEffective), so the step stops once, naming the account and the
    dsacls grant. Once granted, the next export writes everyone."""
    engine, people, names = _engine(ad_env, 1050, samba_kerberos)
    try:
        stopped = engine.run_profile("Export")
        pending_after = _pending(engine)
        grant_write(ad_env.ad, samba_kerberos, people, "thumbnailPhoto")
        resumed = engine.run_profile("Export")
        pending_final = _pending(engine)
    finally:
        engine.close()
    assert stopped.status == "stopped-permission-issue", [s.as_dict() for s in stopped.steps]
    step = stopped.steps[0]
    message = step.message
    assert f"(ldaps) refused the first {_K} writes of this step" in message and "not one succeeded" in message
    assert f"shows it on no one else in {people} either" in message, message
    _assert_stopped_for_the_grant(step, people)
    assert not step.counters.get("export_updates") and pending_after == _USERS, step.counters
    assert resumed.status == "success", [s.as_dict() for s in resumed.steps]
    assert pending_final == 0
    for i, name in enumerate(names):
        assert ad_env.read(name, "thumbnailPhoto", people) == [jpeg(1050 + i)], name


def test_people_refused_in_a_row_while_the_grant_reaches_others_are_their_own_errors(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five people in a row refused 50 (protected accounts, say) while the account may write the others of
    their OU (the administrator here): the confirmation finds the grant, so each is that person's error, and
    everyone else is written; the step completes."""
    engine, _people, _names = _engine(ad_env, seed=1060)
    try:
        refused = _refuse(monkeypatch, 50, _K)
        run = engine.run_profile("Export")
        pending = _pending(engine)
    finally:
        engine.close()
    assert run.status == "completed-export-errors", [s.as_dict() for s in run.steps]
    step = run.steps[0]
    assert [e.error_name for e in step.errors] == ["permission-issue"] * _K, [e.as_dict() for e in step.errors]
    assert len(refused) == _K and step.counters.get("export_updates") == _USERS - _K, step.counters
    assert pending == _K


def test_mvsync_run_against_an_account_refused_every_write_exits_4_naming_the_account_and_the_grant(
    ad_env: ADTestEnv, samba_kerberos: KerberosAccount
) -> None:
    """What the operator sees (``mvsync run Export``): exit code 4, stopped-permission-issue, the account and
    the dsacls grant once, no traceback."""
    people, _names, photos = ad_env.people_with_photos(_USERS, seed=1500)
    settings = kerberos_settings(samba_kerberos, export_connections=1, check_permissions=False)
    config = folder_to_ad(ad_env, people, photos, **settings)
    code, out, err = invoke("run", "Prepare", "-c", str(config))
    assert code == 0, out + err
    code, out, err = invoke("run", "Export", "-c", str(config))
    shown = " ".join((out + err).split())
    assert code == 4, shown
    assert "stopped-permission-issue" in shown and "Traceback" not in shown, shown
    assert f"refused the first {_K} writes of this step" in shown, shown
    assert "may not write thumbnailPhoto, whoever the person" in shown and "grant it with: dsacls" in shown, shown
    assert _cli_pending(config) == _USERS


def _withdraw_after_writes(
    monkeypatch: pytest.MonkeyPatch, ad_env: ADTestEnv, account: KerberosAccount, people: str, writes: int
) -> list[str]:
    """Withdraw ``account``'s grant on ``people`` (``withdraw_write``) once the DC has taken ``writes`` writes,
    before the next is sent; the DNs written are listed. With one export connection the order is fixed."""
    original = _export._modify
    written: list[str] = []

    def modify_then_withdraw(conn: Any, dn: str, changes: Any) -> dict[str, Any]:
        result: dict[str, Any] = original(conn, dn, changes)
        if result.get("result") == 0:
            written.append(dn)
            if len(written) == writes:
                withdraw_write(ad_env.ad, account, people, "thumbnailPhoto")
        return result

    monkeypatch.setattr(_export, "_modify", modify_then_withdraw)
    return written


def test_rights_withdrawn_in_the_middle_of_an_export_stop_the_step_once_naming_the_account_and_the_grant(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch, samba_kerberos: KerberosAccount
) -> None:
    """Found in the "one refused-everywhere rule" pass: the export judged only the first writes of a step, so
    an account whose grant an administrator withdrew after its first writes got one permission-issue per
    person left (thousands), and the step "completed with errors". Now 5 people refused in a row, none
    written since, and the account may write no one else in their OU (allowedAttributesEffective, read once
    to confirm): the step stops once, naming the account and the dsacls grant. The writes made are recorded,
    everyone else stays pending, nothing is lost. Real refusals: the grant is withdrawn on the DC."""
    users, before = 10, 3
    engine, people, names = _engine(ad_env, 1070, samba_kerberos, users=users, check_permissions=True)
    grant_write(ad_env.ad, samba_kerberos, people, "thumbnailPhoto")
    try:
        written = _withdraw_after_writes(monkeypatch, ad_env, samba_kerberos, people, before)
        run = engine.run_profile("Export")
        pending = _pending(engine)
    finally:
        engine.close()
    assert run.status == "stopped-permission-issue", [s.as_dict() for s in run.steps]
    step = run.steps[0]
    message = step.message
    assert f"(ldaps) refused {_K} writes in a row (" in message, message
    assert "with insufficientAccessRights after writes of this step had succeeded, none since" in message, message
    assert "the people written before are recorded" in message, message
    # one error per person refused before the rule could tell, not one per person left
    _assert_stopped_for_the_grant(step, people)
    assert step.counters.get("export_updates") == before and len(written) == before, step.counters
    assert pending == users - before  # the refused and the untried stay pending
    on_dc = {f"CN={name},{people}": ad_env.read(name, "thumbnailPhoto", people) for name in names}
    assert {dn for dn, photo in on_dc.items() if photo} == set(written)


def test_a_streak_the_grant_explains_counts_again_and_a_later_one_without_it_stops_the_step(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch, samba_kerberos: KerberosAccount
) -> None:
    """The first 5 writes refused (made up: people the grant does not reach) while the account may write
    their neighbours: the confirmation finds the grant, each is that person's error and the count starts
    again. Then the grant is withdrawn on the DC: the next 5 are refused for real, the confirmation finds no
    one writable, and the step stops once, saying these were 5 more in a row, none of the step written."""
    users = 2 * _K
    engine, people, _names = _engine(ad_env, 1080, samba_kerberos, users=users)
    grant_write(ad_env.ad, samba_kerberos, people, "thumbnailPhoto")
    original = _export._modify
    description, message = _ANSWERS[50]
    calls: list[str] = []

    def refuse_then_withdraw(conn: Any, dn: str, changes: Any) -> dict[str, Any]:
        calls.append(dn)
        if len(calls) <= _K:
            return {"result": 50, "description": description, "message": message}
        if len(calls) == _K + 1:  # the first streak was judged with the 5th answer: withdraw before the 6th
            withdraw_write(ad_env.ad, samba_kerberos, people, "thumbnailPhoto")
        result: dict[str, Any] = original(conn, dn, changes)
        return result

    monkeypatch.setattr(_export, "_modify", refuse_then_withdraw)
    try:
        run = engine.run_profile("Export")
        pending = _pending(engine)
    finally:
        engine.close()
    assert run.status == "stopped-permission-issue", [s.as_dict() for s in run.steps]
    step = run.steps[0]
    assert f"(ldaps) refused {_K} more writes in a row ({'; '.join(calls[_K:])}) with insufficientAccessRights" in (
        step.message
    ), step.message
    _assert_stopped_for_the_grant(step, people, users)
    assert len(calls) == users and not step.counters.get("export_updates") and pending == users
