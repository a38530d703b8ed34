"""Network failures in words an operator can act on: which host and port, and what kind of failure.

"ConnectionError talking to Graph" says nothing at 03:00. A DNS failure means a wrong name or a
broken resolver; a refused connection means nothing listens there; a connect timeout means a
firewall or a dead host; a TLS failure means a certificate or a proxy; a read timeout means the
service took the connection and never answered. Each needs a different fix, so each is named.
"""

from __future__ import annotations

import io
import ipaddress
import os
import re
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import SplitResult, urlsplit

import requests
import truststore
import urllib3

from connector.sdk import AuthenticationError, ConfigurationError, wait_event

__all__ = [
    "CA_BUNDLE_VARIABLES",
    "RECHECKED",
    "SILENCE",
    "SSL_CERT_FILE",
    "AnswerClock",
    "RefusedEverywhere",
    "authority_tenant_conflict",
    "ca_bundle_key",
    "certificate_out_of_date",
    "check_trust_environment",
    "describe_request_error",
    "entra_refusal",
    "environment_ca_file",
    "fails_again",
    "failure_kind",
    "host_port",
    "https_url",
    "on_host",
    "openssl_ca_file",
    "reached_server",
    "read_capped",
    "read_within",
    "readable_ca_file",
    "service_at",
    "setting_key",
    "unanswered_outage",
    "unreachable_authority",
    "unusable_authority",
    "verifying_session",
]


def host_port(url: str) -> str:
    """``host:port`` of an URL, with the scheme's default port filled in."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname or '?'}:{port}"


def on_host(link: str, base: str) -> bool:
    """Whether ``link`` is an https:// URL on ``base``'s host and port (a link a service answered with,
    which the client follows with its credentials only to the host it was configured for)."""
    return urlsplit(link).scheme == "https" and host_port(link) == host_port(base)


def https_url(url: str, why: str = "") -> SplitResult:
    """``url`` split, if it is an https:// URL with a host and no ``user:password@``; else the
    ``ValueError`` a settings validator refuses it with (``why`` adds the agent's reason for TLS).

    Why refuse credentials rather than mask them: an agent's URL is part of what it says and counts
    (messages kept in run history, the throttling limiter's name, which is a Prometheus label, the
    console), and each would have to mask it; and a password there escapes the rule that secrets come
    only from ``{ env = .. }`` or ``{ file = .. }``.
    """
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        msg = f"must be an https:// URL{f' ({why})' if why else ''}"
        raise ValueError(msg)
    if "@" in parts.netloc:
        msg = (
            "must not hold a user name or password (user:password@host): it would show in messages, run history "
            "and metrics; give the account and its secret in their own settings, the secret as { env = .. } or "
            "{ file = .. }"
        )
        raise ValueError(msg)
    return parts


def failure_kind(exc: requests.RequestException) -> str:
    """What kind of network failure ``exc`` is, and where the fix lies, in a few words."""
    text = str(exc)
    if isinstance(exc, requests.exceptions.SSLError):
        return _tls_failure(text, getattr(exc, "untrusted", _UNTRUSTED_BUNDLE), _verification(exc))
    if isinstance(exc, requests.exceptions.ProxyError):
        return _proxy_failure(text, getattr(exc, "proxy", None), getattr(exc, "proxy_credentials", False))
    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "timed out while connecting (a firewall, or the host is down)"
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return "connected, but no answer within the timeout"
    if isinstance(exc, requests.exceptions.ConnectionError):
        lowered = text.lower()
        if "name or service not known" in lowered or "nodename nor servname" in lowered or "getaddrinfo" in lowered:
            return "DNS lookup failed (check the host name)"
        if "refused" in lowered:
            return "connection refused (nothing listens there)"
        if "reset" in lowered or "aborted" in lowered or "remotedisconnected" in lowered:
            return "connection reset by the server"
        if "incompleteread" in lowered or "chunkedencodingerror" in lowered:
            return "the answer was cut off"
        return "connection failed"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError | requests.exceptions.ContentDecodingError):
        return "the answer was cut off"
    return type(exc).__name__


def _proxy_failure(text: str, proxy: str | None, credentials: bool) -> str:
    """What a proxy's failure says, naming the proxy by ``host:port`` (``_VerifyingAdapter.send``
    notes it; never its URL, which may hold a password), and where the fix lies.

    A 407 is the proxy asking for credentials: with none in the proxy's URL, where to give them;
    with some, that it refused them. requests sends a proxy URL's ``user:password@`` as HTTP Basic
    authentication ("Proxies" in its documentation), and nothing else: a proxy that accepts only
    Windows sign-in (Negotiate, NTLM) refuses them whatever they are.
    """
    where = f"the proxy at {proxy}" if proxy else "the proxy"
    refused = re.search(r"Tunnel connection failed: (\d{3}[^'\")]*)", text)
    if refused is None:
        return f"cannot reach {where} (check HTTPS_PROXY, or the Internet Options proxy on Windows)"
    status = refused.group(1).strip()
    if not status.startswith("407"):
        return f"{where} refused the tunnel ({status}): ask its administrators to let this host through"
    if credentials:
        return (
            f"{where} refused the tunnel ({status}): it did not accept the user name and password of its URL in "
            "HTTPS_PROXY (sent as Basic authentication): check them, or let this host through without credentials"
        )
    return (
        f"{where} refused the tunnel ({status}): it wants credentials: give them in HTTPS_PROXY "
        "(http://user:password@proxy:port, from a secret store), or let this host through"
    )


#: ``failure_kind``'s words for a connection the server accepted and then broke off
_AFTER_CONNECTING = frozenset({"connection reset by the server", "the answer was cut off"})


def reached_server(exc: requests.RequestException) -> bool:
    """Whether a failed request had reached the server (its connection reset, its answer cut off),
    rather than finding nobody there (refused, DNS, a timeout, TLS, a proxy).

    Why it matters: nobody there is about the host, so silence settles it (``AnswerClock``); a reset
    is as often about the one request (a proxy or firewall resetting one upload, one mailbox's
    backend), so a request that worked before is asked again first (``fails_again``).
    """
    return failure_kind(exc) in _AFTER_CONNECTING


#: OpenSSL's verification errors that no CA bundle cures (X509_verify_cert_error_string, and
#: CPython's host name check), and what does: a certificate for another name, or out of its dates.
_MISMATCH = re.compile(r"(?:hostname|ip address) mismatch, certificate is not valid for '([^']*)'", re.IGNORECASE)
_OUT_OF_DATE = {
    "expired": "TLS certificate expired (renew it on the server)",
    "not-yet-valid": "TLS certificate not valid yet (check this host's clock, and the server's)",
}


def certificate_out_of_date(text: str) -> Literal["expired", "not-yet-valid"] | None:
    """Whether the text of a failed verification says the certificate is out of its dates (OpenSSL's
    X509_verify_cert_error_string: "certificate has expired", "certificate is not yet valid").

    Why apart: the fix is not a CA setting but the certificate or a clock, whichever library (requests,
    ldap3) carried the text; each caller words the fix with its own settings.
    """
    lowered = text.lower()
    if "certificate has expired" in lowered:
        return "expired"
    if "certificate is not yet valid" in lowered:
        return "not-yet-valid"
    return None


#: Handshakes that failed before any certificate was looked at (OpenSSL's reasons, lower case), and why.
_HANDSHAKE = (
    (
        ("protocol_version", "unsupported_protocol", "no_protocols_available", "version_too_low"),
        "no TLS version both sides accept (this host needs TLS 1.2 or later; enable TLS 1.2 on the server)",
    ),
    (
        ("wrong_version_number", "packet_length_too_long", "record_layer_failure"),
        "the port answers without TLS (plain HTTP?); check the URL's port",
    ),
)


#: Windows CryptoAPI's verdicts on a certificate (HRESULTs: truststore's ``verify_code`` on Windows)
#: whose fix is no CA, and the words for them. Why by code: CryptoAPI's message names no host and is
#: in the system's language, so the text tells nothing apart on a German Windows Server.
_WINDOWS_VERDICTS = {
    0x800B010F: (  # CERT_E_CN_NO_MATCH
        "TLS certificate not issued for this host name (use a name it was issued for in the URL, or have the "
        "certificate reissued with this one)"
    ),
    0x800B0101: (  # CERT_E_EXPIRED: expired, or not valid yet
        "TLS certificate outside its validity period (renew it on the server if it expired, or check this "
        "host's clock, and the server's)"
    ),
}


def _verification(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    """The certificate verification failure inside ``exc``: requests wraps urllib3's MaxRetryError,
    whose reason wraps ssl's error (OpenSSL's, or truststore's from the operating system)."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        seen.add(id(current))
        linked = (current.__cause__, current.__context__, getattr(current, "reason", None), *current.args)
        todo.extend(e for e in linked if isinstance(e, BaseException) and id(e) not in seen)
    return None


