"""Finding the domain controllers in DNS, as Windows' DC locator does, instead of naming them.

Why: DCs are replaced and renamed, and a configuration with fixed DC names breaks when they go. Every DC
registers DNS SRV records that say it offers LDAP for its domain, and Windows' DC locator (DsGetDcName)
reads them, then the targets' A records. Microsoft documents the names a client asks (MS-ADTS 6.3.6.1
"DNS-Based Discovery",
https://learn.microsoft.com/en-us/openspecs/windows_protocols/ms-adts/7fcdce70-5205-44d6-9c3a-260e616a2f04)
and the ones a DC registers, "Dc" and "DcAtSite" (MS-ADTS 6.3.1.10 "DNSRegistrationSettings",
https://learn.microsoft.com/en-us/openspecs/windows_protocols/MS-ADTS/76bc11f0-8bc2-4d6c-a643-328f479aae1b;
also "How DNS Support for Active Directory Works"):

* ``_ldap._tcp.dc._msdcs.<DnsDomainName>``: the DCs of the domain;
* ``_ldap._tcp.<SiteName>._sites.dc._msdcs.<DnsDomainName>``: those of one site (``site``).

With ``domain`` set, the agent reads them at the start of each step, the site's first (when ``site`` is
given) and then the domain's others, each in the order RFC 2782 prescribes (lowest priority first;
within a priority, a weighted random choice), and the failover of ``_connection`` walks that list as it
walks ``host`` and ``fallback_hosts``.

* **Port.** An SRV record's port is the LDAP port (389). The agent keeps ``port`` and ``security`` of
  the settings (636 for LDAPS by default) and takes only the host name from the record: a DC with a
  certificate serves LDAPS (and StartTLS on 389) on the same host, and LDAPS has no SRV record.
* **Names.** The SRV target is the DC's host name: its certificate must name it, and a Kerberos bind asks
  for ``ldap/<target>`` (the SPN every DC registers for its DNS name).
* **Which DNS.** By default the system's resolver configuration (``/etc/resolv.conf``; on Windows the
  network settings), the DCs' addresses then coming from the system too. ``dns_servers`` names other
  servers (a sync server whose DNS is not the AD DNS); they are then also asked the DCs' addresses (or
  sent them along with the SRV records), the connection goes to that address, and the certificate is
  checked for the DC's name alone (``_NamedTls``: one that names only the address does not pass).
* **Which site.** Without ``site``, the first DC that binds is asked this host's site by LDAP ping
  (``_netlogon``, over the connection the step makes anyway); a site other than the DC's, with SRV
  records, puts its DCs first (:meth:`DcLocator.use_client_site`), as DsGetDcName does; a client site without
  SRV records gives way to the next closest site the same answer names (NextClosestSiteName), if it has. Once
  per step: the locator is the step's, and every connection of the step then uses one list.
* **Bounded.** Each lookup waits ``dns_timeout`` seconds at most; a DNS server that never answers stops
  the step with a message naming it and the name asked, not a hang.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from connector.agents.active_directory._netlogon import NetlogonResponse
from connector.agents.active_directory._settings import ActiveDirectorySettings, parse_dns_server
from connector.sdk import ConfigurationError, ServerDownError

__all__ = ["DcLocator", "DnsLookupFailed", "SrvRecord", "rfc2782_order"]

#: What to check when a setting's SRV name has no records.
_CHECK = {
    "domain": "domain (the AD domain's DNS name, as `Get-ADDomain` or `nltest /dsgetdc:<domain>` shows it)",
    "site": "site (the AD site's name, as `Get-ADReplicationSite` or `nltest /dsgetsite` shows it)",
}


@dataclass(frozen=True, slots=True)
class SrvRecord:
    """One SRV record's fields that choose a DC (RFC 2782); the port is not used (see the module)."""

    target: str
    priority: int
    weight: int


class _NoRecords(Exception):
    """A DNS name without usable SRV records; the message says why (NXDOMAIN, no SRV, target ".")."""


class DnsLookupFailed(OSError):
    """A DC's address could not be looked up; the connect passes over to the next DC (an ``OSError``,
    as a name the system cannot resolve is)."""


def rfc2782_order(records: Sequence[SrvRecord], rng: random.Random) -> list[SrvRecord]:
    """``records`` in the order a client tries them (RFC 2782, "Usage rules"): lower priority first; within
    a priority, repeatedly a record drawn at random with a chance proportional to its weight (records of
    weight 0 first in the running sum, so they have a small chance when others have weight)."""
    ordered: list[SrvRecord] = []
    for priority in sorted({r.priority for r in records}):
        group = sorted((r for r in records if r.priority == priority), key=lambda r: r.weight != 0)
        while group:
            ordered.append(group.pop(_weighted_pick(group, rng)))
    return ordered


