"""Two scheduled runs overlapping: the second one says which run holds what, exits 5, and the first
goes on undisturbed (the real CLI in a subprocess, paused by the crash harness in its sync step)."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest

from tests.cli._configs import generated_pair, invoke
from tests.harness.crash import CrashPoint, cli_env, paused_cli, write_shim

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="pauses the first run with SIGSTOP")

PROFILES = """
[run_profiles.sync-tgt]
steps = [{ type = "full-sync", agent = "tgt" }]
[run_profiles.dry]
steps = [{ type = "full-import", agent = "src" }]
"""


def test_a_run_refused_by_another_run_names_that_run_and_its_step(tmp_path: Path) -> None:
    """Found by hand: the refusal said "agent:src is locked by pid 4711 on sync01 since ...", and the
    operator had to find out what pid 4711 was; the run that holds the lock is in history, by id."""
    config = tmp_path / "mvsync.toml"
    config.write_text(generated_pair(5) + PROFILES, encoding="utf-8")
    assert invoke("run", "cycle", "-c", str(config))[0] == 0  # a store, and run 1
    # run 2 pauses as its step 3 (src full-sync: agent:src and the metaverse held) begins its first transaction
    env = cli_env(write_shim(tmp_path / "shim"), CrashPoint("sync", "begin", 1), tmp_path / "report.json", resume=True)
    with paused_cli(["run", "cycle", "-c", str(config), "--json"], env, timeout=120) as first:
        code, out, _ = invoke("run", "cycle", "-c", str(config), "--json")
        holder = f"run 2 ('cycle', step 3: src full-sync), pid {first.pid} on "
        assert code == 5 and json.loads(out)["message"].startswith(f"agent:src is locked by {holder}"), out
        code, out, _ = invoke("run", "sync-tgt", "-c", str(config), "--json")  # another profile, the metaverse
        assert code == 5 and json.loads(out)["message"].startswith(f"metaverse is locked by {holder}"), out
        os.kill(first.pid, signal.SIGCONT)
        stdout, stderr = first.communicate(timeout=120)
    assert first.returncode == 0 and json.loads(stdout)["status"] == "success", stderr.decode()
    code, out, _ = invoke("history", "list", "-c", str(config), "--json")
    assert [r["status"] for r in json.loads(out)] == ["stopped-locked", "stopped-locked", "success", "success"]
    assert invoke("run", "cycle", "-c", str(config))[0] == 0  # nothing left half-done