def _tls_failure(text: str, untrusted: str, verification: ssl.SSLCertVerificationError | None) -> str:
    """What a failed TLS handshake says, and where the fix lies: the trust store or ``ca_bundle``
    (``untrusted``, the words of the session that failed: see ``_VerifyingAdapter``) only when the
    certificate's issuer is not trusted; setting it again for a certificate issued for another name,
    or one that expired, changes nothing. ``verification``: the verification's own error, if any."""
    code = getattr(verification, "verify_code", None)
    if code in _WINDOWS_VERDICTS:
        return _WINDOWS_VERDICTS[code]
    mismatch = _MISMATCH.search(text)
    if mismatch is not None:
        return (
            f"TLS certificate not issued for {mismatch[1]} (use a name it was issued for in the URL, or have "
            "the certificate reissued with this one)"
        )
    dates = certificate_out_of_date(text)
    if dates is not None:
        return _OUT_OF_DATE[dates]
    lowered = text.lower()
    if verification is not None or "certificate_verify_failed" in lowered or "certificate" in lowered:
        return untrusted
    for clues, why in _HANDSHAKE:
        if any(clue in lowered for clue in clues):
            return f"TLS handshake failed: {why}"
    return "TLS handshake failed"


def unreachable_authority(authority: str, exc: requests.RequestException) -> AuthenticationError:
    """The sign-in endpoint (Entra ID, or the authority configured) did not answer: its outage, named
    as such. MSAL sends from inside a request to the service, so left alone the failure would be
    reported as the service's (another host), or escape MSAL as a traceback. The step stops; nothing is lost."""
    return AuthenticationError(
        f"cannot reach the authority {authority}: {failure_kind(exc)}", status="stopped-server-down"
    )


