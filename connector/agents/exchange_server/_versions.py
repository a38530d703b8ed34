"""Which Exchange release EWS runs: GetUserPhoto needs Exchange 2013 or later.

GetUserPhoto "was introduced in Exchange Server 2013" (getuserphoto-operation, field-notes-2.md §1.3).
An Exchange 2010 server does not serve its REST form, and what it answers there is undocumented:
a 404 reads as "no photo" for every mailbox, which would take every photo out of the connector space.
So the step's first request is the operation page's own SOAP request, with ``RequestServerVersion
Exchange2013``: a server older than 2013 does not know that version and says so with the SOAP fault
``ErrorInvalidServerVersion`` ("an invalid request server version was specified in the request",
EWS ResponseCode reference; exchangelib reads the same fault as "Invalid server version"). Its
``ServerVersionInfo`` SOAP header, when the answer carries one ("the version of the server that
responded", same page), names the release.
"""

from __future__ import annotations

import re
from xml.sax.saxutils import escape

__all__ = ["older_release", "older_than_2013", "probe"]

_PROBE = (
    '<?xml version="1.0" encoding="utf-8"?>'
    '<soap:Envelope xmlns:soap="http://schemas.xmlsoap.org/soap/envelope/" '
    'xmlns:t="http://schemas.microsoft.com/exchange/services/2006/types" '
    'xmlns:m="http://schemas.microsoft.com/exchange/services/2006/messages">'
    '<soap:Header><t:RequestServerVersion Version="Exchange2013"/></soap:Header>'
    "<soap:Body><m:GetUserPhoto><m:Email>{email}</m:Email><m:SizeRequested>{size}</m:SizeRequested>"
    "</m:GetUserPhoto></soap:Body></soap:Envelope>"
)
_SERVER_VERSION = re.compile(rb"<(?:[\w.-]+:)?ServerVersionInfo\b([^>]{0,2000})>")
_ATTRIBUTE = re.compile(rb'\b(MajorVersion|MinorVersion|MajorBuildNumber|MinorBuildNumber|Version)="([\w.-]{1,40})"')
#: MajorVersion of the releases without GetUserPhoto (Exchange 2013 and later are 15).
_PRODUCTS = {8: "Exchange 2007", 14: "Exchange 2010"}
_UNKNOWN_VERSION = "ErrorInvalidServerVersion"


def probe(email: str, size: str = "HR48x48") -> bytes:
    """The GetUserPhoto operation page's SOAP request for ``email``'s picture at ``size`` (the smallest
    unless told: the check wants the server's answer, not a photo)."""
    return _PROBE.format(email=escape(email), size=escape(size)).encode()


def _server_version(body: bytes) -> dict[str, str]:
    """The attributes of the answer's ``ServerVersionInfo`` header; empty when it has none."""
    found = _SERVER_VERSION.search(body)
    if found is None:
        return {}
    return {name.decode(): value.decode() for name, value in _ATTRIBUTE.findall(found[1])}


def _release(version: dict[str, str]) -> str:
    """``Exchange 2010 (version 14.0.478.0, schema Exchange2010_SP1)``, from what ServerVersionInfo says."""
    major = version.get("MajorVersion", "")
    product = _PRODUCTS.get(int(major), "older than Exchange 2013") if major.isdigit() else "older than Exchange 2013"
    parts = [version.get(key, "?") for key in ("MajorVersion", "MinorVersion", "MajorBuildNumber", "MinorBuildNumber")]
    schema = f", schema {version['Version']}" if "Version" in version else ""
    return f"{product} (version {'.'.join(parts)}{schema})"


def older_release(body: bytes, fault_code: str | None) -> str | None:
    """The release that answered the probe (``body``, its SOAP fault's code), when it is older than
    Exchange 2013 ("Exchange 2010 (version 14.0.478.0, schema Exchange2010_SP1)"); None when it is not."""
    version = _server_version(body)
    major = version.get("MajorVersion", "")
    if major.isdigit():
        if int(major) >= 15:  # a server that names itself 2013 or later, whatever the fault
            return None
    elif fault_code != _UNKNOWN_VERSION:
        return None
    return _release(version) if version else "older than Exchange 2013 (its answer names no version)"


def older_than_2013(where: str, body: bytes, fault_code: str | None, said: str) -> str | None:
    """What to tell the administrator when the probe's answer (``body``, its SOAP fault's code and
    text ``said``) comes from a server older than Exchange 2013; None when it does not."""
    release = older_release(body, fault_code)
    if release is None:
        return None
    why = f": it refused RequestServerVersion Exchange2013 ({said})" if fault_code else " (its ServerVersionInfo)"
    return (
        f"{where} is {release}{why}. GetUserPhoto needs Exchange 2013 or later (it arrived with "
        "Exchange 2013), so no mailbox was asked and every photo imported before is kept. Point ews_url at the "
        "EWS of an Exchange 2013 or later server (Get-ExchangeServer | fl Name,AdminDisplayVersion; "
        "Get-WebServicesVirtualDirectory | fl InternalUrl). The photos of mailboxes on Exchange 2010 are the "
        "AD thumbnailPhoto: the active-directory agent imports them"
    )
