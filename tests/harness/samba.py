"""``samba_ad``: a session-wide Samba AD domain controller on loopback (or the one ``AD_*`` describes).

The DC itself is started by ``tests.harness.samba_dc`` (free of pytest, because the ``export-ad``
benchmark starts it the same way from a source checkout). The DC is shared by every test of the
session (provisioning takes seconds), so tests work in their own organizational units. It is stopped
at the end of the session if this session started it and no other process still uses it;
``MVSYNC_SAMBA_KEEP=1`` leaves it running for the next session (then start-up takes ~0.1 s).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import pytest

from tests.conftest import require_or_skip
from tests.harness.samba_dc import ADSettings, SambaUnavailable, samba_lease


@pytest.fixture(scope="session")
def samba_ad() -> Iterator[ADSettings]:
    """Settings of a running AD DC; skips (or fails under MVSYNC_REQUIRE_SERVERS=1) where none can run."""
    with contextlib.ExitStack() as stack:
        try:
            settings = stack.enter_context(samba_lease(keep=os.environ.get("MVSYNC_SAMBA_KEEP") == "1"))
        except SambaUnavailable as exc:
            require_or_skip(f"Samba AD DC unavailable: {exc}")
        yield settings
