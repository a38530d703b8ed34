"""This host's AD site, found by LDAP ping, as Windows' DC locator finds it (``domain`` without ``site``).

Why: the domain-wide SRV records list every DC of the domain, in any site; a sync server in Paris bound to
a DC in Sydney. DsGetDcName asks a DC an LDAP ping (MS-ADTS 6.3.3) whose answer, a
NETLOGON_SAM_LOGON_RESPONSE_EX (MS-ADTS 6.3.1.9), names the client's site (ClientSiteName, from the subnet
objects), then uses that site's SRV records. Before, the agent never asked: it stayed on whichever DC of the
domain's list answered first.

The answer's parser is tested against bytes built per the spec here (with and without name compression)
and against the session's Samba DC's real answer; the locator's choices against a real DNS server on
loopback; the whole path against the Samba DC with a site and a subnet holding 127.0.0.0/8 made for the
test (``tests.harness.samba_dc.client_site``), the DNS server publishing the site's SRV record for the DC
under another name (a relay), as ``test_ad_dc_locator`` does.
"""

from __future__ import annotations

import dataclasses
import logging
import socket
import struct
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from ldap3 import Connection

from connector.agents.active_directory import ActiveDirectorySettings
from connector.agents.active_directory._connection import Link
from connector.agents.active_directory._locator import DcLocator
from connector.agents.active_directory._netlogon import (
    NTVER_5EX,
    NetlogonError,
    NetlogonResponse,
    ldap_ping,
    parse_netlogon,
    ping_filter,
)
from tests.agents.active_directory.conftest import ADTestEnv
from tests.agents.active_directory.test_ad_dc_locator import (
    DOMAIN,
    DOMAIN_SRV,
    _settings,
    _srv,
    full_import_found_in_dns,
)
from tests.agents.active_directory.test_ad_failover import _loopback
from tests.harness.dns_server import dns_server
from tests.harness.samba_dc import SambaUnavailable, client_site, dc_fqdn
from tests.harness.sockets import faulty_proxy

GUID = uuid.UUID("59ffd9c9-add4-4bf2-adff-57d262ecd325")
#: The Samba DC's answer to ``ping_filter("mvsync.test")`` over LDAPS (Samba 4.17, captured from the session's
#: DC with no subnet defined): opcode 23, names compressed with pointers, ClientSiteName a pointer to DcSiteName.
SAMBA_ANSWER = (
    b"\x17\x00\x00\x00\xbd\x11\x00\x00\xc9\xd9\xffY\xd4\xad\xf2K\xad\xffW\xd2b\xec\xd3%\x06mvsync\x04test\x00"
    b"\xc0\x18\x03dc1\xc0\x18\x06MVSYNC\x00\x03DC1\x00\x00\x17Default-First-Site-Name\x00\xc0;\x05\x00\x00\x00"
    b"\xff\xff\xff\xff"
)
#: The same DC's answer to NtVer 0x1E (V5, V5EX, 5EX_WITH_IP, WITH_CLOSEST_SITE): DcSockAddrSize 16 and DcSockAddr
#: (127.0.83.1) follow ClientSiteName, the answer's NtVersion is 0x0D; no NextClosestSiteName although asked (its
#: answer to NtVer 0x16, the agent's, is byte for byte SAMBA_ANSWER: Samba 4.17 does not fill the field).
SAMBA_ANSWER_WITH_IP = (
    SAMBA_ANSWER[:-8]
    + b"\x10\x02\x00\x00\x00\x7f\x00S\x01\x00\x00\x00\x00\x00\x00\x00\x00\r\x00\x00\x00\xff\xff\xff\xff"
)
FIELDS = (
    "dns_forest_name",
    "dns_domain_name",
    "dns_host_name",
    "netbios_domain_name",
    "netbios_computer_name",
    "user_name",
    "dc_site_name",
    "client_site_name",
)


def _encode(names: list[str], *, compress: bool, start: int) -> bytes:
    """``names`` one after the other as RFC 1035 4.1.4 names: labels, and with ``compress`` a pointer to a
    suffix written before (offsets from the start of the structure, which the names begin ``start`` into)."""
    out = bytearray()
    written: dict[str, int] = {}
    for name in names:
        labels = name.split(".") if name else []
        for i in range(len(labels) + 1):
            suffix = ".".join(labels[i:])
            if compress and suffix and suffix in written:
                out += struct.pack(">H", 0xC000 | written[suffix])
                break
            if i == len(labels):
                out += b"\x00"
                break
            if compress:
                written.setdefault(suffix, start + len(out))
            label = labels[i].encode()
            out += bytes([len(label)]) + label
    return bytes(out)


