"""An Exchange Server (on-premises) EWS emulator: mailbox photos over ``GetUserPhoto``.

Hybrid organisations keep the HD photos of on-premises mailboxes in those mailboxes, where Graph
cannot read them; Exchange 2013 and later serve them over EWS. This emulator serves them the way
the documentation describes, for the ``exchange-server-photos`` agent's tests, the demo and
``mvsync bench import-ews``. Each row names its Microsoft source (the MS-OXWSPHOTO and MS-OXWSCONT
protocol specifications, and the EWS "Get user photos", GetUserPhoto operation, authentication and
throttling pages on learn.microsoft.com); "ASSUMPTION" marks what no source settles.

=====================================  =================================================================
Request / situation                    Answer (source)
=====================================  =================================================================
``GET /EWS/Exchange.asmx/s/            200 ``image/jpeg``, ``ETag`` (MS-OXWSPHOTO §3.1.5.1.1; how-to "Get
GetUserPhoto?email=&size=HRnnxnn``     user photos by using EWS", Table 2). Path matching ignores case,
                                       as IIS does.
``If-None-Match`` = current ETag       304 with the ETag, no body (how-to, "Caching user photos")
no photo at all                        404 (how-to Table 2)
size larger than the photo             the largest size the photo has (MS-OXWSPHOTO; SizeRequested)
no HD photo, AD thumbnail exists       the AD ``thumbnailPhoto`` bytes as they are, "not necessarily
                                       square" (MS-OXWSPHOTO)
``HR48x48``                            the AD thumbnail whenever one exists (MS-OXWSPHOTO)
size code not in HR48x48..HR648x648    400 (ASSUMPTION: undocumented)
unknown address                        500 (the SOAP operation page says so; the REST form is
                                       undocumented, ASSUMPTION: the same; ``unknown_mailbox="404"``
                                       switches to 404)
``POST /EWS/Exchange.asmx`` SOAP       ``GetUserPhotoResponse`` with ``HasChanged`` and base64
``GetUserPhoto``                       ``PictureData`` (getuserphoto-operation; MS-OXWSCONT §3.1.4.7.3.2);
                                       ``HasChanged`` false (no data) when ``If-None-Match`` matches
more than ``EWSMaxConcurrency`` (27)   500 SOAP fault ``ErrorExceededConnectionCount`` (ews-throttling-
requests of one account in flight      in-exchange: default 27 since Exchange 2013)
the account's budget spent             500 SOAP fault ``ErrorServerBusy`` with ``BackOffMilliseconds`` in
(``budget_per_s``/``burst``)           ``MessageXml`` (ews-throttling-in-exchange; the budget is
                                       modelled as a token bucket: ASSUMPTION, the real
                                       EwsMaxBurst/EwsRechargeRate accounting is in CPU time)
NTLM without channel binding while     401 (``extended_protection=True``: the EWS virtual directory's
Extended Protection is required        Extended Protection; RFC 5929 ``tls-server-end-point`` binding)
no or wrong credentials                401 with ``WWW-Authenticate: NTLM`` / ``Negotiate`` / ``Basic``
                                       (authentication-and-ews-in-exchange: NTLM on-premises, Basic no
                                       longer recommended; OAuth in hybrid modern authentication); each
                                       NTLM AUTHENTICATE or Basic password refused counts in ``stats()``
                                       ``failed_logons``, as the DC counts toward the account's lockout
``Authorization: Negotiate`` with a    accepted with the keytab of ``HTTP/<host>``; the answer carries
Kerberos ticket (SPNEGO)               ``WWW-Authenticate: Negotiate <token>``, the mutual-authentication
                                       token (RFC 4559 §5); the connection then stays authenticated (IIS
                                       ``windowsAuthentication``: a Kerberos client is authenticated once
                                       per connection by default, WindowsAuthenticationSection reference)
a ticket the keytab cannot read        401 ``WWW-Authenticate: Negotiate`` (RFC 4559 §5)
(another service's, a stale key)
NTLM inside Negotiate, with           401 with the challenge again and no NTLM challenge: the Negotiate of
``ntlm_in_negotiate=False``            a virtual directory that takes Kerberos only (ASSUMPTION: the answer)
``server_version="Exchange2010_SP1"``  an Exchange 2010 server, which has no GetUserPhoto (getuserphoto-
                                       operation: "introduced in Exchange Server 2013"):
- a SOAP request whose                 500 SOAP fault ``ErrorInvalidServerVersion``, "The specified server
  ``RequestServerVersion`` it does     version is invalid." (ResponseCode reference: "an invalid request
  not know (``Exchange2013``)          server version was specified"; its Version values are listed on the
                                       RequestServerVersion page)
- a SOAP ``GetUserPhoto`` under a      500 SOAP fault ``ErrorSchemaValidation`` (the element is not in its
  version it knows                     schema; ASSUMPTION: the message text)
- the REST ``GetUserPhoto``            404 (ASSUMPTION, undocumented: its ``/s/`` handler does not exist
                                       there; the harmful case, as 404 means "no photo");
                                       ``older_rest="ErrorInvalidServerVersion"``: 500 SOAP fault
                                       ``ErrorInvalidServerVersion`` with its ServerVersionInfo instead
                                       (ASSUMPTION, undocumented too: the fault it gives a SOAP request of
                                       a version it does not know)
every SOAP answer                      a ``ServerVersionInfo`` SOAP header (getuserphoto-operation's
                                       example: 15.0.556.8 ``Exchange2013``; "Versioning EWS requests"'s
                                       example for Exchange 2010 SP1: 14.0.478.0 ``Exchange2010_SP1``);
                                       ASSUMPTION: faults carry it too
``pool=("Exchange2013",                a mixed pool of servers behind one EWS URL (a load balancer): each
"Exchange2010_SP1")``                  request, once authenticated, is answered by the next server in turn,
                                       as that server would. ASSUMPTION: Microsoft documents no such pool,
                                       nor how a balancer spreads requests; round robin per request is the
                                       simplest spread
``add_mailbox(.., server_version=      the mailbox sits on an Exchange 2010 server of a mixed organisation:
"Exchange2010_SP1")``                  its REST and SOAP ``GetUserPhoto`` answer 500 SOAP fault
                                       ``ErrorInvalidSchemaVersionForMailboxVersion`` (ResponseCode
                                       reference: "a proxy request that was sent to another server is not
                                       able to service the request due to a versioning mismatch"; the EWS
                                       Managed API's text: "The mailbox that was requested doesn't support
                                       the specified RequestServerVersion"). ASSUMPTION: that a 2013+
                                       server proxies GetUserPhoto for such a mailbox at all
``ews_enabled=False``                  every request, once authenticated: 403 with an empty body
(``Set-OrganizationConfig -EwsEnabled  (how-to-control-access-to-ews-in-exchange: "Block the entire
$false``, or the account's             organization from using EWS"; ASSUMPTION: the answer, which
``Set-CASMailbox``)                    Microsoft does not document; reports of EWS blocked show 403)
``ews_allow_list=("OWA/*", ..)``       ``-EwsApplicationAccessPolicy EnforceAllowList -EwsAllowList``:
                                       a request whose ``User-Agent`` matches no entry ("applications
                                       are identified by the user agent string", controlling-client-
                                       application-access-to-ews-in-exchange) gets the same 403
``/EWS/Services.wsdl``                  the WSDL (``text/xml``) to a GET, 405 to a POST: a static file, which
                                       IIS's StaticFile handler serves (ASSUMPTION: the WSDL's content)
``POST /autodiscover/autodiscover.xml`` 200 with POX Autodiscover's error 600, "Invalid Request" (MS-OXDSCLI
                                       ErrorCode: "The XML request was improperly formatted"), to any
                                       request that is not its own (ASSUMPTION: the status, 200)
``/owa/`` (Outlook on the web with      302 to ``/owa/auth/logon.aspx?replaceCurrent=1&url=..``, which
forms-based authentication, its        answers 200 with its HTML sign-in page (ASSUMPTION: the page and the
default since Exchange 2013)           redirect's query)
``http_redirect="https://../owa"``     every ``/EWS/`` request 302 to it, before authentication: IIS's HTTP
                                       Redirect set on the Default Web Site to shorten the OWA URL, and
                                       inherited by the EWS virtual directory (a known misconfiguration)
``max_field_length=N``                 HTTP.sys's ``MaxFieldLength`` (HKLM\\...\\HTTP\\Parameters, 16,384 bytes
                                       by default): a request with a longer header line gets HTTP.sys's
                                       400 "Bad Request - Request Too Long" page, before authentication:
                                       what the Kerberos ticket of an account in many groups meets (KB
                                       2020943). ASSUMPTION: the page's exact bytes
``set_answer(email, status, body)``    that answer to the mailbox's REST ``GetUserPhoto``, for what one
                                       mailbox (or what stands in front of EWS) may answer: a SOAP
                                       fault (``soap_fault("ErrorNonExistentMailbox", ..)``), a
                                       proxy's HTML page, damaged bytes, an HTTP 200 whose SOAP says
                                       ``ResponseClass="Error"`` (``error_response``); ``times=n``: for
                                       the next n requests only (a proxy's 429 that passes)
=====================================  =================================================================

NTLM is connection-based, as IIS does it: the three-leg handshake runs on one TCP connection, which
then stays authenticated for later requests (no new handshake per photo). The NTLM acceptor is
pyspnego's (the library requests-ntlm uses on the client side); it reads the account from the file
named by ``NTLM_USER_FILE``, which the emulator writes and points the variable at while it runs.
Negotiate/Kerberos is real Kerberos: with ``"negotiate"`` in ``auth`` the emulator accepts tickets
with MIT krb5 (python-gssapi) and ``kerberos_keytab``, the keys of an ``HTTP/<host>`` service
principal registered in a real KDC (the tests use the harness's Samba AD DC); a Negotiate header
that carries NTLM (``NTLMSSP``) still goes to the NTLM acceptor when ``"ntlm"`` is offered too.
With ``extended_protection`` the Kerberos acceptor also demands the TLS channel binding. Bearer
tokens are accepted when the ``bearer_validator`` given to the emulator accepts them (tests use the
Graph emulator's identity).

Faults reuse the Graph emulator's profiles (``_faults``): "429" becomes ``ErrorServerBusy`` (EWS has
no 429), 503 is IIS's queue-full answer, and resets, truncated bodies and extra latency as there.
A profile's ``path_pattern`` is searched in the request's path and query, so ``"email=m3%40"`` makes
one mailbox's requests meet the fault while the others are answered (a backend, or a firewall rule,
that resets one mailbox's answers). ``gzip_photo_bytes`` is the Graph emulator's only: here
``set_answer`` sends any body, with a ``Content-Encoding`` header for a gzip bomb.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import os
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, TypeVar
from xml.etree import ElementTree

from connector.emulator._config import FaultSpec
from connector.emulator._faults import FaultInjector, parse_faults
from connector.emulator._http import HttpServer, Request, Response, stop_server_thread
from connector.emulator._photos import HD_SIZES, PhotoTemplates, image_dimensions, reencode_jpeg, splice_marker
from connector.emulator._stats import Stats
from connector.emulator._tls import server_tls

__all__ = ["EWS_SIZE_CODES", "SERVER_VERSIONS", "EwsConfig", "EwsEmulator", "error_response", "size_code", "soap_fault"]

T = TypeVar("T")

#: HTTP.sys's answer to a request whose headers are over its limits (``MaxFieldLength``, ``MaxRequestBytes``).
_REQUEST_TOO_LONG = (
    b'<!DOCTYPE HTML PUBLIC "-//W3C//DTD HTML 4.01//EN""http://www.w3.org/TR/html4/strict.dtd">\r\n'
    b"<HTML><HEAD><TITLE>Bad Request</TITLE>\r\n"
    b'<META HTTP-EQUIV="Content-Type" Content="text/html; charset=us-ascii"></HEAD>\r\n'
    b"<BODY><h2>Bad Request - Request Too Long</h2>\r\n"
    b"<hr><p>HTTP Error 400. The size of the request headers is too long.</p>\r\n</BODY></HTML>\r\n"
)

#: The SizeRequested codes (sizerequested reference page: "introduced in Exchange Server 2013").
EWS_SIZE_CODES = tuple(f"HR{s}x{s}" for s in HD_SIZES)
PHOTO_PATH = "/ews/exchange.asmx/s/getuserphoto"
SOAP_PATH = "/ews/exchange.asmx"
WSDL_PATH = "/ews/services.wsdl"
AUTODISCOVER_PATH = "/autodiscover/autodiscover.xml"
_AUTODISCOVER_INVALID = (
    b'<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/'
    b'responseschema/2006"><Response><Error Time="12:00:00.0000000" Id="1"><ErrorCode>600</ErrorCode>'
    b"<Message>Invalid Request</Message><DebugData /></Error></Response></Autodiscover>"
)
_WSDL = b'<?xml version="1.0" encoding="utf-8"?><wsdl:definitions xmlns:wsdl="http://schemas.xmlsoap.org/wsdl/"/>'
_NS_SOAP = "http://schemas.xmlsoap.org/soap/envelope/"
_NS_M = "http://schemas.microsoft.com/exchange/services/2006/messages"
_NS_T = "http://schemas.microsoft.com/exchange/services/2006/types"
_NS_E = "http://schemas.microsoft.com/exchange/services/2006/errors"


@dataclass(frozen=True, slots=True)
class ServerVersion:
    """What one Exchange release says of itself (``ServerVersionInfo``) and which ``RequestServerVersion``
    values it knows (the RequestServerVersion reference page lists them by release)."""

    major: int
    minor: int
    major_build: int
    minor_build: int
    schema: str
    knows: frozenset[str]

    @property
    def has_user_photos(self) -> bool:
        """GetUserPhoto "was introduced in Exchange Server 2013" (version 15)."""
        return self.major >= 15

    def header(self) -> str:
        """The ``ServerVersionInfo`` SOAP header of its answers."""
        return (
            f'<s:Header><h:ServerVersionInfo MajorVersion="{self.major}" MinorVersion="{self.minor}" '
            f'MajorBuildNumber="{self.major_build}" MinorBuildNumber="{self.minor_build}" Version="{self.schema}" '
            f'xmlns:h="{_NS_T}" xmlns="{_NS_T}"/></s:Header>'
        )


_VERSIONS_2010_SP1 = frozenset({"Exchange2007", "Exchange2007_SP1", "Exchange2010", "Exchange2010_SP1"})
#: The documented examples of ServerVersionInfo (see the module docstring).
SERVER_VERSIONS = {
    "Exchange2010_SP1": ServerVersion(14, 0, 478, 0, "Exchange2010_SP1", _VERSIONS_2010_SP1),
    "Exchange2013": ServerVersion(
        15, 0, 556, 8, "Exchange2013", _VERSIONS_2010_SP1 | {"Exchange2010_SP2", "Exchange2013", "Exchange2013_SP1"}
    ),
}


def size_code(pixels: int) -> str:
    """``HR648x648`` for 648."""
    return f"HR{pixels}x{pixels}"


def _pixels(code: str) -> int | None:
    match = re.fullmatch(r"HR(\d+)x(\d+)", code, re.IGNORECASE)
    if match is None or match[1] != match[2] or int(match[1]) not in HD_SIZES:
        return None
    return int(match[1])


@dataclass
class EwsConfig:
    """One emulated Exchange organisation. Defaults follow Exchange 2013+'s documented defaults."""

    #: Generated mailboxes ``user00001@<domain>``...; tests and the demo add their own with the admin API.
    mailboxes: int = 0
    photo_ratio: float = 0.5
    #: Share of generated mailboxes *without* an HD photo whose AD account has a ``thumbnailPhoto``.
    thumbnail_ratio: float = 0.2
    seed: int = 1
    domain: str = "contoso.example"
    #: ASSUMPTION: added to every EWS call (no published figure).
    latency_ms: float = 0.0
    #: EWSMaxConcurrency of the service account's throttling policy (27 by default since Exchange 2013).
    max_concurrency: int | None = 27
    #: The account's budget as requests per second with ``burst`` in reserve; None: no budget limit.
    budget_per_s: float | None = None
    burst: int = 300
    faults: FaultSpec = None
    #: Authentication schemes the EWS virtual directory offers, in the order of its WWW-Authenticate.
    auth: tuple[Literal["negotiate", "ntlm", "basic", "bearer"], ...] = ("ntlm", "basic")
    #: False: the Negotiate offered takes Kerberos only (IIS's providers ``Negotiate:Kerberos``, or NTLM
    #: refused by the domain's "Network security: Restrict NTLM" policy): NTLM inside it gets the bare
    #: challenge again, with no NTLM challenge (ASSUMPTION: the answer, which Microsoft does not document).
    ntlm_in_negotiate: bool = True
    #: Keytab with the keys of EWS's ``HTTP/<host>`` service principal (needed with "negotiate").
    kerberos_keytab: Path | None = None
    username: str = "svc-mvsync"
    netbios_domain: str = "CONTOSO"
    password: str = field(default_factory=lambda: "Emu-" + secrets.token_urlsafe(12))
    unknown_mailbox: Literal["500", "404"] = "500"
    #: The release EWS runs (``SERVER_VERSIONS``): "Exchange2010_SP1" has no GetUserPhoto.
    #: ``Set-OrganizationConfig -EwsEnabled``: False blocks every request (403).
    ews_enabled: bool = True
    #: ``-EwsApplicationAccessPolicy EnforceAllowList -EwsAllowList``: the user agents let through
    #: (``*`` a wildcard, case ignored); None: no application access policy.
    ews_allow_list: tuple[str, ...] | None = None
    server_version: Literal["Exchange2010_SP1", "Exchange2013"] = "Exchange2013"
    #: A load-balanced pool behind the one EWS URL: the release of each server, each request (once
    #: authenticated) answered by the next in turn; empty: ``server_version`` alone (see the docstring).
    pool: tuple[Literal["Exchange2010_SP1", "Exchange2013"], ...] = ()
    #: What a server older than 2013 answers the REST GetUserPhoto (both ASSUMPTIONS, see the docstring).
    older_rest: Literal["404", "ErrorInvalidServerVersion"] = "404"
    #: IIS's HTTP Redirect of the Default Web Site (to Outlook on the web), inherited by the EWS virtual
    #: directory: every /EWS/ request answered 302 to it, before authentication; None: no redirect.
    http_redirect: str | None = None
    #: Require NTLM's channel binding to the TLS certificate (IIS Extended Protection "Require").
    extended_protection: bool = False
    #: HTTP.sys's ``MaxFieldLength``: a request with a longer header line (a Kerberos ticket of an account
    #: in many groups) is answered 400 "Request Too Long" before IIS sees it; None: no limit.
    max_field_length: int | None = None
    photo_templates: int = 24
    port: int = 0


