"""``mvsync run --dry-run`` through the real CLI in a subprocess changes no store, on both backends:
not an older store's schema (no upgrade), not an empty PostgreSQL database (no tables), not a row of
any table after a dry run of each step type, not the files beside a SQLite store."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

from sqlalchemy import inspect, text

from connector.store import SCHEMA_VERSION, SqlStore
from connector.store._migrations import current_version
from tests.cli._configs import generated_pair
from tests.store._old_store import make_version_5

PROFILES = """[run_profiles.import]
steps = [{ type = "full-import", agent = "src" }, { type = "full-import", agent = "tgt" }]
[run_profiles.sync]
steps = [{ type = "full-sync", agent = "src" }, { type = "delta-sync", agent = "tgt" }]
[run_profiles.export]
steps = [{ type = "export", agent = "tgt" }]
"""


def _config(tmp_path: Path, store_url: str, count: int = 5) -> Path:
    path = tmp_path / "mvsync.toml"
    path.write_text(generated_pair(count).replace("sqlite:///store.db", store_url) + PROFILES)
    return path


def _mvsync(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as the user runs it: its own process (wide, so that no message is wrapped)."""
    cli = [sys.executable, "-c", "from connector.cli import main; main()", *args]
    return subprocess.run(cli, capture_output=True, text=True, timeout=120, env={**os.environ, "COLUMNS": "250"})


def _store_digest(store_url: str) -> tuple[int, list[str], str]:
    """The schema version, every table with its columns, and a digest of every row of every table."""
    store = SqlStore(store_url, create=False, migrate_schema=False)
    try:
        with store.read() as conn:
            inspector = inspect(conn)
            tables = sorted(inspector.get_table_names())
            layout = [f"{t}({','.join(sorted(c['name'] for c in inspector.get_columns(t)))})" for t in tables]
            digest = hashlib.sha256()
            for table in tables:
                for row in sorted(repr(tuple(r)) for r in conn.execute(text(f"SELECT * FROM {table}"))):
                    digest.update(f"{table}:{row}".encode())
            return current_version(conn), layout, digest.hexdigest()
    finally:
        store.close()


def _as_version_5(store_url: str) -> None:
    store = SqlStore(store_url)
    try:
        make_version_5(store)
    finally:
        store.close()


def test_a_dry_run_does_not_upgrade_an_older_store(tmp_path: Path, store_url: str) -> None:
    """A store an older mvsync wrote: the operator previews before the upgrade. The dry run upgraded
    the store (version 5 -> 6, a column added), so the older mvsync could no longer use it. Now it
    stops with exit 4 before it opens the store for writing, says why and what to do, and the store
    stays at version 5, every row and column as it was."""
    config = _config(tmp_path, store_url)
    assert _mvsync("run", "cycle", "-c", str(config)).returncode == 0
    _as_version_5(store_url)
    before = _store_digest(store_url)
    done = _mvsync("run", "export", "-c", str(config), "--dry-run")
    assert _store_digest(store_url) == before and before[0] == 5
    assert done.returncode == 4, done.stderr
    assert "schema version 5, older than this mvsync's" in done.stderr and "mvsync store upgrade" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_dry_run_creates_no_tables_in_an_empty_database(tmp_path: Path, store_url: str) -> None:
    """An empty PostgreSQL database (or an empty SQLite file a DBA made) is where the first run will
    create the store: the dry run created the tables there. Now it previews the first run against an
    empty store in memory, as it does where no SQLite file is, and the database stays empty."""
    if store_url.startswith("sqlite"):
        Path(store_url.removeprefix("sqlite:///")).write_bytes(_empty_sqlite_database(tmp_path))
    config = _config(tmp_path, store_url)
    done = _mvsync("run", "cycle", "-c", str(config), "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    assert _store_digest(store_url)[:2] == (0, [])
    assert json.loads(done.stdout)["steps"][2]["counters"]["projections"] == 5
    assert "holds no mvsync store" in done.stderr and "nothing is created" in done.stderr


def _empty_sqlite_database(tmp_path: Path) -> bytes:
    """The bytes of a valid SQLite database without any table (what ``sqlite3 store.db 'VACUUM'`` leaves)."""
    path = tmp_path / "empty.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 0")
        conn.execute("VACUUM")
    conn.close()
    return path.read_bytes()


def test_a_dry_run_of_each_step_type_changes_no_row_nor_file(tmp_path: Path, store_url: str) -> None:
    """Import, sync (full, delta) and export dry runs on a store with history, agent state, both
    connector spaces, a metaverse with photos and pending exports: every table's rows (the history,
    watermarks and store_meta too), and the files beside a SQLite store (the database byte for byte,
    its lock folder's files), are what they were. (The transform cache stays empty here; tests/store/
    test_dry_run.py compares every table with the engine too.)"""
    config = _config(tmp_path, store_url)
    assert _mvsync("run", "cycle", "-c", str(config)).returncode == 0
    before = _store_digest(store_url), _files_beside(store_url)
    assert before[0][0] == SCHEMA_VERSION
    _config(tmp_path, store_url, count=6)  # a sixth person in both systems: the import has news to preview
    for profile, change in (("import", "pending_import"), ("sync", None), ("export", "export")):
        done = _mvsync("run", profile, "-c", str(config), "--dry-run")
        assert done.returncode == 0, (profile, done.stderr)
        assert change is None or any(change in json.loads(line) for line in done.stdout.splitlines()), profile
        assert (_store_digest(store_url), _files_beside(store_url)) == before, profile


def _files_beside(store_url: str) -> dict[str, str]:
    """Every file in a SQLite store's folder (the database, its lock folder) with its content's digest.

    A lock's ``.holder`` record counts by its presence only: a dry run holds the run locks as a run
    does (so that no run writes what it reads) and says who holds them there, read only while held.
    """
    if not store_url.startswith("sqlite:///"):
        return {}
    folder = Path(store_url.removeprefix("sqlite:///")).parent
    return {
        str(p.relative_to(folder)): "" if p.name.endswith(".holder") else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.endswith(("-wal", "-shm"))
    }


def test_a_dry_run_leaves_a_store_in_rollback_journal_mode_as_it_is(tmp_path: Path) -> None:
    """Found in a bad-day pass: a SQLite store not in WAL mode (restored from `mvsync store backup`,
    which writes one self-contained file in rollback-journal mode) was switched to WAL by a dry run:
    its version read and its own connections set ``journal_mode=WAL``, which rewrites the database
    header. A dry run writes nothing: it now uses the file in the mode it is in."""
    store_url = f"sqlite:///{tmp_path / 'store' / 'store.db'}"
    config = _config(tmp_path, store_url)
    assert _mvsync("run", "cycle", "-c", str(config)).returncode == 0
    database = Path(store_url.removeprefix("sqlite:///"))
    with sqlite3.connect(database) as conn:
        assert conn.execute("PRAGMA journal_mode=DELETE").fetchone() == ("delete",)
    conn.close()
    before = _files_beside(store_url)
    _config(tmp_path, store_url, count=6)  # news to preview
    done = _mvsync("run", "cycle", "-c", str(config), "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    assert _files_beside(store_url) == before
    assert not database.with_name("store.db-wal").exists()
    with sqlite3.connect(database) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    conn.close()
    assert _mvsync("run", "cycle", "-c", str(config)).returncode == 0  # a real run uses WAL again
    with sqlite3.connect(database) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()
