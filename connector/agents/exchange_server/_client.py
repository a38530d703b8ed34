"""One photo from EWS: the REST ``GetUserPhoto`` with retries, under the shared throttling limiter.

The REST form (``/EWS/Exchange.asmx/s/GetUserPhoto?email=..&size=HR648x648``) and its answers are
documented in MS-OXWSPHOTO §3.1.5.1.1 and Microsoft's how-to "Get user photos by using EWS"
(field-notes-2.md §1.1): 200 with the JPEG and an ETag, 304 when ``If-None-Match`` still holds, 404
when there is no picture. It is used rather than SOAP because it answers "unchanged" without a
body and exchangelib has no GetUserPhoto (§1.9).

Throttling (field-notes-2.md §1.8, "EWS throttling in Exchange"): ``ErrorServerBusy`` carries
``BackOffMilliseconds``, a server-wide request to stop, so it pauses every sender of the shared
limiter (``limiter.pause``) and counts as push-back; ``ErrorExceededConnectionCount`` (over
EWSMaxConcurrency), 503 (IIS's queue) and 429 (Exchange sends none, but a load balancer or reverse
proxy in front of EWS that rate-limits does, RFC 6585) count as push-back too, with any Retry-After,
and the limiter decreases (§5, AIMD on in-flight requests). Push-back that names no wait (no
BackOffMilliseconds, or 0; no Retry-After) is followed by the mailbox's own back-off, as a failure is.
Waiting out throttling never spends the failure attempts.

Any other SOAP fault in a 5xx answer (or error in a 200 whose SOAP response message says
``ResponseClass="Error"``) is EWS's word about one mailbox (``ErrorNonExistentMailbox`` for one that
moved to Exchange Online or was removed, ``ErrorMailboxMoveInProgress`` for one moving,
``ErrorInvalidSchemaVersionForMailboxVersion`` for one that an Exchange server older than 2013 holds
in a mixed organisation, ``ErrorAccessDenied``...): final for this run, named in the per-object
error, and a sign that the server works. Only the faults of the server itself
(``ErrorInternalServerTransientError``, ``ErrorMailboxStoreUnavailable``...) are retried like a bare
5xx. A fault from a server older than Exchange 2013 (``ErrorInvalidServerVersion``, or its
``ServerVersionInfo``) is about the server, not the mailbox: asked again on a new connection when the
pool is mixed (``PhotoClient._older_answered``). A 200 counts as a photo only when its body is a
picture of at most ``MAX_PHOTO_BYTES``: a proxy's HTML page or damaged bytes would otherwise replace
the photo.
"""

from __future__ import annotations

import base64
import binascii
import copy
import random
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urljoin, urlsplit

import requests

from connector.agents.exchange_server._auth import USER_AGENT, refusal
from connector.agents.exchange_server._settings import ExchangeServerSettings
from connector.agents.exchange_server._versions import older_release, older_than_2013, probe
from connector.imaging import (
    DEFAULT_MAX_INPUT_BYTES,
    CorruptImageError,
    ImageError,
    InputTooLargeError,
    NotAnImageError,
    TruncatedImageError,
    verify,
)
from connector.net import (
    RECHECKED,
    SILENCE,
    AnswerClock,
    RefusedEverywhere,
    fails_again,
    failure_kind,
    host_port,
    read_capped,
    read_within,
    unanswered_outage,
)
from connector.sdk import (
    AuthenticationError,
    ConfigurationError,
    ConnectorError,
    ServerDownError,
    StopRunError,
    wait_event,
)
from connector.throttling import AdaptiveLimiter, Cancelled, Signal, ThrottleWatch, Ticket, parse_retry_after

__all__ = [
    "MAX_PHOTO_BYTES",
    "REFUSALS_TO_STOP",
    "VERSION_PROBES",
    "CredentialGate",
    "EwsFault",
    "Fetched",
    "PhotoClient",
    "ews_fault",
    "throttle_signal",
]

#: At most 15 digits (31,000 years): a longer value is no wait named (and int() refuses 4,300 digits).
_BACKOFF = re.compile(rb'Name="BackOffMilliseconds"[^>]*>\s*(\d{1,15})\s*<')
_THROTTLE_CODES = (b"ErrorServerBusy", b"ErrorExceededConnectionCount", b"ErrorTooManyObjectsOpened")
#: HTTP push-back whatever the body: IIS's queue full (503), a rate-limiting proxy's 429.
_PUSH_BACK_STATUS = frozenset({429, 503})
#: The fault's code: ``<e:ResponseCode>`` of the detail, else the ``faultcode`` (``a:ErrorX``).
_FAULT_CODE = re.compile(rb"<(?:[\w.-]+:)?(?:ResponseCode|faultcode)\b[^>]*>\s*(?:[\w.-]+:)?(Error\w+)\s*<")
_FAULT_TEXT = re.compile(rb"<(?:[\w.-]+:)?(?:Message|MessageText|faultstring)\b[^>]*>([^<]{1,300})<")
#: A response message that failed inside an HTTP 200 (MS-OXWSCDATA ``ResponseMessageType``).
_ERROR_CLASS = re.compile(rb"""\bResponseClass\s*=\s*["']Error["']""")
#: Faults of the server rather than of the mailbox asked about: retried like a bare 5xx.
_SERVER_FAULTS = frozenset(
    {
        "ErrorInternalServerError",
        "ErrorInternalServerTransientError",
        "ErrorMailboxStoreUnavailable",
        "ErrorConnectionFailed",
        "ErrorTimeoutExpired",
        "ErrorProxyRequestProcessingFailed",
    }
)
_NOT_FOUND_FAULTS = frozenset({"ErrorNonExistentMailbox", "ErrorInvalidUser", "ErrorMailRecipientNotFound"})
_DENIED_FAULTS = frozenset({"ErrorAccessDenied", "ErrorImpersonateUserDenied", "ErrorImpersonationDenied"})
#: What to check when EWS refuses the account itself (a bare 403, or every mailbox denied).
_ACCOUNT_CHECKS = (
    "check that EWS is enabled for it (Get-CASMailbox <account> | fl Ews*; Set-CASMailbox -EwsEnabled $true), "
    "the organisation's EWS application access policy (Get-OrganizationConfig | fl Ews*: with EnforceAllowList, "
    f'EwsAllowList must let this agent\'s user agent through, "{USER_AGENT}": add mvsync/*)'
)
_NOT_FETCHED = "the mailboxes not fetched yet keep what they had"
_CHECK = "check the server (IIS and the EWS application pool), the network and the certificate"
_SLOW = "; if EWS is only slow to answer, raise timeout_s"
_KEPT = "any photo imported before is kept, and the mailbox is asked again after photo_error_recheck_hours"
#: How many distinct mailboxes refused in a row (ErrorAccessDenied, ErrorImpersonateUserDenied, a bare 403;
#: or the same other status, such as a 400, ``_refused_request``), none read meanwhile, are judged as the
#: account (or every request) refused rather than each mailbox (``_refused_everywhere``, the rule of
#: ``connector.net.RefusedEverywhere``), by asking again a mailbox read before.
#: Why 10: a mailbox can be refused on its own (its permissions restricted, outside the account's
#: impersonation scope), and the first ones of a list may be such: two in a row stopped the step. If a
#: share p of the list is refused on its own, ten in a row happen by chance with odds p**10 (1e-10 at 10 %,
#: 1e-3 even at half the list), and then cost one request more (the confirmation), not a stop; an account
#: refused everywhere stops after ten errors (and what was in flight), not one per mailbox of thousands.
#: Why "in a row" and not "the first ten of the step": rights removed in the middle of a run (a role
#: assignment taken away) are caught as well. A stop loses nothing: every photo imported before is kept.
REFUSALS_TO_STOP = 10
#: How many times the version probe is asked, each on a new connection, before an answer from a server
#: older than Exchange 2013 stops the step (``PhotoClient.check_endpoint``). Why more than once: behind a
#: load balancer over a mixed pool (ASSUMPTION: Microsoft documents no such pool, nor how a balancer
#: spreads EWS requests over it), one probe can land on an Exchange 2010 server while most
#: requests would land on newer ones. If a share s of the servers is older, five probes all land there with
#: odds s**5 (3 % at half, 0.1 % at a quarter); a server that is older through and through costs four more
#: requests, once, in a step that stops anyway.
VERSION_PROBES = 5
#: A SOAP envelope, as EWS answers every SOAP request (a response or a fault).
_ENVELOPE = re.compile(rb"<(?:[\w.-]+:)?Envelope\b")
#: A SOAP GetUserPhoto answer (``GetUserPhotoResponse``, with or without a picture).
_PHOTO_RESPONSE = re.compile(rb"<(?:[\w.-]+:)?GetUserPhotoResponse\b")
#: A SOAP GetUserPhoto answer that carries a picture (base64 ``PictureData``).
_PICTURE = re.compile(rb"<(?:[\w.-]+:)?PictureData\s*>\s*[A-Za-z0-9+/]")
#: The picture's base64 text (getuserphoto-operation: ``PictureData``, "the user's photo", base64Binary).
_PICTURE_DATA = re.compile(rb"<(?:[\w.-]+:)?PictureData\s*>([^<]*)<")
#: Answers that show the account reading a mailbox: a photo, "unchanged", "no photo" (without a SOAP fault).
_READ_STATUS = frozenset({200, 304, 404})
#: Faults about one mailbox that pass, but not within a run, with an error of their own: its name, and
#: what it says (the photo imported before is kept, and the mailbox asked again in the error window).
_PASSING_FAULTS = {
    # "The mailbox is being moved to a different mailbox store or server" (EWS ResponseCode reference):
    # a move takes hours
    "ErrorMailboxMoveInProgress": (
        "mailbox-move-in-progress",
        "EWS says the mailbox {email} is being moved ({fault}): the photo imported before is kept, and the "
        "mailbox is asked again after photo_error_recheck_hours. If it is moving to Exchange Online, its photo "
        "comes from the Exchange Online agent once the move completes: then refresh mailbox_file (or mailboxes)",
    ),
    # "a proxy request that was sent to another server is not able to service the request due to a
    # versioning mismatch" (same reference): in a mixed organisation, a mailbox that a server older than
    # Exchange 2013 holds, which has no GetUserPhoto, until the mailbox is moved
    "ErrorInvalidSchemaVersionForMailboxVersion": (
        "mailbox-on-old-exchange",
        "the mailbox {email} is on an Exchange server older than 2013, which has no GetUserPhoto ({fault}); "
        "until it is moved to Exchange 2013 or later (New-MoveRequest), its photo is the AD thumbnailPhoto. "
        "Any photo imported before is kept, and the mailbox is asked again after photo_error_recheck_hours",
    ),
}
#: What asks ews_url whether it is EWS (``PhotoClient.check_endpoint``): a SOAP envelope with an empty
#: body, which EWS refuses with a SOAP fault, and which a wrong path (or a site without EWS) answers 404.
_EMPTY_SOAP = (
    b'<?xml version="1.0" encoding="utf-8"?>'
    b'<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/"><soap:Body/></soap:Envelope>'
)
#: The largest photo body read: Exchange's HD photos are at most 648x648 (tens of KB); anything near
#: this is not a photo, and reading it whole on every thread would exhaust memory.
MAX_PHOTO_BYTES = DEFAULT_MAX_INPUT_BYTES
#: The largest SOAP GetUserPhoto answer read when it may carry a photo: ``MAX_PHOTO_BYTES`` in base64
#: (4 characters for 3 bytes) and its envelope.
_SOAP_PHOTO_BYTES = (MAX_PHOTO_BYTES + 2) // 3 * 4 + 65536


