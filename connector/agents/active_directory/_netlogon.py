"""The LDAP ping: asking a DC which AD site this host is in, as Windows' DC locator does.

Why: with ``domain`` and no ``site``, the DNS list ``_ldap._tcp.dc._msdcs.<domain>`` holds every DC of the
domain, in any site: a sync server in Paris may bind to a DC in Sydney. Windows' DC locator (DsGetDcName)
asks a DC an *LDAP ping* first (MS-ADTS 6.3.3,
https://learn.microsoft.com/en-us/openspecs/windows_protocols/ms-adts/895a7744-aff3-4f64-bcfa-f8c05915d2e9):
a base search of the rootDSE with the filter ``(&(DnsDomain=<domain>)(NtVer=<flags>))`` for the ``Netlogon``
attribute, which MS-ADTS allows over LDAP on TCP as well as over CLDAP. The DC answers with a
NETLOGON_SAM_LOGON_RESPONSE_EX (MS-ADTS 6.3.1.9,
https://learn.microsoft.com/en-us/openspecs/windows_protocols/MS-ADTS/8401a33f-34a8-40ca-bf03-c3484b66265f)
naming its own site (DcSiteName) and the client's (ClientSiteName, from the subnet objects that hold the
client's address). The agent sends the ping over the connection it has just made and bound (no CLDAP/UDP
code of its own); :func:`parse_netlogon` reads the answer and is pure.

Layout of the answer (little-endian integers): Opcode (2 bytes), Sbz (2), Flags (4), DomainGuid (16,
MS-DTYP GUID), then DnsForestName, DnsDomainName, DnsHostName, NetbiosDomainName, NetbiosComputerName,
UserName, DcSiteName and ClientSiteName, each UTF-8 and compressed as DNS names are (RFC 1035 4.1.4: labels,
or a pointer to an earlier name; offsets count from the start of the answer; MS-ADTS 6.3.7), then
DcSockAddrSize and DcSockAddr (only with NETLOGON_NT_VERSION_5EX_WITH_IP, which the agent does not ask),
NextClosestSiteName (a name; only when asked with NETLOGON_NT_VERSION_WITH_CLOSEST_SITE), and the fixed footer:
NtVersion (4 bytes, the flags of the answer), LmNtToken and Lm20Token (2 each).

What Microsoft documents, and what the agent takes from it:

* MS-ADTS 6.3.3 ("LDAP Ping"): "An LDAP rootDSE search (section 3.1.1.3.2) that retrieves the rootDSE attribute
  netlogon (section 3.1.1.3.2.14) triggers the following processing on the server", with no transport named: the
  agent's search over its LDAPS (TCP) connection is one; Windows itself sends it over UDP (CLDAP).
* MS-ADTS 6.3.1.1 (NETLOGON_NT_VERSION,
  https://learn.microsoft.com/en-us/openspecs/windows_protocols/ms-adts/8e6a9efa-6312-44e2-af12-06ad73afbfa5): V5EX
  (0x4) "instructs the server to respond to LDAP ping and mailslot ping using the NETLOGON_SAM_LOGON_RESPONSE_EX
  structure"; V5EP (0x8) "Instructs the server to respond to mailslot ping using the NETLOGON_SAM_LOGON_RESPONSE_EX
  structure and also to return the IP address of the server in the response" (the agent does not ask it; Samba
  answers an LDAP ping that asks it with DcSockAddr, measured, so the parser passes over it when NtVersion says so);
  VCS (0x10, NETLOGON_NT_VERSION_WITH_CLOSEST_SITE) "Indicates that the client is querying for the closest site".
* MS-ADTS 6.3.1.2 (DS_FLAG,
  https://learn.microsoft.com/en-us/openspecs/windows_protocols/MS-ADTS/f55d3f53-351d-4407-940e-f53eb6154af0):
  "DS_CLOSEST_FLAG, 0x00000080: The server is in the same site as the client. This is a hint to the client that it
  is well-connected to the server in terms of speed." The locator compares ClientSiteName with DcSiteName
  instead, which says the same when both are given (Samba's answer to a client in its own site carries the flag:
  SAMBA_ANSWER in the tests) and also names the site to prefer when they differ; ``NetlogonResponse.flags`` keeps
  it.
* MS-ADTS 6.3.1.9 draws NextClosestSiteName after DcSockAddrSize and DcSockAddr (16 bytes) and before NtVersion,
  LmNtToken and Lm20Token.

**NextClosestSiteName.** The agent asks for it (NtVer 0x16: V5, V5EX, WITH_CLOSEST_SITE): the site with the lowest
site-link cost from the client's site among those with DCs, which Windows' locator tries when the client's own
site has none ("Try Next Closest Site" policy). A DC that does not fill it leaves it out altogether: Samba 4.17
answers NtVer 0x16 exactly as 0x06 (measured), so the field is read only when bytes are left between
ClientSiteName (and DcSockAddr, when the answer's NtVersion says it is there) and the footer, as Wireshark and
Scapy dissect the structure. ASSUMPTION: a Windows DC that has no next closest site to name leaves the field out
as Samba does, or sends it empty; both read as "". Searched: MS-ADTS 6.3.1.1, 6.3.1.2, 6.3.1.9, 6.3.3 (the excerpts
available here give the layout, not when the field is left out).
"""

