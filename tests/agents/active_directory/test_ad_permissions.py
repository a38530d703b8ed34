"""Write rights read up front (``allowedAttributesEffective``): a missing right stops the export step
before anything is written, and names the account, attribute, OU and the ``dsacls`` grant."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from ldap3 import Connection

from connector.agents.active_directory import ActiveDirectorySettings
from connector.agents.active_directory._connection import Link
from connector.agents.active_directory._kerberos import keytab_principal
from connector.agents.active_directory._permissions import account_label
from connector.config import config_from_dict
from connector.engine import Engine, StepResult
from connector.sdk import AttributeChange, ExportStatus, StopRunError
from tests.agents.active_directory.conftest import ADTestEnv, jpeg
from tests.agents.active_directory.test_ad_export import update
from tests.agents.active_directory.test_ad_kerberos import _engine_config, kerberos_settings
from tests.conftest import require_or_skip
from tests.harness.samba_dc import KerberosAccount, SambaUnavailable, deny_write, grant_write, service_principal

pytestmark = pytest.mark.samba


def _export_step(ad_env: ADTestEnv, config: dict[str, Any]) -> StepResult:
    """The export step of the configuration's "Cycle" profile, run through the engine."""
    engine = Engine(config_from_dict(config, base_dir=ad_env.tmp_path))
    try:
        run = engine.run_profile("Cycle")
    finally:
        engine.close()
    return next(s for s in run.steps if s.kind == "export")


def _two_ous(ad_env: ADTestEnv, account: KerberosAccount) -> tuple[str, str, dict[str, str], dict[str, str]]:
    """``people`` (thumbnailPhoto delegated to the account) and ``other`` (nothing delegated)."""
    people = ad_env.sub_ou("people")
    other = ad_env.sub_ou("other")
    grant_write(ad_env.ad, account, people, "thumbnailPhoto")
    good = ad_env.add_users(ad_env.specs(3, photos=False), ou=people)
    bad = ad_env.add_users(ad_env.specs(2, prefix="x", photos=False), ou=other)
    return people, other, good, bad


def test_rights_are_read_in_the_resolve_search_without_extra_round_trips(
    ad_env: ADTestEnv, samba_kerberos: KerberosAccount
) -> None:
    people, _other, good, _bad = _two_ous(ad_env, samba_kerberos)
    connector = ad_env.connector(**kerberos_settings(samba_kerberos, base_dns=[people]))
    results = connector.export(
        [update(g, AttributeChange.replace("thumbnailPhoto", jpeg(i))) for i, g in enumerate(good.values())]
    )
    assert [r.status for r in results] == [ExportStatus.SUCCESS] * 3
    stats = connector.export_stats
    assert (stats.rights_checked, stats.rights_reads, stats.writes) == (3, 0, 3)


def test_missing_right_stops_the_step_before_any_write(ad_env: ADTestEnv, samba_kerberos: KerberosAccount) -> None:
    people, other, good, bad = _two_ous(ad_env, samba_kerberos)
    usn_before = {n: ad_env.usn(n, people) for n in good} | {n: ad_env.usn(n, other) for n in bad}
    connector = ad_env.connector(**kerberos_settings(samba_kerberos, base_dns=[people, other]))
    changes = [
        update(g, AttributeChange.replace("thumbnailPhoto", jpeg(i)))
        for i, g in enumerate([*good.values(), *bad.values()])
    ]
    with pytest.raises(StopRunError) as caught:
        connector.export(changes)
    x0, x1 = (f"CN={n},{other}" for n in bad)
    assert caught.value.status == "stopped-permission-issue"
    assert str(caught.value) == (
        "the export stopped before writing anything (allowedAttributesEffective, read up front): "
        f"MVSYNC\\svc-mvsync may not write thumbnailPhoto on 2 object(s) in {other} ({x0}; {x1}); "
        f'grant it with: dsacls "{other}" /I:S /G "MVSYNC\\svc-mvsync:RPWP;thumbnailPhoto;user"'
    )
    # nothing was written, not even to the objects the account may write
    assert {n: ad_env.usn(n, people) for n in good} | {n: ad_env.usn(n, other) for n in bad} == usn_before
    assert connector.export_stats.writes == 0


