"""Pure logic of the Kerberos bind and the rights check (no server): error texts, rebind timing, gaps."""

from __future__ import annotations

from typing import Any

import pytest

from connector.agents.active_directory import ActiveDirectorySettings
from connector.agents.active_directory import _kerberos as kerberos
from connector.agents.active_directory._permissions import container_of, find_gaps, refusal
from connector.sdk import AuthenticationError, StopRunError


def _settings(**overrides: Any) -> ActiveDirectorySettings:
    values: dict[str, Any] = {
        "host": "10.0.0.5",
        "base_dns": ["OU=Staff,DC=contoso,DC=com"],
        "auth": "kerberos",
        "keytab": "/etc/mvsync/svc.keytab",
        "principal": "svc-mvsync@CONTOSO.COM",
        "kerberos_host": "dc1.contoso.com",
    }
    values.update(overrides)
    return ActiveDirectorySettings.model_validate(values)


def test_signing_requirement_says_tls_satisfies_it() -> None:
    error = kerberos.signing_required(
        "dc1:389 (starttls)", "strongerAuthRequired: SASL:[GSSAPI]: Sign or Seal are required."
    )
    assert isinstance(error, StopRunError)
    assert "keep security = 'ldaps' or 'starttls'" in str(error)
    assert "allow_sasl_over_tls" in str(error) and "Sign or Seal are required" in str(error)


def test_stale_key_and_unknown_principal() -> None:
    stale = kerberos.explain(
        RuntimeError("Major (851968): ..., Minor (2529638936): Preauthentication failed"), _settings()
    )
    assert isinstance(stale, AuthenticationError) and "export the keytab again" in str(stale)
    unknown = kerberos.explain(
        RuntimeError("Major (851968): ..., Minor (2529638918): Client 'x@CONTOSO.COM' not found in Kerberos database"),
        _settings(),
    )
    assert isinstance(unknown, AuthenticationError) and "check the principal setting" in str(unknown)
    other = kerberos.explain(RuntimeError("Major (1): odd, Minor (2): Something new"), _settings())
    assert str(other) == "Kerberos bind as svc-mvsync@CONTOSO.COM to ldap/dc1.contoso.com failed: Something new"


def test_a_minor_status_that_says_nothing_gives_way_to_the_major_one() -> None:
    """MIT's expired ticket: major "The referenced credential has expired", minor "Success"."""
    expired = "Major (720896): The referenced credential has expired, Minor (100001): Success"
    error = kerberos.explain(RuntimeError(expired), _settings(keytab=None, principal=None, ccache="FILE:/tmp/cc"))
    assert isinstance(error, AuthenticationError)
    assert str(error).startswith(
        "the Kerberos ticket in the credential cache FILE:/tmp/cc has expired (The referenced credential has expired)"
    )
    other = kerberos.explain(
        RuntimeError("Major (851968): Unspecified GSS failure, Minor (100001): Success"), _settings()
    )
    assert str(other).endswith("failed: Unspecified GSS failure")


@pytest.mark.parametrize(
    ("krb5ccname", "named"),
    [
        ("FILE:/var/lib/mvsync/krb5cc_svc", "FILE:/var/lib/mvsync/krb5cc_svc (KRB5CCNAME)"),
        (None, "that KRB5CCNAME names (not set for this run: krb5's default cache, which `klist` shows)"),
    ],
)
def test_a_bind_from_the_cache_krb5ccname_names_says_which_cache(
    monkeypatch: pytest.MonkeyPatch, krb5ccname: str | None, named: str
) -> None:
    """Found by an AD pass: with neither keytab nor ``ccache``, an empty or expired cache was named
    "(KRB5CCNAME)", and the service account's environment, not the operator's shell, says which file that is.
    The message now names the cache by KRB5CCNAME's value, or says that it is unset."""
    if krb5ccname is None:
        monkeypatch.delenv("KRB5CCNAME", raising=False)
    else:
        monkeypatch.setenv("KRB5CCNAME", krb5ccname)
    settings = _settings(keytab=None, principal=None)
    failure = "Major (458752): No credentials were supplied, Minor (2529639053): No credentials cache found"
    empty = kerberos.explain(RuntimeError(failure), settings)
    assert isinstance(empty, AuthenticationError)
    assert str(empty).endswith(f"keep the credential cache {named} filled (kinit -k, k5start)"), str(empty)
    expired = kerberos.explain(RuntimeError("Major (720896): The referenced credential has expired"), settings)
    assert str(expired).startswith(f"the Kerberos ticket in the credential cache {named} has expired ("), str(expired)


