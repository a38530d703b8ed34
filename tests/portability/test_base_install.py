"""The base installation: ``pip install mvsync`` without extras runs every command that needs none.

Found: the CLI imported ``click`` itself, which typer stopped depending on (it has carried its own
copy of click since 0.26) and which only the ``web`` extra (uvicorn) brought along. So on a server
installed as ``pip install 'mvsync[postgres]'`` every command, ``mvsync --version`` included, ended
in a ``ModuleNotFoundError`` traceback; the suite, installed with every extra, never saw it.

This lane runs the real ``mvsync`` console script in a Python whose ``sitecustomize`` makes every
installed module unimportable that the base installation would not have: the modules of the
distributions outside the closure of mvsync's own requirements (extras and test tools left out).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.cli._configs import generated_pair

MVSYNC = str(Path(sys.executable).with_name("mvsync"))


def base_closure(root: str = "mvsync") -> set[str]:
    """The distributions ``pip install ROOT`` installs: its requirements without extras, recursively
    (with the extras a requirement asks of its own dependency, as ``psycopg[binary]`` would)."""
    seen: set[str] = set()
    todo: list[tuple[str, frozenset[str]]] = [(root, frozenset())]
    while todo:
        name, extras = todo.pop()
        key = canonicalize_name(name)
        if key in seen and not extras:
            continue
        seen.add(key)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue
        for spec in requires:
            req = Requirement(spec)
            wanted = req.marker is None or any(req.marker.evaluate({"extra": e}) for e in ("", *extras))
            if wanted:
                todo.append((req.name, frozenset(req.extras)))
    return seen


def extra_only_modules() -> list[str]:
    """Top-level modules installed here that only distributions outside the base closure provide."""
    base = base_closure()
    return sorted(
        module
        for module, dists in packages_distributions().items()
        if module.isidentifier() and not any(canonicalize_name(d) in base for d in dists)
    )


def lane_env(tmp_path: Path) -> dict[str, str]:
    shim = tmp_path / "base-install"
    shim.mkdir()
    blocked = extra_only_modules()
    assert "click" in blocked and "uvicorn" in blocked and "pytest" in blocked  # the lane blocks something
    (shim / "sitecustomize.py").write_text(
        textwrap.dedent(
            f"""
            # Written by tests/portability/test_base_install.py: only what `pip install mvsync` installs.
            import importlib.abc
            import sys

            _BLOCKED = frozenset({blocked!r})


            class _ExtraBlocker(importlib.abc.MetaPathFinder):
                def find_spec(self, name, path=None, target=None):
                    if name.split(".")[0] in _BLOCKED:
                        raise ModuleNotFoundError(f"No module named {{name!r}} (not in the base install)", name=name)
                    return None


            sys.meta_path.insert(0, _ExtraBlocker())
            """
        ),
        encoding="utf-8",
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AD_", "MVSYNC_"))}
    return {**env, "PYTHONPATH": str(shim), "COLUMNS": "200"}


def mvsync(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MVSYNC, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def test_the_commands_that_need_no_extra_work_without_any(tmp_path: Path) -> None:
    env = lane_env(tmp_path)
    version = mvsync(env, "--version")
    assert version.returncode == 0 and version.stdout.startswith("mvsync "), version.stderr
    config = tmp_path / "mvsync.toml"
    config.write_text(generated_pair(5), encoding="utf-8")
    run = mvsync(env, "run", "cycle", "-c", str(config), "--json")
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["status"] == "success"
    history = mvsync(env, "history", "list", "-c", str(config), "--json")
    assert history.returncode == 0 and json.loads(history.stdout)[0]["status"] == "success"
    usage = mvsync(env, "run", "cycle", "--bogus", "-c", str(config), "--json")
    assert usage.returncode == 2 and json.loads(usage.stdout)["exit_code"] == 2
    for result in (version, run, history, usage):
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["demo", "--data-dir", "DIR"], "mvsync[emulator]"),
        (["ui", "-c", "CONFIG"], "mvsync[web]"),
        # its emulator child says so, with --json as a failure object the benchmark once read as its address
        (["bench", "import", "--users", "10"], "mvsync[emulator]"),
    ],
)
def test_a_command_that_needs_an_extra_names_it(tmp_path: Path, args: list[str], extra: str) -> None:
    env = lane_env(tmp_path)
    config = tmp_path / "mvsync.toml"
    config.write_text(generated_pair(2), encoding="utf-8")
    args = [str(tmp_path / "demo") if a == "DIR" else str(config) if a == "CONFIG" else a for a in args]
    result = mvsync(env, *args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"pip install '{extra}'" in result.stderr