def netlogon_bytes(
    values: dict[str, str],
    *,
    opcode: int = 23,
    flags: int = 0x3FD,
    compress: bool = True,
    next_closest: str | None = None,
    with_ip: bool = False,
) -> bytes:
    """A NETLOGON_SAM_LOGON_RESPONSE_EX laid out per MS-ADTS 6.3.1.9, the tokens 0xFFFF; with ``with_ip``
    DcSockAddrSize and DcSockAddr (10.0.0.1) after ClientSiteName, with ``next_closest`` NextClosestSiteName (after
    DcSockAddr: uncompressed; without it, compressed like the others), NtVersion saying which (5, 0x0D, 0x15, 0x1D)."""
    head = struct.pack("<HHI", opcode, 0, flags) + GUID.bytes_le
    names = [values.get(f, "") for f in FIELDS]
    if next_closest is not None and not with_ip:
        names.append(next_closest)
    body = _encode(names, compress=compress, start=len(head))
    if with_ip:
        body += bytes([16]) + struct.pack("<HH", 2, 0) + bytes([10, 0, 0, 1]) + bytes(8)
        if next_closest is not None:
            body += _encode([next_closest], compress=False, start=0)
    nt_version = 5 | (0x10 if next_closest is not None else 0) | (0x08 if with_ip else 0)
    return head + body + struct.pack("<IHH", nt_version, 0xFFFF, 0xFFFF)


PARIS = {
    "dns_forest_name": "contoso.com",
    "dns_domain_name": "emea.contoso.com",
    "dns_host_name": "dc-syd1.emea.contoso.com",
    "netbios_domain_name": "EMEA",
    "netbios_computer_name": "DC-SYD1",
    "dc_site_name": "Sydney",
    "client_site_name": "Paris",
}


# -- the answer's parser (pure) ---------------------------------------------------------------------
@pytest.mark.parametrize("compress", [True, False])
def test_the_answer_gives_both_sites_and_the_dcs_names(compress: bool) -> None:
    answer = parse_netlogon(netlogon_bytes(PARIS, compress=compress))
    assert (answer.opcode, answer.flags, answer.domain_guid) == (23, 0x3FD, GUID)
    assert {f: getattr(answer, f) for f in FIELDS} == {**PARIS, "user_name": ""}


@pytest.mark.parametrize("data", [SAMBA_ANSWER, SAMBA_ANSWER_WITH_IP], ids=["ntver-16", "ntver-1e"])
def test_samba_s_real_answer_parses(data: bytes) -> None:
    answer = parse_netlogon(data)
    assert answer.dns_host_name == "dc1.mvsync.test" and answer.netbios_computer_name == "DC1"
    assert answer.dc_site_name == answer.client_site_name == "Default-First-Site-Name"
    assert answer.domain_guid == GUID
    assert answer.next_closest_site_name == ""  # Samba 4.17 leaves it out, though asked
    # a client in the DC's own site: DS_CLOSEST_FLAG (0x80, MS-ADTS 6.3.1.2 "in the same site as the client") is set
    assert answer.flags & 0x80


