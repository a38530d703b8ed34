"""The domain controllers found through DNS, as Windows' DC locator finds them (``domain``, ``site``).

Why: the agent knew only fixed DC names (``host``, ``fallback_hosts``); when DCs are replaced or renamed
such a configuration breaks. With ``domain`` the agent reads the SRV records every DC registers
(``_ldap._tcp.dc._msdcs.<domain>``, per site ``_ldap._tcp.<site>._sites.dc._msdcs.<domain>``; MS-ADTS
6.3.6.1), tries them in RFC 2782 order, and the failover walks that list.

The DNS server is a real one on a loopback UDP port (``tests.harness.dns_server``), reached through the
``dns_servers`` setting a sync server whose own DNS is not the AD DNS uses; its SRV records name the
session's Samba DC (by its DNS name, which its certificate names) and a dead DC with a better priority.
"""

from __future__ import annotations

import logging
import random
import re
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import trustme
from pydantic import SecretStr, ValidationError

from connector.agents.active_directory import ActiveDirectorySettings
from connector.agents.active_directory import _kerberos as kerberos
from connector.agents.active_directory._connection import Link, describe_failure
from connector.agents.active_directory._locator import DcLocator, SrvRecord, rfc2782_order
from connector.config import config_from_dict
from connector.engine import Engine, RunResult
from connector.sdk import ConfigurationError, ServerDownError, StopRunError
from tests.agents.active_directory.conftest import ADTestEnv, jpeg, photo_sync_config
from tests.agents.active_directory.test_ad_failover import _engine, _history_message, _loopback, full_then_delta
from tests.agents.active_directory.test_ad_kerberos import kerberos_settings
from tests.agents.active_directory.test_ad_network_errors import _tls_dc, import_config, run_import_in_child
from tests.harness.dns_server import DnsServer, dns_server
from tests.harness.samba_dc import KerberosAccount, SambaUnavailable, dc_fqdn
from tests.harness.sockets import faulty_proxy

DOMAIN = "corp.example.test"
DOMAIN_SRV = f"_ldap._tcp.dc._msdcs.{DOMAIN}"


def _srv(priority: int, weight: int, target: str) -> str:
    return f"{priority} {weight} 389 {target}."


def _settings(server: DnsServer, **overrides: Any) -> ActiveDirectorySettings:
    """Settings for the DCs of DOMAIN, asked of ``server`` (no DC answers: the bind never happens)."""
    values: dict[str, Any] = {
        "domain": DOMAIN,
        "dns_servers": [server.address],
        "dns_timeout": 10,  # a DNS server that answers does so well within it, however busy the machine
        "bind_dn": "CN=svc,DC=example,DC=test",
        "password": SecretStr("not-the-point"),
        "base_dns": ["DC=example,DC=test"],
        "connect_timeout": 1,
        "reconnect_attempts": 0,
        **overrides,
    }
    return ActiveDirectorySettings.model_validate(values)


# -- RFC 2782 order (pure logic) -------------------------------------------------------------------
def test_lower_priority_comes_first_whatever_the_weights() -> None:
    records = [SrvRecord("b", 10, 1000), SrvRecord("a", 0, 1), SrvRecord("c", 20, 0)]
    for seed in range(50):
        assert [r.target for r in rfc2782_order(records, random.Random(seed))] == ["a", "b", "c"]


def test_within_a_priority_the_first_pick_follows_the_weights() -> None:
    """Weights 60/30/10: over 3,000 seeded orderings the first DC is picked about 60/30/10 % of the time
    (seeded: the counts are the same on every run; the bounds say what RFC 2782 asks)."""
    records = [SrvRecord("dc60", 0, 60), SrvRecord("dc30", 0, 30), SrvRecord("dc10", 0, 10)]
    rng = random.Random(2782)
    firsts = Counter(rfc2782_order(records, rng)[0].target for _ in range(3000))
    assert 1650 <= firsts["dc60"] <= 1950 and 750 <= firsts["dc30"] <= 1050 and 200 <= firsts["dc10"] <= 400, firsts
    orders = {tuple(r.target for r in rfc2782_order(records, rng)) for _ in range(200)}
    assert all(sorted(order) == ["dc10", "dc30", "dc60"] for order in orders)  # each DC once, in every order
    assert len(orders) == 6


