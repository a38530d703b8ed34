"""The test harness's shared Samba DC is stopped by its last user, whoever started it.

Why: sessions share one DC (parallel test sessions, a benchmark beside them). The session that
started it stopped it only if nobody else used it at that moment; when another session outlived it,
neither stopped it, and the DC ran on after both (found: a DC still running after every pytest and
helper session on the machine had ended).

These tests stop, start and look at a DC of their own, so they must have it to themselves: another
pytest session running them at the same time (or the restart benchmark's DC, once at this address)
stopped it under them, or kept it running, and one of the two sessions failed.
"""

from __future__ import annotations

import contextlib
import fcntl
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_or_skip
from tests.harness.samba_dc import ADSettings, _dc, _default_directory, samba_lease, stop_samba

#: A loopback address of its own: neither the session's DC (samba_ad) nor the restart benchmark's (.9).
_HOST = "127.0.83.8"


def _running() -> bool:
    return _dc(None, _HOST, None, False).recorded_pid() is not None


@pytest.fixture(autouse=True)
def _dc_to_ourselves() -> Iterator[None]:
    """Wait for any other session's test of this module to finish (a lock beside the DC's directory)."""
    lock = Path(f"{_dc(None, _HOST, None, False).directory}.lease-test")
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


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


def test_a_dc_whose_starter_was_killed_is_stopped_by_its_last_user(samba_ad: ADSettings) -> None:
    """A starter killed before its block ended (``kill -9``, a ``timeout``) left no mark, and its DC ran
    on after every later user (found: the shared DC of a helper session cut off, still running hours later)."""
    if samba_ad.external:
        require_or_skip("the harness's own DC is needed (AD_* describes an external one)")
    stop_samba(host=_HOST)
    code = (
        "import sys, time\n"
        "from tests.harness.samba_dc import samba_lease\n"
        f"with samba_lease(host={_HOST!r}, use_env=False):\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(600)\n"
    )
    root = Path(__file__).resolve().parents[3]
    starter = subprocess.Popen([sys.executable, "-c", code], cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        assert starter.stdout is not None
        assert starter.stdout.readline().strip() == "ready"  # the DC is up and the starter in its block
        starter.send_signal(signal.SIGKILL)  # no teardown runs
        starter.wait(timeout=30)
        assert _running()
        with samba_lease(host=_HOST, use_env=False):
            pass
        assert not _running()  # the last user stopped it
    finally:
        starter.kill()
        starter.wait(timeout=30)
        stop_samba(host=_HOST)


def test_mvsync_samba_dir_is_the_directory_of_the_session_s_dc_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Found in the AD QA pass: with MVSYNC_SAMBA_DIR set (as for a DC started by hand), the second DC of
    test_ad_other_dc, at an address of its own, got that directory too: it was the session's DC, said to
    listen at an address where nothing did, and each of its tests failed with "Connection refused"."""
    monkeypatch.setenv("MVSYNC_SAMBA_HOST", "127.0.83.21")
    monkeypatch.setenv("MVSYNC_SAMBA_DIR", "/tmp/mvsync-samba-by-hand")
    assert _dc(None, None, None, False).directory == Path("/tmp/mvsync-samba-by-hand").resolve()
    assert _dc(None, "127.0.83.21", None, False).directory == Path("/tmp/mvsync-samba-by-hand").resolve()
    assert _dc(None, _HOST, None, False).directory == _default_directory(_HOST).resolve()
