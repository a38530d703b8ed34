"""A PostgreSQL store that reads fine and takes no write, met by the real CLI in a subprocess: a hot
standby (a read replica, or what a DNS name names after a failover went the wrong way) and a primary
a DBA froze with ``default_transaction_read_only``. A run (a dry run too) refuses before it writes
anything, naming the server that answered, which of the two it is and what to do; the read-only
commands work; libpq's ``target_session_attrs=read-write`` over both servers, the advice given, runs."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import URL, make_url

from connector.store import SqlStore
from tests.conftest import require_or_skip
from tests.harness.postgres_server import PostgresServer, PostgresUnavailable, start_postgres, start_standby
from tests.store.test_postgres_bad_days import _as_dba
from tests.store.test_postgres_server_limits import _cli, _config, _one, _role

pytestmark = pytest.mark.postgres


@dataclass
class Replicated:
    """A primary holding a store with one run, and a hot standby of it (the store's URL on each)."""

    primary: URL
    standby: URL


@pytest.fixture(scope="module")
def replicated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicated]:
    """A server of its own whose store one `run cycle` wrote, then a standby copied from it."""
    try:
        primary = start_postgres()
    except PostgresUnavailable as exc:
        require_or_skip(f"PostgreSQL unavailable: {exc}")
        raise
    standby: PostgresServer | None = None
    try:
        url = make_url(primary.create_database())
        code, out, err = _cli(_config(tmp_path_factory.mktemp("primary"), url), "run", "cycle")
        assert code == 0, (out, err)
        try:
            standby = start_standby(primary)
        except PostgresUnavailable as exc:
            require_or_skip(f"a hot standby: {exc}")
        assert standby is not None
        yield Replicated(url, url.set(port=standby.port))
    finally:
        if standby is not None:
            standby.stop()
        primary.stop()


def _runs(url: URL) -> int:
    return int(_one(url, "SELECT count(*) FROM run_history"))


@pytest.mark.parametrize("dry_run", [False, True], ids=["run", "dry-run"])
def test_a_run_on_a_hot_standby_refuses_before_writing_naming_the_server_and_target_session_attrs(
    tmp_path: Path, replicated: Replicated, dry_run: bool
) -> None:
    """Found: `mvsync run` on a standby stopped at its first write (the run's history row) with "the
    server refused a write (cannot execute INSERT in a read-only transaction); store.url may point at a
    standby ... or at a database set default_transaction_read_only": neither which of the two, nor the
    server that answered (a DNS name that followed a failover to the replica), nor how to follow the
    primary. It now refuses before writing, saying it is a hot standby (pg_is_in_recovery()), which
    host:port answered, and libpq's target_session_attrs=read-write over a list of hosts."""
    url = replicated.standby
    code, out, err = _cli(_config(tmp_path, url), "run", "cycle", *(["--dry-run"] if dry_run else []))
    assert code == 4, (out, err)
    masked = url.render_as_string(hide_password=True)
    assert err.startswith(f"error: the store {masked} is a hot standby, a read-only replica (127.0.0.1:{url.port} ")
    assert "pg_is_in_recovery() is true there" in err and "point store.url at the primary" in err
    assert "?host=A:5432&host=B:5432) with target_session_attrs=read-write" in err
    assert "this run wrote nothing" in err and "cannot execute INSERT" not in err
    assert "Traceback" not in err and str(url.password) not in out + err
    assert _runs(replicated.primary) == 1  # nothing happened anywhere


def test_read_only_commands_work_on_a_hot_standby_and_doctor_names_it(tmp_path: Path, replicated: Replicated) -> None:
    """History reads from a standby (a replica is fine for reading); `mvsync doctor` fails its writable
    check with the run's own words, not "use the primary" alone."""
    config = _config(tmp_path, replicated.standby)
    code, out, err = _cli(config, "history", "list", "--json")
    assert code == 0, (out, err)
    assert '"profile": "cycle"' in out and '"status": "success"' in out
    code, out, err = _cli(config, "doctor", "--json")
    assert code == 6, (out, err)
    assert "is a hot standby, a read-only replica" in out and "target_session_attrs=read-write" in out


def test_target_session_attrs_over_the_standby_and_the_primary_runs_on_the_primary(
    tmp_path: Path, replicated: Replicated
) -> None:
    """The advice works: store.url naming the standby first and the primary second, with
    target_session_attrs=read-write, runs on the primary (libpq skips the standby)."""
    primary, standby = replicated.primary, replicated.standby
    hosts = f"host=127.0.0.1:{standby.port}&host=127.0.0.1:{primary.port}"
    both = (
        f"postgresql+psycopg://{primary.username}:{primary.password}@/{primary.database}?{hosts}"
        "&target_session_attrs=read-write"
    )
    before = _runs(primary)
    code, out, err = _cli(_config(tmp_path, both), "run", "cycle")
    assert code == 0, (out, err)
    assert _runs(primary) == before + 1


