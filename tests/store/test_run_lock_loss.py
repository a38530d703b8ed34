"""A PostgreSQL run lock lost with its session under a running step (a server restart or failover, a
DBA's ``pg_terminate_backend``, a dropped idle connection) stops the step as a store error.

Why it matters: an advisory lock lives as long as its session, so the step would otherwise go on
writing an agent that a second run could lock and write at the same time. The session is ended
from the connector's page hook, so the loss lands at a counted point of the import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from connector.engine import Engine
from connector.store import RunHistory, SqlStore, StoreError
from tests.engine.conftest import World, make_config

pytestmark = pytest.mark.postgres

PROFILES = {"ad-full": {"steps": [{"type": "full-import", "agent": "ad", "page_size": 5}]}}


@pytest.fixture
def world(tmp_path: Path, postgres_db: Callable[[], str]) -> Iterator[World]:
    w = World(tmp_path, postgres_db())
    w.engine.close()
    w.config = make_config(tmp_path, w.prefix, w.config.store_url(), run_profiles=PROFILES)
    w.engine = Engine(w.config)
    for i in range(30):
        w.ad["objects"][f"u{i:02d}"] = {"accountName": f"u{i:02d}", "displayName": f"User {i}"}
    yield w
    w.close()


def _terminate(url: str, lock: str) -> None:
    """End the session holding ``lock``, as a DBA's ``pg_terminate_backend`` (or a failover) would."""
    dba = create_engine(url)
    try:
        with dba.begin() as conn:
            ended = (
                conn.execute(
                    text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE :n"),
                    {"n": f"mvsync {lock} %"},
                )
                .scalars()
                .all()
            )
    finally:
        dba.dispose()
    assert ended == [True]


def _terminate_lock_session(url: str, lock: str) -> Callable[[int], None]:
    """A page hook that ends the session holding ``lock`` when page 3 is read."""

    def hook(page: int) -> None:
        if page == 3:
            _terminate(url, lock)

    return hook


def test_leaving_a_lock_whose_session_ended_raises_nothing_over_the_steps_own_error(
    postgres_db: Callable[[], str],
) -> None:
    # a server restart under a step: the step's own error must reach the operator, not the unlock's
    url = postgres_db()
    store = SqlStore(url)
    try:
        with pytest.raises(RuntimeError, match="the step's own error"), store.locks.hold("agent:x"):
            _terminate(url, "agent:x")
            raise RuntimeError("the step's own error")
        with store.locks.hold("agent:x"):  # the lock went with the session: free for the next run
            store.locks.verify()
    finally:
        store.close()


def test_a_run_lock_lost_with_its_session_stops_the_step_as_a_store_error_and_the_next_run_resumes(
    world: World,
) -> None:
    url = world.config.store_url()
    world.ad["during_import"] = _terminate_lock_session(url, "agent:ad")
    with pytest.raises(StoreError, match=r"the run lock agent:ad on the store .* lost with its database session"):
        world.run("ad-full")  # the CLI turns it into one line and exit 4

    store = SqlStore(url)
    try:
        with store.read() as conn:
            history = RunHistory(conn)
            recorded = history.recent_runs(1)[0]
            step = history.steps_of([recorded.id])[0]
            kept = conn.execute(text("SELECT count(*) FROM cs_object WHERE agent = 'ad'")).scalar()
            locks = conn.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())"
                )
            ).scalar()
    finally:
        store.close()
    # the run's own record is written although its lock is gone: the operator reads why it stopped
    assert recorded.status == step.status == "stopped-store-error"
    assert "lost with its database session (terminating connection" in (step.message or "")
    assert 0 < kept < 30  # the pages committed before the loss are kept; nothing after it was written
    assert locks == 0  # nothing left behind

    del world.ad["during_import"]
    world.ad["requests"].clear()
    again = world.run("ad-full")
    assert again.status == "success", again.as_dict()
    assert again.steps[0].counters["resumed_entries"] == kept  # from the last committed page, not over
    assert world.ad["requests"][0] == kept
