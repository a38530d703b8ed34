"""A PostgreSQL store at the limits its server sets, met by the real CLI in a subprocess: a full disk,
the connection limits of the server, the role and the database, and a role that may not create or alter
mvsync's tables. Each must stop the run with the store named (password masked), what to do, the
documented exit code, and nothing committed lost."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import URL, create_engine, make_url, text

from connector.store import SqlStore, StoreError, StoreUnreachableError
from connector.store._store_meta import write_meta
from tests.cli._configs import generated_pair
from tests.conftest import require_or_skip
from tests.harness.crash import mvsync_command
from tests.harness.postgres_server import PostgresServer, PostgresUnavailable, start_postgres
from tests.store.test_postgres_bad_days import _as_dba

pytestmark = pytest.mark.postgres


def _config(tmp_path: Path, url: URL | str, *, count: int = 5, photo_bytes: int = 16, page_size: int = 500) -> Path:
    """The generated pair (``cycle`` imports and synchronizes ``count`` people) on the store ``url``."""
    if isinstance(url, URL):
        url = url.render_as_string(hide_password=False)
    config = tmp_path / "mvsync.toml"
    text_ = generated_pair(count).replace('url = "sqlite:///store.db"', f'url = "{url}"')
    text_ = text_.replace("photo_bytes = 16", f"photo_bytes = {photo_bytes}")
    config.write_text(text_.replace('agent = "src" }', f'agent = "src", page_size = {page_size} }}'))
    return config


def _cli(config: Path, *args: str) -> tuple[int, str, str]:
    """The real CLI with ``args`` on ``config`` in a subprocess: exit code, stdout, stderr."""
    done = subprocess.run(
        [*mvsync_command(), *args, "-c", str(config)], capture_output=True, text=True, check=False, timeout=120
    )
    return done.returncode, done.stdout, done.stderr


def _one(url: URL | str, query: str) -> Any:
    """One value ``query`` reads from the database of ``url`` (as the harness's superuser)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(text(query)).scalar()
    finally:
        engine.dispose()


@dataclass
class SmallVolume:
    """A database whose tables mvsync creates lie on a small file system of their own (a tablespace)."""

    url: URL
    folder: Path

    def grow(self, size: str) -> None:
        """Give the file system room (what the operator does when told the disk is full)."""
        subprocess.run(["mount", "-o", f"remount,size={size}", str(self.folder)], check=True, timeout=30)


def _mount_problem(server: Any) -> str | None:
    """Why this machine cannot give the harness's server a small file system (None: it can)."""
    if not server.owned:
        return "needs the harness's own PostgreSQL (a tablespace on this machine)"
    if not sys.platform.startswith("linux") or os.geteuid() != 0 or shutil.which("mount") is None:
        return "needs Linux, root and mount (a tmpfs for a tablespace)"
    return None


@pytest.fixture
def small_volume(postgres_server: Any) -> Iterator[SmallVolume]:
    """A new database whose default tablespace is a 1 MB tmpfs: PostgreSQL meets a real ENOSPC there.

    Why a tablespace: filling the server's own data directory would stop every other test's database
    (and PostgreSQL's write-ahead log); a tablespace fills alone, with the error a full data volume gives.
    """
    problem = _mount_problem(postgres_server)
    if problem is not None:
        require_or_skip(f"a full disk under PostgreSQL: {problem}")
    folder = Path(tempfile.mkdtemp(prefix="mvsync-pg-small-"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True, text=True, timeout=30
    )
    if mounted.returncode != 0:  # a container without CAP_SYS_ADMIN
        folder.rmdir()
        require_or_skip(f"a full disk under PostgreSQL: cannot mount a tmpfs: {mounted.stderr.strip()}")
    owner = pwd.getpwnam(postgres_server.run_as or "root")
    os.chown(folder, owner.pw_uid, owner.pw_gid)
    space = f"small_{uuid.uuid4().hex[:8]}"
    admin = create_engine(postgres_server.url(), isolation_level="AUTOCOMMIT")
    url = make_url(postgres_server.create_database())
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE TABLESPACE {space} LOCATION '{folder}'"))
            conn.execute(text(f'ALTER DATABASE "{url.database}" SET default_tablespace = {space}'))
        yield SmallVolume(url, folder)
    finally:
        postgres_server.drop_database(str(url.database))
        with admin.connect() as conn:
            conn.execute(text(f"DROP TABLESPACE IF EXISTS {space}"))
        admin.dispose()
        subprocess.run(["umount", str(folder)], check=False, timeout=30)
        folder.rmdir()


def test_a_full_disk_under_the_store_stops_the_run_as_a_store_fault_and_the_next_run_resumes(
    tmp_path: Path, small_volume: SmallVolume
) -> None:
    """Found: PostgreSQL out of disk space ("could not extend file ...: No space left on device",
    SQLSTATE 53100) in an import page stopped the step as stopped-connector-exception, blaming the
    connector, with the whole INSERT and its parameters (people's names and addresses) on stdout,
    in a traceback in the log and in run history. It is now a store fault: one line naming the store
    and the file that could not grow, what to free, exit 4; the pages committed before are kept."""
    url = small_volume.url
    config = _config(tmp_path, url, count=500, photo_bytes=1000, page_size=50)
    code, out, err = _cli(config, "run", "cycle")
    assert code == 4, (out, err)
    masked = url.render_as_string(hide_password=True)
    assert f"the store {masked} cannot grow: the database server's disk is full (could not extend file" in err
    assert "No space left on device" in err and "free space on the server's volume" in err
    assert "what was committed before is kept" in err
    assert "Traceback" not in err and "u0000001" not in out + err  # no statement, no person's data
    assert str(url.password) not in out + err
    status, message = _one(url, "SELECT status || ' ' || coalesce(message, '') FROM run_history").split(" ", 1)
    assert status == "stopped-store-error" and "cannot grow" in message and "u0000001" not in message
    kept = _one(url, "SELECT count(*) FROM cs_object")
    assert kept > 0  # the pages committed before the disk filled

    small_volume.grow("64m")
    code, out, err = _cli(config, "run", "cycle")
    assert code == 0, (out, err)
    assert _one(url, "SELECT count(*) FROM cs_object") == 1000 > kept  # both agents' people, from where it stopped


def _role(admin_url: URL, *statements: str) -> tuple[str, str]:
    """A new login role (name, password), then ``statements`` run as the admin (``{role}`` names it)."""
    role, password = f"r_{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'"))
            for statement in statements:
                conn.execute(text(statement.format(role=role)))
    finally:
        admin.dispose()
    return role, password


