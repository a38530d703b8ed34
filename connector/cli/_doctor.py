"""``mvsync doctor [-c CONFIG] [--json] [--no-connect] [--no-store]``: store integrity and configuration.

Exit codes: 0 nothing wrong (warnings allowed), 6 (``connector.doctor.EXIT_PROBLEMS``) a check
found an error, 2 the configuration cannot be loaded at all. The checks are described in
``connector/doctor.py``.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from connector.cli._common import DEFAULT_CONFIG, ConfigOption, JsonOption, console, handle_errors, print_json


def register(app: typer.Typer) -> None:
    """Add ``mvsync doctor`` to ``app``."""

    @app.command()
    @handle_errors
    def doctor(
        config: ConfigOption = DEFAULT_CONFIG,
        json_out: JsonOption = False,
        connect: Annotated[
            bool,
            typer.Option("--connect/--no-connect", help="Contact each agent's directory and token cache."),
        ] = True,
        store: Annotated[bool, typer.Option("--store/--no-store", help="Check the store's integrity.")] = True,
    ) -> None:
        """Check the store's integrity and the configuration. Exit 0 when all is well, 6 when not."""
        from connector.config import load_config
        from connector.doctor import run_doctor

        report = run_doctor(load_config(config), store=store, connect=connect)
        if json_out:
            print_json(report.as_dict())
        else:
            table = Table("", "area", "check", "finding", title="mvsync doctor")
            marks = {"ok": "[green]ok[/]", "warning": "[yellow]warn[/]", "error": "[bold red]FAIL[/]"}
            for f in report.findings:
                detail = f.message + "".join(f"\n  {e}" for e in f.examples)
                table.add_row(marks[f.severity], f.area, f.check, detail)
            console.print(table)
            console.print("[green]all checks passed[/]" if report.ok else "[bold red]problems found[/] (exit 6)")
        raise typer.Exit(report.exit_code)
