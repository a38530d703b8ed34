"""Command-line interface (typer + rich).

The app is built lazily so that modules the commands use (benchmarks, for example) can import
``connector.cli._common`` without building the whole command tree first.
"""

from __future__ import annotations

from typing import Any

__all__ = ["app", "main"]


def main() -> None:
    from connector.cli._app import main as _main

    _main()


def __getattr__(name: str) -> Any:
    if name == "app":
        from connector.cli._app import app

        return app
    raise AttributeError(name)