def unusable_authority(authority: str, exc: ValueError, key: str = "authority") -> ConfigurationError:
    """MSAL's refusal of the authority: a URL it cannot use, or one whose discovery document the
    sign-in endpoint would not give (a tenant it does not know, AADSTS90002). MSAL raises ValueError
    when its app is made, which for an agent is inside the first request to the service: left alone,
    a traceback and stopped-connector-exception, with nothing said of the setting to fix."""
    return ConfigurationError(f"cannot use authority {authority}: {exc}", key=key)


#: A tenant id as Entra ID writes it (a GUID), the only form two spellings of one tenant cannot differ in.
_TENANT_GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


def authority_tenant_conflict(authority: str | None, tenant_id: str | None) -> str | None:
    """Why ``authority`` and ``tenant_id`` name two different tenants, or None when they may name one
    (or either is not set).

    Why: the token then comes from the authority's tenant while the agent names itself by tenant_id (the
    limiter it shares with its other runs), and whichever of the two is wrong, nothing said so. Only two
    tenant ids (GUIDs) that differ are a contradiction: the tenant segment of an Entra authority is the
    URL's first path segment, in the public and the sovereign clouds alike (login.microsoftonline.us,
    login.chinacloudapi.cn); ``common``, ``organizations`` and ``consumers`` name no tenant; a domain name
    may be any of a tenant's verified domains, which only Entra ID knows; a B2C (``/tfp/..``) or AD FS
    (``/adfs``) authority says its tenant elsewhere or not at all. A settings validator raises the text.
    """
    if not authority or not tenant_id:
        return None
    segment = urlsplit(authority).path.strip("/").split("/")[0]
    tenant = tenant_id.strip()
    if not (_TENANT_GUID.fullmatch(segment) and _TENANT_GUID.fullmatch(tenant)) or segment.lower() == tenant.lower():
        return None
    return (
        f"tenant_id {tenant} and authority {authority} name different tenants (the authority's is {segment}): "
        "both must name the tenant whose mailboxes are synchronized; correct the one that is wrong (without "
        "authority, the default is https://login.microsoftonline.com/<tenant_id>)"
    )


def entra_refusal(result: Mapping[str, Any]) -> str:
    """``invalid_grant (AADSTS700082: The refresh token has expired ...)``: an Entra ID token error as
    MSAL hands it back, its code and the first line of its description (no trace or correlation ids)."""
    description = str(result.get("error_description", "")).split("\r\n")[0].split("\n")[0].strip()
    error = str(result.get("error", "error"))
    return f"{error} ({description})" if description else error


def describe_request_error(exc: requests.RequestException, url: str, service: str) -> str:
    """``"Graph at graph.microsoft.com:443: connection refused (nothing listens there)"``.

    Never includes the request's headers or body (they may carry a token).
    """
    return f"{service_at(service, url)}: {failure_kind(exc)}"


def service_at(service: str, url: str) -> str:
    """``"Graph at graph.microsoft.com:443"``: a service named by the host and port of ``url``."""
    return f"{service} at {host_port(url)}"


#: Why a request that got no answer met the service down, not trouble of its own (AnswerClock).
SILENCE = "no other request had a working answer meanwhile"


class AnswerClock:
    """When a service last gave any request of one client a working answer, from any of its threads.

    Why: a request whose every attempt failed is either one object's bad luck or the service gone
    (stopped, wedged, unreachable, its certificate replaced, or answering everything with 5xx). If
    no other request had a working answer meanwhile, it may be the service: the step should stop with
    ``stopped-server-down`` instead of giving every remaining object a per-object error (which error
    rechecks would then defer). A working answer is anything below 500, and push-back (429, 503 with
    Retry-After), which the throttling rules handle; a 5xx without Retry-After is a failure, like no
    answer at all. A refused or timed-out connection is about the host, so silence settles it; a
    connection reset once it was made is not (``reached_server``). A 5xx is an answer about one
    request, and one workload can fail while another works (photos while the user listing
    answers), so silence neither proves nor disproves it: a client asks again a request that
    worked before (``fails_again``). A float assignment is atomic in CPython,
    so no lock is needed.
    """

    def __init__(self) -> None:
        self._last = time.monotonic()

    def answered(self) -> None:
        self._last = time.monotonic()

    def silent_since(self, started: float) -> bool:
        """True when no request of this client had a working answer since ``started`` (``time.monotonic()``)."""
        return self._last < started

    def not_answering(
        self,
        server: str,
        failure: str,
        attempts: int,
        started: float,
        then: str,
        evidence: str = SILENCE,
    ) -> str:
        """The stop message: who failed (``server``, named as the agent's other messages name it: "EWS at
        https://mail.contoso.com"), how (``failure``), for how long and why it is the service; then what
        was kept and what to check.

        ``failure`` reads after the host: "did not answer: connection refused", "answered with
        HTTP 504 ...". ``evidence`` says why it is the service and not the object at hand.
        """
        waited = time.monotonic() - started
        return f"{server} {failure} ({attempts} attempts over {waited:.0f} s, and {evidence}); {then}"


#: Why a request that got nothing but 5xx met the service down, not trouble of its own (``fails_again``).
RECHECKED = "a request that had worked before failed too"


