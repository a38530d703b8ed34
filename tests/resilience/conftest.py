"""Fixtures of the resilience suite: a domain controller the tests may stop and start."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from connector.bench.resilience import RestartableDC, restartable_dc
from tests.conftest import require_or_skip
from tests.harness.samba_dc import ADSettings, SambaUnavailable


@pytest.fixture(scope="session")
def own_dc(samba_ad: ADSettings) -> Iterator[RestartableDC]:
    """A DC of this suite's own (``connector.bench.resilience.RestartableDC``): stop/start at will."""
    if samba_ad.external:
        pytest.skip("AD_* describes an external directory: the harness cannot restart it")
    with contextlib.ExitStack() as stack:
        try:
            dc = stack.enter_context(restartable_dc())
        except SambaUnavailable as exc:
            require_or_skip(f"second Samba AD DC unavailable: {exc}")
        yield dc
