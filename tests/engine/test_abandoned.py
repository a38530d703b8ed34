"""Runs and steps a dead process left ``in-progress`` are closed by the next run, on proof only.

The proof is a lock the new step holds (any host), the run's own run lock being free (any host), or,
for a run an earlier mvsync recorded on this host, its process being gone. The real kill -9 and
SIGTERM of ``mvsync run`` are in tests/resilience/test_interruptions.py.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from connector.engine import Engine
from connector.engine._abandoned import process_gone, run_lock
from connector.store import RunHistory, RunRow, SqlStore, StepRow
from connector.store._migrations import RUN_LOCKS_FROM_KEY
from connector.store._store_meta import write_meta
from tests.engine.conftest import World, make_config

PROFILES = {
    "ad-full": {"steps": [{"type": "full-import", "agent": "ad", "page_size": 5}]},
    "ad-sync": {"steps": [{"type": "full-sync", "agent": "ad"}]},
}


def _run_row(pid: int | None, host: str | None, started_at: float) -> RunRow:
    return RunRow(1, "Delta Cycle", "in-progress", False, started_at, None, host, pid, None)


def _dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_process_gone_only_on_proof() -> None:
    here = socket.gethostname()
    now = time.time()
    assert process_gone(_run_row(_dead_pid(), here, now - 5))
    # a live process that started before the run is the run's own: not gone
    assert not process_gone(_run_row(os.getppid(), here, now))
    # a live process that started after the run has reused the pid: gone
    assert process_gone(_run_row(os.getppid(), here, 1_000_000.0))
    # this very process runs no abandoned run (an engine in a loop would see its own)
    assert not process_gone(_run_row(os.getpid(), here, 1_000_000.0))
    # another host's process cannot be looked up: never judged gone from here
    assert not process_gone(_run_row(_dead_pid(), "sync-02.contoso.com", now - 5))
    assert not process_gone(_run_row(None, here, now - 5))


@contextmanager
def _on_host(monkeypatch: pytest.MonkeyPatch, host: str) -> Iterator[None]:
    with monkeypatch.context() as patched:
        patched.setattr(socket, "gethostname", lambda: host)
        yield


def _abandon(
    store_url: str, *, agent: str | None, kind: str = "full-import", ago_s: float = 60.0, earlier: bool = True
) -> int:
    """A run (and step) written as a process that then died would have left them; the run's id.

    ``earlier``: recorded by an mvsync before run locks (migration 7), whose free run lock proves
    nothing; otherwise by this one, whose run lock is free once its process is gone."""
    store = SqlStore(store_url)
    try:
        with store.transaction() as conn:
            history = RunHistory(conn)
            started = time.time() - ago_s
            run_id = history.start_run("Full Cycle", dry_run=False, started_at=started)
            if agent is not None:
                step_id = history.start_step(run_id, 1, agent, kind, started + 1)
                history.note_progress(step_id, '{"pages": 3, "adds": 15}')
            if earlier:
                write_meta(conn, RUN_LOCKS_FROM_KEY, str(run_id + 1))
    finally:
        store.close()
    return run_id


def _rows(store_url: str, run_id: int) -> tuple[RunRow, list[StepRow]]:
    store = SqlStore(store_url)
    try:
        with store.read() as conn:
            history = RunHistory(conn)
            run = history.run(run_id)
            assert run is not None
            return run, history.steps(run_id)
    finally:
        store.close()


def test_a_step_left_open_by_another_host_is_closed_by_the_next_step_of_its_agent(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = world.config.store_url()
    with _on_host(monkeypatch, "sync-02.contoso.com"):  # its pid cannot be checked from here
        on_ad = _abandon(url, agent="ad")
        on_hr = _abandon(url, agent="hr")
        waiting = _abandon(url, agent=None)  # killed while it waited for a lock: no step proves it
    world.engine.close()
    world.engine = Engine(make_config(tmp_path, world.prefix, url, run_profiles=PROFILES))
    result = world.engine.run_profile("ad-full")
    assert result.status == "success", result.as_dict()

    run, steps = _rows(url, on_ad)
    assert run.status == "stopped-interrupted" and run.seconds is None  # when it died is unknown
    assert f"(pid {os.getpid()} on sync-02.contoso.com) ended during its step 1 (ad full-import)" in (run.message or "")
    assert f"found by run {result.run_id}" in (run.message or "")
    [step] = steps
    assert step.status == "stopped-interrupted" and step.seconds is None
    assert "ended while this step ran" in (step.message or "")
    assert "resumes from its last committed page if the agent keeps checkpoints" in (step.message or "")
    assert "or starts over" in (step.message or "")
    assert step.counters == '{"pages": 3, "adds": 15}'  # what it had committed stays readable

    # the locks this run held prove nothing about hr's step, nor about a run without a step
    assert _rows(url, on_hr)[0].status == "in-progress"
    assert _rows(url, waiting)[0].status == "in-progress"


def test_a_synchronization_step_left_open_is_closed_by_any_synchronization(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = world.config.store_url()
    with _on_host(monkeypatch, "sync-02.contoso.com"):
        on_hr = _abandon(url, agent="hr", kind="delta-sync")  # it held the metaverse lock
    world.engine.close()
    world.engine = Engine(make_config(tmp_path, world.prefix, url, run_profiles=PROFILES))
    assert world.engine.run_profile("ad-full").status == "success"
    assert _rows(url, on_hr)[0].status == "in-progress"  # an import of ad proves nothing about it
    assert world.engine.run_profile("ad-sync").status == "success"
    run, [step] = _rows(url, on_hr)
    assert run.status == step.status == "stopped-interrupted"
    assert "resumes" not in (step.message or "")  # only a full import resumes


def test_a_run_of_this_host_whose_process_is_gone_is_closed_with_its_open_step(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = world.config.store_url()
    gone = _dead_pid()
    alive = os.getppid()  # a process that started before the run below: that run may still be going
    with monkeypatch.context() as patched:
        patched.setattr(os, "getpid", lambda: gone)
        dead_run = _abandon(url, agent="hr")
        patched.setattr(os, "getpid", lambda: alive)
        live_run = _abandon(url, agent="exo", ago_s=0.0)
    world.engine.close()
    world.engine = Engine(make_config(tmp_path, world.prefix, url, run_profiles=PROFILES))
    assert world.engine.run_profile("ad-full").status == "success"
    run, [step] = _rows(url, dead_run)
    assert run.status == step.status == "stopped-interrupted"
    assert f"(pid {gone} on {socket.gethostname()})" in (run.message or "")
    assert "ended while this step ran" in (step.message or "")
    assert _rows(url, live_run)[0].status == "in-progress"


def test_a_dry_run_closes_nothing(world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = world.config.store_url()
    with _on_host(monkeypatch, "sync-02.contoso.com"):
        on_ad = _abandon(url, agent="ad")
    world.engine.close()
    world.engine = Engine(make_config(tmp_path, world.prefix, url, run_profiles=PROFILES))
    world.engine.run_profile("ad-full", dry_run=True)
    assert _rows(url, on_ad)[0].status == "in-progress"


def test_a_run_left_in_progress_without_an_open_step_is_closed_by_its_free_run_lock_on_any_host(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in a bad-day pass: PostgreSQL shut down under a run's last step, and the run could not
    record its end. A run of another host (a failover node, a new container) found nothing to prove
    it gone (no pid to look up there, no step of its agents run), so history said "in-progress" for
    ever. A run holds its own run lock while it runs: free, it proves the run's process gone."""
    url = world.config.store_url()
    with _on_host(monkeypatch, "sync-02.contoso.com"):
        dead = _abandon(url, agent=None, earlier=False)  # its end not recorded, no step open
        alive = _abandon(url, agent="hr", earlier=False)  # still running on sync-02: its lock is held
    world.engine.close()
    world.engine = Engine(make_config(tmp_path, world.prefix, url, run_profiles=PROFILES))
    holder = SqlStore(url)  # another process's run lock (a second store: its own lock files or session)
    try:
        with holder.locks.hold(run_lock(alive), transient=True):  # as the engine holds it
            result = world.engine.run_profile("ad-full")
    finally:
        holder.close()
    assert result.status == "success", result.as_dict()
    run, _ = _rows(url, dead)
    assert run.status == "stopped-interrupted" and run.seconds is None
    assert "(pid " in (run.message or "") and "on sync-02.contoso.com) ended without recording" in (run.message or "")
    assert f"found by run {result.run_id}" in (run.message or "")
    assert _rows(url, alive)[0].status == "in-progress"
    assert world.engine.store.locks.recorded("run-") == []  # no lock file is left behind by the proof
