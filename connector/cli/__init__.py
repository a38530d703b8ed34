"""Command-line interface (typer + rich).

The app is built lazily: ``import connector.cli`` (the ``mvsync`` entry point) costs nothing until a
command runs. The CLI sits on top of the package: nothing else imports it (``connector.bench`` holds
the benchmarks' ``run`` functions, and ``mvsync bench`` their commands, in ``_bench``).
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