def test_a_weight_0_record_is_picked_first_seldom_but_not_never() -> None:
    """RFC 2782: records of weight 0 "should have a very small chance of being selected" when others have weight."""
    records = [SrvRecord("heavy", 0, 99), SrvRecord("zero", 0, 0)]
    rng = random.Random(7)
    firsts = Counter(rfc2782_order(records, rng)[0].target for _ in range(2000))
    assert 0 < firsts["zero"] < 60, firsts


# -- settings ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({"host": "dc1.contoso.com", "domain": "contoso.com"}, "does not go with host or fallback_hosts"),
        ({}, "give host (a DC's name) or domain"),
        ({"host": "dc1.contoso.com", "site": "Berlin"}, "site and dns_servers apply to domain only"),
        ({"domain": "CONTOSO\\svc"}, "is not a DNS domain name"),
        ({"domain": "contoso.com", "dns_servers": ["dns.contoso.com"]}, "is not an IP address"),
        ({"domain": "contoso.com", "dns_servers": ["10.0.0.1:99999"]}, "must be a number from 1 to 65535"),
        ({"domain": "contoso.com", "kerberos_host": "dc1.contoso.com"}, "remove kerberos_host"),
    ],
)
def test_settings_refuse_what_cannot_work(values: dict[str, Any], expected: str) -> None:
    base = {"bind_dn": "CN=svc,DC=x", "password": "p", "base_dns": ["DC=x"]}
    with pytest.raises(ValidationError, match=re.escape(expected)):
        ActiveDirectorySettings.model_validate({**base, **values})


def test_dns_servers_take_a_port_and_ipv6() -> None:
    settings = ActiveDirectorySettings.model_validate(
        {"domain": "contoso.com.", "site": "Berlin", "dns_servers": ["10.0.0.10", "127.0.0.1:5353", "[fd00::a]:53"]}
        | {"bind_dn": "CN=svc,DC=x", "password": "p", "base_dns": ["DC=x"]}
    )
    assert settings.hosts == [] and settings.directory == "the DCs of contoso.com."


def test_the_kerberos_spn_is_ldap_slash_the_srv_target() -> None:
    """With ``domain`` there is no kerberos_host: each DC's SPN is ``ldap/<its name in the SRV record>``."""
    settings = ActiveDirectorySettings.model_validate(
        {"domain": "contoso.com", "auth": "kerberos", "base_dns": ["DC=x"]}
    )
    assert kerberos.target_host(settings, "dc7.contoso.com") == "dc7.contoso.com"


# -- the DNS lookups (a real DNS server on loopback) ------------------------------------------------
def test_the_sites_dcs_come_first_then_the_domains_others() -> None:
    site_srv = f"_ldap._tcp.Berlin._sites.dc._msdcs.{DOMAIN}"
    zone = {
        (site_srv, "SRV"): [_srv(0, 100, "dc-ber.corp.example.test")],
        (DOMAIN_SRV, "SRV"): [_srv(0, 100, "dc-ber.corp.example.test"), _srv(5, 100, "dc-par.corp.example.test")],
    }
    with dns_server(zone) as server:
        found = DcLocator(_settings(server, site="Berlin"), logging.getLogger("test")).controllers()
    assert found == ["dc-ber.corp.example.test", "dc-par.corp.example.test"]
    assert server.asked == [(site_srv.lower(), "SRV"), (DOMAIN_SRV, "SRV")]


