"""``mvsync demo``: the README's first command (the logic lives in ``connector.demo``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from connector.cli._common import EXIT_STOPPED, JsonOption, console, err_console, handle_errors, print_json


def _counts(counters: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in counters.items() if k != "threshold_count") or "-"


def _print_report(report: dict[str, Any]) -> None:
    for key, title in (("full_cycle", "Full Cycle (empty store)"), ("delta_cycle", "Delta Cycle (nothing changed)")):
        run = report[key]
        table = Table(title=f"{title}: {run['status']} in {run['seconds']:.1f} s (run {run['run_id']})")
        for column in ("agent", "step", "status", "seconds", "counts"):
            table.add_column(column, justify="right" if column == "seconds" else "left")
        for step in run["steps"]:
            table.add_row(
                step["agent"], step["step"], step["status"], f"{step['seconds']:.2f}", _counts(step["counters"])
            )
        console.print(table)
    console.print(
        f"\n[bold]{report['photos_exported']}[/] thumbnails (96x96 JPEG, <= 10 KB) exported to AD; "
        f"the delta cycle did [bold]{report['delta_cycle']['work_done']}[/] changes and "
        f"{report['delta_exports']} exports. Total {report['seconds']:.1f} s.",
        highlight=False,
    )
    console.print(
        f"Tenant: {report['tenant']['users']} emulated users, {report['tenant']['photos']} with photos "
        f"({report['tenant']['note']}). Graph cannot serve the photos of the "
        f"{report['exchange_server']['mailboxes']} users with an on-premises mailbox (exo imports them "
        "with EXOMailboxLocation = on-premises, a known state, not an error); the exs agent reads their "
        f"{report['exchange_server']['photos']} photos from Exchange Server over EWS instead.",
        highlight=False,
    )
    console.print(f"AD: {report['ad']['note']}", highlight=False)
    hr = report["hr_folder"]
    console.print(
        f"HR folder {hr['path']}: fallback photos for {', '.join(hr['fallback']) or 'nobody'}; "
        f"{', '.join(hr['shadowed']) or 'nobody'} also has an Exchange Online photo, which wins (precedence).",
        highlight=False,
    )
    outputs = Table(title="Outputs", show_header=False)
    outputs.add_row("configuration", report["config"])
    outputs.add_row("store (SQLite)", report["store"])
    if report["ldif"]:
        outputs.add_row("AD changes (LDIF)", report["ldif"])
    outputs.add_row("AD", report["ad"]["where"])
    console.print(outputs)
    console.print("[bold]Try next:[/]")
    for line in report["try_next"]:
        console.print(f"  {line}", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    @app.command("demo")
    @handle_errors
    def demo(
        users: Annotated[int, typer.Option("--users", min=1, max=20_000, help="Users in the emulated tenant.")] = 200,
        data_dir: Annotated[
            Path,
            typer.Option("--data-dir", help="Folder for everything the demo makes (emptied first if a demo made it)."),
        ] = Path("mvsync-demo"),
        json_out: JsonOption = False,
    ) -> None:
        """The photo sync end to end with no tenant and no AD: emulated Exchange Online -> AD (LDIF, or AD_*)."""
        from connector.demo import run_demo

        def say(message: str) -> None:
            if not json_out:
                err_console.print(f"[dim]demo:[/] {message}", highlight=False)

        report = run_demo(users, data_dir, say=say)
        if json_out:
            print_json(report)
        else:
            _print_report(report)
        if report["status"] != "success":
            raise typer.Exit(EXIT_STOPPED)