def test_an_object_the_ou_grant_does_not_reach_fails_alone_and_the_others_are_written(
    ad_env: ADTestEnv, samba_kerberos: KerberosAccount
) -> None:
    """Found in a bad-day pass: one person in a delegated OU whose own permissions keep the account out
    (a protected account, adminCount = 1, or a deny entry) stopped the export with "grant it with:
    dsacls <the OU> ...", the grant that was there already. The message was then made right, but the
    step still stopped, before writing anyone, on every run: one administrator with a photo kept
    everyone's photos out of AD. Now that person alone is a per-object permission-issue, not written,
    with what to do; the others are written."""
    people, _other, good, _bad = _two_ous(ad_env, samba_kerberos)
    names = list(good)
    blocked = f"CN={names[1]},{people}"
    deny_write(ad_env.ad, samba_kerberos, blocked, "thumbnailPhoto")
    usn_blocked = ad_env.usn(names[1], people)
    connector = ad_env.connector(**kerberos_settings(samba_kerberos, base_dns=[people]))
    results = connector.export(
        [update(g, AttributeChange.replace("thumbnailPhoto", jpeg(i))) for i, g in enumerate(good.values())]
    )
    assert [(r.status, r.error_name) for r in results] == [
        (ExportStatus.SUCCESS, ""),
        (ExportStatus.FAILED, "permission-issue"),
        (ExportStatus.SUCCESS, ""),
    ], results
    detail = results[1].error_detail
    assert detail.startswith(f"MVSYNC\\svc-mvsync may not write thumbnailPhoto on {blocked} "), detail
    assert f'dsacls "{people}" /I:S /G' not in detail  # not the grant that is there already
    assert f"it may write it on 2 other object(s) there, so the grant on {people} exists" in detail
    assert f'See which with: dsacls "{blocked}"' in detail
    assert f'dsacls "CN=AdminSDHolder,CN=System,{ad_env.ad.base_dn}" /G "MVSYNC\\svc-mvsync:RPWP;thumbnailPhoto"' in (
        detail
    )
    assert connector.export_stats.writes == 2
    assert ad_env.usn(names[1], people) == usn_blocked  # nothing was sent for that person
    assert [bool(ad_env.read(n, "thumbnailPhoto", people)) for n in names] == [True, False, True]
    # the next export has that person alone (the retry of the error): the neighbours still show the grant
    alone = ad_env.connector(**kerberos_settings(samba_kerberos, base_dns=[people]))
    again = alone.export([update(good[names[1]], AttributeChange.replace("thumbnailPhoto", jpeg(1)))])
    assert [(r.status, r.error_name) for r in again] == [(ExportStatus.FAILED, "permission-issue")], again
    assert "it may write it on 2 other object(s) there" in again[0].error_detail, again[0].error_detail
    assert alone.export_stats.writes == 0 and ad_env.usn(names[1], people) == usn_blocked


def test_one_person_the_grant_does_not_reach_is_named_by_the_engine_and_everyone_else_is_exported(
    ad_env: ADTestEnv, samba_kerberos: KerberosAccount
) -> None:
    """The same through the engine with the default check (the rights of the whole step read before the
    first batch): the step ends completed-export-errors, its one error names the person."""
    people = ad_env.sub_ou("people")
    grant_write(ad_env.ad, samba_kerberos, people, "thumbnailPhoto")
    names = list(ad_env.add_users(ad_env.specs(5, photos=False), ou=people))
    deny_write(ad_env.ad, samba_kerberos, f"CN={names[2]},{people}", "thumbnailPhoto")
    photos = ad_env.tmp_path / "hr-photos"
    photos.mkdir()
    for i, name in enumerate(names):
        (photos / f"{name}.jpg").write_bytes(jpeg(700 + i))
    export = _export_step(ad_env, _engine_config(ad_env, samba_kerberos, people, photos))
    assert export.status == "completed-export-errors", export.as_dict()
    assert export.counters.get("export_updates") == 4, export.counters
    assert [(e.error_name, e.display) for e in export.errors] == [
        ("permission-issue", f"User u2 ({names[2]}@mvsync.test)")
    ], export.errors
    assert [bool(ad_env.read(n, "thumbnailPhoto", people)) for n in names] == [True, True, False, True, True]