def test_a_site_without_records_falls_back_to_the_domain_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    zone = {(DOMAIN_SRV, "SRV"): [_srv(0, 100, "dc-par.corp.example.test")]}
    with dns_server(zone) as server, caplog.at_level(logging.WARNING):
        found = DcLocator(_settings(server, site="Nowhere"), logging.getLogger("test")).controllers()
    assert found == ["dc-par.corp.example.test"]
    assert (
        f"site: no SRV records for _ldap._tcp.Nowhere._sites.dc._msdcs.{DOMAIN} at DNS server {server.address}: "
        "the name does not exist (NXDOMAIN); check site (the AD site's name"
    ) in caplog.text
    assert f"trying the domain's DCs ({DOMAIN_SRV})" in caplog.text


def test_nxdomain_names_the_name_asked_and_what_to_check() -> None:
    """A wrong domain: a configuration error (exit code 2) naming the SRV name, the DNS server and the settings."""
    with dns_server({}) as server, pytest.raises(ConfigurationError) as caught:
        Link(_settings(server), logging.getLogger("test")).connect()
    message = str(caught.value)
    assert message.startswith(
        f"domain: no SRV records for {DOMAIN_SRV} at DNS server {server.address}: the name does not exist "
        "(NXDOMAIN); check domain (the AD domain's DNS name"
    ), message


@pytest.mark.parametrize(
    ("zone", "why"),
    [
        ({(DOMAIN_SRV, "TXT"): ['"x"']}, "the name exists but has no SRV records"),
        ({(DOMAIN_SRV, "SRV"): ["0 0 0 ."]}, "its only record says no DC offers LDAP (target '.')"),
    ],
)
def test_a_name_without_usable_srv_records_says_so(zone: dict[tuple[str, str], list[str]], why: str) -> None:
    with dns_server(zone) as server, pytest.raises(ConfigurationError) as caught:
        Link(_settings(server), logging.getLogger("test")).connect()
    assert f"no SRV records for {DOMAIN_SRV} at DNS server {server.address}: {why}" in str(caught.value)


def test_a_dns_server_that_never_answers_stops_the_connect_within_dns_timeout() -> None:
    with dns_server({}, silent=True) as server, pytest.raises(ServerDownError) as caught:
        Link(_settings(server, dns_timeout=1), logging.getLogger("test")).connect()
    assert server.queried.is_set()
    assert str(caught.value).startswith(
        f"DNS lookup of the SRV records {DOMAIN_SRV} failed: no answer from DNS server {server.address} "
        "within dns_timeout (1 s)"
    ), caught.value


def test_when_no_dc_found_answers_the_error_names_each_and_the_srv_name() -> None:
    """Two DCs in DNS, one without an address there, the other refusing: both named, and where the list came from."""
    dead = _loopback()
    zone = {
        (DOMAIN_SRV, "SRV"): [_srv(0, 0, "dc-gone.corp.example.test"), _srv(1, 0, "dc-dead.corp.example.test")],
        ("dc-dead.corp.example.test", "A"): [dead],
    }
    with dns_server(zone) as server, pytest.raises(ServerDownError) as caught:
        Link(_settings(server, port=636), logging.getLogger("test")).connect()
    assert ("dc-dead.corp.example.test", "A") in server.asked  # no addresses along: asked one by one
    message = str(caught.value)
    assert message.startswith(
        f"cannot reach any of the 2 domain controllers (found in DNS: the SRV records {DOMAIN_SRV}; "
        f"1 attempt(s) each): [1] dc-gone.corp.example.test (from the SRV records) has no address (A or AAAA) "
        f"at DNS server {server.address}. [2] dc-dead.corp.example.test:636 (ldaps) refused the connection: "
        "nothing listens on port 636 (check port; the SRV records name this DC). "
    ), message
    assert message.endswith("or that DNS lists the DCs that run")


def test_a_run_whose_domain_has_no_dcs_in_dns_exits_2_naming_the_srv_name(tmp_path: Path) -> None:
    """``mvsync run`` in a child process, as a scheduler starts it: stopped-configuration, exit code 2."""
    with dns_server({}) as server:
        lines = f'domain = "{DOMAIN}"\ndns_servers = ["{server.address}"]'
        code, output = run_import_in_child(import_config(636, lines, host=None), tmp_path)
    assert code == 2, output
    assert "stopped-configuration" in output and f"no SRV records for {DOMAIN_SRV}" in output, output
    assert "Traceback" not in output and "not-the-point" not in output


