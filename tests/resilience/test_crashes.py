"""kill -9 of the real ``mvsync run`` at seeded points of import, sync and export (Samba AD, emulator).

Each trial kills "Full Cycle" at its point, reruns it, and must reach the metaverse and directory
state of an uninterrupted run, lose no photo, and leave nothing to do: one more "Delta Cycle"
exports nothing and writes no directory object. ``mvsync doctor`` must pass on every converged
store. The pytest selection runs a few trials (one per phase at least, ``MVSYNC_CRASH_TRIALS``
raises it); ``mvsync bench resilience`` runs 20 or more.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from connector.bench.resilience import crash_trials
from tests.harness.crash import PHASES, CrashLab, CrashPoint
from tests.harness.samba_dc import ADSettings

SEED = 20261122


def test_kill_points_are_drawn_from_the_seed() -> None:
    counts = {"import:http": 6, "import:commit": 12, "sync:begin": 16, "export:ldap-write": 12, "export:commit": 1}
    drawn = [CrashLab.choose(i, SEED, counts) for i in range(9)]
    assert drawn == [CrashLab.choose(i, SEED, counts) for i in range(9)]
    assert [p.phase for p in drawn] == [*PHASES] * 3
    for point in drawn:
        assert 1 <= point.n <= counts[f"{point.phase}:{point.kind}"]
    assert CrashPoint.parse("export:ldap-write:3") == CrashPoint("export", "ldap-write", 3)


@pytest.mark.samba
@pytest.mark.slow
def test_kill_9_anywhere_then_rerun_converges(samba_ad: ADSettings, tmp_path: Path) -> None:
    trials = int(os.environ.get("MVSYNC_CRASH_TRIALS", "6"))
    summary = crash_trials(tmp_path, trials=trials, seed=SEED, ad=samba_ad)
    assert summary["directory"] == "samba"
    assert summary["failures"] == [], summary["failures"]
    assert summary["killed"] == trials, summary["points"]  # every point was reached and killed there
    assert summary["converged"] == trials
    assert summary["photos_lost"] == 0
    assert summary["writes_after_convergence"] == 0 and summary["pending_after_convergence"] == 0
    assert set(summary["by_phase"]) == set(PHASES[: min(trials, len(PHASES))])
    assert all(d in ("passed", "not-available") for d in summary["doctor"]), summary["doctor"]
