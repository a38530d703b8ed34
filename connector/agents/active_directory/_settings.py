"""Settings of the ``active-directory`` agent, validated when the configuration is loaded.

Everything that can be wrong without talking to the server is rejected here, so a typo stops
``mvsync validate`` instead of a run half-way through: a plain-LDAP bind without the explicit
opt-in, a filter that does not parse, base DNs that overlap (an object would be imported twice),
extra attributes in an unknown shorthand.
"""

from __future__ import annotations

import ipaddress
import re
import sys
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, SecretStr, field_validator, model_validator

from connector.agents.active_directory._ldap import dn_within, normalize_dn, validate_filter
from connector.sdk import ConnectorSettings, parse_psma_attribute

__all__ = ["ActiveDirectorySettings", "parse_dns_server"]

#: A DNS name of letters, digits and hyphens in dot-separated labels of up to 63 characters (RFC 1123).
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")
_DNS_NAME = re.compile(rf"{_DNS_LABEL.pattern}(\.{_DNS_LABEL.pattern})+")


def _psma_parse(value: list[str]) -> list[str]:
    """Each entry parses as a PSMA attribute (``parse_psma_attribute`` raises on a malformed name). In the
    field's type, so that ``mvsync schema``, which validates this setting alone, checks it too."""
    for spec in value:
        parse_psma_attribute(spec)
    return value


_PsmaAttributes = Annotated[list[str], AfterValidator(_psma_parse)]