@dataclass(slots=True)
class Fetched:
    """What one mailbox's photo request came to."""

    kind: Literal["photo", "none", "unchanged", "error"]
    data: bytes | None = None
    etag: str | None = None
    error: str = ""
    detail: str = ""
    #: The photo's longer side in pixels (what tells the AD thumbnail from an HD photo).
    pixels: int = 0


@dataclass(frozen=True, slots=True)
class EwsFault:
    """A SOAP fault EWS answered with (``ErrorNonExistentMailbox``, "No mailbox with such guid.")."""

    code: str
    message: str

    @property
    def about_mailbox(self) -> bool:
        """EWS answered about the mailbox asked for (final), not about its own state (retried)."""
        return self.code not in _SERVER_FAULTS

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.message else self.code


def ews_fault(resp: requests.Response) -> EwsFault | None:
    """The SOAP fault of a 5xx answer, or the error of a 200 whose SOAP response message says
    ``ResponseClass="Error"`` (EWS fails operations so too: the throttling page lists a 200 with
    ErrorInternalServerError), if it carries one (never throttling: ``throttle_signal`` first)."""
    body = resp.content[:8192]
    if resp.status_code < 500 and not (
        resp.status_code == 200 and "xml" in resp.headers.get("Content-Type", "") and _ERROR_CLASS.search(body)
    ):
        return None
    code = _FAULT_CODE.search(body)
    if code is None:
        return None
    text = _FAULT_TEXT.search(body)
    message = text[1].decode("utf-8", "replace").strip() if text else ""
    return EwsFault(code[1].decode("ascii"), message)


def _says_no_photo(resp: requests.Response) -> bool:
    """Whether a SOAP GetUserPhoto answer without a fault says "no photo": 404, or a 200 that is a
    ``GetUserPhotoResponse`` without ``PictureData`` (see ``PhotoClient._confirmed_none``); any other 200
    (Autodiscover's XML, a web page) says nothing of the photo, which "no photo" would remove."""
    if resp.status_code != 200:
        return resp.status_code == 404
    return bool(_PHOTO_RESPONSE.search(resp.content)) and not _PICTURE.search(resp.content)


def _is_answer(resp: requests.Response, fault: EwsFault | None) -> bool:
    """Whether EWS worked on the request: below 500 without a fault, or a fault about the mailbox (see
    ``AnswerClock``)."""
    if fault is not None:
        return fault.about_mailbox
    return resp.status_code < 500


def _worked_on(resp: requests.Response) -> bool:
    """Whether an answer shows EWS at work: push-back, or an answer (see ``_is_answer``)."""
    return throttle_signal(resp)[0] or _is_answer(resp, ews_fault(resp))


def _allowed(resp: requests.Response) -> bool:
    """Whether an answer is anything but a refusal (a bare 403, or a SOAP fault of ``_DENIED_FAULTS``):
    the account may read that mailbox's photo."""
    fault = ews_fault(resp)
    return resp.status_code != 403 and (fault is None or fault.code not in _DENIED_FAULTS)


def throttle_signal(resp: requests.Response) -> tuple[bool, float | None]:
    """(throttled?, seconds to wait) for an EWS answer (see the module docstring)."""
    if resp.status_code in _PUSH_BACK_STATUS:
        return True, parse_retry_after(resp.headers.get("Retry-After"))
    if resp.status_code >= 500 or "xml" in resp.headers.get("Content-Type", ""):
        body = resp.content[:8192]
        if any(code in body for code in _THROTTLE_CODES):
            match = _BACKOFF.search(body)
            return True, (int(match[1]) / 1000.0 if match else None)
    return False, None


class _Oversized(Exception):
    """A 200 whose body is over ``MAX_PHOTO_BYTES``: left unread, its connection closed."""

    def __init__(self, content_type: str) -> None:
        super().__init__(content_type)
        self.content_type = content_type


def _read_body(resp: requests.Response, timeout_s: float, limit: int = MAX_PHOTO_BYTES) -> None:
    """Read a streamed answer's body (``resp.content`` then holds it), or raise ``_Oversized``
    without reading on once it is over ``limit`` (``connector.net.read_capped``). A cut-off body
    raises requests' error, and so does one not all there within ``timeout_s``."""
    body = read_capped(resp, timeout_s, limit)
    if body is None:
        raise _Oversized(_content_type(resp))
    resp._content = body  # where requests keeps a body it has read


