"""Command-line interface (typer + rich).

The app is built lazily so that the modules that add commands of their own (the benchmarks, each a
``register(bench_app)``) can use the commands' helpers, ``handle_errors`` and ``print_json``, without
building the whole command tree first.
"""

from __future__ import annotations

from typing import Any

from connector.cli._common import handle_errors, print_json

__all__ = ["app", "handle_errors", "main", "print_json"]


def main() -> None:
    from connector.cli._app import main as _main

    _main()


def __getattr__(name: str) -> Any:
    if name == "app":
        from connector.cli._app import app

        return app
    raise AttributeError(name)
