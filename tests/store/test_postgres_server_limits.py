"""A PostgreSQL store at the limits its server sets, met by the real CLI in a subprocess: a full disk,
the connection limits of the server, the role and the database, and a role that may not create or alter
mvsync's tables. Each must stop the run with the store named (password masked), what to do, the
documented exit code, and nothing committed lost."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import URL, create_engine, make_url, text

from tests.cli._configs import generated_pair
from tests.conftest import require_or_skip
from tests.harness.crash import mvsync_command

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
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], check=True, timeout=30)
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
