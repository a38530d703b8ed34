"""``mvsync store restore BACKUP`` through the real CLI in a subprocess, on real SQLite files.

Before it existed, the README told operators to copy a backup over the store by hand, which left the
old store's ``-wal``/``-shm`` beside the copy: SQLite folded that log into the restored file (silent
damage), or mvsync refused it as another database's. The command checks the backup first, keeps the
store it replaces (its log folded in) under a dated name, and refuses while anything has the store open.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pty
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from connector.store import SCHEMA_VERSION
from tests.cli._configs import generated_pair, invoke
from tests.harness.crash import mvsync_command


def _mvsync(*args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    """The real CLI (stdin not a terminal unless given one): exit code, stdout and stderr as text."""
    env = {**os.environ, "COLUMNS": "250"}
    return subprocess.run(
        [*mvsync_command(), *args], stdin=stdin, capture_output=True, text=True, timeout=120, check=False, env=env
    )


def _runs(config: Path) -> list[int]:
    """The ids of the runs ``mvsync history list`` shows."""
    done = _mvsync("history", "list", "--json", "-c", str(config))
    assert done.returncode == 0, done.stderr
    return sorted(run["run_id"] for run in json.loads(done.stdout))


def _digest(folder: Path) -> dict[str, str]:
    """Every file of ``folder`` (not the lock folder) with a hash of its bytes: what "left as it was" compares."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with one run backed up to ``backups/b1.db``, and a second run after it (made once: each
    test restores into a copy of it)."""
    path = tmp_path_factory.mktemp("template") / "mvsync.toml"
    path.write_text(generated_pair(3))
    assert _mvsync("run", "cycle", "-c", str(path)).returncode == 0
    (path.parent / "backups").mkdir()
    assert _mvsync("store", "backup", str(_backup(path)), "-c", str(path)).returncode == 0
    assert _mvsync("run", "cycle", "-c", str(path)).returncode == 0
    return path


@pytest.fixture
def config(template: Path, tmp_path: Path) -> Path:
    """A copy of :func:`template`'s configuration, store and backup in ``tmp_path/store``."""
    folder = tmp_path / "store"
    shutil.copytree(template.parent, folder, ignore=shutil.ignore_patterns("*.locks"))
    return folder / template.name


