"""With ``--json`` every way a command ends prints exactly one JSON object on stdout: a refused
configuration, a lock held by another run, a signal, a bug; the run's ``run_id`` when history has
it. A scheduler's ``--json >> cycle.jsonl`` then holds one JSON line per run, whatever happened."""

from __future__ import annotations

import json
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import pytest

from connector.cli import app
from connector.config import load_config
from connector.engine import Engine
from connector.store import SqlStore
from tests.cli._configs import MEM_AGENT, generated_pair, invoke, runner, with_directory

MEM = (
    MEM_AGENT
    + """
[run_profiles.mem-import]
steps = [{ type = "full-import", agent = "mem" }]
"""
)

#: The keys of the failure object (README: Exit codes).
FAILURE_KEYS = {"status", "exit_code", "message", "run_id"}


def only_object(out: str) -> dict[str, Any]:
    """The one JSON object stdout holds (anything else on stdout fails the test)."""
    [line] = out.splitlines()
    doc = json.loads(line)
    assert isinstance(doc, dict)
    return doc


def error_line(err: str) -> str:
    """The text of the stderr ``error:`` line."""
    [line] = [x for x in err.splitlines() if x.startswith("error: ")]
    return line.removeprefix("error: ")


def last_run(config: Path) -> dict[str, Any]:
    doc = json.loads(invoke("history", "list", "-c", str(config), "--json")[1])[0]
    assert isinstance(doc, dict)
    return doc


@pytest.fixture
def config(tmp_path: Path, mem: dict[str, Any]) -> Path:
    mem["objects"] = {f"m{i}": {"accountName": f"m{i}"} for i in range(3)}
    return with_directory(tmp_path, mem, generated_pair(5) + MEM)


def test_success_prints_the_run_result_as_before(config: Path) -> None:
    code, out, _ = invoke("run", "cycle", "-c", str(config), "--json")
    doc = only_object(out)
    assert code == 0 and doc["status"] == "success" and doc["run_id"] == last_run(config)["run_id"]
    assert "exit_code" not in doc and [s["status"] for s in doc["steps"]] == ["success"] * 4


def test_a_configuration_error_prints_the_refused_run(tmp_path: Path, config: Path) -> None:
    config.write_text(config.read_text().replace("count = 5, seed", 'count = { env = "MVSYNC_TEST_NEVER_SET" }, seed'))
    code, out, err = invoke("run", "cycle", "-c", str(config), "--json")
    doc = only_object(out)
    assert code == 2 and set(doc) == FAILURE_KEYS
    assert doc["status"] == "stopped-configuration" and doc["exit_code"] == 2
    assert doc["message"] == error_line(err) and "MVSYNC_TEST_NEVER_SET is not set" in doc["message"]
    run = last_run(config)
    assert doc["run_id"] == run["run_id"] and run["status"] == "stopped-configuration"

    code, out, err = invoke("run", "cycle", "-c", str(tmp_path / "missing.toml"), "--json")
    doc = only_object(out)  # no file, no store: no run in history
    assert code == 2 and doc["run_id"] is None and "configuration file not found" in doc["message"]


def test_a_lock_held_by_another_run_prints_the_locked_run(config: Path) -> None:
    store = SqlStore(load_config(config).store_url())
    with store.locks.hold("agent:src"):  # refused like another process's (is_singleton=False)
        code, out, err = invoke("run", "cycle", "-c", str(config), "--json")
    store.close()
    doc = only_object(out)
    assert code == 5 and doc["status"] == "stopped-locked" and doc["exit_code"] == 5
    assert doc["message"] == error_line(err) and "agent:src" in doc["message"]
    run = last_run(config)
    assert doc["run_id"] == run["run_id"] and run["status"] == "stopped-locked"


