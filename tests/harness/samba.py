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
from tests.harness.samba_dc import (
    ADSettings,
    KerberosAccount,
    SambaUnavailable,
    kdc_running,
    kerberos_account,
    samba_lease,
)


@pytest.fixture(scope="session")
def samba_ad() -> Iterator[ADSettings]:
    """Settings of a running AD DC; skips (or fails under MVSYNC_REQUIRE_SERVERS=1) where none can run."""
    with contextlib.ExitStack() as stack:
        try:
            settings = stack.enter_context(samba_lease(keep=os.environ.get("MVSYNC_SAMBA_KEEP") == "1"))
        except SambaUnavailable as exc:
            require_or_skip(f"Samba AD DC unavailable: {exc}")
        yield settings


@pytest.fixture(scope="session")
def samba_kerberos(samba_ad: ADSettings) -> Iterator[KerberosAccount]:
    """A least-privilege service account with a keytab on the session's DC, and KRB5_CONFIG set for it.

    The account has only what every user has (read); tests delegate writes per OU with
    ``grant_write``. ``KRB5_CONFIG`` points MIT krb5 at the DC's KDC for the whole session (the
    variable is read on every Kerberos call, so a test may point it elsewhere for a while).
    """
    if samba_ad.external:
        require_or_skip("Kerberos tests need the harness's own DC (AD_* describes an external one)")
    if not kdc_running(samba_ad):
        require_or_skip(
            f"the DC at {samba_ad.host} runs without a KDC (started by an older harness): stop it "
            "(tests.harness.samba_dc.stop_samba) or use another MVSYNC_SAMBA_HOST"
        )
    try:
        import gssapi  # noqa: F401  (the kerberos extra)
    except ImportError:
        require_or_skip("the gssapi package is missing: pip install -e '.[kerberos]' (needs libkrb5-dev and gcc)")
    try:
        account = kerberos_account(samba_ad)
    except SambaUnavailable as exc:
        require_or_skip(f"cannot make the Kerberos service account: {exc}")
    saved = os.environ.get("KRB5_CONFIG")
    os.environ["KRB5_CONFIG"] = str(account.krb5_conf)
    try:
        yield account
    finally:
        if saved is None:
            os.environ.pop("KRB5_CONFIG", None)
        else:
            os.environ["KRB5_CONFIG"] = saved
