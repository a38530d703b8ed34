"""Two scheduled runs overlapping: the second one says which run holds what, exits 5, and the first
goes on undisturbed (the real CLI in a subprocess, paused by the crash harness in its sync step)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.store import _sql
from tests.cli._configs import generated_pair, invoke
from tests.harness.crash import CrashPoint, cli_env, mvsync_command, paused_cli, write_shim

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="pauses the first run with SIGSTOP")

PROFILES = """
[run_profiles.sync-tgt]
steps = [{ type = "full-sync", agent = "tgt" }]
[run_profiles.import-tgt]
steps = [{ type = "full-import", agent = "tgt" }]
"""


@contextlib.contextmanager
def first_run_paused_in_its_sync(tmp_path: Path, at: str = "begin") -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """The configuration, and run 2 of "cycle" (the real CLI) paused as its step 3 (src full-sync:
    agent:src and the metaverse held) begins (``at``: or commits) its first transaction (run 1 made the
    store)."""
    config = tmp_path / "mvsync.toml"
    config.write_text(generated_pair(5) + PROFILES, encoding="utf-8")
    assert invoke("run", "cycle", "-c", str(config))[0] == 0
    env = cli_env(write_shim(tmp_path / "shim"), CrashPoint("sync", at, 1), tmp_path / "report.json", resume=True)
    with paused_cli(["run", "cycle", "-c", str(config), "--json"], env, timeout=120) as first:
        yield config, first


def _goes_on(run: subprocess.Popen[bytes]) -> dict[str, Any]:
    """Let a paused run go on; its --json result, once it succeeded."""
    os.kill(run.pid, signal.SIGCONT)
    stdout, stderr = run.communicate(timeout=120)
    assert run.returncode == 0, stderr.decode()
    doc: dict[str, Any] = json.loads(stdout)
    return doc


def test_a_run_refused_by_another_run_names_that_run_and_its_step(tmp_path: Path) -> None:
    """Found by hand: the refusal said "agent:src is locked by pid 4711 on sync01 since ...", and the
    operator had to find out what pid 4711 was; the run that holds the lock is in history, by id."""
    with first_run_paused_in_its_sync(tmp_path) as (config, first):
        code, out, _ = invoke("run", "cycle", "-c", str(config), "--json")
        holder = f"run 2 ('cycle', step 3: src full-sync), pid {first.pid} on "
        assert code == 5 and json.loads(out)["message"].startswith(f"agent:src is locked by {holder}"), out
        code, out, _ = invoke("run", "sync-tgt", "-c", str(config), "--json")  # another profile, the metaverse
        assert code == 5 and json.loads(out)["message"].startswith(f"metaverse is locked by {holder}"), out
        assert _goes_on(first)["status"] == "success"
    code, out, _ = invoke("history", "list", "-c", str(config), "--json")
    assert [r["status"] for r in json.loads(out)] == ["stopped-locked", "stopped-locked", "success", "success"]
    assert invoke("run", "cycle", "-c", str(config))[0] == 0  # nothing left half-done


def test_a_run_that_waits_for_another_runs_lock_says_so_and_runs_after_it(tmp_path: Path) -> None:
    """Found by hand: with --wait (the README's schedules pass 300) the second run waited in silence,
    and a log showed a run that took five minutes without a word of why. The handshake: the waiting
    run's first line on stderr, read before the first run is let go on."""
    with first_run_paused_in_its_sync(tmp_path) as (config, first):
        second = subprocess.Popen(
            [*mvsync_command(), "run", "cycle", "-c", str(config), "--wait", "120", "--json"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert second.stderr is not None
            said = second.stderr.readline().decode()
            assert "agent:src is locked by run 2 ('cycle', step 3: src full-sync), pid " in said, said
            assert "waiting up to 120 s for it (--wait)" in said, said
            assert _goes_on(first)["status"] == "success"
            assert _goes_on(second)["status"] == "success"
        finally:
            if second.poll() is None:
                second.kill()
                second.communicate()


def test_a_run_stopped_as_busy_by_a_run_frozen_in_a_write_names_that_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by hand: a run frozen in the middle of a write (suspended, or hung on its disk) holds the
    SQLite database, and a run of another agent stopped after the busy timeout as "busy: another
    process holds its database lock ..., such as a backup or antivirus scan", the one holder it did not
    name being the likeliest: an mvsync run. The runs on record as holding the store's locks are named."""
    monkeypatch.setattr(_sql, "BUSY_TIMEOUT_S", 1.0)  # this process's wait (the CLI runs in it)
    with first_run_paused_in_its_sync(tmp_path, at="commit") as (config, first):
        code, out, _ = invoke("run", "import-tgt", "-c", str(config), "--json")
        message = json.loads(out)["message"]
        assert code == 5 and "is busy" in message, out
        assert f"run 2 ('cycle', step 3: src full-sync), pid {first.pid} on " in message, message
        assert _goes_on(first)["status"] == "success"
    assert invoke("run", "cycle", "-c", str(config))[0] == 0  # nothing left half-done