def test_a_store_fault_prints_the_stopped_run(config: Path) -> None:
    """Something in the way of the lock folder beside the store: a store error (4), after the run began."""
    invoke("run", "cycle", "-c", str(config))
    locks = config.parent / "store.db.locks"
    for child in locks.iterdir():
        child.unlink()
    locks.rmdir()
    locks.write_text("in the way")
    code, out, err = invoke("run", "cycle", "-c", str(config), "--json")
    doc = only_object(out)
    assert code == 4 and doc["status"] == "stopped-store-error" and doc["exit_code"] == 4
    assert doc["message"] == error_line(err) and "cannot take the run lock" in doc["message"]
    run = last_run(config)
    assert doc["run_id"] == run["run_id"] and run["status"] == "stopped-store-error"


@pytest.mark.skipif(sys.platform == "win32", reason="sends itself a POSIX signal")
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_run_prints_the_interrupted_run(
    config: Path, mem: dict[str, Any], signum: signal.Signals, code: int
) -> None:
    """The signal arrives as the import step begins, on the engine's thread, which handles it before
    the next line. Ctrl-C is Python's own handler: a test session started as a shell's background job
    (CI under nohup) inherits SIGINT ignored, and Python then installs none, so the test installs it."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _interrupted_run_and_dry_run(config, mem, signum, code)
    finally:
        signal.signal(signal.SIGINT, previous)


def _interrupted_run_and_dry_run(config: Path, mem: dict[str, Any], signum: signal.Signals, code: int) -> None:
    mem["during_open"] = lambda: signal.raise_signal(signum)
    exit_code, out, err = invoke("run", "mem-import", "-c", str(config), "--json")
    doc = only_object(out)
    assert exit_code == code and doc["status"] == "stopped-interrupted" and doc["exit_code"] == code
    assert doc["message"] == error_line(err) and "The run is recorded as stopped-interrupted" in doc["message"]
    run = last_run(config)
    assert doc["run_id"] == run["run_id"] and run["status"] == "stopped-interrupted"

    exit_code, out, _ = invoke("run", "mem-import", "-c", str(config), "--json", "--dry-run")
    doc = only_object(out)  # a dry run keeps no history: no id that names nothing
    assert exit_code == code and doc["run_id"] is None and "a dry run writes nothing" in doc["message"]


def test_with_log_format_json_the_error_line_is_a_log_record(config: Path) -> None:
    code, out, _ = invoke("run", "cycle", "-c", str(config), "--json")  # a store for history
    store = SqlStore(load_config(config).store_url())
    with store.locks.hold("metaverse"):
        code, out, err = invoke("--log-format", "json", "run", "cycle", "-c", str(config), "--json")
    store.close()
    doc = only_object(out)
    records = [json.loads(line) for line in err.splitlines()]  # every stderr line is JSON
    assert code == 5 and records[-1]["level"] == "error" and records[-1]["message"] == doc["message"]
    assert {k: records[-1][k] for k in ("status", "exit_code", "run_id")} == {
        "status": "stopped-locked",
        "exit_code": 5,
        "run_id": doc["run_id"],
    }


def test_other_commands_print_their_failure_too(tmp_path: Path, config: Path) -> None:
    code, out, err = invoke("history", "list", "-c", str(config), "--json")  # no store yet
    doc = only_object(out)
    assert code == 2 and doc["status"] == "stopped-configuration" and doc["message"] == error_line(err)
    invoke("run", "cycle", "-c", str(config))
    code, out, err = invoke("history", "show", "999", "-c", str(config), "--json")
    assert code == 2 and only_object(out) == {
        "status": "stopped-configuration",
        "exit_code": 2,
        "message": error_line(err),
        "run_id": None,
    }


def test_a_store_setting_to_fix_has_the_status_of_exit_code_2(tmp_path: Path, config: Path) -> None:
    """Found in the ops pass: a store.url that is no URL, a backup target that exists already, or
    'store backup' of a PostgreSQL store exited 2 with status 'stopped-store-error', which the README
    gives exit code 4; a script branching on the failure object's status took them for a store fault."""
    invoke("run", "cycle", "-c", str(config))
    backup = tmp_path / "backup.db"
    backup.write_bytes(b"an older backup")
    code, out, err = invoke("store", "backup", str(backup), "-c", str(config), "--json")
    assert code == 2 and only_object(out)["status"] == "stopped-configuration", err
    assert "already exists" in error_line(err)
    not_a_url = tmp_path / "other.toml"
    not_a_url.write_text(generated_pair(2).replace('url = "sqlite:///store.db"', 'url = "store.db"'))
    for args in (["run", "cycle"], ["history", "list"]):
        code, out, err = invoke(*args, "-c", str(not_a_url), "--json")
        doc = only_object(out)
        assert code == 2 and doc == {**doc, "status": "stopped-configuration", "exit_code": 2}, err
        assert "is not a database URL" in doc["message"]


