"""Shared fixtures. Real-server fixtures (Samba AD, PostgreSQL, Chromium) live in tests/harness/.

A test that needs a server calls ``require_or_skip(reason)`` when the server cannot run here: it
skips with the reason on a developer machine, and fails when ``MVSYNC_REQUIRE_SERVERS=1`` (set by
tests/run.sh under CI), so CI can never go green by skipping the real-server tests.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

# Imported while the suite is collected, not at its end: hypothesis's pytest plugin imports it for its
# summary if no test did, and pytest then rewrites its modules (ast.parse) while the last tests' garbage
# is collected. On CPython 3.11 before 3.11.8 (gh-106905) a finalizer that runs Python code inside that
# parse fails the session with "SystemError: AST constructor recursion depth mismatch".
import hypothesis  # noqa: F401
import pytest

pytest_plugins = ["tests.harness.plugin"]


def servers_required() -> bool:
    return os.environ.get("MVSYNC_REQUIRE_SERVERS", "") not in ("", "0", "false")


def require_or_skip(reason: str) -> None:
    """Skip (locally) or fail (CI) a test whose server cannot run here."""
    if servers_required():
        pytest.fail(f"required server unavailable (MVSYNC_REQUIRE_SERVERS=1): {reason}")
    pytest.skip(reason)


@pytest.fixture(autouse=True)
def _fresh_shared_limiters() -> None:
    """Each test learns its own emulator's limits: an emulator may reuse an earlier one's port and ids."""
    from connector.throttling import forget_shared_limiters

    forget_shared_limiters()


@pytest.fixture
def ctrl_c_raises() -> Iterator[None]:
    """Python's own SIGINT handler for the test, so that Ctrl-C raises ``KeyboardInterrupt``: a background
    job (as CI runs the suite) inherits SIGINT ignored, and then neither ``signal.raise_signal(SIGINT)`` nor
    ``_thread.interrupt_main()`` does anything."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture
def netrc_everywhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A netrc (named by NETRC, as requests reads it) whose ``default`` entry matches every host, as a sync
    server's account may keep one for curl or git: its credentials must never reach a request."""
    netrc = tmp_path / "netrc"
    netrc.write_text("default login leaked-user password leaked-secret\n", encoding="utf-8")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
