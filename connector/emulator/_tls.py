"""The emulators' TLS: a throwaway CA and a loopback server certificate, made on every start.

``trustme`` makes them. It is the ``emulator`` extra, not a runtime dependency: a production
installation never starts an emulator, so it is imported only here, when one starts, and its absence
is a configuration error that names the extra rather than an ImportError traceback.
"""

from __future__ import annotations

import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from connector.sdk import ConfigurationError

__all__ = ["EXTRA_HINT", "TEST_HOSTNAME", "ServerTls", "server_tls"]

#: Also in the emulator's certificate; resolvable only where a test maps it (``tests/harness/sockets``).
TEST_HOSTNAME = "emulator.mvsync.test"

#: What to install when trustme is missing (the README's demo command installs it).
EXTRA_HINT = "pip install 'mvsync[emulator]'"


@dataclass(frozen=True)
class ServerTls:
    """A server context for 127.0.0.1/localhost, the emulator's temporary folder (the caller removes
    it on stop), the CA file a client trusts in it, and the leaf certificate (PEM), which the EWS
    emulator needs for channel binding."""

    context: ssl.SSLContext
    folder: Path
    ca_file: Path
    certificate_pem: bytes


def server_tls(prefix: str, organization: str) -> ServerTls:
    """A new temporary folder holding a fresh CA's certificate (``ca.pem``), and a server context signed
    by that CA. The folder is made only once trustme is known to be there, so a missing extra leaves
    nothing behind."""
    try:
        import trustme
    except ImportError:
        msg = f"the emulator needs the 'emulator' extra (trustme), which is not installed: {EXTRA_HINT}"
        raise ConfigurationError(msg) from None
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    ca = trustme.CA(organization_name=organization)
    ca_file = folder / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    # TEST_HOSTNAME: a name that is not loopback (RFC 2606's .test), for tests that reach the
    # emulator through a proxy (loopback never goes through one)
    leaf = ca.issue_cert("127.0.0.1", "localhost", TEST_HOSTNAME)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    leaf.configure_cert(context)
    return ServerTls(context, folder, ca_file, leaf.cert_chain_pems[0].bytes())
