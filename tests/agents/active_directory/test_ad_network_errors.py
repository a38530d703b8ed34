"""Issue 16, the AD side of network errors: every failure names the host and port and its kind, and
the TLS handshake is bounded by connect_timeout (a DC that accepts and never answers is given up on
in seconds, not after receive_timeout, and is not blamed on certificates).

The hung DC is a real loopback socket that accepts connections and never writes a byte."""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme
from pydantic import SecretStr
from typer.testing import CliRunner, Result

from connector.agents.active_directory._connection import Link, describe_failure
from connector.agents.active_directory._settings import ActiveDirectorySettings
from connector.cli import app
from connector.sdk import ConfigurationError, ServerDownError, StopRunError
from tests.harness.crash import mvsync_command
from tests.harness.sockets import faulty_proxy, handing_to, silent_server


@pytest.fixture
def hung_dc() -> Iterator[int]:
    """A port that accepts TCP connections and never answers (the port is returned)."""
    with silent_server() as port:
        yield port


def _settings(port: int, security: str = "ldaps", **extra: object) -> ActiveDirectorySettings:
    return ActiveDirectorySettings.model_validate(
        {
            "host": "127.0.0.1",
            "port": port,
            "security": security,
            "bind_dn": "CN=svc,DC=example,DC=test",
            "password": SecretStr("not-the-point"),
            "base_dns": ["DC=example,DC=test"],
            "connect_timeout": 1,
            "receive_timeout": 120,  # the handshake must not wait for this
            "reconnect_attempts": 0,
            **extra,
        }
    )


@pytest.mark.parametrize("security", ["ldaps", "starttls"])
def test_a_dc_that_accepts_and_never_answers_times_out_in_the_tls_handshake(hung_dc: int, security: str) -> None:
    started = time.monotonic()
    with pytest.raises(ServerDownError) as caught:
        Link(_settings(hung_dc, security), logging.getLogger("test")).connect()
    elapsed = time.monotonic() - started
    message = str(caught.value)
    assert f"127.0.0.1:{hung_dc} ({security})" in message
    assert "timeout during the TLS handshake" in message and "never answered" in message
    assert "certificate" not in message
    assert elapsed < 60, elapsed  # bounded by connect_timeout (1 s), far from receive_timeout (120 s)


def test_a_refused_connection_names_host_port_and_kind() -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    with pytest.raises(ServerDownError) as caught:
        Link(_settings(port), logging.getLogger("test")).connect()
    assert f"127.0.0.1:{port} (ldaps) refused the connection" in str(caught.value)


def test_a_dc_that_resets_the_tls_handshake_is_retried_and_then_server_down() -> None:
    """Found in a bad-day pass: a DC that reset connections (restarting, a firewall cutting them) stopped
    the step as ``stopped-connector-error`` on the first reset, blaming the port ("does the port speak
    ldaps?"), without a reconnect. In an export that stop also dropped the records of the batch's writes
    already done. A reset is a transport failure: reconnect, then ``ServerDownError`` naming the reset."""
    with faulty_proxy() as dc:  # no upstream: each connection is reset when accepted
        with pytest.raises(ServerDownError) as caught:
            Link(_settings(dc.port, reconnect_attempts=1), logging.getLogger("test")).connect()
        accepted, port = dc.accepted, dc.port
    message = str(caught.value)
    assert f"127.0.0.1:{port} (ldaps) after 2 attempt(s)" in message, message
    assert "reset during the TLS handshake" in message and "restarting" in message, message
    assert accepted == 2  # reconnected once, as reconnect_attempts = 1 says


