"""Issue 16, the AD side of network errors: every failure names the host and port and its kind, and
the TLS handshake is bounded by connect_timeout (a DC that accepts and never answers is given up on
in seconds, not after receive_timeout, and is not blamed on certificates).

The hung DC is a real loopback socket that accepts connections and never writes a byte."""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from connector.agents.active_directory._connection import Link, describe_failure
from connector.agents.active_directory._settings import ActiveDirectorySettings
from connector.cli import app
from connector.sdk import ConfigurationError, ServerDownError
from tests.harness.sockets import faulty_proxy, silent_server


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
        (
            ConnectionResetError(104, "socket ssl wrapping error: [Errno 104] Connection reset by peer"),
            "connection to 127.0.0.1:636 (ldaps) reset during the TLS handshake",
        ),
    ],
)
def test_each_kind_of_failure_is_named(error: BaseException, kind: str) -> None:
    described = describe_failure(error, "127.0.0.1:636 (ldaps)", _settings(636))
    assert kind in described


def test_a_run_against_a_hung_dc_stops_with_the_host_and_the_kind(
    hung_dc: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The measured answer of the issue's proof: exit code 4 and a message naming host, port, kind."""
    monkeypatch.setenv("MVSYNC_TEST_AD_PASSWORD", "not-the-point")
    config = tmp_path / "mvsync.toml"
    config.write_text(
        f"""
[store]
url = "sqlite:///store.db"
[agents.ad]
type = "active-directory"
[agents.ad.settings]
host = "127.0.0.1"
port = {hung_dc}
bind_dn = "CN=svc,DC=example,DC=test"
password = {{ env = "MVSYNC_TEST_AD_PASSWORD" }}
base_dns = ["DC=example,DC=test"]
connect_timeout = 1
reconnect_attempts = 0
[run_profiles.import]
steps = [{{ type = "full-import", agent = "ad" }}]
"""
    )
    result = CliRunner().invoke(app, ["run", "import", "-c", str(config)], env={"COLUMNS": "250"})
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