@pytest.mark.parametrize(
    ("lifetime", "after"), [(36000.0, 28800.0), (1200.0, 900.0), (600.0, 300.0), (100.0, 50.0), (None, 3600.0)]
)
def test_rebind_before_the_ticket_expires(
    monkeypatch: pytest.MonkeyPatch, lifetime: float | None, after: float
) -> None:
    monkeypatch.setattr(kerberos, "_lifetime", lambda _settings: lifetime)
    assert kerberos.rebind_after(_settings()) == after


def test_spn_host_defaults_to_host() -> None:
    assert kerberos.target_host(_settings(kerberos_host=None)) == "10.0.0.5"


def test_gaps_group_by_attribute_and_container() -> None:
    a, b, c = "CN=A,OU=Staff,DC=x", "CN=B,OU=Staff,DC=x", "CN=C\\, Jr,OU=Sales,DC=x"
    assert container_of(c) == "OU=Sales,DC=x"
    gaps = find_gaps(
        [
            (a, ["thumbnailPhoto"], frozenset({"thumbnailphoto"})),
            (b, ["thumbnailPhoto", "mail"], frozenset()),
            (c, ["thumbnailPhoto"], frozenset({"mail"})),
        ]
    )
    assert [(g.attribute, g.container, g.dns, g.writable_siblings) for g in gaps] == [
        ("thumbnailPhoto", "OU=Staff,DC=x", [b], 1),  # A, in the same OU, may write it
        ("mail", "OU=Staff,DC=x", [b], 0),
        ("thumbnailPhoto", "OU=Sales,DC=x", [c], 0),
    ]
    error = refusal(gaps, "X\\svc", "user")
    assert error.status == "stopped-permission-issue"
    # the OU grant for the two gaps without a writable neighbour; for B's photo that grant exists already
    assert str(error).count("grant it with: dsacls") == 2
    assert "it may write it on 1 other object(s) there, so the grant on OU=Staff,DC=x exists" in str(error)


def test_windows_refuses_keytabs(monkeypatch: pytest.MonkeyPatch) -> None:
    import connector.agents.active_directory._settings as settings_module

    monkeypatch.setattr(settings_module.sys, "platform", "win32")
    with pytest.raises(ValueError, match="binds as the account mvsync runs as"):
        _settings()
    assert _settings(keytab=None, principal=None).auth == "kerberos"


_KRB5_CONF = """[libdefaults]
  default_realm = CONTOSO.COM
  dns_lookup_kdc = false
[realms]
  FABRIKAM.COM = { kdc = kdc9.fabrikam.com }
  CONTOSO.COM = {
    kdc = dc1.contoso.com
    kdc = dc2.contoso.com:88
    admin_server = dc1.contoso.com
  }
  kdc = not-a-realm-entry
"""


@pytest.mark.parametrize(
    ("realm", "kdcs"),
    [
        ("CONTOSO.COM", ["dc1.contoso.com", "dc2.contoso.com:88"]),
        ("contoso.com", ["dc1.contoso.com", "dc2.contoso.com:88"]),  # realms compare without case
        ("FABRIKAM.COM", ["kdc9.fabrikam.com"]),  # a realm block on one line
        ("NORTHWIND.COM", []),
    ],
)
def test_the_kdcs_a_hung_kdc_message_names_are_the_realms_kdc_entries(realm: str, kdcs: list[str]) -> None:
    assert kerberos.realm_kdcs(_KRB5_CONF, realm) == kdcs
