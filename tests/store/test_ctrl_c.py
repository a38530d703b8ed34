"""Ctrl-C (SIGINT) to the real ``mvsync run`` while it writes the store in a full Exchange Online import.

What must hold (README: "How an interrupted run ends in history", "A full import resumes", exit codes):
the page being written is rolled back whole (or, when the SIGINT is handled only after its COMMIT ran,
kept whole and counted), the pages committed before it are kept, history says what the store kept, the store is
sound (SQLite's ``integrity_check``), the run and its step are recorded ``stopped-interrupted``, the
exit code is 130 with one failure object on stdout, and the next run resumes after the last committed
page. The interrupt comes at a counted event, not after a delay: the child freezes itself (SIGSTOP)
in page 3's transaction, at its commit (``import:commit:5``: the step's schema, its checkpoint read,
pages 1 and 2 came first), so two pages are committed whatever the machine's load; SIGINT is sent
while it is frozen and delivered when it goes on (SIGCONT), inside that open transaction.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.crash import CrashLab, CrashPoint, cli_env, lab_emulator_config, mvsync_command, paused_cli

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGSTOP, SIGCONT and SIGINT are POSIX signals")

PROFILE = "Full Import (Stage Only)"
#: In page 3's transaction, at its commit: pages 1 and 2 (500 entries each) committed before it.
IN_PAGE_3 = CrashPoint("import", "commit", 5)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrashLab]:
    from connector.emulator import GraphEmulator

    # 2,000 users: about 1,860 mailboxes, four listing pages of 500 (the sample's page size)
    with GraphEmulator(lab_emulator_config(users=2000, seed=21)) as emulator:
        yield CrashLab(tmp_path_factory.mktemp("ctrl-c"), emulator)


def _history(config: Path, run_id: int) -> dict[str, Any]:
    command = [*mvsync_command(), "history", "show", str(run_id), "-c", str(config), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)
    doc: dict[str, Any] = json.loads(done.stdout)
    return doc


def _exo_step(doc: dict[str, Any]) -> dict[str, Any]:
    [step] = [s for s in doc["steps"] if s["agent"] == "exo"]
    return step


def _store_file(config: Path) -> Path:
    [store] = [p for p in config.parent.glob("*.db")]
    return store


def _exo_objects(store: Path) -> tuple[str, int]:
    """SQLite's ``integrity_check`` verdict and how many ``exo`` objects the connector space holds (read
    directly, read-only: a check of the file, not the behaviour under test)."""
    with contextlib.closing(sqlite3.connect(f"{store.as_uri()}?mode=ro", uri=True)) as conn:
        [(verdict,)] = conn.execute("PRAGMA integrity_check").fetchall()
        [(count,)] = conn.execute("SELECT count(*) FROM cs_object WHERE agent = 'exo'").fetchall()
    return str(verdict), int(count)


def test_ctrl_c_in_a_page_write_rolls_that_page_back_keeps_the_others_and_the_next_run_resumes(lab: CrashLab) -> None:
    scenario = lab.prepare("sigint")
    config = Path(scenario.config_path)
    workdir = scenario.root / "runs"
    workdir.mkdir(parents=True)
    args = ["run", PROFILE, "--agent", "exo", "-c", str(config), "--json"]
    env = cli_env(lab.shim, IN_PAGE_3, workdir / "report.json", resume=True)
    with paused_cli(args, env, sigint=True) as proc:
        os.kill(proc.pid, signal.SIGINT)  # Ctrl-C, delivered as it goes on: inside page 3's transaction
        os.kill(proc.pid, signal.SIGCONT)
        out, err = proc.communicate(timeout=120)
    message = err.decode()
    assert proc.returncode == 130, message
    assert "Traceback" not in message
    assert "resumes from its last committed page" in message
    failure = json.loads(out)
    assert failure == {"status": "stopped-interrupted", "exit_code": 130, "message": failure["message"], "run_id": 1}

    doc = _history(config, 1)
    step = _exo_step(doc)
    assert doc["status"] == "stopped-interrupted" and step["status"] == "stopped-interrupted", doc
    assert doc["message"] == "interrupted (Ctrl-C)" and "Ctrl-C" in step["message"], doc
    assert step["seconds"] is not None  # it recorded its own end
    # Page 3 is rolled back whole or, when the SIGINT is handled only once its COMMIT has run, committed
    # whole; either way history says exactly what the store kept, and the next run resumes after it. Which
    # of the two is not the test's to choose: the child's threads are frozen and resumed together, and under
    # load the COMMIT can run before the Python handler does (seen in CI). The engine's handling of each
    # side is pinned in process by tests/engine/test_resume.py (the rolled-back page, and the interruption
    # that surfaces just after a commit).
    pages = step["counters"]["pages"]
    verdict, kept = _exo_objects(_store_file(config))
    assert verdict == "ok"
    assert pages in (2, 3) and kept == step["counters"]["adds"], (kept, step["counters"])
    assert 500 * (pages - 1) < kept <= 500 * pages, (kept, step["counters"])  # whole pages of 500, no part

    again = lab.run(scenario, PROFILE)
    assert again.returncode == 0, again.stderr
    resumed = again.result
    assert resumed is not None
    resumed_step = _exo_step(resumed)
    assert resumed_step["status"] == "success"
    assert resumed_step["message"].startswith(f"resumed the full import interrupted in step {step['step_id']} ")
    assert resumed_step["counters"]["resumed_after_page"] == pages
    assert resumed_step["counters"]["resumed_entries"] == kept
    mailboxes = sum(1 for u in lab.users if u.get("mailbox") in ("cloud", "on-premises"))
    verdict, everyone = _exo_objects(_store_file(config))
    assert verdict == "ok" and everyone == mailboxes  # each once: the kept ones adopted, the rest added now
