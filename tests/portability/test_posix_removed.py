"""The Windows lane: mvsync's main paths in a Python where the POSIX-only modules and calls are gone.

These machines have no Windows, so this is the next best check that a POSIX-only call does not creep
back into what the package runs: every child process here (the real ``mvsync`` console script and
the processes it starts) gets a ``sitecustomize`` that makes ``fcntl``, ``resource``, ``pwd`` and
``grp`` unimportable and deletes ``os.fchmod``, ``os.pwrite`` and ``os.O_NOFOLLOW`` before anything
else is imported. A new ``import fcntl`` or ``os.fchmod`` in the package fails these tests with the
traceback. ``mypy --platform win32`` (tests/run.sh) covers the code paths only Windows takes.

What this lane cannot prove: that a lock held by a killed process is released (without ``fcntl``,
filelock falls back to a lock file here; on Windows it uses ``msvcrt.locking``, which the OS
releases with the process; tests/locks checks the release with a killed child on this OS).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.imaging.images import photo

ROOT = Path(__file__).resolve().parents[2]
MVSYNC = str(Path(sys.executable).with_name("mvsync"))
BLOCKED_MODULES = ("fcntl", "resource", "pwd", "grp")
REMOVED_OS = ("fchmod", "pwrite", "O_NOFOLLOW")

SITECUSTOMIZE = textwrap.dedent(
    f"""
    # Written by tests/portability/test_posix_removed.py: this Python has no POSIX-only modules.
    import importlib.abc
    import os
    import sys

    _BLOCKED = {BLOCKED_MODULES!r}


    class _PosixOnlyBlocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in _BLOCKED:
                why = "POSIX-only: removed for the Windows lane"
                raise ModuleNotFoundError(f"No module named {{name!r}} ({{why}})", name=name)
            return None


    sys.meta_path.insert(0, _PosixOnlyBlocker())
    for _name in _BLOCKED:
        sys.modules.pop(_name, None)
    for _attr in {REMOVED_OS!r}:
        if hasattr(os, _attr):
            delattr(os, _attr)
    """
)

HOLDER = textwrap.dedent(
    """
    import sys
    from connector.store import SqlStore

    store = SqlStore(sys.argv[1])
    with store.locks.hold("agent:hr"):
        print("held", flush=True)
        sys.stdin.read()  # hold until the test closes stdin
    print("released", flush=True)
    """
)


@pytest.fixture(scope="module")
def lane_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a child Python without the POSIX-only modules and ``os`` functions."""
    shim = tmp_path_factory.mktemp("posix-removed")
    (shim / "sitecustomize.py").write_text(SITECUSTOMIZE, encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AD_")}  # the demo must not find a DC
    env["PYTHONPATH"] = os.pathsep.join([str(shim), str(ROOT)])
    env["COLUMNS"] = "200"
    return env


def _run(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def _no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr, done.stderr[-4000:]
    assert "Traceback" not in done.stdout, done.stdout[-4000:]


def test_the_lane_really_removes_them(lane_env: dict[str, str], tmp_path: Path) -> None:
    probe = textwrap.dedent(
        f"""
        import importlib, json, os
        result = {{}}
        for name in {BLOCKED_MODULES!r}:
            try:
                importlib.import_module(name)
                result[name] = "importable"
            except ImportError:
                result[name] = "blocked"
        for attr in {REMOVED_OS!r}:
            result["os." + attr] = "present" if hasattr(os, attr) else "removed"
        print(json.dumps(result))
        """
    )
    done = _run([sys.executable, "-c", probe], lane_env, tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result.values()) <= {"blocked", "removed"}, result
    assert len(result) == len(BLOCKED_MODULES) + len(REMOVED_OS)


def test_help_runs(lane_env: dict[str, str], tmp_path: Path) -> None:
    done = _run([MVSYNC, "--help"], lane_env, tmp_path)
    _no_traceback(done)
    assert done.returncode == 0, done.stderr
    assert "run" in done.stdout and "demo" in done.stdout


@pytest.mark.slow
def test_demo_runs(lane_env: dict[str, str], tmp_path: Path) -> None:
    done = _run([MVSYNC, "demo", "--users", "20", "--data-dir", str(tmp_path / "demo"), "--json"], lane_env, tmp_path)
    _no_traceback(done)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout)
    assert report["status"] == "success"
    assert report["photos_exported"] > 0 and report["delta_exports"] == 0
    # the secrets went through connector.files (no fchmod here) and were read back by the run
    assert (tmp_path / "demo" / "secrets" / "token-cache.key").is_file()


@pytest.fixture
def folder_config(lane_env: dict[str, str], tmp_path: Path) -> Iterator[Path]:
    """``mvsync init``'s starter configuration (a photo folder) with a "Full Cycle" profile, 3 photos."""
    done = _run([MVSYNC, "init"], lane_env, tmp_path)
    _no_traceback(done)
    assert done.returncode == 0, done.stderr
    config = tmp_path / "mvsync.toml"
    with config.open("a", encoding="utf-8") as handle:
        handle.write(
            '\n[run_profiles."Full Cycle"]\nsteps = [{ type = "full-import", agent = "hr" }, '
            '{ type = "full-sync", agent = "hr" }, { type = "delta-import", agent = "hr" }, '
            '{ type = "delta-sync", agent = "hr" }]\n'
        )
    photos = tmp_path / "photos"
    photos.mkdir(exist_ok=True)
    for n, account in enumerate(("jdoe", "asmith", "bwayne"), start=1):
        (photos / f"{account}.jpg").write_bytes(photo(n))
    yield config


def test_full_cycle_with_the_folder_agent(lane_env: dict[str, str], tmp_path: Path, folder_config: Path) -> None:
    done = _run([MVSYNC, "run", "Full Cycle", "-c", str(folder_config), "--json"], lane_env, tmp_path)
    _no_traceback(done)
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout)
    assert result["status"] == "success"
    steps = {step["kind"]: step for step in result["steps"]}
    assert steps["full-import"]["counters"]["adds"] == 3
    assert steps["full-sync"]["counters"]["projections"] == 3
    # the photo reads went through the lstat / inode checks (no O_NOFOLLOW here) and found the files
    assert all(step["errors"] == 0 for step in result["steps"])


