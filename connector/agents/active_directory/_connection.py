"""Connections to the domain controllers: TLS, binding, reconnecting, failing over, and a small pool
for exports.

Why each choice:

* TLS validation is on unless switched off (``tls_validate = false``, warned about at every open),
  against ``ca_file`` alone, or without it this machine's trust store; ldap3 then also checks the host
  name against the certificate's names. ldap3 makes its own context (``ssl.create_default_context``,
  so no ``truststore`` context can be handed to it), and that context's ``load_default_certs`` reads the
  trust store: on Windows the ROOT and CA certificate stores (the computer's and the account's, Group
  Policy's included), where AD CS and Group Policy put an enterprise CA on domain members; on Linux
  OpenSSL's default paths, which SSL_CERT_FILE and SSL_CERT_DIR override. Unlike the HTTPS agents'
  ``truststore`` (``connector.net.verifying_session``), it fetches no missing intermediate
  certificate: a DC must send its chain, as AD's LDAPS does.
* ``TCP_NODELAY`` is set on ldap3's socket before TLS starts. ldap3 leaves Nagle's algorithm on,
  so a request bigger than one TLS record (~16 KB; a 95 KB photo is several) waits ~40 ms for the
  server's delayed ACK: 20-60 writes/s instead of hundreds.
* Failures are told apart, because the engine reacts differently: a refused password is an
  ``AuthenticationError``, a certificate that does not validate a ``StopRunError`` naming TLS
  (retrying cannot fix either), an unreachable server a ``ServerDownError`` after a few attempts.
* Several DCs (``host``, then ``fallback_hosts``: MIM's preferred domain controllers; or with ``domain``
  those DNS lists, ``_locator``) are tried in that order when a connection is made, and the DC already
  in use first, so a step stays on one DC while it answers. Only a DC out of reach (refused, timed out,
  reset, not resolved) is passed over; a certificate that does not validate or a refused bind stops as
  before, since another DC would not make the configuration right (and trying a refused password on
  every DC locks the account sooner). Which DC answered, and why the ones before it were passed over,
  is kept for the run history. With ``domain`` and no ``site``, the first connection of a step asks its DC
  this host's site (LDAP ping, ``_netlogon``) and moves to a DC of that site when the locator finds one.
* A broken transport during an operation is repaired by reconnecting and repeating the operation.
  Everything the agent sends is idempotent (searches, modifies that *replace* values, and adds or
  deletes of values sent with AD's permissive-modify control), so a repeat after a lost answer is safe.

Secrets: the password goes to ldap3 only; no message here includes it (ldap3's own exception
texts do not contain it either). With ``auth = "kerberos"`` there is no password at all
(``_kerberos``), and a Kerberos-bound connection binds again before its ticket runs out.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from ldap3 import NONE, SIMPLE, Connection, Server, Tls
from ldap3.core.exceptions import (
    LDAPCertificateError,
    LDAPCommunicationError,
    LDAPException,
    LDAPResponseTimeoutError,
    LDAPStartTLSError,
)
from ldap3.core.tls import check_hostname

from connector.agents.active_directory import _kerberos
from connector.agents.active_directory._locator import DcLocator, DnsLookupFailed
from connector.agents.active_directory._netlogon import NetlogonError, ldap_ping
from connector.agents.active_directory._settings import ActiveDirectorySettings
from connector.net import SSL_CERT_FILE, certificate_out_of_date, openssl_ca_file, readable_ca_file
from connector.sdk import AuthenticationError, ServerDownError, StopRunError

__all__ = [
    "COOKIE_GONE",
    "DC_STATE_CODES",
    "TRANSPORT_ERRORS",
    "DcRefused",
    "Link",
    "LinkPool",
    "Outcome",
    "ServerUnreachable",
    "cookie_gone",
    "dc_entries",
    "describe_failure",
    "paged_cookie",
    "result_detail",
]

T = TypeVar("T")

#: Errors after which the connection is unusable and a reconnect may help.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    LDAPCommunicationError,
    LDAPResponseTimeoutError,
    OSError,
)
_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 4.0)


class _Unreachable(OSError):
    """A connect attempt failed in a way a retry may fix; the message says where and how."""


class ServerUnreachable(Exception):
    """The transport failed and reconnecting did not help (exports turn this into RETRY results)."""


#: Result codes that describe the DC, not the request (RFC 4511 4.1.9 and appendix A: timeLimitExceeded,
#: busy, unavailable; AD answers a DC overloaded, shutting down or not ready so, with a SvcErr problem
#: 5001-5003): asking again later, or another DC, can succeed where the same request failed.
DC_STATE_CODES = frozenset({3, 51, 52})


#: Answers to a page sent with a cookie that mean the DC no longer holds the search's result set: the search
#: starts again from its first page (``cookie_gone``, for ``_import.Importer._paged`` and
#: ``_permissions.writable_elsewhere``). RFC 2696 (3) leaves the code to the server: "If, for any reason, the server
#: cannot resume a paged search operation for a client, then it SHOULD return the appropriate error in a
#: searchResultDone entry". Microsoft, "How LDAP server cookies are handled" (https://learn.microsoft.com/en-us/windows-server/identity/ad-ds/manage/how-ldap-server-cookies-are-handled):
#: "If the server cannot find related cookie information from the server cache due to any reason, the search is
#: discontinued and error is returned to the client"; result sets are discarded oldest first past MaxResultSetSize
#: (262,144 bytes) or MaxResultSetsPerConn (10), and a client that sends a discarded one gets an error "similar to:
#: 00000057: LdapErr: DSID-xxxxxxxx, comment: Error processing control, data 0, v1db1"; "Retrying the search will
#: result in restarting the search from the first page". The page gives that text, not the LDAP result code. Measured
#: on Samba 4.17: 53 unwillingToPerform for a cookie it does not hold (discarded, or another connection's), 12
#: unavailableCriticalExtension for one sent with another request; AD answers 12 with that text to a paged search
#: (reported on Microsoft Q&A 761199, not documented), and Microsoft documents the same comment with protocolError for
#: a DirSync cookie a DC rejects ("Polling for Changes Using the DirSync Control": "A protocol error occurred").
#: So the documented text counts whatever the code (``_CONTROL_ERROR``). ASSUMPTION (searched: MS-ADTS 3.1.1.3.4.1.1
#: and 3.1.1.3.4.6, RFC 2696, the page above; none names a code): AD answers a discarded result set with one of
#: these codes or with that text. A later page is the first page's request but for the cookie, so these can only be
#: about it; any other answer (a right withdrawn, the base DN deleted or renamed, a limit) is not, and gets the first
#: page's (``_import.Importer._raise_for``).
COOKIE_GONE = frozenset({12, 53})
#: The comment of AD's answer to a paged-search cookie it no longer holds (see ``COOKIE_GONE``), lower case.
_CONTROL_ERROR = "error processing control"


def cookie_gone(result: dict[str, Any]) -> bool:
    """Whether ``result``, the answer to a page sent with a cookie, says the DC no longer holds the search's result
    set (``COOKIE_GONE``): one of its codes, or AD's documented "Error processing control" with any error code."""
    code = result.get("result")
    if code in COOKIE_GONE:
        return True
    return code not in (0, None) and _CONTROL_ERROR in str(result.get("message") or "").lower()