# -- the real DC, found in DNS ----------------------------------------------------------------------
@pytest.fixture
def fqdn(ad_env: ADTestEnv) -> str:
    """The Samba DC's DNS name: what its certificate names and its SRV records name (the harness's own DC)."""
    try:
        return dc_fqdn(ad_env.ad)
    except SambaUnavailable:
        pytest.skip("an external directory: its DC's DNS name is not known here")


def full_import_found_in_dns(
    ad_env: ADTestEnv, zone: dict[Any, Any], **settings: Any
) -> tuple[RunResult, str, list[tuple[str, str]]]:
    """The "Full" profile with ``domain`` set and the DCs found through a loopback DNS server serving ``zone``
    (``settings`` add to the agent's): the run, the message its history recorded, and what DNS was asked."""
    with dns_server(zone, glue=True) as server:
        where = {"host": None, "domain": ad_env.ad.upn_suffix, "dns_servers": [server.address]}
        engine = _engine(ad_env, **where, **settings)
        try:
            run = engine.run_profile("Full")
            return run, _history_message(engine, run.run_id), list(server.asked)
        finally:
            engine.close()


@pytest.mark.samba
def test_a_full_import_finds_the_dc_in_dns_passes_over_a_dead_one_and_history_names_it(
    ad_env: ADTestEnv, fqdn: str
) -> None:
    """SRV records: a dead DC at priority 0, the Samba DC at priority 10 (SRV port 389: the agent keeps its
    LDAPS port), their addresses sent along (as AD's DNS does). Before: ``domain`` was no setting, and
    ``host`` was required."""
    dead = "dc-dead.mvsync.test"
    zone = {
        (f"_ldap._tcp.dc._msdcs.{ad_env.ad.upn_suffix}", "SRV"): [_srv(0, 100, dead), _srv(10, 100, fqdn)],
        (dead, "A"): [_loopback()],
        (fqdn, "A"): [socket.gethostbyname(ad_env.ad.host)],
    }
    ad_env.add_users(ad_env.specs(2, photos=False))
    run, recorded, asked = full_import_found_in_dns(ad_env, zone, reconnect_attempts=0)
    step = run.steps[0]
    assert step.status == "success" and step.counters.get("adds") == 2, step.as_dict()
    port = ad_env.ad.ldaps_port
    assert step.message.startswith(
        f"served by domain controller {fqdn}:{port} (ldaps), after passing over {dead} ({dead}:{port} (ldaps) "
        "refused the connection"
    ), step.message
    assert recorded == step.message
    assert {kind for _, kind in asked} == {"SRV"}  # the addresses came along with the SRV records


@pytest.mark.samba
def test_a_kerberos_bind_to_a_dc_found_in_dns_asks_for_ldap_slash_its_srv_name(
    ad_env: ADTestEnv, samba_kerberos: KerberosAccount
) -> None:
    """No kerberos_host: the SPN is ``ldap/<SRV target>`` (the DC's DNS name, which it registers), not the
    address DNS gave for it (the KDC knows no ``ldap/127.0.83.1``)."""
    fqdn = samba_kerberos.spn_host
    zone = {
        (f"_ldap._tcp.dc._msdcs.{ad_env.ad.upn_suffix}", "SRV"): [_srv(0, 100, fqdn)],
        (fqdn, "A"): [socket.gethostbyname(ad_env.ad.host)],
    }
    with dns_server(zone) as server:
        where = {"host": None, "domain": ad_env.ad.upn_suffix, "dns_servers": [server.address]}
        connector = ad_env.connector(**kerberos_settings(samba_kerberos, kerberos_host=None), **where, open=False)
        check = connector.check()
    assert check.ok, check.detail
    assert f"bound to domain controller {fqdn}:{ad_env.ad.ldaps_port} (ldaps)" in check.detail, check.detail
    assert "(Kerberos)" in check.detail