def test_a_host_that_does_not_resolve_is_named_as_a_dns_failure() -> None:
    """ldap3 reports a failed lookup as "invalid server address", which read as a lost connection."""
    with pytest.raises(ServerDownError) as caught:
        Link(_settings(636, host="dc.example.invalid"), logging.getLogger("test")).connect()  # RFC 6761: never resolves
    assert "DNS: cannot resolve dc.example.invalid (" in str(caught.value), str(caught.value)


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (socket.gaierror(-2, "Name or service not known"), "DNS: cannot resolve 127.0.0.1"),
        (ConnectionRefusedError(111, "Connection refused"), "refused the connection"),
        (TimeoutError("socket connection error while opening: timed out"), "timeout during connect to"),
        (TimeoutError("socket ssl wrapping error: _ssl.c:989: The handshake operation timed out"), "TLS handshake"),
        (TimeoutError("error receiving data: timed out"), "timeout during read from"),
        (ssl.SSLCertVerificationError("certificate verify failed: unable to get local issuer"), "certificate:"),
        (ssl.SSLError("socket ssl wrapping error: [SSL: WRONG_VERSION_NUMBER] wrong version number"), "does the port"),
        (ConnectionResetError(104, "Connection reset by peer"), "connection to 127.0.0.1:636 (ldaps) lost"),
        # an established TLS session cut off (a DC or a load balancer closing it mid-read): no handshake failed
        (
            ssl.SSLEOFError(8, "EOF occurred in violation of protocol (_ssl.c:2427)"),
            "connection to 127.0.0.1:636 (ldaps) lost: its TLS session was cut off (EOF occurred",
        ),
        (
            ConnectionResetError(104, "socket ssl wrapping error: [Errno 104] Connection reset by peer"),
            "connection to 127.0.0.1:636 (ldaps) reset during the TLS handshake",
        ),
    ],
)
def test_each_kind_of_failure_is_named(error: BaseException, kind: str) -> None:
    described = describe_failure(error, "127.0.0.1:636 (ldaps)", _settings(636))
    assert kind in described


def import_config(port: int, settings: str, host: str | None = "127.0.0.1") -> str:
    """A configuration whose profile "import" is a full import of agent ad at ``host``:``port`` (no host:
    ``settings`` say where the DCs are), plus ``settings`` lines (the password comes from
    MVSYNC_TEST_AD_PASSWORD)."""
    host_line = "" if host is None else f'host = "{host}"'
    return f"""
[store]
url = "sqlite:///store.db"
[agents.ad]
type = "active-directory"
[agents.ad.settings]
{host_line}
port = {port}
bind_dn = "CN=svc,DC=example,DC=test"
password = {{ env = "MVSYNC_TEST_AD_PASSWORD" }}
base_dns = ["DC=example,DC=test"]
{settings}
[run_profiles.import]
steps = [{{ type = "full-import", agent = "ad" }}]
"""


