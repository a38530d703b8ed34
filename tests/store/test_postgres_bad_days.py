"""A PostgreSQL store's bad days under a running step, each at a counted point of the import (the
connector's page hook), on a real server:

* the run lock lost with its session (a server restart or failover, a DBA's ``pg_terminate_backend``,
  a dropped idle connection) stops the step as a store error. An advisory lock lives as long as its
  session, so the step would otherwise go on writing an agent a second run could lock and write too;
* a table lock held by another session (``VACUUM FULL``, ``REINDEX``, a transaction left open) stops
  the run as busy after ``BUSY_TIMEOUT_S`` instead of hanging in silence; a vacuum's lock only skips
  the planner-statistics refresh.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import URL, create_engine, make_url, text

import connector.store._sql as sql_store
from connector.engine import Engine
from connector.store import RunHistory, SqlStore, StoreBusyError, StoreError, StoreReadOnlyError
from tests.conftest import require_or_skip
from tests.engine.conftest import World, make_config

pytestmark = pytest.mark.postgres

PROFILES = {"ad-full": {"steps": [{"type": "full-import", "agent": "ad", "page_size": 5}]}}


def _world(tmp_path: Path, url: str) -> World:
    """An engine over ``url`` with the ``ad-full`` profile (pages of 5) and 30 users in AD."""
    w = World(tmp_path, url)
    w.engine.close()
    w.config = make_config(tmp_path, w.prefix, url, run_profiles=PROFILES)
    w.engine = Engine(w.config)
    for i in range(30):
        w.ad["objects"][f"u{i:02d}"] = {"accountName": f"u{i:02d}", "displayName": f"User {i}"}
    return w


@pytest.fixture
def world(tmp_path: Path, postgres_db: Callable[[], str]) -> Iterator[World]:
    w = _world(tmp_path, postgres_db())
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


def _last_step(url: str) -> tuple[str, str]:
    store = SqlStore(url)
    try:
        with store.read() as conn:
            history = RunHistory(conn)
            run = history.recent_runs(1)[0]
            step = history.steps_of([run.id])[0]
    finally:
        store.close()
    return run.status, step.message or ""


def _scalars(url: str, *queries: str) -> list[Any]:
    store = SqlStore(url)
    try:
        with store.read() as conn:
            return [conn.execute(text(query)).scalar() for query in queries]
    finally:
        store.close()


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

    status, message = _last_step(url)
    kept, locks = _scalars(
        url,
        "SELECT count(*) FROM cs_object WHERE agent = 'ad'",
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    # the run's own record is written although its lock is gone: the operator reads why it stopped
    assert status == "stopped-store-error"
    assert "lost with its database session (terminating connection" in message
    assert 0 < kept < 30  # the pages committed before the loss are kept; nothing after it was written
    assert locks == 0  # nothing left behind

    del world.ad["during_import"]
    world.ad["requests"].clear()
    again = world.run("ad-full")
    assert again.status == "success", again.as_dict()
    assert again.steps[0].counters["resumed_entries"] == kept  # from the last committed page, not over
    assert world.ad["requests"][0] == kept


def test_a_password_in_the_urls_query_is_masked_in_the_error_and_never_stored_in_history(
    tmp_path: Path, postgres_db: Callable[[], str]
) -> None:
    # libpq takes the password as a query parameter too; the store's name must not carry it anywhere
    parsed = make_url(postgres_db())
    password = str(parsed.password)
    url = f"{parsed.drivername}://{parsed.username}@{parsed.host}:{parsed.port}/{parsed.database}?password={password}"
    world = _world(tmp_path, url)
    try:
        world.ad["during_import"] = _terminate_lock_session(url, "agent:ad")
        with pytest.raises(StoreError, match=r"lost with its database session") as caught:
            world.run("ad-full")  # a store error whose message names the store, recorded in history
    finally:
        world.close()
    assert "password=***" in str(caught.value) and password not in str(caught.value)
    status, message = _last_step(url)
    assert status == "stopped-store-error" and "password=***" in message
    runs, steps = _scalars(
        url,
        "SELECT string_agg(run_history::text, ' ') FROM run_history",
        "SELECT string_agg(run_step::text, ' ') FROM run_step",
    )
    assert "password=***" in runs + steps and password not in runs + steps


def _hold_table_lock(url: str, mode: str) -> tuple[Callable[[int], None], Callable[[], None]]:
    """A page hook that, at page 2, makes another session lock ``cs_object`` in ``mode`` until released."""
    holder = create_engine(url)
    conn = holder.connect()

    def hook(page: int) -> None:
        if page == 2:
            conn.execute(text(f"LOCK TABLE cs_object IN {mode} MODE"))

    def release() -> None:
        conn.rollback()
        conn.close()
        holder.dispose()

    return hook, release


def test_a_table_lock_another_session_keeps_stops_the_run_as_busy_instead_of_hanging(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sql_store, "BUSY_TIMEOUT_S", 1.0)  # read by each new session: 30 s in real runs
    url = world.config.store_url()
    world.engine.close()
    world.engine = Engine(world.config)  # sessions opened under the shorter timeout
    hook, release = _hold_table_lock(url, "ACCESS EXCLUSIVE")  # what VACUUM FULL or REINDEX takes
    world.ad["during_import"] = hook
    try:
        with pytest.raises(StoreBusyError, match=r"is busy: another session holds a lock on its tables"):
            world.run("ad-full")  # exit 5 in the CLI, like any lock: a scheduler's "try again later"
    finally:
        release()
    status, message = _last_step(url)
    assert status == "stopped-locked" and "VACUUM FULL, a REINDEX or a transaction left open" in message
    assert "pg_blocking_pids()" in message and "\n" not in message

    del world.ad["during_import"]
    assert world.run("ad-full").status == "success"  # the next run resumes once the lock is gone


def test_a_row_lock_a_forgotten_transaction_keeps_is_named_with_who_holds_it(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found: a run blocked by someone's transaction left open in psql (a row updated by hand, no
    COMMIT) stopped as busy after the lock timeout, saying only that pg_stat_activity and
    pg_blocking_pids() show which session: by then the run's wait is over, so pg_blocking_pids() of
    its pid shows nothing. The message now names the sessions that hold locks on mvsync's tables in a
    transaction older than the wait: pid, user, application, client address, state and since when."""
    monkeypatch.setattr(sql_store, "BUSY_TIMEOUT_S", 1.0)  # read by each new session: 30 s in real runs
    world.engine.close()
    world.engine = Engine(world.config)
    _assert_blocked_by_a_forgotten_transaction(world)


