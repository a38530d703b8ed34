"""Who may use the console: loopback by default, a token or basic authentication otherwise."""

from __future__ import annotations

import base64

import pytest

from connector.web import AccessPolicy, InsecureBindError, is_loopback
from connector.web._security import COOKIE_NAME
from tests.web.conftest import PhotoWorld, make_client

TOKEN = "tok-9f8e7d6c5b4a-" + "Xq3v9LcB2mT7rWz0pK5nJ8"  # 38 characters: long enough to start a console


def test_loopback_addresses_are_recognized() -> None:
    for host in ("127.0.0.1", "127.3.4.5", "::1", "[::1]", "localhost", "LOCALHOST"):
        assert is_loopback(host), host
    for host in ("0.0.0.0", "", "::", "192.168.1.10", "10.0.0.1", "example.org", "sync01"):
        assert not is_loopback(host), host


def test_refuses_to_bind_beyond_loopback_without_credentials() -> None:
    AccessPolicy().check_bind("127.0.0.1")
    AccessPolicy().check_bind("::1")
    for host in ("0.0.0.0", "::", "192.168.1.10"):
        with pytest.raises(InsecureBindError, match="MVSYNC_UI_TOKEN"):
            AccessPolicy().check_bind(host)
    AccessPolicy(token=TOKEN).check_bind("0.0.0.0")
    AccessPolicy(user="ops", password="pw").check_bind("0.0.0.0")


def test_policy_from_environment() -> None:
    assert AccessPolicy.from_env({}).authenticated is False
    assert AccessPolicy.from_env({"MVSYNC_UI_TOKEN": TOKEN}).token == TOKEN
    basic = AccessPolicy.from_env({"MVSYNC_UI_USER": "ops", "MVSYNC_UI_PASSWORD": "pw"})
    assert (basic.user, basic.password) == ("ops", "pw")
    with pytest.raises(InsecureBindError, match="both"):
        AccessPolicy.from_env({"MVSYNC_UI_USER": "ops"})
    assert "sync01" in AccessPolicy.from_env({}, bind_host="sync01").allowed_hosts


