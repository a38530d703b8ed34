"""``mvsync emulator serve``: run the Graph + Entra ID emulator until interrupted.

With ``--json`` the first stdout line is one JSON object with the connection facts (authority,
graph_url, ca_cert, tenant_id, client_id, client_secret, refresh_token, admin_url, ...), so a script
or the demo can start it as a subprocess and read its credentials. Without ``--json`` secrets are
not printed.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Annotated

import typer

from connector.cli._common import EXIT_CONFIG, JsonOption, console, fail, handle_errors, print_json

emulator_app = typer.Typer(
    help="The Microsoft Graph + Entra ID emulator (tests, benchmarks, demo).", no_args_is_help=True
)


@emulator_app.command("serve")
@handle_errors
def serve(
    users: Annotated[int, typer.Option("--users", min=1, help="Users in the tenant.")] = 200,
    photo_ratio: Annotated[
        float, typer.Option("--photo-ratio", min=0.0, max=1.0, help="Share of users with a photo.")
    ] = 0.5,
    seed: Annotated[int, typer.Option("--seed", help="Seed for users, photos and faults.")] = 1,
    latency_ms: Annotated[float, typer.Option("--latency-ms", min=0.0, help="Added latency per Graph request.")] = 0.0,
    faults: Annotated[str, typer.Option("--faults", help="none, light, resilience, storm, or a JSON object.")] = "none",
    throttle: Annotated[
        str,
        typer.Option(
            "--throttle",
            help="Throttling model: default, outlook-per-app, in-flight-12, rate-150, or a JSON object of limits "
            '(e.g. \'{"base": "default", "app_concurrency": 8}\').',
        ),
    ] = "default",
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1 (0 picks a free one).")] = 0,
    warm_sizes: Annotated[
        str,
        typer.Option(
            "--warm-sizes",
            help="Comma-separated HD sizes (e.g. 648) to render for every photo before serving, as the "
            "benchmarks do: otherwise the first downloads wait for rendering, which Graph's stored photos never do.",
        ),
    ] = "",
    json_out: JsonOption = False,
) -> None:
    """Serve Graph v1.0 and the identity platform on https://127.0.0.1:PORT until Ctrl-C."""
    from connector.emulator import EmulatorConfig, GraphEmulator, parse_faults, parse_throttle

    try:
        profile = parse_faults(faults)
        limits = parse_throttle(throttle)
        config = EmulatorConfig(
            users=users,
            photo_ratio=photo_ratio,
            seed=seed,
            latency_ms=latency_ms,
            faults=profile,
            port=port,
            warm_sizes=tuple(_warm_sizes(warm_sizes)),
            **limits,
        )
    except ValueError as exc:
        raise fail(str(exc), EXIT_CONFIG) from None
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    emulator = GraphEmulator(config)
    try:
        emulator.start()
    except OSError as exc:
        raise fail(f"cannot listen on 127.0.0.1:{port}: {exc}", EXIT_CONFIG) from None
    try:
        info = emulator.info
        if json_out:
            print_json({**info, "throttle": limits})
        else:
            console.print(
                f"Graph emulator: {info['graph_url']}  ({users} users, faults={profile.name}, throttle={throttle})"
            )
            console.print(f"  authority {info['authority']}")
            console.print(f"  CA cert   {info['ca_cert']}")
            console.print(f"  admin     {info['admin_url']}")
            console.print("  (credentials: run with --json)  Ctrl-C to stop.")
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
        signal.signal(signal.SIGTERM, previous)


def register(app: typer.Typer) -> None:
    """Add ``mvsync emulator ...``."""
    app.add_typer(emulator_app, name="emulator")


def _warm_sizes(text: str) -> list[int]:
    from connector.emulator import HD_SIZES

    sizes = [size.strip() for size in text.split(",") if size.strip()]
    bad = [size for size in sizes if not size.isdigit() or int(size) not in HD_SIZES]
    if bad:
        listed = ", ".join(str(size) for size in HD_SIZES)
        raise ValueError(f"--warm-sizes takes Graph's HD photo sizes ({listed}), comma-separated; not {', '.join(bad)}")
    return [int(size) for size in sizes]
