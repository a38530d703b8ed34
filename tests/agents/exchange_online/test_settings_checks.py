"""The Exchange Online agent's settings as the CLI checks them before it contacts anything: a tenant_id the
authority contradicts, the schema without the agent's secrets, the token cache key's sources, doctor in app mode."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from pydantic import ValidationError

from connector.agents.exchange_server import ExchangeServerSettings
from connector.demo import dump_toml, write_secret
from connector.emulator import exo_agent_settings
from connector.net import authority_tenant_conflict
from tests.cli._configs import invoke

TENANT_A = "0b7c3d4e-1111-4222-8333-944455566677"
TENANT_B = "72f988bf-86f1-41af-91ab-2d7cd011db47"


def _write(root: Path, settings: dict[str, Any], **agents: dict[str, Any]) -> Path:
    """``root/mvsync.toml`` with the agent ``exo`` of ``settings`` (and ``agents``), and a profile ``imp``."""
    config = {
        "data_dir": "data",
        "store": {"url": "sqlite:///store.db"},
        "metaverse": {"schema": "person"},
        "agents": {"exo": {"type": "exchange-online-photos", "settings": settings}, **agents},
        "run_profiles": {"imp": {"steps": [{"type": "full-import", "agent": "exo"}]}},
    }
    path = root / "mvsync.toml"
    path.write_text(dump_toml(config), encoding="utf-8")
    return path


def _closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens (a request there would fail: connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("authority", "tenant_id", "contradicts"),
    [
        (f"https://login.microsoftonline.com/{TENANT_A}", TENANT_B, True),
        (f"https://login.microsoftonline.com/{TENANT_A}/v2.0", TENANT_B, True),
        (f"https://login.microsoftonline.us/{TENANT_A}", TENANT_B, True),  # US Government
        (f"https://login.chinacloudapi.cn/{TENANT_A}", TENANT_B, True),  # operated by 21Vianet
        (f"https://login.microsoftonline.com/{TENANT_A}", TENANT_A.upper(), False),
        (f"https://login.microsoftonline.us/{TENANT_A}", TENANT_A, False),
        ("https://login.microsoftonline.com/common", TENANT_B, False),
        ("https://login.microsoftonline.com/organizations", TENANT_B, False),
        ("https://login.microsoftonline.com/consumers", TENANT_B, False),
        ("https://login.microsoftonline.com/contoso.onmicrosoft.com", TENANT_B, False),  # a domain: which tenant?
        (f"https://login.microsoftonline.com/{TENANT_A}", "contoso.com", False),
        ("https://login.microsoftonline.com/contoso.com", "contoso.onmicrosoft.com", False),  # maybe one tenant
        ("https://contoso.b2clogin.com/tfp/contoso.onmicrosoft.com/B2C_1_signin", TENANT_B, False),
        ("https://adfs.contoso.com/adfs", TENANT_B, False),
        (f"https://{TENANT_A}.ciamlogin.com", TENANT_B, False),  # the tenant in the host name: not read
        ("https://login.microsoftonline.com", TENANT_B, False),
    ],
)
def test_only_two_different_tenant_ids_are_a_contradiction(authority: str, tenant_id: str, contradicts: bool) -> None:
    said = authority_tenant_conflict(authority, tenant_id)
    assert (said is not None) == contradicts, said
    if said is not None:
        assert f"tenant_id {tenant_id}" in said and f"authority {authority}" in said and TENANT_A in said


def test_a_tenant_id_the_authority_contradicts_is_a_configuration_error_before_any_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by QA: authority naming tenant A and tenant_id tenant B were accepted; the token came from A
    while the agent named itself by B. Now every command refuses the settings (exit 2) naming both keys
    and both values, before it sends anything: the authority here is a closed port, which a request
    would have met as an outage (exit 4)."""
    monkeypatch.delenv("MVSYNC_TOKEN_CACHE_KEY", raising=False)
    authority = f"https://127.0.0.1:{_closed_port()}/{TENANT_A}"
    settings = {"tenant_id": TENANT_B, "client_id": "app", "authority": authority, "instance_discovery": False}
    config = _write(tmp_path, {**settings, "auth_mode": "app", "client_secret": {"env": "EXO_SECRET"}})
    for command in (["auth", "status", "exo"], ["run", "imp"]):
        code, out, err = invoke(*command, "-c", str(config), env={"EXO_SECRET": "not-the-point"})
        said = " ".join(err.split())
        assert code == 2, out + err
        assert f"agents.exo.settings: tenant_id {TENANT_B} and authority {authority} name different tenants" in said
        assert f"(the authority's is {TENANT_A})" in said and "cannot reach" not in said
        assert "Traceback" not in out + err and "not-the-point" not in out + err