@dataclass
class Mailbox:
    """One mailbox's photo facts. ``photo`` is the uploaded original; generated ones use a template."""

    email: str
    photo: bytes | None = None
    template: int | None = None
    thumbnail: bytes | None = None
    version: int = 1
    #: Original dimensions (width, height) of the HD photo.
    dims: tuple[int, int] | None = None
    variants: dict[int, bytes] = field(default_factory=dict)
    #: The release of the server that holds it, in a mixed organisation (None: the one EWS runs).
    server_version: str | None = None

    @property
    def has_photo(self) -> bool:
        return self.photo is not None or self.template is not None

    def admin(self) -> dict[str, Any]:
        return {
            "email": self.email,
            "hasPhoto": self.has_photo,
            "hasThumbnail": self.thumbnail is not None,
            "version": self.version,
        }


class _Budget:
    """A token bucket standing in for the account's EWS budget (see the module docstring)."""

    def __init__(self, rate: float | None, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self.tokens, self.at = float(burst), time.monotonic()

    def take(self) -> float:
        """0 when the request may run, else milliseconds until the budget recovers (BackOffMilliseconds)."""
        if self.rate is None:
            return 0.0
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return max(1.0, (1.0 - self.tokens) / self.rate * 1000.0)


def soap_fault(code: str, message: str, backoff_ms: float | None = None, header: str = "") -> bytes:
    """The SOAP fault EWS sends (for a throttled request ``MessageXml`` carries BackOffMilliseconds;
    ``header``: the SOAP header, such as ``ServerVersion.header()``)."""
    extra = ""
    if backoff_ms is not None:
        extra = (
            f'<t:MessageXml xmlns:t="{_NS_T}"><t:Value Name="BackOffMilliseconds">{int(backoff_ms)}</t:Value>'
            "</t:MessageXml>"
        )
    return (
        f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{_NS_SOAP}">{header}<s:Body><s:Fault>'
        f'<faultcode xmlns:a="{_NS_T}">a:{code}</faultcode><faultstring xml:lang="en-US">{message}</faultstring>'
        f'<detail><e:ResponseCode xmlns:e="{_NS_E}">{code}</e:ResponseCode>'
        f'<e:Message xmlns:e="{_NS_E}">{message}</e:Message>{extra}</detail></s:Fault></s:Body></s:Envelope>'
    ).encode()


def error_response(code: str, message: str) -> bytes:
    """A ``GetUserPhotoResponse`` whose ``ResponseClass`` is ``Error``: EWS's way of failing an operation
    inside an HTTP 200, as its response messages do (MS-OXWSCDATA ``ResponseMessageType``: ``MessageText``
    and ``ResponseCode``; ews-throttling-in-exchange lists a 200 with ``ErrorInternalServerError``)."""
    return (
        f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{_NS_SOAP}"><s:Body>'
        f'<GetUserPhotoResponse ResponseClass="Error" xmlns="{_NS_M}"><MessageText>{message}</MessageText>'
        f"<ResponseCode>{code}</ResponseCode><DescriptiveLinkKey>0</DescriptiveLinkKey>"
        "<HasChanged>false</HasChanged></GetUserPhotoResponse></s:Body></s:Envelope>"
    ).encode()


_XML = [("Content-Type", "text/xml; charset=utf-8")]
#: What a server says to a RequestServerVersion it does not know (ResponseCode reference's wording).
_INVALID_VERSION = "The specified server version is invalid."


class EwsService:
    """The mailboxes and the request handling; runs on the emulator's event loop only."""

    def __init__(self, config: EwsConfig, bearer_validator: Callable[[str], bool] | None) -> None:
        self.config = config
        self.mailboxes: dict[str, Mailbox] = {}
        self.templates = PhotoTemplates(config.seed, config.photo_templates)
        self.stats = Stats()
        self.faults = FaultInjector(parse_faults(config.faults), config.seed)
        self.budget = _Budget(config.budget_per_s, config.burst)
        self.latency_s = config.latency_ms / 1000.0
        self.max_concurrency = config.max_concurrency
        self.version = SERVER_VERSIONS[config.server_version]
        self.pool = [SERVER_VERSIONS[name] for name in config.pool]
        self._turn = 0
        self.in_flight = 0
        self.peak_in_flight = 0
        self.bearer_validator = bearer_validator
        #: ``tls-server-end-point`` channel bindings of the server certificate (set by the emulator).
        self.channel_bindings: Any = None
        #: Kerberos principals authenticated so far (tests check who the agent was).
        self.kerberos_clients: set[str] = set()
        self._acceptor: Any = None
        #: Canned answers to the REST GetUserPhoto of one mailbox each (``EwsEmulator.set_answer``), and
        #: how many more requests each answers (None: until it is taken away).
        self.answers: dict[str, Response] = {}
        self.answers_left: dict[str, int] = {}
        #: When each canned answer was sent (``time.monotonic()``), by mailbox: how a client paced its retries.
        self.canned_at: dict[str, list[float]] = {}
        self._generate()

    def _generate(self) -> None:
        import random

        rng = random.Random(f"ews:{self.config.seed}")
        for n in range(1, self.config.mailboxes + 1):
            box = Mailbox(f"user{n:05d}@{self.config.domain}")
            if rng.random() < self.config.photo_ratio:
                box.template = rng.randrange(len(self.templates.specs))
                spec = self.templates.specs[box.template]
                box.dims = (spec.width, spec.height)
            elif rng.random() < self.config.thumbnail_ratio:
                box.thumbnail = splice_marker(self.templates.variant(0, 96), f"ad-thumb {box.email}".encode())
            self.mailboxes[box.email] = box

    # -- admin (on the loop) ------------------------------------------------------------------
    def add_mailbox(
        self, email: str, photo: bytes | None, thumbnail: bytes | None, server_version: str | None = None
    ) -> Mailbox:
        key = email.lower()
        if key in self.mailboxes:
            raise ValueError(f"mailbox {email!r} exists")
        if server_version is not None and server_version not in SERVER_VERSIONS:
            raise ValueError(f"server_version must be one of {', '.join(SERVER_VERSIONS)}")
        box = self.mailboxes[key] = Mailbox(email, server_version=server_version)
        self.set_photo(box, photo)
        box.thumbnail = thumbnail
        return box

    def set_photo(self, box: Mailbox, photo: bytes | None) -> None:
        """Set-UserPhoto: a new picture (or none), a new version and so a new ETag."""
        if photo is not None:
            width, height, _ = image_dimensions(photo)
            box.dims = (width, height)
        box.photo, box.template, box.variants = photo, None, {}
        box.version += 1

    def find(self, email: str) -> Mailbox:
        box = self.mailboxes.get(email.lower())
        if box is None:
            raise KeyError(f"no such mailbox: {email!r}")
        return box

    # -- photos -------------------------------------------------------------------------------
    def _choose(self, box: Mailbox, pixels: int) -> tuple[str, int] | None:
        """Which picture answers a request: ("thumbnail", 0), ("photo", served size) or None (404)."""
        if box.thumbnail is not None and (pixels == HD_SIZES[0] or not box.has_photo):
            return "thumbnail", 0
        if not box.has_photo or box.dims is None:
            return None
        available = [s for s in HD_SIZES if s <= min(box.dims)] or [HD_SIZES[0]]
        fitting = [s for s in available if s <= pixels]
        return "photo", (fitting[-1] if fitting else available[0])

    def etag(self, box: Mailbox, choice: tuple[str, int]) -> str:
        digest = hashlib.sha256(f"{box.email}|{box.version}|{choice[0]}|{choice[1]}".encode()).hexdigest()
        return f'"{digest[:20]}"'

    async def _bytes(self, box: Mailbox, choice: tuple[str, int]) -> bytes:
        kind, size = choice
        if kind == "thumbnail":
            assert box.thumbnail is not None
            return box.thumbnail
        cached = box.variants.get(size)
        if cached is not None:
            return cached
        loop = asyncio.get_running_loop()
        if box.template is not None:
            variant = await loop.run_in_executor(None, self.templates.variant, box.template, size)
            data = splice_marker(variant, f"ews {box.email} v{box.version}".encode())
        else:
            assert box.photo is not None
            data = (await loop.run_in_executor(None, reencode_jpeg, box.photo, size))[0]
        box.variants[size] = data
        return data

    # -- requests -----------------------------------------------------------------------------
    async def handle(self, req: Request) -> Response:
        self.stats.count("requests")
        path = req.path.lower().rstrip("/")
        if self.config.http_redirect is not None and path.startswith("/ews"):
            return Response(302, b"", [("Location", self.config.http_redirect)])
        if path == "/owa" or path.startswith("/owa/"):
            return _owa(path)
        if path == AUTODISCOVER_PATH:  # POX Autodiscover: what is not its request is error 600, in a 200
            return Response(200, _AUTODISCOVER_INVALID, [("Content-Type", "text/xml; charset=utf-8")])
        if path == WSDL_PATH:  # IIS's static file handler: the WSDL to a GET, 405 to anything else
            if req.method in ("GET", "HEAD"):
                return Response(200, _WSDL, [("Content-Type", "text/xml")])
            return Response(405, b"405 - HTTP verb used to access this page is not allowed.", [("Allow", "GET, HEAD")])
        if path not in (PHOTO_PATH, SOAP_PATH):
            return Response(404, b"Not Found")
        if self._too_long(req):
            self.stats.count("request_too_long")
            return Response(400, _REQUEST_TOO_LONG, [("Content-Type", "text/html; charset=us-ascii")])
        denied = self._authenticate(req)
        if denied is not None:
            self.stats.count("unauthorized")
            return denied
        mutual = req.conn.pop("negotiate_reply", None)
        blocked = self._blocked(req)
        response = blocked if blocked is not None else await self._admitted(req, path)
        if mutual is not None:  # the mutual-authentication token goes with the answer (RFC 4559 §5)
            response.headers.append(("WWW-Authenticate", f"Negotiate {mutual}"))
        return response

    def _too_long(self, req: Request) -> bool:
        """Whether a header line (``Name: value``) is over HTTP.sys's ``MaxFieldLength``."""
        limit = self.config.max_field_length
        return limit is not None and any(len(name) + 2 + len(value) > limit for name, value in req.headers.items())

    def _blocked(self, req: Request) -> Response | None:
        """The 403 of EWS closed to the organisation, or to this application by its user agent."""
        agent = req.headers.get("user-agent", "").lower()
        allowed = self.config.ews_allow_list
        if self.config.ews_enabled and (allowed is None or any(fnmatch(agent, a.lower()) for a in allowed)):
            return None
        self.stats.count("blocked")
        return Response(403, b"")

    async def _admitted(self, req: Request, path: str) -> Response:
        if self.max_concurrency is not None and self.in_flight >= self.max_concurrency:
            self.stats.count("throttled")
            self.stats.faults["ErrorExceededConnectionCount"] += 1
            message = "You have exceeded the maximum number of objects that can be returned for the find operation."
            return Response(500, soap_fault("ErrorExceededConnectionCount", message), list(_XML))
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            return await self._serve(req, path)
        finally:
            self.in_flight -= 1

    def _answering(self) -> ServerVersion:
        """The release of the server that answers this request: the next of the pool in turn, if any."""
        if not self.pool:
            return self.version
        version = self.pool[self._turn % len(self.pool)]
        self._turn += 1
        self.stats.count(f"answered_by_{version.schema}")
        return version

    async def _serve(self, req: Request, path: str) -> Response:
        version = self._answering()
        fault = self.faults.draw(req.method, req.target)
        delay = self.latency_s + fault.extra_latency_s
        if delay > 0:
            await asyncio.sleep(delay)
        backoff = self.budget.take()
        if fault.kind == "429" or backoff:
            backoff = backoff or (self.faults.profile.retry_after_s or 1.0) * 1000.0
            self.stats.count("throttled")
            self.stats.faults["ErrorServerBusy"] += 1
            message = "The server cannot service this request right now. Try again later."
            return Response(500, soap_fault("ErrorServerBusy", message, backoff), list(_XML))
        if fault.kind in ("503", "504"):
            self.stats.faults[fault.kind] += 1
            return Response(int(fault.kind), b"Service Unavailable")
        if path == SOAP_PATH:
            response = await self._soap(req, version)
        else:
            response = await self._rest(req, version)
        if fault.kind in ("reset", "truncate"):
            self.stats.faults[fault.kind] += 1
            response.fault = fault.kind
        self.stats.by_status[str(response.status)] += 1
        return response

    async def _rest(self, req: Request, version: ServerVersion) -> Response:
        if req.method != "GET":
            return Response(405, b"Method Not Allowed", [("Allow", "GET")])
        query = req.query
        email, pixels = query.get("email", ""), _pixels(query.get("size", "HR648x648"))
        if pixels is None:
            return Response(400, b"Bad Request: unknown size code")
        if not version.has_user_photos:  # ASSUMPTION (module docstring): no /s/ handler before 2013
            if self.config.older_rest == "ErrorInvalidServerVersion":
                return self._fault(500, "ErrorInvalidServerVersion", _INVALID_VERSION, version)
            return Response(404, b"Not Found")
        canned = self._canned(email.lower())
        if canned is not None:
            return Response(canned.status, canned.body, list(canned.headers))
        box = self.mailboxes.get(email.lower())
        if box is None:
            return Response(404 if self.config.unknown_mailbox == "404" else 500, b"")
        if (elsewhere := self._on_older_server(box, version)) is not None:
            return elsewhere
        self.stats.count("photo_requests")
        choice = self._choose(box, pixels)
        if choice is None:
            return Response(404, b"")
        etag = self.etag(box, choice)
        if req.headers.get("if-none-match") == etag:
            self.stats.count("not_modified")
            return Response(304, b"", [("ETag", etag)])
        data = await self._bytes(box, choice)
        self.stats.count("photo_bytes", len(data))
        self.stats.count("photo_downloads")
        return Response(200, data, [("Content-Type", "image/jpeg"), ("ETag", etag)])

    def _canned(self, key: str) -> Response | None:
        """The canned answer for this mailbox's request, if any (counting down a ``times`` one)."""
        canned = self.answers.get(key)
        if canned is not None:
            self.canned_at.setdefault(key, []).append(time.monotonic())
        left = self.answers_left.get(key)
        if canned is not None and left is not None:
            if left <= 1:
                self.answers.pop(key)
                self.answers_left.pop(key)
            else:
                self.answers_left[key] = left - 1
        return canned

    def _fault(self, status: int, code: str, message: str, version: ServerVersion) -> Response:
        """A SOAP fault with the answering server's ``ServerVersionInfo`` header."""
        return Response(status, soap_fault(code, message, header=version.header()), list(_XML))

    def _on_older_server(self, box: Mailbox, version: ServerVersion) -> Response | None:
        """The fault for a mailbox held by an Exchange server without GetUserPhoto (a mixed organisation)."""
        if box.server_version is None or SERVER_VERSIONS[box.server_version].has_user_photos:
            return None
        message = "The mailbox that was requested doesn't support the specified RequestServerVersion."
        return self._fault(500, "ErrorInvalidSchemaVersionForMailboxVersion", message, version)

    def _unserved_version(self, root: ElementTree.Element, version: ServerVersion) -> Response | None:
        """The fault of a server that does not know the request's RequestServerVersion, or GetUserPhoto."""
        asked = root.find(f".//{{{_NS_T}}}RequestServerVersion")
        if asked is not None and asked.get("Version") not in version.knows:
            return self._fault(500, "ErrorInvalidServerVersion", _INVALID_VERSION, version)
        if not version.has_user_photos and root.find(f".//{{{_NS_M}}}GetUserPhoto") is not None:
            return self._fault(500, "ErrorSchemaValidation", "The request failed schema validation.", version)
        return None

    async def _soap(self, req: Request, version: ServerVersion) -> Response:
        """SOAP GetUserPhoto: ``HasChanged`` and ``PictureData`` instead of 304 and a body."""
        try:
            root = ElementTree.fromstring(req.body)
            email = root.findtext(f".//{{{_NS_M}}}GetUserPhoto/{{{_NS_M}}}Email") or ""
            code = root.findtext(f".//{{{_NS_M}}}GetUserPhoto/{{{_NS_M}}}SizeRequested") or ""
        except ElementTree.ParseError:
            return self._fault(400, "ErrorSchemaValidation", "The request failed schema validation.", version)
        if (unserved := self._unserved_version(root, version)) is not None:
            return unserved
        pixels = _pixels(code)
        box = self.mailboxes.get(email.lower())
        if pixels is None or box is None:  # the operation page: "A 500 HTTP status code will be returned"
            return self._fault(500, "ErrorInvalidRequest", "The request is invalid.", version)
        if (elsewhere := self._on_older_server(box, version)) is not None:
            return elsewhere
        self.stats.count("photo_requests")
        choice = self._choose(box, pixels)
        if choice is None:
            return Response(404, b"")
        etag = self.etag(box, choice)
        changed = req.headers.get("if-none-match") != etag
        data = await self._bytes(box, choice) if changed else b""
        body = (
            f'<?xml version="1.0" encoding="utf-8"?><s:Envelope xmlns:s="{_NS_SOAP}">{version.header()}<s:Body>'
            f'<GetUserPhotoResponse ResponseClass="Success" xmlns="{_NS_M}"><ResponseCode>NoError</ResponseCode>'
            f"<HasChanged>{'true' if changed else 'false'}</HasChanged>"
            f"<PictureData>{base64.b64encode(data).decode()}</PictureData><ContentType>image/jpeg</ContentType>"
            "</GetUserPhotoResponse></s:Body></s:Envelope>"
        )
        return Response(200, body.encode(), [*_XML, ("ETag", etag)])

    # -- authentication -----------------------------------------------------------------------
    def _challenge(self, extra: str | None = None) -> Response:
        offers = {
            "negotiate": "Negotiate",
            "ntlm": "NTLM",
            "basic": 'Basic realm="mail.contoso.example"',
            "bearer": "Bearer",
        }
        schemes = [extra] if extra else [offers[s] for s in self.config.auth]
        headers = [("WWW-Authenticate", scheme) for scheme in schemes]
        return Response(401, b"401 - Unauthorized: Access is denied due to invalid credentials.", headers)

    def _authenticate(self, req: Request) -> Response | None:
        """None when the request may proceed; else the 401 to send (a challenge or a refusal)."""
        if req.conn.get("user"):
            return None  # an NTLM-authenticated connection (IIS keeps it authenticated)
        scheme, _, token = req.headers.get("authorization", "").partition(" ")
        scheme = scheme.lower()
        if scheme == "negotiate" and "negotiate" in self.config.auth and not _is_ntlm(token):
            return self._kerberos(req, token.strip())
        if scheme not in self.config.auth and not (scheme == "negotiate" and "ntlm" in self.config.auth):
            return self._challenge()
        if scheme == "negotiate" and not self.config.ntlm_in_negotiate:  # Kerberos only: NTLM inside is refused
            return self._challenge()
        if scheme == "basic":
            if self._basic_ok(token):
                return None
            self.stats.count("failed_logons")
            return self._challenge()
        if scheme == "bearer":
            ok = self.bearer_validator is not None and self.bearer_validator(token.strip())
            return None if ok else self._challenge('Bearer error="invalid_token"')
        return self._ntlm(req, scheme, token.strip())

    def _kerberos(self, req: Request, token: str) -> Response | None:
        """Accept a Kerberos ticket (SPNEGO) with the service keytab; one leg, as Kerberos needs."""
        import gssapi
        from gssapi.raw.misc import GSSError

        try:
            if self._acceptor is None:
                keytab = f"FILE:{self.config.kerberos_keytab}"
                self._acceptor = gssapi.Credentials(usage="accept", store={"keytab": keytab})
            bindings = self.channel_bindings
            gss_bindings = (
                gssapi.raw.ChannelBindings(application_data=bindings.application_data) if bindings is not None else None
            )
            context = gssapi.SecurityContext(creds=self._acceptor, usage="accept", channel_bindings=gss_bindings)
            answer = context.step(base64.b64decode(token))
            # a failed step may return the KRB-ERROR token and raise only here (python-gssapi keeps it)
            complete, principal = context.complete, str(context.initiator_name)
        except (GSSError, binascii.Error):
            self.stats.count("negotiate_refused")
            return self._challenge("Negotiate")
        if not complete:  # Kerberos completes in one leg; nothing else is offered under SPNEGO
            return self._challenge("Negotiate")
        self.kerberos_clients.add(principal)
        self.stats.count("negotiate_ok")
        req.conn["user"] = principal
        if answer:
            req.conn["negotiate_reply"] = base64.b64encode(answer).decode()
        return None

    def _basic_ok(self, token: str) -> bool:
        try:
            user, _, password = base64.b64decode(token.strip()).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        name = user.rpartition("\\")[2].partition("@")[0].lower()
        return name == self.config.username.lower() and secrets.compare_digest(password, self.config.password)

    def _ntlm(self, req: Request, scheme: str, token: str) -> Response | None:
        import spnego

        label = "Negotiate" if scheme == "negotiate" else "NTLM"
        raw = b""
        try:
            raw = base64.b64decode(token)
            context = req.conn.get("ntlm")
            if context is None or raw[8:12] == b"\x01\x00\x00\x00":  # a NEGOTIATE message starts afresh
                context = req.conn["ntlm"] = spnego.server(protocol="ntlm", channel_bindings=self.channel_bindings)
            assert isinstance(context, spnego.ContextProxy)
            answer = context.step(raw)
        except Exception:  # pyspnego raises several types for a wrong password or a garbled token
            if raw[8:12] == b"\x03\x00\x00\x00":  # an AUTHENTICATE refused
                self.stats.count("failed_logons")  # what the DC counts toward the account's lockout
            req.conn.pop("ntlm", None)
            return self._challenge()
        if not context.complete:
            return self._challenge(f"{label} {base64.b64encode(answer or b'').decode()}")
        req.conn["user"] = context.client_principal or "?"
        req.conn.pop("ntlm", None)
        return None


_OWA_SIGN_IN = (
    b'<!DOCTYPE html><html><head><title>Outlook</title></head><body><form action="/owa/auth.owa" method="POST">'
    b'<input name="username"><input name="password" type="password"></form></body></html>'
)


def _owa(path: str) -> Response:
    """Outlook on the web with forms-based authentication: its sign-in page, where every other /owa/
    request is sent (see the docstring)."""
    if path == "/owa/auth/logon.aspx":
        return Response(200, _OWA_SIGN_IN, [("Content-Type", "text/html; charset=utf-8")])
    return Response(302, b"", [("Location", "/owa/auth/logon.aspx?replaceCurrent=1&url=%2fowa%2f")])


def _is_ntlm(token: str) -> bool:
    """Whether a Negotiate header carries raw NTLM (what Windows clients send when Kerberos is out)."""
    try:
        return base64.b64decode(token.strip()).startswith(b"NTLMSSP\x00")
    except binascii.Error:
        return False


def _channel_bindings(cert_pem: bytes) -> Any:
    """RFC 5929 ``tls-server-end-point``: the certificate hashed with its signature hash (SHA-256 for MD5/SHA-1)."""
    import spnego.channel_bindings
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    cert = x509.load_pem_x509_certificate(cert_pem)
    algorithm = cert.signature_hash_algorithm
    if algorithm is None or algorithm.name in ("md5", "sha1"):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(cert.public_bytes(serialization.Encoding.DER))
    return spnego.channel_bindings.GssChannelBindings(application_data=b"tls-server-end-point:" + digest.finalize())


class EwsEmulator:
    """Exchange Server's EWS photo endpoints on ``https://127.0.0.1:PORT`` (see the module docstring)."""

    def __init__(
        self, config: EwsConfig | None = None, *, bearer_validator: Callable[[str], bool] | None = None
    ) -> None:
        self.config = config or EwsConfig()
        self.service = EwsService(self.config, bearer_validator)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: HttpServer | None = None
        self._tmp: Path | None = None
        self._saved_user_file: str | None = None
        self._info: dict[str, Any] = {}

    def start(self) -> EwsEmulator:
        tls = server_tls("mvsync-ews-", "mvsync EWS emulator CA")
        self._tmp = tls.folder
        context = tls.context
        cfg = self.config
        if "negotiate" in cfg.auth and cfg.kerberos_keytab is None:
            self.stop()
            raise ValueError("EwsConfig: auth offers negotiate, so kerberos_keytab (the HTTP/<host> keys) is needed")
        if cfg.extended_protection:
            self.service.channel_bindings = _channel_bindings(tls.certificate_pem)
        users = self._tmp / "ntlm-users"
        users.write_text(f"{cfg.netbios_domain}:{cfg.username}:{cfg.password}\n", encoding="utf-8")
        users.chmod(0o600)
        self._saved_user_file = os.environ.get("NTLM_USER_FILE")
        os.environ["NTLM_USER_FILE"] = str(users)
        self._loop = asyncio.new_event_loop()
        self._server = HttpServer(self.service.handle, context)
        self._thread = threading.Thread(target=self._loop.run_forever, name="ews-emulator", daemon=True)
        self._thread.start()
        try:
            port = asyncio.run_coroutine_threadsafe(self._server.start(cfg.port), self._loop).result(30)
        except BaseException:
            self.stop()
            raise
        base = f"https://127.0.0.1:{port}"
        self._info = {
            "ews_url": f"{base}/EWS/Exchange.asmx",
            "ca_cert": str(self._tmp / "ca.pem"),
            "username": f"{cfg.netbios_domain}\\{cfg.username}",
            "password": cfg.password,
            "port": port,
            "max_concurrency": cfg.max_concurrency,
        }
        return self

    def stop(self) -> None:
        stop_server_thread(self._loop, self._thread, self._server)
        self._loop = self._thread = self._server = None
        if self._tmp is not None:
            if self._saved_user_file is None:
                os.environ.pop("NTLM_USER_FILE", None)
            else:
                os.environ["NTLM_USER_FILE"] = self._saved_user_file
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> EwsEmulator:
        return self if self._thread is not None else self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    @property
    def info(self) -> dict[str, Any]:
        """ews_url, ca_cert, username (DOMAIN\\user), password, port, max_concurrency."""
        if not self._info:
            raise RuntimeError("start() the EWS emulator first")
        return dict(self._info)

    # -- admin (any thread) ---------------------------------------------------------------------
    def _call(self, fn: Callable[[], T]) -> T:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or threading.current_thread() is thread:
            return fn()

        async def run() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), loop).result(30)

    def add_mailbox(
        self,
        email: str,
        *,
        photo: bytes | None = None,
        thumbnail: bytes | None = None,
        server_version: str | None = None,
    ) -> dict[str, Any]:
        """An on-premises mailbox with an HD photo and/or an AD ``thumbnailPhoto`` (either may be None);
        ``server_version``: held by a server of that release (``SERVER_VERSIONS``) in a mixed organisation."""
        return self._call(lambda: self.service.add_mailbox(email, photo, thumbnail, server_version).admin())

    def set_photo(self, email: str, photo: bytes | None) -> dict[str, Any]:
        """``Set-UserPhoto`` (or ``Remove-UserPhoto`` with None): the ETag changes."""

        def run() -> dict[str, Any]:
            box = self.service.find(email)
            self.service.set_photo(box, photo)
            return box.admin()

        return self._call(run)

    def set_thumbnail(self, email: str, thumbnail: bytes | None) -> None:
        def run() -> None:
            self.service.find(email).thumbnail = thumbnail

        self._call(run)

    def remove_mailbox(self, email: str) -> None:
        self._call(lambda: self.service.mailboxes.pop(email.lower(), None))

    def set_answer(
        self,
        email: str,
        status: int | None,
        body: bytes = b"",
        content_type: str = "text/xml; charset=utf-8",
        headers: dict[str, str] | None = None,
        times: int | None = None,
    ) -> None:
        """Answer the REST ``GetUserPhoto`` of ``email`` with this (None: as the mailbox would again),
        to the next ``times`` requests only when given (then as the mailbox would again)."""
        key = email.lower()
        fields = [("Content-Type", content_type), *(headers or {}).items()]

        def run() -> None:
            self.service.answers_left.pop(key, None)
            if status is None:
                self.service.answers.pop(key, None)
                return
            self.service.answers[key] = Response(status, body, fields)
            if times is not None:
                self.service.answers_left[key] = times

        self._call(run)

    def canned_times(self, email: str) -> list[float]:
        """When the canned answers of ``email`` were sent (``time.monotonic()``, this process's clock)."""
        return self._call(lambda: list(self.service.canned_at.get(email.lower(), [])))

    def mailboxes(self) -> list[dict[str, Any]]:
        return self._call(lambda: [box.admin() for box in self.service.mailboxes.values()])

    def set_faults(self, profile: FaultSpec) -> None:
        parsed = parse_faults(profile)

        def run() -> None:
            self.service.faults.profile = parsed

        self._call(run)

    def set_limits(
        self, *, max_concurrency: int | None = 27, budget_per_s: float | None = None, burst: int = 300
    ) -> None:
        """EWSMaxConcurrency and the budget (Set-ThrottlingPolicy), mid-run."""

        def run() -> None:
            self.service.max_concurrency = max_concurrency
            self.service.budget = _Budget(budget_per_s, burst)

        self._call(run)

    def stats(self) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            out = self.service.stats.snapshot()
            out["peak_in_flight"] = self.service.peak_in_flight
            out["kerberos_clients"] = sorted(self.service.kerberos_clients)
            return out

        return self._call(run)
