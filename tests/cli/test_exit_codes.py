"""The README's exit-code table, case by case, on the real ``mvsync`` in its own process (as cron,
systemd or Task Scheduler starts it): the code each documented case ends with, and, with ``--json``,
exactly one JSON object on stdout whose ``status`` and ``exit_code`` say the same."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from connector.config import load_config
from connector.store import SqlStore
from tests.cli._configs import invoke
from tests.harness.crash import default_sigint, mvsync_command

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """
[store]
url = "sqlite:///store.db"
[agents.ok]
type = "tests.cli.exit_code_agent:OutcomeConnector"
[agents.bad]
type = "tests.cli.exit_code_agent:OutcomeConnector"
settings = { outcome = "object-error" }
[agents.down]
type = "tests.cli.exit_code_agent:OutcomeConnector"
settings = { outcome = "server-down" }
[agents.wait]
type = "tests.cli.exit_code_agent:OutcomeConnector"
settings = { outcome = "wait", ready = "ready.pid" }
[run_profiles.ok]
steps = [{ type = "full-import", agent = "ok" }]
[run_profiles.bad]
steps = [{ type = "full-import", agent = "bad" }]
[run_profiles.down]
steps = [{ type = "full-import", agent = "down" }]
[run_profiles.wait]
steps = [{ type = "full-import", agent = "wait" }]
"""


@dataclass(frozen=True)
class Case:
    """One row of the table: the command, what is arranged around it, the code and the JSON status."""

    args: tuple[str, ...]
    code: int
    status: str
    around: Callable[[Path], contextlib.AbstractContextManager[None]] = contextlib.nullcontext


@contextlib.contextmanager
def _agent_locked(config: Path) -> Iterator[None]:
    """Another run holds the agent ``ok`` (this test process, through the store's own lock)."""
    store = SqlStore(load_config(config).store_url())
    try:
        with store.locks.hold("agent:ok"):
            yield
    finally:
        store.close()


@contextlib.contextmanager
def _empty_store(config: Path) -> Iterator[None]:
    """The store file truncated to 0 bytes (a full disk, a failed copy): ``mvsync doctor``'s finding."""
    (config.parent / "store.db").write_bytes(b"")
    yield


CASES = {
    "0 success": Case(("run", "ok"), 0, "success"),
    "2 unknown run profile": Case(("run", "no-such-profile"), 2, "stopped-configuration"),
    "2 unknown agent": Case(("cs", "search", "no-such-agent"), 2, "stopped-configuration"),
    "3 per-object errors": Case(("run", "bad"), 3, "completed-discovery-errors"),
    "4 a step stopped": Case(("run", "down"), 4, "stopped-server-down"),
    "5 locked by another run": Case(("run", "ok"), 5, "stopped-locked", _agent_locked),
    "6 doctor found a problem": Case(("doctor", "--no-connect"), 6, "", _empty_store),
}


def _env() -> dict[str, str]:
    """The environment of a scheduled run, with this checkout importable (the test's agent module)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MVSYNC_")}
    return {**clean, "PYTHONPATH": path, "COLUMNS": "250"}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A configuration whose store exists (one successful run, in this process, made it)."""
    path = tmp_path / "mvsync.toml"
    path.write_text(CONFIG, encoding="utf-8")
    assert invoke("run", "ok", "-c", str(path))[0] == 0
    return path


def _cli(config: Path, *args: str) -> tuple[int, str, str]:
    command = [*mvsync_command(), *args, "-c", str(config), "--json"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=config.parent, env=_env())
    return done.returncode, done.stdout, done.stderr


def _only_object(out: str) -> dict[str, Any]:
    """The one JSON object stdout holds: anything else there fails the test."""
    [line] = out.splitlines()
    doc = json.loads(line)
    assert isinstance(doc, dict)
    return doc


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_each_documented_exit_code(config: Path, case: Case) -> None:
    with case.around(config):
        code, out, err = _cli(config, *case.args)
    assert code == case.code, err
    assert "Traceback" not in err
    doc = _only_object(out)
    if case.status:  # doctor's report is its own document (``ok``, ``findings``)
        assert doc["status"] == case.status
    if "findings" in doc:
        assert doc["ok"] is (code == 0)
    elif "steps" not in doc:  # a failure object (README: JSON on failure)
        assert set(doc) == {"status", "exit_code", "message", "run_id"} and doc["exit_code"] == code


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143), (signal.SIGHUP, 129)], ids=["130", "143", "129"]
)
def test_a_run_a_signal_ends_exits_128_plus_its_number(config: Path, signum: signal.Signals, code: int) -> None:
    """The signal arrives once the import is under way (the agent wrote its pid: a handshake, no
    sleep); the run is in history as ``stopped-interrupted`` under the id the failure object names."""
    ready = config.parent / "ready.pid"
    command = [*mvsync_command(), "run", "wait", "-c", str(config), "--json"]
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=config.parent,
        env=_env(),
        preexec_fn=default_sigint,
    ) as proc:
        try:
            _await_file(ready, proc)
            proc.send_signal(signum)
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == code, err
    doc = _only_object(out)
    assert (doc["status"], doc["exit_code"]) == ("stopped-interrupted", code)
    listed = json.loads(invoke("history", "list", "-c", str(config), "--json")[1])
    assert (listed[0]["run_id"], listed[0]["status"]) == (doc["run_id"], "stopped-interrupted")


def _await_file(path: Path, proc: subprocess.Popen[str]) -> None:
    """Until the child has written ``path`` (bounded; a child that ended first fails the test)."""
    import time

    deadline = time.monotonic() + 60
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the import never started"
        time.sleep(0.02)


def test_a_run_that_ended_is_not_named_as_holding_the_stores_locks(config: Path) -> None:
    """Found by making a run's store busy (exit 5) after two earlier runs had ended normally: its message
    said "mvsync runs on record as holding this store's locks: run 2 ('bad', step 1: bad full-import),
    pid 22005 ..." and so on for every run since, because each lock's holder record stayed behind
    after a normal release, and only "a record left by a process that was killed" was meant to. The
    operator went looking for processes that had ended long before. Records of released locks go."""
    assert _cli(config, "run", "ok")[0] == 0  # in its own process: its records name another pid
    assert _cli(config, "run", "down")[0] == 4
    store = SqlStore(load_config(config).store_url())
    try:
        assert store.locks.other_holders() == []
    finally:
        store.close()
