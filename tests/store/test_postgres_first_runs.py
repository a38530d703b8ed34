"""More of a PostgreSQL store's bad days, through the real CLI in a subprocess where the operator meets
them: two scheduled runs that create or upgrade the same store's schema at once, and a server that
refuses the connection (password, database, pg_hba.conf, TLS) with what to do about it."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import URL, create_engine, make_url, text
from sqlalchemy.exc import OperationalError

from connector.store import SqlStore, StoreError
from connector.store._migrations import migrate
from tests.cli._configs import generated_pair
from tests.harness.crash import mvsync_child, mvsync_command

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
            child = mvsync_child("run", "cycle", "-c", str(config))
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


def _cli(config: Path, *args: str) -> tuple[int, str, str]:
    """``mvsync history list`` (or ``args``) on ``config`` in a subprocess: exit code, stdout, stderr."""
    done = subprocess.run(
        [*mvsync_command(), *(args or ("history", "list")), "-c", str(config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    return done.returncode, done.stdout, done.stderr


def _free_port() -> int:
    probe = socket.create_server(("127.0.0.1", 0))
    port = int(probe.getsockname()[1])
    probe.close()  # nothing listens there now
    return port


@pytest.mark.parametrize(
    ("change", "code", "said", "advice"),
    [
        (
            {"password": "wrong-pw-never-shown"},
            4,
            "password authentication failed for user",
            "check the user and the password in store.url",
        ),
        ({"database": "mvsync_not_created"}, 4, 'database "mvsync_not_created" does not exist', "CREATE DATABASE"),
        (
            {"query": {"sslmode": "require"}},
            4,
            "server does not support SSL, but SSL was required",
            "enable TLS on the server",
        ),
        ({"query": {"sslmode": "bogus"}}, 2, 'invalid sslmode value: "bogus"', "correct that parameter of its query"),
        ({"port": 0}, 4, "Connection refused; Is the server running on that host", "pg_isready -h HOST -p PORT"),
    ],
    ids=["wrong-password", "missing-database", "tls-required", "bad-sslmode", "refused"],
)
def test_a_refused_connection_names_the_store_and_says_what_to_do(
    tmp_path: Path, postgres_db: Callable[[], str], change: dict[str, Any], code: int, said: str, advice: str
) -> None:
    """Found: a wrong password, a database not created, TLS asked of a server without it, all ended with
    libpq's reason alone (exit 4) and no word of what to change; a refused connection's message ran over
    two lines (libpq's hint on a tab-indented line of its own); ``sslmode=bogus``, a mistake in the
    configuration like an unknown parameter (exit 2), was exit 4."""
    parsed = make_url(postgres_db())
    password = str(parsed.password)
    if change.get("port") == 0:
        change = {"port": _free_port()}
    url = parsed.set(**change)
    config = _config(tmp_path, url.render_as_string(hide_password=False))
    exit_code, out, err = _cli(config)
    assert exit_code == code, (out, err)
    masked = url.render_as_string(hide_password=True)
    named = masked if code == 4 else f"store.url {masked}"
    assert f"{named}: " in err and said in err and advice in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert password not in out + err and "wrong-pw-never-shown" not in out + err


@contextlib.contextmanager
def _rejected_by_pg_hba(server: Any, url: URL) -> Iterator[None]:
    """The server's pg_hba.conf rejects ``url``'s user on its database for the ``with`` (a line of
    its own on top, removed afterwards); returns once the server has loaded it."""
    if not server.owned:
        pytest.skip("needs the harness's own PostgreSQL (its pg_hba.conf)")
    hba = server.data_dir / "cluster" / "pg_hba.conf"
    before = hba.read_text()
    admin = create_engine(server.url(), isolation_level="AUTOCOMMIT")
    try:
        hba.write_text(f"host {url.database} {url.username} 127.0.0.1/32 reject\n{before}")
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_reload_conf()"))
        _until_refused(url)
        yield
    finally:
        hba.write_text(before)
        with admin.connect() as conn:
            conn.execute(text("SELECT pg_reload_conf()"))
        admin.dispose()


def _until_refused(url: URL, deadline_s: float = 60.0) -> None:
    """Return once a connection as ``url`` is refused (the postmaster reloads its files on a signal)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        probe = create_engine(url)
        try:
            with probe.connect():
                pass
        except OperationalError:
            return
        finally:
            probe.dispose()
        time.sleep(0.05)
    pytest.fail(f"pg_hba.conf was not reloaded within {deadline_s} s")


def test_a_connection_pg_hba_conf_rejects_names_the_store_and_says_what_to_do(
    tmp_path: Path, postgres_server: Any, postgres_db: Callable[[], str]
) -> None:
    """Found: "pg_hba.conf rejects connection for host ..." ended the command (exit 4) with no word of
    what to change (a line in pg_hba.conf, or TLS where the line is hostssl)."""
    parsed = make_url(postgres_db())
    role, password = f"hba_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin = create_engine(parsed, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
    url = parsed.set(username=role, password=password)
    try:
        with _rejected_by_pg_hba(postgres_server, url):
            code, out, err = _cli(_config(tmp_path, url.render_as_string(hide_password=False)), "run", "cycle")
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP ROLE {role}"))
        admin.dispose()
    assert code == 4, (out, err)
    assert f"cannot use the store {url.render_as_string(hide_password=True)}: " in err
    assert f'pg_hba.conf rejects connection for host "127.0.0.1", user "{role}", database "{parsed.database}"' in err
    assert "ask its administrator for a line for them" in err and "sslmode=require" in err
    assert password not in out + err and "Traceback" not in err


def test_a_session_the_server_ends_under_a_unit_of_work_says_what_was_kept_and_what_to_do(
    postgres_db: Callable[[], str],
) -> None:
    """Found: a PostgreSQL restart (or pg_terminate_backend) in the middle of a synchronization or an
    export step stopped it (exit 4, the units committed before kept, the next run went on) with
    "cannot use the store URL: terminating connection due to administrator command" alone: nothing of
    what was kept or what to do. Here the store's own session is ended inside a transaction."""
    url = postgres_db()
    store = SqlStore(url)
    dba = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with pytest.raises(StoreError) as caught, store.transaction() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
            with dba.connect() as other:
                assert other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid}).scalar() is True
            conn.execute(text("SELECT 1"))
        with store.read() as conn:  # the next unit of work gets a new session
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        dba.dispose()
        store.close()
    message = str(caught.value)
    assert caught.value.exit_code == 4 and message.startswith(f"cannot use the store {store.where}: ")
    assert "terminating connection due to administrator command" in message and "\n" not in message
    assert "what was committed before is kept; run again once the store answers" in message