def test_the_exchange_server_agent_refuses_the_same_contradiction() -> None:
    """Its hybrid modern authentication (auth = "oauth") takes tenant_id and authority the same way."""
    settings = {
        "ews_url": "https://mail.contoso.com/EWS/Exchange.asmx",
        "auth": "oauth",
        "tenant_id": TENANT_B,
        "client_id": "app",
        "client_secret": "not-the-point",
        "mailboxes": ["a@contoso.com"],
    }
    ExchangeServerSettings.model_validate({**settings, "authority": f"https://login.microsoftonline.com/{TENANT_B}"})
    with pytest.raises(ValidationError, match=f"tenant_id {TENANT_B} and authority .* name different tenants"):
        ExchangeServerSettings.model_validate(
            {**settings, "authority": f"https://login.microsoftonline.com/{TENANT_A}"}
        )


def _attributes(out: str) -> dict[str, dict[str, Any]]:
    """The attributes of the one object class in ``mvsync schema --json``'s output, by name."""
    [object_class] = json.loads(out)["object_classes"]
    return {attribute["name"]: attribute for attribute in object_class["attributes"]}


def test_the_schema_prints_without_the_settings_it_does_not_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by QA: `mvsync schema exo` resolved every setting of the agent first (the tenant's variables,
    the client secret's file), none of which its schema reads, and stopped with exit 2 where they were not
    in place (a workstation writing the rules). Now it reads what the schema depends on alone: nothing for
    exo, extra_attributes for ad, which is named when it cannot be resolved or parsed."""
    for name in ("MVSYNC_EXO_TENANT_ID", "MVSYNC_EXO_CLIENT_ID", "MVSYNC_TOKEN_CACHE_KEY", "MVSYNC_AD_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    exo = {
        "tenant_id": {"env": "MVSYNC_EXO_TENANT_ID"},
        "client_id": {"env": "MVSYNC_EXO_CLIENT_ID"},
        "auth_mode": "app",
        "client_secret": {"file": "secrets/exo-secret"},  # not there
        "token_cache_key_file": "secrets/cache.key",  # not there either
    }
    ad: dict[str, Any] = {
        "host": "dc1.contoso.com",
        "bind_dn": "CONTOSO\\svc-mvsync",
        "password": {"env": "MVSYNC_AD_PASSWORD"},
        "base_dns": ["OU=People,DC=contoso,DC=com"],
        "extra_attributes": ["employeeID", "proxyAddresses|string[]"],
    }
    config = _write(tmp_path, exo, ad={"type": "active-directory", "settings": ad})
    code, out, err = invoke("schema", "exo", "-c", str(config), "--json")
    assert code == 0, out + err
    assert {"id", "mail", "EXOPhoto"} <= set(_attributes(out))
    code, out, err = invoke("schema", "ad", "-c", str(config), "--json")
    assert code == 0, out + err
    shown = _attributes(out)
    assert "employeeID" in shown and shown["proxyAddresses"]["multivalued"]

    for extra, named in (
        ({"env": "AD_EXTRA_UNSET"}, "extra_attributes: environment variable AD_EXTRA_UNSET is not set"),
        (["bad name|string"], "extra_attributes.name: String should match pattern"),
    ):
        config = _write(tmp_path, exo, ad={"type": "active-directory", "settings": {**ad, "extra_attributes": extra}})
        code, out, err = invoke("schema", "ad", "-c", str(config))
        assert code == 2 and f"{config}: agents.ad.settings.{named}" in " ".join(err.split()), out + err


def _emulated(emu: Any, root: Path, **settings: Any) -> Path:
    """``root/mvsync.toml``: the agent ``exo`` on the emulator, its refresh token in an owner-only file."""
    token = write_secret(root / "secrets" / "refresh-token", emu.info["refresh_token"])
    return _write(root, exo_agent_settings(emu.info, refresh_token={"file": str(token)}, **settings))


def _doctor(config: Path) -> tuple[int, dict[str, dict[str, Any]]]:
    """``mvsync doctor``'s exit code and its findings about the configuration, by check."""
    code, out, err = invoke("doctor", "-c", str(config), "--json")
    assert "Traceback" not in out + err, out + err
    return code, {f["check"]: f for f in json.loads(out)["findings"] if f["area"] == "config"}


def test_the_token_cache_key_in_the_environment_wins_over_a_key_file_that_is_not_there(
    make_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by QA: with MVSYNC_TOKEN_CACHE_KEY set, a run was refused before its first step because the
    configured token_cache_key_file did not exist, though the key in use is the variable's (it wins).
    Now a file that is not read is not required; doctor says why; without the variable it still is."""
    emu = make_emulator(users=5)
    config = _emulated(emu, tmp_path, token_cache_key_file="secrets/cache.key")
    monkeypatch.setenv("MVSYNC_TOKEN_CACHE_KEY", Fernet.generate_key().decode())
    code, out, err = invoke("run", "imp", "-c", str(config))
    assert code == 0, out + err
    assert not (tmp_path / "secrets" / "cache.key").exists()
    code, findings = _doctor(config)
    key_file = findings["agents.exo.settings.token_cache_key_file"]
    assert key_file["severity"] == "ok", key_file
    assert key_file["message"] == (
        "not used: the environment variable MVSYNC_TOKEN_CACHE_KEY (token_cache_key_env) is set: its key is used"
    )
    assert findings["agents.exo.token-cache"]["severity"] == "ok" and code == 0, findings

    monkeypatch.delenv("MVSYNC_TOKEN_CACHE_KEY")
    code, out, err = invoke("run", "imp", "-c", str(config))
    said = " ".join(err.split())
    assert code == 2 and "agents.exo.settings.token_cache_key_file: " in said, out + err
    assert "cache.key does not exist: run `mvsync auth login exo`, which creates it" in said


def test_doctor_says_the_token_cache_check_does_not_apply_in_app_mode(
    make_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by QA: in app mode (client credentials, no token cache) doctor's token-cache check failed
    with the credential's refusal, as if a cache were at fault, and a token_cache_key_file left in the
    settings was an error saying to run `mvsync auth login`, which refuses app mode (after creating that
    key file for nothing). Now the check says it does not apply, the credential's refusal is reachable's
    alone, the key file is not used, and auth login says there is nothing to sign in before it writes."""
    monkeypatch.delenv("MVSYNC_TOKEN_CACHE_KEY", raising=False)
    emu = make_emulator(users=5)
    wrong = write_secret(tmp_path / "secrets" / "exo-secret", "not-the-secret")
    config = _emulated(
        emu, tmp_path, auth_mode="app", client_secret={"file": str(wrong)}, token_cache_key_file="secrets/cache.key"
    )
    code, findings = _doctor(config)
    assert code == 6
    assert [check for check, f in findings.items() if f["severity"] != "ok"] == ["agents.exo.reachable"]
    assert "AADSTS7000215" in findings["agents.exo.reachable"]["message"]
    assert findings["agents.exo.token-cache"]["message"] == (
        "does not apply: auth_mode is 'app': no token cache is kept (each process gets its token with the credential)"
    )
    assert findings["agents.exo.settings.token_cache_key_file"]["message"] == (
        "not used: auth_mode is 'app': no token cache is kept, so no key is read"
    )

    code, out, err = invoke("auth", "login", "exo", "-c", str(config))
    said = " ".join(err.split())
    assert code == 2 and "agents.exo.settings.auth_mode: auth_mode is 'app': there is nothing to sign in" in said, out
    assert not (tmp_path / "secrets" / "cache.key").exists()