class ActiveDirectorySettings(ConnectorSettings):
    """How to reach the domain controllers, what to read, and how hard to write."""

    host: str | None = Field(
        None, min_length=1, description="DC host name or address (the certificate must name it); or give domain"
    )
    fallback_hosts: list[str] = Field(
        default_factory=list,
        description="more DCs of the same domain, tried in this order when host cannot be reached (MIM's "
        "preferred domain controllers, host first); each certificate must name its DC",
    )
    domain: str | None = Field(
        None,
        min_length=1,
        description="instead of host and fallback_hosts: the AD domain's DNS name (contoso.com); its DCs are "
        "found at each step in the DC locator's DNS SRV records _ldap._tcp.dc._msdcs.<domain>, tried in "
        "RFC 2782 order (priority, then weight) on port (not the records' port 389: LDAPS is not in DNS); "
        "each certificate must name its DC as the record does, and a Kerberos SPN is ldap/<that name>",
    )
    site: str | None = Field(
        None,
        min_length=1,
        description="with domain: the AD site whose DCs are tried first (_ldap._tcp.<site>._sites.dc._msdcs."
        "<domain>), then the domain's others; default: the site the first DC names for this host in its "
        "answer to an LDAP ping, as Windows' DC locator asks",
    )
    dns_servers: list[str] = Field(
        default_factory=list,
        description="with domain: the DNS servers to ask ('10.0.0.10', '10.0.0.10:5353', '[fd00::a]:53'), "
        "when this host's own DNS does not serve the AD zone; they are asked the DCs' addresses too. "
        "Default: the system's resolver configuration",
    )
    dns_timeout: float = Field(5.0, gt=0, le=60, description="with domain: seconds to wait for each DNS lookup")
    ping_timeout: float = Field(
        2.0,
        gt=0,
        le=60,
        description="with domain and no site: seconds to wait for the DC's answer to the LDAP ping that asks this "
        "host's site; past it the domain's DCs are used as DNS lists them (the ping only orders the DCs, and a DC "
        "answers it from memory: one that takes longer is hung or overloaded)",
    )
    port: int | None = Field(None, ge=1, le=65535, description="default: 636 for ldaps, 389 otherwise")
    security: Literal["ldaps", "starttls", "plain"] = "ldaps"
    allow_plain_ldap: bool = Field(
        False, description="permit security='plain' (the password then crosses the network in clear)"
    )
    tls_validate: bool = Field(True, description="verify the server certificate and host name")
    ca_file: Path | None = Field(
        None,
        description="PEM CA bundle, the only CAs trusted then; default: this machine's trust store (on Windows "
        "the certificate stores, where Group Policy puts an enterprise CA)",
    )
    auth: Literal["simple", "kerberos"] = Field(
        "simple", description="'simple': bind_dn + password; 'kerberos': a keytab or credential cache, no password"
    )
    bind_dn: str | None = Field(None, min_length=1, description="DN, UPN or DOMAIN\\user of the account (simple)")
    password: SecretStr | None = None
    keytab: Path | None = Field(None, description="kerberos: keytab of the service account (Linux)")
    ccache: str | None = Field(
        None,
        description="kerberos: credential cache, e.g. FILE:/var/lib/mvsync/krb5cc, kept fresh by k5start or SSSD; "
        "with keytab, where tickets are cached (default: in memory)",
    )
    principal: str | None = Field(
        None, description="kerberos: the account's principal (user@REALM); default: the keytab's or cache's"
    )
    kerberos_host: str | None = Field(
        None, description="kerberos: the DC's name in its SPN ldap/<name> (default: host)"
    )
    kdc_timeout: float = Field(
        15.0,
        gt=0,
        description="kerberos (Linux): seconds to wait for the KDC to issue the bind's tickets; MIT krb5 alone "
        "waits about a minute for a KDC that accepts connections and never answers",
    )
    check_permissions: bool = Field(
        True,
        description="before an export step writes, read allowedAttributesEffective of the objects it changes "
        "and stop the step, writing nothing, if a right is missing",
    )
    base_dns: list[str] = Field(min_length=1, description="containers whose users are imported and may be written")
    filter: str = "(&(objectCategory=person)(objectClass=user))"
    filter_equals: dict[str, str] = Field(
        default_factory=dict,
        description="attribute = literal value pairs ANDed to the filter (values are escaped for you)",
    )
    extra_attributes: _PsmaAttributes = Field(
        default_factory=list,
        description="more attributes, PSMA style: 'name', 'name|binary', 'name|string[]'",
    )
    page_size: int = Field(500, ge=1, le=1000, description="paged-search page size (AD caps pages at 1000)")
    delta_method: Literal["auto", "dirsync", "usn"] = "auto"
    dirsync_object_security: bool = Field(
        False,
        description="DirSync OBJECT_SECURITY flag: for accounts without 'Replicating Directory Changes'",
    )
    connect_timeout: float = Field(
        10.0, gt=0, description="seconds for the TCP connect, and again for the TLS handshake (LDAPS or StartTLS)"
    )
    receive_timeout: int = Field(60, ge=1, description="seconds to wait for any single answer")
    reconnect_attempts: int = Field(3, ge=0, le=10)
    export_connections: int = Field(4, ge=1, le=16, description="connections (and threads) writing in parallel")
    max_writes_per_second: float | None = Field(
        50.0, ge=0, description="cap on LDAP writes per second across all connections; 0 or null: no cap"
    )
    ldif_output: Path | None = Field(
        None,
        description="write exports to this LDIF change file instead of the directory; "
        "'{timestamp}' in the name gives one file per export step",
    )

    @field_validator("filter")
    @classmethod
    def _filter_parses(cls, value: str) -> str:
        return validate_filter(value)

    @field_validator("base_dns")
    @classmethod
    def _bases_disjoint(cls, value: list[str]) -> list[str]:
        normalized = [normalize_dn(dn) for dn in value]
        for i, a in enumerate(normalized):
            for j, b in enumerate(normalized):
                if i != j and dn_within(a, b):
                    msg = f"base DN {value[i]!r} lies inside {value[j]!r}: objects would be read twice"
                    raise ValueError(msg)
        return value

    @field_validator("password")
    @classmethod
    def _password_not_empty(cls, value: SecretStr | None) -> SecretStr | None:
        """An empty password is refused here: LDAP takes a simple bind with a DN and no password for an
        anonymous bind that proves nothing (RFC 4513), and ldap3 refused it at connect time with a traceback.
        It comes from a secret variable that is set but empty (an EnvironmentFile line left blank)."""
        if value is not None and not value.get_secret_value():
            msg = (
                "is empty: give the account's password in the environment variable or file it comes from "
                "(an empty password would be an anonymous bind)"
            )
            raise ValueError(msg)
        return value

    @field_validator("host")
    @classmethod
    def _host_is_a_name(cls, value: str | None) -> str | None:
        return None if value is None else _dc_name(value)

    @field_validator("fallback_hosts")
    @classmethod
    def _fallbacks_named(cls, value: list[str]) -> list[str]:
        if any(not name.strip() for name in value):
            raise ValueError("an entry is empty: give each domain controller's host name")
        return [_dc_name(name) for name in value]

    @field_validator("domain")
    @classmethod
    def _domain_is_a_dns_name(cls, value: str | None) -> str | None:
        """A name that cannot be one in DNS (a NetBIOS name with a backslash, a URL, an empty label) is refused
        here, not as a lookup that fails at the first step."""
        if value is not None and not _DNS_NAME.fullmatch(value.rstrip(".")):
            msg = (
                f"{value!r} is not a DNS domain name: give the AD domain's DNS name (contoso.com), "
                "not its NetBIOS name or a DC's URL"
            )
            raise ValueError(msg)
        return value

    @field_validator("site")
    @classmethod
    def _site_is_a_label(cls, value: str | None) -> str | None:
        if value is not None and not _DNS_LABEL.fullmatch(value):
            raise ValueError(f"{value!r} is not an AD site name (one DNS label, as Get-ADReplicationSite shows it)")
        return value

    @field_validator("dns_servers")
    @classmethod
    def _dns_servers_parse(cls, value: list[str]) -> list[str]:
        for text in value:
            parse_dns_server(text)  # raises, naming the entry
        return value

    @model_validator(mode="after")
    def _plain_needs_opt_in(self) -> ActiveDirectorySettings:
        if self.security == "plain" and not self.allow_plain_ldap:
            msg = (
                "security = 'plain' sends the bind password unencrypted; use 'ldaps' or 'starttls', "
                "or set allow_plain_ldap = true if you really mean it"
            )
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _host_or_domain(self) -> ActiveDirectorySettings:
        """Either the DCs are named (host, fallback_hosts) or found in DNS (domain), not both: a list that
        mixes them has no order an operator could predict, and a named DC is what domain is there to avoid."""
        if self.domain is None:
            if self.host is None:
                raise ValueError("give host (a DC's name) or domain (its DCs are then found in DNS)")
            if self.site or self.dns_servers:
                raise ValueError("site and dns_servers apply to domain only: remove them, or give domain for host")
            return self
        if self.host is not None or self.fallback_hosts:
            msg = (
                "domain finds the DCs in DNS and does not go with host or fallback_hosts: keep either domain "
                "(and site) or the list of DCs"
            )
            raise ValueError(msg)
        if self.kerberos_host:
            raise ValueError("with domain, each DC's SPN is ldap/<its name in the SRV record>: remove kerberos_host")
        return self

    @model_validator(mode="after")
    def _hosts_distinct(self) -> ActiveDirectorySettings:
        seen: set[str] = set()
        for name in self.hosts:
            if name.lower() in seen:
                raise ValueError(f"{name!r} is listed twice in host and fallback_hosts: list each DC once")
            seen.add(name.lower())
        if self.fallback_hosts and self.kerberos_host:
            msg = (
                "kerberos_host names one DC's SPN and does not fit a list of DCs: remove it and give host and "
                "fallback_hosts as the DCs' names their SPNs ldap/<name> spell"
            )
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _credentials_match_auth(self) -> ActiveDirectorySettings:
        if self.auth == "simple":
            if not self.bind_dn or self.password is None:
                raise ValueError("auth = 'simple' needs bind_dn and password (or use auth = 'kerberos' with a keytab)")
            if self.keytab or self.ccache or self.principal:
                raise ValueError("keytab, ccache and principal apply to auth = 'kerberos' only")
            return self
        if self.password is not None:
            msg = "auth = 'kerberos' takes no password: remove it (the key comes from keytab or the credential cache)"
            raise ValueError(msg)
        if self.security == "plain":
            msg = (
                "auth = 'kerberos' needs TLS (security = 'ldaps' or 'starttls'): the LDAP client cannot sign "
                "or seal a Kerberos session, and TLS is what satisfies a DC's signing requirement"
            )
            raise ValueError(msg)
        if sys.platform == "win32" and (self.keytab or self.ccache or self.principal):
            msg = (
                "on Windows, auth = 'kerberos' binds as the account mvsync runs as (SSPI): remove keytab, ccache "
                "and principal, and run the task or service as the gMSA"
            )
            raise ValueError(msg)
        return self

    @property
    def account(self) -> str:
        """Who binds, as messages name it: bind_dn, or the Kerberos principal (or its source)."""
        if self.auth == "simple":
            return str(self.bind_dn)
        if self.principal:
            return self.principal
        if self.keytab is not None:
            return f"the principal of keytab {self.keytab}"
        if self.ccache:
            return f"the principal of credential cache {self.ccache}"
        return "the Kerberos identity of this process"

    @property
    def hosts(self) -> list[str]:
        """The configured domain controllers in the order they are tried: host, then fallback_hosts (none when
        they are found in DNS: ``_locator``)."""
        return [] if self.host is None else [self.host, *self.fallback_hosts]

    @property
    def directory(self) -> str:
        """The DC or domain the agent talks to, as warnings name it before a connection is made."""
        return self.host or f"the DCs of {self.domain}"

    @property
    def effective_port(self) -> int:
        return self.port or (636 if self.security == "ldaps" else 389)

    @property
    def write_rate(self) -> float | None:
        """The write cap in writes per second, or None when writes are not capped."""
        return self.max_writes_per_second or None


