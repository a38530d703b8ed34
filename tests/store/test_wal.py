"""A SQLite store's write-ahead log while another process keeps a read open on it (an admin's sqlite3
shell in a transaction, a backup or browsing tool): each run says so, naming the log and the
process, and once the read ends the next run folds the log in and cuts it back."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from connector.config import load_config
from connector.engine import Engine
from connector.store import _sql
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
    engine = Engine(load_config(_config(tmp_path, seed)))
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