def test_a_second_run_is_refused_while_the_first_holds_the_lock(
    lane_env: dict[str, str], tmp_path: Path, folder_config: Path
) -> None:
    first = _run([MVSYNC, "run", "Full Cycle", "-c", str(folder_config)], lane_env, tmp_path)
    assert first.returncode == 0, first.stderr[-4000:]
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, f"sqlite:///{tmp_path / 'mvsync.db'}"],
        env=lane_env,
        cwd=tmp_path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        refused = _run([MVSYNC, "run", "Full Cycle", "-c", str(folder_config)], lane_env, tmp_path)
        _no_traceback(refused)
        assert refused.returncode == 5, refused.stderr
        message = " ".join(refused.stderr.split())
        assert f"agent:hr is locked by pid {holder.pid}" in message
        # without fcntl filelock falls back to a lock file here (not on Windows): the refusal says so
        assert "this Python has no OS file locks" in message
    finally:
        out, err = holder.communicate(input="", timeout=60)  # closing stdin releases the lock
    assert holder.returncode == 0 and "released" in out, err
    again = _run([MVSYNC, "run", "Full Cycle", "-c", str(folder_config)], lane_env, tmp_path)
    _no_traceback(again)
    assert again.returncode == 0, again.stderr[-4000:]


def test_an_undecodable_secret_file_is_a_message_and_exit_2(
    lane_env: dict[str, str], tmp_path: Path, folder_config: Path
) -> None:
    secret = tmp_path / "ad-password"
    secret.write_bytes(b"\xff\xfe\x00\xd8")  # UTF-16 LE BOM, then a lone surrogate
    with folder_config.open("a", encoding="utf-8") as handle:
        handle.write(
            '\n[agents.ad]\ntype = "active-directory"\n[agents.ad.settings]\nhost = "127.0.0.1"\n'
            'bind_dn = "CN=svc,DC=example"\npassword = { file = "ad-password" }\nbase_dns = ["DC=example"]\n'
            '\n[run_profiles."AD Import"]\nsteps = [{ type = "full-import", agent = "ad" }]\n'
        )
    done = _run([MVSYNC, "run", "AD Import", "-c", str(folder_config)], lane_env, tmp_path)
    _no_traceback(done)
    assert done.returncode == 2, done.stderr
    message = " ".join(done.stderr.split())
    assert "agents.ad.settings.password: secret file" in message and str(secret) in message
    assert "cannot be decoded" in message