def result_detail(result: dict[str, Any]) -> str:
    """An LDAP result as the messages say it: code, description and the DC's text."""
    return f"{result.get('result')} {result.get('description', '')}: {result.get('message', '')}".strip(" :")


class DcRefused(Exception):
    """The DC answered a search with busy, unavailable or timeLimitExceeded (``DC_STATE_CODES``): its state.

    Why an exception and not an empty answer: a search so answered has no entries, and an export
    that took that for "no such object" or "no right to write" failed each person, or stopped asking for
    a grant that exists, when the DC only asked to be asked again later. Not a transport error: the
    connection works, so ``Link.run`` does not repeat the search at once.
    """

    def __init__(self, result: dict[str, Any], what: str) -> None:
        #: Which search (for the message: "the search for ... under BASE"), and the DC's answer.
        self.what = what
        self.detail = result_detail(result)
        super().__init__(f"{what}: {self.detail}")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a step (or a check) that stopped on a DC's answer kept, and what to run again: the words the stops
    of the import, the export and ``mvsync doctor`` share (``dc_state_stop``, ``Importer._raise_for``).

    Why: the importer's searches serve ``mvsync doctor``'s checks too, and their stop told the operator of a
    doctor run that "the import stopped there ... the delta-import watermark stays where it was"."""

    #: What the stop left as it was ("the import stopped there: ..."), lower case, no final stop.
    kept: str
    #: What to run again ("the import", "mvsync doctor").
    again: str

    def later(self) -> str:
        """The outcome of a stop for the DC's state: asking again later, or another DC, can succeed."""
        return f"{self.kept}; run {self.again} again later, or list another DC first"


