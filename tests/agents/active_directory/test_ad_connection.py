"""Connecting to the real (Samba) DC: TLS validation, plain-LDAP refusal, credentials, NODELAY."""

from __future__ import annotations

import logging
import socket
import sys

import pytest
import trustme
from typer.testing import CliRunner

from connector.agents.active_directory._connection import Link
from connector.cli import app
from connector.demo import dump_toml
from connector.sdk import AuthenticationError, ConfigurationError, ServerDownError, StopRunError
from tests.agents.active_directory.conftest import ADTestEnv, photo_sync_config
from tests.harness.sockets import faulty_proxy
from tests.harness.trust import other_ca, system_store

pytestmark = pytest.mark.samba


def test_ldaps_and_starttls_validate_the_certificate(ad_env: ADTestEnv) -> None:
    for security, port in (("ldaps", ad_env.ad.ldaps_port), ("starttls", ad_env.ad.ldap_port)):
        connector = ad_env.connector(security=security, port=port, open=False)
        assert connector.check().ok, security
        connector.open()
        assert connector._link is not None
        conn = connector._link.connect()
        assert conn.tls_started or conn.server.ssl
        # ldap3 leaves Nagle on; the agent must switch it off (40 ms stalls on writes > 16 KB)
        assert conn.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


def test_a_certificate_from_another_ca_is_refused(ad_env: ADTestEnv) -> None:
    other = ad_env.tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    for security, port in (("ldaps", ad_env.ad.ldaps_port), ("starttls", ad_env.ad.ldap_port)):
        connector = ad_env.connector(security=security, port=port, ca_file=str(other), open=False)
        with pytest.raises(StopRunError, match=r"^certificate: the certificate of ") as caught:
            connector.open()
        assert not isinstance(caught.value, ServerDownError)
        # the CA named as the matter, with the file the agent trusts (test_ad_network_errors: each reason)
        assert f"is not issued by a CA in ca_file {other} (" in str(caught.value), (security, str(caught.value))


