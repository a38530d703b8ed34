"""What a failed verification on Windows says (connector.net.failure_kind), without a Windows machine.

On Windows, truststore verifies with CryptoAPI and raises ``ssl.SSLCertVerificationError`` whose text
is the system's message, in the system's language ("The certificate's CN name does not match the
passed value.", or German on a German Windows Server), and whose ``verify_code`` is the HRESULT of
the chain policy. These build the exception as requests hands it over (requests' SSLError around
urllib3's MaxRetryError around urllib3's SSLError around ssl's): pure logic, no network.
"""

from __future__ import annotations

import ssl

import pytest
import requests
import urllib3

from connector.net import describe_request_error

GRAPH = "https://graph.microsoft.com/v1.0/users"


def _windows_failure(code: int, text: str) -> requests.exceptions.SSLError:
    error = ssl.SSLCertVerificationError(text)
    error.verify_code = code
    reason = urllib3.exceptions.SSLError(error)
    return requests.exceptions.SSLError(urllib3.exceptions.MaxRetryError(None, "/v1.0/users", reason))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("code", "text", "said"),
    [
        (
            0x800B010F,  # CERT_E_CN_NO_MATCH
            "Der CN-Name des Zertifikats stimmt nicht mit dem übergebenen Wert überein.",
            "TLS certificate not issued for this host name (use a name it was issued for in the URL",
        ),
        (
            0x800B0101,  # CERT_E_EXPIRED
            "Ein erforderliches Zertifikat befindet sich nicht innerhalb seines Gültigkeitszeitraums.",
            "TLS certificate outside its validity period (renew it on the server if it expired",
        ),
        (
            0x800B0109,  # CERT_E_UNTRUSTEDROOT
            "A certificate chain processed, but terminated in a root certificate which is not trusted by the "
            "trust provider.",
            "TLS certificate not trusted (set ca_bundle to the CA that issued it)",
        ),
        (
            0x800B0109,  # the same, in German: no "certificate" in it for the words to go by
            "Eine Zertifikatkette wurde zwar verarbeitet, endete jedoch mit einem Stammzertifikat, das beim "
            "Vertrauensanbieter nicht als vertrauenswürdig gilt.",
            "TLS certificate not trusted (set ca_bundle to the CA that issued it)",
        ),
    ],
)
def test_a_windows_verdict_is_named_by_its_code_not_its_words(code: int, text: str, said: str) -> None:
    """A certificate for another name, or out of its dates, was told "not trusted (set ca_bundle ...)":
    CryptoAPI's words name no host and no OpenSSL reason, and may not be English, so only the untrusted
    root was right. The code says which it is."""
    assert describe_request_error(_windows_failure(code, text), GRAPH, "Graph").startswith(
        f"Graph at graph.microsoft.com:443: {said}"
    )
