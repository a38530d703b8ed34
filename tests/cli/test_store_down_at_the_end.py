"""The store stops answering while a run is in its last step (PostgreSQL shut down, the database
closed to connections): the run cannot record its end; the next run must find and say what happened,
from any host (the real CLI in a subprocess, paused by the crash harness in its last step)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, make_url, text

from tests.cli._configs import generated_pair, invoke
from tests.harness.crash import CrashPoint, cli_env, paused_cli, write_shim

pytestmark = [
    pytest.mark.skipif(sys.platform == "win32", reason="pauses the run with SIGSTOP"),
    pytest.mark.postgres,
]

PROFILES = """
[run_profiles.sync-tgt]
steps = [{ type = "full-sync", agent = "tgt" }]
[run_profiles.import-src]
steps = [{ type = "full-import", agent = "src" }]
"""


def _database_down(admin_url: str, database: str, *, down: bool) -> None:
    """Close ``database`` to connections and end its sessions (what a fast shutdown does to it), or
    open it again. Why not ``pg_ctl stop``: the harness's server is shared with other test sessions."""
    dba = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with dba.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" WITH ALLOW_CONNECTIONS {str(not down).lower()}'))
            if down:
                conn.execute(
                    text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d"), {"d": database}
                )
    finally:
        dba.dispose()


def _history(config: Path, run_id: int) -> dict[str, Any]:
    code, out, err = invoke("history", "show", str(run_id), "-c", str(config), "--json")
    assert code == 0, err
    doc: dict[str, Any] = json.loads(out)
    return doc


def test_a_run_whose_store_went_down_in_its_last_step_is_closed_by_the_next_run_of_another_host(
    tmp_path: Path, postgres_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = postgres_server.create_database()
    database = str(make_url(url).database)
    config = tmp_path / "mvsync.toml"
    config.write_text(generated_pair(5).replace("sqlite:///store.db", url) + PROFILES, encoding="utf-8")
    try:
        assert invoke("run", "cycle", "-c", str(config))[0] == 0  # run 1
        env = cli_env(write_shim(tmp_path / "shim"), CrashPoint("sync", "begin", 1), tmp_path / "r.json", resume=True)
        with paused_cli(["run", "sync-tgt", "-c", str(config), "--json"], env, timeout=120) as run_2:
            _database_down(postgres_server.url(), database, down=True)
            os.kill(run_2.pid, signal.SIGCONT)
            out, err = run_2.communicate(timeout=120)
        _database_down(postgres_server.url(), database, down=False)
        assert run_2.returncode == 4, err.decode()
        assert "not recorded in history" in err.decode(), err.decode()
        left = _history(config, 2)
        assert left["status"] == "ended-unrecorded", left  # its lock is free: history says so (and writes nothing)
        with monkeypatch.context() as patched:  # doctor, from another server too, says what happened
            patched.setattr(socket, "gethostname", lambda: "sync-02.contoso.com")
            out = invoke("doctor", "-c", str(config), "--json", "--no-connect")[1]
        [finding] = [f for f in json.loads(out)["findings"] if f["check"] == "runs-left-in-progress"]
        assert finding["examples"] == [f"run 2 (sync-tgt): pid {run_2.pid} on {socket.gethostname()}"], finding
        assert "or the store unreachable when it ended" in finding["message"], finding

        # the next run, on another server (a failover node, a new container): the pid of run 2 cannot
        # be looked up from there, and it runs no step of run 2's agent
        with monkeypatch.context() as patched:
            patched.setattr(socket, "gethostname", lambda: "sync-02.contoso.com")
            code, out, err = invoke("run", "import-src", "-c", str(config), "--json")
        assert code == 0, (out, err)
        closed = _history(config, 2)
        assert closed["status"] == "stopped-interrupted", closed
        assert "found by run 3" in closed["message"], closed
    finally:
        postgres_server.drop_database(url)
