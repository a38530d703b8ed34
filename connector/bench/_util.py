"""Helpers shared by the benchmarks."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from connector.config import ConfigError


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far, in MB; None where no source exists.

    POSIX: ``getrusage`` (``ru_maxrss`` is KiB on Linux, bytes on macOS). Windows has no
    ``resource`` module: psutil's peak working set (``peak_wset``, from GetProcessMemoryInfo) is the
    same figure there.
    """
    if sys.platform == "win32":
        return _peak_rss_psutil()
    try:
        import resource
    except ImportError:  # a Python built without it
        return _peak_rss_psutil()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _peak_rss_psutil() -> float | None:
    try:
        import psutil
    except ImportError:
        return None
    peak = getattr(psutil.Process().memory_info(), "peak_wset", None)  # Windows only
    return None if peak is None else round(float(peak) / (1024 * 1024), 1)


class ServerDidNotStart(ConfigError):
    """A benchmark's server child ended before saying where it serves (exit code 2, not a traceback)."""


def server_info(proc: subprocess.Popen[str], what: str) -> dict[str, Any]:
    """The JSON line a server child prints once it serves (its stdout), or why there is none.

    The child's stderr is the benchmark's, so its own message (a bad option, a port in use) is
    already on the screen; this says which server it was and that the benchmark cannot go on.
    """
    assert proc.stdout is not None
    line = proc.stdout.readline()
    info: dict[str, Any] = json.loads(line) if line.strip() else {}
    if not info or {"status", "exit_code"} <= info.keys():  # nothing, or its --json failure object
        try:
            code = proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # it closed its stdout but hangs: it will not serve either
            proc.kill()
            code = proc.wait()
        msg = f"{what} did not start (it ended with exit code {code}; its message is above)"
        raise ServerDidNotStart(msg)
    return info


def stop_child(proc: subprocess.Popen[str]) -> None:
    """End a server child that serves until its stdin closes: close it, wait, kill if it hangs."""
    if proc.stdin is not None and not proc.stdin.closed:
        proc.stdin.close()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def step_metrics(connector_metrics: dict[str, Any], counters: dict[str, Any]) -> dict[str, Any]:
    """A step's figures: the connector's client figures, plus the counters it sent through the engine
    (``Count`` items, recorded in run history as ``connector.NAME``) under their own names."""
    counted = {
        name.removeprefix("connector."): value for name, value in counters.items() if name.startswith("connector.")
    }
    return {**connector_metrics, **counted}