def _steps(url: URL) -> list[tuple[str, str, int]]:
    """Each recorded step of the store's runs: (agent, status, adds)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT agent, status, counters FROM run_step ORDER BY id")).all()
    finally:
        engine.dispose()
    return [(agent, status, int(json.loads(counters or "{}").get("adds", 0))) for agent, status, counters in rows]


def test_a_role_whose_connection_limit_a_run_outgrows_is_told_the_limit_and_how_many_a_run_holds(
    tmp_path: Path, postgres_db: Callable[[], str]
) -> None:
    """Found: a role with CONNECTION LIMIT 3 (a DBA's cap on mvsync's role) ran both imports of
    ``cycle``, then its synchronization, which holds a fourth session (the metaverse lock), stopped
    with exit 4 and libpq's 'too many connections for role' alone: nothing said it was the role's
    limit, nor how many connections a run needs, so the next run stopped at the same step. The
    message now names the limit (ALTER ROLE ... CONNECTION LIMIT) and that a run holds up to four;
    the imports committed before are kept, and with four the next run ends well."""
    admin_url = make_url(postgres_db())
    owner = f'ALTER DATABASE "{admin_url.database}" OWNER TO {{role}}'
    role, password = _role(admin_url, owner, "ALTER ROLE {role} CONNECTION LIMIT 3")
    url = admin_url.set(username=role, password=password)
    config = _config(tmp_path, url)
    code, out, err = _cli(config, "run", "cycle")
    assert code == 4, (out, err)
    masked = url.render_as_string(hide_password=True)
    assert err.startswith(f"error: cannot use the store {masked}: connection failed: ") and "\n" not in err.strip()
    assert f'too many connections for role "{role}"' in err
    assert "the role's connection limit is reached (ALTER ROLE NAME CONNECTION LIMIT N" in err
    assert "a run holds up to four connections at once" in err and password not in out + err
    assert _steps(admin_url) == [("src", "success", 5), ("tgt", "success", 5)]  # kept: the next run goes on

    _role(admin_url, f"ALTER ROLE {role} CONNECTION LIMIT 4")
    code, out, err = _cli(config, "run", "cycle")
    assert code == 0, (out, err)


@contextlib.contextmanager
def _own_server(what: str, *settings: str) -> Iterator[PostgresServer]:
    """A server of its own with ``settings`` for the ``with`` (skips where ``what`` cannot be had)."""
    try:
        server = start_postgres(settings=settings)
    except PostgresUnavailable as exc:
        require_or_skip(f"PostgreSQL unavailable: {exc}")
        raise
    try:
        if not server.owned:
            require_or_skip(f"{what} needs the harness's own PostgreSQL (MVSYNC_TEST_POSTGRES_URL is set)")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def small_server() -> Iterator[PostgresServer]:
    """A server of its own with 4 connections, 1 of them kept for superusers (none other can be filled)."""
    with _own_server("a full server", "max_connections=4", "superuser_reserved_connections=1") as server:
        yield server


@contextlib.contextmanager
def _holding(url: URL, sessions: int) -> Iterator[None]:
    """``sessions`` open sessions of the superuser on the database of ``url`` for the ``with``."""
    engine = create_engine(url, pool_size=sessions, max_overflow=0)
    held = [engine.connect() for _ in range(sessions)]
    try:
        yield
    finally:
        for conn in held:
            conn.close()
        engine.dispose()


@pytest.mark.parametrize(
    ("who", "held", "said", "advice"),
    [
        (
            "role",
            3,
            "remaining connection slots are reserved for",
            "the server has no connection left (max_connections",
        ),
        ("superuser", 4, "sorry, too many clients already", "the server has no connection left (max_connections"),
        ("database-limit", 0, "too many connections for database", "the database's connection limit is reached"),
    ],
    ids=["role", "superuser", "database-limit"],
)
def test_a_full_server_or_database_names_the_store_and_says_what_to_do(
    tmp_path: Path, small_server: PostgresServer, who: str, held: int, said: str, advice: str
) -> None:
    """Found: a server at max_connections refused mvsync's role (not a superuser) with "remaining
    connection slots are reserved for non-replication superuser connections", and a database at its
    CONNECTION LIMIT with "too many connections for database", which the store did not know: libpq's
    words alone, and not the store-does-not-answer-yet fault a console starts through. A superuser's
    "too many clients" was known, without how many connections a run holds."""
    admin_url = make_url(small_server.create_database())
    url = admin_url
    if who != "superuser":  # the connection limits do not hold superusers back
        statements = [f'ALTER DATABASE "{admin_url.database}" OWNER TO {{role}}']
        if who == "database-limit":
            statements.append(f'ALTER DATABASE "{admin_url.database}" CONNECTION LIMIT 0')
        role, password = _role(admin_url, *statements)
        url = admin_url.set(username=role, password=password)
    with _holding(admin_url, held):
        code, out, err = _cli(_config(tmp_path, url), "run", "cycle")
        with pytest.raises(StoreUnreachableError):  # for now: a console starts and serves 503 pages until then
            SqlStore(url.render_as_string(hide_password=False))
    assert code == 4, (out, err)
    assert f"cannot use the store {url.render_as_string(hide_password=True)}: " in err and said in err
    assert advice in err and "a run holds up to four connections at once" in err
    assert str(url.password) not in out + err and "Traceback" not in err


def _run_only_role(admin_url: URL) -> URL:
    """``admin_url`` as a new role with the grants README gives a role that only runs mvsync."""
    role, password = _role(
        admin_url,
        "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {role}",
        "GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {role}",
    )
    return admin_url.set(username=role, password=password)


def _behind(url: URL) -> None:
    """Set the store of ``url`` back to schema version 5, as an mvsync before migration 6 left it (one
    that alters a table: migration 7 only writes a row)."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE cs_object DROP COLUMN renderings"))
            conn.execute(text("UPDATE store_meta SET value = '5' WHERE key = 'schema_version'"))
            conn.execute(text("DELETE FROM store_meta WHERE key = 'run_locks_from'"))
    finally:
        engine.dispose()