def fails_again(ask: Callable[[], bool], stopping: threading.Event, wait_s: float) -> bool:
    """Whether a request that had worked before fails now too: ``ask`` sends it once and says
    whether it had a working answer (below 500, or push-back). Asked twice at most, ``wait_s``
    apart, so one stray 5xx does not stop a step; False if ``stopping`` is set meanwhile.

    Why: a 5xx is an answer about one request. One mailbox can fail every time while the service
    is fine, and be the last request of a run with nothing else under way; one workload can fail
    while another answers. Asking again something that worked tells the two apart.
    """
    for attempt in (1, 2):
        if stopping.is_set() or (attempt > 1 and wait_event(stopping, wait_s)):
            return False  # the step stops anyway: blame nobody, send nothing more
        if ask():
            return False
    return True


def unanswered_outage(
    exc: requests.RequestException, answers: AnswerClock, started: float, recheck: Callable[[], str | None]
) -> str | None:
    """Why a request whose every attempt, since ``started``, got no answer (``exc``, the last one's
    failure) met the service down; None when it is the request's own trouble.

    Another request's working answer meanwhile says the service is up. Without one, nobody there
    (refused, a timeout, DNS, TLS) is about the host: silence settles it (``SILENCE``). A connection
    reset, or an answer cut off, once made is as often about the one request, so ``recheck`` asks
    again one that worked before (``fails_again``) and gives its evidence, or None when it answers.

    Why shared: the Exchange Server client judged by silence alone, so one mailbox whose requests
    were reset, with nothing else in flight, stopped the step as an outage, which the Graph client
    had already learnt not to do. Both clients now judge a failure that got no answer by this rule.
    """
    if not answers.silent_since(started):
        return None
    if not reached_server(exc):
        return SILENCE
    return recheck()


def _arriving(resp: requests.Response) -> Iterator[bytes]:
    """A streamed body as it arrives: each read gives what one receive brought (``read1``), so a
    caller can keep a deadline however slowly the bytes come; urllib3's errors as requests' own.

    Decoded (``Content-Encoding: gzip`` included) a bounded piece at a time: urllib3 2.6.0 and later
    (CVE-2025-66471) never decodes more than a read asks for, so a gzip bomb cannot fill the memory
    in one read (the floor in pyproject.toml).
    """
    try:
        while chunk := resp.raw.read1(65536, decode_content=True):
            yield chunk
    except urllib3.exceptions.ProtocolError as exc:
        raise requests.exceptions.ChunkedEncodingError(exc) from exc
    except urllib3.exceptions.DecodeError as exc:
        raise requests.exceptions.ContentDecodingError(exc) from exc
    except urllib3.exceptions.ReadTimeoutError as exc:  # (requests says ConnectionError, which names no timeout)
        raise requests.exceptions.ReadTimeout(exc) from exc
    except urllib3.exceptions.SSLError as exc:
        raise requests.exceptions.SSLError(exc) from exc


def read_within(resp: requests.Response, timeout_s: float, limit: int) -> bytes:
    """A streamed answer's body (``stream=True``) as it arrives, until its end or until it is over
    ``limit`` bytes decoded (then a piece more than ``limit``, the rest unread); requests' ReadTimeout
    when it is not all there within ``timeout_s`` (the connection is closed then).

    Why a deadline for the whole body: the timeout of a request bounds each read, and a proxy or a
    dying link that trickles bytes would hold the step (and its lock) for days.

    Why one growing buffer and not a list of pieces joined at the end: the list and the joined copy
    are the answer twice, on every thread reading one at once. ``BytesIO`` grows by an eighth and
    hands its own buffer back (``getvalue`` copies nothing in CPython), so the answer is held about
    once while it is read.
    """
    body = io.BytesIO()
    deadline = time.monotonic() + timeout_s
    for chunk in _arriving(resp):
        body.write(chunk)
        if body.tell() > limit:
            break
        if time.monotonic() > deadline:
            resp.close()
            raise requests.exceptions.ReadTimeout(f"{body.tell():,} bytes of the answer in {timeout_s:g} s (timeout_s)")
    return body.getvalue()


def read_capped(resp: requests.Response, timeout_s: float, limit: int) -> bytes | None:
    """A streamed answer's whole body, or None when it is over ``limit`` bytes decoded: then it is
    left unread past the limit (not at all when its Content-Length says so) and its connection is
    closed. As ``read_within`` otherwise.

    Why: a body read whole (``resp.content``) is held in memory however large it is, and requests
    decodes ``Content-Encoding: gzip`` completely, so an oversized answer or a gzip bomb from the
    service or a proxy in between took as much memory as it decoded to, on every thread at once.
    """
    declared = resp.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:  # the headers already say it is too large
        resp.close()
        return None
    body = read_within(resp, timeout_s, limit)
    if len(body) > limit:
        resp.close()
        return None
    return body


def _is_loopback(url: str | bytes | None) -> bool:
    host = urlsplit(url.decode() if isinstance(url, bytes) else url or "").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _AsSent(requests.auth.AuthBase):
    """Leaves a request as its caller made it: the session's auth while it has no other (``_Session``)."""

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        return r