def test_without_ca_file_the_systems_trust_store_verifies_the_dc(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ca_file: the DC's CA in the system's trust store (OpenSSL's, which SSL_CERT_FILE names here;
    on Windows the computer's certificate stores, where Group Policy and AD CS put an enterprise CA)
    is enough to bind, over LDAPS and StartTLS. A store without it refuses the DC, and says both
    fixes: the CA into this machine's trust store, or ca_file."""
    if ad_env.ad.ca_cert is None:
        pytest.skip("needs the harness's own DC, whose CA the test can put in the trust store")
    store = system_store(ad_env.tmp_path, monkeypatch)
    store.write_bytes(ad_env.ad.ca_cert.read_bytes())
    for security, port in (("ldaps", ad_env.ad.ldaps_port), ("starttls", ad_env.ad.ldap_port)):
        connector = ad_env.connector(security=security, port=port, ca_file=None)
        assert connector._link is not None and connector._link.connect().bound, security
        connector.close()
    monkeypatch.setenv("SSL_CERT_FILE", str(other_ca(ad_env.tmp_path)))
    with pytest.raises(StopRunError) as caught:
        ad_env.connector(ca_file=None)
    message = str(caught.value)
    assert "is not issued by a CA in this machine's trust store (" in message, message
    assert "add the CA that issued the DC's certificate to this machine's trust store" in message, message
    assert "or set ca_file to its PEM file" in message, message


def test_an_ssl_cert_file_that_is_not_there_is_a_configuration_error_naming_it(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No ca_file, and SSL_CERT_FILE (the trust store OpenSSL reads on Linux) naming a file that is not
    there: OpenSSL loaded no CA at all, so the DC's certificate read as not issued by a trusted CA, and the
    message sent the operator to ca_file. Now a configuration error naming the variable and the file,
    before connecting, as the HTTPS agents say it (connector.net.check_trust_environment)."""
    if sys.platform in ("win32", "darwin"):
        pytest.skip("SSL_CERT_FILE is OpenSSL's trust store on Linux only")
    missing = ad_env.tmp_path / "no-such-bundle.pem"
    monkeypatch.setenv("SSL_CERT_FILE", str(missing))
    with pytest.raises(ConfigurationError) as caught:
        ad_env.connector(ca_file=None)
    message = str(caught.value)
    assert str(missing) in message and "SSL_CERT_FILE" in message, message
    assert "unset SSL_CERT_FILE to verify with this machine's trust store" in message, message


def test_a_certificate_for_other_names_says_which_names_it_holds(ad_env: ADTestEnv) -> None:
    """Found in a bad-day pass: the DC reached by an address its certificate does not hold stopped with
    ldap3's whole certificate dict (subject, issuer, serial, dates) and a generic "must name the
    configured host"; now the message lists the names the certificate holds and says to use one."""
    if ad_env.ad.external or ad_env.ad.ca_cert is None:
        pytest.skip("needs the harness's own DC, whose certificate does not name 127.0.0.1")
    with faulty_proxy((ad_env.ad.host, ad_env.ad.ldaps_port)) as relay:  # the DC, reached as 127.0.0.1
        connector = ad_env.connector(host="127.0.0.1", port=relay.port, open=False)
        with pytest.raises(StopRunError) as caught:
            connector.open()
    message = str(caught.value)
    assert not isinstance(caught.value, ServerDownError)  # retrying cannot fix it
    assert message.startswith(f"certificate: the certificate of 127.0.0.1:{relay.port} (ldaps) names "), message
    assert f"{ad_env.ad.host}, not 127.0.0.1: set host to one of those names" in message, message
    assert "subject" not in message and "serialNumber" not in message


def test_validation_off_works_but_warns_every_run(ad_env: ADTestEnv, caplog: pytest.LogCaptureFixture) -> None:
    other = ad_env.tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(other))
    with caplog.at_level(logging.WARNING):
        for _ in range(2):
            connector = ad_env.connector(tls_validate=False, ca_file=str(other), open=False)
            connector.open()
            connector.close()
    assert sum("does not validate the certificate" in r.getMessage() for r in caplog.records) == 2


def test_plain_ldap_needs_opt_in_and_is_warned_about(ad_env: ADTestEnv, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ValueError, match="allow_plain_ldap"):
        ad_env.settings(security="plain", port=ad_env.ad.ldap_port)
    # opted in: the agent warns; this DC (like AD by default) still requires transport encryption
    with caplog.at_level(logging.WARNING), pytest.raises(StopRunError, match="strongerAuthRequired"):
        ad_env.connector(security="plain", port=ad_env.ad.ldap_port, allow_plain_ldap=True)
    assert any("plain LDAP" in r.getMessage() for r in caplog.records)


def test_wrong_password_is_an_authentication_error_without_the_secret(ad_env: ADTestEnv) -> None:
    connector = ad_env.connector(password="Wr0ng-Secret-Value", open=False)
    with pytest.raises(AuthenticationError) as caught:
        connector.open()
    assert "Wr0ng-Secret-Value" not in str(caught.value)
    assert not connector.check().ok


def test_a_password_variable_set_but_empty_is_a_configuration_error_before_any_step(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in the AD import pass: a password variable that is set but empty (an EnvironmentFile line
    left blank) reached ldap3, whose "password is mandatory in simple bind" ended the step as
    stopped-connector-exception with a traceback (exit 4). An empty password is an anonymous bind in LDAP."""
    monkeypatch.setenv("MVSYNC_TEST_AD_EMPTY_PASSWORD", "")
    photos = ad_env.tmp_path / "hr-photos"
    photos.mkdir()
    config = photo_sync_config(ad_env, ad_env.ou, photos, {"password": {"env": "MVSYNC_TEST_AD_EMPTY_PASSWORD"}})
    settings = config["agents"]["ad"]["settings"]
    config["agents"]["ad"]["settings"] = {k: v for k, v in settings.items() if v is not None}
    path = ad_env.tmp_path / "mvsync.toml"
    path.write_text(dump_toml(config), encoding="utf-8")
    result = CliRunner().invoke(app, ["run", "Prepare", "-c", str(path)], env={"COLUMNS": "250"})
    assert result.exit_code == 2, result.output
    # the configuration refuses any empty variable first, naming the key and the variable (the AD
    # settings' own check stays for a password that reaches them empty another way)
    said = " ".join(result.output.split())
    assert "agents.ad.settings.password: environment variable MVSYNC_TEST_AD_EMPTY_PASSWORD is set but empty" in said
    assert "Traceback" not in result.output


def test_the_check_doctor_runs_finds_a_base_dn_that_is_not_there(ad_env: ADTestEnv) -> None:
    # bound fine, but an OU was mistyped: doctor must say so, not "all checks passed" before a run stops
    found = ad_env.connector(open=False).check()
    assert found.ok and found.detail is not None and found.detail.endswith("; 1 base DN found")
    missing = f"OU=Nowhere,{ad_env.ad.base_dn}"
    result = ad_env.connector(base_dns=[ad_env.ou, missing], open=False).check()
    assert not result.ok
    assert result.detail == (
        f"base_dns: the base DN {missing!r} does not exist on {ad_env.ad.host} (noSuchObject); check base_dns"
    )


def test_unreachable_server_is_server_down(ad_env: ADTestEnv) -> None:
    connector = ad_env.connector(host="127.0.83.254", reconnect_attempts=1, connect_timeout=1, open=False)
    with pytest.raises(ServerDownError, match=r"127\.0\.83\.254"):
        connector.open()


def test_link_reconnects_after_the_transport_breaks(ad_env: ADTestEnv) -> None:
    link = Link(ad_env.settings(), logging.getLogger("test"))
    first = link.connect()
    first.socket.shutdown(socket.SHUT_RDWR)  # the server side goes away mid-session

    def whoami(conn: object) -> str:
        conn.search("", "(objectClass=*)", "BASE", attributes=["highestCommittedUSN"])  # type: ignore[attr-defined]
        return str(conn.result["description"])  # type: ignore[attr-defined]

    assert link.run(whoami) == "success"
    assert link.connect() is not first
    link.close()