def _assert_blocked_by_a_forgotten_transaction(world: World) -> None:
    """A run blocked by a row of cs_object updated by hand in psql, no COMMIT, stops as busy naming that
    session; the next run goes on once the transaction ended."""
    url = world.config.store_url()
    assert world.run("ad-full").status == "success"
    holder = create_engine(url, connect_args={"application_name": "psql"})
    conn = holder.connect()
    try:
        conn.execute(text("UPDATE cs_object SET updated_at = updated_at WHERE anchor = 'u02'"))
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        world.ad["objects"]["u02"]["displayName"] = "Changed"
        with pytest.raises(StoreBusyError) as caught:
            world.run("ad-full")
    finally:
        conn.rollback()
        conn.close()
        holder.dispose()
    message = str(caught.value)
    user = make_url(url).username
    assert f"held by pid {pid} (user {user}, application psql, from 127.0.0.1, idle in transaction since " in message
    assert "on cs_object" in message and "pg_terminate_backend" in message and "\n" not in message
    assert message.count("held by") == 1  # once, although the store's fault blocks nest
    assert world.run("ad-full").status == "success"  # the next run goes on once the transaction ended


def test_a_lock_another_role_holds_is_named_to_a_store_role_that_may_not_see_its_state(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found (QA): mvsync's own role, as the README has a DBA make it (no superuser, no
    pg_read_all_stats), sees no ``xact_start`` of another role's session, so a DBA's ``VACUUM FULL``
    (ACCESS EXCLUSIVE, here held by the superuser in a transaction) was filtered out and the run said
    nothing of who held the lock. It is now named, with what to grant to see the rest."""
    monkeypatch.setattr(sql_store, "BUSY_TIMEOUT_S", 1.0)  # read by each new session: 30 s in real runs
    assert world.run("ad-full").status == "success"  # the tables exist, made by the DBA's role
    url = make_url(world.config.store_url())
    with _role(url, "SELECT, INSERT, UPDATE, DELETE", "USAGE") as (store_url, password):
        engine = Engine(make_config(tmp_path, world.prefix, store_url, run_profiles=PROFILES))
        holder = create_engine(url, connect_args={"application_name": "vacuum-by-hand"}).connect()
        try:
            holder.execute(text("LOCK TABLE cs_object IN ACCESS EXCLUSIVE MODE"))  # what VACUUM FULL takes
            pid = holder.execute(text("SELECT pg_backend_pid()")).scalar_one()
            with pytest.raises(StoreBusyError) as caught:
                engine.run_profile("ad-full")
        finally:
            holder.rollback()
            holder.close()
            engine.close()
    message = str(caught.value)
    assert f"held by pid {pid} (user {url.username}, application vacuum-by-hand, " in message, message
    assert "AccessExclusiveLock on cs_object" in message and "GRANT pg_read_all_stats TO it" in message
    assert password not in message and "\n" not in message


def test_a_lock_wait_under_a_shorter_statement_timeout_stops_as_busy_naming_who_holds_it(world: World) -> None:
    """Found: where the DBA set a statement_timeout for mvsync's role or database (here 2 s) below the
    lock timeout (30 s), a run blocked by a forgotten transaction's row lock was canceled by the
    statement timeout first: exit 4, "canceled a statement ... statement timeout", with no word of who
    held the lock, where the README gives a lock held too long exit 5 (stopped-locked) and the holder.
    Where no lock_timeout was chosen, a session now waits for a lock at most 90 % of a shorter
    statement_timeout, so a lock wait ends as busy, naming who held it."""
    url = world.config.store_url()
    _as_dba(url, f"ALTER DATABASE \"{make_url(url).database}\" SET statement_timeout = '2s'")
    world.engine.close()
    world.engine = Engine(world.config)  # sessions opened under the database's setting
    _assert_blocked_by_a_forgotten_transaction(world)


def test_a_vacuum_holding_the_table_only_defers_the_statistics_refresh(world: World) -> None:
    # an anti-wraparound (auto)vacuum holds SHARE UPDATE EXCLUSIVE and does not give way to ANALYZE
    for i in range(30, sql_store.ANALYZE_MIN_ROWS + 30):
        world.ad["objects"][f"u{i:04d}"] = {"accountName": f"u{i:04d}"}
    url = world.config.store_url()
    hook, release = _hold_table_lock(url, "SHARE UPDATE EXCLUSIVE")
    world.ad["during_import"] = hook
    try:
        result = world.run("ad-full", step_overrides={"page_size": 500})
    finally:
        release()
    assert result.status == "success", result.as_dict()
    assert result.steps[0].counters["adds"] == sql_store.ANALYZE_MIN_ROWS + 30


def _writable(config: Any) -> Any:
    from connector.doctor import run_doctor

    [found] = [f for f in run_doctor(config, connect=False).findings if f.check == "writable"]
    return found


def test_a_read_only_database_is_found_by_doctor_and_stops_a_run_with_what_to_do(world: World) -> None:
    # what a read replica or `default_transaction_read_only` looks like: reads work, the first write fails
    url = world.config.store_url()
    assert _writable(world.config).severity == "ok"
    database = make_url(url).database
    dba = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with dba.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" SET default_transaction_read_only = on'))
        world.engine.close()
        world.engine = Engine(world.config)
        found = _writable(world.config)
        assert found.severity == "error" and "is set read-only: default_transaction_read_only is on" in found.message
        refused = r"is set read-only: .* \(set in: database\).* lift it \(ALTER DATABASE .* this run wrote nothing"
        with pytest.raises(StoreReadOnlyError, match=refused):
            world.run("ad-full")
    finally:
        with dba.connect() as conn:
            conn.execute(text("BEGIN READ WRITE"))
            conn.execute(text(f'ALTER DATABASE "{database}" SET default_transaction_read_only = off'))
            conn.execute(text("COMMIT"))
        dba.dispose()


@contextlib.contextmanager
def _role(url: URL, table_grants: str, sequence_grants: str | None = None) -> Iterator[tuple[str, str]]:
    """A new login role (no superuser, no pg_read_all_stats: as the README has a DBA make mvsync's) with
    ``table_grants`` on the tables there are: its store URL and password; dropped at the end."""
    role, password = f"store_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    dba = create_engine(url, isolation_level="AUTOCOMMIT")
    with dba.connect() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
        conn.execute(text(f"GRANT {table_grants} ON ALL TABLES IN SCHEMA public TO {role}"))
        if sequence_grants:
            conn.execute(text(f"GRANT {sequence_grants} ON ALL SEQUENCES IN SCHEMA public TO {role}"))
    try:
        yield url.set(username=role, password=password).render_as_string(hide_password=False), password
    finally:
        with dba.connect() as conn:
            conn.execute(text(f"DROP OWNED BY {role}"))
            conn.execute(text(f"DROP ROLE {role}"))
        dba.dispose()


def test_a_role_without_write_grants_is_found_by_doctor_and_named_by_the_run(world: World, tmp_path: Path) -> None:
    url = make_url(world.config.store_url())
    with _role(url, "SELECT") as (reader, password):
        config = make_config(tmp_path, world.prefix, reader, run_profiles=PROFILES)
        found = _writable(config)
        assert found.severity == "error" and "this role may not write agent_data, agent_state, blob" in found.message
        assert "grant it SELECT, INSERT, UPDATE and DELETE" in found.message and password not in found.message
        engine = Engine(config)
        try:
            with pytest.raises(StoreReadOnlyError, match=r"refused this role a write \(permission denied for table"):
                engine.run_profile("ad-full")
        finally:
            engine.close()
        role = make_url(reader).username
        with create_engine(url, isolation_level="AUTOCOMMIT").connect() as conn:  # the README's grants: a working role
            conn.execute(text(f"GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}"))
            conn.execute(text(f"GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}"))
        assert _writable(config).severity == "ok"


def _keepalives(store: SqlStore) -> dict[str, str]:
    """The keepalive and user-timeout parameters libpq holds for one of the store's connections, and
    the TCP_USER_TIMEOUT the kernel holds for its socket (``socket_user_timeout``, where the OS has it)."""
    with store.engine.connect() as conn:
        raw: Any = conn.connection.dbapi_connection
        held = {k: v for k, v in raw.info.get_parameters().items() if k.startswith(("keepalives", "tcp_user"))}
        if hasattr(socket, "TCP_USER_TIMEOUT"):
            sock = socket.socket(fileno=os.dup(raw.fileno()))
            try:
                held["socket_user_timeout"] = str(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))
            finally:
                sock.close()
        return held


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (
            "",
            {
                "keepalives_idle": "30",
                "keepalives_interval": "10",
                "keepalives_count": "4",
                "tcp_user_timeout": "70000",
            },
        ),
        ("?keepalives_idle=600", {"keepalives_idle": "600", "tcp_user_timeout": "70000"}),  # the URL's wins whole
        ("?tcp_user_timeout=5000", {"keepalives_idle": "30", "tcp_user_timeout": "5000"}),
    ],
)
def test_store_connections_find_a_host_gone_silent_with_tcp_keepalives(
    postgres_db: Callable[[], str], query: str, expected: dict[str, str]
) -> None:
    """A store host that goes away without a reset (a failover, a VM gone, a firewall dropping the
    connection silently) left a run waiting on its idle connection for the OS's 2 hours; libpq finds
    it dead in about 70 s with mvsync's keepalives. Keepalives probe only an idle connection: a host
    gone while a query was on the wire held the run for Linux's retransmission limit (about 15
    minutes) until the TCP user timeout. (A silent host cannot be made here without a packet filter:
    this checks that libpq holds the settings, and that the kernel's socket holds the user timeout.)"""
    store = SqlStore(postgres_db() + query)
    try:
        held = _keepalives(store)
    finally:
        store.close()
    assert {k: v for k, v in held.items() if k in expected} == expected
    if "socket_user_timeout" in held:
        assert held["socket_user_timeout"] == expected["tcp_user_timeout"]
    if "keepalives_idle=" in query:
        assert "keepalives_count" not in held  # none of mvsync's defaults beside the URL's own


@pytest.mark.parametrize(
    ("database_setting", "query", "expected"),
    [
        (None, "", "30s"),  # the server's default (0) waits for ever: mvsync's bound instead
        ("2min", "", "2min"),  # ALTER DATABASE (or ROLE) ... SET lock_timeout: the DBA's choice
        (None, "?options=-c%20lock_timeout%3D5000", "5s"),  # libpq's options in store.url
    ],
    ids=["default", "database", "url"],
)
def test_a_lock_timeout_the_operator_set_replaces_mvsyncs_30_s(
    postgres_db: Callable[[], str], database_setting: str | None, query: str, expected: str
) -> None:
    """Found: how long a run waits for another session's lock could not be changed: each session set
    lock_timeout to 30 s over the one the DBA gave the role or the database (ALTER ROLE mvsync SET
    lock_timeout), or store.url's options. A lock_timeout chosen there now wins; 30 s where none is."""
    url = postgres_db()
    if database_setting is not None:
        _as_dba(url, f"ALTER DATABASE \"{make_url(url).database}\" SET lock_timeout = '{database_setting}'")
    store = SqlStore(url + query)
    try:
        with store.read() as conn:
            assert conn.execute(text("SHOW lock_timeout")).scalar() == expected
        with store.transaction() as conn:  # a statistics refresh waits 1 s for its lock, then puts it back
            store.note_inserts(conn, "cs_object", sql_store.ANALYZE_MIN_ROWS)
            assert conn.execute(text("SHOW lock_timeout")).scalar() == expected
    finally:
        store.close()


def _namespace_problem() -> str | None:
    """Why this machine cannot give a test its own network namespace (None: it can)."""
    if not sys.platform.startswith("linux") or shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs Linux with unshare and ip (util-linux, iproute2)"
    probe = subprocess.run(["unshare", "-n", "true"], capture_output=True, text=True, check=False, timeout=30)
    if probe.returncode != 0:
        return f"cannot make a network namespace (root with CAP_SYS_ADMIN): {probe.stderr.strip()}"
    return None


def test_a_store_host_that_vanishes_mid_run_is_given_up_within_the_tcp_user_timeout(postgres_server: Any) -> None:
    """A store host gone without a reset while a query was on the wire held the run for Linux's
    retransmission limit (about 15 minutes: keepalives probe only idle connections). With the TCP
    user timeout the store gives up after it and ends in a store fault (exit 4) naming the host.

    Real parts: PostgreSQL and the store in their own network namespace, the server's address
    removed under them (tests/store/_vanishing_host.py says why a relay cannot do this)."""
    problem = _namespace_problem()
    if problem is not None:
        require_or_skip(f"a vanishing store host: {problem}")
    repo = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(
            ["unshare", "-n", sys.executable, "-m", "tests.store._vanishing_host"],
            cwd=repo,
            capture_output=True,
            text=True,
            check=False,
            timeout=300,  # the child's own watchdog reports a hang after 150 s (and stops its server)
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the child neither finished nor reported a hang within 300 s")
    assert done.returncode == 0, done.stderr[-2000:]
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert "hung_s" not in outcome, "the store was still waiting for its vanished host after 150 s"
    assert outcome["error"] is not None, outcome
    assert outcome["exit_code"] == 4
    assert "10.9.9.1" in outcome["error"] and "***" in outcome["error"]  # names the host, masks the password
    assert outcome["seconds"] < 120, outcome  # the child's 3-s user timeout, not the OS's 15 minutes


def _dry_run_session(url: str) -> Callable[[Callable[[Any], bool]], Any]:
    """``wait(until)``: poll the dry run's session (the one idle in a transaction; None once it is gone)
    until ``until`` holds for what is found, and return that."""
    dba = create_engine(url, isolation_level="AUTOCOMMIT")

    def wait(until: Callable[[Any], bool]) -> Any:
        try:
            for _ in range(1200):  # a minute at most: each poll is a round trip and 0.05 s
                with dba.connect() as conn:
                    found = conn.execute(
                        text(
                            "SELECT pid, extract(epoch FROM now() - state_change) FROM pg_stat_activity "
                            "WHERE datname = current_database() AND state = 'idle in transaction'"
                        )
                    ).first()
                if until(found):
                    return found
                time.sleep(0.05)
            pytest.fail("the dry run's session neither ended nor idled long enough within a minute")
        finally:
            dba.dispose()

    return wait


def test_a_dry_run_whose_session_the_server_ends_stops_as_a_store_fault_not_a_traceback(world: World) -> None:
    """Found: a dry run (one transaction for the whole run) whose session ended under its import (a
    restart or failover, pg_terminate_backend) raised SQLAlchemy's PendingRollbackError, "Can't
    reconnect until invalid transaction is rolled back", out of the engine: the step's own store
    fault was said, then recording the step's end on the dead session failed with no store fault to
    catch, a traceback and exit 1. The run now ends with the store fault that ended the step."""
    url = world.config.store_url()
    assert world.run("ad-full").status == "success"
    wait = _dry_run_session(url)

    def hook(page: int) -> None:
        if page == 2:
            pid = wait(lambda found: found is not None)[0]
            _terminate_pid(url, pid)

    world.ad["during_import"] = hook
    with pytest.raises(StoreError, match=r"terminating connection due to administrator command; the server ended"):
        world.run("ad-full", dry_run=True)
    del world.ad["during_import"]
    assert world.run("ad-full", dry_run=True).status == "success"  # the next one gets a new session


def _as_dba(url: str, *statements: str) -> None:
    """Run ``statements`` on the database of ``url``, each in a transaction of its own (a DBA in psql)."""
    dba = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with dba.connect() as conn:
            for statement in statements:
                conn.execute(text(statement))
    finally:
        dba.dispose()


def _terminate_pid(url: str, pid: int) -> None:
    dba = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with dba.connect() as conn:
            assert conn.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar() is True
    finally:
        dba.dispose()


def test_a_dry_run_outlasts_the_idle_in_transaction_timeout_a_dba_set(world: World) -> None:
    """Found: a dry run holds one transaction for the whole run, idle while a connector reads a page
    (a slow directory, a throttled Graph); where the DBA set idle_in_transaction_session_timeout for the
    database or role (a common guard against forgotten transactions), the server ended the dry run's
    session after it, and every dry run of a long enough import stopped (exit 4: "the server ended the
    session ... run again", which ends the same). The dry run's own transaction now turns that timeout
    off (SET LOCAL), as the run lock's session turns idle_session_timeout off: it is open by design."""
    url = world.config.store_url()
    _as_dba(url, f'ALTER DATABASE "{make_url(url).database}" SET idle_in_transaction_session_timeout = 200')
    world.engine.close()
    world.engine = Engine(world.config)  # sessions opened under the database's setting
    wait = _dry_run_session(url)

    def hook(page: int) -> None:
        if page == 2:  # the connector takes ten times the timeout for this page (or the server ended the session)
            wait(lambda found: found is None or found[1] >= 2.0)

    world.ad["during_import"] = hook
    result = world.run("ad-full", dry_run=True)
    assert result.status == "success", result.as_dict()
    assert result.steps[0].counters["adds"] == 30


def test_a_database_error_the_store_does_not_know_carries_no_persons_data(world: World) -> None:
    """Found: a database error no store fault stands for (here a DBA's audit trigger on cs_object that
    fails: "audit log is full") stopped the step with SQLAlchemy's text of it: the statement and its
    parameters, every imported person's name and address, in the step's message (printed, logged
    with a traceback, and kept in run history). Statements now go to the database with their
    parameters hidden from error texts; the statement and the database's own words stay."""
    url = world.config.store_url()
    assert world.run("ad-full").status == "success"  # the tables exist
    _as_dba(
        url,
        "CREATE FUNCTION audit_full() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RAISE EXCEPTION 'audit log is full'; "
        "END$$",
        "CREATE TRIGGER audit AFTER UPDATE ON cs_object FOR EACH ROW EXECUTE FUNCTION audit_full()",
    )
    world.ad["objects"]["u02"]["displayName"] = "Private Person"
    result = world.run("ad-full")
    step = result.steps[0]
    assert step.status == "stopped-connector-exception" and "audit log is full" in (step.message or "")
    _, message = _last_step(url)
    assert "Private Person" not in (step.message or "") + message