def test_a_role_that_may_not_read_the_store_is_told_to_get_select_not_a_write_grant(
    tmp_path: Path, postgres_db: Callable[[], str]
) -> None:
    """Found: `mvsync history list` as an auditor's role without SELECT on run_history said the store
    "refused this role a write" and to grant SELECT, INSERT, UPDATE and DELETE: the command only
    reads, and a read-only role needs SELECT alone."""
    parsed = make_url(postgres_db())
    assert _cli(_config(tmp_path, parsed.render_as_string(hide_password=False)), "run", "cycle")[0] == 0
    role, password = f"auditor_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin = create_engine(parsed, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
        conn.execute(text(f"GRANT SELECT ON store_meta TO {role}"))  # the version check reads, the rest is denied
    url = parsed.set(username=role, password=password)
    try:
        code, out, err = _cli(_config(tmp_path, url.render_as_string(hide_password=False)))
    finally:
        with admin.connect() as conn:
            conn.execute(text(f"DROP OWNED BY {role}"))
            conn.execute(text(f"DROP ROLE {role}"))
        admin.dispose()
    assert code == 4, (out, err)
    masked = url.render_as_string(hide_password=True)
    assert f"the store {masked} refused this role a read (permission denied for table run_history)" in err
    assert "grant it SELECT on mvsync's tables" in err and "a write" not in err
    assert password not in out + err and "Traceback" not in err


def test_a_run_that_waits_too_long_for_another_runs_schema_upgrade_says_so(
    tmp_path: Path, postgres_db: Callable[[], str]
) -> None:
    """Found: a run that started while another mvsync was creating or upgrading the store's schema
    (an upgrade of a large store builds indexes for minutes) waited the lock timeout, then stopped as
    busy (exit 5) "such as a VACUUM FULL, a REINDEX or a transaction left open": not the cause, and
    nothing to find in pg_stat_activity by that description. It now says another mvsync process is
    creating or upgrading the schema, and to let it finish (exit 5 as before)."""
    url = postgres_db()
    config = _config(tmp_path, url + "?options=-c%20lock_timeout%3D1000")  # 1 s instead of 30
    holder = create_engine(url)
    try:
        with holder.connect() as conn:
            migrate(conn)  # another run's schema creation, not yet committed
            code, out, err = _cli(config, "run", "cycle")
            conn.rollback()
    finally:
        holder.dispose()
    assert code == 5, (out, err)
    assert "is busy: another mvsync process is creating or upgrading its schema" in err, err
    assert "let it finish, then run again" in err and "VACUUM FULL" not in err
    assert str(make_url(url).password) not in out + err and "Traceback" not in err
    assert _cli(config, "run", "cycle")[0] == 0  # once it is done (here: rolled back), the run creates the store
