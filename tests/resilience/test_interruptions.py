"""The real ``mvsync run`` stopped in the middle of a full Exchange Online import, then run again.

Issue 14: "A full import stopped by that limit, a crash, Ctrl-C or a reboot resumes from its last
committed page on the next run instead of starting over, and says so in history." The stop comes at
a counted event, not after a delay: the child freezes itself (SIGSTOP) just before the commit of
its third page (``import:commit:5``: the step's schema, its checkpoint read, pages 1 and 2), so two
pages are committed whatever the machine's load. Then it is either killed (kill -9: a crash, the
OOM killer, a power cut) or sent SIGTERM and let go on (systemd stop, ``docker stop``, ``kill``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.harness.crash import (
    CrashLab,
    CrashPoint,
    cli_env,
    lab_emulator_config,
    mvsync_command,
    paused_cli,
    run_cli,
)

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGSTOP, SIGKILL and SIGTERM are POSIX signals")

PROFILE = "Full Import (Stage Only)"
#: Two pages of 500 committed: the schema's commit, the checkpoint read, pages 1 and 2; stop at page 3's.
BEFORE_PAGE_3 = CrashPoint("import", "commit", 5)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrashLab]:
    from connector.emulator import GraphEmulator

    # 2,000 users: about 1,860 mailboxes, four pages of 500 (the sample's page size)
    with GraphEmulator(lab_emulator_config(users=2000, seed=14)) as emulator:
        yield CrashLab(tmp_path_factory.mktemp("interruptions"), emulator)


def _args(scenario: Any) -> list[str]:
    return ["run", PROFILE, "--agent", "exo", "-c", str(scenario.config_path), "--json"]


def _history(scenario: Any, run_id: int) -> dict[str, Any]:
    out = subprocess.run(
        [*mvsync_command(), "history", "show", str(run_id), "-c", str(scenario.config_path), "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


def _exo_step(doc: dict[str, Any]) -> dict[str, Any]:
    [step] = [s for s in doc["steps"] if s["agent"] == "exo"]
    return step


def _rerun_resumes(lab: CrashLab, scenario: Any, interrupted: dict[str, Any]) -> None:
    """The next run resumes after the two committed pages, says so, and imports everybody."""
    again = lab.run(scenario, PROFILE)
    assert again.returncode == 0, again.stderr
    doc = again.result
    assert doc is not None
    step = _exo_step(doc)
    assert step["status"] == "success"
    assert step["message"].startswith(f"resumed the full import interrupted in step {interrupted['step_id']} ")
    assert step["counters"]["resumed_after_page"] == 2 and 900 < step["counters"]["resumed_entries"] <= 1000
    mailboxes = sum(1 for u in lab.users if u.get("mailbox") in ("cloud", "on-premises"))
    # everybody is in the connector space once: those the interrupted step committed, adopted, and
    # the rest added now (how many it lists again depends on which photos came back first, so on load)
    assert step["counters"]["resumed_entries"] + step["counters"].get("adds", 0) == mailboxes


def test_kill_9_mid_full_import_is_closed_in_history_and_resumed(lab: CrashLab) -> None:
    scenario = lab.prepare("kill-9")
    killed = run_cli(_args(scenario), workdir=scenario.root / "runs", shim=lab.shim, plan=BEFORE_PAGE_3)
    assert killed.killed and killed.fired == "import:commit", killed.stderr

    left = _history(scenario, 1)
    assert left["status"] == "ended-unrecorded"  # not recorded yet; history sees its run lock free

    again = lab.run(scenario, PROFILE)
    assert again.returncode == 0, again.stderr
    closed = _history(scenario, 1)
    assert closed["status"] == "stopped-interrupted"
    assert "ended during its step 1 (exo full-import) without recording the end of the run" in closed["message"]
    assert "found by run 2" in closed["message"]
    step = _exo_step(closed)
    assert step["status"] == "stopped-interrupted" and step["seconds"] is None
    assert "resumes from its last committed page" in step["message"]
    assert step["counters"]["pages"] == 2 and step["counters"]["adds"] > 900  # kept with each page

    doc = again.result
    assert doc is not None
    resumed = _exo_step(doc)
    assert (
        resumed["counters"]["resumed_after_page"] == 2 and resumed["counters"]["resumed_from_step"] == step["step_id"]
    )


@pytest.mark.parametrize("lands_on", ["the-engine-thread", "another-thread"])
def test_sigterm_mid_full_import_stops_cleanly_and_the_next_run_resumes(lab: CrashLab, lands_on: str) -> None:
    """``another-thread``: a signal sent to a stopped process goes, when it goes on, to whichever of its
    threads the kernel picks (here a photo worker or the listing's thread, as the stopped engine thread
    blocks it); CPython runs the handler only in the main thread, so that thread must notice it by itself."""
    scenario = lab.prepare(f"sigterm-{lands_on}")
    workdir = scenario.root / "runs"
    workdir.mkdir(parents=True)
    env = cli_env(lab.shim, BEFORE_PAGE_3, workdir / "report.json", signals_elsewhere=lands_on == "another-thread")
    with paused_cli(_args(scenario), env) as proc:
        os.kill(proc.pid, signal.SIGTERM)  # delivered when it goes on (before its third page)
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()
    assert b"Traceback" not in err
    message = err.decode()
    assert "interrupted by SIGTERM" in message and "resumes from its last committed page" in message
    # no result document (the run did not finish): its failure object, naming the run in history
    failure = json.loads(out)
    assert failure == {"status": "stopped-interrupted", "exit_code": 143, "message": failure["message"], "run_id": 1}
    assert "interrupted by SIGTERM" in failure["message"]

    doc = _history(scenario, 1)
    assert doc["status"] == "stopped-interrupted" and "stopped by SIGTERM" in doc["message"]
    step = _exo_step(doc)
    assert step["status"] == "stopped-interrupted" and "stopped by SIGTERM" in step["message"]
    assert step["seconds"] is not None  # it recorded its own end
    assert step["counters"]["pages"] == 2 and step["counters"]["adds"] > 900

    _rerun_resumes(lab, scenario, step)
