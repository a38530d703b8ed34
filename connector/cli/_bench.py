"""``mvsync bench ...``: benchmarks that print one JSON object each.

Each benchmark lives in ``connector.bench.<name>`` and exposes ``run(**options) -> dict``; the
commands here only parse options and print the result. The benchmarks stay a library (importable
for tests, no CLI in them), and the CLI depends on them, never the other way round.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.markup import escape

from connector.cli._common import exit_code_for_status, fail, handle_errors, print_json
from connector.config import ConfigError

__all__ = ["register"]

#: thumbnailPhoto's rangeUpper (``connector.agents.active_directory.PHOTO_MAX_BYTES``; not imported here,
#: which would load ldap3 for every command): a larger photo fails every write and measures nothing.
_AD_PHOTO_MAX_BYTES = 102_400

bench_app = typer.Typer(help="Benchmarks (each prints one JSON object).", no_args_is_help=True)

# Options that mean the same in every benchmark (each command sets its own default).
UsersOption = Annotated[int, typer.Option("--users", min=1, help="Users in the emulated tenant.")]
PhotoRatioOption = Annotated[
    float, typer.Option("--photo-ratio", min=0.0, max=1.0, help="Share of users (or mailboxes) with a photo.")
]
LatencyOption = Annotated[
    float, typer.Option("--latency-ms", min=0.0, help="Latency added to each request to the emulator.")
]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed of the tenant, its photos and faults.")]
OneJsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
AlwaysJsonOption = Annotated[bool, typer.Option("--json", help="Print JSON (always on).")]


def _report(result: dict[str, Any], json_out: bool) -> None:
    """One JSON line, or one ``key: value`` line per figure."""
    if json_out:
        sys.stdout.write(json.dumps(result) + "\n")
    else:
        for key, value in result.items():
            typer.echo(f"{key}: {value}")


@bench_app.command("sync")
@handle_errors  # a missing test harness (not a source checkout) is a message, not a traceback
def sync_command(
    objects: Annotated[int, typer.Option(help="People per agent.")] = 100_000,
    store: Annotated[
        str | None,
        typer.Option(help="Store URL (default: a temporary SQLite file). A server store is emptied first."),
    ] = None,
    postgres: Annotated[
        bool,
        typer.Option(
            "--postgres",
            help=(
                "Start a throwaway PostgreSQL on loopback (tests/harness/postgres_server.py, from a source "
                "checkout) and use it as the store."
            ),
        ),
    ] = False,
    json_out: AlwaysJsonOption = True,
) -> None:
    """Full and no-change delta synchronization throughput on synthetic agents."""
    from connector.bench import sync

    print_json(sync.run_on_postgres(objects) if postgres else sync.run(objects, store))


@bench_app.command("emulator")
@handle_errors
def emulator_command(
    seconds: Annotated[float, typer.Option("--seconds", min=0.1, help="How long the client drives load.")] = 5.0,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="Keep-alive connections.")] = 16,
    users: UsersOption = 1000,
    size: Annotated[str | None, typer.Option("--size", help="Photo size, e.g. 96x96 (default: the original).")] = None,
    json_out: OneJsonOption = False,
) -> None:
    """Photo requests/s the emulator serves (no latency, no throttling) to a separate client process."""
    from connector.bench import emulator
    from connector.emulator import HD_SIZES

    served = [f"{n}x{n}" for n in HD_SIZES]
    if size is not None and size not in served:  # else every request is a 404, measured as if photos
        raise ConfigError(f"--size: Graph serves {', '.join(served)}, not {size!r}")

    result = emulator.run(seconds=seconds, concurrency=concurrency, users=users, size=size)
    if json_out:
        print_json(result)
    else:
        typer.echo(
            f"{result['photo_requests_per_s']} photo requests/s "
            f"({result['responses']} in {result['elapsed_s']} s, {concurrency} connections)"
        )


@bench_app.command("thumbnails")
def thumbnails_command(
    images: Annotated[int, typer.Option(min=10, help="Distinct 648x648 source photos.")] = 200,
    passes: Annotated[int, typer.Option(min=1, help="Timed passes (the fastest is reported, and the median).")] = 5,
    json_out: AlwaysJsonOption = True,
) -> None:
    """Thumbnail pipeline throughput: 648x648 JPEG -> 96x96 JPEG of at most 10 KB, per CPU core."""
    from connector.bench import thumbnails

    print_json(thumbnails.run(images, passes))


@bench_app.command("import")
@handle_errors
def import_command(
    users: UsersOption = 10_000,
    photo_ratio: PhotoRatioOption = 0.5,
    latency_ms: LatencyOption = 100.0,
    seed: SeedOption = 1,
    page_size: Annotated[int, typer.Option("--page-size", min=1, help="Import page size.")] = 500,
    naive_seconds: Annotated[
        float, typer.Option("--naive-seconds", min=0.0, help="Time box of the naive client.")
    ] = 20.0,
    throttle: Annotated[
        str,
        typer.Option("--throttle", help="The emulator's throttling model (a name or a JSON object of limits)."),
    ] = "default",
    interrupt_after_pages: Annotated[
        int,
        typer.Option(
            "--interrupt-after-pages",
            min=0,
            help="Also measure a full import interrupted after N committed pages and the run that resumes it.",
        ),
    ] = 0,
    one_pause_bound: Annotated[
        bool,
        typer.Option(
            "--one-pause-bound",
            help="Also measure the warm run with one client-wide Retry-After pause after its first wave: "
            "the most a cold run that must meet the wall once can reach.",
        ),
    ] = False,
    json_out: OneJsonOption = False,
) -> None:
    """Full and no-change delta photo import against the Graph emulator, plus a naive baseline."""
    from connector.bench import import_

    result = import_.run(
        users,
        photo_ratio,
        latency_ms,
        seed,
        page_size,
        naive_seconds,
        throttle,
        interrupt_after_pages,
        one_pause_bound,
    )
    _report(result, json_out)


@bench_app.command("import-ews")
@handle_errors
def import_ews_command(
    mailboxes: Annotated[int, typer.Option("--mailboxes", min=1, help="On-premises mailboxes.")] = 2000,
    photo_ratio: PhotoRatioOption = 0.5,
    latency_ms: LatencyOption = 100.0,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, help="The agent's ceiling.")] = 16,
    ews_max_concurrency: Annotated[
        int, typer.Option("--ews-max-concurrency", min=2, help="The account's EWSMaxConcurrency.")
    ] = 27,
    seed: SeedOption = 1,
    budget_per_s: Annotated[
        float | None,
        typer.Option("--budget-per-s", help="The account's EWS budget (requests/s, burst 50): ErrorServerBusy."),
    ] = None,
    json_out: OneJsonOption = False,
) -> None:
    """Photos/s from Exchange Server's EWS (emulated, NTLM) through the engine, full and re-check delta."""
    from connector.bench import import_ews

    result = import_ews.run(mailboxes, photo_ratio, latency_ms, concurrency, ews_max_concurrency, seed, budget_per_s)
    _report(result, json_out)


