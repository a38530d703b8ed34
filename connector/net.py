"""Network failures in words an operator can act on: which host and port, and what kind of failure.

"ConnectionError talking to Graph" says nothing at 03:00. A DNS failure means a wrong name or a
broken resolver; a refused connection means nothing listens there; a connect timeout means a
firewall or a dead host; a TLS failure means a certificate or a proxy; a read timeout means the
service took the connection and never answered. Each needs a different fix, so each is named.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import requests

__all__ = ["describe_request_error", "failure_kind", "host_port"]


def host_port(url: str) -> str:
    """``host:port`` of an URL, with the scheme's default port filled in."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.hostname or '?'}:{port}"


def failure_kind(exc: requests.RequestException) -> str:
    """What kind of network failure ``exc`` is, and where the fix lies, in a few words."""
    text = str(exc)
    if isinstance(exc, requests.exceptions.SSLError):
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate" in text.lower():
            return "TLS certificate not trusted (set ca_bundle to the CA that issued it)"
        return "TLS handshake failed"
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


def describe_request_error(exc: requests.RequestException, url: str, service: str) -> str:
    """``"Graph at graph.microsoft.com:443: connection refused (nothing listens there)"``.

    Never includes the request's headers or body (they may carry a token).
    """
    return f"{service} at {host_port(url)}: {failure_kind(exc)}"
