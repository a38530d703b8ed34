"""What an ``exchange-online-photos`` agent needs to talk to a running emulator.

The demo, the benchmarks and the tests all point the real agent at the emulator; they share this one
mapping so that a new connection setting is added in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

__all__ = ["exo_agent_settings"]


def exo_agent_settings(info: Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """Agent settings for the emulator described by ``info`` (``GraphEmulator.info`` or its ``--json``
    line): tenant, app, authority, Graph URL and the emulator's CA. MSAL's instance discovery is off,
    since it would call login.microsoftonline.com. The refresh token is the caller's to pass in
    ``overrides``, as a ``{ env = ".." }`` / ``{ file = ".." }`` reference in anything written to disk.
    """
    return {
        "tenant_id": info["tenant_id"],
        "client_id": info["client_id"],
        "authority": info["authority"],
        "graph_url": info["graph_url"],
        "instance_discovery": False,
        "ca_bundle": str(info["ca_cert"]),
        **overrides,
    }