def _dc_name(text: str) -> str:
    """``text`` if it is a DC's host name or address alone; else a ValueError saying what to give instead.

    Why: ldap3 reads ``ldap://dc1`` as "plain LDAP to dc1" whatever ``security`` says, so such a host sent
    the bind password unencrypted with ``security = 'ldaps'`` and ``allow_plain_ldap`` unset; and
    ``dc1:389`` replaced ``port`` (TLS spoken to the plain-LDAP port, failing as a DC out of reach).
    """
    try:
        ipaddress.ip_address(text.removeprefix("[").removesuffix("]"))
        return text  # an IPv6 address has colons of its own
    except ValueError:
        pass
    if "://" in text or "/" in text or ":" in text or not text.strip() or text != text.strip():
        msg = (
            f"{text!r} is not a host name: give the DC's name or address alone (dc1.contoso.com); security "
            "chooses LDAPS or StartTLS (plain LDAP needs allow_plain_ldap), and port the port"
        )
        raise ValueError(msg)
    return text


def parse_dns_server(text: str) -> tuple[str, int]:
    """``address``, ``address:port`` or ``[IPv6]:port`` as (address, port); ValueError saying what is wrong."""
    address, port = text.strip(), 53
    if address.startswith("["):
        address, _, rest = address[1:].partition("]")
        port = _port(rest.removeprefix(":"), text) if rest else 53
    elif address.count(":") == 1:
        address, _, rest = address.partition(":")
        port = _port(rest, text)
    try:
        ipaddress.ip_address(address)
    except ValueError:
        msg = f"{text!r} is not an IP address (with an optional :port): give each DNS server's address"
        raise ValueError(msg) from None
    return address, port


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{whole!r}: the port after ':' must be a number from 1 to 65535")
    return int(text)
