"""Logging set-up for the CLI and services: human or JSON lines, with secrets scrubbed.

Why a filter on every handler rather than care at each call site: connectors log exceptions from
HTTP and LDAP libraries whose messages can embed request headers, URLs with query strings, or
connection strings. :class:`RedactingFilter` rewrites every record (message, arguments and the
formatted traceback) before any handler sees it, so a bearer token, refresh token, client secret or
password never reaches a log file, whatever logged it.

``setup_logging(level, json_format=True)`` emits one JSON object per line (``ts``, ``level``,
``logger``, ``message``, ``exc`` and any ``extra=`` fields) for log shippers.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any, TextIO

from connector.timestamps import utc_iso

__all__ = ["REDACTED", "JsonFormatter", "RedactingFilter", "logs_as_json", "mask_url", "redact", "setup_logging"]

REDACTED = "***"

#: Keys whose values are credentials. ``device_code``: the OAuth device flow's secret half, which
#: MSAL's ``token_cache`` DEBUG event logs (as ``code`` too, for ADFS): anyone holding it while a
#: sign-in is pending gets that sign-in's tokens. Its ``user_code`` is not here: `mvsync auth login`
#: shows it to the user on purpose (the device flow's prompt), and it redeems nothing without the
#: device code.
_SECRET_KEYS = (
    r"password|passwd|pwd|secret|client_secret|access_token|refresh_token|id_token|token|api_key|apikey"
    r"|authorization|private_key|bindpw|credentials?|device_code"
)
#: ``key=value``, ``key: value``, ``"key": "value"`` (JSON), ``key='value'``
_KEY_VALUE = re.compile(rf"""(?i)(["']?\b(?:{_SECRET_KEYS})\b["']?\s*[:=]\s*)(["']?)([^"'\s,;&}}]+)\2""")
#: ``code``'s value when it is a credential (OAuth's authorization code, MSAL's copy of the device
#: code): long, with a digit. Why not any ``code``: Graph's and Entra's error codes
#: (``"code": "ResourceNotFound"``) are what an operator reads a failure by.
_CODE_VALUE = re.compile(r"""(?i)(["']?\bcode\b["']?\s*[:=]\s*)(["']?)((?=[^"'\s,;&}]*\d)[^"'\s,;&}]{32,})\2""")
#: An HTTP authentication scheme and its credentials (``Authorization: Basic <b64>``, requests-gssapi's
#: DEBUG "Authorization header: Negotiate <Kerberos ticket>"), masked before ``_KEY_VALUE``, which masked
#: only the scheme's name and left the credentials. A token has an upper-case letter, a digit, or one of
#: ``+/=`` (base64), so that a message's "offers Basic authentication" or "the Negotiate provider." stays.
_SCHEME_TOKEN = re.compile(r"\b(?i:(bearer|basic|negotiate|ntlm|kerberos))\s+(?=[\w\-.~+/]*[A-Z0-9+/=])[\w\-.~+/]+=*")
#: An NTLM message in base64 ("NTLMSSP\0..."), wherever it is (pyspnego's DEBUG "NTLM step output: ...").
#: A challenge with its response can be cracked offline for the password (NetNTLMv2).
_NTLM_MESSAGE = re.compile(r"TlRMTVNTUA[A-Za-z0-9+/]*=*")
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (_CODE_VALUE, r"\1\2" + REDACTED + r"\2"),
    # JSON Web Tokens anywhere (three base64url parts, the first starting with '{"' = 'eyJ')
    (re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*"), REDACTED),
    # Microsoft refresh tokens and similar opaque tokens ("0.A..." / "1.A..." / "M.R3_..." prefixes, long)
    (
        re.compile(r"\b(?:[01]\.A[A-Za-z0-9_\-]{40,}|M\.[A-Z0-9]{2,}_[A-Za-z0-9!*_\-.$]{40,})[A-Za-z0-9_\-.!*$]*"),
        REDACTED,
    ),
)


def _mask_value(found: re.Match[str]) -> str:
    """A secret key's value masked, unless the key is a setting named in prose: ``agents.exo.settings.
    refresh_token: secrets may only be given as ...`` (a dotted path, a colon, a space: how every
    message about a setting names it) is about the setting, and masking "secrets" garbled the message
    (``--json``, ``--log-format json``) while hiding nothing. Quoted keys and ``=`` are still masked."""
    prefix, quote, _ = found.groups()
    start = found.start()
    if (
        not quote
        and start > 0
        and found.string[start - 1] == "."
        and prefix.rstrip().endswith(":")
        and prefix[-1:].isspace()
    ):
        return found.group()
    return f"{prefix}{quote}{REDACTED}{quote}"


#: A URL in free text: a scheme and ``://``, up to white space.
_URL = re.compile(r"(?i)\b[a-z][a-z0-9+.\-]*://\S+")
#: A password given as a URL's query parameter (``?password=``, as libpq and psycopg take it).
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)[^&#\s]*")


def mask_url(url: str) -> str:
    """``url`` with its password replaced by ``***``: in the user info, and a ``password=`` in the query.

    The user info runs to the *last* ``@`` of the network location (which ends at the first ``/``,
    ``?`` or ``#``, as RFC 3986 has it): a password typed with a raw ``@`` (not ``%40``) would
    otherwise show its tail as the host. Used wherever a URL is shown (the store's name in messages
    and history) and by :func:`redact` for URLs inside any logged text.
    """
    scheme, sep, rest = url.partition("://")
    if sep:
        end = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
        userinfo, at, host = rest[:end].rpartition("@")
        if at and ":" in userinfo:
            url = f"{scheme}{sep}{userinfo.partition(':')[0]}:{REDACTED}@{host}{rest[end:]}"
    return _QUERY_PASSWORD.sub(r"\1" + REDACTED, url)


def redact(text: str) -> str:
    """``text`` with anything that looks like a credential replaced by ``***``."""
    text = _URL.sub(lambda found: mask_url(found.group()), text)
    text = _SCHEME_TOKEN.sub(r"\1 " + REDACTED, text)
    text = _NTLM_MESSAGE.sub(REDACTED, text)
    text = _KEY_VALUE.sub(_mask_value, text)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Scrubs secrets from a record's message, arguments and exception text (attach to handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = str(record.msg)
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
            record.exc_info = None  # the scrubbed text is what formatters print
        return True


#: LogRecord attributes that are not ``extra=`` fields.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts`` (UTC ISO 8601), ``level``, ``logger``, ``message`` ..."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": utc_iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exc"] = record.exc_text
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                # strings are redacted too: an extra= field may carry a URL, a header or a detail text
                doc[key] = value if isinstance(value, int | float | bool | None) else redact(str(value))
        return json.dumps(doc, ensure_ascii=False, default=str)


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time of each record (it may be swapped later)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def setup_logging(
    level: int | str = "INFO", json_format: bool = False, stream: TextIO | None = None
) -> logging.Handler:
    """Configure the ``mvsync`` logger (and warnings from libraries) on one redacting handler.

    Replaces a handler installed by an earlier call, so calling it twice does not double lines.
    Returns the handler.
    """
    handler: logging.Handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.addFilter(RedactingFilter())
    handler.setFormatter(
        JsonFormatter() if json_format else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    handler._mvsync = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_mvsync", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    numeric = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        msg = f"unknown log level {level!r}"
        raise ValueError(msg)
    logging.getLogger("mvsync").setLevel(numeric)
    root.setLevel(min(numeric, logging.WARNING))
    for name in _TOKEN_LOGGERS:  # their DEBUG records are the authentication's tokens, whole
        logging.getLogger(name).setLevel(max(numeric, logging.INFO))
    return handler


#: Libraries whose DEBUG records dump authentication tokens: pyspnego's NTLM and GSSAPI messages ("NTLM
#: step output: ..."; a challenge with its response is crackable offline), requests-gssapi's Authorization
#: header (a Kerberos service ticket). ``redact`` masks those it recognises; these say nothing else.
_TOKEN_LOGGERS = ("spnego", "requests_gssapi")


def logs_as_json() -> bool:
    """Whether :func:`setup_logging` installed the JSON format (``--log-format json``).

    Why: what the CLI writes on stderr besides log records (its final ``error:`` line) then goes
    out as a record too, so that a log shipper reading stderr meets only JSON lines.
    """
    return any(
        getattr(h, "_mvsync", False) and isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers
    )