@pytest.mark.samba
@pytest.mark.parametrize("named", ["the DC's name", "another name"])
def test_the_certificate_is_checked_for_the_srv_target_not_the_address(
    ad_env: ADTestEnv, fqdn: str, named: str
) -> None:
    """The DC is reached through a relay on a loopback address its certificate does not name: with the SRV
    target the DC's own DNS name the bind succeeds (checked for that name); with another name it stops,
    naming the target and what the certificate names. Before, the message said "not None: set host"."""
    target = fqdn if named == "the DC's name" else f"impostor.{ad_env.ad.upn_suffix}"
    with faulty_proxy((ad_env.ad.host, ad_env.ad.ldaps_port), (_loopback(), 0)) as relay:
        zone = {
            (f"_ldap._tcp.dc._msdcs.{ad_env.ad.upn_suffix}", "SRV"): [_srv(0, 100, target)],
            (target, "A"): [relay._server.getsockname()[0]],
        }
        with dns_server(zone) as server:
            where = {"host": None, "domain": ad_env.ad.upn_suffix, "dns_servers": [server.address]}
            check = ad_env.connector(port=relay.port, open=False, **where).check()
    if named == "the DC's name":
        assert check.ok and f"bound to domain controller {target}:{relay.port} (ldaps)" in check.detail, check.detail
        return
    assert not check.ok
    expected = f"certificate: the certificate of {target}:{relay.port} (ldaps) names "
    assert check.detail.startswith(expected), check.detail
    assert f", not {target}: have the DC's certificate issued for its name in DNS" in check.detail, check.detail


def test_a_dc_found_in_dns_that_the_system_cannot_resolve_points_at_dns_not_at_fallback_hosts() -> None:
    """Pure logic: how a failed name lookup of a DC is told. Before: "check fallback_hosts" (or "check host"),
    settings the configuration does not have when the DCs come from DNS."""
    settings = ActiveDirectorySettings.model_validate(
        {"domain": "contoso.com", "bind_dn": "CN=svc,DC=x", "password": "p", "base_dns": ["DC=x"]}
    )
    error = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    text = describe_failure(error, "dc9.contoso.com:636 (ldaps)", settings, host="dc9.contoso.com")
    assert text == (
        "DNS: cannot resolve dc9.contoso.com ([Errno -2] Name or service not known); check the DC's address "
        "records (A/AAAA) in DNS, where the SRV records of domain name it"
    ), text


@pytest.mark.samba
def test_a_delta_goes_back_to_the_dns_found_dc_its_watermark_came_from(ad_env: ADTestEnv, fqdn: str) -> None:
    """Two DCs in DNS (relays to the Samba DC under two names its certificate holds): the first by priority
    resets connections during the full import, which the second serves; the first is back for the delta,
    which goes to the second all the same (a uSNChanged watermark means something only on its DC), though
    DNS lists the first first. Every step reads the records again."""
    other = "localhost"
    upstream = (ad_env.ad.host, ad_env.ad.ldaps_port)
    ad_env.add_users(ad_env.specs(2, photos=False))
    with (
        faulty_proxy(upstream, (_loopback(), 0)) as second,
        faulty_proxy(upstream, (_loopback(), second.port)) as first,
    ):
        zone = {
            (f"_ldap._tcp.dc._msdcs.{ad_env.ad.upn_suffix}", "SRV"): [_srv(0, 100, fqdn), _srv(10, 100, other)],
            (fqdn, "A"): [first._server.getsockname()[0]],
            (other, "A"): [second._server.getsockname()[0]],
        }
        with dns_server(zone, glue=True) as server:
            where = {"host": None, "domain": ad_env.ad.upn_suffix, "dns_servers": [server.address]}
            engine = _engine(ad_env, **where, port=second.port, delta_method="usn", reconnect_attempts=0)
            full, delta = full_then_delta(engine, first)
    assert full.status == "success", full.steps[0].as_dict()
    assert full.steps[0].message.startswith(f"served by domain controller {other}:{second.port} (ldaps), after "), (
        full.steps[0].message
    )
    assert delta.status == "success", delta.steps[0].as_dict()
    assert delta.steps[0].message == f"served by domain controller {other}:{second.port} (ldaps)"
    assert server.asked.count((f"_ldap._tcp.dc._msdcs.{ad_env.ad.upn_suffix}", "SRV")) == 2


