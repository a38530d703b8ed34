"""``mvsync store backup PATH``: a consistent copy of the store, taken while runs go on;
``mvsync store restore BACKUP``: a backup put back in place of the store, the store it replaces kept;
``mvsync store upgrade``: the store's schema brought to this mvsync's version.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from connector.cli._common import (
    DEFAULT_CONFIG,
    ConfigOption,
    JsonOption,
    console,
    err_console,
    handle_errors,
    log,
    print_json,
    stop_signals_interrupt,
)
from connector.logging import logs_as_json


def register(app: typer.Typer) -> None:
    """Add ``mvsync store ...`` to ``app``."""
    store_app = typer.Typer(help="The store: backups and schema upgrades.")
    app.add_typer(store_app, name="store")

    @store_app.command("backup")
    @handle_errors
    def backup(
        path: Annotated[Path, typer.Argument(help="The backup file to write (must not exist yet).")],
        config: ConfigOption = DEFAULT_CONFIG,
        json_out: JsonOption = False,
    ) -> None:
        """Back up the SQLite store with SQLite's online backup API (consistent while a run is going).

        For a PostgreSQL store use pg_dump (README: Backup and restore).
        """
        from connector.config import load_config
        from connector.store import SqlStore

        # whatever the schema's version: a backup before an upgrade is the very time to take one
        store = SqlStore(
            load_config(config).store_url(), create=False, migrate_schema=False, reader="mvsync store backup"
        )
        replaced: list[str] = []
        removed: list[str] = []

        def say(note: str) -> None:
            """Say it at once (stderr: the scheduler's log keeps it; --json's stdout stays one document)."""
            if logs_as_json():  # --log-format json: stderr holds only JSON lines
                log.warning("%s", note)
            else:
                err_console.print(f"warning: {note}", highlight=False, soft_wrap=True)

        def say_replaced(note: str) -> None:
            replaced.append(note)
            say(note)

        def say_removed(partial: Path, note: str, gone: bool) -> None:
            if gone:
                removed.append(str(partial))
            say(note)

        try:
            # SIGTERM (systemd stopping it, a shutdown) ends it as Ctrl-C does, through the cleanup of
            # its .partial file: Python's default for SIGTERM left a store-sized one behind for good
            with stop_signals_interrupt():
                size = store.backup(path.expanduser().resolve(), on_stale=say_replaced, on_removed=say_removed)
        finally:
            store.close()
        if json_out:
            print_json(
                {
                    "store": store.where,
                    "backup": str(path),
                    "bytes": size,
                    "replaced_partial": bool(replaced),
                    "removed_partials": removed,
                }
            )
        else:
            console.print(f"backed up {store.where} to {path} ({size} bytes); check it with `mvsync doctor`")

    store_app.command("restore")(handle_errors(restore))

    @store_app.command("upgrade")
    @handle_errors
    def upgrade(config: ConfigOption = DEFAULT_CONFIG, json_out: JsonOption = False) -> None:
        """Bring the store's schema to this mvsync's version (a run does it too; read-only commands never do).

        On a store several machines use (PostgreSQL), upgrade mvsync on every one of them first: an
        older mvsync refuses a store newer than it understands.
        """
        from connector.config import load_config
        from connector.store import SqlStore

        store = SqlStore(
            load_config(config).store_url(), create=False, migrate_schema=False, reader="mvsync store upgrade"
        )
        try:
            before, after = store.upgrade()
        finally:
            store.close()
        if json_out:
            print_json({"store": store.where, "schema_version_before": before, "schema_version": after})
        elif before == after:
            console.print(f"the store {store.where} is at schema version {after}, this mvsync's: nothing to do")
        else:
            console.print(f"upgraded the store {store.where} from schema version {before} to {after}")


YesOption = Annotated[
    bool, typer.Option("--yes", "-y", help="Restore without asking (it never asks when stdin is not a terminal).")
]


def restore(
    backup: Annotated[Path, typer.Argument(help="The backup file to put back (`mvsync store backup` wrote it).")],
    config: ConfigOption = DEFAULT_CONFIG,
    json_out: JsonOption = False,
    yes: YesOption = False,
) -> None:
    """Put a backup back in place of the SQLite store; the store it replaces is kept beside it, renamed.

    Refused while a run, a backup or any process has the store open (exit 5), and for a backup that
    is not a sound mvsync store this mvsync can open (exit 2). Asks first at a terminal, unless
    --yes; a scheduler or script (stdin not a terminal) is never asked. For a PostgreSQL store use
    pg_restore (README: Backup and restore).
    """
    from connector.config import load_config
    from connector.store import SCHEMA_VERSION, check_backup, restore_store, sqlite_store_path

    store = sqlite_store_path(load_config(config).store_url())
    checked = check_backup(backup.expanduser().resolve(), store)
    if not yes and sys.stdin.isatty() and not _confirmed(checked.path, store):
        err_console.print("nothing was restored: the store was left as it was", highlight=False, soft_wrap=True)
        if json_out:
            print_json({"store": str(store), "backup": str(checked.path), "restored": False})
        return
    with stop_signals_interrupt():  # SIGTERM ends it as Ctrl-C does: through the cleanup of its copy
        done = restore_store(store, checked, now=time.time())
    upgrade = checked.schema_version < SCHEMA_VERSION
    if json_out:
        print_json(
            {
                "store": str(store),
                "backup": str(checked.path),
                "restored": True,
                "bytes": checked.size,
                "schema_version": checked.schema_version,
                "upgrade_needed": upgrade,
                "previous": str(done.previous) if done.previous else None,
                "previous_side_files": [str(side) for side in done.moved],
            }
        )
        return
    kept = (
        f"the store it replaced is kept as {done.previous} (undo: `mvsync store restore {done.previous}`)"
        if done.previous
        else "there was no store before"
    )
    console.print(f"restored {checked.path} to {store}; {kept}", highlight=False, soft_wrap=True)
    if upgrade:
        console.print(
            f"the backup has schema version {checked.schema_version}: the next `mvsync run` (or `mvsync store "
            f"upgrade`) upgrades it to {SCHEMA_VERSION}; read-only commands refuse it until then",
            highlight=False,
            soft_wrap=True,
        )
    console.print("check it with `mvsync doctor`, then run a full cycle once", highlight=False, soft_wrap=True)


def _confirmed(backup: Path, store: Path) -> bool:
    """Whether the person at the terminal says yes (on stderr: --json's stdout stays one document)."""
    return typer.confirm(
        f"Put {backup} in place of the store {store}? The store now there is kept beside it, renamed",
        default=False,
        err=True,
    )