def test_loopback_without_credentials_rejects_foreign_host_headers(photo_world: PhotoWorld) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 must not read the console."""
    for base in ("http://127.0.0.1:8765", "http://localhost:8765", "http://[::1]:8765"):
        with make_client(photo_world, AccessPolicy(), base) as c:
            assert c.get("/").status_code == 200, base
    with make_client(photo_world, AccessPolicy(), "http://evil.example:8765") as c:
        refused = c.get("/")
        assert refused.status_code == 421
        assert refused.headers["x-content-type-options"] == "nosniff"
        assert c.get("/photo/" + "0" * 64).status_code == 421


def test_a_foreign_host_header_is_told_the_console_address_and_how_to_allow_other_names(
    photo_world: PhotoWorld,
) -> None:
    # found in the console pass: behind a reverse proxy that passes its own Host (or opened by the
    # server's name) the console answered "unknown Host header (use http://127.0.0.1:PORT/)": not which
    # name it got, a placeholder for the port, and nothing of sign-in, which is what lets other names in
    import http.client

    from connector.web import create_app, serve_in_background

    console = serve_in_background(create_app(photo_world.config, store=photo_world.engine.store))
    try:
        connection = http.client.HTTPConnection("127.0.0.1", console.port, timeout=30)
        connection.request("GET", "/", headers={"Host": "sync01.contoso.example"})
        answer = connection.getresponse()
        said = answer.read().decode()
        connection.close()
    finally:
        console.stop()
    assert answer.status == 421 and answer.getheader("content-type", "").startswith("text/plain")
    assert "not as 'sync01.contoso.example'" in said, said
    assert f"open http://127.0.0.1:{console.port}/ on this machine" in said, said
    assert "MVSYNC_UI_TOKEN" in said and "PORT" not in said.replace("MVSYNC", ""), said


def test_token_as_bearer_or_once_in_the_query_then_a_cookie(photo_world: PhotoWorld) -> None:
    with make_client(photo_world, AccessPolicy(token=TOKEN), "http://sync01.example") as c:
        denied = c.get("/coverage")
        assert denied.status_code == 401 and "token" in denied.text
        assert denied.headers["content-security-policy"].startswith("default-src 'none'")
        assert c.get("/coverage", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/coverage", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert c.get("/search?token=wrong").status_code == 401
        traded = c.get(f"/search?q=person&token={TOKEN}", follow_redirects=False)
        assert traded.status_code == 303 and traded.headers["location"] == "/search?q=person"
        cookie = traded.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE_NAME}_80=") and TOKEN not in cookie  # the port of the test's server
        assert "HttpOnly" in cookie and "samesite=lax" in cookie.lower()
        # the client now holds the cookie: every page and photo opens without the token
        assert c.get("/search?q=person").status_code == 200
        assert c.get("/").status_code == 200
    with make_client(photo_world, AccessPolicy(token=TOKEN), "http://sync01.example") as other:
        other.cookies.set(f"{COOKIE_NAME}_80", "forged")
        assert other.get("/").status_code == 401


def test_two_consoles_on_one_host_keep_their_own_sign_in(photo_world: PhotoWorld) -> None:
    # found in the console pass: cookies are kept per host, not per port, and both consoles named theirs
    # mvsync_ui: signing in to a second console on the same machine (a test store beside production, with
    # its own token) replaced the first one's cookie, and the first then said "authentication required"
    import http.cookiejar
    import urllib.error
    import urllib.request

    from connector.web import create_app, serve_in_background

    tokens = ("token-of-console-one", "token-of-console-two")
    consoles = [
        serve_in_background(
            create_app(photo_world.config, store=photo_world.engine.store, policy=AccessPolicy(token=token))
        )
        for token in tokens
    ]
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    try:
        for console, token in zip(consoles, tokens, strict=True):
            assert browser.open(f"{console.url}/coverage?token={token}", timeout=30).status == 200
        for console in consoles:
            try:
                status = browser.open(f"{console.url}/coverage", timeout=30).status
            except urllib.error.HTTPError as refused:
                status = refused.code
            assert status == 200, console.url
    finally:
        for console in consoles:
            console.stop()


def test_trading_the_token_never_redirects_to_another_site(photo_world: PhotoWorld) -> None:
    """Found by hand: ``GET //evil.example/x?token=...`` answered ``303 Location: //evil.example/x``,
    a protocol-relative address: the browser went to another site from the console's own link."""
    with make_client(photo_world, AccessPolicy(token=TOKEN), "http://sync01.example") as c:
        for path in ("//evil.example/x", "/%2F%2Fevil.example/x", "/%5Cevil.example/x", "/\\evil.example/x"):
            traded = c.get(f"http://sync01.example{path}?q=a&token={TOKEN}", follow_redirects=False)
            assert traded.status_code == 303, path
            location = traded.headers["location"]
            assert location.startswith("/") and location[1:2] not in ("/", "\\"), (path, location)
            assert location.endswith("evil.example/x?q=a"), (path, location)  # a path of this console


def test_basic_authentication(photo_world: PhotoWorld) -> None:
    def auth(user: str, password: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}

    with make_client(photo_world, AccessPolicy(user="ops", password="pa:ss"), "http://sync01.example") as c:
        challenge = c.get("/")
        assert challenge.status_code == 401 and challenge.headers["www-authenticate"].startswith("Basic")
        assert c.get("/", headers=auth("ops", "pa:ss")).status_code == 200
        assert c.get("/", headers=auth("ops", "wrong")).status_code == 401
        assert c.get("/", headers=auth("other", "pa:ss")).status_code == 401
        assert c.get("/", headers={"Authorization": "Basic !!!not-base64"}).status_code == 401
        assert c.get("/?token=anything", headers=auth("ops", "pa:ss")).status_code == 200  # no token configured