def test_attribute_not_delegated_is_named(ad_env: ADTestEnv, samba_kerberos: KerberosAccount) -> None:
    people, _other, good, _bad = _two_ous(ad_env, samba_kerberos)
    connector = ad_env.connector(
        **kerberos_settings(samba_kerberos, base_dns=[people]), export_attributes=("thumbnailPhoto", "telephoneNumber")
    )
    guid = next(iter(good.values()))
    name = next(iter(good))
    change = update(
        guid, AttributeChange.replace("thumbnailPhoto", jpeg(1)), AttributeChange.replace("telephoneNumber", "+1 555")
    )
    with pytest.raises(StopRunError, match=r"may not write telephoneNumber on 1 object\(s\)") as caught:
        connector.export([change])
    assert "thumbnailPhoto" not in str(caught.value).split("grant it with")[0]
    assert ad_env.read(name, "thumbnailPhoto", people) == []  # the permitted attribute was not written either


@pytest.mark.parametrize("batch_size", [100, 1])
def test_engine_export_step_stops_with_permission_issue(
    ad_env: ADTestEnv, samba_kerberos: KerberosAccount, tmp_path: Path, batch_size: int
) -> None:
    """With one object per batch too: the whole step's rights are read before its first write."""
    people, other, good, bad = _two_ous(ad_env, samba_kerberos)
    photos = tmp_path / "hr"
    photos.mkdir()
    for i, name in enumerate([*good, *bad]):
        (photos / f"{name}.jpg").write_bytes(jpeg(800 + i))
    config = _engine_config(ad_env, samba_kerberos, people, photos)
    config["agents"]["ad"]["settings"]["base_dns"] = [people, other]
    for step in config["run_profiles"]["Cycle"]["steps"]:
        if step["type"] == "export":
            step["batch_size"] = batch_size
    export = _export_step(ad_env, config)
    assert export.status == "stopped-permission-issue", export.as_dict()
    assert f'dsacls "{other}"' in export.message and "MVSYNC\\svc-mvsync" in export.message
    for name in good:
        assert ad_env.read(name, "thumbnailPhoto", people) == []
    for name in bad:
        assert ad_env.read(name, "thumbnailPhoto", other) == []


def test_doctor_checks_a_sample_object_per_base_dn(
    ad_env: ADTestEnv, samba_kerberos: KerberosAccount, tmp_path: Path
) -> None:
    from connector.doctor import run_doctor

    people, other, good, bad = _two_ous(ad_env, samba_kerberos)
    empty = ad_env.sub_ou("empty")
    config = _engine_config(ad_env, samba_kerberos, people, tmp_path)
    config["agents"]["ad"]["settings"]["base_dns"] = [people, other, empty]
    report = run_doctor(config_from_dict(config, base_dir=ad_env.tmp_path), store=False)
    verdicts = [(f.severity, f.message) for f in report.findings if f.check == "agents.ad.write-permissions"]
    assert [severity for severity, _ in verdicts] == ["ok", "error", "warning"]
    (_, fine), (_, refused), (_, nothing) = verdicts
    sample_good = fine.split(" on ", 1)[1].split(" (sample", 1)[0]
    sample_bad = refused.split(" on ", 1)[1].split(" (sample", 1)[0]
    assert sample_good in {f"CN={n},{people}" for n in good} and sample_bad in {f"CN={n},{other}" for n in bad}
    assert fine == f"MVSYNC\\svc-mvsync may write thumbnailPhoto on {sample_good} (sample of {people})"
    assert refused == (
        f"MVSYNC\\svc-mvsync may not write thumbnailPhoto on {sample_bad} (sample of {other}); grant it with: "
        f'dsacls "{other}" /I:S /G "MVSYNC\\svc-mvsync:RPWP;thumbnailPhoto;user"'
    )
    assert nothing == f"no user under {empty} to check write rights on"
    assert not report.ok and report.exit_code == 6


def test_doctor_says_an_export_flow_to_an_attribute_the_directory_computes_cannot_write_not_to_grant_it(
    ad_env: ADTestEnv,
) -> None:
    """Found in the QA pass: an export flow to whenChanged (import-only) passed every check before the export,
    which stopped the step; doctor advised a dsacls grant for it, which cannot help. The flow to
    thumbnailPhoto is still checked."""
    ad_env.add_users(ad_env.specs(1, photos=False))
    connector = ad_env.connector(export_attributes=("thumbnailPhoto", "whenChanged"), open=False)
    assert connector.check().ok
    (computed, severity_computed), (sample, severity_sample) = [(m, s) for _, s, m in connector.doctor_checks()]
    assert severity_computed == "error" and computed.startswith("the directory computes whenChanged (import-only)")
    assert "remove the export flow that names it" in computed and "dsacls" not in computed, computed
    assert severity_sample == "ok" and "may write thumbnailPhoto on" in sample and "whenChanged" not in sample, sample


