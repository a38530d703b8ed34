"""kill -9 of the real ``mvsync run`` at seeded points of import, sync and export (Samba AD, emulator).

Each trial kills "Full Cycle" at its point, reruns it, and must reach the metaverse and directory
state of an uninterrupted run, lose no photo, and leave nothing to do: one more "Delta Cycle"
exports nothing and writes no directory object. ``mvsync doctor`` must pass on every converged
store. The pytest selection runs a few trials (one per phase at least, ``MVSYNC_CRASH_TRIALS``
raises it); ``mvsync bench resilience`` runs 20 or more.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from connector.bench.resilience import crash_trials
from tests.harness.crash import PHASES, CrashLab, CrashPoint, _await_child
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
    entries = {"import:http": 2, "export:ldap-write": 1}
    with_entries = [CrashLab.choose(i, SEED, counts, entries) for i in range(9)]
    assert [(p.phase, p.kind, p.n) for p in with_entries] == [(p.phase, p.kind, p.n) for p in drawn]
    assert all(p.entry == entries.get(f"{p.phase}:{p.kind}", 0) for p in with_entries)
    assert CrashPoint.parse("import:http:5:2") == CrashPoint("import", "http", 5, 2)
    assert CrashPoint("import", "http", 5, 2).spec() == "import:http:5:2"


_CHILD = """
import sys
from pathlib import Path
from tests.harness.crash import CrashPoint, _Hooks

hooks = _Hooks(CrashPoint.parse(sys.argv[1]), Path(sys.argv[2]))
with hooks.in_phase("import"):  # entry 1: two HTTP requests (the reference saw more)
    hooks.fire("http")
    hooks.fire("http")
with hooks.in_phase("import"):  # entry 2: no HTTP at all
    hooks.fire("commit")
print("ran to the end")
"""


@pytest.mark.parametrize(
    ("plan", "fired"),
    [
        ("import:http:2:1", {"fired": "import:http", "n": 2, "late": False}),  # reached: stops at it
        ("import:http:5:1", {"fired": "import:http", "n": 2, "late": True}),  # fewer events: after the last
    ],
)
def test_a_kill_point_past_the_events_a_run_makes_stops_after_the_last_one(
    tmp_path: Path, plan: str, fired: dict[str, object]
) -> None:
    """Issue 16: "assert 5 == 6" came from a point drawn past the HTTP requests an import made under
    load. A point names the phase entry of its kind's last event, and the run stops there."""
    report = tmp_path / "report.json"
    proc = subprocess.Popen([sys.executable, "-c", _CHILD, plan, str(report)], stdout=subprocess.PIPE)
    try:
        assert _await_child(proc, timeout=60), "the child ran to the end instead of stopping"
    finally:
        if proc.returncode is None:
            os.kill(proc.pid, signal.SIGKILL)
            os.waitpid(proc.pid, 0)
        assert proc.stdout is not None
        proc.stdout.close()
    doc = json.loads(report.read_text())
    assert {k: doc[k] for k in ("fired", "n", "late")} == fired


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