class _Session(requests.Session):
    """Proxies from the environment, except for this machine's own loopback; the trust chosen when
    the session was made (``verifying_session``) for every request; never a netrc file's credentials.

    Why no netrc: requests reads ``~/.netrc`` (``~/_netrc`` on Windows, or the file NETRC names) for
    every request that has no ``auth``, and a matching entry, or a ``default`` one, replaces the
    request's own Authorization header with Basic credentials. The sign-in's client secret (MSAL sends
    it to the authority in its body) was then refused ("invalid_client ... Invalid client secret") and
    the netrc password went to Microsoft's sign-in; a Graph request lost its bearer token. A sync server's
    account may keep a netrc for curl or git. mvsync takes credentials from its settings, the
    environment and the OS store only, so the session's auth is one that changes nothing (a caller may
    set its own: the EWS client's NTLM or Negotiate), and a redirect gets no netrc entry either.

    requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override ``Session.verify`` on each request
    (psf/requests#3829); the usual cure, ``trust_env = False``, also drops the proxy settings
    (HTTPS_PROXY, NO_PROXY, and on Windows the Internet Options proxy), and a server that must go
    through a TLS-inspecting proxy is exactly the one that needs both a proxy and a trusted CA. So
    only ``verify`` is pinned: ``verifying_session`` has already read those variables once. A
    loopback address never goes through a proxy (no proxy can reach this machine's loopback): the
    emulator of ``mvsync demo`` works on a machine with HTTPS_PROXY set.
    """

    def __init__(self) -> None:
        super().__init__()
        self.auth = _AsSent()

    def rebuild_auth(self, prepared_request: requests.PreparedRequest, response: requests.Response) -> None:
        """requests' own, without its netrc lookup: a redirect to another host drops the Authorization header."""
        strip = self.should_strip_auth(response.request.url, prepared_request.url)  # type: ignore[no-untyped-call]
        if "Authorization" in prepared_request.headers and strip:
            del prepared_request.headers["Authorization"]

    def merge_environment_settings(
        self,
        url: str | bytes | None,
        proxies: Any,
        stream: bool | None,
        verify: Any,
        cert: Any,
    ) -> Any:
        merged = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None:  # not given per request: the session's own trust, whatever the environment says now
            merged["verify"] = self.verify
        if _is_loopback(url):
            merged["proxies"] = {}
        return merged


class _VerifyingAdapter(requests.adapters.HTTPAdapter):
    """Verifies with ``context``, made once with the session's trust (``verifies``: True for the
    operating system's trust store, else the CA file's path), and gives every request without a
    timeout of its own ``timeout_s``.

    Why the context: requests verifies against certifi's bundle, which holds only public CAs. On
    Windows Server behind a TLS-inspecting proxy, the proxy's CA is deployed to the Windows
    certificate store by Group Policy, and every Graph and sign-in request failed with
    CERTIFICATE_VERIFY_FAILED until the CA was exported to a PEM file for each agent. A
    ``truststore.SSLContext`` verifies with the OS (Windows CryptoAPI, macOS Security framework);
    on Linux OpenSSL's system paths, which honour SSL_CERT_FILE and SSL_CERT_DIR (``_os_trust_context``).
    It is made once per session and shared by its connections, and mounted here rather than
    injected into ``ssl`` (``truststore.inject_into_ssl``), which would change every TLS client of
    the process. The proxy managers get it too: requests hands them no context, so a request
    through a proxy's tunnel would otherwise verify with a context urllib3 makes for it, not with
    the OS's verifier. A CA file (``ca_bundle``, REQUESTS_CA_BUNDLE) is loaded into a context of its
    own once, too: given only its path, urllib3 makes a context and parses the file for every new
    connection. So requests' per-connection CA path is cleared (``cert_verify``): urllib3 would load
    it into the shared context again on every connection.

    Why the timeout: requests waits forever by default, and a library handed a session (MSAL's
    ``http_client``) sends without one: a sign-in endpoint that accepts the connection and never
    answered then held a run, and its agent's lock, for good.
    """

    def __init__(
        self,
        timeout_s: float | None,
        context: ssl.SSLContext,
        verifies: bool | str,
        untrusted: str,
        setting: str = "ca_bundle",
    ) -> None:
        self.timeout_s = timeout_s
        self.context = context
        self.verifies = verifies
        #: where ``verifies`` (a CA file) is set: the agent's setting or the environment variable
        self.setting = setting
        #: ``failure_kind``'s words for a certificate whose issuer is not trusted: where to add the CA
        #: depends on what verified (the OS store, or the CA file of a setting or variable)
        self.untrusted = untrusted
        super().__init__()  # (makes the pool manager, with ``context``)

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: Any) -> None:
        pool_kwargs["ssl_context"] = self.context
        super().init_poolmanager(connections, maxsize, block=block, **pool_kwargs)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        proxy_kwargs.setdefault("ssl_context", self.context)  # the server's certificate, through the tunnel
        proxy_kwargs.setdefault("proxy_ssl_context", self.context)  # an https:// proxy's own
        return super().proxy_manager_for(proxy, **proxy_kwargs)

    def cert_verify(self, conn: Any, url: str, verify: bool | str, cert: Any) -> None:
        if verify != self.verifies:  # (_Session pins the session's own: only a caller's explicit verify=)
            msg = f"this session verifies TLS with {self.verifies!r}, made when it was; a request cannot change it"
            raise ValueError(msg)
        try:
            super().cert_verify(conn, url, verify, cert)  # type: ignore[no-untyped-call]  # (untyped in its stubs)
        except OSError:  # requests looks for the CA file before every request: gone since the step began
            # (asked after the fact, not before: a file removed between a check and requests' own was the
            # OSError again, found in CI)
            if isinstance(verify, str) and not os.path.exists(verify):
                raise _ca_file_gone(Path(verify), self.setting) from None
            raise
        conn.ca_certs = None  # (certifi's bundle, or the file ``context`` holds already)
        conn.ca_cert_dir = None

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: float | tuple[float, float] | tuple[float, None] | None = None,
        verify: bool | str = True,
        cert: bytes | str | tuple[bytes | str, bytes | str] | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> requests.Response:
        chosen = self.timeout_s if timeout is None else timeout
        try:
            return super().send(request, stream=stream, timeout=chosen, verify=verify, cert=cert, proxies=proxies)
        except requests.exceptions.SSLError as exc:
            exc.untrusted = self.untrusted  # type: ignore[attr-defined]  # (read by failure_kind)
            raise
        except requests.exceptions.ProxyError as exc:  # which proxy, for failure_kind: its host, not its URL
            proxy = requests.utils.select_proxy(request.url or "", dict(proxies or {}))
            if proxy:
                parts = urlsplit(proxy if "://" in proxy else f"http://{proxy}")  # (as requests reads one)
                exc.proxy = host_port(parts.geturl())  # type: ignore[attr-defined]
                exc.proxy_credentials = parts.username is not None  # type: ignore[attr-defined]
            raise