def test_a_bug_prints_its_failure_with_secrets_redacted(config: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("request failed: access_token=abc123secret")

    monkeypatch.setattr(Engine, "run_profile", broken)
    result = runner.invoke(app, ["run", "cycle", "-c", str(config), "--json"])
    doc = only_object(result.stdout)
    assert result.exit_code == 1 and isinstance(result.exception, RuntimeError)  # the traceback stays
    assert doc["status"] == "error-internal" and doc["exit_code"] == 1
    assert "abc123secret" not in result.stdout and "access_token=***" in doc["message"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["run", "cycle", "--json", "--bogus"], "No such option: --bogus"),  # the command's own options
        (["history", "list", "--json", "--limit", "many"], "Invalid value for '--limit'"),  # a value's type
        (["history", "list", "--json", "--limit", "0"], "Invalid value for '--limit'"),  # out of range (README)
        (["nosuch", "--json"], "No such command 'nosuch'"),  # the command itself
        (["--log-level", "LOUD", "history", "list", "--json"], "--log-level"),  # the root's own check
    ],
)
def test_a_usage_error_prints_the_failure_object_too(config: Path, args: list[str], says: str) -> None:
    """click refuses these before the command runs (found: `mvsync run cycle --json --bogus` from a
    scheduler left its .jsonl without a line): the failure object says so, with exit code 2."""
    code, out, err = invoke(*args, "-c", str(config)) if args[0] != "nosuch" else invoke(*args)
    assert code == 2
    doc = only_object(out)
    assert set(doc) == FAILURE_KEYS and doc["exit_code"] == 2 and doc["status"] == "stopped-configuration"
    assert says in doc["message"] and says in err  # stderr still says it as before


def test_a_usage_error_without_json_prints_nothing_on_stdout(config: Path) -> None:
    code, out, err = invoke("run", "cycle", "--bogus", "-c", str(config))
    assert (code, out) == (2, "") and "No such option: --bogus" in err


def test_the_root_options_failures_print_their_failure_too(tmp_path: Path, config: Path) -> None:
    """The metrics' root options: ``mvsync --metrics-port 9100 run cycle --json`` with the port held (by
    the run before, still going), or a ``--metrics-textfile`` in a missing folder, print the failure
    object too (found by hand on a tree before JsonFailureGroup, which now covers them)."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = str(other.getsockname()[1])
        code, out, err = invoke("--metrics-port", port, "run", "cycle", "-c", str(config), "--json")
        assert code == 2 and only_object(out) == {
            "status": "stopped-configuration",
            "exit_code": 2,
            "message": error_line(err),
            "run_id": None,
        }
        assert f"--metrics-port {port}: cannot listen" in error_line(err)
        code, out, err = invoke("--metrics-port", port, "history", "list", "-c", str(config))
        assert code == 2 and out == "" and "cannot listen" in err  # without --json, stdout stays empty
    missing = tmp_path / "nowhere" / "mvsync.prom"
    code, out, err = invoke("--metrics-textfile", str(missing), "history", "list", "-c", str(config), "--json")
    assert code == 2 and only_object(out)["message"] == error_line(err) and "does not exist" in error_line(err)
    code, out, err = invoke("--log-level", "LOUD", "run", "cycle", "-c", str(config), "--json")
    assert code == 2 and only_object(out)["message"] == error_line(err) and "--log-level" in error_line(err)
