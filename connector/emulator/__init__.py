"""A faithful Microsoft Graph + Entra ID emulator for tests, benchmarks and the demo.

    from connector.emulator import GraphEmulator, EmulatorConfig
    with GraphEmulator(EmulatorConfig(users=200, seed=1)) as emu:
        emu.info["graph_url"], emu.admin.set_photo(upn, jpeg_bytes), emu.admin.stats()

Behaviour follows Microsoft's documentation (photo routes, users/delta, $batch, throttling, the v2.0
token endpoint), each choice cited in the docstrings of ``_graph`` and ``_identity``. Where the docs
are silent the emulator assumes (latency, a batch's timing): ``model_assumptions`` states those, and
the benchmarks print them with their figures.
"""

from __future__ import annotations

from connector.emulator._agent import exo_agent_settings
from connector.emulator._config import NO_PHOTO_VARIANTS, EmulatorConfig
from connector.emulator._ews import EwsConfig, EwsEmulator
from connector.emulator._faults import PROFILES, FaultProfile, parse_faults
from connector.emulator._graph import model_assumptions
from connector.emulator._photos import HD_SIZES
from connector.emulator._server import Admin, GraphEmulator
from connector.emulator._tenant import MAILBOX_KINDS, make_sam_account_name
from connector.emulator._throttle import THROTTLE_MODELS, ceiling_requests_per_s, parse_throttle
from connector.emulator._tls import TEST_HOSTNAME

__all__ = [
    "HD_SIZES",
    "MAILBOX_KINDS",
    "NO_PHOTO_VARIANTS",
    "PROFILES",
    "TEST_HOSTNAME",
    "THROTTLE_MODELS",
    "Admin",
    "EmulatorConfig",
    "EwsConfig",
    "EwsEmulator",
    "FaultProfile",
    "GraphEmulator",
    "ceiling_requests_per_s",
    "exo_agent_settings",
    "make_sam_account_name",
    "model_assumptions",
    "parse_faults",
    "parse_throttle",
]
