"""``mvsync bench ...``: benchmarks that print one JSON object each.

Each benchmark lives in ``connector.bench.<name>`` and exposes ``run(**options) -> dict``; the
command here only parses options and prints the result, so benchmarks stay importable for tests.
"""

from __future__ import annotations

import importlib

import typer

bench_app = typer.Typer(help="Benchmarks (each prints one JSON object).", no_args_is_help=True)

# Benchmark modules register their own command on bench_app: connector.bench.<name>.register(bench_app)
_BENCHMARKS = ("sync", "emulator", "thumbnails", "import_", "import_ews", "export_ad", "e2e", "resilience", "ui")


def register(app: typer.Typer) -> None:
    for name in _BENCHMARKS:
        try:
            module = importlib.import_module(f"connector.bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"connector.bench.{name}":
                raise
            continue
        module.register(bench_app)
    app.add_typer(bench_app, name="bench")
