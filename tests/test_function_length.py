"""The house rule that keeps the core readable: no function over 100 lines where the framework lives.

A function a reader cannot hold on one screen or two hides its steps behind comments; the engine,
the store, the SDK, the agents and the CLI keep theirs short enough to name each step. The emulator,
the benchmarks and the console are not held to it (their long functions are tables and scripts).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import connector

ROOT = Path(connector.__file__).parent
LIMIT = 100
PACKAGES = ("engine", "store", "sdk", "agents", "cli")


def _long_functions(package: str) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > LIMIT:
                    found.append(f"{path.relative_to(ROOT.parent)}:{node.lineno} {node.name} ({length} lines)")
    return found


@pytest.mark.parametrize("package", PACKAGES)
def test_no_function_is_longer_than_a_reader_can_hold(package: str) -> None:
    assert _long_functions(package) == []
