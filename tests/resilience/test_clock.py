"""The host's clock wrong for a while (a VM restored from a snapshot, a bad NTP source, a BIOS clock),
or set back in the middle of a run: the real ``mvsync run`` under libfaketime, against the Graph emulator.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.clock import faketime_env
from tests.harness.crash import (
    CrashLab,
    CrashPoint,
    cli_env,
    lab_emulator_config,
    mvsync_command,
    paused_cli,
    run_cli,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="libfaketime is a Linux preload library")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrashLab]:
    from connector.emulator import GraphEmulator

    with GraphEmulator(lab_emulator_config(users=40, seed=21)) as emulator:
        yield CrashLab(tmp_path_factory.mktemp("clock"), emulator)


def _exo_counters(lab: CrashLab, scenario: Any, profile: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    args = ["run", profile, "--agent", "exo", "-c", str(scenario.config_path), "--json"]
    done = run_cli(args, workdir=scenario.root / "runs", shim=lab.shim, env=env)
    assert done.returncode == 0 and done.result is not None, done.stderr
    [step] = done.result["steps"]
    assert step["status"] == "success", step
    counters: dict[str, Any] = step["counters"]
    return counters


def test_photos_checked_while_the_clock_was_ahead_are_checked_again_once_it_is_right(lab: CrashLab) -> None:
    """Photo changes never show in Graph's users/delta listing: a delta import finds them by re-checking
    each photo once its window (``photo_recheck_hours``) has passed since its last check. Found in the
    ops pass: checks recorded 3 days ahead were 'recent' for 3 days more once the clock was right (a
    clock a year ahead: a year), so no photo was re-checked and their changes went unseen."""
    scenario = lab.prepare("ahead")
    ahead = _exo_counters(lab, scenario, "Full Import (Stage Only)", {**os.environ, **faketime_env("+3d")})
    assert ahead["connector.probes"] > 20

    right = _exo_counters(lab, scenario, "Delta Import (Stage Only)")
    assert right.get("connector.probes") == ahead["connector.probes"]  # each check from the future, again
    again = _exo_counters(lab, scenario, "Delta Import (Stage Only)")
    assert "connector.probes" not in again  # checked now: inside the window, as after any check


def test_a_clock_set_back_during_a_run_leaves_its_durations_right(lab: CrashLab, tmp_path: Path) -> None:
    """Found in the ops pass: history's durations were the wall clock's end minus its start, so a run
    whose clock NTP stepped back an hour was recorded as having taken -3587 s, and its --json said 0.0.
    The run pauses before its third store commit while its clock goes back an hour."""
    scenario = lab.prepare("set-back")
    clock = tmp_path / "offset"
    clock.write_text("+0\n")
    args = ["run", "Full Import (Stage Only)", "--agent", "exo", "-c", str(scenario.config_path), "--json"]
    env = cli_env(lab.shim, CrashPoint("import", "commit", 3), tmp_path / "report.json", resume=True)
    with paused_cli(args, {**env, **faketime_env(clock)}) as child:  # before its third commit
        clock.write_text("-1h\n")
        os.kill(child.pid, signal.SIGCONT)
        out, err = child.communicate(timeout=300)
    assert child.returncode == 0, err
    [step] = json.loads(out)["steps"]
    assert 0 < step["seconds"] < 600, step
    [run] = _history(scenario, "list")
    [step] = _history(scenario, "show", "1")["steps"]
    assert 0 < run["seconds"] < 600 and 0 < step["seconds"] < 600, (run, step)


def _history(scenario: Any, *args: str) -> Any:
    """``mvsync history ARGS --json`` of the scenario's store, read."""
    command = [*mvsync_command(), "history", *args, "-c", str(scenario.config_path), "--json"]
    return json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