@bench_app.command("export-ad")
@handle_errors  # a missing test harness (not a source checkout) is a message, not a traceback
def export_ad_command(
    users: int = typer.Option(2000, min=1, help="users to create and write"),
    photo_bytes: int = typer.Option(
        5000, min=1, max=_AD_PHOTO_MAX_BYTES, help="bytes per photo (a 96x96 JPEG is 3-6 KB; AD takes 102,400 at most)"
    ),
    batch: int = typer.Option(500, min=1, help="changes per export batch"),
    driver: str = typer.Option("engine", help="engine: through connector.engine.Engine; direct: the agent only"),
    keep: bool = typer.Option(False, help="leave a DC this run started running"),
    auth: str = typer.Option("simple", help="simple: the administrator's password; kerberos: a keytab account"),
    check_permissions: bool = typer.Option(
        True, "--check-permissions/--no-check-permissions", help="read write rights before writing"
    ),
    json_out: bool = typer.Option(True, "--json/--no-json", help="print one JSON object (the default)"),
) -> None:
    """Export thumbnailPhoto to a real AD DC (Samba started on loopback, or AD_*)."""
    from connector.bench import export_ad

    if driver not in ("engine", "direct"):
        raise typer.BadParameter("driver must be 'engine' or 'direct'")
    if auth not in ("simple", "kerberos"):
        raise typer.BadParameter("auth must be 'simple' or 'kerberos'")
    try:
        result = export_ad.run(
            users,
            photo_bytes,
            batch,
            "engine" if driver == "engine" else "direct",
            keep,
            "kerberos" if auth == "kerberos" else "simple",
            check_permissions,
        )
    except export_ad.BenchmarkStopped as exc:  # the DC went away, a step stopped: said, not a traceback
        raise fail(escape(str(exc)), exit_code_for_status(exc.status), status=exc.status) from None
    typer.echo(json.dumps(result) if json_out else json.dumps(result, indent=2))


@bench_app.command("e2e")
@handle_errors  # a missing test harness (not a source checkout) is a message, not a traceback
def e2e_command(
    users: UsersOption = 2200,
    photo_ratio: PhotoRatioOption = 0.5,
    latency_ms: LatencyOption = 100.0,
    seed: SeedOption = 1,
    samba: Annotated[bool, typer.Option("--samba", help="Export to the harness's Samba AD DC, not LDIF.")] = False,
    json_out: OneJsonOption = False,
) -> None:
    """Full cycle from an empty store to AD (LDIF, Samba, or AD_*), then a no-change delta cycle."""
    from connector.bench import e2e

    _report(e2e.run(users, photo_ratio, latency_ms, seed, samba), json_out)


@bench_app.command("resilience")
@handle_errors  # a missing test harness (not a source checkout) is a message, not a traceback
def resilience_command(
    trials: Annotated[int, typer.Option(help="kill -9 trials (phases import, sync, export in turn)")] = 20,
    seed: Annotated[int, typer.Option(help="seed of the kill points, tenant and faults")] = 1,
    samba: Annotated[bool, typer.Option(help="use the Samba AD harness when it can run")] = True,
    json_out: Annotated[bool, typer.Option("--json/--no-json", help="one JSON object (the default)")] = True,
) -> None:
    """Fault, crash and hostile-input suites against the emulator and Samba AD: the figures."""
    from connector.bench import resilience

    result = resilience.run(trials, seed, samba=samba)
    typer.echo(json.dumps(result) if json_out else json.dumps(result, indent=2))


@bench_app.command("ui")
def ui_command(
    persons: Annotated[int, typer.Option(min=1, help="Persons in the metaverse.")] = 100_000,
    requests: Annotated[int, typer.Option(min=1, help="Timed requests per page (after two warm-ups).")] = 20,
    store: Annotated[
        str | None, typer.Option(help="Store URL (default: a temporary SQLite file); must be empty.")
    ] = None,
    json_out: AlwaysJsonOption = True,
) -> None:
    """Time every console page (p50/p95/max ms) on a store of PERSONS persons."""
    from connector.bench import ui

    print_json(ui.run(persons, requests, store))


def register(app: typer.Typer) -> None:
    app.add_typer(bench_app, name="bench")