def test_a_role_that_may_not_create_the_stores_tables_is_told_to_create_them_as_the_owner(
    tmp_path: Path, postgres_db: Callable[[], str]
) -> None:
    """Found: the first run with a role that does not own the new database (PostgreSQL 15 gives such a
    role no CREATE on the schema public) stopped with "refused this role a write (permission denied for
    schema public): grant it SELECT, INSERT, UPDATE and DELETE on mvsync's tables": grants on tables
    that did not exist, and no word of CREATE or of the owner creating them."""
    admin_url = make_url(postgres_db())
    url = _run_only_role(admin_url)
    code, out, err = _cli(_config(tmp_path, url), "run", "cycle")
    assert code == 4, (out, err)
    masked = url.render_as_string(hide_password=True)
    assert f"the store {masked} holds no mvsync tables yet, and this role may not create them " in err
    assert "(permission denied for schema public)" in err and "GRANT CREATE ON SCHEMA" in err
    assert "as the role that owns the database" in err and "grant it SELECT, INSERT" not in err
    assert str(url.password) not in out + err and "Traceback" not in err
    assert _one(admin_url, "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0  # nothing half made


def test_a_role_that_may_not_upgrade_the_schema_is_told_to_upgrade_it_as_the_tables_owner(
    tmp_path: Path, postgres_db: Callable[[], str]
) -> None:
    """Found: after mvsync was upgraded, the first run as a role with the grants README gives a role
    that only runs mvsync stopped with "refused this role a write (must be owner of table ...): grant
    it SELECT, INSERT, UPDATE and DELETE", grants it had: only the tables' owner may alter them, and
    nothing said to run `mvsync store upgrade` as that owner. Once the owner has, the role runs."""
    admin_url = make_url(postgres_db())
    owner = admin_url.render_as_string(hide_password=False)
    SqlStore(owner).close()  # the owner created the store
    _behind(admin_url)
    url = _run_only_role(admin_url)
    config = _config(tmp_path, url)
    code, out, err = _cli(config, "run", "cycle")
    assert code == 4, (out, err)
    masked = url.render_as_string(hide_password=True)
    assert f"the store {masked} has schema version 5, older than this mvsync's (7), and this role may not" in err
    assert "(must be owner of table" in err and "run `mvsync store upgrade` once as the role that owns" in err
    assert "grant it SELECT, INSERT" not in err and "nothing was changed" in err
    assert str(url.password) not in out + err and "Traceback" not in err
    assert _one(admin_url, "SELECT value FROM store_meta WHERE key = 'schema_version'") == "5"

    store = SqlStore(owner, migrate_schema=False)
    try:
        assert store.upgrade() == (5, 7)  # what the message says to do (`mvsync store upgrade` calls this)
    finally:
        store.close()
    code, out, err = _cli(config, "run", "cycle")
    assert code == 0, (out, err)


def _connections_finding(tmp_path: Path, url: URL) -> Any:
    """``mvsync doctor``'s ``connections`` finding on the store ``url`` (None: there is none)."""
    from connector.config import load_config
    from connector.doctor import run_doctor

    config = load_config(_config(tmp_path, url))
    found = [f for f in run_doctor(config, connect=False).findings if f.check == "connections"]
    return found[0] if found else None


@pytest.mark.parametrize(
    ("statement", "severity", "said"),
    [
        ("ALTER ROLE {role} CONNECTION LIMIT 3", "error", "this role may open 3 connections (its CONNECTION LIMIT)"),
        ('ALTER DATABASE "{database}" CONNECTION LIMIT 2', "error", "may take 2 connections (its CONNECTION LIMIT)"),
        ("ALTER ROLE {role} CONNECTION LIMIT 4", "ok", "neither this role's nor the database's CONNECTION LIMIT"),
    ],
    ids=["role-3", "database-2", "role-4"],
)
def test_doctor_finds_a_connection_limit_below_what_a_run_holds(
    tmp_path: Path, postgres_db: Callable[[], str], statement: str, severity: str, said: str
) -> None:
    """Found: `mvsync doctor` found nothing wrong with a role (or a database) whose CONNECTION LIMIT is
    below the four connections a run holds at once, though every run of it stops at its first
    synchronization step (see the test above); it now says so, with the limit and what to change."""
    admin_url = make_url(postgres_db())
    database = str(admin_url.database)
    role, password = _role(
        admin_url,
        f'ALTER DATABASE "{database}" OWNER TO {{role}}',
        statement.replace('"{database}"', f'"{database}"'),
    )
    url = admin_url.set(username=role, password=password)
    SqlStore(url.render_as_string(hide_password=False)).close()  # the role created the store
    found = _connections_finding(tmp_path, url)
    assert found is not None and found.severity == severity, found
    assert said in found.message and password not in found.message
    if severity == "error":
        assert "fewer than the four a run holds at once" in found.message and "CONNECTION LIMIT N" in found.message


def test_a_temp_file_limit_a_page_outgrows_stops_the_run_naming_the_setting_and_the_next_run_resumes(
    tmp_path: Path, postgres_db: Callable[[], str]
) -> None:
    """Found: a DBA's temp_file_limit for mvsync's role (here 64 kB, with the role's work_mem at its
    64 kB floor so that a small store spills: a page's or a sync chunk's rows go in through one INSERT
    ... FROM unnest, which spills past work_mem) ended the first synchronization chunk's INSERT with
    SQLSTATE 53400, which the store did not know: the step stopped as stopped-connector-exception,
    blaming the connector, with the INSERT statement in its message and nothing about the setting. It is
    now a store fault (exit 4) naming the store, the server's words, temp_file_limit and what to change;
    both imports committed before are kept, and once the limit is lifted the next run ends well."""
    admin_url = make_url(postgres_db())
    owner = f'ALTER DATABASE "{admin_url.database}" OWNER TO {{role}}'
    small = ("ALTER ROLE {role} SET work_mem = '64kB'", "ALTER ROLE {role} SET temp_file_limit = '64kB'")
    role, password = _role(admin_url, owner, *small)
    url = admin_url.set(username=role, password=password)
    config = _config(tmp_path, url, count=300, page_size=100)
    code, out, err = _cli(config, "run", "cycle")
    assert code == 4, (out, err)
    masked = url.render_as_string(hide_password=True)
    assert (
        f"error: the store {masked}: the database server refused a statement at one of its limits (temporary file "
        "size exceeds temp_file_limit (64kB)): a statement spilled more to temporary files than temp_file_limit"
    ) in err
    assert "ALTER ROLE NAME SET temp_file_limit = '1GB'" in err and "what was committed before is kept" in err
    assert "Traceback" not in err and "INSERT" not in out + err and password not in out + err
    steps = _steps(admin_url)
    assert steps[:2] == [("src", "success", 300), ("tgt", "success", 300)]  # kept
    assert [status for _, status, _ in steps[2:]] == ["stopped-store-error"]

    _as_dba(admin_url.render_as_string(hide_password=False), f"ALTER ROLE {role} SET temp_file_limit = -1")
    code, out, err = _cli(config, "run", "cycle")
    assert code == 0, (out, err)


@pytest.fixture
def few_locks_server() -> Iterator[PostgresServer]:
    """A server of its own whose shared lock table is the smallest PostgreSQL allows (10 locks for each of
    10 connections), which one session can fill."""
    with _own_server("a full lock table", "max_connections=10", "max_locks_per_transaction=10") as server:
        yield server


#: One statement that takes locks until the server's lock table is full ("out of shared memory"): advisory
#: locks of the transaction, one lock table entry each, each in a block of its own, so that the one refused
#: ends the loop and the rest stay held. (A tool that locks thousands of tables in one transaction, a
#: pg_dump of a large schema or a migration, fills it alike.)
_FILL_LOCK_TABLE = """
DO $$ BEGIN
  FOR i IN 1..100000 LOOP
    BEGIN PERFORM pg_advisory_xact_lock(-1, i); EXCEPTION WHEN out_of_memory THEN EXIT; END;
  END LOOP;
END $$
"""


def test_a_full_lock_table_stops_the_run_naming_max_locks_per_transaction(
    tmp_path: Path, few_locks_server: PostgresServer
) -> None:
    """Found: a server whose shared lock table another session had filled refused the next lock with
    "out of shared memory" (HINT: You might need to increase max_locks_per_transaction): a write on a
    session already open (SQLSTATE 53200) was an unknown database error (a traceback, exit 1, where it
    met the store's creation), and a new session ("FATAL: out of shared memory" at the connection, what
    `mvsync run` meets) had libpq's words alone. Both now name the store, the server's words, pg_locks
    to find who holds the locks and max_locks_per_transaction (exit 4); once that session ends, the
    next run ends well."""
    url = make_url(few_locks_server.create_database())
    store = SqlStore(url.render_as_string(hide_password=False))  # the store exists, and has a session open
    holder = create_engine(url)
    conn = holder.connect()
    try:
        conn.execute(text(_FILL_LOCK_TABLE))  # held until the transaction ends
        with pytest.raises(StoreError) as refused, store.transaction() as open_session:
            write_meta(open_session, "probe", "1")  # its transaction's id takes a lock table entry
        code, out, err = _cli(_config(tmp_path, url), "run", "cycle")
    finally:
        conn.rollback()
        conn.close()
        holder.dispose()
        store.close()
    masked = url.render_as_string(hide_password=True)
    assert str(refused.value).startswith(
        f"the store {masked}: the database server refused a statement at one of its limits (out of shared memory; "
        "You might need to increase max_locks_per_transaction.): its shared lock table is full"
    )
    assert code == 4, (out, err)
    assert f"cannot use the store {masked}: connection failed: " in err and "FATAL:  out of shared memory" in err
    assert "its shared lock table is full" in err and "pg_locks" in err
    assert "Traceback" not in err and str(url.password) not in out + err
    code, out, err = _cli(_config(tmp_path, url), "run", "cycle")
    assert code == 0, (out, err)


def test_a_statement_timeout_below_the_statistics_refreshs_lock_wait_does_not_stop_the_run(
    tmp_path: Path, postgres_db: Callable[[], str]
) -> None:
    """Found: the statistics refresh a run makes while cs_object grows (ANALYZE, after 1,000 new rows)
    waits up to 1 s for its lock and gives way to an (auto)vacuum holding the table; where the DBA set a
    statement_timeout below that (here 900 ms for the database), the timeout canceled the ANALYZE first
    (SQLSTATE 57014, not the lock timeout's 55P03) and the import stopped with exit 4, "canceled a
    statement ... statement timeout", for a refresh that is only ever deferred. The refresh now runs
    without the statement timeout (its lock wait stays bounded by the 1 s), so the run ends well."""
    url = make_url(postgres_db())
    dba = url.render_as_string(hide_password=False)
    SqlStore(dba).close()
    _as_dba(dba, f"ALTER DATABASE \"{url.database}\" SET statement_timeout = '900ms'")
    vacuum = create_engine(url)
    conn = vacuum.connect()
    try:
        conn.execute(text("LOCK TABLE cs_object IN SHARE UPDATE EXCLUSIVE MODE"))  # what a vacuum holds
        config = _config(tmp_path, url, count=1000, page_size=1000)  # one page: the refresh follows it
        with config.open("a") as toml:
            toml.write('[run_profiles.import-src]\nsteps = [{ type = "full-import", agent = "src" }]\n')
        code, out, err = _cli(config, "run", "import-src")
    finally:
        conn.rollback()
        conn.close()
        vacuum.dispose()
    assert code == 0, (out, err)
    assert _one(url, "SELECT count(*) FROM cs_object") == 1000
