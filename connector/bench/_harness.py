"""The test harness (``tests/harness``) for the benchmarks that start real servers or kill real runs.

Starting a throwaway Samba DC or PostgreSQL cluster, and killing ``mvsync run`` with SIGKILL at
chosen points, is test machinery: it needs root, apt, ``fcntl`` and POSIX signals, so it is not
part of the installed package (which has to run on Windows too) and lives under ``tests/``. The
benchmarks that need it (``export-ad``, ``resilience``, ``e2e --samba``, ``sync --postgres``) are
run by developers from a source checkout, where ``tests/`` sits beside ``connector/``; anywhere
else they stop with a message that says so, not with an ImportError.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType

from connector.config import ConfigError

__all__ = ["HarnessMissing", "harness"]

#: The source checkout this package was imported from (an editable install or ``PYTHONPATH``).
SOURCE_ROOT = Path(__file__).resolve().parents[2]


class HarnessMissing(ConfigError):
    """A benchmark needs ``tests/harness`` and this installation has no source checkout beside it."""


def harness(name: str, *, benchmark: str) -> ModuleType:
    """``tests.harness.<name>`` of the source checkout; ``HarnessMissing`` naming ``benchmark`` if absent."""
    module_file = SOURCE_ROOT / "tests" / "harness" / f"{name}.py"
    if not module_file.is_file():
        msg = (
            f"`mvsync bench {benchmark}` needs the test harness ({Path('tests', 'harness', name + '.py')}), "
            f"which is not part of the installed package and not found under {SOURCE_ROOT}: run it from a "
            "source checkout (git clone, then `pip install -e .` there)"
        )
        raise HarnessMissing(msg)
    if str(SOURCE_ROOT) not in sys.path:
        sys.path.insert(0, str(SOURCE_ROOT))
    return importlib.import_module(f"tests.harness.{name}")