def _read_head(resp: requests.Response, timeout_s: float) -> None:
    """Read any other answer's body (a 5xx, a 304, a proxy's error page) as ``_read_body`` reads a
    photo, within ``timeout_s``, keeping at most ``_ERROR_BODY_BYTES`` (all that a SOAP fault or
    throttling needs; the rest is not read, and the connection is closed): a body that trickles in,
    or has no end, would otherwise hold the step, or fill the memory."""
    body = read_within(resp, timeout_s, _ERROR_BODY_BYTES)
    if len(body) > _ERROR_BODY_BYTES:
        resp.close()
        body = body[:_ERROR_BODY_BYTES]
    resp._content = body


#: The most of a non-photo answer kept: EWS's SOAP faults are a few KB (``ews_fault`` looks at 8 KB).
_ERROR_BODY_BYTES = 65536


def _slow(exc: requests.RequestException, timeout_s: float) -> str:
    """What a mailbox's error adds when its requests timed out while EWS answered others: it is slow."""
    if not isinstance(exc, requests.Timeout):
        return ""
    return (
        f" (timeout_s = {timeout_s:g} s), while EWS answered other requests: this mailbox is slow to answer; "
        f"{_KEPT}. If it recurs, check its mailbox database, or raise timeout_s"
    )


#: The statuses IIS (HTTP.sys) answers to a request over its limits (MaxFieldLength, MaxRequestBytes),
#: as a proxy does; with Kerberos, to the ticket of an account in many groups (KB 2020943).
_TOO_LARGE = frozenset({400, 413, 414, 431})


def _refused_hint(status: int) -> str:
    """What a status EWS gives for no one mailbox likely means, and what to do (``_refused_request``)."""
    if status in _TOO_LARGE:
        return (
            'IIS answers so to a request whose headers are over its limits: with auth = "negotiate", the service '
            "account's Kerberos ticket, when the account is in many groups (take it out of the groups it does not "
            "need, or raise MaxFieldLength and MaxRequestBytes under HKLM\\SYSTEM\\CurrentControlSet\\Services\\"
            "HTTP\\Parameters on the Exchange servers, Microsoft KB 2020943); otherwise a proxy or load balancer in "
            "front of EWS refuses the request: check its rules for /EWS/"
        )
    return (
        "EWS does not answer a photo request so: a proxy or load balancer in front of it, or the request "
        "filtering of the EWS virtual directory in IIS, refuses it: check their rules for /EWS/"
    )


def _stopped() -> Fetched:
    """A mailbox whose wait to be asked again was cut short by the step's stop."""
    return Fetched("error", error="ews-error", detail="the step stopped")


def _content_type(resp: requests.Response) -> str:
    return resp.headers.get("Content-Type") or "no Content-Type"


def _no_picture(email: str, what: str, exc: ImageError) -> Fetched:
    """The error of a 200 whose body is no picture: the mailbox keeps the photo it had.

    A picture cut short is the photo Exchange holds, which is set again (imaging's advice is about a
    file copied: "copy or save the photo again"); anything else may be what stands in front of EWS."""
    if isinstance(exc, TruncatedImageError):
        said = exc.advised(
            f"EWS returned the photo cut short, as Exchange holds it: ask the person to upload it again (Outlook "
            f"on the web, Teams), or set it again (Set-UserPhoto -Identity {email} -PictureData ...)"
        ).detail
        then = ""
    else:
        said = exc.detail
        then = (
            " If it is a web page, a proxy or load balancer in front of EWS answered instead of Exchange: check its "
            "rules for /EWS/"
        )
    detail = f"GetUserPhoto for {email} answered HTTP 200 with {what} that is no usable picture ({said}); "
    return Fetched("error", error=exc.name, detail=f"{detail}any photo imported before is kept.{then}")


def _photo(email: str, resp: requests.Response) -> Fetched:
    """A 200's body as the mailbox's photo, if it is one (a proxy's page or damaged bytes are not).

    A body whose Content-Type names no image is named so, not by what ``imaging`` says of a file
    (an XML answer was "SVG/XML files are not supported; convert the photo to JPEG or PNG", which no
    administrator can do about an answer of EWS or of what stands in front of it)."""
    kind = _content_type(resp)
    what = f"{len(resp.content):,} bytes of {kind}"
    got = _picture(email, resp.content, what, resp.headers.get("ETag"))
    if got.kind == "error" and not kind.lower().startswith("image/"):
        return _no_picture(email, what, NotAnImageError(f"its Content-Type, {kind}, names no image"))
    return got


def _picture(email: str, data: bytes, what: str, etag: str | None) -> Fetched:
    """``data`` as the mailbox's photo, if ``imaging.verify`` finds a whole picture within its limits
    (``MAX_PHOTO_BYTES``); else the mailbox's error naming ``what`` came, its photo kept."""
    try:
        info = verify(data)
    except ImageError as exc:
        return _no_picture(email, what, exc)
    return Fetched("photo", data=data, etag=etag, pixels=max(info.width, info.height))


def _soap_photo(email: str, resp: requests.Response) -> Fetched:
    """A SOAP GetUserPhoto answer's base64 ``PictureData`` as the mailbox's photo, validated as a REST
    answer's body is (``_picture``), with the answer's ETag header when it has one."""
    found = _PICTURE_DATA.search(resp.content)
    text = b"".join(found[1].split()) if found else b""
    what = f"the base64 PictureData of a SOAP answer ({len(text):,} characters)"
    try:
        data = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        return _no_picture(email, what, CorruptImageError(f"it is not base64: {exc}"))
    return _picture(email, data, what, resp.headers.get("ETag"))


def _redirected(email: str, resp: requests.Response) -> Fetched:
    """A redirect, which GetUserPhoto has no reason to send (a mailbox moved elsewhere, a proxy's
    sign-in page): the mailbox's error, naming where it pointed; not followed."""
    where = host_port(urljoin(resp.url, resp.headers.get("Location") or ""))  # a relative one: the same server
    detail = (
        f"GetUserPhoto for {email} answered HTTP {resp.status_code}, a redirect to {where}, which is not followed "
        "(the credentials are for EWS only). A mailbox moved to Exchange Online is redirected there: its photo "
        "comes from the Exchange Online agent, so refresh the mailbox list; otherwise check the EWS virtual "
        "directory and any proxy or load balancer in front of it"
    )
    return Fetched("error", error="ews-error", detail=detail)


def _not_modified_unasked(email: str) -> Fetched:
    """A 304 to a request without If-None-Match, which only a cache or proxy in front of EWS sends (304
    answers a conditional request, RFC 9110 §15.4.5): the mailbox's error, not "unchanged", which a full
    import, that sends no ETag, would take as the mailbox gone (its entry left out: deleted)."""
    detail = (
        f"GetUserPhoto for {email} answered HTTP 304 (Not Modified) to a request that was not conditional "
        "(no If-None-Match), which Exchange does not send; any photo imported before is kept. Check the cache "
        "or proxy in front of EWS: it should pass /EWS/ through uncached"
    )
    return Fetched("error", error="ews-error", detail=detail)


def _oversized(email: str, big: _Oversized) -> Fetched:
    exc = InputTooLargeError(f"more than {MAX_PHOTO_BYTES:,} bytes; the rest was not read")
    return _no_picture(email, big.content_type, exc)