def test_a_primary_a_dba_froze_read_only_refuses_a_run_saying_where_to_lift_it(
    tmp_path: Path, postgres_db: Callable[[], str]
) -> None:
    """Found: a primary with default_transaction_read_only = on for mvsync's role or its database (a
    DBA's freeze) stopped a run at its first write with the same "may point at a standby ... or at a
    database set default_transaction_read_only", not saying which, nor where it was set. It now refuses
    before writing, naming the setting, where it was set and the statement that lifts it; once lifted,
    the next run goes on. (The database's own setting: test_postgres_bad_days.py, in process.)"""
    admin_url = make_url(postgres_db())
    database, dba = str(admin_url.database), admin_url.render_as_string(hide_password=False)
    role, password = _role(admin_url, f'ALTER DATABASE "{database}" OWNER TO {{role}}')
    url = admin_url.set(username=role, password=password)
    SqlStore(url.render_as_string(hide_password=False)).close()  # the role created the store
    lift = f"ALTER ROLE {role} RESET default_transaction_read_only"
    _as_dba(dba, f"ALTER ROLE {role} SET default_transaction_read_only = on")

    config = _config(tmp_path, url)
    code, out, err = _cli(config, "run", "cycle")
    assert code == 4, (out, err)
    masked = url.render_as_string(hide_password=True)
    assert err.startswith(f"error: the store {masked} is set read-only: default_transaction_read_only is on ")
    assert "(set in: user)" in err and f"lift it ({lift})" in err and "this run wrote nothing" in err
    assert "Traceback" not in err and password not in out + err
    assert _runs(admin_url) == 0

    _as_dba(dba, lift)
    code, out, err = _cli(config, "run", "cycle")
    assert code == 0, (out, err)


def _replayed(standby: URL, runs: int) -> None:
    """Wait until the standby has replayed the primary's ``runs`` runs (streaming replication lags a little)."""
    deadline = time.monotonic() + 60
    while _runs(standby) < runs:
        assert time.monotonic() < deadline, "the standby did not replay the primary's runs within 60 s"
        time.sleep(0.1)


def test_the_commands_that_write_refuse_a_hot_standby_before_writing(tmp_path: Path, replicated: Replicated) -> None:
    """Found: `mvsync history clear` on a standby holding a run to clear stopped at its DELETE with the general "the
    server refused a write ... may point at a standby or at a database set default_transaction_read_only",
    not which, where, nor how to follow the primary. It now refuses before deleting, in the run's words
    and saying nothing was cleared. `mvsync store upgrade` of a current store writes nothing, so it still
    says "nothing to do" there; one that is behind refuses the same way (in process: a standby cannot be
    made to hold an older schema than its primary)."""
    (tmp_path / "primary").mkdir()
    code, out, err = _cli(_config(tmp_path / "primary", replicated.primary), "run", "cycle")
    assert code == 0, (out, err)  # so the standby holds a run that `history clear` would delete
    before = _runs(replicated.primary)
    _replayed(replicated.standby, before)
    config = _config(tmp_path, replicated.standby)
    code, out, err = _cli(config, "history", "clear", "--older-than", "0")
    assert code == 4, (out, err)
    assert "is a hot standby, a read-only replica" in err and "target_session_attrs=read-write" in err
    assert err.rstrip().endswith("nothing was cleared"), err
    assert "cannot execute DELETE" not in err and "Traceback" not in err
    assert _runs(replicated.primary) == before

    code, out, err = _cli(config, "store", "upgrade")
    assert code == 0, (out, err)
    assert "nothing to do" in out


def test_a_store_upgrade_behind_on_a_read_only_server_refuses_before_writing(
    replicated: Replicated, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A standby whose store is behind this mvsync (an mvsync upgraded on the sync server before its
    store): the upgrade refuses naming the standby and saying the schema was not upgraded, instead of
    failing at the migration's first CREATE or ALTER."""
    from connector.store import StoreReadOnlyError, _sql

    store = SqlStore(replicated.standby.render_as_string(hide_password=False), create=False, migrate_schema=False)
    try:
        monkeypatch.setattr(_sql, "SCHEMA_VERSION", _sql.SCHEMA_VERSION + 1)  # this mvsync is one version newer
        with pytest.raises(StoreReadOnlyError) as caught:
            store.upgrade()
    finally:
        store.close()
    message = str(caught.value)
    assert "is a hot standby, a read-only replica" in message
    assert message.endswith("the schema was not upgraded")
