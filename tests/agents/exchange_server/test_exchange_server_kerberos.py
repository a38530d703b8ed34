"""exchange-server-photos with Negotiate/Kerberos against a real KDC (the harness's Samba AD DC).

The EWS emulator accepts tickets for ``HTTP/mail.mvsync.test`` with that service principal's
keytab (registered on its own account, as for a load-balanced EWS namespace); the agent's ticket
comes from a credential cache that ``kinit -k`` filled from the service account's keytab, named by
``KRB5CCNAME``: no password anywhere. The emulator listens on 127.0.0.1, so the agent names the
SPN's host with ``kerberos_host`` (as the AD agent's Kerberos tests do; krb5.conf has
``rdns = false`` and ``dns_canonicalize_hostname = false``, so nothing is looked up in DNS).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.agents.exchange_server import ExchangeServerPhotosConnector, ExchangeServerSettings
from connector.config import config_from_dict
from connector.emulator._ews import EwsConfig, EwsEmulator
from connector.engine import Engine
from connector.sdk import AuthenticationError, ConnectorContext
from tests.conftest import require_or_skip
from tests.harness.samba_dc import ADSettings, KerberosAccount, SambaUnavailable, ServicePrincipal, service_principal
from tests.imaging.images import photo

pytestmark = pytest.mark.samba

#: In the realm's DNS domain: krb5.conf's [domain_realm] maps it to MVSYNC.TEST.
EWS_HOST = "mail.mvsync.test"
MAILBOXES = {f"person{i}@mvsync.test": photo(30 + i) for i in range(5)}
PLAIN = "plain@mvsync.test"
PROFILE = "Full Import"


@pytest.fixture
def ews_principal(samba_ad: ADSettings, samba_kerberos: KerberosAccount) -> ServicePrincipal:
    """``HTTP/mail.mvsync.test`` on its own account, with the keytab EWS accepts tickets with."""
    try:
        import requests_gssapi  # noqa: F401  (the kerberos extra)
    except ImportError:
        require_or_skip("requests-gssapi is missing: pip install -e '.[kerberos]' (needs libkrb5-dev and gcc)")
    if shutil.which("kinit") is None:
        require_or_skip("kinit is missing (apt: krb5-user; tests/run.sh installs it)")
    try:
        return service_principal(samba_ad, EWS_HOST)
    except SambaUnavailable as exc:
        require_or_skip(f"cannot register the EWS service principal: {exc}")
        raise  # unreachable: require_or_skip raises


@pytest.fixture
def ticket_cache(samba_kerberos: KerberosAccount, tmp_path: Path) -> str:
    """A credential cache holding the service account's ticket, filled as a site would: ``kinit -k``."""
    cache = f"FILE:{tmp_path / 'krb5cc-svc'}"
    env = {**os.environ, "KRB5CCNAME": cache}
    kinit = ["kinit", "-k", "-t", str(samba_kerberos.keytab), samba_kerberos.principal]
    subprocess.run(kinit, env=env, check=True, timeout=30, capture_output=True)
    return cache


@pytest.fixture
def kerberos_ews(ews_principal: ServicePrincipal) -> Iterator[EwsEmulator]:
    config = EwsConfig(auth=("negotiate",), kerberos_keytab=ews_principal.keytab, extended_protection=True)
    with EwsEmulator(config) as emu:
        for address, picture in MAILBOXES.items():
            emu.add_mailbox(address, photo=picture)
        emu.add_mailbox(PLAIN)
        yield emu