def _weighted_pick(group: list[SrvRecord], rng: random.Random) -> int:
    """The index of the first record whose running sum of weights reaches a uniform draw in [0, sum]."""
    drawn = rng.randint(0, sum(r.weight for r in group))
    running = 0
    for index, record in enumerate(group):
        running += record.weight
        if running >= drawn:
            return index
    return len(group) - 1  # not reached: the last running sum is the total


class DcLocator:
    """The DCs a step may use, in the order to try them: ``host`` and ``fallback_hosts``, or those found in
    DNS for ``domain`` (looked up once, at the first need, so every connection of a step uses one list)."""

    def __init__(self, settings: ActiveDirectorySettings, logger: logging.Logger, rng: random.Random | None = None):
        self.settings = settings
        self.logger = logger
        self._rng = rng or random.Random()
        self._found: list[str] | None = None
        self._glue: dict[str, str] = {}
        self._resolver: dns.resolver.Resolver | None = None
        #: Whether the step's LDAP ping was made (or is not to be: ``site`` set, or no ``domain``).
        self._pinged = not self.located or settings.site is not None
        #: The site the LDAP ping named whose DCs lead the list (the client's, or the next closest to it); None: none.
        self.found_site: str | None = None
        #: The client's site when ``found_site`` is the next closest to it (it has no DCs in DNS); None otherwise.
        self._client_site: str | None = None
        self._site_dcs: set[str] = set()

    @property
    def located(self) -> bool:
        """Whether the DCs come from DNS (``domain``) rather than the configuration."""
        return self.settings.domain is not None

    def controllers(self) -> list[str]:
        """The DCs' host names, in the order to try them."""
        if not self.located:
            return self.settings.hosts
        if self._found is None:
            self._found = self._lookup()
        return self._found

    def source(self) -> str:
        """Where the list of DCs comes from, as messages say it."""
        if not self.located:
            return "host, then fallback_hosts"
        found = ""
        if self.found_site and self._client_site:
            found = (
                f" (site {self.found_site}: next closest to this host's site {self._client_site}, found by LDAP ping)"
            )
        elif self.found_site:
            found = f" (site {self.found_site}: found by LDAP ping)"
        return f"found in DNS: the SRV records {', '.join(self._names())}{found}"

    # -- the client's site (LDAP ping) ------------------------------------------------------------
    @property
    def wants_site(self) -> bool:
        """Whether the step still has to ask a DC this host's site: ``domain`` without ``site``, not asked yet.
        Once per step (the locator is the step's), not per connection: every connection then uses one list."""
        return not self._pinged

    def site_of(self, host: str) -> str | None:
        """The site the LDAP ping found, when ``host`` is one of its DCs (in its SRV records); else None."""
        return self.found_site if host.lower() in self._site_dcs else None

    def site_note(self) -> str:
        """How the site of ``site_of`` was found, as the run history says it."""
        if self._client_site:
            return (
                f"the next closest site to this host's site {self._client_site}, which has no DCs in DNS; found by "
                "LDAP ping"
            )
        return "this host's site, found by LDAP ping"

    def site_unknown(self, host: str, why: str) -> None:
        """The LDAP ping to ``host`` failed: the step goes on with the domain's DCs, as before (INFO, not a
        warning: a DC may simply not answer pings over LDAP)."""
        self._pinged = True
        self.logger.info("LDAP ping to %s gave no site (%s): using the domain's DCs as DNS lists them", host, why)

    def use_client_site(self, host: str, answer: NetlogonResponse) -> bool:
        """Put the DCs of the client's site (``answer``'s ClientSiteName, from the DC ``host``) first, as
        DsGetDcName does, when it differs from the DC's site and DNS lists DCs for it; True when ``host`` is
        not one of them (the connection should move to a DC of the site).

        When the client's site has no SRV records, the next closest site the DC named (NextClosestSiteName,
        ``_use_next_closest``) comes first instead, if DNS lists DCs for it. Falls back to the domain's list (INFO)
        when the DC knows no site for this host (no subnet object holds its address), or neither site has SRV
        records (DsGetDcName too then takes any DC of the domain)."""
        self._pinged = True
        client, dc_site = answer.client_site_name, answer.dc_site_name
        if not client:
            self.logger.info(
                "LDAP ping to %s: the DC knows no site for this host (ClientSiteName empty: no subnet object holds "
                "its address); using the domain's DCs as DNS lists them",
                host,
            )
            return False
        if client.lower() == dc_site.lower():
            self.logger.info("LDAP ping to %s: this host is in site %s, as the DC is: staying on it", host, client)
            return False
        name = self._site_srv(client)
        head = f"LDAP ping to {host}: this host is in site {client} (the DC is in {dc_site or 'no site'})"
        try:
            site_dcs = self._srv_targets(name)
        except _NoRecords as exc:
            return self._use_next_closest(host, answer, f"{head}, but {name} has no usable DCs ({exc})")
        except ServerDownError as exc:
            self.logger.info(
                "%s, but %s has no usable DCs (%s); using the domain's DCs as DNS lists them", head, name, exc
            )
            return False
        return self._lead_with(host, client, site_dcs, f"{head}: the site's DCs come first ({name})")

    def _use_next_closest(self, host: str, answer: NetlogonResponse, head: str) -> bool:
        """The client's site has no DCs in DNS: put those of the next closest site the DC named first (MS-ADTS
        6.3.1.9 NextClosestSiteName: of the sites with DCs, the one with the cheapest site links from the client's),
        as Windows' locator does with its "Try Next Closest Site" policy; the domain's others stay behind them.

        Why: the domain-wide list holds DCs of every site, so a host in a site without DCs reached one at random
        (Sydney from Paris) when the DC had named a site next door."""
        client, dc_site, nearest = answer.client_site_name, answer.dc_site_name, answer.next_closest_site_name
        if not nearest or nearest.lower() == client.lower():
            self.logger.info("%s; using the domain's DCs as DNS lists them", head)
            return False
        if nearest.lower() == dc_site.lower():
            self.logger.info("%s; its next closest site is %s, the DC's own: staying on it", head, nearest)
            return False
        name = self._site_srv(nearest)
        try:
            site_dcs = self._srv_targets(name)
        except (_NoRecords, ServerDownError) as exc:
            self.logger.info(
                "%s, nor does its next closest site's %s (%s); using the domain's DCs as DNS lists them",
                head,
                name,
                exc,
            )
            return False
        self._client_site = client
        return self._lead_with(
            host, nearest, site_dcs, f"{head}: the DCs of its next closest site {nearest} come first ({name})"
        )

    def _lead_with(self, host: str, site: str, site_dcs: list[str], said: str) -> bool:
        """Put ``site``'s DCs (``site_dcs``) before the domain's others, saying so (``said``); whether ``host`` is
        not one of them (the connection should move)."""
        self.found_site = site
        self._site_dcs = seen = {h.lower() for h in site_dcs}
        self._found = site_dcs + [h for h in self.controllers() if h.lower() not in seen]
        self.logger.info("%s: %s", said, ", ".join(self._found))
        return host.lower() not in seen

    def address(self, host: str) -> str:
        """Where to connect to reach ``host``: the name itself (the system resolves it), or with
        ``dns_servers`` its address from those servers (the system's DNS may not know the AD zone)."""
        if not (self.located and self.settings.dns_servers):
            return host
        if host.lower() in self._glue:
            return self._glue[host.lower()]
        for rdtype in ("A", "AAAA"):
            try:
                answer = self._get_resolver().resolve(host, rdtype, search=False)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            except dns.exception.DNSException as exc:
                msg = f"{host} (from the SRV records): its address could not be looked up: {self._why(exc)}"
                raise DnsLookupFailed(msg) from None
            self._glue[host.lower()] = str(next(iter(answer)))
            return self._glue[host.lower()]
        raise DnsLookupFailed(f"{host} (from the SRV records) has no address (A or AAAA) at {self._servers()}")

    # -- looking up ---------------------------------------------------------------------------
    def _names(self) -> list[str]:
        """The SRV names asked, in order: the site's (``site``, or the one the LDAP ping found), then the domain's."""
        domain = str(self.settings.domain).rstrip(".")
        names = [f"_ldap._tcp.dc._msdcs.{domain}"]
        site = self.settings.site or self.found_site
        if site:
            names.insert(0, self._site_srv(site))
        return names

    def _site_srv(self, site: str) -> str:
        """The SRV name of a site's DCs ("DcAtSite", MS-ADTS 6.3.1.10)."""
        return f"_ldap._tcp.{site}._sites.dc._msdcs.{str(self.settings.domain).rstrip('.')}"

    def _lookup(self) -> list[str]:
        """The DCs of the site (if any), then the domain's others; errors name what was asked and how it failed."""
        *site_name, domain_name = self._names()
        found: list[str] = []
        for name in site_name:
            try:
                found = self._targets(name, "site")
            except (ConfigurationError, ServerDownError) as exc:  # Windows' locator too falls back to the domain
                self.logger.warning("%s; trying the domain's DCs (%s)", exc, domain_name)
        try:
            domain_wide = self._targets(domain_name, "domain")
        except (ConfigurationError, ServerDownError) as exc:
            if not found:
                raise
            self.logger.warning("%s; trying the site's DCs only", exc)
            domain_wide = []
        seen = {host.lower() for host in found}  # DNS names are case-insensitive
        found += [host for host in domain_wide if host.lower() not in seen]
        self.logger.info("domain controllers found in DNS (%s): %s", ", ".join(self._names()), ", ".join(found))
        return found

    def _targets(self, name: str, key: str) -> list[str]:
        """The host names of ``name``'s SRV records in RFC 2782 order: ConfigurationError (naming the setting
        ``key``) when there are none, ServerDownError when DNS does not answer."""
        try:
            return self._srv_targets(name)
        except _NoRecords as none:
            raise self._none(name, key, str(none)) from None

    def _srv_targets(self, name: str) -> list[str]:
        """The host names of ``name``'s SRV records in RFC 2782 order: _NoRecords (saying why) when there are
        none, ServerDownError when DNS does not answer."""
        try:
            answer = self._get_resolver().resolve(name, "SRV", search=False)
        except dns.resolver.NXDOMAIN:
            raise _NoRecords("the name does not exist (NXDOMAIN)") from None
        except dns.resolver.NoAnswer:
            raise _NoRecords("the name exists but has no SRV records") from None
        except dns.exception.DNSException as exc:
            msg = f"DNS lookup of the SRV records {name} failed: {self._why(exc)}"
            raise ServerDownError(msg) from None
        self._keep_glue(answer.response)
        records = [
            SrvRecord(r.target.to_text(omit_final_dot=True), r.priority, r.weight)
            for r in answer
            if r.target != dns.name.root  # "." : the service is decidedly not available there (RFC 2782)
        ]
        if not records:
            raise _NoRecords("its only record says no DC offers LDAP (target '.')")
        return [r.target for r in rfc2782_order(records, self._rng)]

    def _none(self, name: str, key: str, why: str) -> ConfigurationError:
        """No DC at ``name``: a wrong domain or site, or a DNS server that is not the domain's."""
        what = _CHECK[key]
        return ConfigurationError(
            f"no SRV records for {name} at {self._servers()}: {why}; check {what} and that this DNS server "
            "serves the domain's zone (or set dns_servers to one that does)",
            key=key,
        )

    def _keep_glue(self, response: dns.message.Message) -> None:
        """Addresses the DNS server sent along with the SRV records (AD DNS does), saving a lookup each."""
        for rrset in response.additional:
            if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA) and len(rrset):
                host = rrset.name.to_text(omit_final_dot=True).lower()
                self._glue.setdefault(host, str(next(iter(rrset))))

    def _get_resolver(self) -> dns.resolver.Resolver:
        if self._resolver is None:
            self._resolver = self._make_resolver()
        return self._resolver

    def _make_resolver(self) -> dns.resolver.Resolver:
        s = self.settings
        if s.dns_servers:
            resolver = dns.resolver.Resolver(configure=False)
            resolver.nameservers = [dns.nameserver.Do53Nameserver(*parse_dns_server(t)) for t in s.dns_servers]
        else:
            try:
                resolver = dns.resolver.Resolver(configure=True)
            except dns.exception.DNSException as exc:  # no /etc/resolv.conf, or one without a nameserver
                msg = f"the system has no usable DNS configuration ({exc}): set dns_servers to the domain's DNS servers"
                raise ConfigurationError(msg, key="dns_servers") from None
        resolver.timeout = resolver.lifetime = s.dns_timeout
        return resolver

    def _servers(self) -> str:
        """The DNS servers asked, as ``address:port`` (``[v6]:port``)."""
        resolver = self._get_resolver()
        servers = [_server_text(n, resolver.port) for n in resolver.nameservers]
        label = "DNS server" if len(servers) == 1 else "DNS servers"
        return f"{label} {', '.join(servers) or '(none configured)'}"

    def _why(self, exc: dns.exception.DNSException) -> str:
        """How a lookup failed, naming the servers asked and the setting that bounds it."""
        if isinstance(exc, dns.exception.Timeout):
            return (
                f"no answer from {self._servers()} within dns_timeout ({self.settings.dns_timeout:g} s): check "
                "that the server runs and that this host reaches it (UDP and TCP port 53), or set dns_servers"
            )
        if isinstance(exc, dns.resolver.NoNameservers):
            return f"{self._servers()} refused or failed to answer ({exc}): check the DNS server"
        return f"{type(exc).__name__} from {self._servers()}: {exc}"


def _server_text(server: str | dns.nameserver.Nameserver, default_port: int) -> str:
    """One DNS server as ``address:port``: the system's are addresses alone (port 53), the settings' carry theirs."""
    address, port = (server, default_port) if isinstance(server, str) else (str(server), default_port)
    if isinstance(server, dns.nameserver.AddressAndPortNameserver):
        address, port = server.address, server.port
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
