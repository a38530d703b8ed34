"""Identity platform: OIDC discovery, token grants, Entra error bodies, and MSAL Python unmodified."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msal
import pytest
import requests

from connector.emulator import GraphEmulator
from tests.harness.emulator import emulator_http

GRAPH_SCOPE = ["https://graph.microsoft.com/User.Read.All"]


def _token(emu: GraphEmulator, http: requests.Session, **form: str) -> requests.Response:
    return http.post(emu.info["token_url"], data=form, timeout=10)


def _assert_aad_error(resp: requests.Response, status: int, error: str, code: int) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    assert body["error"] == error
    assert body["error_codes"] == [code]
    assert re.match(
        rf"AADSTS{code}: .+\r\nTrace ID: [0-9a-f-]{{36}}\r\nCorrelation ID: [0-9a-f-]{{36}}\r\n"
        r"Timestamp: \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ$",
        body["error_description"],
        re.S,
    )
    assert body["error_uri"].endswith(f"code={code}")
    assert body["trace_id"] and body["correlation_id"] and body["timestamp"]
    return body


def _pca(
    emu: GraphEmulator, http: requests.Session, cache: msal.SerializableTokenCache | None = None
) -> msal.PublicClientApplication:
    return msal.PublicClientApplication(
        emu.info["client_id"],
        authority=emu.info["authority"],
        instance_discovery=False,
        http_client=http,
        token_cache=cache,
    )


def test_openid_configuration_and_instance_discovery(graph_emulator: GraphEmulator) -> None:
    http = emulator_http(graph_emulator)
    info = graph_emulator.info
    doc = http.get(f"{info['authority']}/v2.0/.well-known/openid-configuration", timeout=10).json()
    assert doc["token_endpoint"] == info["token_url"]
    assert doc["device_authorization_endpoint"].endswith("/oauth2/v2.0/devicecode")
    assert doc["issuer"].endswith(f"/{info['tenant_id']}/v2.0")
    assert "private_key_jwt" in doc["token_endpoint_auth_methods_supported"]
    common = http.get(
        f"{info['authority'].rsplit('/', 1)[0]}/organizations/v2.0/.well-known/openid-configuration",
        timeout=10,
    ).json()
    assert common["issuer"].endswith("/{tenantid}/v2.0")
    resp = http.get(
        f"{info['authority'].rsplit('/', 1)[0]}/nosuchtenant/v2.0/.well-known/openid-configuration",
        timeout=10,
    )
    _assert_aad_error(resp, 400, "invalid_tenant", 90002)
    inst = http.get(f"{info['authority'].rsplit('/', 1)[0]}/common/discovery/instance", timeout=10).json()
    assert inst["tenant_discovery_endpoint"].endswith("/.well-known/openid-configuration")


def test_msal_client_credentials_with_secret(graph_emulator: GraphEmulator) -> None:
    http = emulator_http(graph_emulator)
    info = graph_emulator.info
    app = msal.ConfidentialClientApplication(
        info["client_id"],
        client_credential=info["client_secret"],
        authority=info["authority"],
        instance_discovery=False,
        http_client=http,
    )
    result = app.acquire_token_for_client(scopes=["https://graph.microsoft.com/.default"])
    assert result["token_type"] == "Bearer" and result["token_source"] == "identity_provider"
    assert app.acquire_token_for_client(scopes=["https://graph.microsoft.com/.default"])["token_source"] == "cache"
    resp = http.get(
        f"{info['graph_url']}/users?$top=1",
        headers={"Authorization": f"Bearer {result['access_token']}"},
        timeout=10,
    )
    assert resp.status_code == 200


@pytest.mark.parametrize("with_public_cert", [True, False], ids=["PS256-x5t#S256", "RS256-x5t"])
def test_msal_client_credentials_with_certificate(graph_emulator: GraphEmulator, with_public_cert: bool) -> None:
    http = emulator_http(graph_emulator)
    info = graph_emulator.info
    credential: dict[str, str] = {
        "private_key": Path(info["client_key"]).read_text(),
        "thumbprint": info["client_cert_thumbprint"],
    }
    if with_public_cert:
        credential["public_certificate"] = Path(info["client_cert"]).read_text()
    app = msal.ConfidentialClientApplication(
        info["client_id"],
        client_credential=credential,
        authority=info["authority"],
        instance_discovery=False,
        http_client=http,
    )
    result = app.acquire_token_for_client(scopes=["https://graph.microsoft.com/.default"])
    assert "access_token" in result, result


def test_forged_client_assertion_is_rejected(graph_emulator: GraphEmulator) -> None:
    http = emulator_http(graph_emulator)
    info = graph_emulator.info
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    other = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )
    app = msal.ConfidentialClientApplication(
        info["client_id"],
        client_credential={"private_key": other, "thumbprint": info["client_cert_thumbprint"]},
        authority=info["authority"],
        instance_discovery=False,
        http_client=http,
    )
    result = app.acquire_token_for_client(scopes=["https://graph.microsoft.com/.default"])
    assert result["error"] == "invalid_client" and 700027 in result["error_codes"]


def test_msal_refresh_token_then_silent_refresh_keeps_rotated_token(graph_emulator: GraphEmulator) -> None:
    http = emulator_http(graph_emulator)
    cache = msal.SerializableTokenCache()
    app = _pca(graph_emulator, http, cache)
    graph_emulator.admin.set_access_token_lifetime(120)  # < 300 s: MSAL treats it as expired at once
    first = app.acquire_token_by_refresh_token(graph_emulator.info["refresh_token"], scopes=GRAPH_SCOPE)
    assert "access_token" in first, first
    assert first["refresh_token"] != graph_emulator.info["refresh_token"]
    assert first["id_token_claims"]["preferred_username"] == graph_emulator.info["user"]
    accounts = app.get_accounts()
    assert len(accounts) == 1 and accounts[0]["username"] == graph_emulator.info["user"]
    rt_before = list(cache.search(msal.TokenCache.CredentialType.REFRESH_TOKEN))
    assert [r["secret"] for r in rt_before] == [first["refresh_token"]]
    silent = app.acquire_token_silent(GRAPH_SCOPE, account=accounts[0])
    assert silent is not None and silent["token_source"] == "identity_provider"
    assert silent["access_token"] != first["access_token"]
    rt_after = list(cache.search(msal.TokenCache.CredentialType.REFRESH_TOKEN))
    assert len(rt_after) == 1 and rt_after[0]["secret"] not in (
        first["refresh_token"],
        graph_emulator.info["refresh_token"],
    )
    assert cache.has_state_changed
    # Real Entra keeps the old refresh token valid until it expires.
    again = _pca(graph_emulator, emulator_http(graph_emulator)).acquire_token_by_refresh_token(
        first["refresh_token"], scopes=GRAPH_SCOPE
    )
    assert "access_token" in again
    resp = http.get(
        f"{graph_emulator.info['graph_url']}/me",
        timeout=10,
        headers={"Authorization": f"Bearer {silent['access_token']}"},
    )
    assert resp.json()["userPrincipalName"] == graph_emulator.info["user"]


def test_silent_with_long_lived_token_comes_from_cache(graph_emulator: GraphEmulator) -> None:
    app = _pca(graph_emulator, emulator_http(graph_emulator))
    app.acquire_token_by_refresh_token(graph_emulator.info["refresh_token"], scopes=GRAPH_SCOPE)
    silent = app.acquire_token_silent(GRAPH_SCOPE, account=app.get_accounts()[0])
    assert silent is not None and silent["token_source"] == "cache"


def test_revoked_refresh_token_gives_50173(graph_emulator: GraphEmulator) -> None:
    http = emulator_http(graph_emulator)
    rt = graph_emulator.info["refresh_token"]
    assert graph_emulator.admin.revoke_refresh_tokens() >= 1
    resp = _token(
        graph_emulator,
        http,
        client_id=graph_emulator.info["client_id"],
        grant_type="refresh_token",
        refresh_token=rt,
        scope="https://graph.microsoft.com/User.Read.All offline_access",
    )
    _assert_aad_error(resp, 400, "invalid_grant", 50173)
    app = _pca(graph_emulator, http)
    result = app.acquire_token_by_refresh_token(rt, scopes=GRAPH_SCOPE)
    assert result["error"] == "invalid_grant" and 50173 in result["error_codes"]


def test_silent_refresh_after_revocation_returns_error(graph_emulator: GraphEmulator) -> None:
    http = emulator_http(graph_emulator)
    app = _pca(graph_emulator, http)
    graph_emulator.admin.set_access_token_lifetime(60)
    app.acquire_token_by_refresh_token(graph_emulator.info["refresh_token"], scopes=GRAPH_SCOPE)
    graph_emulator.admin.revoke_refresh_tokens(graph_emulator.info["user"])
    account = app.get_accounts()[0]
    assert app.acquire_token_silent(GRAPH_SCOPE, account=account) is None
    error = app.acquire_token_silent_with_error(GRAPH_SCOPE, account=account)
    assert error is not None and 50173 in error["error_codes"]


@pytest.mark.parametrize("code", [700082, 70008])
def test_expired_refresh_token(graph_emulator_factory: Callable[..., GraphEmulator], code: int) -> None:
    emu = graph_emulator_factory(expired_refresh_token_code=code)
    emu.admin.expire_refresh_tokens()
    resp = _token(
        emu,
        emulator_http(emu),
        client_id=emu.info["client_id"],
        grant_type="refresh_token",
        refresh_token=emu.info["refresh_token"],
    )
    body = _assert_aad_error(resp, 400, "invalid_grant", code)
    assert "expired due to inactivity" in body["error_description"]


def test_strict_rotation_invalidates_used_token(graph_emulator_factory: Callable[..., GraphEmulator]) -> None:
    emu = graph_emulator_factory(strict_rotation=True)
    http = emulator_http(emu)
    form = {
        "client_id": emu.info["client_id"],
        "grant_type": "refresh_token",
        "refresh_token": emu.info["refresh_token"],
        "scope": "User.Read.All offline_access",
    }
    first = _token(emu, http, **form)
    assert first.status_code == 200 and first.json()["refresh_token"]
    _assert_aad_error(_token(emu, http, **form), 400, "invalid_grant", 50173)


def test_token_endpoint_errors(graph_emulator: GraphEmulator) -> None:
    emu, http = graph_emulator, emulator_http(graph_emulator)
    cid = emu.info["client_id"]
    default = "https://graph.microsoft.com/.default"
    bad_secret = _token(emu, http, client_id=cid, client_secret="wrong", grant_type="client_credentials", scope=default)
    body = _assert_aad_error(bad_secret, 401, "invalid_client", 7000215)
    assert "wrong" not in body["error_description"]
    _assert_aad_error(
        _token(emu, http, client_id=cid, grant_type="client_credentials", scope=default),
        401,
        "invalid_client",
        7000218,
    )
    _assert_aad_error(
        _token(
            emu,
            http,
            client_id=cid,
            client_secret=emu.info["client_secret"],
            grant_type="client_credentials",
            scope="User.Read",
        ),
        400,
        "invalid_scope",
        1002012,
    )
    _assert_aad_error(
        _token(
            emu,
            http,
            client_id=cid,
            client_secret=emu.info["client_secret"],
            grant_type="client_credentials",
            scope="https://example.com/.default",
        ),
        400,
        "invalid_resource",
        500011,
    )
    _assert_aad_error(
        _token(
            emu,
            http,
            client_id="00000000-0000-0000-0000-000000000001",
            grant_type="client_credentials",
            scope=default,
        ),
        400,
        "unauthorized_client",
        700016,
    )
    _assert_aad_error(_token(emu, http, client_id=cid, grant_type="password"), 400, "unsupported_grant_type", 70003)
    _assert_aad_error(
        _token(emu, http, client_id=cid, grant_type="refresh_token", refresh_token="garbage"),
        400,
        "invalid_grant",
        9002313,
    )
    consent = _assert_aad_error(
        _token(
            emu,
            http,
            client_id=cid,
            grant_type="refresh_token",
            refresh_token=emu.info["refresh_token"],
            scope="https://graph.microsoft.com/Directory.ReadWrite.All",
        ),
        400,
        "invalid_grant",
        65001,
    )
    assert consent["suberror"] == "consent_required"
    _assert_aad_error(
        _token(
            emu,
            http,
            client_id=cid,
            grant_type="refresh_token",
            refresh_token=emu.info["refresh_token"],
            scope="https://graph.microsoft.com/No.Such",
        ),
        400,
        "invalid_scope",
        70011,
    )
    unknown_tenant = http.post(
        emu.info["token_url"].replace(emu.info["tenant_id"], "nosuchtenant"),
        data={"client_id": cid, "grant_type": "client_credentials"},
        timeout=10,
    )
    _assert_aad_error(unknown_tenant, 400, "invalid_request", 90002)
    # HTTP Basic client authentication is accepted too.
    basic = http.post(
        emu.info["token_url"],
        auth=(cid, emu.info["client_secret"]),
        data={"grant_type": "client_credentials", "scope": default},
        timeout=10,
    )
    assert basic.status_code == 200 and 3600 <= basic.json()["expires_in"] <= 5400  # Entra: 60-90 min


def test_refresh_response_shape(graph_emulator: GraphEmulator) -> None:
    emu, http = graph_emulator, emulator_http(graph_emulator)
    resp = _token(
        emu,
        http,
        client_id=emu.info["client_id"],
        grant_type="refresh_token",
        client_info="1",
        refresh_token=emu.info["refresh_token"],
        scope="User.Read.All offline_access openid profile",
    )
    body = resp.json()
    assert resp.status_code == 200
    assert set(body) >= {
        "access_token",
        "refresh_token",
        "id_token",
        "client_info",
        "scope",
        "expires_in",
        "ext_expires_in",
        "token_type",
    }
    assert "https://graph.microsoft.com/User.Read.All" in body["scope"].split()
    no_oidc = _token(
        emu,
        http,
        client_id=emu.info["client_id"],
        grant_type="refresh_token",
        refresh_token=emu.info["refresh_token"],
        scope="User.Read.All",
    ).json()
    assert "refresh_token" not in no_oidc and "id_token" not in no_oidc and "client_info" not in no_oidc


def test_msal_device_code_flow_auto_approved(graph_emulator: GraphEmulator) -> None:
    app = _pca(graph_emulator, emulator_http(graph_emulator))
    flow = app.initiate_device_flow(scopes=GRAPH_SCOPE)
    assert flow["user_code"] and flow["interval"] == 1 and "devicelogin" in flow["verification_uri"]
    result = app.acquire_token_by_device_flow(flow)
    assert "access_token" in result and result["refresh_token"]
    assert app.get_accounts()[0]["username"] == graph_emulator.info["user"]


def test_device_code_pending_then_approved(graph_emulator_factory: Callable[..., GraphEmulator]) -> None:
    emu = graph_emulator_factory(device_code_auto_approve=False)
    http = emulator_http(emu)
    base = emu.info["authority"]
    flow = http.post(
        f"{base}/oauth2/v2.0/devicecode",
        data={"client_id": emu.info["client_id"], "scope": "User.Read.All offline_access openid"},
        timeout=10,
    ).json()
    form = {
        "client_id": emu.info["client_id"],
        "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
        "device_code": flow["device_code"],
    }
    _assert_aad_error(_token(emu, http, **form), 400, "authorization_pending", 70016)
    other = emu.admin.users()[1]
    emu.admin.approve_device_code(flow["user_code"], other["id"])
    body = _token(emu, http, **form).json()
    assert body["access_token"] and body["refresh_token"]
    me = http.get(
        f"{emu.info['graph_url']}/me", headers={"Authorization": f"Bearer {body['access_token']}"}, timeout=10
    ).json()
    assert me["id"] == other["id"]
    _assert_aad_error(_token(emu, http, **form), 400, "invalid_grant", 70000)  # redeemed once


def test_graph_401_for_missing_bad_and_expired_tokens(graph_emulator: GraphEmulator) -> None:
    emu, http = graph_emulator, emulator_http(graph_emulator)
    url = f"{emu.info['graph_url']}/users"
    token = emu.admin.issue_app_token()
    assert http.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code == 200
    cases = [
        ({}, "Access token is empty."),
        ({"Authorization": "Bearer nodots"}, "IDX14100"),
        ({"Authorization": "Bearer a.b.c"}, "Access token validation failure"),
    ]
    for headers, message in cases:
        resp = http.get(url, headers=headers, timeout=10)
        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == "InvalidAuthenticationToken"
        assert message in resp.json()["error"]["message"]
        assert resp.headers["WWW-Authenticate"].startswith('Bearer realm="", authorization_uri="')
        assert 'client_id="00000003-0000-0000-c000-000000000000"' in resp.headers["WWW-Authenticate"]
    emu.admin.expire_access_tokens()
    resp = http.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert resp.status_code == 401
    assert resp.json()["error"]["message"] == "Access token has expired or is not yet valid."
    inner = resp.json()["error"]["innerError"]
    assert set(inner) >= {"date", "request-id", "client-request-id"}


def test_access_token_lifetimes_vary_like_entra_unless_fixed(
    graph_emulator_factory: Callable[..., GraphEmulator],
) -> None:
    """60-90 min per token, drawn from the seed (the same run, the same lifetimes); spread 0 is exact."""

    def lifetimes(**config: Any) -> list[int]:
        emu = graph_emulator_factory(users=2, seed=4, **config)
        form = {
            "client_id": emu.info["client_id"],
            "client_secret": emu.info["client_secret"],
            "grant_type": "client_credentials",
            "scope": "https://graph.microsoft.com/.default",
        }
        with emulator_http(emu) as http:
            return [
                int(http.post(emu.info["token_url"], data=form, timeout=10).json()["expires_in"]) for _ in range(20)
            ]

    varied = lifetimes()
    assert all(3600 <= s <= 5400 for s in varied) and len(set(varied)) > 10
    assert lifetimes() == varied  # deterministic for a seed
    assert set(lifetimes(access_token_lifetime_spread=0.0)) == {3600}


def test_short_lived_token_expires_mid_run(graph_emulator: GraphEmulator) -> None:
    import time

    emu, http = graph_emulator, emulator_http(graph_emulator)
    emu.admin.set_access_token_lifetime(1)
    resp = _token(
        emu,
        http,
        client_id=emu.info["client_id"],
        client_secret=emu.info["client_secret"],
        grant_type="client_credentials",
        scope="https://graph.microsoft.com/.default",
    ).json()
    assert resp["expires_in"] == 1
    headers = {"Authorization": f"Bearer {resp['access_token']}"}
    assert http.get(f"{emu.info['graph_url']}/users?$top=1", headers=headers, timeout=10).status_code == 200
    time.sleep(1.1)
    assert http.get(f"{emu.info['graph_url']}/users?$top=1", headers=headers, timeout=10).status_code == 401