def _not_ews(resp: requests.Response) -> str | None:
    """Why the answer to ``check_endpoint``'s SOAP request shows that no EWS answered it; None when it may be EWS.

    A 404 would be every photo request's answer too, "no photo" for every mailbox; so would a 405 or 410
    that is not EWS's XML (ews_url naming /EWS/Services.wsdl, a static file: 405 to the POST, 404 to every
    photo request below it). Not any 4xx: IIS's 400 to a Kerberos ticket too large for its header limits
    (MaxFieldLength) is the account's trouble, which the photo requests name. A redirect or a web
    page (a 2xx that is not XML) is what Outlook on the web's sign-in answers (ews_url naming /owa/), or a
    reverse proxy's pre-authentication, or IIS's HTTP Redirect of the Default Web Site inherited by the
    EWS virtual directory: every photo request would be the mailbox's error, thousands of one
    misconfiguration, where one stop says what to fix. EWS answers a SOAP request with XML, if only a fault.
    """
    status = resp.status_code
    if status == 404:
        return (
            "it answered HTTP 404 to a SOAP request, and would answer every photo request so, which reads as "
            '"no photo" for every mailbox'
        )
    if 300 <= status < 400:
        target = urljoin(resp.url, resp.headers.get("Location") or "")
        return (
            f"it answered a SOAP request with HTTP {status}, a redirect to {host_port(target)}{urlsplit(target).path} "
            "(Outlook on the web's sign-in, a reverse proxy's, or IIS's HTTP Redirect of the web site, which the EWS "
            'virtual directory must not inherit: appcmd set config "Default Web Site/EWS" /section:httpRedirect '
            "/enabled:false)"
        )
    xml = "xml" in _content_type(resp).lower()
    if status in (405, 410) and not xml:
        return (
            f"it answered HTTP {status} ({_content_type(resp)}) to a SOAP request, which EWS answers in XML (a "
            "file such as /EWS/Services.wsdl, or another web site?), and would answer the photo requests so"
        )
    if 200 <= status < 300 and xml and not _ENVELOPE.search(resp.content[:8192]):
        return (
            f"it answered a SOAP request with HTTP {status} and XML that is no SOAP envelope (Autodiscover's "
            'answer, /autodiscover/autodiscover.xml?), and would answer the photo requests with 404, "no photo"'
        )
    if 200 <= status < 300 and not xml:
        return (
            f"it answered a SOAP request with HTTP {status} and {_content_type(resp)}, a web page rather than EWS's "
            "XML (a sign-in page of Outlook on the web or of a reverse proxy?)"
        )
    return None


def _take(lock: threading.Lock, cancel: threading.Event) -> bool:
    """Acquire ``lock``, waiting as long as it takes unless ``cancel`` is set meanwhile (then False):
    a holder may wait ``timeout_s`` for a server, and Ctrl-C must not wait for it."""
    while not lock.acquire(timeout=0.5):
        if cancel.is_set():
            return False
    return True


class CredentialGate:
    """Sends a step's requests so that wrong credentials cost one failed logon, not one per thread.

    Every request answered 401 after carrying a wrong (or expired) password is a failed logon at the
    domain controller (NTLM and Basic alike), and AD locks the account out at its lockout threshold
    (10 in Microsoft's security baseline, 5 or fewer in CIS's benchmark): then the account fails
    everywhere it is used, this agent included, until an administrator unlocks it. The check's two
    requests and the first photo requests, each on its own thread's connection, made 6 failed logons
    in one step (4 within ``endpoint_check_hours``, 3 for ``mvsync doctor``), so one run could lock the
    service account. So until the step's first request has ended otherwise than with a 401, requests
    go one at a time; once one is refused, none is sent again and every sender stops the step with the
    same error. Thread-safe; one per step (``PhotoClient``).

    Why the first request that ends at all, and not the first that shows the credentials accepted: a
    server that does not answer, or answers before authenticating (IIS's 503 of a stopped application
    pool, its 403 of an IP restriction), checks no credentials, and holding every thread behind it one
    request at a time made a silent EWS take twice as long to be named down (36 s instead of 16 with
    timeout_s = 2). Failed logons can then come only from requests already under way when such a server
    starts refusing the password, which the first refusal ends.

    The step can also be stopped for a reason the gate does not see (EWS silent: ``PhotoClient._unless_hung``):
    ``stop`` makes every later sender raise that error instead of sending, as after a refusal.
    """

    def __init__(
        self, settings: ExchangeServerSettings, limiter: AdaptiveLimiter, cancel: Callable[[], threading.Event]
    ) -> None:
        self._settings = settings
        self._limiter = limiter
        self._cancel = cancel
        self._turn = threading.Lock()
        self._open = False
        #: Why nothing more is sent (the credentials refused, or ``stop``), raised to every sender.
        self._stopped: ConnectorError | None = None

    @property
    def stopped(self) -> ConnectorError | None:
        """Why the step sends nothing more, or None."""
        return self._stopped

    def stop(self, error: ConnectorError) -> None:
        """Send nothing more: every sender raises ``error`` (a copy) instead."""
        self._stopped = error

    def send(self, ticket: Ticket, send: Callable[[], requests.Response]) -> requests.Response:
        """``send()``'s answer (the caller holds ``ticket``, released here when the step stops); raises
        the refusal of the credentials (``refusal``) instead of a 401, and instead of sending after one."""
        try:
            if not self._open:
                self._wait_turn()
                try:
                    if not self._open:  # still the first: alone (the others waited for it; now they go at once)
                        return self._sent(send)
                finally:
                    self._turn.release()
            return self._sent(send)
        except (ConnectorError, Cancelled):
            self._limiter.release(ticket, Signal.OK)
            raise

    def _wait_turn(self) -> None:
        """Take the turn (one request at a time until the first has ended), or raise ``Cancelled``."""
        if not _take(self._turn, self._cancel()):
            raise Cancelled

    def _sent(self, send: Callable[[], requests.Response]) -> requests.Response:
        if self._stopped is not None:
            raise copy.copy(self._stopped)
        try:
            resp = send()
        except AuthenticationError as exc:  # the authentication's own refusal (``_auth``)
            self._stopped = exc
            raise
        except Exception:  # no answer (or one too large to read): no credentials were refused
            self._open = True
            raise
        if resp.status_code == 401:
            self._stopped = refusal(self._settings, resp.headers.get("WWW-Authenticate"))
            raise copy.copy(self._stopped)
        self._open = True
        return resp


