"""Who may use the console, and the headers every answer carries.

The console shows personal data (names, mail addresses, photos), so the default is to be reachable
only from this machine. Bound to any other address it must be told how to authenticate people
(``MVSYNC_UI_TOKEN``, or ``MVSYNC_UI_USER`` + ``MVSYNC_UI_PASSWORD``); it refuses to start
otherwise rather than publish the directory to the network.

On loopback without credentials, requests must name a loopback host in ``Host``: a web page the
operator visits could otherwise re-point its own DNS name at 127.0.0.1 (DNS rebinding) and read
the console through the operator's browser.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import os
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response

__all__ = [
    "COOKIE_NAME",
    "CSP",
    "MIN_TOKEN_CHARS",
    "AccessPolicy",
    "InsecureBindError",
    "apply_security_headers",
    "cookie_name",
    "is_loopback",
]

#: No scripts at all, styles and images only from the console itself, never framed.
CSP = (
    "default-src 'none'; img-src 'self'; style-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
COOKIE_NAME = "mvsync_ui"
_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


class InsecureBindError(Exception):
    """Asked to listen beyond loopback without any way to authenticate people, or with credentials
    that cannot work or protect (a user name with a colon, a token short enough to guess)."""


#: The shortest ``MVSYNC_UI_TOKEN`` accepted: 32 characters are 128 bits even as hex (``openssl rand -hex
#: 16``), beyond guessing through the console; ``secrets.token_urlsafe(32)`` gives 43.
MIN_TOKEN_CHARS = 32


def _short_token(length: int) -> str:
    """Why a token is refused, and how to make one (never the token itself: it is a secret)."""
    return (
        f"MVSYNC_UI_TOKEN is {length} characters long: at least {MIN_TOKEN_CHARS} are needed, or anyone who can "
        "reach the console could guess it; generate one with "
        '`python -c "import secrets; print(secrets.token_urlsafe(32))"` (or `openssl rand -hex 32`) and set it'
    )


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and the localhost names (an empty host means 'every address')."""
    name = host.strip("[]").lower()
    if name in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """The name part of a ``Host`` header (``[::1]:8765`` -> ``::1``)."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


@dataclass(frozen=True)
class AccessPolicy:
    """How requests are authenticated. With neither a token nor a user, only loopback is allowed."""

    token: str | None = None
    user: str | None = None
    password: str | None = None
    #: Host names accepted when no credentials are configured (DNS-rebinding guard).
    allowed_hosts: frozenset[str] = frozenset({"127.0.0.1", "::1", "localhost"})

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, *, bind_host: str = "127.0.0.1") -> AccessPolicy:
        """The policy from ``MVSYNC_UI_TOKEN`` / ``MVSYNC_UI_USER`` / ``MVSYNC_UI_PASSWORD``."""
        values = os.environ if env is None else env
        user, password = values.get("MVSYNC_UI_USER") or None, values.get("MVSYNC_UI_PASSWORD") or None
        if (user is None) != (password is None):
            msg = "set both MVSYNC_UI_USER and MVSYNC_UI_PASSWORD for basic authentication, or neither"
            raise InsecureBindError(msg)
        if user is not None and ":" in user:  # RFC 7617: "user:password" is split at the first colon
            msg = f"MVSYNC_UI_USER may not hold a colon ({user!r}): basic authentication sends user:password, so "
            msg += "nobody could sign in; choose a user name without one (any text, not an account of a directory)"
            raise InsecureBindError(msg)
        hosts = {"127.0.0.1", "::1", "localhost", bind_host.strip("[]").lower()}
        token = values.get("MVSYNC_UI_TOKEN") or None
        if token is not None and len(token) < MIN_TOKEN_CHARS:
            raise InsecureBindError(_short_token(len(token)))
        return cls(token, user, password, frozenset(hosts))

    @property
    def authenticated(self) -> bool:
        return self.token is not None or self.user is not None

    def check_bind(self, host: str) -> None:
        """Refuse a non-loopback address unless people must authenticate."""
        if not is_loopback(host) and not self.authenticated:
            msg = (
                f"refusing to listen on {host or 'every address'} without authentication: set MVSYNC_UI_TOKEN "
                "(or MVSYNC_UI_USER and MVSYNC_UI_PASSWORD), or keep the default --host 127.0.0.1"
            )
            raise InsecureBindError(msg)

    def session_value(self) -> str:
        """The cookie value: derived from the token, so a leaked cookie does not reveal the token."""
        assert self.token is not None
        return hmac.new(self.token.encode(), b"mvsync-ui-session", hashlib.sha256).hexdigest()

    def _basic_ok(self, header: str) -> bool:
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or self.user is None or self.password is None:
            return False
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return False
        # both compared, always, so the answer's timing says nothing about which one was wrong
        ok_user = hmac.compare_digest(user.encode(), self.user.encode())
        ok_password = hmac.compare_digest(password.encode(), self.password.encode())
        return bool(sep) and ok_user and ok_password

    def _token_ok(self, request: Request) -> bool:
        if self.token is None:
            return False
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), self.token.encode()):
            return True
        cookie = request.cookies.get(cookie_name(request), "")
        return hmac.compare_digest(cookie.encode(), self.session_value().encode())

    async def middleware(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """Authenticate (or trade ``?token=`` for a cookie), then add the security headers."""
        response = await self._authorize(request)
        if response is None:
            response = await call_next(request)
        apply_security_headers(response)
        return response

    def _unknown_host(self, request: Request) -> str:
        """Why a request naming another host is refused, the console's own address, and how to allow others.

        Why so much: the one who meets it is often behind a reverse proxy that passes its own ``Host``, or
        opened the console by the server's name; "use http://127.0.0.1:PORT/" named neither the host it got
        nor the port, and not the sign-in that lets other names in.
        """
        host, port = request.scope.get("server") or ("127.0.0.1", None)
        address = f"http://{f'[{host}]' if ':' in host else host}" + (f":{port}/" if port else "/")
        given = request.headers.get("host", "")[:100]
        return (
            f"this console answers only as {', '.join(sorted(self.allowed_hosts))}, not as {given!r} (a page of "
            f"another site could point its own name at this machine: DNS rebinding): open {address} on this "
            "machine; to reach it by another name (a reverse proxy, another machine), set MVSYNC_UI_TOKEN (or "
            "MVSYNC_UI_USER and MVSYNC_UI_PASSWORD) where mvsync ui runs, so that people sign in"
        )

    async def _authorize(self, request: Request) -> Response | None:
        if not self.authenticated:
            host = _host_name(request.headers.get("host", "")).lower()
            if host not in self.allowed_hosts:
                return PlainTextResponse(self._unknown_host(request), status_code=421)
            return None
        if self.token is not None and "token" in request.query_params:
            given = request.query_params["token"]
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return PlainTextResponse("invalid token", status_code=401)
            # trade the token for a cookie at once, so it leaves the address bar and the history
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            # one leading slash: "//host/..." (or "/\\host", which browsers read alike) would send the
            # browser, cookie in hand, to another site
            target = "/" + request.url.path.lstrip("/\\") + (f"?{urlencode(rest)}" if rest else "")
            redirect = RedirectResponse(target, status_code=303)
            # Lax, not Strict: a browser withholds a Strict cookie from a navigation that began on another
            # site (a link in a runbook, a wiki, an alert), redirects included, so that link said
            # "authentication required". Lax still keeps it from other sites' images, frames and scripts,
            # and the console takes GET and HEAD only: a link can make it change nothing
            redirect.set_cookie(
                cookie_name(request),
                self.session_value(),
                httponly=True,
                samesite="lax",
                secure=request.url.scheme == "https",
                path="/",
            )
            return redirect
        if self._token_ok(request) or self._basic_ok(request.headers.get("authorization", "")):
            return None
        headers = {"WWW-Authenticate": 'Basic realm="mvsync", charset="UTF-8"'} if self.user else {}
        hint = "sign in" if self.user else "open the console with ?token=... (MVSYNC_UI_TOKEN) or send a bearer token"
        return PlainTextResponse(f"authentication required: {hint}", status_code=401, headers=headers)


def cookie_name(request: Request) -> str:
    """The sign-in cookie's name: :data:`COOKIE_NAME` and the port the console listens on.

    Why the port: browsers keep cookies per host, not per port, so two consoles on one machine (a test
    store beside production, each with its own token) shared one cookie, and signing in to one signed
    out of the other. The socket's port, not the ``Host`` header's: a proxy in front does not change it.
    """
    server = request.scope.get("server")
    return f"{COOKIE_NAME}_{server[1]}" if server and server[1] else COOKIE_NAME


def apply_security_headers(response: Response) -> None:
    """Headers on every answer: no sniffing, a script-free CSP, no framing, no referrer."""
    headers = response.headers
    headers["X-Content-Type-Options"] = "nosniff"
    headers["Content-Security-Policy"] = CSP
    headers["X-Frame-Options"] = "DENY"
    headers["Referrer-Policy"] = "no-referrer"
    headers["Cross-Origin-Resource-Policy"] = "same-origin"
    if "cache-control" not in headers:
        # pages show personal data: not kept by the browser or proxies
        headers["Cache-Control"] = "no-store"
