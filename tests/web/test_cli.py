"""``mvsync ui``: refuses unsafe binds, explains a missing [web] extra, and serves for real."""

from __future__ import annotations

import http.client
import os
import re
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trustme
from typer.testing import CliRunner

from connector.cli._app import app
from tests.web.conftest import PhotoWorld

#: A console token as `secrets.token_urlsafe(32)` makes them (a short one is refused).
TLS_TOKEN = "tok-tls-Xq3v9LcB2mT7rWz0pK5nJ8dF1sHgY4aE6uQ"

CONFIG = """
[store]
url = "sqlite:///{db}"
[agents.hr]
type = "photo-folder"
settings = {{ path = "photos" }}
"""


@pytest.fixture
def config_file(tmp_path: Path, photo_world: PhotoWorld) -> Path:
    db = photo_world.config.store_url().removeprefix("sqlite:///")
    path = tmp_path / "mvsync.toml"
    path.write_text(CONFIG.format(db=db), encoding="utf-8")
    return path


def test_refuses_a_public_bind_without_credentials(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MVSYNC_UI_TOKEN", "MVSYNC_UI_USER", "MVSYNC_UI_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    result = CliRunner().invoke(app, ["ui", "-c", str(config_file), "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "refusing to listen on 0.0.0.0" in result.output and "MVSYNC_UI_TOKEN" in result.output


def test_a_basic_auth_user_with_a_colon_is_refused_naming_it(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # found in the console pass: basic authentication sends "user:password", split at the first colon, so
    # MVSYNC_UI_USER=CONTOSO:ops could never sign in: the console started and the browser asked for ever
    monkeypatch.delenv("MVSYNC_UI_TOKEN", raising=False)
    monkeypatch.setenv("MVSYNC_UI_USER", "CONTOSO:ops")
    monkeypatch.setenv("MVSYNC_UI_PASSWORD", "pw-of-the-test")
    monkeypatch.setattr("uvicorn.Server.run", lambda server, sockets: [s.close() for s in sockets])
    result = CliRunner().invoke(app, ["ui", "-c", str(config_file), "--host", "0.0.0.0", "--port", "0"])
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert "MVSYNC_UI_USER may not hold a colon" in said and "pw-of-the-test" not in said, said


def test_public_bind_with_a_token_starts(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: dict[str, Any] = {}
    monkeypatch.setenv("MVSYNC_UI_TOKEN", "tok-123-" + "9f8e7d6c5b4a" * 3)

    def run(server: Any, sockets: list[socket.socket]) -> None:
        started.update(config=server.config, bound=[s.getsockname() for s in sockets])
        for sock in sockets:
            sock.close()

    monkeypatch.setattr("uvicorn.Server.run", run)
    result = CliRunner().invoke(app, ["ui", "-c", str(config_file), "--host", "0.0.0.0", "--port", "0"])
    assert result.exit_code == 0, result.output
    config = started["config"]
    [(address, port)] = started["bound"]
    assert address == "0.0.0.0" and port > 0  # --port 0: the port the system picked, and that is the one shown
    assert config.host == "0.0.0.0" and config.port == port and config.server_header is False
    assert f"mvsync console on http://0.0.0.0:{port}/ (token)" in " ".join(result.output.split())
    # plain HTTP off loopback: the token crosses the network in clear text, and it says so
    assert "warning: the console on 0.0.0.0 speaks plain HTTP" in " ".join(result.output.split())


def test_a_port_in_use_is_one_line_that_says_what_to_do_and_exit_2(config_file: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        result = CliRunner().invoke(app, ["ui", "-c", str(config_file), "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert f"cannot listen on 127.0.0.1:{port}" in result.output and "--port" in result.output
    assert "mvsync console on" not in result.output  # it never said it was up


def test_missing_web_extra_is_explained(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn -> ModuleNotFoundError
    result = CliRunner().invoke(app, ["ui", "-c", str(config_file)])
    assert result.exit_code == 2
    assert "[web] extra" in result.output and "pip install 'mvsync[web]'" in result.output


def _announced_port(proc: subprocess.Popen[str], scheme: str = "http") -> int:
    """The port ``mvsync ui --port 0`` says it listens on (it binds before it says so)."""
    assert proc.stderr is not None
    said = ""
    for line in proc.stderr:  # ends if the process exits without announcing
        said += line
        if match := re.search(rf"mvsync console on {scheme}://127\.0\.0\.1:(\d+)/", " ".join(said.split())):
            return int(match.group(1))
    raise AssertionError(f"mvsync ui exited with {proc.wait()} before listening: {said}")


def _console(config_file: Path, *args: str, token: str | None = None) -> subprocess.Popen[str]:
    """The real ``mvsync ui --port 0`` in a child process (``token``: its MVSYNC_UI_TOKEN)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MVSYNC_UI_")}
    if token is not None:
        env["MVSYNC_UI_TOKEN"] = token
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "mvsync"), "ui", "-c", str(config_file), "--port", "0", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_token_too_short_to_resist_guessing_is_refused_at_start_up(config_file: Path) -> None:
    # found in the history and doctor pass: MVSYNC_UI_TOKEN=tok-123 was accepted, and seven characters
    # are guessed by anyone who can reach the console (the real CLI, as a service would start it)
    proc = _console(config_file, "--host", "0.0.0.0", token="tok-123")
    assert proc.stderr is not None
    said = ""
    try:
        for line in proc.stderr:  # ends when it exits; a console that starts is the failure
            said += line
            assert "mvsync console on" not in said, said
    finally:
        proc.kill()
    said = " ".join(said.split())
    assert proc.wait(timeout=60) == 2, said
    assert "MVSYNC_UI_TOKEN is 7 characters long: at least 32 are needed" in said, said
    assert 'python -c "import secrets; print(secrets.token_urlsafe(32))"' in said, said
    assert "tok-123" not in said and "Traceback" not in said and "mvsync console on" not in said, said


def test_serves_on_loopback(config_file: Path) -> None:
    proc = _console(config_file)
    try:
        port = _announced_port(proc)
        # the socket listens before the announcement: the first connection is taken, no retry
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("GET", "/search?q=person")
        response = conn.getresponse()
        body = response.read().decode()
        assert response.status == 200 and "Person 00 Example" in body
        assert response.getheader("x-content-type-options") == "nosniff"
        assert response.getheader("server") is None
    finally:
        proc.terminate()
        proc.wait(10)


def test_an_ipv6_host_in_brackets_is_listened_on(config_file: Path) -> None:
    # found in the console pass: --host [::1], as IPv6 addresses are written in URLs (and as the console
    # announces itself), was "cannot listen on [[::1]]:0 (Name or service not known)", exit 2
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        pytest.skip("this machine has no IPv6 loopback")
    proc = _console(config_file, "--host", "[::1]")
    try:
        assert proc.stderr is not None
        said = proc.stderr.readline()
        match = re.search(r"mvsync console on http://\[::1\]:(\d+)/", said)
        assert match, said
        conn = http.client.HTTPConnection("::1", int(match.group(1)), timeout=60)
        conn.request("GET", "/coverage")
        assert conn.getresponse().status == 200
    finally:
        proc.terminate()
        proc.wait(10)


def test_the_console_socket_takes_connections_before_uvicorn_starts() -> None:
    """Found by hand: ``mvsync ui`` said "console on http://..." when its socket was only bound, so a
    browser or script that went there at once was refused until uvicorn called listen()."""
    from connector.web import bind_console_socket

    sock = bind_console_socket("127.0.0.1", 0)
    try:
        with socket.create_connection(sock.getsockname(), timeout=10):
            pass  # accepted into the backlog: nobody has called accept() yet
    finally:
        sock.close()


def test_the_console_answers_kept_alive_connections_without_nagle_delay(photo_world: PhotoWorld) -> None:
    """Found by hand: with ``mvsync ui``, every request after the first on a kept-alive connection
    (what browsers do) took 44 ms instead of under 1 ms (curl, http.client, ``mvsync bench ui``: every
    page's p50 was 44-60 ms): the console's own socket was made with protocol 0, and asyncio sets
    TCP_NODELAY only on connections of a socket that says it is TCP, so Nagle met delayed ACKs."""
    from connector.web import create_app, serve_in_background

    console = serve_in_background(create_app(photo_world.config, store=photo_world.engine.store))
    try:
        conn = http.client.HTTPConnection("127.0.0.1", console.port, timeout=60)
        for _ in range(2):  # the second request is the one Nagle held back
            conn.request("GET", "/agents")
            response = conn.getresponse()
            assert response.status == 200 and response.read()
        [served] = list(console.server.server_state.connections)
        sock = served.transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        conn.close()
    finally:
        console.stop()


def _tls_files(tmp_path: Path, *, key_of_another: bool = False) -> tuple[trustme.CA, Path, Path]:
    """A CA, and a certificate for 127.0.0.1 it issued with its key, as PEM files."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    cert_file, key_file = tmp_path / "console.crt", tmp_path / "console.key"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    key = ca.issue_cert("127.0.0.1").private_key_pem if key_of_another else cert.private_key_pem
    key.write_to_path(str(key_file))
    return ca, cert_file, key_file


def _token_exchange(conn: http.client.HTTPConnection, headers: dict[str, str] | None = None) -> str:
    """Open the console with ?token=...; the Set-Cookie it answers with."""
    conn.request("GET", f"/search?q=person&token={TLS_TOKEN}", headers=headers or {})
    response = conn.getresponse()
    response.read()
    assert response.status == 303, response.status
    return response.getheader("set-cookie") or ""


def test_serves_https_with_the_given_certificate_and_a_secure_sign_in_cookie(config_file: Path, tmp_path: Path) -> None:
    """Off loopback the console asked for "TLS in front of it" and had no way to serve TLS itself:
    the token, the password of basic authentication and every page crossed the network in clear
    text. --tls-cert and --tls-key serve HTTPS, and the sign-in cookie is then marked Secure."""
    ca, cert_file, key_file = _tls_files(tmp_path)
    proc = _console(config_file, "--tls-cert", str(cert_file), "--tls-key", str(key_file), token=TLS_TOKEN)
    try:
        port = _announced_port(proc, "https")
        context = ssl.create_default_context()
        ca.configure_trust(context)
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=60, context=context)
        cookie = _token_exchange(conn)
        assert "Secure" in cookie and "HttpOnly" in cookie
        conn.request("GET", "/search?q=person", headers={"Cookie": cookie.split(";", 1)[0]})
        response = conn.getresponse()
        assert response.status == 200 and "Person 00 Example" in response.read().decode()
        # a stop while the browser keeps its connection: closing politely waited 30 s for a close_notify
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            pytest.fail("mvsync ui still ran 20 s after SIGTERM while a browser kept its HTTPS connection")
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.parametrize("trusted", [True, False])
def test_a_trusted_https_proxy_in_front_makes_the_sign_in_cookie_secure(config_file: Path, trusted: bool) -> None:
    """Behind a TLS-terminating reverse proxy the console saw plain HTTP and set its sign-in cookie
    without Secure. X-Forwarded-Proto is believed from the addresses --forwarded-allow-ips names, and
    only from them (any client could send the header)."""
    args = ["--forwarded-allow-ips", "127.0.0.1"] if trusted else []
    proc = _console(config_file, *args, token=TLS_TOKEN)
    try:
        conn = http.client.HTTPConnection("127.0.0.1", _announced_port(proc), timeout=60)
        cookie = _token_exchange(conn, {"X-Forwarded-Proto": "https"})
        assert ("Secure" in cookie) is trusted, cookie
    finally:
        proc.terminate()
        proc.wait(10)


def test_tls_files_that_cannot_serve_are_exit_2_naming_them(config_file: Path, tmp_path: Path) -> None:
    """A key of another certificate, or a file that is no PEM, was uvicorn's traceback after the
    console had announced itself; a certificate without its key was silently plain HTTP."""
    _ca, cert_file, key_file = _tls_files(tmp_path, key_of_another=True)
    result = CliRunner().invoke(
        app, ["ui", "-c", str(config_file), "--tls-cert", str(cert_file), "--tls-key", str(key_file)]
    )
    said = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert f"cannot serve HTTPS with --tls-cert {cert_file} and --tls-key {key_file}" in said
    assert "mvsync console on" not in said and "Traceback" not in said
    result = CliRunner().invoke(app, ["ui", "-c", str(config_file), "--tls-cert", str(cert_file)])
    assert result.exit_code == 2 and "--tls-cert and --tls-key go together" in " ".join(result.output.split())