def dc_state_stop(link: Any, what: str, detail: str, outcome: Outcome) -> ServerDownError:
    """The stop for a DC that answered ``what`` busy, unavailable or out of time (``DC_STATE_CODES``), for the
    import, the export and doctor's checks alike: those answers describe the DC (overloaded, shutting down, its
    services not ready), not the objects, so the step stops once instead of failing each; ``outcome`` says what
    was kept and what to run again."""
    return ServerDownError(
        f"{link.describe()} answered {what} with {detail} (busy, unavailable or out of time: a state of the DC, "
        f"not of the objects); {outcome.later()}"
    )


def dc_entries(conn: Connection, what: str) -> list[dict[str, Any]]:
    """The entries of the last search on ``conn`` (``search_entries``), or ``DcRefused`` naming ``what`` when
    the DC answered it with a result of its own state (``DC_STATE_CODES``)."""
    result = conn.result or {}
    if result.get("result") in DC_STATE_CODES:
        raise DcRefused(result, what)
    return search_entries(conn)


class _NamedTls(Tls):  # type: ignore[misc]  # ldap3 has no type hints
    """ldap3's TLS for a DC reached at the address DNS gave for its name: the certificate must name the DC
    (its SRV target, also sent as SNI), whatever the address.

    Why: ldap3 accepts a certificate that names the address it connected to *or* one of its ``valid_names``,
    so a certificate issued for the address alone, which any host at that address may hold, passed for the
    DC named in DNS. RFC 6125 (6.4) checks the name the client asked for; here that is the SRV target, which
    the DC registers (MS-ADTS 6.3.1.10) and its certificate names. The chain is still validated by ldap3's
    context; the name is then checked with ldap3's own matcher, against the target alone.
    """

    def __init__(self, name: str, **options: Any) -> None:
        super().__init__(valid_names=[name], sni=name, **options)
        self.dc_name = name

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        super().wrap_socket(connection, do_handshake=do_handshake)
        if do_handshake and self.validate != ssl.CERT_NONE:
            check_hostname(connection.socket, self.dc_name, None)


def _is_certificate_failure(exc: BaseException) -> bool:
    if isinstance(exc, (LDAPCertificateError, ssl.SSLCertVerificationError)):
        return True
    text = str(exc).lower()
    return "certificate" in text or "hostname mismatch" in text or "doesn't match" in text


_SAN = re.compile(r"\('(?:DNS|IP Address)', '([^']+)'\)")


def _certificate_names(text: str) -> list[str]:
    """The subjectAltName entries of the certificate that ldap3's host-name check prints whole."""
    return list(dict.fromkeys(_SAN.findall(text)))


def describe_failure(
    exc: BaseException,
    where: str,
    settings: ActiveDirectorySettings,
    *,
    starting_tls: bool = False,
    host: str | None = None,
) -> str:
    """What went wrong talking to ``where`` (host:port), by kind: DNS, refused, a timeout during
    the connect, the TLS handshake or a read, a TLS or certificate failure, or a lost connection.

    Why: "timed out" alone cannot tell a firewall dropping packets (connect) from a hung DC that
    accepts connections and never answers (TLS handshake) or a slow search (read), and each
    needs a different fix. ldap3 wraps socket and ssl errors in classes that also derive from
    the original type, and prefixes the phase ("socket ssl wrapping error" is the handshake).
    """
    text = str(exc)
    lowered = text.lower()
    tls_phase = (
        starting_tls or "ssl wrapping" in lowered or "handshake" in lowered or isinstance(exc, LDAPStartTLSError)
    )
    if (
        isinstance(exc, socket.gaierror)
        or "getaddrinfo" in lowered
        or "name or service not known" in lowered
        or lowered == "invalid server address"  # ldap3: the lookup (which it swallows) found no address
    ):
        name = host or settings.host
        return f"DNS: cannot resolve {name} ({text}); {_check_name(name, settings)}"
    if isinstance(exc, ConnectionRefusedError) or "connection refused" in lowered:
        check = "check port; the SRV records name this DC" if settings.domain else "check host, port"
        return f"{where} refused the connection: nothing listens on port {settings.effective_port} ({check})"
    if isinstance(exc, (TimeoutError, socket.timeout, LDAPResponseTimeoutError)) or "timed out" in lowered:
        if tls_phase:
            return (
                f"timeout during the TLS handshake with {where} after {settings.connect_timeout:g} s: the server "
                "accepted the connection and never answered (a hung DC, or a proxy or firewall holding the traffic)"
            )
        if "while opening" in lowered:
            return (
                f"timeout during connect to {where} after {settings.connect_timeout:g} s: no answer at all "
                "(a firewall dropping packets, or the wrong address)"
            )
        return f"timeout during read from {where}: no answer within receive_timeout ({settings.receive_timeout} s)"
    if _is_certificate_failure(exc):
        return _certificate_failure(text, where, settings, host or settings.host or "")
    if tls_phase and isinstance(exc, ConnectionError):
        # a DC restarting or overloaded, or a firewall or load balancer cutting connections, resets
        # the handshake as well as a port without TLS does: worth the reconnect attempts, unlike a
        # certificate (a restart that lasts seconds must not stop an export and lose its batch)
        return (
            f"connection to {where} reset during the TLS handshake ({text}): a DC restarting or overloaded, "
            f"a firewall or load balancer cutting the connection, or a port that does not speak {settings.security}"
        )
    if tls_phase:
        return f"TLS handshake with {where} failed: {text} (does the port speak {settings.security}?)"
    if isinstance(exc, ssl.SSLError):  # after the handshake: the session broke off, as a reset would
        return f"connection to {where} lost: its TLS session was cut off ({text})"
    return f"connection to {where} lost: {text}"