from __future__ import annotations

import contextlib
import struct
import uuid
from dataclasses import dataclass
from typing import Any

from ldap3 import BASE, Connection

__all__ = ["NTVER", "NTVER_5EX", "NetlogonError", "NetlogonResponse", "ldap_ping", "parse_netlogon", "ping_filter"]

#: NETLOGON_NT_VERSION_5 | NETLOGON_NT_VERSION_5EX (MS-ADTS 6.3.1.1): ask for NETLOGON_SAM_LOGON_RESPONSE_EX,
#: which carries the site names (the example of MS-ADTS 6.3.3 sends the same).
NTVER_5EX = 0x00000006
#: NETLOGON_NT_VERSION_5EX_WITH_IP: the answer carries DcSockAddrSize and DcSockAddr.
_WITH_IP = 0x00000008
#: NETLOGON_NT_VERSION_WITH_CLOSEST_SITE: the answer carries NextClosestSiteName.
_WITH_CLOSEST_SITE = 0x00000010
#: What the agent's ping asks: the structure with the site names, and the next closest site.
NTVER = NTVER_5EX | _WITH_CLOSEST_SITE

#: Opcodes whose structure is NETLOGON_SAM_LOGON_RESPONSE_EX (MS-ADTS 6.3.1.3 and 6.3.1.9):
#: LOGON_SAM_LOGON_RESPONSE_EX, LOGON_SAM_PAUSE_RESPONSE_EX, LOGON_SAM_USER_UNKNOWN_EX.
_EX_OPCODES = {23: "LOGON_SAM_LOGON_RESPONSE_EX", 24: "LOGON_SAM_PAUSE_RESPONSE_EX", 25: "LOGON_SAM_USER_UNKNOWN_EX"}
_HEAD = struct.Struct("<HHI16s")
#: NtVersion, LmNtToken, Lm20Token: the fixed end of the structure.
_FOOTER = struct.Struct("<IHH")
_NAMES = (
    "dns_forest_name",
    "dns_domain_name",
    "dns_host_name",
    "netbios_domain_name",
    "netbios_computer_name",
    "user_name",
    "dc_site_name",
    "client_site_name",
)


class NetlogonError(ValueError):
    """An answer that is not a NETLOGON_SAM_LOGON_RESPONSE_EX as MS-ADTS 6.3.1.9 lays it out."""


@dataclass(frozen=True, slots=True)
class NetlogonResponse:
    """The fields of a NETLOGON_SAM_LOGON_RESPONSE_EX up to ClientSiteName, and NextClosestSiteName ("" where the
    DC sent none)."""

    opcode: int
    flags: int
    domain_guid: uuid.UUID
    dns_forest_name: str
    dns_domain_name: str
    dns_host_name: str
    netbios_domain_name: str
    netbios_computer_name: str
    user_name: str
    dc_site_name: str
    client_site_name: str
    next_closest_site_name: str = ""


def ping_filter(domain: str, ntver: int = NTVER) -> str:
    """The LDAP ping's filter: the domain's DNS name, and NtVer as 4 little-endian bytes, escaped (RFC 4515)."""
    escaped = "".join(f"\\{b:02x}" for b in struct.pack("<I", ntver))
    name = "".join(f"\\{ord(c):02x}" if c in "*()\\\0" else c for c in domain.rstrip("."))
    return f"(&(DnsDomain={name})(NtVer={escaped}))"


def ldap_ping(conn: Connection, domain: str, timeout: float | None = None) -> NetlogonResponse:
    """Send the LDAP ping over ``conn`` (open, bound or not) and read the answer, waiting ``timeout`` seconds at
    most for it (None: the connection's own receive timeout), the connection's timeout restored after.

    Why a timeout of its own: the ping only orders the DCs, and a DC that took it and never answered held the
    step for the whole receive_timeout (60 s by default) before it fell back to the domain's list. Windows'
    locator does not wait on one DC either: it pings the DCs DNS names and takes the first to answer (Microsoft,
    "How domain controllers are located in Windows", KB 247811,
    https://learn.microsoft.com/en-us/troubleshoot/windows-server/active-directory/how-domain-controllers-are-located).
    The default of ``ping_timeout`` (2 s) is ours (ASSUMPTION: Microsoft documents no figure for a ping over TCP;
    the figures it gives are for its UDP pings, which it sends to the next DC meanwhile: "After each ping, the client
    will wait 1/10th second for a response" in the Windows 2000 DNS white paper's locator algorithm, 0.4 s for each of
    the first five DCs in "Domain Controller Locator: an overview", Microsoft's archived TechNet blog): a DC answers
    the ping from memory, in milliseconds when it is well, and over TCP the connection is already made.

    Raises NetlogonError when the DC answers without a Netlogon value (a directory that is not AD, or a DC
    that does not answer LDAP pings over TCP) or with one this parser cannot read; ldap3's transport errors
    pass through (the caller decides what a broken connection means; a ``TimeoutError`` past ``timeout``, after
    which ldap3 has closed the connection).
    """
    sock = conn.socket
    before = sock.gettimeout() if sock is not None else None
    if timeout is not None and sock is not None:
        sock.settimeout(timeout)
    try:
        conn.search("", ping_filter(domain), BASE, attributes=["Netlogon"])
    finally:
        if timeout is not None and sock is not None:
            with contextlib.suppress(OSError):  # closed by ldap3 after a failed read: nothing to restore
                sock.settimeout(before)
    entries = [e for e in (conn.response or []) if e.get("type") == "searchResEntry"]
    values: list[Any] = next(
        (v for e in entries for k, v in (e.get("raw_attributes") or {}).items() if k.lower() == "netlogon"), []
    )
    if not values:
        result = conn.result or {}  # ldap3's search is false when no entry came: the result says more
        why = f"result {result.get('result')} {result.get('description', '')}".strip()
        raise NetlogonError(
            f"no Netlogon value in its answer ({why}): the DC does not host domain {domain} (MS-ADTS 6.3.3.3), or "
            "does not answer LDAP pings over TCP"
        )
    return parse_netlogon(bytes(values[0]))


