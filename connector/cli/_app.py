"""The ``mvsync`` command. Each area registers its commands from its own module."""

from __future__ import annotations

import importlib

import typer

from connector._version import __version__

app = typer.Typer(
    name="mvsync",
    help="MIM-style identity sync: connector spaces, a metaverse and run profiles, for user photos.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

# One module per area; each defines register(app). Order is the order of `mvsync --help`.
_COMMAND_MODULES = (
    "_core",  # init, connectors, schema, run, history, cs, mv, pending-exports
    "_auth",  # auth login / status
    "_photo",  # photo convert
    "_emulator",  # emulator serve
    "_demo",  # demo
    "_doctor",  # doctor
    "_ui",  # ui
    "_bench",  # bench ...
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"mvsync {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Show the version."
    ),
) -> None:
    """MIM-style identity sync for user photos: Exchange Online, Active Directory and photo folders."""


for _name in _COMMAND_MODULES:
    importlib.import_module(f"connector.cli.{_name}").register(app)


def main() -> None:
    app()