#: OpenSSL's reason in a failed verification's text ("certificate verify failed: certificate has expired
#: (_ssl.c:1006)"), which ldap3 hands on inside the text of nested exception argument tuples.
_VERIFY_REASON = re.compile(r"certificate verify failed: ([^(\"'\\]+)")


def _listed_in(name: str | None, settings: ActiveDirectorySettings) -> str:
    """The setting that lists the DC ``name``: host, or one of fallback_hosts."""
    return "host" if name == settings.host else "fallback_hosts"


def _check_name(name: str | None, settings: ActiveDirectorySettings) -> str:
    """What to check for a DC's name that does not resolve: the setting that lists it, or, for a DC found in
    DNS (``domain``), the address records its SRV record points to (no setting of this agent names it)."""
    if settings.domain is not None:
        return "check the DC's address records (A/AAAA) in DNS, where the SRV records of domain name it"
    return f"check {_listed_in(name, settings)}"


def _certificate_failure(text: str, where: str, settings: ActiveDirectorySettings, host: str) -> str:
    """What is wrong with the DC's certificate, and the setting or the fix for it.

    Why by reason: an expired certificate, one not valid yet and one from a CA the agent does not
    trust each need another fix (renew it, set a clock right, set ``ca_file``); one generic advice
    sent the operator of an expired certificate, which chains and names the host, to ``ca_file``.
    """
    names = _certificate_names(text)
    if names and "match" in text.lower():  # a valid certificate for other names: say which, not the whole dict
        fix = _rename(host, settings)
        return f"certificate: the certificate of {where} names {', '.join(names)}, not {host}: {fix}"
    found = _VERIFY_REASON.search(text)
    reason = found.group(1).strip() if found else text
    dates = certificate_out_of_date(text)
    if dates == "expired":
        return (
            f"certificate: the certificate of {where} has expired: renew it (or, if it is still valid, set this "
            "machine's clock right); the agent does not connect without a valid certificate"
        )
    if dates == "not-yet-valid":
        return (
            f"certificate: the certificate of {where} is not valid yet: this machine's clock or the DC's is wrong "
            "(check both against a time source), or the certificate was issued with a start date ahead"
        )
    lowered = reason.lower()
    if "issuer" in lowered or "self-signed" in lowered or "self signed" in lowered:
        return _untrusted(where, reason, settings)
    return (
        f"certificate: TLS with {where} failed: {reason}. The server certificate must chain to "
        "ca_file (or the system trust store) and name the configured host"
    )


def _rename(host: str, settings: ActiveDirectorySettings) -> str:
    """The fix for a certificate that names the DC ``host`` otherwise: the setting that lists it, or for a DC
    found in DNS its certificate (the SRV record gives the DC's own DNS name, which its certificate should name)."""
    if settings.domain is not None:
        return "have the DC's certificate issued for its name in DNS (the target of its SRV record)"
    key = _listed_in(host, settings)
    return f"set {key} to one of those names, or have the DC's certificate issued for that name too"


def _untrusted(where: str, reason: str, settings: ActiveDirectorySettings) -> str:
    """A DC certificate whose CA is not trusted: by ``ca_file``, which needs that CA; or, without it, by
    this machine's trust store, which can take the CA (on Windows, Group Policy and AD CS put an
    enterprise CA there on domain members), or ``ca_file`` can name it."""
    if settings.ca_file is not None:
        return (
            f"certificate: the certificate of {where} is not issued by a CA in ca_file {settings.ca_file} "
            f"({reason}): set ca_file to the PEM file of the CA that issued the DC's certificate (your enterprise CA)"
        )
    return (
        f"certificate: the certificate of {where} is not issued by a CA in this machine's trust store ({reason}): "
        "add the CA that issued the DC's certificate to this machine's trust store (on Windows the computer's "
        "Trusted Root Certification Authorities, where Group Policy puts an enterprise CA; on Linux the system's "
        "CA certificates, or SSL_CERT_FILE), or set ca_file to its PEM file"
    )