def run_import_in_child(config: str, tmp_path: Path) -> tuple[int, str]:
    """``mvsync run import`` of ``config`` (written to ``tmp_path``) in a child process, as a scheduler starts
    it: its exit code and its output on one line (the table wraps long messages)."""
    (tmp_path / "mvsync.toml").write_text(config)
    env = {**os.environ, "MVSYNC_TEST_AD_PASSWORD": "not-the-point", "COLUMNS": "250"}
    done = subprocess.run(
        [*mvsync_command(), "run", "import", "-c", str(tmp_path / "mvsync.toml")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.returncode, " ".join((done.stdout + done.stderr).split())


def _run_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, port: int, settings: str) -> Result:
    """``mvsync run import`` (a full import of an agent on 127.0.0.1:``port``, plus ``settings`` lines)."""
    monkeypatch.setenv("MVSYNC_TEST_AD_PASSWORD", "not-the-point")
    config = tmp_path / "mvsync.toml"
    config.write_text(import_config(port, settings))
    return CliRunner().invoke(app, ["run", "import", "-c", str(config)], env={"COLUMNS": "250"})


def test_a_run_against_a_hung_dc_stops_with_the_host_and_the_kind(
    hung_dc: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The measured answer of the issue's proof: exit code 4 and a message naming host, port, kind."""
    result = _run_import(tmp_path, monkeypatch, hung_dc, "connect_timeout = 1\nreconnect_attempts = 0")
    assert result.exit_code == 4, result.output
    assert "stopped-server-down" in result.stdout
    assert f"127.0.0.1:{hung_dc} (ldaps)" in result.stdout and "timeout during the TLS handshake" in result.stdout


@pytest.mark.parametrize("where", ["missing", "folder"])
def test_a_ca_file_that_is_no_file_is_a_configuration_error_naming_the_key(tmp_path: Path, where: str) -> None:
    """Found when the agent connects (the file went away after the configuration was read): the same
    words as the Exchange agents' ca_bundle, naming the key, before any connection is tried."""
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("-----BEGIN CERTIFICATE-----\n", encoding="ascii")
    settings = _settings(636, ca_file=ca_file)
    ca_file.unlink()
    if where == "folder":
        ca_file.mkdir()
    with pytest.raises(ConfigurationError) as caught:
        Link(settings, logging.getLogger("test")).connect()
    reason = "is a folder, not a PEM file" if where == "folder" else "does not exist"
    assert caught.value.key == "ca_file"
    assert (
        str(caught.value)
        == f"ca_file: {ca_file} {reason}: give the PEM file of the CA that issued the server's certificate"
    )


@contextlib.contextmanager
def _tls_dc(certificate: trustme.LeafCert) -> Iterator[int]:
    """A loopback port that completes TLS handshakes with ``certificate`` and then closes (the handshake
    is all these tests need: the client's verification refuses the certificate there)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate.configure_cert(context)

    def handshake(conn: socket.socket) -> None:
        with contextlib.suppress(ssl.SSLError), context.wrap_socket(conn, server_side=True):
            pass

    with handing_to(handshake) as port:
        yield port


_NOW = dt.datetime.now(dt.UTC)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("expired", "has expired: renew it (or, if it is still valid, set this machine's clock right"),
        ("not-yet-valid", "is not valid yet: this machine's clock or the DC's is wrong"),
        (
            "unknown-ca",
            "is not issued by a CA in this machine's trust store (unable to get local issuer certificate): add the CA",
        ),
        ("other-ca-file", "is not issued by a CA in ca_file "),
    ],
)
def test_a_certificate_that_does_not_validate_says_why_and_what_to_set(
    case: str, expected: str, tmp_path: Path
) -> None:
    """Found in a bad-day pass: an expired certificate, one not valid yet (a clock off) and one from a CA
    that is not trusted all stopped with the same advice, "must chain to ca_file (or the system trust
    store) and name the configured host", around ldap3's nested tuple text; an expired certificate chains
    and names the host, so the advice sent the operator to the wrong setting. Each now says what is wrong
    with the certificate and what to do, naming ca_file (and the file) where the CA is the matter."""
    ca = trustme.CA()
    validity = {
        "expired": (_NOW - dt.timedelta(days=400), _NOW - dt.timedelta(days=1)),
        "not-yet-valid": (_NOW + dt.timedelta(days=2), _NOW + dt.timedelta(days=400)),
    }
    not_before, not_after = validity.get(case, (_NOW - dt.timedelta(days=1), _NOW + dt.timedelta(days=400)))
    certificate = ca.issue_cert("127.0.0.1", not_before=not_before, not_after=not_after)
    ca_file = tmp_path / "ca.pem"
    (ca if case != "other-ca-file" else trustme.CA()).cert_pem.write_to_path(str(ca_file))
    extra = {} if case == "unknown-ca" else {"ca_file": ca_file}
    with _tls_dc(certificate) as port, pytest.raises(StopRunError) as caught:
        Link(_settings(port, **extra), logging.getLogger("test")).connect()
    message = str(caught.value)
    assert not isinstance(caught.value, ServerDownError)  # retrying cannot fix it
    assert message.startswith(f"certificate: the certificate of 127.0.0.1:{port} (ldaps) "), message
    assert expected in message, message
    assert "(\"('" not in message and "_ssl.c" not in message, message  # the reason, not ldap3's nested tuples
    if case == "other-ca-file":
        assert f"is not issued by a CA in ca_file {ca_file} (" in message, message


def test_a_run_against_a_dc_with_an_expired_certificate_stops_naming_host_and_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator's view: ``mvsync run`` ends with exit code 4, and the step's message names the DC and
    that its certificate expired."""
    ca = trustme.CA()
    certificate = ca.issue_cert(
        "127.0.0.1", not_before=_NOW - dt.timedelta(days=400), not_after=_NOW - dt.timedelta(days=1)
    )
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    with _tls_dc(certificate) as port:
        ca_file = f'ca_file = "{(tmp_path / "ca.pem").as_posix()}"'
        result = _run_import(tmp_path, monkeypatch, port, f"{ca_file}\nconnect_timeout = 5")
    assert result.exit_code == 4, result.output
    assert "stopped-connector-error" in result.stdout, result.stdout
    assert f"the certificate of 127.0.0.1:{port} (ldaps) has expired" in result.stdout, result.stdout
