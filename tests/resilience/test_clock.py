"""The host's clock ahead for a while (a VM restored from a snapshot, a bad NTP source, a BIOS clock),
then right again: the real ``mvsync run`` under libfaketime, against the Graph emulator.

Photo changes never show in Graph's users/delta listing, so a delta import finds them only by
re-checking each photo once its window (``photo_recheck_hours``) has passed since its last check.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness.clock import faketime_env
from tests.harness.crash import CrashLab, lab_emulator_config, run_cli

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
    """Found in the ops pass: checks recorded 3 days ahead were 'recent' for 3 days more once the clock
    was right (a clock a year ahead: a year), so no photo was re-checked and their changes went unseen."""
    scenario = lab.prepare("ahead")
    ahead = _exo_counters(lab, scenario, "Full Import (Stage Only)", {**os.environ, **faketime_env("+3d")})
    assert ahead["connector.probes"] > 20

    right = _exo_counters(lab, scenario, "Delta Import (Stage Only)")
    assert right.get("connector.probes") == ahead["connector.probes"]  # each check from the future, again
    again = _exo_counters(lab, scenario, "Delta Import (Stage Only)")
    assert "connector.probes" not in again  # checked now: inside the window, as after any check
