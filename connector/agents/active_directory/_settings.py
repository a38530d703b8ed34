"""Settings of the ``active-directory`` agent, validated when the configuration is loaded.

Everything that can be wrong without talking to the server is rejected here, so a typo stops
``mvsync validate`` instead of a run half-way through: a plain-LDAP bind without the explicit
opt-in, a filter that does not parse, base DNs that overlap (an object would be imported twice),
extra attributes in an unknown shorthand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from connector.agents.active_directory._ldap import normalize_dn, validate_filter
from connector.sdk import ConnectorSettings, parse_psma_attribute

__all__ = ["ActiveDirectorySettings"]


class ActiveDirectorySettings(ConnectorSettings):
    """How to reach one domain controller, what to read, and how hard to write."""

    host: str = Field(min_length=1, description="DC host name or address (the certificate must name it)")
    port: int | None = Field(None, ge=1, le=65535, description="default: 636 for ldaps, 389 otherwise")
    security: Literal["ldaps", "starttls", "plain"] = "ldaps"
    allow_plain_ldap: bool = Field(
        False, description="permit security='plain' (the password then crosses the network in clear)"
    )
    tls_validate: bool = Field(True, description="verify the server certificate and host name")
    ca_file: Path | None = Field(None, description="PEM CA bundle; default: the system's trust store")
    bind_dn: str = Field(min_length=1, description="DN, UPN or DOMAIN\\user of the account")
    password: SecretStr
    base_dns: list[str] = Field(min_length=1, description="containers whose users are imported and may be written")
    filter: str = "(&(objectCategory=person)(objectClass=user))"
    filter_equals: dict[str, str] = Field(
        default_factory=dict,
        description="attribute = literal value pairs ANDed to the filter (values are escaped for you)",
    )
    extra_attributes: list[str] = Field(
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
                if i != j and (a == b or a.endswith("," + b)):
                    msg = f"base DN {value[i]!r} lies inside {value[j]!r}: objects would be read twice"
                    raise ValueError(msg)
        return value

    @field_validator("extra_attributes")
    @classmethod
    def _extras_parse(cls, value: list[str]) -> list[str]:
        for spec in value:
            parse_psma_attribute(spec)  # raises on a malformed name
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

    @property
    def effective_port(self) -> int:
        return self.port or (636 if self.security == "ldaps" else 389)

    @property
    def write_rate(self) -> float | None:
        """The write cap in writes per second, or None when writes are not capped."""
        return self.max_writes_per_second or None