#: AD's reasons for refusing a bind (the ``data`` code of its invalidCredentials message), with what to do.
_BIND_REFUSALS = {
    "525": "the account does not exist: check bind_dn",
    "530": "the account may not log on at this time (logonHours): allow it around the clock",
    "531": "the account may not log on from this computer (userWorkstations): allow it here",
    "532": "the account's password has expired: set a new one, in AD and in the password setting",
    "533": "the account is disabled: enable it",
    "701": "the account has expired (accountExpires): extend it",
    "773": "the account must change its password (reset, or pwdLastSet = 0): set a new one, in AD and in the "
    "password setting",
    "775": "the account is locked out (too many wrong passwords: another program with an old one?): unlock it",
}
_DATA_CODE = re.compile(r"\bdata ([0-9a-f]{3,8})\b", re.IGNORECASE)


def _refused_bind(where: str, settings: ActiveDirectorySettings, message: str) -> str:
    """Why ``where`` refused the bind (invalidCredentials) and what to do, from the DC's ``data`` code.

    Why: the same result code 49 means a wrong password, a disabled, locked or expired account, or a
    password that expired or must be changed; each needs another fix, and one of them happening in
    the middle of a run (an export's next connection) must not send the operator to the password file.
    """
    found = _DATA_CODE.search(message or "")
    code = found.group(1).lower() if found else ""
    head = f"{where} refused the bind of {settings.account!r} (invalidCredentials)"
    if code in _BIND_REFUSALS:
        return f"{head}: {_BIND_REFUSALS[code]} (AD's reason: data {code})"
    what = "check bind_dn and the password setting" if settings.auth == "simple" else "check principal"
    return f"{head}: {what}"


def _discard(conn: Connection) -> None:
    """Unbind ``conn`` and close its socket, whatever state a failed connect or bind left it in.

    Why not ``unbind()`` alone: ldap3 marks a connection open only once its socket has connected (and,
    for ldaps, finished the handshake). When the connect fails (refused, timed out), the socket stays in
    ``conn.socket`` with ``conn.closed`` true, and ``unbind()`` then does nothing; and an unbind whose
    request cannot be sent (the transport broke) raises before it closes. The socket was then closed
    only when the garbage collector reached the Connection (which refers to itself through its
    strategy): a scheduler retrying against a bad DC held one file descriptor per attempt until then.
    """
    with contextlib.suppress(Exception):
        conn.unbind()
    sock, conn.socket = conn.socket, None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()
    conn.closed = True


