"""Concurrent runs, on SQLite (lock files) and PostgreSQL (advisory locks): two processes never run
the same agent at once nor two synchronizations; a refused run names the holder (CLI exit 5); a run
with ``--wait`` waits; a killed holder's locks are released by the kernel / the server."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from connector.engine import Engine
from connector.store import LockHeldError
from connector.store.tables import run_history
from tests.engine.conftest import make_config

ROOT = str(Path(__file__).resolve().parents[2])

HOLDER = textwrap.dedent(
    """
    import json, sys, time
    sys.path.insert(0, {root!r})
    args = json.loads(sys.argv[1])
    if args["mode"] == "engine":  # the engine's own lock selection for one step of a profile
        from pathlib import Path
        from connector.engine import Engine
        from tests.engine.conftest import make_config
        engine = Engine(make_config(Path(args["tmp"]), "holder", args["url"]))
        step = [s for s in engine.config.run_profiles[args["profile"]].steps if s.agent == args["agent"]][0]
        held = engine._locks(step, 0)
    else:  # named locks straight from the store
        import contextlib
        from connector.store import SqlStore
        store = SqlStore(args["url"])
        held = contextlib.ExitStack()
        for name in args["names"]:
            held.enter_context(store.locks.hold(name))
    with held:
        print("held", flush=True)
        time.sleep(args["seconds"])
    print("released", flush=True)
    """
).format(root=ROOT)


class Holder:
    """Another mvsync process holding locks until it is told to stop (or killed)."""

    def __init__(self, **args: object) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, json.dumps(args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "held":
            self.proc.kill()
            _, err = self.proc.communicate()
            raise AssertionError(f"holder did not start: {line!r} {err[-2000:]}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.communicate(timeout=30)


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    started: list[Holder] = []
    yield started
    for h in started:
        h.kill()


def _engine(tmp_path: Path, url: str) -> Engine:
    return Engine(make_config(tmp_path, "runner", url))


def test_same_agent_is_refused_naming_the_holder(tmp_path: Path, store_url: str, holders: list[Holder]) -> None:
    engine = _engine(tmp_path, store_url)  # creates the store before the holder opens it
    holders.append(
        Holder(mode="engine", tmp=str(tmp_path), url=store_url, profile="full-import", agent="ad", seconds=120)
    )
    try:
        t0 = time.monotonic()
        with pytest.raises(LockHeldError) as refused:
            engine.run_profile("full-import", agents={"ad"})
        assert time.monotonic() - t0 < 5  # fails fast without --wait
        message = str(refused.value)
        assert "agent:ad is locked by" in message
        assert f"pid {holders[0].pid}" in message and socket.gethostname() in message
        assert "--wait" in message
        # the refused run is in the history as such, not as a success
        with engine.store.read() as conn:
            statuses = [r.status for r in conn.execute(select(run_history.c.status).order_by(run_history.c.id))]
        assert statuses[-1] == "stopped-locked"
        # another agent's import is not held up
        assert engine.run_profile("full-import", agents={"exo"}).status == "success"
    finally:
        engine.close()


def test_two_synchronizations_never_overlap(tmp_path: Path, store_url: str, holders: list[Holder]) -> None:
    engine = _engine(tmp_path, store_url)
    holders.append(
        Holder(mode="engine", tmp=str(tmp_path), url=store_url, profile="full-sync", agent="exo", seconds=120)
    )
    try:
        with pytest.raises(LockHeldError, match=r"metaverse is locked by pid"):
            engine.run_profile("full-sync", agents={"ad"})
        # an import of an agent that is not synchronizing still runs
        assert engine.run_profile("full-import", agents={"ad"}).status == "success"
    finally:
        engine.close()


def test_wait_runs_once_the_holder_finishes(
    tmp_path: Path, store_url: str, holders: list[Holder], caplog: pytest.LogCaptureFixture
) -> None:
    engine = _engine(tmp_path, store_url)
    holders.append(Holder(mode="locks", url=store_url, names=["agent:ad"], seconds=1.5))
    try:
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="mvsync.store"):
            result = engine.run_profile("full-import", agents={"ad"}, wait_s=60)
        waited = time.monotonic() - t0
        assert result.status == "success"
        assert 0.5 < waited < 30
        # said once, when the wait began (a scheduled run's log says why it took longer)
        [said] = [r.getMessage() for r in caplog.records if "waiting up to" in r.getMessage()]
        assert said.startswith(f"agent:ad is locked by pid {holders[0].pid} on ") and "60 s for it (--wait)" in said
    finally:
        engine.close()


def test_a_killed_holder_releases_its_locks(tmp_path: Path, store_url: str, holders: list[Holder]) -> None:
    engine = _engine(tmp_path, store_url)
    holder = Holder(mode="engine", tmp=str(tmp_path), url=store_url, profile="full-sync", agent="ad", seconds=600)
    holders.append(holder)
    try:
        with pytest.raises(LockHeldError):
            engine.run_profile("full-sync", agents={"ad"})
        holder.kill()  # kill -9: no chance to unlock; kill() returns once the process is gone
        # the OS released the lock with the process: the next run gets it at once, without --wait
        result = engine.run_profile("full-sync", agents={"ad"}, wait_s=0)
        assert result.status == "success"
    finally:
        engine.close()


def test_cli_run_exits_5_naming_the_holder_and_waits_with_wait(
    tmp_path: Path, store_url: str, holders: list[Holder]
) -> None:
    config = tmp_path / "mvsync.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [store]
            url = {json.dumps(store_url)}

            [agents.people]
            type = "connector.bench.generated:GeneratedConnector"
            settings = {{ count = 3, seed = 1, photo_bytes = 0 }}
            projection = [{{ object_class = "person" }}]

            [run_profiles.import]
            steps = [{{ type = "full-import", agent = "people" }}]
            """
        )
    )
    mvsync = str(Path(sys.executable).with_name("mvsync"))
    subprocess.run([mvsync, "run", "import", "-c", str(config), "--json"], check=True, capture_output=True, timeout=60)
    holders.append(Holder(mode="locks", url=store_url, names=["agent:people"], seconds=8))
    refused = subprocess.run([mvsync, "run", "import", "-c", str(config)], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 5, refused.stderr
    stderr = " ".join(refused.stderr.split())  # rich may wrap the message
    assert "agent:people is locked by" in stderr and f"pid {holders[0].pid}" in stderr
    waited = subprocess.run(
        [mvsync, "run", "import", "-c", str(config), "--wait", "60", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["status"] == "success"