@pytest.mark.parametrize(
    ("compress", "with_ip", "nearest"),
    [(True, False, "Lyon"), (False, False, "Lyon"), (True, True, "Lyon"), (True, False, "Sydney"), (True, False, "")],
    ids=["compressed", "labels", "after-dcsockaddr", "pointer-to-dcsitename", "empty"],
)
def test_the_answer_gives_the_next_closest_site_when_the_dc_sends_it(
    compress: bool, with_ip: bool, nearest: str
) -> None:
    """NextClosestSiteName (MS-ADTS 6.3.1.9) after ClientSiteName, or after DcSockAddr when the answer carries it;
    "Sydney" is the DC's site, so compressed it is a pointer to DcSiteName; a DC with no next closest site sends
    an empty name. Built per the spec: Samba does not fill it (the real-DC path is untested)."""
    answer = parse_netlogon(netlogon_bytes(PARIS, compress=compress, with_ip=with_ip, next_closest=nearest))
    assert answer.next_closest_site_name == nearest
    assert {f: getattr(answer, f) for f in FIELDS} == {**PARIS, "user_name": ""}
    assert parse_netlogon(netlogon_bytes(PARIS, with_ip=with_ip)).next_closest_site_name == ""


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x17\x00\x00\x00", "4 bytes: shorter than the 24-byte head"),
        (netlogon_bytes(PARIS, opcode=19), "opcode 19 is not NETLOGON_SAM_LOGON_RESPONSE_EX's"),
        (netlogon_bytes(PARIS)[:30], "dns_forest_name: a 7-byte label runs past the end"),
        (netlogon_bytes(PARIS)[:24] + b"\xc0\x18", "dns_forest_name: a compression pointer to offset 24 loops"),
        (netlogon_bytes(PARIS)[:24] + b"\xc0\xff", "points outside the answer"),
        (netlogon_bytes(PARIS)[:24] + b"\x80abc", "label length byte 0x80 is neither a length nor a pointer"),
        (netlogon_bytes(PARIS)[:24] + b"\x02\xff\xfe\x00", "a label is not UTF-8"),
        (netlogon_bytes({})[:-14], "the name runs past the end of the"),
        (
            netlogon_bytes(PARIS, next_closest="Lyon")[:-8] + b"\x00" + netlogon_bytes(PARIS)[-8:],
            "next_closest_site_name: 1 bytes left between it and NtVersion",
        ),
        (
            netlogon_bytes(PARIS)[:-8] + b"\x09Lyo" + netlogon_bytes(PARIS)[-8:],
            "next_closest_site_name: a 9-byte label",
        ),
    ],
)
def test_an_answer_that_is_not_the_structure_is_refused_naming_what(data: bytes, expected: str) -> None:
    with pytest.raises(NetlogonError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        parse_netlogon(data)


def test_the_filter_carries_ntver_as_four_little_endian_bytes() -> None:
    """NtVer 0x16: V5 | V5EX (the answer with the site names, as MS-ADTS 6.3.3's example asks) and WITH_CLOSEST_SITE
    (NextClosestSiteName too)."""
    assert ping_filter("contoso.com.") == r"(&(DnsDomain=contoso.com)(NtVer=\16\00\00\00))"
    assert ping_filter("contoso.com", NTVER_5EX) == r"(&(DnsDomain=contoso.com)(NtVer=\06\00\00\00))"


# -- the locator's choice (a real DNS server on loopback, no DC) -------------------------------------
SITE_SRV = f"_ldap._tcp.Paris._sites.dc._msdcs.{DOMAIN}"
SYD, PAR = "dc-syd1.corp.example.test", "dc-par1.corp.example.test"


def _answer(client: str, dc: str = "Sydney", nearest: str | None = None) -> NetlogonResponse:
    """An answer from a DC of site ``dc`` naming ``client`` (set after parsing: it may be no DNS name at all), and
    ``nearest`` as the next closest site."""
    data = netlogon_bytes({**PARIS, "dc_site_name": dc}, next_closest=nearest)
    return dataclasses.replace(parse_netlogon(data), client_site_name=client)


def test_the_client_s_site_dcs_come_first_and_the_dc_in_use_stays_behind_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    zone = {(DOMAIN_SRV, "SRV"): [_srv(0, 100, SYD), _srv(5, 100, PAR)], (SITE_SRV.lower(), "SRV"): [_srv(0, 100, PAR)]}
    with dns_server(zone) as server, caplog.at_level(logging.INFO):
        locator = DcLocator(_settings(server), logging.getLogger("test"))
        assert locator.wants_site and locator.controllers() == [SYD, PAR]
        assert locator.use_client_site(SYD, _answer("Paris")) is True
    assert locator.controllers() == [PAR, SYD] and not locator.wants_site
    assert locator.site_of(PAR) == "Paris" and locator.site_of(SYD) is None
    assert server.asked == [(DOMAIN_SRV, "SRV"), (SITE_SRV.lower(), "SRV")]
    assert (
        locator.source() == f"found in DNS: the SRV records {SITE_SRV}, {DOMAIN_SRV} (site Paris: found by LDAP ping)"
    )
    assert f"LDAP ping to {SYD}: this host is in site Paris (the DC is in Sydney): the site's DCs come first" in (
        caplog.text
    )


@pytest.mark.parametrize(
    ("client", "expected"),
    [
        ("", "the DC knows no site for this host (ClientSiteName empty"),
        ("sydney", "this host is in site sydney, as the DC is: staying on it"),
        ("Paris", f"but {SITE_SRV} has no usable DCs (the name does not exist (NXDOMAIN))"),
        ("Paris..Nord", "has no usable DCs (DNS lookup of the SRV records _ldap._tcp.Paris..Nord"),
    ],
)
def test_without_another_site_with_dcs_the_domain_s_list_stays(
    client: str, expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    """No site for this host, the DC's own site (names are case-insensitive), a site without SRV records
    (DsGetDcName then takes any DC of the domain too), a site name DNS cannot ask (AD allows site names that are
    not DNS labels, with a warning): the list does not change, said at INFO."""
    zone = {(DOMAIN_SRV, "SRV"): [_srv(0, 100, SYD), _srv(5, 100, PAR)]}
    with dns_server(zone) as server, caplog.at_level(logging.INFO):
        locator = DcLocator(_settings(server), logging.getLogger("test"))
        locator.controllers()
        assert locator.use_client_site(SYD, _answer(client)) is False
    assert locator.controllers() == [SYD, PAR] and locator.site_of(SYD) is None and not locator.wants_site
    assert expected in caplog.text
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.INFO]
    if client != "Paris":
        assert (SITE_SRV.lower(), "SRV") not in server.asked


LYON_SRV = f"_ldap._tcp.Lyon._sites.dc._msdcs.{DOMAIN}"
LYO = "dc-lyo1.corp.example.test"


def test_a_site_without_dcs_gives_way_to_its_next_closest_site(caplog: pytest.LogCaptureFixture) -> None:
    """Paris has no DCs in DNS; the DC names Lyon as its next closest site, which has: Lyon's DCs come first (the
    domain's others behind them), the step moves there, and the history says how the site was found. Before, the
    field was neither asked nor read: the domain's list, DCs of every site, stayed."""
    zone = {
        (DOMAIN_SRV, "SRV"): [_srv(0, 100, SYD), _srv(5, 100, PAR), _srv(9, 100, LYO)],
        (LYON_SRV.lower(), "SRV"): [_srv(0, 100, LYO)],
    }
    with dns_server(zone) as server, caplog.at_level(logging.INFO):
        settings = _settings(server)
        locator = DcLocator(settings, logging.getLogger("test"))
        locator.controllers()
        assert locator.use_client_site(SYD, _answer("Paris", nearest="Lyon")) is True
        link = Link(settings, logging.getLogger("test"), locator=locator)
        link.host = LYO
        described = link.describe()
    assert locator.controllers() == [LYO, SYD, PAR] and locator.site_of(LYO) == "Lyon"
    assert server.asked == [(DOMAIN_SRV, "SRV"), (SITE_SRV.lower(), "SRV"), (LYON_SRV.lower(), "SRV")]
    assert locator.source().endswith("(site Lyon: next closest to this host's site Paris, found by LDAP ping)")
    assert described == (
        f"domain controller {LYO}:636 (ldaps) of site Lyon (the next closest site to this host's site Paris, which "
        "has no DCs in DNS; found by LDAP ping)"
    )
    assert (
        f"LDAP ping to {SYD}: this host is in site Paris (the DC is in Sydney), but {SITE_SRV} has no usable DCs (the "
        f"name does not exist (NXDOMAIN)): the DCs of its next closest site Lyon come first ({LYON_SRV}): {LYO}, "
    ) in caplog.text


@pytest.mark.parametrize(
    ("nearest", "expected"),
    [
        ("Sydney", "its next closest site is Sydney, the DC's own: staying on it"),
        ("Lyon", f"nor does its next closest site's {LYON_SRV} (the name does not exist (NXDOMAIN)); using the domain"),
        ("", "has no usable DCs (the name does not exist (NXDOMAIN)); using the domain's DCs"),
    ],
)
def test_a_next_closest_site_that_changes_nothing_leaves_the_domain_s_list(
    nearest: str, expected: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The next closest site is the DC's own (it stays), has no DCs in DNS either, or is not named: the list does
    not change, said at INFO."""
    zone = {(DOMAIN_SRV, "SRV"): [_srv(0, 100, SYD), _srv(5, 100, PAR)]}
    with dns_server(zone) as server, caplog.at_level(logging.INFO):
        locator = DcLocator(_settings(server), logging.getLogger("test"))
        locator.controllers()
        assert locator.use_client_site(SYD, _answer("Paris", nearest=nearest)) is False
    assert locator.controllers() == [SYD, PAR] and locator.site_of(SYD) is None
    assert expected in caplog.text
    assert ((LYON_SRV.lower(), "SRV") in server.asked) == (nearest == "Lyon")


def test_site_set_means_no_ldap_ping() -> None:
    with dns_server({}) as server:
        assert not DcLocator(_settings(server, site="Paris"), logging.getLogger("test")).wants_site
    named = {"host": "dc1.contoso.com", "bind_dn": "CN=svc,DC=x", "password": "p", "base_dns": ["DC=x"]}
    assert not DcLocator(ActiveDirectorySettings.model_validate(named), logging.getLogger("test")).wants_site


# -- the real DC ---------------------------------------------------------------------------------------
@pytest.fixture
def fqdn(ad_env: ADTestEnv) -> str:
    try:
        return dc_fqdn(ad_env.ad)
    except SambaUnavailable:
        pytest.skip("an external directory: its sites and DNS name are not ours to change")


@pytest.fixture
def site(ad_env: ADTestEnv, fqdn: str) -> Iterator[str]:
    """A site of the test's own whose subnet holds 127.0.0.0/8 (this host as the DC sees it), removed after."""
    with client_site(ad_env.ad, f"Paris-{ad_env.tag}") as name:
        yield name


@pytest.mark.samba
def test_the_dc_names_the_site_of_this_host_s_subnet_in_its_answer(ad_env: ADTestEnv, fqdn: str, site: str) -> None:
    """The LDAP ping over the agent's own LDAPS connection, after its bind: Samba answers it over TCP."""
    link = Link(ad_env.settings(), logging.getLogger("test"))
    try:
        answer = ldap_ping(link.connect(), ad_env.ad.upn_suffix)
    finally:
        link.close()
    assert (answer.client_site_name, answer.dc_site_name) == (site, "Default-First-Site-Name")
    assert answer.dns_host_name == fqdn and answer.dns_domain_name == ad_env.ad.upn_suffix
    assert answer.next_closest_site_name == ""  # asked (NtVer 0x16); Samba 4.17 does not fill it


@pytest.mark.samba
def test_a_step_moves_to_a_dc_of_this_host_s_site(ad_env: ADTestEnv, fqdn: str, site: str) -> None:
    """The domain's SRV records name the DC (through one relay), the site's name it as ``localhost`` (another
    relay, on the same port): the step binds to the first, pings it, and is served by the site's DC; the run
    history says which site and how it was found."""
    upstream = (ad_env.ad.host, ad_env.ad.ldaps_port)
    ad_env.add_users(ad_env.specs(2, photos=False))
    site_srv = f"_ldap._tcp.{site}._sites.dc._msdcs.{ad_env.ad.upn_suffix}"
    with faulty_proxy(upstream, (_loopback(), 0)) as near, faulty_proxy(upstream, (_loopback(), near.port)) as far:
        zone = {
            (f"_ldap._tcp.dc._msdcs.{ad_env.ad.upn_suffix}", "SRV"): [_srv(0, 100, fqdn)],
            (site_srv.lower(), "SRV"): [_srv(0, 100, "localhost")],
            (fqdn, "A"): [far._server.getsockname()[0]],
            ("localhost", "A"): [near._server.getsockname()[0]],
        }
        run, recorded, asked = full_import_found_in_dns(ad_env, zone, port=near.port, reconnect_attempts=0)
    step = run.steps[0]
    assert step.status == "success" and step.counters.get("adds") == 2, step.as_dict()
    assert step.message == (
        f"served by domain controller localhost:{near.port} (ldaps) of site {site} (this host's site, found by "
        "LDAP ping)"
    ), step.message
    assert recorded == step.message
    assert (site_srv.lower(), "SRV") in asked


@pytest.mark.samba
def test_a_site_without_dcs_in_dns_keeps_the_domain_s_dc(
    ad_env: ADTestEnv, fqdn: str, site: str, caplog: pytest.LogCaptureFixture
) -> None:
    zone = {
        (f"_ldap._tcp.dc._msdcs.{ad_env.ad.upn_suffix}", "SRV"): [_srv(0, 100, fqdn)],
        (fqdn, "A"): [socket.gethostbyname(ad_env.ad.host)],
    }
    with dns_server(zone) as server, caplog.at_level(logging.INFO):
        where = {"host": None, "domain": ad_env.ad.upn_suffix, "dns_servers": [server.address]}
        check = ad_env.connector(open=False, logger=logging.getLogger("test.site"), **where).check()
    assert check.ok and f"bound to domain controller {fqdn}:{ad_env.ad.ldaps_port} (ldaps) as " in check.detail
    assert f"this host is in site {site} (the DC is in Default-First-Site-Name), but " in caplog.text
    assert "has no usable DCs (the name does not exist (NXDOMAIN)); using the domain's DCs" in caplog.text


@pytest.mark.samba
def test_site_set_overrides_the_ping(ad_env: ADTestEnv, fqdn: str, site: str) -> None:
    """``site`` names the site: no ping, its DCs first though the DC would name another site for this host."""
    domain = ad_env.ad.upn_suffix
    zone = {
        (f"_ldap._tcp.dc._msdcs.{domain}", "SRV"): [_srv(0, 100, fqdn)],
        (f"_ldap._tcp.default-first-site-name._sites.dc._msdcs.{domain}", "SRV"): [_srv(0, 100, fqdn)],
        (f"_ldap._tcp.{site.lower()}._sites.dc._msdcs.{domain}", "SRV"): [_srv(0, 100, "localhost")],
        (fqdn, "A"): [socket.gethostbyname(ad_env.ad.host)],
    }
    with dns_server(zone, glue=True) as server:
        where = {"host": None, "domain": domain, "site": "Default-First-Site-Name", "dns_servers": [server.address]}
        check = ad_env.connector(open=False, **where).check()
    assert check.ok and f"bound to domain controller {fqdn}:{ad_env.ad.ldaps_port} (ldaps) as " in check.detail
    assert all(site.lower() not in name for name, _ in server.asked), server.asked


@pytest.mark.samba
def test_a_dc_that_gives_no_netlogon_answer_does_not_stop_the_step(
    ad_env: ADTestEnv, fqdn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A DC asked for a domain it does not host answers the ping without a Netlogon value (MS-ADTS 6.3.3.3),
    as one that does not answer pings over TCP would: INFO, and the step goes on with the domain's DCs."""
    zone = {(DOMAIN_SRV, "SRV"): [_srv(0, 100, fqdn)], (fqdn, "A"): [socket.gethostbyname(ad_env.ad.host)]}
    with dns_server(zone) as server, caplog.at_level(logging.INFO):
        where = {"host": None, "domain": DOMAIN, "dns_servers": [server.address]}
        check = ad_env.connector(open=False, logger=logging.getLogger("test.site"), **where).check()
    assert check.ok and f"bound to domain controller {fqdn}:{ad_env.ad.ldaps_port} (ldaps) as " in check.detail
    expected = f"LDAP ping to {fqdn} gave no site (no Netlogon value in its answer (result 0 success): the DC does not"
    assert f"{expected} host domain {DOMAIN} (MS-ADTS 6.3.3.3)" in caplog.text
    assert "Traceback" not in caplog.text


@pytest.mark.samba
def test_a_connection_that_breaks_during_the_ping_does_not_stop_the_step(
    ad_env: ADTestEnv, fqdn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The first DC resets every connection right after the bind (its relay is told to at that moment, so the
    ping meets a real reset): INFO naming the DC, and the step goes on at the next DC of the domain's list."""
    upstream = (ad_env.ad.host, ad_env.ad.ldaps_port)
    with faulty_proxy(upstream, (_loopback(), 0)) as good, faulty_proxy(upstream, (_loopback(), good.port)) as bad:
        original = Link._bind

        def bind_then_cut(link: Link, conn: Any, host: str) -> bool:
            bound = original(link, conn, host)
            if host == "localhost":
                bad.reset()
            return bound

        monkeypatch.setattr(Link, "_bind", bind_then_cut)
        zone = {
            (f"_ldap._tcp.dc._msdcs.{ad_env.ad.upn_suffix}", "SRV"): [_srv(0, 100, "localhost"), _srv(10, 100, fqdn)],
            ("localhost", "A"): [bad._server.getsockname()[0]],
            (fqdn, "A"): [good._server.getsockname()[0]],
        }
        with dns_server(zone, glue=True) as server, caplog.at_level(logging.INFO):
            where = {"host": None, "domain": ad_env.ad.upn_suffix, "dns_servers": [server.address]}
            connector = ad_env.connector(
                open=False, port=good.port, reconnect_attempts=0, logger=logging.getLogger("test.site"), **where
            )
            check = connector.check()
    assert check.ok, check.detail
    # (localhost bound, so it counts as a DC this step lost, not as one passed over)
    took_over = f"bound to domain controller {fqdn}:{good.port} (ldaps), which took over from localhost:{good.port} "
    assert took_over in check.detail, check.detail
    broke = f"LDAP ping to localhost gave no site (the connection to localhost:{good.port} (ldaps) broke or timed out"
    assert f"{broke} during it (" in caplog.text


@pytest.mark.samba
def test_a_dc_that_never_answers_the_ping_costs_ping_timeout_not_receive_timeout(
    ad_env: ADTestEnv, fqdn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The first DC takes the ping and never answers it (its relay drops what the open connection sends from the
    bind on: ``hang_open``). Before, the ping waited receive_timeout (here 300 s) like any search; it only orders
    the DCs, so now it waits ping_timeout, INFO says so, and the step goes on with the domain's list (the same DC,
    on a new connection, which answers)."""
    upstream = (ad_env.ad.host, ad_env.ad.ldaps_port)
    with faulty_proxy(upstream, (_loopback(), 0)) as dc:
        original = Link._bind

        def bind_then_hang(link: Link, conn: Any, host: str) -> bool:
            bound = original(link, conn, host)
            if link.binds == 0:  # the step's first connection: the one the ping goes over
                dc.hang_open()
            return bound

        monkeypatch.setattr(Link, "_bind", bind_then_hang)
        waits = _ping_waits(monkeypatch)
        zone = {
            (f"_ldap._tcp.dc._msdcs.{ad_env.ad.upn_suffix}", "SRV"): [_srv(0, 100, "localhost")],
            ("localhost", "A"): [dc._server.getsockname()[0]],
        }
        with dns_server(zone, glue=True) as server, caplog.at_level(logging.INFO):
            where = {"host": None, "domain": ad_env.ad.upn_suffix, "dns_servers": [server.address]}
            connector = ad_env.connector(
                open=False,
                port=dc.port,
                receive_timeout=300,
                ping_timeout=0.5,
                reconnect_attempts=0,
                logger=logging.getLogger("test.site"),
                **where,
            )
            check = connector.check()
    assert check.ok, check.detail
    assert f"bound to domain controller localhost:{dc.port} (ldaps) as " in check.detail, check.detail
    waited = f"LDAP ping to localhost gave no site (localhost:{dc.port} (ldaps) did not answer it within ping_timeout"
    assert f"{waited} (0.5 s): the ping only orders the DCs)" in caplog.text, caplog.text
    assert waits == [0.5]  # what the ping waited for: ping_timeout, not receive_timeout (300 s: before, it did)
    assert dc.accepted == 2  # the hung connection, then the one the step used


def _ping_waits(monkeypatch: pytest.MonkeyPatch) -> list[float | None]:
    """The socket timeout each LDAP ping is sent with (the time its answer is waited for), in order."""
    real = Connection.search
    waits: list[float | None] = []

    def search(self: Connection, base: str, search_filter: str, *args: Any, **kwargs: Any) -> Any:
        if search_filter.startswith("(&(DnsDomain="):
            waits.append(self.socket.gettimeout())
        return real(self, base, search_filter, *args, **kwargs)

    monkeypatch.setattr(Connection, "search", search)
    return waits


@pytest.mark.samba
def test_the_ping_leaves_the_connection_s_receive_timeout_as_it_was(ad_env: ADTestEnv, fqdn: str) -> None:
    """The ping's own, shorter timeout is for the ping alone: the searches after it wait receive_timeout."""
    settings = ad_env.settings(receive_timeout=45)
    link = Link(settings, logging.getLogger("test"))
    try:
        conn = link.connect()
        answer = ldap_ping(conn, ad_env.ad.upn_suffix, timeout=0.5)
        assert conn.socket.gettimeout() == 45
    finally:
        link.close()
    assert answer.dns_host_name == fqdn