def _ids(db: Path) -> list[int]:
    """The run ids recorded in the store file ``db`` (read directly: a check, not the behaviour under test)."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        return [int(row[0]) for row in conn.execute("SELECT id FROM run_history ORDER BY id")]


def _backup(config: Path) -> Path:
    return config.parent / "backups" / "b1.db"


def _store(config: Path) -> Path:
    return config.parent / "store.db"


def _restore(config: Path, backup: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return _mvsync("store", "restore", str(backup), "-c", str(config), *extra)


def test_restore_puts_the_backup_in_place_and_keeps_the_store_it_replaced(config: Path) -> None:
    """The next history list sees the backup's state (one run, not two), the next run goes on from it,
    and the store it replaced is kept under a dated name that restores it back (undo)."""
    store = _store(config)
    assert _ids(store) == [1, 2]
    done = _restore(config, _backup(config), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    previous = Path(report["previous"])
    assert report["store"] == str(store) and report["backup"] == str(_backup(config))
    assert report["restored"] is True and report["bytes"] == _backup(config).stat().st_size
    assert report["schema_version"] == SCHEMA_VERSION and report["upgrade_needed"] is False
    assert previous.parent == config.parent and previous.name.startswith("store.db.before-restore-20")
    assert sorted(p.name for p in config.parent.iterdir() if p.name.startswith("store.db")) == sorted(
        ["store.db", "store.db.locks", previous.name]
    )  # no -wal, -shm or unfinished copy beside either
    assert _runs(config) == [1]
    assert _ids(previous) == [1, 2]
    assert _mvsync("run", "cycle", "-c", str(config)).returncode == 0
    done = _restore(config, previous)  # undo: the store from before the restore
    assert done.returncode == 0, done.stderr
    assert f"the store it replaced is kept as {config.parent}/store.db.before-restore-" in done.stdout
    assert "check it with `mvsync doctor`" in done.stdout
    assert _ids(store) == [1, 2]
    assert len(list(config.parent.glob("store.db.before-restore-*"))) == 2  # a restore copies: the backup stays


#: Write a row into the store at argv[1] and die without closing it (kill -9, a power loss): its
#: write stays in the -wal beside the store, which the next opener of that file reads as part of it.
_KILLED_WRITER = (
    "import os, sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
    "c.execute('PRAGMA wal_autocheckpoint=0'); "
    "c.execute(\"INSERT INTO store_meta (key, value) VALUES ('marker', 'in the -wal')\"); os._exit(0)"
)


def _marker(db: Path) -> list[tuple[str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT value FROM store_meta WHERE key = 'marker'").fetchall()


def test_a_stale_wal_beside_the_store_goes_into_the_store_moved_aside_never_into_the_restored_one(
    config: Path,
) -> None:
    """Copying a backup over a store whose -wal still held writes (a killed process's) made SQLite fold
    those writes into the backup's file. The restore folds them into the store it moves aside."""
    store = _store(config)
    subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(store)], check=True, timeout=60)
    assert store.with_name("store.db-wal").stat().st_size > 0
    done = _restore(config, _backup(config), "--json")
    assert done.returncode == 0, done.stderr
    previous = Path(json.loads(done.stdout)["previous"])
    assert not store.with_name("store.db-wal").exists() and not store.with_name("store.db-shm").exists()
    assert _runs(config) == [1]  # the real CLI opens it: no foreign log beside it
    assert _marker(store) == []  # the restored store never saw the old log
    assert _marker(previous) == [("in the -wal",)]  # the store moved aside keeps its last writes


