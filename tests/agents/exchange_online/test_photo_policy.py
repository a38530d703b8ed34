"""The tenant's photo policy (``/beta/admin/people/photoUpdateSettings``): the emulator serves it, the
Exchange Online agent reads it before writing photos (refuse / warn) and ``doctor`` shows it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from connector.sdk import AttributeChange, CSEntryChange, ExportStatus, StopRunError
from tests.agents.exchange_online.conftest import make_connector
from tests.harness.emulator import app_headers, emulator_http

pytestmark = pytest.mark.usefixtures("cache_key")

_SCOPES = (
    "https://graph.microsoft.com/User.Read.All",
    "https://graph.microsoft.com/ProfilePhoto.ReadWrite.All",
    "https://graph.microsoft.com/PeopleSettings.Read.All",
)
#: Delegated permissions the admin consented to, PeopleSettings.Read.All included.
_CONSENTED = ["User.Read", "User.Read.All", "ProfilePhoto.ReadWrite.All", "PeopleSettings.Read.All"]
_JPEG = (Path(__file__).parents[2] / "data" / "astronaut.jpg").read_bytes()


def _policy_url(emu: Any) -> str:
    return emu.info["graph_url"].replace("/v1.0", "/beta") + "/admin/people/photoUpdateSettings"


def test_emulator_serves_the_photo_policy_with_its_permissions(make_emulator: Any) -> None:
    emu = make_emulator(users=3)
    http = emulator_http(emu)
    denied = http.get(_policy_url(emu), headers=app_headers(emu), timeout=10)
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "Authorization_RequestDenied"

    emu.admin.set_app_roles(["User.Read.All", "PeopleSettings.Read.All"])
    got = http.get(_policy_url(emu), headers=app_headers(emu), timeout=10)
    assert got.status_code == 200
    assert {k: got.json()[k] for k in ("source", "allowedRoles")} == {"source": "cloud", "allowedRoles": []}
    assert got.json()["@odata.context"].endswith("/beta/$metadata#admin/people/photoUpdateSettings/$entity")
    read_only = http.patch(_policy_url(emu), json={"source": "onPremises"}, headers=app_headers(emu), timeout=10)
    assert read_only.status_code == 403

    emu.admin.set_app_roles(["PeopleSettings.ReadWrite.All"])
    patched = http.patch(_policy_url(emu), json={"source": "onPremises"}, headers=app_headers(emu), timeout=10)
    assert patched.status_code == 200 and patched.json()["source"] == "onPremises"
    bad = http.patch(_policy_url(emu), json={"source": "elsewhere"}, headers=app_headers(emu), timeout=10)
    assert bad.status_code == 400
    assert http.delete(_policy_url(emu), headers=app_headers(emu), timeout=10).status_code == 204
    assert http.get(_policy_url(emu), headers=app_headers(emu), timeout=10).status_code == 404
    # beta only: v1.0 has no such segment
    v1 = http.get(emu.info["graph_url"] + "/admin/people/photoUpdateSettings", headers=app_headers(emu), timeout=10)
    assert v1.status_code == 400


def _photo_export(emu: Any, tmp_path: Path, **settings: Any) -> tuple[Any, str, list[Any]]:
    """Export one photo to a cloud mailbox user; returns (connector result or error, user id, results)."""
    user = next(u for u in emu.admin.users() if u.get("mail") and u["mailbox"] == "cloud")
    change = CSEntryChange.update("EXOUser", user["id"], [AttributeChange.replace("EXOPhoto", _JPEG)])
    change.identifier = "1"
    conn = make_connector(emu, tmp_path, scopes=_SCOPES, **settings)
    conn.open()
    try:
        return None, user["id"], conn.export([change])
    except StopRunError as exc:
        return exc, user["id"], []
    finally:
        conn.close()


@pytest.fixture
def on_premises_tenant(make_emulator: Any) -> Any:
    emu = make_emulator(users=6)
    emu.admin.set_delegated_scopes(
        ["User.Read", "User.Read.All", "ProfilePhoto.ReadWrite.All", "PeopleSettings.Read.All"]
    )
    emu.admin.set_photo_update_settings({"source": "onPremises"})
    return emu


def test_export_refuses_when_photos_are_mastered_on_premises(on_premises_tenant: Any, tmp_path: Path) -> None:
    emu = on_premises_tenant
    before = {u["id"]: emu.admin.get_photo(u["id"]) for u in emu.admin.users() if u.get("mail")}
    error, user_id, results = _photo_export(emu, tmp_path)
    assert results == [] and isinstance(error, StopRunError)
    assert error.status == "stopped-photo-policy"
    assert str(error) == (
        "the tenant masters user photos on-premises (photoUpdateSettings source = onPremises), yet agent exo has "
        "an export flow that writes photos to Exchange Online: nothing was written. Write photos to AD "
        "thumbnailPhoto instead (Entra Connect carries them up), or set on_premises_photo_policy = 'warn' if the "
        "cloud writes are intended"
    )
    assert emu.admin.get_photo(user_id) == before[user_id]


def test_export_warns_and_writes_when_configured(
    on_premises_tenant: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    emu = on_premises_tenant
    with caplog.at_level(logging.WARNING):
        error, user_id, results = _photo_export(emu, tmp_path, on_premises_photo_policy="warn")
    assert error is None and [r.status for r in results] == [ExportStatus.SUCCESS]
    assert emu.admin.get_photo(user_id) is not None
    assert "on_premises_photo_policy = 'warn'" in caplog.text


def test_policy_unreadable_without_people_settings_permission(
    make_emulator: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    emu = make_emulator(users=6)
    emu.admin.set_photo_update_settings({"source": "onPremises"})
    conn = make_connector(emu, tmp_path)  # default scopes: no PeopleSettings.Read.All
    conn.open()
    try:
        checks = conn.doctor_checks()
    finally:
        conn.close()
    assert [(name, severity) for name, severity, _ in checks] == [("photo-policy", "warning")]
    assert "photo policy unknown: HTTP 403 Authorization_RequestDenied" in checks[0][2]
    assert "grant the app PeopleSettings.Read.All" in checks[0][2]


@pytest.mark.parametrize("setup", ["import-only", "policy-ignored"])
def test_an_agent_that_never_reads_the_policy_is_not_told_to_grant_its_permission(
    make_emulator: Any, tmp_path: Path, setup: str
) -> None:
    """Found by QA: an import-only agent (no export flow writes photos), or one set to ignore the policy,
    was told "grant the app PeopleSettings.Read.All", a permission it never uses."""
    from dataclasses import replace

    emu = make_emulator(users=6)
    if setup == "import-only":
        conn = make_connector(emu, tmp_path)
        conn.context = replace(conn.context, export_attributes={})
    else:
        conn = make_connector(emu, tmp_path, on_premises_photo_policy="ignore")
    conn.open()
    try:
        before = emu.admin.stats()["graph_requests"]
        [(name, severity, message)] = conn.doctor_checks()
        asked = emu.admin.stats()["graph_requests"] - before
    finally:
        conn.close()
    assert (name, severity) == ("photo-policy", "ok")
    assert message.startswith("not read: ") and "needs no PeopleSettings.Read.All" in message
    assert asked == 0  # the policy is not even read


@pytest.mark.parametrize(
    ("source", "severity", "text"),
    [
        ("cloud", "ok", "photo policy source = cloud (allowedRoles: none listed)"),
        (
            "onPremises",
            "error",
            "photo policy source = onPremises (allowedRoles: none listed); an export flow writes photos here, "
            "so export steps will stop (on_premises_photo_policy = 'refuse')",
        ),
    ],
)
def test_doctor_shows_the_policy(make_emulator: Any, tmp_path: Path, source: str, severity: str, text: str) -> None:
    from connector.config import config_from_dict
    from connector.doctor import run_doctor
    from connector.emulator import exo_agent_settings

    emu = make_emulator(users=4)
    emu.admin.set_delegated_scopes(
        ["User.Read", "User.Read.All", "ProfilePhoto.ReadWrite.All", "PeopleSettings.Read.All"]
    )
    emu.admin.set_photo_update_settings({"source": source})
    settings = exo_agent_settings(emu.info, refresh_token={"env": "MVSYNC_TEST_EXO_RT"}, scopes=list(_SCOPES))
    config = {
        "data_dir": str(tmp_path / "data"),
        "metaverse": {"schema": "person"},
        "agents": {
            "exo": {
                "type": "exchange-online-photos",
                "settings": settings,
                "projection": [{"object_class": "EXOUser", "metaverse_type": "person"}],
                "export_flow": [{"object_class": "EXOUser", "mv": "photo", "cs": "EXOPhoto"}],
            }
        },
    }
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MVSYNC_TEST_EXO_RT", emu.info["refresh_token"])
        report = run_doctor(config_from_dict(config, base_dir=tmp_path), store=False)
    found = [(f.severity, f.message) for f in report.findings if f.check == "agents.exo.photo-policy"]
    assert found == [(severity, text)]


#: Faults that hit only the policy read (Graph's other endpoints work): a 5xx on every attempt, and a
#: connection reset on every attempt (nothing answers the read: ServerDownError inside the client).
_POLICY_OUTAGES = {
    "5xx": {"504": 1.0, "retry_after": None, "path_pattern": "photoUpdateSettings"},
    "reset": {"reset": 1.0, "path_pattern": "photoUpdateSettings"},
}


@pytest.mark.parametrize("outage", sorted(_POLICY_OUTAGES))
def test_export_stops_when_an_outage_keeps_the_policy_unknown(
    on_premises_tenant: Any, tmp_path: Path, outage: str
) -> None:
    """Found reading ``guard_photo_export``: a read that failed (5xx, resets, retries used up) was
    "policy unknown, exporting photos anyway", as for a 403, so an outage of the beta endpoint let the
    export overwrite photos a tenant masters on-premises. Under "refuse" it now stops the step before
    any photo request, naming the URL and saying to run again later."""
    emu = on_premises_tenant
    emu.admin.set_faults(_POLICY_OUTAGES[outage])
    photo_requests = emu.admin.stats()["photo_requests"]
    before = {u["id"]: emu.admin.get_photo(u["id"]) for u in emu.admin.users() if u.get("mail")}
    error, user_id, results = _photo_export(emu, tmp_path, max_attempts=2, backoff_max_s=0.1)
    assert results == [] and isinstance(error, StopRunError), error
    assert error.status == "stopped-server-down"
    message = str(error)
    assert message.startswith(f"agent exo: could not read the tenant's photo policy ({_policy_url(emu)}): ")
    assert "Nothing was written" in message and "run the step again later" in message
    assert "on_premises_photo_policy = 'warn'" in message and "Bearer" not in message
    assert emu.admin.get_photo(user_id) == before[user_id]
    assert emu.admin.stats()["photo_requests"] == photo_requests  # not one photo request was sent


def test_an_outage_of_the_policy_read_warns_and_writes_under_warn(
    on_premises_tenant: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    emu = on_premises_tenant
    emu.admin.set_faults(_POLICY_OUTAGES["5xx"])
    with caplog.at_level(logging.WARNING):
        error, user_id, results = _photo_export(
            emu, tmp_path, on_premises_photo_policy="warn", max_attempts=2, backoff_max_s=0.1
        )
    assert error is None and [r.status for r in results] == [ExportStatus.SUCCESS]
    assert emu.admin.get_photo(user_id) is not None
    warned = [r.getMessage() for r in caplog.records if "photo policy" in r.getMessage()]
    assert len(warned) == 1 and "could not read the tenant's photo policy" in warned[0], warned
    assert "writing photos anyway (on_premises_photo_policy = 'warn')" in warned[0]


def test_doctor_says_an_outage_of_the_policy_read_would_stop_exports(on_premises_tenant: Any, tmp_path: Path) -> None:
    emu = on_premises_tenant
    emu.admin.set_faults(_POLICY_OUTAGES["5xx"])
    conn = make_connector(emu, tmp_path, scopes=_SCOPES, max_attempts=2, backoff_max_s=0.1)
    conn.open()
    try:
        checks = conn.doctor_checks()
    finally:
        conn.close()
    [(name, severity, message)] = checks
    assert (name, severity) == ("photo-policy", "warning")
    assert message.startswith(f"could not read the tenant's photo policy ({_policy_url(emu)}): ")
    assert "export steps stop until it can be read (on_premises_photo_policy = 'refuse')" in message
