"""More of a PostgreSQL store's bad days, through the real CLI in a subprocess where the operator meets
them: two scheduled runs that create or upgrade the same store's schema at once, and a server that
refuses the connection (password, database, pg_hba.conf, TLS) with what to do about it."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text

from connector.store._migrations import migrate
from tests.cli._configs import generated_pair
from tests.harness.crash import mvsync_command

pytestmark = pytest.mark.postgres


def _config(tmp_path: Path, url: str) -> Path:
    """The generated pair (``cycle`` imports and synchronizes 5 people) on the store ``url``."""
    config = tmp_path / "mvsync.toml"
    config.write_text(generated_pair(5).replace('url = "sqlite:///store.db"', f'url = "{url}"'))
    return config


def _waiting_on_a_lock(url: str, other_than: int, deadline_s: float = 60.0) -> None:
    """Return once a session other than ``other_than`` waits on a lock in the database of ``url``.

    A handshake, not a sleep: the child has reached its schema check and waits for the holder."""
    watcher = create_engine(url)
    try:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            with watcher.connect() as conn:
                waiting = conn.execute(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock' AND pid <> :pid"
                    ),
                    {"pid": other_than},
                ).scalar()
            if waiting:
                return
            time.sleep(0.05)
        pytest.fail(f"no session waited on a lock within {deadline_s} s")
    finally:
        watcher.dispose()


def test_two_runs_that_create_one_new_store_at_once_both_end_well(
    tmp_path: Path, postgres_db: Callable[[], str]
) -> None:
    """Found: two scheduled runs that started together against a new, empty database (the first night,
    or two tasks at 03:00) both created the schema; the second's CREATE TABLE waited for the first's and
    then failed on PostgreSQL's catalog (UniqueViolation on pg_type_typname_nsp_index): a traceback, exit
    1. A schema upgrade after mvsync itself was upgraded ran the same race. The second now waits for the
    first's migration and finds the store current."""
    url = postgres_db()
    config = _config(tmp_path, url)
    holder = create_engine(url)
    try:
        with holder.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            migrate(conn)  # the first run's schema creation, not yet committed
            child = subprocess.Popen(
                [*mvsync_command(), "run", "cycle", "-c", str(config)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                _waiting_on_a_lock(url, pid)
                conn.commit()  # the first run's migration ends
                out, err = child.communicate(timeout=120)
            finally:
                if child.poll() is None:
                    child.kill()
                    child.communicate()
    finally:
        holder.dispose()
    assert child.returncode == 0, (out, err)
    assert "Traceback" not in err
    password = str(make_url(url).password)
    assert password not in out + err