def test_restoring_over_a_missing_store_creates_it_and_moves_a_leftover_log_aside(config: Path, tmp_path: Path) -> None:
    """A configuration whose store is gone (with only its -wal left) gets the backup; the log is moved
    aside under the dated name, not read as part of the restored file."""
    other = tmp_path / "other" / "mvsync.toml"
    other.parent.mkdir()
    other.write_text(generated_pair(3))
    leftover = other.parent / "store.db-wal"
    leftover.write_bytes(b"a log whose store is gone")
    done = _restore(other, _backup(config), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["previous"] is None
    [moved] = report["previous_side_files"]
    assert Path(moved).read_bytes() == b"a log whose store is gone" and not leftover.exists()
    assert _runs(other) == [1]
    done = _restore(other, _backup(config))
    assert done.returncode == 0 and "kept as" in done.stdout, done.stderr


#: Hold the store's lock argv[2] as a run does (the real LockManager) until stdin closes.
_LOCK_HOLDER = (
    "import sys; from connector.store import SqlStore; s = SqlStore('sqlite:///' + sys.argv[1]); "
    "h = s.locks.hold(sys.argv[2], note={'run': 'run 7'}); h.__enter__(); s.close(); "
    "print('holding', flush=True); sys.stdin.read()"
)
#: Keep the store open as the console does (a read connection kept in a pool) until stdin closes.
_READER = (
    "import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
    "c.execute('SELECT count(*) FROM run_history').fetchall(); print('holding', flush=True); sys.stdin.read()"
)
#: Who holds the store, by kind: the script and its second argument.
_HOLDERS = {
    "run-lock": (_LOCK_HOLDER, "agent:src"),
    "opening-lock": (_LOCK_HOLDER, "store-open"),  # a run opening the store, or another restore
    "open-file": (_READER, ""),
    "open-file-no-wal": (_READER, ""),  # a store left in rollback-journal mode (restored, never run since)
}


@pytest.fixture(params=sorted(_HOLDERS))
def holder(request: pytest.FixtureRequest, config: Path) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """Another process that holds the store: one holding one of its locks, or one that has its file open."""
    script, arg = _HOLDERS[request.param]
    if request.param == "open-file-no-wal":
        with contextlib.closing(sqlite3.connect(_store(config))) as conn:
            conn.execute("PRAGMA journal_mode=DELETE")
    command = [sys.executable, "-c", script, str(_store(config)), arg]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
    try:
        yield request.param, proc
    finally:
        proc.communicate(timeout=60)


def test_a_held_store_is_refused_naming_the_holder_and_left_as_it_was(
    config: Path, holder: tuple[str, subprocess.Popen[str]]
) -> None:
    kind, proc = holder
    before = _digest(config.parent)
    done = _restore(config, _backup(config), "--json")
    assert done.returncode == 5, done.stderr
    assert "Traceback" not in done.stderr
    assert f"the store {_store(config)} is in use: " in done.stderr and "then restore again" in done.stderr
    if kind.endswith("-lock"):
        lock = "agent-src" if kind == "run-lock" else "store-open"
        assert f"run 7, pid {proc.pid} on " in done.stderr and f"({lock})" in done.stderr
    else:
        assert f"(pid {proc.pid}, user " in done.stderr
    assert json.loads(done.stdout)["status"] == "stopped-locked"
    assert _digest(config.parent) == before  # no copy left, the store untouched


def _damage(path: Path) -> None:
    """Overwrite the page header of a table's root page (a bad sector): SQLite opens the file, its check fails."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        [(root,)] = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'run_history'").fetchall()
        [(size,)] = conn.execute("PRAGMA page_size").fetchall()
    data = bytearray(path.read_bytes())
    data[(root - 1) * size : (root - 1) * size + 12] = b"\xff" * 12
    path.write_bytes(bytes(data))


def _set_version(path: Path, version: int) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE store_meta SET value = ? WHERE key = 'schema_version'", (str(version),))


def _foreign(path: Path) -> None:
    """Another application's SQLite database in place of the file."""
    path.unlink()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE other (x)")


@pytest.mark.parametrize(
    ("spoil", "says"),
    [
        (_damage, "it is damaged ("),
        (
            lambda p: _set_version(p, SCHEMA_VERSION + 1),
            f"it has schema version {SCHEMA_VERSION + 1}, newer than this mvsync understands ({SCHEMA_VERSION})",
        ),
        (lambda p: p.write_bytes(b"not a database, a text file " * 200), "it is not a SQLite database"),
        (lambda p: p.write_bytes(b""), "it is empty (0 bytes)"),
        (_foreign, "it holds no mvsync store but another database's tables (other)"),
    ],
    ids=["damaged", "newer-schema", "not-sqlite", "empty", "foreign"],
)
def test_a_backup_that_cannot_be_restored_is_refused_naming_it_and_the_store_is_left_as_it_was(
    config: Path, spoil: object, says: str
) -> None:
    bad = config.parent / "backups" / "bad.db"
    bad.write_bytes(_backup(config).read_bytes())
    assert callable(spoil)
    spoil(bad)
    before = _digest(config.parent)
    done = _restore(config, bad, "--json")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert f"cannot restore from {bad}: {says}" in done.stderr and "the store was left as it was" in done.stderr
    assert json.loads(done.stdout)["exit_code"] == 2
    assert _digest(config.parent) == before


def test_the_store_itself_and_a_missing_file_are_refused(config: Path) -> None:
    refused = ((_store(config), "it is the store itself"), (config.parent / "nope.db", "there is no such file"))
    for path, says in refused:
        done = _restore(config, path)
        assert done.returncode == 2 and f"cannot restore from {path}: {says}" in done.stderr, done.stderr
    assert _ids(_store(config)) == [1, 2]


def test_an_older_backup_is_restored_and_upgraded_by_the_next_run(config: Path) -> None:
    older = config.parent / "backups" / "older.db"
    older.write_bytes(_backup(config).read_bytes())
    _set_version(older, SCHEMA_VERSION - 1)
    done = _restore(config, older)
    assert done.returncode == 0, done.stderr
    assert f"the backup has schema version {SCHEMA_VERSION - 1}: the next `mvsync run`" in done.stdout
    assert _mvsync("history", "list", "-c", str(config)).returncode == 4  # read-only commands never upgrade
    assert _mvsync("run", "cycle", "-c", str(config)).returncode == 0
    assert _ids(_store(config)) == [1, 2]


def test_a_postgresql_store_is_sent_to_pg_restore_without_its_password(tmp_path: Path) -> None:
    config = tmp_path / "mvsync.toml"
    config.write_text(
        generated_pair(1).replace("sqlite:///store.db", "postgresql+psycopg://mvsync:s3cret@127.0.0.1:1/mvsync")
    )
    backup = tmp_path / "b.db"
    backup.write_bytes(b"")
    done = _restore(config, backup)
    assert done.returncode == 2, done.stderr
    assert "restore it with pg_restore" in done.stderr and "s3cret" not in done.stderr + done.stdout


def test_at_a_terminal_it_asks_first_and_a_no_changes_nothing(config: Path) -> None:
    """A person at a terminal is asked (a scheduler, whose stdin is no terminal, never is: the other tests)."""
    main, child = pty.openpty()
    try:
        os.write(main, b"n\n")
        done = _restore(config, _backup(config))  # stdin closed: a scheduler's
        asked = _mvsync("store", "restore", str(_backup(config)), "-c", str(config), stdin=child)
    finally:
        os.close(main)
        os.close(child)
    assert done.returncode == 0 and "Put " not in done.stderr
    assert asked.returncode == 0, asked.stderr
    assert f"Put {_backup(config)} in place of the store {_store(config)}?" in asked.stderr
    assert "nothing was restored" in asked.stderr


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX modes and owners")
def test_the_restored_store_keeps_the_permissions_and_owner_of_the_store_it_replaces(config: Path) -> None:
    """Found: the restored copy was a new file with this process's umask and owner, so a restore run with
    sudo left a store the service account could not write, and a wide umask one others could read."""
    store = _store(config)
    store.chmod(0o600)
    owner = (4321, 4321) if os.geteuid() == 0 else (os.getuid(), os.getgid())  # another account where allowed
    os.chown(store, *owner)
    done = _mvsync("store", "restore", str(_backup(config)), "-c", str(config))
    assert done.returncode == 0, done.stderr
    restored = store.stat()
    assert (oct(restored.st_mode & 0o777), restored.st_uid, restored.st_gid) == (oct(0o600), *owner)


#: Open the store as a read-only command does (``mvsync history``, the console: ``SqlStore(create=False)``),
#: say which runs it sees, and keep it open until stdin closes; then say which runs it sees now. The lock
#: manager's notices (a wait for the opening lock) are printed on stdout too, in order.
_READ_ONLY_COMMAND = """
import logging, sys
logging.basicConfig(stream=sys.stdout, format="%(message)s", level=logging.WARNING)
from connector.store import SqlStore
store = SqlStore("sqlite:///" + sys.argv[1], create=False, reader="the console (mvsync ui)")
def runs():
    with store.read() as conn:
        return [row[0] for row in conn.exec_driver_sql("SELECT id FROM run_history ORDER BY id")]
print("opened", runs(), flush=True)
sys.stdin.read()
print("reads", runs(), flush=True)
store.close()
"""


def _read_only_command(store: Path) -> subprocess.Popen[str]:
    command = [sys.executable, "-c", _READ_ONLY_COMMAND, str(store)]
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_a_read_only_command_opening_the_store_during_a_restore_waits_for_it_and_reads_the_restored_store(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found: read-only commands (``history``, ``cs``, ``mv``, ``doctor``, the console) opened the store
    without telling a restore, so one that opened it after the restore's checks and before its rename
    read the store being replaced (on Linux: the old file, for as long as it ran; on Windows the rename
    fails on the open file). Here a read-only command starts at that very moment (the hook): it must
    wait for the restore (it says so) and then read the restored store, never the one replaced."""
    from connector.store import _restore as restore_module
    from connector.store import check_backup, restore_store

    started: list[subprocess.Popen[str]] = []
    first_words: list[str] = []
    put_in_place = restore_module._put_in_place

    def start_a_reader_first(partial: Path, store: Path) -> None:
        reader = _read_only_command(store)
        started.append(reader)
        assert reader.stdout is not None
        first_words.append(reader.stdout.readline().strip())  # it waits on the lock, or it has opened
        put_in_place(partial, store)

    monkeypatch.setattr(restore_module, "_put_in_place", start_a_reader_first)
    store = _store(config)
    try:
        restore_store(store, check_backup(_backup(config), store), now=0.0)
        [reader] = started
        out, _ = reader.communicate(timeout=120)
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert first_words[0].startswith("store-open is locked by pid "), first_words  # not "opened [1, 2]"
    assert "waiting up to 30 s" in first_words[0]
    assert "--wait" not in first_words[0]  # a run's option: a read-only command has none to raise
    assert out.split("\n")[:2] == ["opened [1]", "reads [1]"], out
    assert _ids(store) == [1]


def test_a_read_only_command_that_has_the_store_open_is_named_when_a_restore_is_refused(config: Path) -> None:
    """A console (or any read-only command) that has the store open holds a registration that a restore
    finds with the lock machinery (on Windows as on Linux, whether or not SQLite or the OS would tell),
    and names as it names a run: exit 5, the store as it was."""
    reader = _read_only_command(_store(config))
    try:
        assert reader.stdout is not None and reader.stdout.readline().strip() == "opened [1, 2]"
        before = _digest(config.parent)
        done = _restore(config, _backup(config), "--json")
        after = _digest(config.parent)
    finally:
        reader.communicate(timeout=60)
    assert done.returncode == 5, done.stderr
    assert "Traceback" not in done.stderr
    assert f"the store {_store(config)} is in use: the console (mvsync ui), pid {reader.pid} on " in done.stderr
    assert json.loads(done.stdout)["status"] == "stopped-locked"
    assert after == before
    assert not list((config.parent / "store.db.locks").glob("reader-*"))  # its registration went with it


def test_a_windows_sharing_violation_on_the_final_rename_is_exit_5_naming_the_store_and_puts_it_back(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Windows ``os.replace`` onto a file another process has open fails with a sharing violation
    (``ERROR_SHARING_VIOLATION``, 32, raised as PermissionError: MoveFileEx documents that a file open
    without FILE_SHARE_DELETE cannot be replaced). Injected here: the restore says who to stop and
    ends with exit 5 (stopped-locked), no traceback, and the store is back at its name as it was."""
    from connector.store import _restore as restore_module

    store = _store(config)
    real_replace = os.replace

    def refuse_the_store(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst) == store:
            violation = PermissionError(
                13, "The process cannot access the file because it is being used by another process", str(dst)
            )
            violation.winerror = 32  # type: ignore[attr-defined]  # what Windows sets; absent on POSIX
            raise violation
        real_replace(src, dst)

    monkeypatch.setattr(restore_module.os, "replace", refuse_the_store)
    before = _digest(config.parent)
    code, out, err = invoke("store", "restore", str(_backup(config)), "--json", "-c", str(config))
    assert code == 5, err
    assert "Traceback" not in err
    assert f"cannot put the restored copy in place of {store}: another process has it open" in err
    assert "the store was left as it was" in err
    assert json.loads(out)["status"] == "stopped-locked"
    assert sorted(_digest(config.parent)) == sorted(before)  # no copy, no second name left beside it
    assert _ids(store) == [1, 2]  # the store as it was (its log folded in: the fold came before the rename)
