"""``mvsync history list`` / ``show`` as a scheduler and an engineer read them: the real CLI in a child
process, on SQLite and PostgreSQL, with a run killed outright (kill -9) in its last step."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.config import load_config
from connector.store import RunHistory, SqlStore
from tests.cli._configs import generated_pair, invoke
from tests.harness.crash import CrashPoint, cli_env, mvsync_command, paused_cli, write_shim

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="pauses and kills the run with SIGSTOP and SIGKILL")

SYNC_TGT = """
[run_profiles.sync-tgt]
steps = [{ type = "full-sync", agent = "tgt" }]
"""


def _mvsync(*args: str) -> tuple[int, str, str]:
    """The real CLI in a child process: exit code, stdout, stderr."""
    done = subprocess.run([*mvsync_command(), *args], capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr


def _json(*args: str) -> Any:
    code, out, err = _mvsync(*args, "--json")
    assert code == 0, err
    return json.loads(out)


def _recorded(config: Path, run_id: int) -> tuple[str, list[str]]:
    """The status the store holds for ``run_id``, and the lock files with a holder's record (SQLite)."""
    store = SqlStore(load_config(config).store_url(), create=False)
    try:
        with store.read() as conn:
            run = RunHistory(conn).run(run_id)
        assert run is not None
        # not this reader's own registration (a reader-* lock, see LockManager.register_reader)
        return run.status, [
            name for name, record in store.locks.recorded("") if record and record.get("pid") != os.getpid()
        ]
    finally:
        store.close()


def _lock_released(config: Path, name: str) -> None:
    """Wait (bounded) until a PostgreSQL store's lock ``name`` is free: a killed client's backend ends, and
    lets its advisory locks go, once it reads the closed connection, a moment after the kill. (The OS
    drops a SQLite store's file lock with the process; a look there would remove the killed run's files.)"""
    store = SqlStore(load_config(config).store_url(), create=False)
    try:
        for _ in range(600):
            if store.path is not None or store.locks.free(name):
                return
            time.sleep(0.05)  # between two looks at the lock: the condition is what ends the wait
        raise AssertionError(f"{name} still held 30 s after its process was killed")
    finally:
        store.close()


@pytest.fixture
def killed_run(tmp_path: Path, store_url: str) -> Iterator[tuple[Path, int]]:
    """Run 1 a full cycle; run 2 seen ``in-progress`` while it is alive (stopped in its sync), then
    killed with SIGKILL: ``(config, pid of run 2)``."""
    config = tmp_path / "mvsync.toml"
    text = generated_pair(3).replace("sqlite:///store.db", store_url) + SYNC_TGT
    config.write_text(text, encoding="utf-8")
    assert invoke("run", "cycle", "-c", str(config))[0] == 0
    env = cli_env(write_shim(tmp_path / "shim"), CrashPoint("sync", "begin", 1), tmp_path / "r.json")
    with paused_cli(["run", "sync-tgt", "-c", str(config)], env, timeout=120) as run_2:
        alive = _json("history", "list", "-c", str(config))
        assert [r["status"] for r in alive] == ["in-progress", "success"], alive  # stopped, not gone
        run_2.kill()
        run_2.wait()
    _lock_released(config, "run:2")
    yield config, run_2.pid


def test_history_says_a_killed_run_ended_unrecorded_without_writing(killed_run: tuple[Path, int]) -> None:
    config, pid = killed_run
    listed = _json("history", "list", "-c", str(config))
    assert [(r["run_id"], r["status"]) for r in listed] == [(2, "ended-unrecorded"), (1, "success")], listed
    assert f"(pid {pid} on " in listed[0]["message"] and "records it as stopped-interrupted" in listed[0]["message"]
    shown = _json("history", "show", "2", "-c", str(config))
    assert shown["status"] == "ended-unrecorded" and shown["message"] == listed[0]["message"], shown
    assert [s["status"] for s in shown["steps"]] == ["ended-unrecorded"], shown
    code, out, err = _mvsync("history", "list", "-c", str(config))
    assert code == 0 and "ended-unrecorded (process gone)" in out, (out, err)
    # a read wrote nothing: the next run records it, and the killed run's lock file still names it
    status, records = _recorded(config, 2)
    assert status == "in-progress"
    assert records == ([] if "postgresql" in config.read_text() else ["agent-tgt", "metaverse", "run-2"])


#: A zone this machine is surely not in, with a half-hour offset (POSIX TZ: ``-`` means east of UTC).
_TZ, _OFFSET = "<+0330>-3:30", dt.timedelta(hours=3, minutes=30)


def _in_zone(*args: str) -> str:
    """The real CLI's stdout with the local time zone ``_TZ`` (as a server abroad has it)."""
    done = subprocess.run(
        [*mvsync_command(), *args], capture_output=True, text=True, timeout=120, env={**os.environ, "TZ": _TZ}
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _local(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.timezone(_OFFSET)).isoformat(sep=" ", timespec="seconds")


def _utc(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="milliseconds")


def test_history_times_carry_their_offset_and_json_has_start_end_and_duration(tmp_path: Path) -> None:
    config = tmp_path / "mvsync.toml"
    config.write_text(generated_pair(2).replace("sqlite:///store.db", f"sqlite:///{tmp_path / 's.db'}"))
    assert invoke("run", "cycle", "-c", str(config))[0] == 0
    store = SqlStore(load_config(config).store_url(), create=False)
    with store.read() as conn:
        run = RunHistory(conn).run(1)
        steps = RunHistory(conn).steps(1)
    store.close()
    assert run is not None and run.ended_at is not None

    [listed] = json.loads(_in_zone("history", "list", "-c", str(config), "--json"))
    old_keys = ["run_id", "profile", "status", "dry_run", "started_at", "seconds", "message"]
    assert {k: listed[k] for k in old_keys} == {
        "run_id": 1,
        "profile": "cycle",
        "status": "success",
        "dry_run": False,
        "started_at": run.started_at,
        "seconds": run.seconds,
        "message": None,
    }, listed
    assert (listed["started"], listed["ended"], listed["ended_at"]) == (
        _utc(run.started_at),
        _utc(run.ended_at),
        run.ended_at,
    ), listed
    shown = json.loads(_in_zone("history", "show", "1", "-c", str(config), "--json"))
    assert {k: shown[k] for k in [*old_keys, "started", "ended"]} == {
        k: listed[k] for k in [*old_keys, "started", "ended"]
    }
    for step, row in zip(shown["steps"], steps, strict=True):
        assert (step["started"], step["ended"], step["seconds"]) == (
            _utc(row.started_at),
            _utc(row.ended_at or 0),
            row.seconds,
        ), step
        assert {"step_id", "agent", "kind", "status", "message", "counters", "error_count", "errors"} <= set(step)

    table = _in_zone("history", "list", "-c", str(config))
    assert _local(run.started_at) in table, table  # "2026-12-06 12:15:03+03:30": unambiguous anywhere
    text = _in_zone("history", "show", "1", "-c", str(config))
    assert f"started {_local(run.started_at)}, ended {_local(run.ended_at)} ({run.seconds} s)" in text, text
    assert f"started {_local(steps[0].started_at)}, " in text, text