def test_doctor_says_an_export_flow_to_an_attribute_the_dcs_schema_lacks_is_none_not_to_grant_it(
    ad_env: ADTestEnv,
) -> None:
    """Found (QA): doctor advised a dsacls grant for an export flow to a misspelt attribute (thumbnailPhotoo),
    which cannot help: the DC refuses every write of an attribute its schema lacks. Now doctor names it as
    none, as the export's stop does; the flow to thumbnailPhoto is still checked."""
    ad_env.add_users(ad_env.specs(1, photos=False))
    connector = ad_env.connector(export_attributes=("thumbnailPhoto", "thumbnailPhotoo"), open=False)
    assert connector.check().ok
    (unknown, severity_unknown), (sample, severity_sample) = [(m, s) for _, s, m in connector.doctor_checks()]
    assert severity_unknown == "error", unknown
    assert unknown.startswith(f"thumbnailPhotoo: not an attribute of the directory on {ad_env.ad.host}"), unknown
    assert "correct the cs of the export flow" in unknown and "dsacls" not in unknown, unknown
    assert severity_sample == "ok" and "may write thumbnailPhoto on" in sample and "Photoo" not in sample, sample


def test_account_without_any_right_is_read_object_by_object_and_named_by_its_dn(ad_env: ADTestEnv) -> None:
    from tests.agents.active_directory.test_ad_engine import low_privilege_account

    guids = ad_env.add_users(ad_env.specs(2, photos=False))
    bind_dn, password = low_privilege_account(ad_env)
    weak = bind_dn.split(",", 1)[0].split("=", 1)[1]
    connector = ad_env.connector(bind_dn=bind_dn, password=password, delta_method="usn")
    changes = [update(g, AttributeChange.replace("thumbnailPhoto", jpeg(i))) for i, g in enumerate(guids.values())]
    with pytest.raises(StopRunError) as caught:
        connector.export(changes)
    # the DC returns no allowedAttributesEffective at all for such an account: each object was asked alone
    assert connector.export_stats.rights_reads == 2 and connector.export_stats.writes == 0
    assert f"MVSYNC\\{weak} may not write thumbnailPhoto on 2 object(s) in {ad_env.ou}" in str(caught.value)
    assert f'dsacls "{ad_env.ou}" /I:S /G "MVSYNC\\{weak}:RPWP;thumbnailPhoto;user"' in str(caught.value)
    for name in guids:
        assert ad_env.read(name, "thumbnailPhoto") == []


def _busy_for(monkeypatch: pytest.MonkeyPatch, marker: str) -> None:
    """The DC answers busy (51) to every search whose filter has ``marker``; the others run as they would."""
    real = Connection.search

    def busy_for_the_label(self: Connection, base: str, search_filter: str, *args: Any, **kwargs: Any) -> Any:
        if marker not in search_filter:
            return real(self, base, search_filter, *args, **kwargs)
        self.response = []
        self.result = {"result": 51, "description": "busy", "message": "problem 5001", "type": "searchResDone"}
        return False

    monkeypatch.setattr(Connection, "search", busy_for_the_label)


@pytest.mark.parametrize("search", ["account", "netbios-name"])
def test_a_busy_answer_to_the_account_name_s_search_leaves_the_refusal_whole(
    ad_env: ADTestEnv, samba_kerberos: KerberosAccount, monkeypatch: pytest.MonkeyPatch, caplog: Any, search: str
) -> None:
    """The refusal's ``DOMAIN\\name`` comes from two searches (the account's sAMAccountName, the domain's NetBIOS
    name) made after the rights were read. Either answered busy (51) stops nothing of its own: the refusal stands
    (stopped-permission-issue, the OU, the attribute, the grant), naming the account as configured (its
    principal), and a warning says why it is not ``DOMAIN\\name``; a busy answer is not taken for "no such account"
    in silence."""
    people, other, _good, bad = _two_ous(ad_env, samba_kerberos)
    _busy_for(monkeypatch, "(sAMAccountName=" if search == "account" else "(nETBIOSName=*)")
    connector = ad_env.connector(**kerberos_settings(samba_kerberos, base_dns=[people, other]))
    with caplog.at_level(logging.WARNING, logger="mvsync.agent.ad"), pytest.raises(StopRunError) as caught:
        connector.export(
            [update(g, AttributeChange.replace("thumbnailPhoto", jpeg(i))) for i, g in enumerate(bad.values())]
        )
    assert caught.value.status == "stopped-permission-issue", str(caught.value)
    account = samba_kerberos.principal
    assert f"{account} may not write thumbnailPhoto on 2 object(s) in {other}" in str(caught.value), str(caught.value)
    assert f'grant it with: dsacls "{other}" /I:S /G "{account}:RPWP;thumbnailPhoto;user"' in str(caught.value)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("51 busy: problem 5001" in w and f"as {account}" in w for w in warnings), warnings
    assert connector.export_stats.writes == 0


