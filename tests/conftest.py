"""Shared fixtures. Real-server fixtures (Samba AD, PostgreSQL, Chromium) live in tests/harness/.

A test that needs a server calls ``require_or_skip(reason)`` when the server cannot run here: it
skips with the reason on a developer machine, and fails when ``MVSYNC_REQUIRE_SERVERS=1`` (set by
tests/run.sh under CI), so CI can never go green by skipping the real-server tests.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

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


#: The fixtures of each real server: what ``--dist loadgroup`` keeps on one worker (with the Active Directory
#: tests, which start DCs of their own; see ``pytest_collection_modifyitems``).
_SERVER_GROUPS = {
    "samba": {"samba_ad", "samba_kerberos"},
    "postgres": {"postgres_server", "postgres_url", "postgres_db"},
    "browser": {"chromium"},
}


def pytest_configure(config: pytest.Config) -> None:
    """A pytest-xdist worker inherits ``COLUMNS=80`` from xdist (the controller's terminal is not its own):
    the CLI then folds its output at 80 columns, where off a terminal it writes lines whole, as the tests
    that read it expect (``fit_consoles``). A worker runs them as a single session would."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.pop("COLUMNS", None)


@pytest.hookimpl(wrapper=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> Generator[None, None, None]:
    """Under pytest-xdist (tests/run.sh runs two workers), the tests of one real server run on one worker.

    Why: each worker is a session of its own, so a server's session fixture would start once per worker
    that needs it (provisioning a DC takes seconds; two PostgreSQL servers, twice the memory), and a test
    that stops or restarts a DC would wait for the other worker's session to let go of it. The Active
    Directory tests also share loopback addresses and ports (a stand-in DC on 127.0.0.1 at the DC's LDAPS
    port) and the DC's sites, so they all run on the DC's worker, one after another, as in a single session.
    One worker per server keeps each started once; everything else is spread over both.

    A wrapper, so the marks are there before pytest-xdist's own hook turns them into groups (its suffix on
    each node id, ``...@samba``); ``pytest_xdist_node_collection_finished`` checks that it did.
    """
    if config.pluginmanager.hasplugin("xdist"):
        _group_server_tests(items)
    return (yield)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """Stops a run on several workers that would spread the Active Directory tests over them: they then fail
    in ways that look like bugs of their own (a port already taken, a site subnet that exists). That is any
    ``--dist`` but loadgroup (``pytest -n 2`` alone is ``load``), and loadgroup whose groups did not take:
    with pytest 9.2, pytest-xdist 3.8 silently stopped grouping (pytest-xdist#1386). Seen from the
    controller, whose only view of a worker's tests is their ids."""
    directory = [i for i in ids if i.startswith("tests/agents/active_directory/")]
    if not directory:
        return
    dist = getattr(node.config.option, "dist", "no")
    if dist != "loadgroup":
        why = f"--dist {dist} would run the Active Directory tests on several workers at once: add --dist loadgroup"
    elif any("@" not in i for i in directory):
        why = (
            "pytest-xdist's --dist loadgroup did not group the real servers' tests (pytest-xdist#1386): install "
            "the test extra's pytest, below 9.2 (pip install -e '.[test]')"
        )
    else:
        return
    pytest.exit(
        f"{why} (as bash tests/run.sh does), or run in one process (-n 0; MVSYNC_TEST_WORKERS=0 bash tests/run.sh)",
        returncode=pytest.ExitCode.USAGE_ERROR,
    )


def _group_server_tests(items: list[pytest.Item]) -> None:
    """Marks each test of a real server with that server's ``xdist_group``."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("store_url") == "postgresql":
            names.add("postgres_db")  # ``store_url`` asks for it only for its postgresql run
        for group, fixtures in _SERVER_GROUPS.items():
            if (
                names & fixtures
                or item.get_closest_marker(group)
                or (group == "samba" and "active_directory" in item.path.parts)
            ):
                item.add_marker(pytest.mark.xdist_group(group))
                break


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
