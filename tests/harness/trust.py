"""A "system trust store" a test controls: OpenSSL's, which SSL_CERT_FILE and SSL_CERT_DIR name.

The HTTPS agents verify with the operating system's trust store by default (truststore), which on
Linux is OpenSSL's default paths. A test that relied on this machine's CAs would pass or fail with
the machine; these helpers make the store hold exactly what the test puts in it, and keep CA bundles
and proxies of the environment (requests reads REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE and the *_PROXY
variables) out of the test's way.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trustme

__all__ = ["TRUST_VARIABLES", "other_ca", "subprocess_env", "system_store"]

#: What the environment says about trust and proxies; each test sets what it needs and no more.
TRUST_VARIABLES = (
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
)


def system_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where this process's system trust store goes (SSL_CERT_FILE); SSL_CERT_DIR a folder that does
    not exist; no CA bundle or proxy from the environment. Write the file before the first request:
    truststore looks for the distribution's bundle when SSL_CERT_FILE names no file."""
    for name in TRUST_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "no-certs"))
    pem = tmp_path / "system-store.pem"
    monkeypatch.setenv("SSL_CERT_FILE", str(pem))
    return pem


def subprocess_env(trusted: Path, tmp_path: Path) -> dict[str, str]:
    """The environment of a subprocess whose system trust store holds ``trusted`` alone."""
    env = {k: v for k, v in os.environ.items() if k not in TRUST_VARIABLES}
    env.update(SSL_CERT_FILE=str(trusted), SSL_CERT_DIR=str(tmp_path / "no-certs"))
    return env


def other_ca(tmp_path: Path) -> Path:
    """The PEM file of a CA that issued nothing the tests meet."""
    pem = tmp_path / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(str(pem))
    return pem