#: The environment variables requests reads for a CA bundle, in its order.
CA_BUNDLE_VARIABLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
#: The variable naming OpenSSL's CA file, which truststore reads where the operating system's trust
#: store is OpenSSL's (Linux and the BSDs; not Windows or macOS, whose trust store is the system's own).
SSL_CERT_FILE = "SSL_CERT_FILE"
_OPENSSL_STORE = sys.platform not in ("win32", "darwin")
#: ``failure_kind``'s words for an untrusted certificate when it cannot tell what verified.
_UNTRUSTED_BUNDLE = "TLS certificate not trusted (set ca_bundle to the CA that issued it)"


def _ca_file_gone(path: Path, key: str) -> ConfigurationError:
    """The CA file the session was made with is gone (moved, deleted, its folder removed) while a
    step runs: the ``ConfigurationError`` naming ``key`` and the file, and saying to put it back.

    Why a stop, although the session loaded its CAs when it was made: requests looks for the file
    again before every request and raised a bare ``OSError`` ("Could not find a suitable TLS CA
    certificate bundle"), a traceback and stopped-connector-exception; and a session made later in
    the step (a new worker thread's, the sign-in's) could not load it at all. The setting is the
    operator's to fix (exit 2); what the step committed is kept, so the next run carries on.
    """
    return ConfigurationError(
        f"{path} does not exist now (it did when the step began): put the CA file back there, or set "
        f"{key} to where it is now, and run again; what the step committed is kept{_or_unset(key)}",
        key=key,
    )


def setting_key(agent: str, name: str) -> str:
    """Where an agent's setting ``name`` is set, as a message names it (``agents.exo.settings.authority``),
    as the checks before a run do; ``name`` alone when the agent's name is not known."""
    return f"agents.{agent}.settings.{name}" if agent else name


def ca_bundle_key(agent: str) -> str:
    """Where an agent's CA bundle is set, as a message names it (``agents.exo.settings.ca_bundle``)."""
    return setting_key(agent, "ca_bundle")


def environment_ca_file(ca_bundle: Path | None = None) -> tuple[str, Path] | None:
    """The environment variable naming the CA file an HTTPS session whose own setting is ``ca_bundle``
    verifies with, and that file; None when the environment names none that it reads.

    REQUESTS_CA_BUNDLE (then CURL_CA_BUNDLE) pins every session without a ``ca_bundle``, as requests
    documents; without either, SSL_CERT_FILE where truststore reads OpenSSL's paths (on Windows and
    macOS truststore asks the system's own store, which reads no variable).
    """
    if ca_bundle is not None:
        return None
    variable = next((name for name in CA_BUNDLE_VARIABLES if os.environ.get(name)), None)
    if variable is not None:
        return variable, Path(os.environ[variable])
    openssl = openssl_ca_file()
    return None if openssl is None else (SSL_CERT_FILE, openssl)


def openssl_ca_file() -> Path | None:
    """The CA file SSL_CERT_FILE names where the trust store is OpenSSL's (Linux; not Windows or macOS,
    whose stores read no variable), else None: what OpenSSL's default paths load, for HTTPS (truststore)
    and LDAPS (ldap3's default context) alike."""
    named = os.environ.get(SSL_CERT_FILE)
    return Path(named) if _OPENSSL_STORE and named else None


def check_trust_environment(ca_bundle: Path | None = None) -> None:
    """A ``ConfigurationError`` naming the variable and the file when the CA file the environment
    names for an HTTPS session (``environment_ca_file``) is not a readable PEM file.

    Why one check, shared by ``verifying_session``, the run's checks before its first step, ``mvsync
    doctor`` and ``mvsync auth``: a missing CA file is the operator's setting to fix (exit code 2), not
    the server's outage; reported late, by whichever request met it first, it read as a stopped step
    (exit 4). And OpenSSL ignores an SSL_CERT_FILE that names no file, and truststore then falls back to
    the distribution's CA bundle: the machine's public CAs were trusted instead of the file the operator
    chose, silently.
    """
    named = environment_ca_file(ca_bundle)
    if named is not None:
        readable_ca_file(named[1], named[0])