class Link:
    """One authenticated connection that reconnects when its transport breaks.

    Not thread-safe: each export thread leases its own ``Link`` from a ``LinkPool``.
    """

    def __init__(
        self,
        settings: ActiveDirectorySettings,
        logger: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
        prefer: str | None = None,
        locator: DcLocator | None = None,
    ) -> None:
        self.settings = settings
        self.logger = logger
        self._conn: Connection | None = None
        self._clock = clock
        #: Which DCs there are: the configured ones, or those found in DNS (shared by the links of a step).
        self.locator = locator or DcLocator(settings, logger)
        #: The DC this link is connected to, or was last (the first it tries on its next connect); "" until
        #: the DCs of ``domain`` are looked up at the first connect.
        self.host = prefer or (settings.hosts or [""])[0]
        #: DCs passed over on the way to one that answered, with why (for the run history); empty: none.
        self.passed_over: dict[str, str] = {}
        #: DCs this link was connected to and lost in the middle of its work, with why (for the run history).
        self.lost: dict[str, str] = {}
        #: The DC of this link's last connection; None before the first.
        self._served: str | None = None
        #: When a Kerberos-bound connection must bind again (its ticket runs out); None: never.
        self._rebind_at: float | None = None
        #: Successful binds so far (a rebind for a new ticket counts too); each is a new connection.
        self.binds = 0

    # -- connecting -----------------------------------------------------------------------------
    def _server(self, host: str) -> Server:
        """ldap3's server for the DC ``host``. When DNS gave its address (``dns_servers``), the connection goes
        there and the certificate is still checked for ``host``, the name in the SRV record (and sent as SNI)."""
        s = self.settings
        address = self.locator.address(host)
        named = None if address == host else host
        tls = None
        if s.security != "plain":
            ca = None if s.ca_file is None else readable_ca_file(s.ca_file, "ca_file")
            if ca is None and s.tls_validate and (system_file := openssl_ca_file()) is not None:
                # OpenSSL's default paths read it (the machine's store): a missing file left no CA at all,
                # and every DC's certificate read as untrusted, sending the operator to ca_file
                readable_ca_file(system_file, SSL_CERT_FILE)
            validate = ssl.CERT_REQUIRED if s.tls_validate else ssl.CERT_NONE
            if named is None:
                tls = Tls(validate=validate, ca_certs_file=ca)
            else:
                tls = _NamedTls(named, validate=validate, ca_certs_file=ca)
        return Server(
            address,
            port=s.effective_port,
            use_ssl=s.security == "ldaps",
            tls=tls,
            get_info=NONE,
            connect_timeout=s.connect_timeout,
        )

    def _where(self, host: str | None = None) -> str:
        return f"{host or self.host}:{self.settings.effective_port} ({self.settings.security})"

    def describe(self) -> str:
        """Which DC served this link (host:port) and, when the LDAP ping chose it, its site; the DCs it
        served before and lost on the way; and the DCs passed over, with why.

        Why the lost ones apart: a DC that served the first writes of an export and then went away was
        named as "passed over", as if it had written nothing, when the step's writes went to two DCs.
        """
        text = f"domain controller {self._where()}"
        site = self.locator.site_of(self.host)
        if site:
            text += f" of site {site} ({self.locator.site_note()})"
        if self.lost:
            lost = ", ".join(self._where(h) for h in self.lost)
            text += f", which took over from {lost} (lost during the step: {'; '.join(self.lost.values())})"
        skipped = {h: why for h, why in self.passed_over.items() if h not in self.lost}
        if skipped:
            text += f", after passing over {', '.join(skipped)} ({'; '.join(skipped.values())})"
        return text

    def _credentials(self, host: str) -> dict[str, Any]:
        s = self.settings
        if s.auth == "kerberos":
            return _kerberos.bind_arguments(s, host)
        assert s.password is not None  # the settings' validator guarantees it for simple binds
        return {"user": s.bind_dn, "password": s.password.get_secret_value(), "authentication": SIMPLE}

    def _open_once(self, host: str) -> Connection:
        """A connection to ``host``, connected and bound; on any failure its socket is closed before the
        error leaves."""
        s = self.settings
        # ldap3 applies receive_timeout to the TLS handshake; until TLS is up, connect_timeout rules,
        # so a DC that accepts connections and never answers is given up on as quickly as one that
        # does not accept them
        handshake_s = max(1, math.ceil(s.connect_timeout))
        conn = Connection(
            self._server(host),
            **self._credentials(host),
            receive_timeout=handshake_s,
            raise_exceptions=False,
            auto_referrals=False,
            return_empty_attributes=False,
        )
        try:
            self._start(conn, host)
            if not self._bind(conn, host):
                raise self._bind_refused(conn, host)
        except BaseException:  # a refusal, a transport failure, a timeout, Ctrl-C: see _discard
            _discard(conn)
            raise
        self.binds += 1
        if s.auth == "kerberos":
            self._rebind_at = self._clock() + _kerberos.rebind_after(s)
        return conn

    def _start(self, conn: Connection, host: str) -> None:
        """Connect ``conn``'s socket to ``host`` and bring up TLS; failures become errors that name it."""
        s = self.settings
        starting_tls = False
        try:
            conn.open()
            conn.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if s.security == "starttls":
                starting_tls = True
                conn.start_tls()
            conn.receive_timeout = s.receive_timeout
            conn.socket.settimeout(s.receive_timeout)
        except (LDAPException, OSError) as exc:  # ldap3 may re-raise ssl's own (OSError) errors
            described = describe_failure(exc, self._where(host), s, starting_tls=starting_tls, host=host)
            if described.startswith(("certificate:", "TLS handshake with")):  # retrying cannot fix these
                raise StopRunError(described) from None
            raise _Unreachable(described) from None
        except (LookupError, ValueError) as exc:  # ldap3's BER decoder meeting bytes that are not LDAP
            msg = (
                f"{self._where(host)} answered with something that is not LDAP ({type(exc).__name__} decoding it): "
                f"check port and security (does the port speak {s.security}?)"
            )
            raise StopRunError(msg) from None

    def _bind_refused(self, conn: Connection, host: str) -> StopRunError:
        """The error for a bind the DC ``host`` answered with a refusal, from its result code."""
        s = self.settings
        where = self._where(host)
        code = conn.result.get("result")
        description = conn.result.get("description", "")
        message = conn.result.get("message", "")
        if code == 49:
            return AuthenticationError(_refused_bind(where, s, message))
        if code == 8 and s.auth == "kerberos":
            return _kerberos.signing_required(where, f"strongerAuthRequired: {message}".strip(": "))
        if code == 8:
            return StopRunError(f"{where} requires an encrypted connection (strongerAuthRequired): use TLS")
        return StopRunError(f"bind to {where} failed: {code} {description} {message}".strip())

    def _bind(self, conn: Connection, host: str) -> bool:
        """ldap3's bind; Kerberos failures (raised, not returned) become errors that say what to do."""
        if self.settings.auth != "kerberos":
            return bool(conn.bind())
        try:
            return bool(conn.bind())
        except LDAPCommunicationError as exc:
            if "security layer" in str(exc):  # the DC insists on signing/sealing
                raise _kerberos.signing_required(self._where(host), str(exc)) from None
            raise
        except Exception as exc:
            if type(exc).__module__.startswith(("gssapi", "winkerberos")):
                raise _kerberos.explain(exc, self.settings, host) from None
            raise

    def connect(self) -> Connection:
        """The open connection, (re)connecting with a short backoff; ServerDownError if impossible.

        Each attempt tries the DC in use first, then the others in the configured order, so a DC that
        is down or hung costs one ``connect_timeout`` before the next is asked, not the whole backoff.
        """
        if self._conn is not None and not self._conn.closed:
            if self._rebind_at is None or self._clock() < self._rebind_at:
                return self._conn
            # the bind's ticket runs out soon: bind again (krb5 fetches a new ticket from the keytab)
            self.logger.info("Kerberos ticket of %s expires soon: binding again", self.settings.account)
            self.close()
        attempts = self.settings.reconnect_attempts + 1
        failures: dict[str, str] = {}
        order = self._order()
        for attempt in range(attempts):
            for host in order:
                try:
                    self._conn = self._open_once(host)
                except TRANSPORT_ERRORS as exc:
                    failures[host] = self._reason(exc, host)
                    continue
                self._reached(host, failures)
                if self.locator.wants_site:
                    return self._to_client_site(host)
                return self._conn
            if attempt + 1 < attempts:
                time.sleep(_BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)])
        raise ServerDownError(self._unreachable(attempts, failures))

    def _to_client_site(self, host: str) -> Connection:
        """Ask ``host``, just bound, this host's site (the LDAP ping, ``_netlogon``) over the same connection;
        when the locator puts another site's DCs first, move to one of them (DsGetDcName's choice), the DC
        that answered staying in the list behind them. A ping that fails never stops the step."""
        assert self._conn is not None
        try:
            answer = ldap_ping(self._conn, str(self.settings.domain), self.settings.ping_timeout)
        except NetlogonError as exc:
            self.locator.site_unknown(host, str(exc))
            return self._conn
        except (*TRANSPORT_ERRORS, LDAPException) as exc:  # the connection broke, or the DC did not answer in time
            self.locator.site_unknown(host, self._ping_failure(exc, host))
            self.close()
            return self.connect()
        if not self.locator.use_client_site(host, answer):
            return self._conn
        self.close()
        self.host = self.locator.controllers()[0]
        return self.connect()

    def _ping_failure(self, exc: BaseException, host: str) -> str:
        """Why the LDAP ping to ``host`` got no answer: ``ping_timeout`` ran out, or the connection broke."""
        if isinstance(exc, (TimeoutError, socket.timeout, LDAPResponseTimeoutError)):
            return (
                f"{self._where(host)} did not answer it within ping_timeout ({self.settings.ping_timeout:g} s): "
                "the ping only orders the DCs"
            )
        return f"the connection to {self._where(host)} broke or timed out during it ({type(exc).__name__})"

    def _order(self) -> list[str]:
        """The DCs in the order a connect tries them: the one in use (or last used), then the rest as configured
        or found in DNS (``domain``: looked up at the first connect; errors there name the DNS name asked)."""
        found = self.locator.controllers()
        if self.host not in found:
            self.host = found[0]
        return [self.host, *(h for h in found if h != self.host)]

    def _reason(self, exc: BaseException, host: str) -> str:
        if isinstance(exc, (_Unreachable, DnsLookupFailed)):
            return str(exc)
        return describe_failure(exc, self._where(host), self.settings, host=host)

    def _reached(self, host: str, failures: dict[str, str]) -> None:
        """Note that ``host`` answered after the DCs in ``failures`` did not; a change of DC is logged."""
        passed = {h: why for h, why in failures.items() if h != host}
        if host != self.host and self._served == self.host:  # it served this link before: lost, not passed over
            self.lost[self.host] = failures.get(self.host, "it was not reached")
        if host != self.host:
            self.logger.warning(
                "domain controller %s answers in place of %s: %s",
                self._where(host),
                self._where(),
                failures.get(self.host, "it was not reached"),
            )
        self.host = self._served = host
        if passed:
            self.passed_over = passed

    def _unreachable(self, attempts: int, failures: dict[str, str]) -> str:
        """Why no DC could be reached: each one tried, in order, with why it failed."""
        if len(failures) == 1:
            ((host, reason),) = failures.items()
            return f"cannot reach the domain controller at {self._where(host)} after {attempts} attempt(s): {reason}"
        tried = " ".join(f"[{n}] {reason}." for n, reason in enumerate(failures.values(), 1))
        remedy = "or add a DC that does to fallback_hosts"
        if self.locator.located:
            remedy = "or that DNS lists the DCs that run"
        return (
            f"cannot reach any of the {len(failures)} domain controllers ({self.locator.source()}; "
            f"{attempts} attempt(s) each): {tried} Check that they run and that this host reaches them, {remedy}"
        )

    def prefer(self, host: str) -> None:
        """Make ``host`` (one of the configured DCs) the first the next connect tries, closing a connection
        to another. Why: a delta's watermark belongs to the DC that issued it, and after a failover the
        step that follows must go back to that DC while it answers, not to the first of the list."""
        if host == self.host or host not in self.locator.controllers():
            return
        self.logger.info("the delta import goes to %s, the DC its watermark comes from", self._where(host))
        self.close()
        self.host = host

    @property
    def connection_number(self) -> int:
        """Which connection is open (1 for the first): a simple-paged search's cookie is good only on the
        connection that received it, so a reconnect or a rebind makes the search start again."""
        return self.binds

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            _discard(conn)

    # -- operations -----------------------------------------------------------------------------
    def run(self, operation: Callable[[Connection], T], stop: threading.Event | None = None) -> T:
        """Run ``operation`` on the connection; reconnect and repeat it if the transport breaks.

        Raises ServerUnreachable when it still fails after ``reconnect_attempts`` reconnects, or at
        the first failure once ``stop`` is set. Why ``stop``: an interrupted export waits for its
        writes under way, and against a hung DC the reconnects would make that wait last minutes
        (past a service manager's stop timeout, which then kills the process unrecorded).
        """
        attempts = self.settings.reconnect_attempts + 1
        last: BaseException | None = None
        for attempt in range(attempts):
            try:
                conn = self.connect()
            except ServerDownError as exc:
                raise ServerUnreachable(str(exc)) from None
            try:
                return operation(conn)
            except TRANSPORT_ERRORS as exc:
                last = exc
                self.close()
                if stop is not None and stop.is_set():
                    reason = self._reason(exc, self.host)
                    raise ServerUnreachable(f"{reason}; not retried: the export was interrupted") from None
                self.logger.info("connection to %s broke (%s); reconnecting", self._where(), type(exc).__name__)
                if attempt + 1 < attempts:
                    time.sleep(_BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)])
        assert last is not None
        reason = self._reason(last, self.host)
        raise ServerUnreachable(f"the connection to {self._where()} keeps failing: {reason}")


