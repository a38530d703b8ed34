"""The test harness's shared Samba DC is stopped by its last user, whoever started it.

Why: sessions share one DC (parallel test sessions, a benchmark beside them). The session that
started it stopped it only if nobody else used it at that moment; when another session outlived it,
neither stopped it, and the DC ran on after both (found: a DC still running after every pytest and
helper session on the machine had ended).
"""

from __future__ import annotations

import contextlib

from tests.conftest import require_or_skip
from tests.harness.samba_dc import ADSettings, _dc, samba_lease, stop_samba

#: A loopback address of its own: the session's DC (samba_ad) must not be stopped by this test.
_HOST = "127.0.83.9"


def _running() -> bool:
    return _dc(None, _HOST, None, False).recorded_pid() is not None


def test_a_dc_outlived_by_another_user_is_stopped_by_the_last_one(samba_ad: ADSettings) -> None:
    if samba_ad.external:
        require_or_skip("the harness's own DC is needed (AD_* describes an external one)")
    stop_samba(host=_HOST)
    first, second = contextlib.ExitStack(), contextlib.ExitStack()
    try:
        first.enter_context(samba_lease(host=_HOST, use_env=False))
        second.enter_context(samba_lease(host=_HOST, use_env=False))
        first.close()  # the session that started it ends first
        assert _running()  # the other still uses it
        second.close()
        assert not _running()
    finally:
        second.close()
        first.close()
        stop_samba(host=_HOST)


def test_a_dc_started_to_be_kept_runs_on_after_its_users(samba_ad: ADSettings) -> None:
    if samba_ad.external:
        require_or_skip("the harness's own DC is needed (AD_* describes an external one)")
    stop_samba(host=_HOST)
    try:
        with samba_lease(host=_HOST, use_env=False, keep=True), samba_lease(host=_HOST, use_env=False):
            pass
        assert _running()  # MVSYNC_SAMBA_KEEP=1: the next session starts in a moment
    finally:
        stop_samba(host=_HOST)
