"""A child process whose wall clock is off (libfaketime): a host's clock ahead or behind.

Why a preloaded library and not a patched ``time.time``: the child is the real CLI, whose clock
reaches MSAL, TLS certificate checks, Kerberos and the store's timestamps alike. Only the wall
clock moves: a faked monotonic clock hangs Python's threads (their timed waits), and nothing a
host's clock error does to a run goes through it.
"""

from __future__ import annotations

from pathlib import Path

from tests.conftest import require_or_skip

__all__ = ["FAKETIME_LIB", "faketime_env"]

#: Debian's libfaketime (apt: faketime; tests/run.sh installs it).
FAKETIME_LIB = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")


def faketime_env(offset: str) -> dict[str, str]:
    """Environment variables that put a child's wall clock ``offset`` away (``"+3d"``, ``"-1h"``)."""
    if not FAKETIME_LIB.is_file():
        require_or_skip("libfaketime is not installed (apt: faketime; tests/run.sh installs it)")
    return {"LD_PRELOAD": str(FAKETIME_LIB), "FAKETIME": offset, "DONT_FAKE_MONOTONIC": "1"}