class LinkPool:
    """A few ``Link``s shared by export threads; each is used by one thread at a time."""

    def __init__(self, factory: Callable[[], Link], size: int) -> None:
        self._factory = factory
        self._size = size
        self._idle: queue.LifoQueue[Link] = queue.LifoQueue()
        self._created: list[Link] = []
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def lease(self) -> Iterator[Link]:
        try:
            link = self._idle.get_nowait()
        except queue.Empty:
            with self._lock:
                grow = len(self._created) < self._size
                if grow:
                    link = self._factory()
                    self._created.append(link)
            if not grow:
                link = self._idle.get()
        try:
            yield link
        finally:
            self._idle.put(link)

    def close(self) -> None:
        with self._lock:
            for link in self._created:
                link.close()
            self._created.clear()
            self._idle = queue.LifoQueue()

    def __len__(self) -> int:
        return len(self._created)

    def links(self) -> list[Link]:
        """The links made so far, in the order they were made (the first is the step's own)."""
        with self._lock:
            return list(self._created)


#: The simple paged results control (RFC 2696; AD: LDAP_PAGED_RESULT_OID_STRING).
PAGED_OID = "1.2.840.113556.1.4.319"


def paged_cookie(result: dict[str, Any]) -> bytes | None:
    """The cookie a paged search's answer (``conn.result``) hands back for its next page; None when it is done."""
    value = result.get("controls", {}).get(PAGED_OID, {}).get("value", {})
    cookie: bytes | None = value.get("cookie") or None
    return cookie


def search_entries(conn: Connection) -> list[dict[str, Any]]:
    """The entries (not referrals) of the last search on ``conn``."""
    return [e for e in (conn.response or []) if e.get("type") == "searchResEntry"]