@pytest.mark.samba
def test_an_export_writes_through_the_dns_found_dc(ad_env: ADTestEnv, fqdn: str) -> None:
    """The export's pool of connections (export_connections) uses the step's list of DCs: photos written, the
    step served by the DC from DNS, the records read once per step that connects (import, export)."""
    srv = f"_ldap._tcp.dc._msdcs.{ad_env.ad.upn_suffix}"
    zone = {(srv, "SRV"): [_srv(0, 100, fqdn)], (fqdn, "A"): [socket.gethostbyname(ad_env.ad.host)]}
    names = list(ad_env.add_users(ad_env.specs(3, photos=False)))
    photos = ad_env.tmp_path / "hr-photos"
    photos.mkdir()
    for i, name in enumerate(names):
        (photos / f"{name}.jpg").write_bytes(jpeg(800 + i))
    with dns_server(zone) as server:
        where = {"host": None, "domain": ad_env.ad.upn_suffix, "dns_servers": [server.address]}
        config = photo_sync_config(ad_env, ad_env.ou, photos, {**where, "export_connections": 3})
        engine = Engine(config_from_dict(config, base_dir=ad_env.tmp_path))
        try:
            prepared = engine.run_profile("Prepare")
            exported = engine.run_profile("Export")
        finally:
            engine.close()
    assert prepared.status == "success", [s.as_dict() for s in prepared.steps]
    step = exported.steps[0]
    assert exported.status == "success" and step.counters.get("export_updates") == 3, step.as_dict()
    assert step.message == f"served by domain controller {fqdn}:{ad_env.ad.ldaps_port} (ldaps)", step.message
    assert [ad_env.read(name, "thumbnailPhoto") for name in names] == [[jpeg(800 + i)] for i in range(3)]
    assert server.asked.count((srv, "SRV")) == 2


@pytest.mark.parametrize("issued_for", ["the address only", "the SRV target"])
def test_a_dc_found_in_dns_must_have_a_certificate_for_its_srv_name_not_for_its_address(
    issued_for: str, tmp_path: Path
) -> None:
    """DNS gives the DC ``dc1`` at 127.0.0.1; the agent connects to that address and checks the certificate
    for the name. Before: ldap3 accepted a certificate that named the address OR the name (``valid_names``
    adds to the address, RFC 6125 6.4 wants the name asked for), so a certificate issued for 127.0.0.1 alone,
    which any host at that address may hold, passed for dc1. Now only the SRV target counts: a certificate
    for the address alone stops at the handshake, naming what it names; one for the target passes (the
    stand-in closes after the handshake, which is then a lost connection, not a certificate error)."""
    target = f"dc1.{DOMAIN}"
    ca = trustme.CA()
    certificate = ca.issue_cert("127.0.0.1" if issued_for == "the address only" else target)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    zone = {(DOMAIN_SRV, "SRV"): [_srv(0, 100, target)], (target, "A"): ["127.0.0.1"]}
    with _tls_dc(certificate) as port, dns_server(zone) as server:
        link = Link(_settings(server, port=port, ca_file=ca_file, connect_timeout=5), logging.getLogger("test"))
        with pytest.raises(StopRunError) as caught:
            link.connect()
    message = str(caught.value)
    if issued_for == "the SRV target":
        assert isinstance(caught.value, ServerDownError) and "certificate" not in message, message
        return
    assert not isinstance(caught.value, ServerDownError), message  # another attempt cannot fix it
    assert message.startswith(
        f"certificate: the certificate of {target}:{port} (ldaps) names 127.0.0.1, not {target}: have the DC's "
        "certificate issued for its name in DNS"
    ), message