def _config(emu: EwsEmulator, tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """A configuration without any secret: the EWS URL, its CA, the SPN's host and the mailbox list."""
    listing = tmp_path / "mailboxes.txt"
    listing.write_text("\n".join([*MAILBOXES, PLAIN]) + "\n", encoding="utf-8")
    settings = {
        "ews_url": emu.info["ews_url"],
        "ca_bundle": emu.info["ca_cert"],
        "auth": "negotiate",
        "kerberos_host": EWS_HOST,
        "mailbox_file": str(listing),
        "max_attempts": 1,
        **overrides,
    }
    return {
        "store": {"url": f"sqlite:///{tmp_path / 'mv.db'}"},
        "data_dir": str(tmp_path / "data"),
        "agents": {"exs": {"type": "exchange-server-photos", "settings": settings}},
        "run_profiles": {PROFILE: {"steps": [{"type": "full-import", "agent": "exs"}]}},
    }


def _run(config: dict[str, Any], tmp_path: Path) -> Any:
    engine = Engine(config_from_dict(config, file=tmp_path / "mvsync.toml"))
    try:
        return engine.run_profile(PROFILE)
    finally:
        engine.close()


def test_negotiate_imports_photos_through_the_engine(
    kerberos_ews: EwsEmulator,
    samba_kerberos: KerberosAccount,
    ticket_cache: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KRB5CCNAME", ticket_cache)
    config = _config(kerberos_ews, tmp_path, concurrency=2)
    assert "password" not in repr(config)
    result = _run(config, tmp_path)
    step = result.steps[0]
    assert result.status == "success", step.as_dict()
    assert step.counters["adds"] == len(MAILBOXES) + 1 and not step.errors
    stats = kerberos_ews.stats()
    # the agent was the service account, by a real ticket (and over the TLS channel it was bound to)
    assert stats["kerberos_clients"] == [samba_kerberos.principal]
    # IIS keeps a Kerberos connection authenticated: one handshake per connection (2 threads, and the
    # importing thread's check that ews_url is EWS), not per photo; that check's second request is a
    # SOAP GetUserPhoto (is the server Exchange 2013 or later?), a photo request too
    assert 1 <= stats["negotiate_ok"] <= 3 < stats["photo_requests"] == len(MAILBOXES) + 2
    assert stats.get("negotiate_refused", 0) == 0
    engine = Engine(config_from_dict(config, file=tmp_path / "mvsync.toml"))
    try:
        from sqlalchemy import select

        from connector.store.tables import cs_object

        with engine.store.read() as conn:
            anchors = set(conn.execute(select(cs_object.c.anchor).where(cs_object.c.agent == "exs")).scalars())
    finally:
        engine.close()
    assert anchors == {*MAILBOXES, PLAIN}


def test_the_mutual_authentication_token_is_checked(
    kerberos_ews: EwsEmulator, ticket_cache: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that cannot prove it is EWS (a forged mutual-authentication token) gets no trust."""
    import requests_gssapi

    from connector.agents.exchange_server import ExchangeServerSettings
    from connector.agents.exchange_server._auth import make_auth, make_session

    monkeypatch.setenv("KRB5CCNAME", ticket_cache)
    settings = ExchangeServerSettings.model_validate(_config(kerberos_ews, tmp_path)["agents"]["exs"]["settings"])
    url = settings.ews_url + "/s/GetUserPhoto"
    with make_session(settings, make_auth(settings)) as session:
        good = session.get(url, params={"email": PLAIN, "size": "HR48x48"}, timeout=30)
        assert good.status_code == 404  # authenticated; the mailbox has no photo
        assert good.history and good.history[0].status_code == 401  # challenged first, as IIS does
    original = kerberos_ews.service._kerberos

    def forging(req: Any, token: str) -> Any:  # accepts the ticket, then answers with a token of its own
        denied = original(req, token)
        if "negotiate_reply" in req.conn:
            req.conn["negotiate_reply"] = "oYGeMIGboAMKAQChCwYJKoZIgvcSAQICooGGBIGD"  # a truncated SPNEGO answer
        return denied

    monkeypatch.setattr(kerberos_ews.service, "_kerberos", forging)
    with (
        make_session(settings, make_auth(settings)) as session,
        pytest.raises(requests_gssapi.MutualAuthenticationError),
    ):
        session.get(url, params={"email": next(iter(MAILBOXES)), "size": "HR48x48"}, timeout=30)


# ------------------------------------------------------------------------------------- failures
def _toml(value: Any) -> str:
    """This test's configuration as TOML inline values (strings, numbers, tables, lists)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def _cli_run(config: dict[str, Any], tmp_path: Path, cache: str) -> subprocess.CompletedProcess[str]:
    """``mvsync run`` as a scheduler would start it: what the operator sees, exit code included."""
    path = tmp_path / "mvsync.toml"
    path.write_text("".join(f"{json.dumps(k)} = {_toml(v)}\n" for k, v in config.items()), encoding="utf-8")
    env = {**os.environ, "KRB5CCNAME": cache}
    return subprocess.run(
        [sys.executable, "-c", "from connector.cli import main; main()", "run", PROFILE, "-c", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_no_ticket_stops_the_step_saying_what_to_do(kerberos_ews: EwsEmulator, tmp_path: Path) -> None:
    empty = f"FILE:{tmp_path / 'krb5cc-empty'}"
    done = _cli_run(_config(kerberos_ews, tmp_path), tmp_path, empty)
    output = done.stdout + done.stderr
    assert done.returncode == 4, output
    assert "Traceback" not in output and "stopped-authentication" in output
    assert (
        f"no usable Kerberos ticket for EWS at {kerberos_ews.info['ews_url'].rsplit('/EWS', 1)[0]} in {empty}" in output
    )
    assert "kinit -k -t <keytab> <principal>" in output
    assert kerberos_ews.stats().get("negotiate_ok", 0) == 0


def test_an_spn_the_kdc_does_not_know_names_the_host_and_the_fix(
    kerberos_ews: EwsEmulator, ticket_cache: str, tmp_path: Path
) -> None:
    done = _cli_run(_config(kerberos_ews, tmp_path, kerberos_host="owa.mvsync.test"), tmp_path, ticket_cache)
    output = done.stdout + done.stderr
    assert done.returncode == 4, output
    assert "Traceback" not in output and "stopped-authentication" in output
    assert "the KDC knows no service principal HTTP/owa.mvsync.test for EWS at https://127.0.0.1:" in output
    assert "set kerberos_host" in output and "setspn -S HTTP/owa.mvsync.test <account>" in output


def test_a_ticket_for_another_service_is_refused_with_the_spn_named(
    kerberos_ews: EwsEmulator,
    samba_ad: ADSettings,
    ticket_cache: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The SPN exists, but on an account whose keys EWS does not hold: EWS answers 401."""
    other = service_principal(samba_ad, "intranet.mvsync.test", account="intranet-http")
    monkeypatch.setenv("KRB5CCNAME", ticket_cache)
    result = _run(_config(kerberos_ews, tmp_path, kerberos_host=other.host), tmp_path)
    step = result.steps[0]
    assert step.status == "stopped-authentication", step.as_dict()
    where = f"https://127.0.0.1:{kerberos_ews.info['port']}"
    assert step.message.startswith(f"EWS at {where} refused the Kerberos ticket for HTTP/intranet.mvsync.test")
    assert "setspn -Q HTTP/intranet.mvsync.test" in step.message
    assert kerberos_ews.stats()["negotiate_refused"] >= 1


def test_a_ticket_gone_mid_run_is_named_not_taken_for_a_wrong_spn(
    kerberos_ews: EwsEmulator, ticket_cache: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ticket expires mid-run (k5start stopped), or the cache is emptied, and EWS closes the
    connection: requests-gssapi has nothing to send on the next one, and EWS answers 401. Before, the
    step stopped saying "EWS refused the Kerberos ticket ... check setspn -Q", sending the administrator
    to an SPN that is fine; now it says that no ticket is left and how to keep one."""
    monkeypatch.setenv("KRB5CCNAME", ticket_cache)
    settings = ExchangeServerSettings.model_validate(_config(kerberos_ews, tmp_path)["agents"]["exs"]["settings"])
    agent = ExchangeServerPhotosConnector(settings, ConnectorContext(agent="exs", data_dir=tmp_path / "data"))
    try:
        client = agent.client
        assert client.fetch(next(iter(MAILBOXES)), None).kind == "photo"
        subprocess.run(["kdestroy", "-c", ticket_cache], check=True, timeout=30, capture_output=True)
        for session in client._sessions:  # EWS closed the authenticated connection (IIS idle timeout)
            session.close()
        with pytest.raises(AuthenticationError) as caught:
            client.fetch(PLAIN, None)
    finally:
        agent.close()
    message = str(caught.value)
    assert message.startswith(f"no usable Kerberos ticket for EWS at https://127.0.0.1:{kerberos_ews.info['port']} in ")
    assert ticket_cache in message and "k5start" in message and "setspn" not in message
