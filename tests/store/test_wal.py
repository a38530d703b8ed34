"""A SQLite store's write-ahead log while another process keeps a read open on it (an admin's sqlite3
shell in a transaction, a backup or browsing tool): each run says so, naming the log and the
process, and once the read ends the next run folds the log in and cuts it back."""

from __future__ import annotations

import contextlib
import json
import logging
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.config import load_config
from connector.engine import Engine
from connector.store import _sql
from connector.web import create_app, serve_in_background
from tests.cli._configs import generated_pair, invoke

#: A process that opens a read on the store and keeps it until told (one line on stdin), then keeps
#: the store open with no read until its stdin closes: what a sqlite3 shell after BEGIN; SELECT does.
_READER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN")
conn.execute("SELECT count(*) FROM run_history").fetchone()
print("reading", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
print("done", flush=True)
sys.stdin.read()
"""


def _config(tmp_path: Path, seed: int) -> Path:
    """300 people with photos of 2 kB; ``seed`` changes the target's data, so each run writes."""
    config = tmp_path / "mvsync.toml"
    text = generated_pair(300).replace("photo_bytes = 16", "photo_bytes = 2000")
    config.write_text(text.replace("seed = 3", f"seed = {seed}"))
    return config


def _run(tmp_path: Path, seed: int) -> None:
    _run_config(_config(tmp_path, seed))


def _run_config(config: Path) -> None:
    engine = Engine(load_config(config))
    try:
        assert engine.run_profile("cycle").status == "success"
    finally:
        engine.close()


@pytest.fixture
def reader(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """The reading process, started once the store has one run; it has its read open when yielded."""
    _run(tmp_path, 1)
    child = subprocess.Popen(
        [sys.executable, "-c", _READER, str(tmp_path / "store.db")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline().strip() == "reading"
    yield child
    child.communicate(timeout=60)


def test_a_read_held_open_on_the_store_is_named_and_the_log_is_cut_back_once_it_ends(
    tmp_path: Path, reader: subprocess.Popen[str], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Found: while another process held a read open, every run's writes piled up in ``store.db-wal``
    (SQLite cannot fold into the file what that read may still need): about 300 kB more each run of a small
    store here, in silence. And once the read ended, the log kept its largest size for as long as any
    process had the store open (SQLite reuses the file rather than shrink it). Now each run warns,
    naming the log, its size and the process that has the store open (so does ``mvsync doctor``), and
    the run after the read ended
    folds the log in and starts it afresh, cut back to ``WAL_LIMIT_BYTES``."""
    monkeypatch.setattr(_sql, "WAL_WARN_BYTES", 64 * 1024)
    monkeypatch.setattr(_sql, "WAL_LIMIT_BYTES", 64 * 1024)
    wal = tmp_path / "store.db-wal"
    sizes = []
    for seed in (2, 3, 4):
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            _run(tmp_path, seed)
        sizes.append(wal.stat().st_size)
    assert sizes[0] < sizes[1] < sizes[2]  # growing with every run while the read is open
    said = [r.getMessage() for r in caplog.records if "write-ahead log" in r.getMessage()]
    assert said, caplog.text
    assert f"the store's write-ahead log {wal} is" in said[0]
    assert f"pid {reader.pid}" in said[0] and "until that read ends" in said[0]
    code, out, _ = invoke("doctor", "--no-connect", "--json", "-c", str(tmp_path / "mvsync.toml"))
    findings = {f["check"]: f for f in json.loads(out)["findings"]}
    assert code == 0 and findings["wal"]["severity"] == "warning", findings  # said, not a failure
    assert f"pid {reader.pid}" in findings["wal"]["message"]
    assert reader.stdin is not None and reader.stdout is not None
    reader.stdin.write("end the read\n")
    reader.stdin.flush()
    assert reader.stdout.readline().strip() == "done"  # the read is over; the store is still open there
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _run(tmp_path, 5)
    assert "write-ahead log" not in caplog.text
    # folded in and started afresh, cut back to the limit: what it holds now is this run's writes alone
    # (SQLite without the limit reuses the file, which never shrinks below the size the read made it)
    assert wal.stat().st_size < sizes[1], (wal.stat().st_size, sizes)


def _get(url: str) -> int:
    """The status of a GET (the console's page, read whole); the timeout only stops a test that would hang."""
    with urllib.request.urlopen(url, timeout=120) as answer:
        answer.read()
        return int(answer.status)


def _truncating_checkpoint(store: Path) -> tuple[int, int, int]:
    """``PRAGMA wal_checkpoint(TRUNCATE)`` from a connection that does not wait: (busy, log frames, folded).

    busy = 0 proves that no connection of any process holds a read (a snapshot) on the store: SQLite
    folds the whole log in and cuts it to 0 bytes only then (https://sqlite.org/pragma.html#pragma_wal_checkpoint,
    https://sqlite.org/wal.html#avoiding_excessively_large_wal_files)."""
    with contextlib.closing(sqlite3.connect(store, timeout=0, isolation_level=None)) as conn:
        busy, frames, folded = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return int(busy), int(frames), int(folded)


def test_the_console_holds_no_read_open_between_its_pages(tmp_path: Path, reader: subprocess.Popen[str]) -> None:
    """Measured: a reader that keeps a read open makes the -wal grow with every write (the test above;
    SQLite can neither fold in what that read may still need nor start the log afresh). The console,
    which has the store open as long as it runs, must not be such a reader: each page reads in a
    transaction of its own, ended with the page. Once its pages have answered (the console still
    running, its connections pooled), a checkpoint that does not wait folds the whole log in and cuts
    it to 0 bytes; the same checkpoint is refused (busy) while an sqlite3-style read is held open (the
    ``reader`` fixture), which shows that the check can tell."""
    store = tmp_path / "store.db"
    _run(tmp_path, 2)  # writes while the read is held
    assert _truncating_checkpoint(store)[0] == 1  # the held read: busy
    assert reader.stdin is not None and reader.stdout is not None
    reader.stdin.write("end the read\n")
    reader.stdin.flush()
    assert reader.stdout.readline().strip() == "done"  # the read is over; that process keeps the store open
    console = serve_in_background(create_app(load_config(tmp_path / "mvsync.toml")))
    try:
        for page in ("/", "/runs/1", "/coverage", "/agents", "/pending", "/search?q=user"):
            assert _get(console.url + page) == 200, page
        assert _truncating_checkpoint(store) == (0, 0, 0)
        assert (tmp_path / "store.db-wal").stat().st_size == 0
    finally:
        console.stop()


def test_the_log_stays_bounded_during_a_big_import_while_the_console_reads_between_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An import of 3,000 new photos of 20 kB (60 MB, six pages of 500) with the console open and asked for
    a page after every committed page: the -wal never holds more than about one page's transaction
    (SQLite starts it afresh at the next write once the automatic checkpoint folded it in and no read
    is open), not the import's 60 MB. Deterministic: the console's page is read between two pages."""
    from connector.engine import _import

    config = tmp_path / "mvsync.toml"
    config.write_text(generated_pair(3000).replace("photo_bytes = 16", "photo_bytes = 20000"))
    wal = tmp_path / "store.db-wal"
    _run_config(config)  # the store, with everyone in it; the next run writes every photo again
    config.write_text(config.read_text().replace("photo_bytes = 20000", "photo_bytes = 20001"))  # every photo new
    console = serve_in_background(create_app(load_config(config)))
    sizes: list[int] = []
    commit_page = _import._commit_page

    def then_a_console_page(*args: Any, **kwargs: Any) -> None:
        commit_page(*args, **kwargs)
        assert _get(console.url + "/") == 200
        sizes.append(wal.stat().st_size)

    monkeypatch.setattr(_import, "_commit_page", then_a_console_page)
    try:
        _run_config(config)
        sizes.append(wal.stat().st_size)  # the console still has the store open: the log is still there
    finally:
        console.stop()
    page_bytes = 500 * 20_000
    assert len(sizes) >= 6, sizes
    assert max(sizes) < 2.5 * page_bytes, sizes  # about one page's transaction, not the 60 MB written