def test_a_keytab_without_principal_is_named_by_the_keytab_s_principal_in_the_grant(
    ad_env: ADTestEnv, samba_kerberos: KerberosAccount, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    """A keytab and no ``principal`` setting (MIT binds as the keytab's first principal). Before, the refusal
    named the account "the principal of keytab <path>", also inside the dsacls grant, which dsacls cannot take.
    Now the keytab's own principal is read: the account is found by it (``DOMAIN\\name``), and when the DC cannot
    say (busy), the grant names ``user@REALM``, a form dsacls takes."""
    people, other, _good, bad = _two_ous(ad_env, samba_kerberos)
    settings = kerberos_settings(samba_kerberos, principal=None, base_dns=[people, other])
    changes = [update(g, AttributeChange.replace("thumbnailPhoto", jpeg(i))) for i, g in enumerate(bad.values())]
    with pytest.raises(StopRunError) as found:
        ad_env.connector(**settings).export(changes)
    assert f'grant it with: dsacls "{other}" /I:S /G "MVSYNC\\svc-mvsync:RPWP;thumbnailPhoto;user"' in str(
        found.value
    ), str(found.value)

    _busy_for(monkeypatch, "(sAMAccountName=")
    connector = ad_env.connector(**settings)
    with caplog.at_level(logging.WARNING, logger="mvsync.agent.ad"), pytest.raises(StopRunError) as caught:
        connector.export(changes)
    account = samba_kerberos.principal
    assert account == f"svc-mvsync@{account.split('@')[1]}" and "keytab" not in str(caught.value)
    assert caught.value.status == "stopped-permission-issue", str(caught.value)
    assert f"{account} may not write thumbnailPhoto on 2 object(s) in {other}" in str(caught.value), str(caught.value)
    assert f'grant it with: dsacls "{other}" /I:S /G "{account}:RPWP;thumbnailPhoto;user"' in str(caught.value)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("51 busy: problem 5001" in w and f"as {account}" in w for w in warnings), warnings
    assert connector.export_stats.writes == 0
    for name in bad:
        assert ad_env.read(name, "thumbnailPhoto", other) == []


def test_a_service_principal_is_named_by_the_account_that_holds_its_spn(ad_env: ADTestEnv) -> None:
    """A bind as a service principal: a sync server's keytab for ``host/<fqdn>`` (from joining the domain), or
    ``principal = "HTTP/...@REALM"``. The grant names the account that holds the SPN, ``DOMAIN\\name``, which
    dsacls resolves. Before, the account was searched for by a sAMAccountName of "HTTP/sync01.mvsync.test",
    found nothing, and the grant named the SPN itself (or "the principal of keytab <path>"), which dsacls cannot
    take. The names are read from the session's DC over a simple bind; the Kerberos settings only name the
    identity (the keytab is the one ``setspn``/``ktpass`` would give the service: read, not bound with)."""
    try:
        spn = service_principal(ad_env.ad, "sync01.mvsync.test", account="svc-sync01")
    except SambaUnavailable as exc:
        require_or_skip(f"cannot register an SPN on the harness's DC: {exc}")
    principal = keytab_principal(spn.keytab)
    assert principal is not None and principal.startswith(f"{spn.spn}@"), principal
    domain_root = ad_env.ad.base_dn
    link = Link(ad_env.settings(), logging.getLogger("test"))
    try:
        for identity in ({"principal": principal}, {"keytab": str(spn.keytab)}):
            named = ActiveDirectorySettings.model_validate(
                {"host": ad_env.ad.host, "base_dns": [ad_env.ou], "auth": "kerberos", **identity}
            )
            assert account_label(link, named, domain_root) == "MVSYNC\\svc-sync01", identity
    finally:
        link.close()