def verifying_session(
    ca_bundle: Path | None, *, timeout_s: float | None = None, setting: str = "ca_bundle"
) -> requests.Session:
    """A requests session verifying TLS with the operating system's trust store, or against
    ``ca_bundle`` alone when it is given.

    Which trust: ``ca_bundle`` pins verification to that PEM file. Without it, REQUESTS_CA_BUNDLE
    (or CURL_CA_BUNDLE), when set, pins it in the same way for the whole process, as requests
    documents those variables (an installation that had set one keeps working). Without either, the
    OS store (``_VerifyingAdapter``): Windows' certificate stores, where Group Policy deploys an
    enterprise or TLS-inspecting proxy's CA, so nothing needs exporting. Verification is never off.

    Proxies still come from the environment (see ``_Session``). A bundle that is not a readable
    file is a configuration error naming the key or the variable (``readable_ca_file``,
    ``check_trust_environment``), not an ``OSError`` from deep inside requests on the first request
    ("Could not find a suitable TLS CA certificate bundle"). ``timeout_s``: the timeout of every
    request that brings none. ``setting``: where ``ca_bundle`` is set (``ca_bundle_key``), named by
    the words of an untrusted certificate and of a CA file that is missing or goes missing mid-step.
    """
    session = _Session()
    check_trust_environment(ca_bundle)
    named = environment_ca_file(ca_bundle)
    if ca_bundle is not None:
        session.verify = readable_ca_file(ca_bundle, setting)
        context = _ca_file_context(session.verify)
        # the file that was set and does not hold the issuer (a server that got a new CA): "set ca_bundle"
        # read as if it were not set
        untrusted = (
            f"TLS certificate not trusted ({ca_bundle}, which {setting} names, does not hold the CA that issued it: "
            f"add that CA to the file, or set {setting} to a PEM file that holds it)"
        )
        adapter = _VerifyingAdapter(timeout_s, context, session.verify, untrusted, setting)
    elif named is not None and named[0] in CA_BUNDLE_VARIABLES:
        variable, path = named
        session.verify = str(path)
        untrusted = _untrusted_by_variable(variable, path, setting)
        adapter = _VerifyingAdapter(timeout_s, _ca_file_context(session.verify), session.verify, untrusted, variable)
    else:
        untrusted = (
            "TLS certificate not trusted by this machine's trust store (add the CA that issued it there: on "
            "Windows to the computer's Trusted Root Certification Authorities, where Group Policy puts a "
            "TLS-inspecting proxy's CA; on Linux to the system's CA certificates, or name it in SSL_CERT_FILE; "
            f"or set {setting} to its PEM file)"
        )
        adapter = _VerifyingAdapter(timeout_s, _os_trust_context(), True, untrusted)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def _untrusted_by_variable(variable: str, path: Path, setting: str) -> str:
    """``failure_kind``'s words for a certificate the CA file of REQUESTS_CA_BUNDLE (or CURL_CA_BUNDLE)
    does not trust: that file, the variable that named it, and the three fixes.

    Why so many words: the variable is set outside mvsync (a service account's profile, a machine-wide
    setting left for another tool), so nothing in mvsync's configuration says that it, not this machine's
    trust store, verified; "the CA file in REQUESTS_CA_BUNDLE" named neither the file nor the agent's
    ``ca_bundle``, which wins over the variable and is the fix that touches no other program.
    """
    return (
        f"TLS certificate not trusted ({path}, which {variable} names in mvsync's environment and which verifies "
        f"every HTTPS agent without a ca_bundle, does not hold the CA that issued it: set {setting} to the PEM "
        f"file of that CA, add the CA to {path}, or unset {variable} to verify with this machine's trust store)"
    )


def _os_trust_context() -> ssl.SSLContext:
    """A TLS client context that verifies certificates and host names with the operating system,
    its CAs loaded once: every connection of the session (its pool and its proxy managers) shares it.

    Why not a ``truststore.SSLContext`` everywhere: where the trust store is OpenSSL's (Linux),
    truststore loads OpenSSL's default paths into its context again before every handshake, under
    a lock held through the handshake, and then lets OpenSSL verify (its own check is a no-op
    there). With SSL_CERT_FILE naming a distribution's bundle (145 CAs, 215 KiB) that was 55-90 ms
    of parsing for every new connection, and the session's threads handshook one at a time. So
    there the same configuration (truststore's own, which also finds the distribution's bundle
    when OpenSSL's compiled-in paths hold none) is applied once, to a plain context; on Windows and
    macOS truststore asks the system on each handshake, which is the point, and reads no file.
    """
    if _OPENSSL_STORE:
        try:
            from truststore._openssl import _configure_context  # ASSUMPTION: private in truststore 0.10
        except ImportError:  # (a truststore that moved it: its own context, CAs loaded per connection)
            pass
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # (verifies the chain and the host name)
            with _configure_context(context):
                pass
            return context
    context = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    return context


