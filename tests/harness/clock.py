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


def faketime_env(offset: str | Path) -> dict[str, str]:
    """Environment variables that put a child's wall clock ``offset`` away (``"+3d"``, ``"-1h"``),
    or as far as a file says, read again at each clock read: writing another offset into it makes
    the child's clock jump while it runs."""
    if not FAKETIME_LIB.is_file():
        require_or_skip("libfaketime is not installed (apt: faketime; tests/run.sh installs it)")
    env = {"LD_PRELOAD": str(FAKETIME_LIB), "DONT_FAKE_MONOTONIC": "1"}
    if isinstance(offset, Path):
        return env | {"FAKETIME_TIMESTAMP_FILE": str(offset), "FAKETIME_NO_CACHE": "1"}
    return env | {"FAKETIME": offset}
