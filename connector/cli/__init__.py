"""Command-line interface (typer + rich)."""

from connector.cli._app import app, main

__all__ = ["app", "main"]