def _ca_file_context(path: str) -> ssl.SSLContext:
    """A TLS client context that verifies certificates and host names with the CAs of ``path`` alone
    (a PEM file ``readable_ca_file`` accepted), loaded once."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cafile=path)
    return context


def readable_ca_file(path: Path, key: str) -> str:
    """``path`` as a string once it is known to be a readable file; else a ``ConfigurationError``
    naming the setting ``key``, the file and what is wrong with it (TLS libraries report a missing
    CA file late, and as something else: requests' "invalid path", ssl's bare errno)."""
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        if path.is_dir():  # (Windows says "permission denied" for a folder)
            reason = "is a folder, not a PEM file"
        elif isinstance(exc, FileNotFoundError):
            reason = "does not exist"
        else:
            reason = f"cannot be read ({exc.strerror or exc})"
        raise ConfigurationError(
            f"{path} {reason}: give the PEM file of the CA that issued the server's certificate{_or_unset(key)}",
            key=key,
        ) from None
    _holds_pem_certificates(path, key)
    return str(path)


def _holds_pem_certificates(path: Path, key: str) -> None:
    """A ``ConfigurationError`` naming ``key`` unless TLS can load ``path`` as CA certificates.

    Python's TLS reads a CA file in PEM form only; a CA exported on Windows as "DER encoded binary
    X.509 (.CER)" failed every handshake instead, which read as the server's certificate being
    untrusted (and, with every request failing, as the server being down) while the setting was
    the one to fix.
    """
    try:
        ssl.create_default_context(cafile=str(path))
    except ssl.SSLError as exc:
        hint = "give the PEM file (-----BEGIN CERTIFICATE-----) of the CA that issued the server's certificate"
        if _first_byte(path) == b"\x30":  # an ASN.1 SEQUENCE: a DER-encoded certificate
            hint = (
                f"it looks DER-encoded: convert it (openssl x509 -inform der -in {path} -out ca.pem) or export "
                'the CA again as "Base-64 encoded X.509 (.CER)"'
            )
        msg = f"{path} holds no certificate in PEM form ({exc.reason or exc}): {hint}{_or_unset(key)}"
        raise ConfigurationError(msg, key=key) from None


def _or_unset(key: str) -> str:
    """The other fix when ``key`` is an environment variable: unset it, and the machine's store verifies."""
    if key in (*CA_BUNDLE_VARIABLES, SSL_CERT_FILE):
        return f"; or unset {key} to verify with this machine's trust store"
    return ""


def _first_byte(path: Path) -> bytes:
    try:
        with path.open("rb") as file:
            return file.read(1)
    except OSError:
        return b""


class RefusedEverywhere:
    """Tells a refusal of the account (or by the whole server) from objects refused one by one.

    The question every agent asks of a refusal: is it the object's own, or the account's (the server's)?
    An account refused everywhere should stop the step once, naming the account and what to grant,
    rather than fail thousands of people with the same error; a few objects refused on their own (an
    administrator whose permissions AdminSDHolder resets, a mailbox outside an impersonation scope) must
    never stop a step, even when they come first or together.

    The rule: a *streak* is the distinct objects refused for one reason since the last success of the
    step (any success ends every streak: refusals among successes are the objects' own). When a streak
    reaches ``distinct`` objects (or every object due, when fewer are: ``plan``), ``refused`` hands it
    back, once, and starts it again; the caller then confirms (a harmless question whose answer only the
    account's condition explains: EWS asks again a mailbox read before; AD reads whether the account may
    still write anyone in those people's OU) and stops the step if the confirmation says so. An answer
    that clears the account leaves the streak's objects their own errors, and the count starts again.

    Why "in a row since the last success" and not "the first few of the step": rights can be removed in
    the middle of a step (an administrator takes a grant away, a role assignment is removed), and once
    one object had worked every later refusal was taken for the object's own: one error per person left.

    Thread-safe: the agents' writers and readers in threads share one.
    """

    def __init__(self, distinct: int) -> None:
        if distinct < 1:
            raise ValueError(f"distinct must be at least 1, not {distinct}")
        self.distinct = distinct
        self._due: int | None = None
        self._before: str | None = None
        self._latest: str | None = None
        self._streaks: dict[str, dict[str, None]] = {}
        self._lock = threading.Lock()

    def plan(self, due: int, *, worked_before: str | None = None) -> None:
        """What the step will ask: ``due`` objects (when fewer than ``distinct``, a streak of all of them
        is judged), and ``worked_before``, an object that worked in an earlier step (what a confirmation
        asks before anything of this step worked; None if none)."""
        with self._lock:
            self._due, self._before = due, worked_before

    def worked(self, who: str) -> None:
        """``who`` worked: every streak ends, and ``who`` is what a confirmation asks again."""
        with self._lock:
            self._latest = who
            self._streaks.clear()

    @property
    def worked_last(self) -> str | None:
        """The latest object that worked in this step, else the one of an earlier step (``plan``), else None."""
        with self._lock:
            return self._latest or self._before

    @property
    def threshold(self) -> int:
        """How many distinct objects refused in a row are judged: ``distinct``, or every object due when fewer."""
        with self._lock:
            return self._threshold()

    def _threshold(self) -> int:
        return min(self.distinct, self._due) if self._due else self.distinct

    def refused(self, who: str, reason: str) -> list[str] | None:
        """Note that ``who`` was refused for ``reason``: the streak's objects, in the order refused, when it
        reaches the threshold (the caller confirms; the count starts again), else None. The same object
        refused again in a streak is no new evidence."""
        with self._lock:
            streak = self._streaks.setdefault(reason, {})
            if who in streak:
                return None
            streak[who] = None
            if len(streak) < self._threshold():
                return None
            del self._streaks[reason]
            return list(streak)
