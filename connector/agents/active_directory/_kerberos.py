"""Kerberos (SASL GSSAPI) binds: a keytab or a credential cache instead of a stored password.

Why this shape:

* **Where the key comes from.** MIM's AD MA runs as a Windows identity; a Linux service has a
  keytab (``ktpass``, ``samba-tool domain exportkeytab``, or a gMSA's keys fetched by a tool such as
  gMSAd) or a credential cache something else keeps fresh (``k5start``, SSSD). With a keytab the
  agent asks MIT krb5 for tickets itself (GSSAPI ``client_keytab`` credential store) into a
  per-process in-memory cache, so nothing is written to disk and nothing needs ``kinit``.
* **Renewal.** Tickets from a keytab are re-acquired by krb5 whenever the cached ones are about to
  run out; the agent rebinds its connections before the bind's ticket expires (:func:`rebind_after`)
  so a run longer than a ticket's lifetime never works on a connection whose authentication lapsed.
* **TLS.** ldap3 cannot sign or seal a SASL session, so Kerberos binds run only over LDAPS or
  StartTLS. A Windows DC's "require signing" is met by TLS; Samba needs ``ldap server require strong
  auth = allow_sasl_over_tls``. ldap3 sends the TLS channel binding token with every GSSAPI bind.
* **Windows.** ldap3 uses ``winkerberos`` (SSPI) there, which takes the identity of the process: run
  mvsync as the gMSA / service account. Keytabs, caches and principals do not apply and are refused
  when the settings load.
* **A hung KDC.** MIT krb5 (1.20) waits about a minute for a KDC that accepts the TCP connection and
  never answers, and no krb5.conf setting of that version bounds it (``kdc_timeout`` and
  ``max_retries`` are Heimdal's settings, and 1.20 has no ``request_timeout``: a generated krb5.conf
  with it, first in ``KRB5_CONFIG``, changed nothing). So the bind's tickets are
  fetched first on a thread of their own (:func:`_fetch_tickets`), and the bind waits ``kdc_timeout``
  for them: a KDC that does not answer in time stops the step with a message naming it. The thread
  is left to MIT's own timeout; ldap3's bind then finds the tickets in the cache and asks no KDC.
* **Errors.** MIT's texts are accurate but name no remedy ("No credentials cache found" for a
  keytab without the principal). :func:`explain` turns the usual ones (clock skew, SPN unknown,
  keytab unusable, KDC unreachable, stale key) into messages that say what to do.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
import sys
import threading
from pathlib import Path
from typing import Any

from connector.agents.active_directory._settings import ActiveDirectorySettings
from connector.sdk import AuthenticationError, ConfigurationError, ConnectorError, ServerDownError, StopRunError

__all__ = [
    "bind_arguments",
    "bound_principal",
    "ccache_principal",
    "check_keytab",
    "explain",
    "keytab_principal",
    "rebind_after",
    "signing_required",
    "target_host",
]

#: First bytes of a keytab file (format version 0x0502; 0x0501 is the obsolete one).
_KEYTAB_MAGIC = (b"\x05\x02", b"\x05\x01")
#: First byte of a FILE credential cache; the second is its format version, 1 to 4.
_CCACHE_MAGIC = 5
#: The most of a keytab or credential cache read for its principal (both are kilobytes; the principal is
#: near the start of either).
_READ_LIMIT = 1 << 20
#: Rebind at least this long before the ticket expires (and at 80 % of its lifetime at the latest).
_RENEW_MARGIN_S = 300.0
#: How long to keep a Kerberos-bound connection when the ticket lifetime cannot be read (SSPI).
_DEFAULT_REBIND_S = 3600.0


def target_host(settings: ActiveDirectorySettings, host: str | None = None) -> str:
    """The host part of the SPN ``ldap/<host>`` of the DC ``host`` (default: the first configured; with
    ``domain``, ``host`` is always given: the DC's name in its SRV record)."""
    return settings.kerberos_host or host or settings.host or ""


def check_keytab(path: Path) -> None:
    """Fail early and clearly for a keytab that cannot work (MIT says "No credentials cache found")."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(2)
    except FileNotFoundError:
        msg = f"{path} does not exist: export it (ktpass, samba-tool domain exportkeytab) or fix the path"
        raise ConfigurationError(msg, key="keytab") from None
    except OSError as exc:
        msg = (
            f"{path} is not readable by this account (uid {_uid()}): {exc.strerror}; "
            "give the service account read access (chown it, chmod 600)"
        )
        raise ConfigurationError(msg, key="keytab") from None
    if head not in _KEYTAB_MAGIC:
        msg = f"{path} is not a keytab (it lacks the 0x0502 header): export the keytab again"
        raise ConfigurationError(msg, key="keytab")


class _Truncated(Exception):
    """The file ended (or its lengths pointed) before the field being read."""


class _Fields:
    """Integers and length-prefixed byte strings read in order from a keytab or credential cache.

    ``order`` is the :mod:`struct` byte order: big-endian for keytab version 2 and ccache versions 3 and 4,
    the native order of the writing host for the obsolete versions (MIT's format documents say so)."""

    def __init__(self, data: bytes, order: str) -> None:
        self._data, self._at, self._order = data, 0, order

    def take(self, size: int) -> bytes:
        if size < 0 or self._at + size > len(self._data):
            raise _Truncated
        self._at += size
        return self._data[self._at - size : self._at]

    def int(self, fmt: str) -> int:
        value: int = struct.unpack(self._order + fmt, self.take(struct.calcsize(fmt)))[0]
        return value

    def principal(self, size: str, realm_counted: bool) -> str | None:
        """A principal as both formats write it: the count of components (``size``, the :mod:`struct` code of
        every count and length: 16 bits in a keytab, 32 in a ccache; the realm counted too when
        ``realm_counted``, the obsolete versions), the realm, then each component, each with its length first."""
        count = self.int(size) - (1 if realm_counted else 0)
        realm = self.take(self.int(size))
        return _unparse(realm, [self.take(self.int(size)) for _ in range(count)])


def _unparse(realm: bytes, components: list[bytes]) -> str | None:
    """``comp1/comp2@REALM`` as MIT's krb5_unparse_name writes it (a ``/``, ``@`` or ``\\`` inside a part
    escaped); None for a principal without components or not in UTF-8."""
    if not components:
        return None
    try:
        parts = [c.decode() for c in components]
        domain = realm.decode()
    except UnicodeDecodeError:
        return None
    escape = str.maketrans({"\\": "\\\\", "/": "\\/", "@": "\\@"})
    return "/".join(p.translate(escape) for p in parts) + "@" + domain.translate(escape)


def _file_head(path: Path) -> bytes | None:
    """The first bytes of ``path`` (at most ``_READ_LIMIT``); None when it cannot be read."""
    try:
        with open(path, "rb") as handle:
            return handle.read(_READ_LIMIT)
    except (OSError, ValueError):  # ValueError: a path with a NUL byte
        return None


def keytab_principal(path: Path) -> str | None:
    """The principal of the keytab's first entry; None when the file cannot be read or parsed.

    Why the first: with a client keytab and no principal, MIT krb5 acquires tickets for the first entry's
    principal (as ``kinit -k -i`` does; the unit tests compare this reading with the principal MIT's own
    trace names).

    Format: https://web.mit.edu/kerberos/krb5-devel/doc/formats/keytab_file_format.html: the version
    (``_KEYTAB_MAGIC``), then records, each a signed 32-bit length (negative: a hole of that many bytes, 0: the
    end) and the entry: count of components (16 bits, the realm counted too in version 1), the realm, the
    components (each a 16-bit length and its bytes).
    """
    data = _file_head(path)
    if data is None or data[:2] not in _KEYTAB_MAGIC:
        return None
    obsolete = data[:2] == _KEYTAB_MAGIC[1]
    fields = _Fields(data[2:], "=" if obsolete else ">")
    try:
        size = fields.int("i")
        while size < 0:  # a hole left by a removed entry
            fields.take(-size)
            size = fields.int("i")
        if size == 0:
            return None  # no entry at all
        return _Fields(fields.take(size), "=" if obsolete else ">").principal("H", realm_counted=obsolete)
    except (_Truncated, struct.error):
        return None


def ccache_principal(name: str) -> str | None:
    """The default principal of a FILE credential cache (``FILE:<path>`` or a plain path); None for another
    cache type (KEYRING:, KCM:, MEMORY:, DIR:, API:: no file to read) or a file that cannot be read or parsed."""
    path = _cache_file(name)
    return None if path is None else _default_principal(path)


def _cache_file(name: str) -> Path | None:
    """The file a credential cache name points at (``FILE:<path>``, a plain path); None for other types."""
    kind, colon, rest = name.partition(":")
    if not colon or (len(kind) == 1 and kind.isalpha()):  # a plain path (C:\... on Windows, as MIT takes it)
        return Path(name)
    return Path(rest) if kind == "FILE" else None


def _default_principal(path: Path) -> str | None:
    """The default principal in the credential cache file ``path`` (None: unreadable or not such a file).

    Format: https://web.mit.edu/kerberos/krb5-devel/doc/formats/ccache_file_format.html: 5 and the version
    (1 to 4; 1 and 2 in the host's byte order), a header in version 4 only (its 16-bit length first), then the
    default principal: name type (32 bits, not in version 1), count of components (32 bits, the realm counted
    too in version 1), the realm and the components (each a 32-bit length and its bytes).
    """
    data = _file_head(path)
    if data is None or len(data) < 2 or data[0] != _CCACHE_MAGIC or data[1] not in (1, 2, 3, 4):
        return None
    version = data[1]
    fields = _Fields(data[2:], "=" if version < 3 else ">")
    try:
        if version == 4:
            fields.take(fields.int("H"))
        if version != 1:
            fields.int("I")  # name type
        return fields.principal("I", realm_counted=version == 1)
    except (_Truncated, struct.error):
        return None


def bound_principal(settings: ActiveDirectorySettings) -> str | None:
    """Whom a Kerberos bind authenticates as: ``principal``; without it the default principal of the
    credential cache file ``ccache`` when that file exists, else the keytab's first principal; with neither
    keytab nor ``ccache``, the default principal of the cache file KRB5CCNAME names. None when that cannot be
    known here: a cache file that cannot be parsed, a KEYRING:, KCM: or DIR: cache (it may hold anyone's
    tickets), a keytab that cannot be parsed, KRB5CCNAME unset, or SSPI's identity on Windows.

    Why the cache first: MIT krb5 asked for initiator credentials without a name takes the cache's default
    principal when the cache has one, and falls back to the client keytab for a missing (or MEMORY:) cache.
    (ASSUMPTION beyond MIT's documents, which do not spell out the order: it is what MIT 1.20 does, and the
    unit tests check it against MIT's trace.)
    """
    if settings.auth != "kerberos" or sys.platform == "win32":  # SSPI: the process's account, named by no file
        return None
    if settings.principal:
        return settings.principal
    if settings.ccache:
        path = _cache_file(settings.ccache)
        if path is not None and path.exists():
            return _default_principal(path)
        if path is None and not settings.ccache.startswith("MEMORY:"):
            return None
    if settings.keytab is not None:
        return keytab_principal(settings.keytab)
    return None if settings.ccache else _environment_principal()  # a ccache setting is the cache, KRB5CCNAME not


def _environment_principal() -> str | None:
    """The default principal of the cache KRB5CCNAME names (``FILE:<path>`` or a plain path), for a bind with
    neither keytab nor ``ccache`` (``_store`` is then empty, and GSSAPI takes MIT's default cache).

    Why KRB5CCNAME and nothing else: MIT names the default cache by KRB5CCNAME first, then krb5.conf's
    ``default_ccache_name``, then a built-in default such as ``FILE:/tmp/krb5cc_<uid>``
    (https://web.mit.edu/kerberos/krb5-latest/doc/basic/ccache_def.html). The last two depend on the
    configuration, the build and the uid; a guessed cache could name someone else, and a wrong name in a grant
    is worse than none, so without KRB5CCNAME the principal stays unknown."""
    name = os.environ.get("KRB5CCNAME")
    return ccache_principal(name) if name else None


def _uid() -> str:
    getuid = getattr(os, "getuid", None)  # POSIX only
    return str(getuid()) if getuid is not None else "n/a"


def _store(settings: ActiveDirectorySettings) -> dict[bytes | str, bytes | str]:
    """The GSSAPI credential store: keytab → tickets in a per-agent in-memory cache."""
    store: dict[bytes | str, bytes | str] = {}
    if settings.keytab is not None:
        store["client_keytab"] = f"FILE:{settings.keytab}"
        # one in-memory cache per (principal, keytab): agents with the same identity share tickets,
        # different identities never see each other's
        identity = hashlib.sha256(f"{settings.principal}|{settings.keytab}".encode()).hexdigest()[:16]
        store["ccache"] = settings.ccache or f"MEMORY:mvsync-{identity}"
    elif settings.ccache:
        store["ccache"] = settings.ccache
    return store


def bind_arguments(settings: ActiveDirectorySettings, host: str) -> dict[str, Any]:
    """ldap3 ``Connection`` keyword arguments for a Kerberos bind to the DC ``host`` (credentials acquired here)."""
    from ldap3 import KERBEROS, SASL

    if sys.platform == "win32":
        # SSPI: the identity of the process (the gMSA the task or service runs as)
        return {"authentication": SASL, "sasl_mechanism": KERBEROS, "sasl_credentials": (target_host(settings, host),)}
    if settings.keytab is not None:
        check_keytab(settings.keytab)
    credentials = _fetch_tickets(settings, host)
    return {
        "authentication": SASL,
        "sasl_mechanism": KERBEROS,
        "sasl_credentials": (target_host(settings, host), None, credentials),
    }


def _fetch_tickets(settings: ActiveDirectorySettings, host: str) -> Any:
    """The bind's GSSAPI credentials, with the ticket for ``ldap/<host>`` (and the TGT it needs) in their
    cache, waited for at most ``kdc_timeout``; the error a bind would have met, explained, if that fails.

    Why a thread: the KDC exchanges (for the TGT from a keytab, when the credentials are acquired; for the
    service ticket, in the first step of a context) run inside the C library, which cannot be interrupted
    and waits about a minute for a KDC that accepts and never answers. The context made here is never sent.
    """
    import gssapi

    target = gssapi.Name(f"ldap@{target_host(settings, host)}", gssapi.NameType.hostbased_service)
    outcome: list[Any] = []

    def fetch() -> None:
        try:
            credentials = _credentials(settings)
            gssapi.SecurityContext(name=target, creds=credentials, usage="initiate").step()
        except Exception as exc:  # handed to the bind's thread below
            outcome.append(exc)
        else:
            outcome.append(credentials)

    worker = threading.Thread(target=fetch, name="mvsync-kdc", daemon=True)
    worker.start()
    worker.join(settings.kdc_timeout)
    if not outcome:
        raise ServerDownError(_kdc_silent(settings))
    if isinstance(outcome[0], ConnectorError):
        raise outcome[0]
    if isinstance(outcome[0], Exception):
        raise explain(outcome[0], settings, host) from None
    return outcome[0]


def _kdc_silent(settings: ActiveDirectorySettings) -> str:
    """Why the bind stopped when the KDC gave no answer in time, naming the KDCs krb5.conf lists."""
    config = os.environ.get("KRB5_CONFIG", "/etc/krb5.conf")
    texts = [_read_text(Path(name)) for name in config.split(os.pathsep) if name]
    realm = settings.principal.rpartition("@")[2] if settings.principal and "@" in settings.principal else ""
    realm = realm or next((r for r in map(_default_realm, texts) if r), "")
    kdcs = [kdc for text in texts for kdc in realm_kdcs(text, realm)] if realm else []
    which = f"KDC {', '.join(kdcs)} (realm {realm})" if kdcs else f"KDC of realm {realm or '(the default realm)'}"
    return (
        f"no answer from the {which} within kdc_timeout ({settings.kdc_timeout:g} s) for the Kerberos bind as "
        f"{settings.account}: a KDC that is down, or hung (it may accept connections and never answer). Check the "
        f"Kerberos service (port 88) of the domain controllers, and the realm's kdc entries in {config} "
        "(KRB5_CONFIG) or its DNS SRV records _kerberos._tcp.<realm>; raise kdc_timeout for a slow KDC"
    )


def _read_text(path: Path) -> str:
    """A krb5.conf's text; empty when it cannot be read (krb5 skips such files too)."""
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


_SECTION = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]")
_RELATION = re.compile(r"^\s*([^=\s]+)\s*=\s*(.*?)\s*$")


def _default_realm(text: str) -> str:
    """``default_realm`` of a krb5.conf's [libdefaults] ("" when it has none)."""
    section = ""
    for line in text.splitlines():
        if header := _SECTION.match(line):
            section = header.group(1).lower()
        elif section == "libdefaults" and (relation := _RELATION.match(line)) and relation.group(1) == "default_realm":
            return relation.group(2)
    return ""


def realm_kdcs(text: str, realm: str) -> list[str]:
    """The ``kdc`` entries of ``realm`` in a krb5.conf's [realms] section, in order."""
    section, inside, kdcs = "", False, []
    for line in text.splitlines():
        if header := _SECTION.match(line):
            section, inside = header.group(1).lower(), False
            continue
        relation = _RELATION.match(line)
        if section != "realms" or relation is None:
            inside = inside and not line.strip().startswith("}")
            continue
        name, value = relation.groups()
        if value.startswith("{"):  # the realm's block, perhaps all on one line: REALM = { kdc = host }
            inside = name.upper() == realm.upper()
            inline = _RELATION.match(value[1:].rstrip("}"))
            if inside and inline is not None and inline.group(1) == "kdc":
                kdcs.append(inline.group(2))
            inside = inside and not value.endswith("}")
        elif inside and name == "kdc":
            kdcs.append(value)
    return kdcs


def _credentials(settings: ActiveDirectorySettings) -> Any:
    import gssapi
    from gssapi.raw.misc import GSSError

    name = gssapi.Name(settings.principal, gssapi.NameType.kerberos_principal) if settings.principal else None
    try:
        return gssapi.Credentials(name=name, usage="initiate", store=_store(settings) or None)
    except GSSError as exc:
        raise explain(exc, settings) from None


def rebind_after(settings: ActiveDirectorySettings) -> float:
    """Seconds a fresh Kerberos bind may be used before the connection binds again."""
    lifetime = None if sys.platform == "win32" else _lifetime(settings)
    if lifetime is None:
        return _DEFAULT_REBIND_S
    # at 80 % of the lifetime or 5 minutes before the end, whichever is first, but not before half of it
    return max(1.0, min(lifetime * 0.8, max(lifetime - _RENEW_MARGIN_S, lifetime / 2)))


def _lifetime(settings: ActiveDirectorySettings) -> float | None:
    """Seconds left on the ticket-granting ticket the last bind used (None: unknown)."""
    import gssapi
    from gssapi.raw.misc import GSSError

    name = gssapi.Name(settings.principal, gssapi.NameType.kerberos_principal) if settings.principal else None
    try:
        left = gssapi.Credentials(name=name, usage="initiate", store=_store_for_lifetime(settings)).lifetime
    except GSSError:
        return None
    return float(left) if left is not None else None


def _store_for_lifetime(settings: ActiveDirectorySettings) -> dict[bytes | str, bytes | str] | None:
    """The same cache as the bind used (reading it must not fetch new tickets from the keytab)."""
    store = _store(settings)
    store.pop("client_keytab", None)
    return store or None


def explain(exc: BaseException, settings: ActiveDirectorySettings, host: str | None = None) -> ConnectorError:
    """A GSSAPI failure of a bind to the DC ``host`` as an error that says what to do (the library's text
    stays in brackets)."""
    detail = _detail(str(exc))
    who = settings.account
    spn = f"ldap/{target_host(settings, host)}"
    lowered = detail.lower()
    if "credential has expired" in lowered or "ticket expired" in lowered:
        return _expired(detail, settings)
    if "clock skew" in lowered:
        msg = (
            f"Kerberos bind as {who} failed ({detail}): this host's clock and the KDC's differ by more than "
            "the allowed skew (5 minutes by default); synchronise the time with the domain "
            "(chrony or systemd-timesyncd against a DC; w32time on Windows)"
        )
        return StopRunError(msg)
    if "server not found in kerberos database" in lowered:
        msg = (
            f"the KDC knows no service principal {spn} ({detail}): set kerberos_host to the DC's name as "
            f"its SPN spells it (`setspn -L <DC>$` lists them), or register it (`setspn -S {spn} <DC>$`)"
        )
        return StopRunError(msg)
    if "cannot contact any kdc" in lowered or "cannot find kdc" in lowered or "cannot resolve" in lowered:
        config = os.environ.get("KRB5_CONFIG", "/etc/krb5.conf")
        msg = (
            f"no KDC answered for the Kerberos bind as {who} ({detail}): check the realm's kdc entries in "
            f"{config} (KRB5_CONFIG) or the DNS SRV records _kerberos._tcp.<realm>, and that port 88 "
            "of the domain controllers is reachable from this host"
        )
        return ServerDownError(msg)
    if "client" in lowered and "not found in kerberos database" in lowered:
        msg = f"the KDC does not know {who} ({detail}): check the principal setting (user@REALM, realm in capitals)"
        return AuthenticationError(msg)
    if "preauthentication failed" in lowered or "integrity check" in lowered or "password" in lowered:
        msg = (
            f"the KDC refused the key of {who} ({detail}): the account's password changed after the keytab "
            "was exported; export the keytab again (a gMSA's keytab must follow each password rotation)"
        )
        return AuthenticationError(msg)
    if "does not match desired name" in lowered:
        msg = (
            f"the credential cache {settings.ccache} holds tickets of another principal than {who} ({detail}): "
            "fill it for this principal (kinit -k), or remove the principal setting"
        )
        return AuthenticationError(msg)
    if "no credentials cache found" in lowered or "no credentials were supplied" in lowered:
        if settings.keytab is not None:
            msg = (
                f"keytab {settings.keytab} has no usable key for {who} ({detail}): `klist -k {settings.keytab}` "
                f"lists its principals; set principal to one of them{_realm_case(settings.principal)}, or export "
                "the keytab again"
            )
        else:
            msg = (
                f"no Kerberos ticket for {who} ({detail}): set keytab, or keep the credential cache "
                f"{_cache_named(settings)} filled (kinit -k, k5start)"
            )
        return AuthenticationError(msg)
    return StopRunError(f"Kerberos bind as {who} to {spn} failed: {detail}")


def _realm_case(principal: str | None) -> str:
    """A hint for a principal whose realm is not in capitals: Kerberos realms are case-sensitive, and an AD
    realm is the domain's DNS name in capitals, so ``svc@corp.example`` finds no key of ``svc@CORP.EXAMPLE``."""
    user, at, realm = (principal or "").rpartition("@")
    if not at or realm == realm.upper():
        return ""
    return f" (realms are case-sensitive: an AD realm is in capitals, {user}@{realm.upper()})"


def _cache_named(settings: ActiveDirectorySettings) -> str:
    """The credential cache a bind without a keytab used, as an operator finds it: the ``ccache`` setting,
    else the cache KRB5CCNAME names, by its value. Why the value: the service account's environment is not
    the operator's shell, and "(KRB5CCNAME)" left them to guess which file a scheduled run read."""
    if settings.ccache:
        return settings.ccache
    name = os.environ.get("KRB5CCNAME")
    if name:
        return f"{name} (KRB5CCNAME)"
    return "that KRB5CCNAME names (not set for this run: krb5's default cache, which `klist` shows)"


def _detail(text: str) -> str:
    """The telling part of a GSSAPI error: its minor (mechanism) status, or its major one when the minor
    says nothing. Why: MIT reports an expired ticket as major "The referenced credential has expired",
    minor "Success", and the bind failed with nothing but "Success" to show for it."""
    if "Minor (" not in text:
        return text
    major, _, minor = text.rpartition("Minor (")
    minor = minor.split("): ", 1)[-1].strip()
    if minor.lower() not in ("", "success", "unknown error"):
        return minor
    return major.split("): ", 1)[-1].strip().rstrip(",").strip() or text


def _expired(detail: str, settings: ActiveDirectorySettings) -> AuthenticationError:
    """The ticket the bind would use has run out: a credential cache nobody renewed (k5start stopped,
    a kinit that was never scheduled), or a keytab krb5 could not get a new one from."""
    who = settings.account
    if settings.keytab is not None:
        msg = (
            f"the Kerberos ticket of {who} has expired ({detail}) and no new one came from keytab {settings.keytab}: "
            f"`kinit -k -t {settings.keytab} {settings.principal or '<principal>'}` as the service account shows why"
        )
    else:
        whose = f" of {settings.principal}" if settings.principal else ""
        msg = (
            f"the Kerberos ticket{whose} in the credential cache {_cache_named(settings)} has expired "
            f"({detail}): renew it as the service account (kinit -k, scheduled) or keep it fresh with k5start or "
            "SSSD; or set keytab, and the agent gets its own tickets"
        )
    return AuthenticationError(msg)


def signing_required(where: str, detail: str) -> StopRunError:
    """The DC wants a signed or sealed SASL session, which ldap3 cannot provide."""
    msg = (
        f"{where} refused the Kerberos bind ({detail}): the DC demands LDAP signing or sealing even over TLS, "
        "and this client can only rely on TLS for that. A Windows DC accepts TLS as meeting its signing "
        "requirement (Windows Server 2025's default included): keep security = 'ldaps' or 'starttls'. "
        "On Samba set `ldap server require strong auth = allow_sasl_over_tls`"
    )
    return StopRunError(msg)
