"""Reaching a real Active Directory for the demo, the benchmarks and the tests: settings and helpers.

``mvsync demo`` runs against a real directory when the ``AD_*`` environment variables describe one
(``AD_HOST``, ``AD_BASE_DN``, ``AD_BIND_DN``, ``AD_PASSWORD``, optional ``AD_LDAPS_PORT``,
``AD_LDAP_PORT``, ``AD_CA_CERT`` and ``AD_REALM``), and populates its own OU there. These helpers
are plain ldap3 and run wherever mvsync runs (Windows included); starting a throwaway Samba DC is
test-only and lives in ``tests/harness/samba_dc.py``.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connector.config import ConfigError

__all__ = [
    "LDAPS_PORT",
    "LDAP_PORT",
    "ADSettings",
    "UserSpec",
    "connect",
    "create_users",
    "delete_subtree",
    "ensure_ou",
    "settings_from_env",
]

LDAP_PORT = 389
LDAPS_PORT = 636


@dataclass(frozen=True)
class ADSettings:
    """How to reach a directory: what a test or benchmark needs to build connector settings."""

    host: str
    base_dn: str
    bind_dn: str
    password: str = field(repr=False)
    ca_cert: Path | None = None
    ldap_port: int = LDAP_PORT
    ldaps_port: int = LDAPS_PORT
    realm: str = ""
    #: The harness's directory and the samba master's pid; None for a directory from ``AD_*``.
    directory: Path | None = None
    pid: int | None = None

    @property
    def external(self) -> bool:
        """True when the directory was described by ``AD_*`` variables, not started here."""
        return self.directory is None

    @property
    def upn_suffix(self) -> str:
        """DNS name of the domain, for ``userPrincipalName`` values."""
        if self.realm:
            return self.realm.lower()
        return ".".join(part.split("=", 1)[1] for part in self.base_dn.split(",") if "=" in part).lower()


def settings_from_env(environ: Mapping[str, str] | None = None) -> ADSettings | None:
    """Settings of an existing directory described by ``AD_*`` variables, or None if not set."""
    env = os.environ if environ is None else environ
    if not env.get("AD_HOST"):
        return None
    missing = [k for k in ("AD_BASE_DN", "AD_BIND_DN", "AD_PASSWORD") if not env.get(k)]
    if missing:
        msg = f"AD_HOST is set but {', '.join(missing)} is not: describe the directory completely"
        raise ConfigError(msg)
    ca = env.get("AD_CA_CERT")
    return ADSettings(
        host=env["AD_HOST"],
        base_dn=env["AD_BASE_DN"],
        bind_dn=env["AD_BIND_DN"],
        password=env["AD_PASSWORD"],
        ca_cert=Path(ca) if ca else None,
        ldap_port=int(env.get("AD_LDAP_PORT") or LDAP_PORT),
        ldaps_port=int(env.get("AD_LDAPS_PORT") or LDAPS_PORT),
        realm=env.get("AD_REALM", ""),
    )


def connect(settings: ADSettings, *, starttls: bool = False, timeout: float = 10.0) -> Any:
    """A bound ldap3 connection with full certificate validation and TCP_NODELAY ."""
    from ldap3 import Connection, Server, Tls

    tls = Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(settings.ca_cert) if settings.ca_cert else None)
    port = settings.ldap_port if starttls else settings.ldaps_port
    server = Server(settings.host, port=port, use_ssl=not starttls, tls=tls, get_info=None, connect_timeout=timeout)
    conn = Connection(
        server,
        user=settings.bind_dn,
        password=settings.password,
        receive_timeout=int(timeout),
        raise_exceptions=True,
    )
    conn.open()
    conn.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if starttls:
        conn.start_tls()
    conn.bind()
    return conn


@dataclass(frozen=True)
class UserSpec:
    """One test user; ``photo`` None means no ``thumbnailPhoto``."""

    name: str
    mail: str | None = None
    display_name: str | None = None
    photo: bytes | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def ensure_ou(conn: Any, dn: str) -> None:
    """Create the organizational unit ``dn`` (and no parents) unless it exists."""
    from ldap3.core.exceptions import LDAPEntryAlreadyExistsResult

    with contextlib.suppress(LDAPEntryAlreadyExistsResult):
        conn.add(dn, ["top", "organizationalUnit"])


def create_users(conn: Any, ou_dn: str, users: Sequence[UserSpec], upn_suffix: str) -> dict[str, str]:
    """Add users under ``ou_dn``; returns name -> objectGUID (canonical string form)."""
    import uuid

    from ldap3 import BASE

    guids = {}
    for user in users:
        dn = f"CN={user.name},{ou_dn}"
        attributes: dict[str, Any] = {
            "sAMAccountName": user.name[:20],
            "userPrincipalName": f"{user.name}@{upn_suffix}",
            **({"mail": user.mail} if user.mail else {}),
            **({"displayName": user.display_name} if user.display_name else {}),
            **({"thumbnailPhoto": user.photo} if user.photo is not None else {}),
            **user.extra,
        }
        conn.add(dn, ["top", "person", "organizationalPerson", "user"], attributes)
        conn.search(dn, "(objectClass=*)", BASE, attributes=["objectGUID"])
        guids[user.name] = str(uuid.UUID(bytes_le=conn.response[0]["raw_attributes"]["objectGUID"][0]))
    return guids


def delete_subtree(conn: Any, dn: str) -> int:
    """Delete ``dn`` and everything below it (deepest first); returns how many entries went."""
    from ldap3 import SUBTREE
    from ldap3.core.exceptions import LDAPNoSuchObjectResult

    try:
        conn.search(dn, "(objectClass=*)", SUBTREE, attributes=["1.1"], paged_size=1000)
        dns = [e["dn"] for e in conn.response if e.get("type") == "searchResEntry"]
        cookie = conn.result.get("controls", {}).get("1.2.840.113556.1.4.319", {}).get("value", {}).get("cookie")
        while cookie:
            conn.search(dn, "(objectClass=*)", SUBTREE, attributes=["1.1"], paged_size=1000, paged_cookie=cookie)
            dns += [e["dn"] for e in conn.response if e.get("type") == "searchResEntry"]
            cookie = conn.result["controls"]["1.2.840.113556.1.4.319"]["value"]["cookie"]
    except LDAPNoSuchObjectResult:
        return 0
    for entry_dn in sorted(dns, key=lambda d: d.count(","), reverse=True):
        conn.delete(entry_dn)
    return len(dns)