class PhotoClient:
    """Fetches photos for one agent step; thread-safe.

    Each thread has its own session: NTLM authenticates a *connection* (three legs on one socket),
    and requests-ntlm sends the later legs through the session's pool, which under several threads
    may hand it another socket, so a shared session fails handshakes at random.
    """

    def __init__(
        self,
        settings: ExchangeServerSettings,
        session_factory: Callable[[], requests.Session],
        limiter: AdaptiveLimiter,
        cancel: threading.Event,
    ) -> None:
        self.settings = settings
        self._session_factory = session_factory
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()
        self.limiter = limiter
        self._own_cancel = cancel
        self.url = settings.ews_url + "/s/GetUserPhoto"
        self.counters = {
            "requests": 0,
            "throttled": 0,
            "retries": 0,
            "backoff_ms_honoured": 0,
            "older_server_answers": 0,
        }
        #: A server older than Exchange 2013 answered behind ews_url, which a newer one answers too (a
        #: mixed pool): every "no photo" is then asked again (``_confirmed_none``).
        self.mixed = False
        #: The check met a server of Exchange 2013 or later behind ews_url in this step: an older one that
        #: answers later makes the pool ``mixed``.
        self._newer = False
        #: The mailbox whose check was left for later (``defer_check``): made before any "no photo" is trusted.
        self._unchecked: str | None = None
        self._check_lock = threading.Lock()
        #: When any thread last had a working answer from EWS: tells an outage from one mailbox's trouble.
        self.answers = AnswerClock()
        #: The latest mailbox with a working answer, and the latest asked for: what a recheck asks
        self._worked: str | None = None
        self._asked: str | None = None
        #: The mailboxes refused since the last one read, and the mailbox read last (``_refused_everywhere``).
        self._refusals = RefusedEverywhere(REFUSALS_TO_STOP)
        #: Held while one thread asks whether a silent EWS is hung (``_unless_hung``); the others wait for it.
        self._judging = threading.Lock()
        #: Every request goes through it: wrong credentials cost one failed logon, not one per thread.
        self.gate = CredentialGate(settings, limiter, lambda: self.cancel)
        self.watch = ThrottleWatch(
            settings.where,
            settings.max_throttled_wait_minutes,
            "the mailboxes not fetched yet keep what they had. If every answer was HTTP 503 (Service "
            "Unavailable), IIS may have stopped the EWS application pool (MSExchangeServicesAppPool): "
            "check it in IIS Manager. Otherwise run the step again later, or raise "
            "max_throttled_wait_minutes in the agent's settings",
        )

    @property
    def cancel(self) -> threading.Event:
        """What stops this thread's waits: the step's stop, when the engine's worker call named it
        (``follow``), else the agent's own (set when it closes; what ``mvsync doctor`` runs under).

        Waiting only on the agent's own, a mailbox in its retry backoff or a throttling pause kept
        waiting after Ctrl-C, until the engine gave up joining its thread (10 s) and closed the agent.
        """
        step: threading.Event | None = getattr(self._local, "cancel", None)
        return step if step is not None else self._own_cancel

    @property
    def unanswered(self) -> requests.RequestException | None:
        """Why this thread's last SOAP request (``_post``) got no answer (a timeout, a reset...), or None."""
        exc: requests.RequestException | None = getattr(self._local, "unanswered", None)
        return exc

    def follow(self, cancel: threading.Event) -> None:
        """Make ``cancel`` (the step's stop, from ``Worker.run``) stop this thread's waits."""
        self._local.cancel = cancel

    @property
    def session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = self._session_factory()
            with self._lock:
                self._sessions.append(session)
        return session

    def close(self) -> None:
        with self._lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def plan(self, due: int, read_before: str | None) -> None:
        """What the step will ask: ``due`` mailboxes, and ``read_before``, one whose photo an earlier run read
        (None if none): what judges refusals when fewer than ``REFUSALS_TO_STOP`` are due."""
        self._refusals.plan(due, worked_before=read_before)

    def defer_check(self, email: str) -> None:
        """Leave ``check_endpoint`` (for ``email``) until a "no photo" would remove a photo (``_checked``):
        an earlier step's check still holds (``endpoint_check_hours``), and only a "no photo" read from a
        server that is no EWS, or older than Exchange 2013, would lose anything."""
        self._unchecked = email

    def _checked(self) -> None:
        """Make the check ``defer_check`` left, once; a check that stops the step stops every thread that
        asks (it stays to be made), so that no thread trusts a "no photo" meanwhile."""
        with self._check_lock:
            if self._unchecked is not None:
                self.check_endpoint(self._unchecked)
                self._unchecked = None

    def _unanswered_probe(self, exc: requests.RequestException) -> str:
        """Doctor's verdict on an EWS that did not answer its first request: how, and what to check.

        Why not the same tail for all: a TLS failure named for what it is (a certificate not trusted, or
        issued for another name; no TLS on the port) already says its fix (a CA setting or variable, the
        certificate, the URL), where "timeout_s" and "check IIS and the EWS application pool" sent the
        operator to a server that was never at fault.
        """
        s = self.settings
        kind = failure_kind(exc)
        failure = f"{s.where} did not answer: {kind}"
        if isinstance(exc, requests.exceptions.SSLError) and kind != "TLS handshake failed":  # (words of its own)
            return failure
        slow = _SLOW if isinstance(exc, requests.Timeout) else ""
        return f"{failure} (timeout_s = {s.timeout_s:g} s); {_CHECK}{slow}"

    def check_endpoint(self, email: str, *, answer_needed: bool = False) -> None:
        """Stop before the first mailbox if ews_url does not lead to an EWS that has GetUserPhoto.

        Two SOAP requests. An empty one, which EWS refuses with a SOAP fault (ErrorInvalidRequest), and
        which a wrong path (or a site without EWS) answers 404: it would answer every photo request so,
        which reads as "no photo" for every mailbox. Then the GetUserPhoto operation page's own request
        for ``email`` (``_versions``), which a server older than Exchange 2013 refuses with
        ``ErrorInvalidServerVersion`` (its 404 is that mailbox's "no photo", not the server's). Either
        stops the step once, as a configuration error. Anything else goes on: the photo requests then
        say what else may be wrong, and whether it is the server or one mailbox.

        ``answer_needed`` (``mvsync doctor``): no answer to the first request is the verdict, at once. Why:
        the probe and a photo request would each wait ``timeout_s`` again (and retry), so doctor took five
        timeouts, five minutes with the default 60 s, to say that a hung EWS did not answer (found by QA).
        A step stops so too when that request timed out with nothing answered since (``_hung``): EWS answers
        it at once, whatever the mailboxes.
        """
        s = self.settings
        sent = time.monotonic()
        resp = self._post(_EMPTY_SOAP)
        if resp is None and (unanswered := self.unanswered) is not None:
            if answer_needed:
                raise ServerDownError(self._unanswered_probe(unanswered))
            if self._silent(unanswered, sent):
                raise self._hung(unanswered, sent, 1)
        if resp is not None and (said := _not_ews(resp)) is not None:
            msg = (
                f"{s.ews_url} is not EWS: {said}; give the EWS endpoint, usually https://<server>/EWS/Exchange.asmx "
                "(Get-WebServicesVirtualDirectory | fl InternalUrl)"
            )
            raise ConfigurationError(msg, key="ews_url")
        older = ""
        for attempt in range(VERSION_PROBES):
            if attempt:
                self.session.close()  # a new connection, which a load balancer may send to another server
            resp = self._post(probe(email))
            fault = ews_fault(resp) if resp is not None else None
            said = None
            if resp is not None and fault is not None:
                said = older_than_2013(s.where, resp.content, fault.code, str(fault))
            if said is None:
                # EWS itself answered (a GetUserPhoto answer, or a fault naming no older release), not a
                # gateway's 5xx or silence: a server of 2013 or later is behind ews_url
                self.mixed = bool(older)
                self._newer = resp is not None and (fault is not None or resp.status_code < 500)
                return
            older = said
            self.count("older_server_answers")
        raise ConfigurationError(f"{older} (the same answer to all {VERSION_PROBES} checks)", key="ews_url")

    def _post(self, body: bytes, *, limit: int | None = None) -> requests.Response | None:
        """One SOAP request of ``check_endpoint``, its answer read within the bounds of ``_read_head``
        (a body that trickles in, or has no end, cannot hold the step); None when none came, or only
        push-back for ``max_throttled_retries`` answers (the photo requests then meet the server).
        ``limit``: the answer may carry a photo, read whole up to that many bytes, else ``_Oversized``.

        Push-back (ErrorServerBusy, 503, 429) is waited out as a photo request's is, pausing every
        sender (``_pushed_back``): a check that took it as an answer sent the next requests straight
        into the throttle, and left it out of the step's throttled count.
        """
        s = self.settings
        headers = {"Content-Type": "text/xml; charset=utf-8"}
        self._local.unanswered = None
        for attempt in range(1, s.max_throttled_retries + 1):
            ticket = self.limiter.acquire(cancel=self.cancel)
            self.count("requests")

            def post() -> requests.Response:
                resp = self.session.post(
                    s.ews_url, data=body, headers=headers, timeout=s.timeout_s, allow_redirects=False, stream=True
                )
                if limit is not None and resp.status_code == 200:
                    _read_body(resp, s.timeout_s, limit)
                else:
                    _read_head(resp, s.timeout_s)
                return resp

            try:
                resp = self.gate.send(ticket, post)
            except _Oversized:  # an answer all the same
                self.limiter.release(ticket, Signal.OK)
                raise
            except requests.RequestException as exc:
                self.limiter.release(ticket, Signal.FAILED)
                self._local.unanswered = exc
                return None
            is_throttled, wait = throttle_signal(resp)
            if not is_throttled:
                self.limiter.release(ticket, Signal.OK)
                return resp
            self._pushed_back(ticket, wait)
            if not wait and wait_event(self.cancel, self._backoff(attempt)):
                break
        return None

    def fetch(self, email: str, etag: str | None, *, had_photo: bool = False) -> Fetched:
        """The mailbox's photo at the configured size; ``etag`` makes it conditional; ``had_photo``: the
        connector space holds a photo of it, which a "no photo" would remove (``_confirmed_none``)."""
        got = self._get(email, self.settings.photo_size, etag)
        if got.kind == "none" and (had_photo or self.mixed):
            got = self._confirmed_none(email)
        return self._unless_thumbnail(email, got)

    def _unless_thumbnail(self, email: str, got: Fetched) -> Fetched:
        """``got``, or "no photo" when the photo is the AD thumbnail Exchange serves for a mailbox without
        one (unless ``accept_ad_thumbnail``): whether it came from the REST form or the SOAP re-ask."""
        if got.kind != "photo" or self.settings.accept_ad_thumbnail or got.data is None:
            return got
        if got.pixels > 96:  # AD thumbnails are 96x96 at most by convention
            return got
        # Exchange serves the AD thumbnail when the mailbox has no photo, and always at HR48x48; the
        # same bytes at both sizes mean it is the thumbnail (MS-OXWSPHOTO, field-notes-2.md §1.1).
        small = self._get(email, "HR48x48", None)
        if small.kind == "photo" and small.data == got.data:
            return Fetched("none", etag=got.etag)
        return got

    def _confirmed_none(self, email: str) -> Fetched:
        """A 404 ("no photo") to the REST GetUserPhoto, asked again as the version probe asks (SOAP,
        ``RequestServerVersion Exchange2013``): "no photo" only if a server that knows that version says
        so too (404, or no ``PictureData``; ASSUMPTION: the operation page does not say how SOAP answers
        for a mailbox without a photo, so both are taken). A picture in that answer (``PictureData``) is
        the photo, asked at ``photo_size`` and validated as the REST form's (``_soap_photo``; the caller
        then applies the AD thumbnail rule): a valid GetUserPhoto answer from a 2013+ server, where the 404
        came from an older one. Else the mailbox's error, its photo kept.

        Why: an Exchange 2010 server has no GetUserPhoto, and what its REST form answers is undocumented
        (``_versions``); a 404 from one, behind a load balancer that also sends requests to newer servers,
        would take the photo out of the connector space, and clear thumbnailPhoto at the next export.
        Asked only when a photo would go, or once an older server was seen (``mixed``): one request more,
        or up to ``VERSION_PROBES`` on new connections while an older server answers it (a mixed pool).
        """
        self._checked()
        for attempt in range(VERSION_PROBES):  # each after the first on a new connection, as _get's
            if attempt:
                self.count("retries")
                self.session.close()  # which a load balancer may send to a newer server
            try:
                resp = self._post(probe(email, self.settings.photo_size), limit=_SOAP_PHOTO_BYTES)
            except _Oversized as big:
                return _oversized(email, big)
            fault = ews_fault(resp) if resp is not None else None
            release = older_release(resp.content, fault.code if fault else None) if resp is not None else None
            if release is None:
                break
            self.mixed = True
            self.count("older_server_answers")
        else:
            how = (
                f"answered 404 (no photo), and asked again in SOAP, {VERSION_PROBES} times (each after the first "
                f"on a new connection), it was answered by {release} every time"
            )
            return self._older_server(email, how)
        if resp is not None and fault is None:
            if resp.status_code == 200 and _PICTURE.search(resp.content):
                # a 2013+ server's GetUserPhoto answer with the picture: the 404 came from one without
                # GetUserPhoto (or the photo arrived meanwhile); every later 404 is confirmed too
                self.mixed = True
                return _soap_photo(email, resp)
            if _says_no_photo(resp):
                return Fetched("none")
        answer = "no answer" if resp is None else f"HTTP {resp.status_code}" + (f" ({fault})" if fault else "")
        detail = (
            f"GetUserPhoto for {email} answered 404 (no photo), but asked again in SOAP it answered {answer}, not "
            f'"no photo"; {_KEPT}. If this recurs, check the servers behind {self.settings.ews_url}'
        )
        return Fetched("error", error="ews-error", detail=detail)

    def _older_server(self, email: str, how: str) -> Fetched:
        """The mailbox's error when a server older than Exchange 2013 answered for it (``how``: what it
        was asked and who answered), its photo kept: the same for a 404 and for a SOAP fault."""
        where = (
            "a load balancer sends requests to it as well as to newer servers"
            if self.mixed
            else "if a load balancer sends requests to it as well as to newer ones, the check before the first "
            "mailbox could not tell (it had no answer from EWS)"
        )
        detail = (
            f"GetUserPhoto for {email} {how}, which has no GetUserPhoto, behind {self.settings.ews_url}: {where}; "
            f"{_KEPT}. Take the servers older than Exchange 2013 out of that pool"
        )
        return Fetched("error", error="server-older-than-2013", detail=detail)

    def _older_answered(self, email: str, release: str, fault: EwsFault, times: int) -> Fetched | None:
        """A REST GetUserPhoto answered by ``release``, older than Exchange 2013, with ``fault`` (such as
        ``ErrorInvalidServerVersion``; what it answers there is undocumented, ``_versions``), the ``times``-th
        time for this mailbox: None to ask again on a new connection, else the mailbox's error.

        A check left for later is made first (a server replaced by an older one stops the step there,
        ``_checked``). Once the check met a newer server in this step, the pool is mixed and a new
        connection may land on a newer server: asked up to ``VERSION_PROBES`` times in all (all older by
        chance: odds s**5 for a share s of older servers), then the mailbox's error, asked again after
        photo_error_recheck_hours, as for a 404 an older server answered (``_confirmed_none``).
        """
        self.count("older_server_answers")
        self._checked()
        if self._newer:
            self.mixed = True
        if self.mixed and times < VERSION_PROBES:
            self.count("retries")
            return None
        tries = f", to all {times} requests (each after the first on a new connection)" if times > 1 else ""
        return self._older_server(email, f"was answered by {release} ({fault}){tries}")

    def _get(self, email: str, size: str, etag: str | None) -> Fetched:
        s = self.settings
        headers = {"If-None-Match": etag} if etag else {}
        failures = throttled = older = 0
        last = ""
        unanswered: requests.RequestException | None = None
        started = time.monotonic()
        self._asked = email
        while True:
            self._may_send()
            ticket = self.limiter.acquire(cancel=self.cancel)
            self.count("requests")
            sent = time.monotonic()
            try:
                resp = self._send(ticket, email, size, headers)
            except _Oversized as big:
                self._answered(ticket, email, True, read=True)
                return _oversized(email, big)
            except requests.RequestException as exc:
                self.limiter.release(ticket, Signal.FAILED)
                unanswered, last = exc, f"{s.where}: {failure_kind(exc)}"
                self._unless_hung(exc, sent, started, failures + 1)
            else:
                unanswered = None
                is_throttled, wait = throttle_signal(resp)
                if is_throttled:
                    self._pushed_back(ticket, wait)
                    throttled += 1
                    if throttled >= s.max_throttled_retries:
                        return self._throttled_out(email, throttled)
                    # no wait named (ErrorExceededConnectionCount, BackOffMilliseconds 0, a bare 503): the
                    # limiter pauses once for push-back, not again while it judges that decrease, so the
                    # mailbox waits its own back-off rather than ask again at once, every few milliseconds
                    if not wait and wait_event(self.cancel, self._backoff(throttled)):
                        return _stopped()
                    continue
                fault = ews_fault(resp)
                read = fault is None and resp.status_code in _READ_STATUS
                self._answered(ticket, email, _is_answer(resp, fault), allowed=_allowed(resp), read=read)
                if fault is not None and (release := older_release(resp.content, fault.code)) is not None:
                    older += 1
                    if (outcome := self._older_answered(email, release, fault, older)) is not None:
                        return outcome
                    self.session.close()  # a new connection, which a load balancer may send to a newer server
                    continue
                outcome = self._answer(email, resp, fault, conditional=bool(headers))
                if outcome is not None:
                    return outcome
                last = f"HTTP {resp.status_code}" + (f" ({fault})" if fault else "")
            failures += 1
            if failures >= s.max_attempts:
                return self._gave_up(email, last, unanswered, started, failures)
            self.count("retries")
            if wait_event(self.cancel, self._backoff(failures)):
                return _stopped()

    def _backoff(self, attempt: int) -> float:
        """Seconds to wait before asking again after the ``attempt``-th failure or push-back: from
        ``backoff_initial_s``, doubling up to ``backoff_max_s``, with jitter (threads apart)."""
        s = self.settings
        return min(s.backoff_max_s, s.backoff_initial_s * 2.0 ** (attempt - 1)) * random.uniform(0.5, 1.0)

    def _send(self, ticket: Ticket, email: str, size: str, headers: dict[str, str] | None = None) -> requests.Response:
        """One GetUserPhoto request, for which the caller holds ``ticket``, through the credential gate.

        Streamed, so that a photo's body is read with a bound (``_read_body``), here, where a cut-off
        answer is a failure to retry; reading it also frees the connection for the next request
        (which NTLM keeps authenticated). Any other answer is read whole, as before.
        """
        params = {"email": email, "size": size}
        timeout = self.settings.timeout_s

        def get() -> requests.Response:
            # never followed: credentials would go with it, and its server's 401 would stop the step
            resp = self.session.get(
                self.url, params=params, headers=headers or {}, timeout=timeout, stream=True, allow_redirects=False
            )
            if resp.status_code == 200:
                _read_body(resp, timeout)
            else:
                _read_head(resp, timeout)
            return resp

        return self.gate.send(ticket, get)

    def _pushed_back(self, ticket: Ticket, wait: float | None) -> None:
        """ErrorServerBusy, 503 or 429: pause every sender for the wait asked for (BackOffMilliseconds,
        Retry-After), and stop the step if nothing but push-back has come for ``max_throttled_wait_minutes``."""
        self.answers.answered()  # push-back is the server at work
        self.count("throttled")
        if wait is not None:
            self.count("backoff_ms_honoured", int(wait * 1000))
            self.limiter.pause(wait)
        self.limiter.release(ticket, Signal.THROTTLED, retry_after=wait)
        # the wait EWS asked for, not only the limiter's pause (capped at pause_max_s): a back-off past
        # max_throttled_wait_minutes stops the step now, as the Graph client weighs a Retry-After
        self.watch.check(max(wait or 0.0, self.limiter.paused_for()))

    def _throttled_out(self, email: str, answers: int) -> Fetched:
        """The error of a mailbox whose every attempt was push-back: asked again in the error window."""
        detail = (
            f"EWS kept throttling {email} ({answers} answers in a row were ErrorServerBusy, "
            "ErrorExceededConnectionCount, HTTP 503 or 429; max_throttled_retries); it is asked again after "
            "photo_error_recheck_hours. If many mailboxes get this, lower concurrency, or give the service "
            "account a throttling policy of its own (New-ThrottlingPolicy, Set-ThrottlingPolicyAssociation)"
        )
        return Fetched("error", error="throttled", detail=detail)

    def _answered(self, ticket: Ticket, email: str, worked: bool, *, allowed: bool = True, read: bool = False) -> None:
        """Release ``ticket``; ``worked``: EWS is at work (a plain 5xx is a failure, not a working answer);
        ``allowed``: and it lets the account read mailboxes (not a 403), so ``email`` is one to ask again;
        ``read``: the account read the mailbox (``_READ_STATUS``), which ends a run of refusals."""
        if read:
            self._refusals.worked(email)
        if worked:
            self.answers.answered()
            self.watch.progressed()
        if worked and allowed:
            self._worked = email
        self.limiter.release(ticket, Signal.OK if worked else Signal.FAILED)

    def _gave_up(
        self, email: str, last: str, unanswered: requests.RequestException | None, started: float, attempts: int
    ) -> Fetched:
        """The mailbox's error after its last attempt (``unanswered``: the last had no answer; else
        ``last`` says which 5xx), unless the server is down (``ServerDownError``)."""
        if unanswered is not None:
            # a reset is rechecked; with no other mailbox to ask, the silence stands
            evidence = unanswered_outage(
                unanswered, self.answers, started, lambda: self._fails_again(email, _worked_on, alone=SILENCE)
            )
            if evidence is not None:
                raise self._down(f"did not answer: {failure_kind(unanswered)}", started, attempts, evidence)
            slow = _slow(unanswered, self.settings.timeout_s)
            return Fetched("error", error="ews-error", detail=f"GetUserPhoto for {email}: {last}{slow}")
        if (evidence := self._fails_again(email, _worked_on)) is not None:
            raise self._down(f"answered with {last}", started, attempts, evidence)
        hint = "; is it an on-premises mailbox (not moved to Exchange Online)?" if last == "HTTP 500" else ""
        return Fetched(
            "error", error="ews-error", detail=f"GetUserPhoto for {email}: {last} from {self.settings.origin}{hint}"
        )

    def _forbidden(self, email: str) -> Fetched:
        """A bare 403 (no SOAP fault, which is how EWS refuses one mailbox): the mailbox's error, unless
        the account is refused everywhere (``_refused_everywhere``): the step stops once, rather than fail
        every mailbox."""
        evidence = self._refused_everywhere(email)
        if evidence is None:
            detail = (
                f"EWS refused {self._account} the photo of {email} (HTTP 403 Forbidden, no SOAP fault); {_KEPT}. "
                "Check the account's rights on this mailbox (if it impersonates, the scope of its "
                "ApplicationImpersonation role: Get-ManagementRoleAssignment -Role ApplicationImpersonation)"
            )
            return Fetched("error", error="permission-issue", detail=detail)
        raise AuthenticationError(
            f"{self.settings.where} refused {self._account} (HTTP 403 Forbidden for {email}, and {evidence}): EWS "
            f"or IIS refuses the account, not one mailbox; {_ACCOUNT_CHECKS} and the IP restrictions and SSL "
            f"settings of the EWS virtual directory in IIS; {_NOT_FETCHED}"
        )

    def _denied(self, email: str, fault: EwsFault) -> Fetched:
        """EWS's SOAP fault refusing the account a mailbox (ErrorAccessDenied: "the calling account does
        not have the rights to perform the requested action", EWS ResponseCode reference): the mailbox's
        error, unless the account is refused everywhere (``_refused_everywhere``): then the step stops once.
        """
        evidence = self._refused_everywhere(email)
        if evidence is None:
            detail = f"EWS refused {self._account} the photo of {email} ({fault}): check the account's rights on this "
            return Fetched("error", error="permission-issue", detail=detail + "mailbox")
        raise AuthenticationError(
            f"{self.settings.where} refused {self._account} the photo of {email} ({fault}), and {evidence}: EWS "
            f"refuses the account, not one mailbox; {_ACCOUNT_CHECKS} and, if the account impersonates, its "
            "ApplicationImpersonation role (Get-ManagementRoleAssignment -Role ApplicationImpersonation); "
            + _NOT_FETCHED
        )

    def _refused_everywhere(
        self,
        email: str,
        reason: str = "denied",
        allowed: Callable[[requests.Response], bool] = _allowed,
        what: str = "refused",
    ) -> str | None:
        """Why the account (or every request), not ``email``, is refused; None while it may be the mailbox's own.

        The streak is the framework's (``connector.net.RefusedEverywhere``): ``REFUSALS_TO_STOP`` distinct
        mailboxes (or every mailbox due, when fewer are) refused for ``reason`` with none read meanwhile.
        A bare 403 and each denying fault count as one reason: what is asked of each is the same (may the
        account read this mailbox?), and the confirmation settles it whatever the code; any other status
        is a reason of its own (``_refused_request``). The confirmation is this agent's: a mailbox read
        before (in this step, else in an earlier run) is asked again (``_fails_again``), its answer judged
        by ``allowed``: refused too (``what``), it is the account; answered, the refusals are the
        mailboxes' own, and the count starts again. With no mailbox ever read, it is the account.
        """
        streak = self._refusals.refused(email, reason)
        if streak is None:
            return None
        read = self._refusals.worked_last
        if read is None:
            return f"the first {len(streak)} mailboxes asked were {what} too, none read"
        said = f"{read}, whose photo was read before, was {what} too when asked again"
        return self._fails_again(email, allowed, other=read, evidence=said)

    def _refused_request(self, email: str, resp: requests.Response) -> Fetched:
        """Any other answer (a 4xx but 401, 403, 404 and 429; a 2xx but 200), which EWS gives for no one
        mailbox: the mailbox's error, unless the very same status came for ``REFUSALS_TO_STOP`` mailboxes
        in a row, none read, and a mailbox read before gets it too (``_refused_everywhere``): then the
        step stops once, with what the status likely means (``_refused_hint``), rather than fail every
        mailbox with it (IIS's 400 to a Kerberos ticket too large for its limits: thousands of errors).
        """
        status, where = resp.status_code, self.settings.where
        said = f"HTTP {status}" + (f" ({resp.reason})" if resp.reason else "")
        evidence = self._refused_everywhere(
            email, f"HTTP {status}", lambda again: again.status_code != status, f"answered {said}"
        )
        if evidence is None:
            hint = _refused_hint(status)
            detail = f"GetUserPhoto for {email}: {said} from {where}; {_KEPT}. If every mailbox gets it: {hint}"
            return Fetched("error", error="ews-error", detail=detail)
        raise StopRunError(
            f"{where} answered {said} to GetUserPhoto for {email}, and {evidence}: it refuses this agent's requests, "
            f"not one mailbox. {_refused_hint(status)}; {_NOT_FETCHED}"
        )

    @property
    def _account(self) -> str:
        return self.settings.username or self.settings.client_id or "the service account"

    def _fails_again(
        self,
        email: str,
        worked: Callable[[requests.Response], bool],
        *,
        other: str | None = None,
        evidence: str = RECHECKED,
        alone: str | None = None,
    ) -> str | None:
        """Why the server (or the account) fails, if a mailbox that had a working answer (``other``, else
        the latest; before any, another mailbox asked for) fails too, as ``worked`` judges an answer
        (``evidence`` says so); None if it answers, ``alone`` if there is no other mailbox to ask.

        A plain 5xx is an answer about one mailbox (a broken or moved one answers 500 every time),
        or a server, or load balancer, failing everything: ``connector.net.fails_again``.
        """
        if other is None:
            other = self._worked
        if other is None:
            candidate = self._asked
            other, evidence = (candidate if candidate != email else None), "another mailbox failed too"
        if other is None:
            return alone

        def ask() -> bool:
            ticket = self.limiter.acquire(cancel=self.cancel)
            self.count("requests")
            try:
                resp = self._send(ticket, other, "HR48x48")
            except _Oversized:  # an answer all the same
                self.limiter.release(ticket, Signal.OK)
                return True
            except requests.RequestException:
                self.limiter.release(ticket, Signal.FAILED)
                return False
            answered = worked(resp)
            self.limiter.release(ticket, Signal.OK if answered else Signal.FAILED)
            return answered

        return evidence if fails_again(ask, self.cancel, self.settings.backoff_initial_s) else None

    def _down(
        self, failure: str, started: float, attempts: int, evidence: str = SILENCE, *, then: str = ""
    ) -> ServerDownError:
        """EWS is down (or unreachable, or its certificate untrusted), which is no fault of the mailbox."""
        said = self.answers.not_answering(
            self.settings.where, failure, attempts, started, f"{_NOT_FETCHED}; {_CHECK}{then}", evidence
        )
        return ServerDownError(said)

    def _silent(self, exc: requests.RequestException, sent: float) -> bool:
        """Whether a request sent at ``sent`` timed out (``exc``) with no request answered since: EWS said
        nothing at all for ``timeout_s``. A refused or reset connection is not silence: it is quick, and
        the retries and ``_gave_up`` judge it."""
        return isinstance(exc, requests.Timeout) and self.answers.silent_since(sent)

    def _may_send(self) -> None:
        """Wait, before a mailbox's request, while another thread asks whether EWS is hung (``_unless_hung``),
        and raise the step's stop if there is one (``CredentialGate.stopped``): nothing more is sent to a
        server that may not answer until it is known, nor counted as sent after the stop."""
        if self._judging.locked() and _take(self._judging, self.cancel):
            self._judging.release()
        if (stopped := self.gate.stopped) is not None:
            raise copy.copy(stopped)

    def _unless_hung(self, exc: requests.RequestException, sent: float, started: float, attempts: int) -> None:
        """Stop the step (``_hung``) when ``exc``, the ``attempts``-th failure of a mailbox asked since
        ``started``, is a timeout with nothing answered since ``sent``, and an empty SOAP request (which
        EWS answers at once with a fault, whatever the mailboxes) gets no answer within ``timeout_s``
        either. One thread asks it; the others wait for its answer, and any answer (a 5xx too) goes on
        as before: the retries, then ``_gave_up``, judge the mailbox.

        Why: every request to an EWS that takes connections and never answers waits ``timeout_s``: the
        check's two requests and each mailbox's ``max_attempts`` took 8 minutes and more at the default
        60 s to stop (QA find). Why not stop at the first silent timeout: a mailbox can be slow on a
        server that works (its database busy, mounting), with no other request under way to show it.
        """
        if not self._silent(exc, sent) or not _take(self._judging, self.cancel):
            return
        try:
            if (stopped := self.gate.stopped) is not None:
                raise copy.copy(stopped)
            if not self._silent(exc, sent):  # the question was asked meanwhile, and answered
                return
            resp = self._post(_EMPTY_SOAP)
            if resp is not None and _worked_on(resp):
                self.answers.answered()
            elif resp is None and (unanswered := self.unanswered) is not None and self._silent(unanswered, sent):
                raise self._hung(exc, started, attempts)
        finally:
            self._judging.release()

    def _hung(self, exc: requests.RequestException, started: float, attempts: int) -> ServerDownError:
        """The stop for an EWS that said nothing for ``timeout_s``, not even to a request it answers at once
        (``_silent``); no request is sent after it (``CredentialGate.stop``)."""
        t = self.settings.timeout_s
        evidence = (
            f"no request had an answer within timeout_s = {t:g} s or since, not even an empty SOAP request, "
            "which EWS answers at once"
        )
        error = self._down(f"did not answer: {failure_kind(exc)}", started, attempts, evidence, then=_SLOW)
        self.gate.stop(error)
        return error

    def _answer(
        self, email: str, resp: requests.Response, fault: EwsFault | None, *, conditional: bool
    ) -> Fetched | None:
        """The outcome of a non-throttled answer (``conditional``: the request sent If-None-Match); None
        for one worth retrying."""
        status, etag = resp.status_code, resp.headers.get("ETag")
        if fault is not None:  # a 5xx's, or a 200's whose SOAP says Error: a retry when it is the server's
            return self._refused_mailbox(email, fault) if fault.about_mailbox else None
        if status in (200, 301, 302, 303, 307, 308) and "image" not in _content_type(resp):
            # a web page or a redirect: the check left for later (``defer_check``) tells an ews_url that now
            # leads to a sign-in page (stopping the step) from one mailbox's answer
            self._checked()
        if status == 200:
            return _photo(email, resp)
        if status == 304:
            return Fetched("unchanged", etag=etag) if conditional else _not_modified_unasked(email)
        if status == 404:
            return Fetched("none")
        if status == 403:
            return self._forbidden(email)
        if 300 <= status < 400:
            return _redirected(email, resp)
        if status >= 500:
            return None
        return self._refused_request(email, resp)

    def _refused_mailbox(self, email: str, fault: EwsFault) -> Fetched:
        """EWS's SOAP fault about one mailbox, as its per-object error: what EWS said and what to do."""
        if fault.code in _NOT_FOUND_FAULTS:
            detail = (
                f"EWS has no mailbox {email} ({fault}): it moved to Exchange Online or was removed since the "
                "mailbox list was made; refresh mailbox_file (or mailboxes) from Get-Mailbox"
            )
            return Fetched("error", error="mailbox-not-found", detail=detail)
        if fault.code in _DENIED_FAULTS:
            return self._denied(email, fault)
        if (passing := _PASSING_FAULTS.get(fault.code)) is not None:
            error, said = passing
            return Fetched("error", error=error, detail=said.format(email=email, fault=fault))
        return Fetched("error", error="ews-error", detail=f"GetUserPhoto for {email}: EWS answered {fault}")