def parse_netlogon(data: bytes) -> NetlogonResponse:
    """The NETLOGON_SAM_LOGON_RESPONSE_EX in ``data`` (MS-ADTS 6.3.1.9); NetlogonError if it is not one."""
    if len(data) < _HEAD.size:
        raise NetlogonError(f"{len(data)} bytes: shorter than the {_HEAD.size}-byte head of the structure")
    opcode, _sbz, flags, guid = _HEAD.unpack_from(data)
    if opcode not in _EX_OPCODES:
        raise NetlogonError(f"opcode {opcode} is not NETLOGON_SAM_LOGON_RESPONSE_EX's (23, 24 or 25)")
    offset = _HEAD.size
    names: list[str] = []
    for field in _NAMES:
        try:
            name, offset = _read_name(data, offset)
        except NetlogonError as exc:
            raise NetlogonError(f"{field}: {exc}") from None
        names.append(name)
    forest, domain, host, netbios_domain, netbios_computer, user, dc_site, client_site = names
    return NetlogonResponse(
        opcode,
        flags,
        uuid.UUID(bytes_le=guid),
        forest,
        domain,
        host,
        netbios_domain,
        netbios_computer,
        user,
        dc_site,
        client_site,
        _next_closest_site(data, offset),
    )


def _next_closest_site(data: bytes, offset: int) -> str:
    """NextClosestSiteName, read at ``offset`` (just after ClientSiteName), or "" when the DC left it out.

    Present when bytes are left before the footer once DcSockAddr (when the footer's NtVersion says the answer
    carries it) is passed over; an answer without a footer at all is read as before (nothing after the names)."""
    footer = len(data) - _FOOTER.size
    if footer <= offset:
        return ""
    nt_version, _lm_nt, _lm20 = _FOOTER.unpack_from(data, footer)
    if nt_version & _WITH_IP:  # DcSockAddrSize (1 byte), then that many bytes of DcSockAddr
        offset += 1 + data[offset]
    if offset == footer:
        return ""
    try:
        name, end = _read_name(data[:footer], offset)
    except NetlogonError as exc:
        raise NetlogonError(f"next_closest_site_name: {exc}") from None
    if end != footer:
        raise NetlogonError(f"next_closest_site_name: {footer - end} bytes left between it and NtVersion")
    return name


def _read_name(data: bytes, offset: int) -> tuple[str, int]:
    """The name at ``offset`` (RFC 1035 4.1.4 labels, possibly ending in a pointer) and the offset after it."""
    labels: list[str] = []
    end: int | None = None
    seen: set[int] = set()
    while True:
        if offset >= len(data):
            raise NetlogonError(f"the name runs past the end of the {len(data)} bytes")
        length = data[offset]
        if length == 0:
            end = offset + 1 if end is None else end
            break
        if length & 0xC0 == 0xC0:
            if offset + 1 >= len(data):
                raise NetlogonError("a compression pointer is cut off")
            target = ((length & 0x3F) << 8) | data[offset + 1]
            if target in seen or target >= len(data):
                raise NetlogonError(f"a compression pointer to offset {target} loops or points outside the answer")
            seen.add(target)
            end = offset + 2 if end is None else end
            offset = target
            continue
        if length & 0xC0:
            raise NetlogonError(f"label length byte 0x{length:02x} is neither a length nor a pointer")
        label = data[offset + 1 : offset + 1 + length]
        if len(label) < length:
            raise NetlogonError(f"a {length}-byte label runs past the end of the answer")
        try:
            labels.append(label.decode("utf-8"))
        except UnicodeDecodeError:
            raise NetlogonError(f"a label is not UTF-8: {label!r}") from None
        offset += 1 + length
    return ".".join(labels), end
