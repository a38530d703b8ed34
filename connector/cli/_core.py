"""The everyday commands: init, connectors, schema, run, history, cs, mv, pending-exports."""

from __future__ import annotations

import csv
import dataclasses
import io
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from connector.cli._common import (
    DEFAULT_CONFIG,
    EXIT_CONFIG,
    ConfigOption,
    JsonOption,
    command_path,
    console,
    err_console,
    exit_code_for_status,
    fail,
    handle_errors,
    interrupted_exit_code,
    print_json,
    stop_signals_interrupt,
)
from connector.config import ConfigError, MvsyncConfig, load_config
from connector.store import (
    ROW_ID_MAX,
    SCHEMA_VERSION,
    ClearedRuns,
    ConnectorSpace,
    CsObject,
    CsSearch,
    Metaverse,
    Person,
    RunHistory,
    RunRow,
    SqlStore,
    StoreMissingError,
    StoreVersionError,
    import_failures,
    loads,
    people,
    plain_value,
)
from connector.timestamps import local_time, utc_iso

__all__ = ["register"]

STARTER_CONFIG = """# mvsync configuration. Run `mvsync run "Full Import (Stage Only)"` and friends with -c this file.
# Secrets are never written here: use { env = "NAME" } or { file = "/path" } references.
# A complete photo-sync example with comments is in the project's samples/mvsync.toml.

[store]
url = "sqlite:///mvsync.db"          # or postgresql+psycopg://user@host/db (extra [postgres])

[metaverse]
schema = "person"                    # shipped schema; or a path to your own TOML
precedence = { photo = ["hr"] }      # ranked import precedence, highest first

[agents.hr]
type = "photo-folder"
settings = { path = "photos" }       # files named <account>[ anything].jpg
projection = [{ object_class = "photoFile" }]
import_flow = [
  { object_class = "photoFile", cs = "accountName", mv = "accountName" },
  { object_class = "photoFile", cs = "photo", mv = "photo" },
  { object_class = "photoFile", cs = "photoChecksum", mv = "folderPhotoChecksum" },
]

[run_profiles."Full Import (Stage Only)"]
steps = [{ type = "full-import", agent = "hr" }]

[run_profiles."Delta Import (Stage Only)"]
steps = [{ type = "delta-import", agent = "hr" }]

[run_profiles."Full Synchronization"]
steps = [{ type = "full-sync", agent = "hr" }]

[run_profiles."Delta Synchronization"]
steps = [{ type = "delta-sync", agent = "hr" }]
"""


def _config(path: Path) -> MvsyncConfig:
    return load_config(path)


def _store(config: MvsyncConfig) -> SqlStore:
    """The store for a read-only command: it never creates one where none is (a typo in store.url
    must not look like an empty history)."""
    return SqlStore(config.store_url(), create=False, reader=command_path())


#: How a dry run names itself to ``mvsync store restore`` (it holds the store open read-only).
_DRY_RUN = "a dry run (mvsync run --dry-run)"


def _dry_run_store(config: MvsyncConfig) -> SqlStore:
    """The store a dry run works on: the configured one, opened as it is, when it holds this mvsync's
    schema; an empty one in memory where no store is yet (no SQLite file, or a database without
    mvsync's tables), so that the dry run previews the first run and creates nothing.

    Why: a dry run opened the store as a run does, which creates it and upgrades its schema. Before
    the first run it created the store (its file, schema and lock folder), and on an empty
    PostgreSQL database its tables; on a store an older mvsync wrote it upgraded the schema, so the
    older mvsync could no longer use it. An older store is refused (:func:`_older_store`). Both the
    version read and the dry run's store leave a SQLite file's journal mode as it is (``wal=False``):
    switching a restored backup to WAL rewrote its header.
    """
    url = config.store_url()
    try:
        store = SqlStore(url, create=False, migrate_schema=False, wal=False, reader=_DRY_RUN)
    except StoreMissingError as exc:
        return _empty_preview(str(exc))
    try:
        found = store.schema_version()
    finally:
        store.close()
    if found == 0:
        return _empty_preview(f"{store.where} holds no mvsync store yet (a database without mvsync's tables)")
    if found < SCHEMA_VERSION:
        raise _older_store(config, store.where, found)
    return SqlStore(url, create=False, wal=False, reader=_DRY_RUN)  # this version's schema; a newer one is refused here


def _empty_preview(why: str) -> SqlStore:
    """An empty store in memory for a dry run where no store is yet, after saying so."""
    err_console.print(
        f"dry run: {why}. Previewing the first run against an empty store (nothing is created).",
        highlight=False,
        markup=False,
    )
    return SqlStore("sqlite://")


def _older_store(config: MvsyncConfig, where: str, found: int) -> StoreVersionError:
    """The refusal of a dry run on a store an older mvsync wrote (exit 4, as a store that cannot be used).

    Why not a preview: this mvsync reads columns and tables the older schema lacks, and upgrading
    inside the dry run's rolled-back transaction would hold the schema change's locks (PostgreSQL's
    ACCESS EXCLUSIVE on the altered tables) for the whole preview, stopping the sync server's runs.
    """
    return StoreVersionError(
        f"dry run: the store {where} has schema version {found}, older than this mvsync's ({SCHEMA_VERSION}), "
        "and a dry run does not upgrade it (it writes nothing; once upgraded, the older mvsync cannot use it). "
        "Preview with the mvsync that wrote it; or back the store up, upgrade it with "
        f"`mvsync store upgrade -c {config.path or DEFAULT_CONFIG}` once every machine that uses it runs this "
        "version, and preview again"
    )


def _known_agent(config: MvsyncConfig, agent: str) -> str:
    """``agent`` if the configuration has it; otherwise a configuration error (exit 2), never an
    empty answer that reads like "nothing pending" for a typo."""
    if agent not in config.agents:
        known = ", ".join(sorted(config.agents)) or "none"
        raise ConfigError(f"{config.path or 'config'}: unknown agent {agent!r} (configured agents: {known})")
    return agent


def _error_doc(e: Any, person: Person | None) -> dict[str, Any]:
    """A per-object error as history shows it, with who it is about and where that person is."""
    return {
        "anchor": e.anchor,
        "display": e.display or (person.display if person else None),
        "metaverse_id": person.mv_id if person else None,
        "stage": e.stage,
        "error_name": e.error_name,
        "detail": e.detail,
        "severity": e.severity,
    }


def _error_line(e: dict[str, Any]) -> str:
    """``name anchor (who): detail`` for the text outputs."""
    who = f" ({e['display']})" if e.get("display") else ""
    return f"{e['error_name']} {e['anchor'] or ''}{who}: {e['detail']}"


def _demo_hint(config: MvsyncConfig, result: Any) -> None:
    """After ``mvsync demo`` its emulator is gone: say so when that is why a step could not connect."""
    from connector.demo import emulator_down_hint

    for step in result.steps:
        hint = emulator_down_hint(config.base_dir, config.agents[step.agent].settings, step.status)
        if hint is not None:
            err_console.print(f"hint: {hint}", highlight=False, markup=False)
            return


def _short(value: Any) -> str:
    rendered = plain_value(value)
    if isinstance(rendered, dict) and "sha256" in rendered:
        return f"<binary {rendered['bytes']} bytes, sha256 {rendered['sha256'][:12]}…>"
    return str(rendered)


@handle_errors
def init(
    path: Annotated[
        Path, typer.Argument(help="Where to write the starter configuration (a folder: mvsync.toml in it).")
    ] = DEFAULT_CONFIG,
    force: Annotated[bool, typer.Option(help="Overwrite an existing file.")] = False,
) -> None:
    """Write a starter configuration (a photo folder feeding the metaverse)."""
    if path.is_dir():  # `mvsync init C:\mvsync`, as `git init DIR`: the folder to set up, not a file to replace
        path = path / DEFAULT_CONFIG.name
    if path.exists() and not force:
        raise fail(f"{path} already exists; pass --force to overwrite it", EXIT_CONFIG)
    photos = path.parent / "photos"  # the starter's folder, so that its first run finds what it names
    try:
        path.write_text(STARTER_CONFIG, encoding="utf-8")
        photos.mkdir(exist_ok=True)
    except OSError as exc:
        reason = f"cannot write {exc.filename or path}: {exc.strerror or exc}"
        raise fail(f"{reason}; choose a folder you can write to", EXIT_CONFIG) from None
    console.print(
        f"wrote {path}; next: put photos named <account>.jpg in {photos}, then run\n"
        f'  mvsync run "Full Import (Stage Only)" -c {path}',
        highlight=False,
        markup=False,
    )


@handle_errors
def connectors_list(json_out: JsonOption = False) -> None:
    """List the connector types this installation can run."""
    from connector.registry import available_connectors

    infos = available_connectors()
    if json_out:
        print_json([info.__dict__ for info in infos])
        return
    table = Table("type", "implementation", "distribution")
    for info in infos:
        table.add_row(info.name, info.target, f"{info.distribution} {info.version}")
    console.print(table)


@handle_errors
def schema(
    agent: Annotated[str, typer.Argument(help="Agent name from the configuration.")],
    config: ConfigOption = DEFAULT_CONFIG,
    json_out: JsonOption = False,
) -> None:
    """Show an agent's connector schema (object classes, anchors, attributes)."""
    from connector.engine import agent_schema

    result = agent_schema(_config(config), agent)
    if json_out:
        print_json(result.model_dump(mode="json"))
        return
    for oc in result.object_classes:
        table = Table("attribute", "type", "multi-valued", "access", title=f"{oc.name} (anchor {oc.anchor})")
        for attr in oc.attributes:
            # (a target that re-encodes what it is given: README, Writing a connector)
            access = attr.access.value + (", rendered by the target" if attr.rendered_by_target else "")
            table.add_row(attr.name, attr.type.value, "yes" if attr.multivalued else "", access)
        console.print(table)


def _interrupted(exc: KeyboardInterrupt, config: Path, dry_run: bool) -> typer.Exit:
    """The failure of a run that Ctrl-C or a stop signal ended, with where to read about it."""
    how = getattr(exc, "signal_name", "Ctrl-C")
    if dry_run:
        message = f"mvsync run: interrupted by {how}; a dry run writes nothing."
    else:
        message = (
            f"mvsync run: interrupted by {how}. The run is recorded as stopped-interrupted "
            f"(mvsync history list -c {config}); what its steps committed is kept, and a full import "
            "resumes from its last committed page on the next run if its agent keeps checkpoints (Exchange "
            "Online's does; the others start over)."
        )
    return fail(escape(message), interrupted_exit_code(exc), status="stopped-interrupted", cause=exc)


@handle_errors
def run(
    profile: Annotated[str, typer.Argument(help='Run profile name, e.g. "Delta Synchronization".')],
    config: ConfigOption = DEFAULT_CONFIG,
    agent: Annotated[
        list[str] | None, typer.Option("--agent", "-a", help="Only the steps of this agent (repeatable).")
    ] = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Compute everything, write nothing; print would-be changes as JSON lines "
            "(with --json: in the result's dry_run_changes).",
        ),
    ] = False,
    wait: Annotated[
        float,
        typer.Option("--wait", min=0.0, help="Seconds to wait for a lock held by another run (default: fail at once)."),
    ] = 0.0,
    allow_empty_import: Annotated[
        bool,
        typer.Option("--allow-empty-import", help="Let full imports that return nothing mark everything deleted."),
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Run a run profile. Exit code: 0 success, 3 completed with errors, 4 stopped (see README)."""
    from connector.cli._progress import RichProgress
    from connector.engine import SHOWN_ERRORS, Engine

    cfg = _config(config)
    engine = Engine(cfg, store=_dry_run_store(cfg) if dry_run else None)
    progress = None if json_out or dry_run or not sys.stderr.isatty() else RichProgress(err_console)

    #: With --json the would-be changes go into the one result document (``dry_run_changes``), not
    #: ahead of it as lines of their own: a script reads one document from ``--json`` (README).
    changes: list[dict[str, Any]] = []

    def emit(change: dict[str, Any]) -> None:
        if json_out:
            changes.append(change)
        else:
            print_json({"dry_run": True, **change})

    overrides = {"allow_empty_full_import": True} if allow_empty_import else None
    try:
        with stop_signals_interrupt():
            result = engine.run_profile(
                profile,
                dry_run=dry_run,
                agents=set(agent) if agent else None,
                progress=progress,
                emit=emit if dry_run else None,
                wait_s=wait,
                step_overrides=overrides,
            )
    except KeyboardInterrupt as exc:  # Ctrl-C, or a stop signal (Interrupted): recorded, not a traceback
        raise _interrupted(exc, config, dry_run) from None
    finally:
        if progress is not None:
            progress.close()
        engine.close()
    if json_out:
        print_json({**result.as_dict(), "dry_run_changes": changes} if dry_run else result.as_dict())
    else:
        out = err_console if dry_run else console
        table = Table(
            "#",
            "agent",
            "step",
            "status",
            "counters",
            "seconds",
            title=f"{profile}: {result.status}" + (" (dry run: nothing was written)" if dry_run else ""),
        )
        for i, step in enumerate(result.steps, 1):
            counters = ", ".join(f"{k}={v}" for k, v in sorted(step.counters.items()) if not isinstance(v, dict))
            table.add_row(str(i), step.agent, step.kind, step.status, counters, f"{step.seconds:.2f}")
        out.print(table)
        for step in result.steps:
            if step.message:
                out.print(f"[bold]{step.agent} {step.kind}:[/] {escape(step.message)}", highlight=False)
            for err in step.errors[:SHOWN_ERRORS]:
                out.print(f"  {_error_line(err.as_dict())}", highlight=False, markup=False)
            if step.error_count > SHOWN_ERRORS:
                where = (
                    "a dry run keeps no history"
                    if result.run_id is None
                    else f"mvsync history show {result.run_id} -c {config}"
                )
                out.print(f"  … {step.error_count - SHOWN_ERRORS} more: {where}")
    _demo_hint(cfg, result)
    raise typer.Exit(exit_code_for_status(result.status))


def _run_times(started_at: float, ended_at: float | None, seconds: float | None) -> dict[str, Any]:
    """A run's or step's times for ``--json``: ISO 8601 in UTC (``ended`` null while it runs, or when its
    end was never recorded), its duration in seconds, and both ends in epoch seconds (``started_at``,
    which ``history list --json`` always had, kept for the scripts that read it)."""
    return {
        "started_at": started_at,
        "ended_at": ended_at,
        "started": utc_iso(started_at),
        "ended": utc_iso(ended_at),
        "seconds": seconds,
    }


def _run_doc(run: RunRow, gone: dict[int, RunRow]) -> dict[str, Any]:
    """A run as ``history list`` and ``history show`` print it (keys of ``history list --json`` first)."""
    from connector.engine import shown_status, unrecorded_message

    unrecorded = run.id in gone and run.status == "in-progress"
    return {
        "run_id": run.id,
        "profile": run.profile,
        "status": shown_status(run.status, unrecorded),
        "dry_run": bool(run.dry_run),
        **_run_times(run.started_at, run.ended_at, run.seconds),
        "message": unrecorded_message(run) if unrecorded else run.message,
    }


def _row_id_bound(value: int) -> int:
    """Refuse a run id or ``--limit`` beyond the largest row id the store can hold (SQLite overflows).

    Why a callback rather than ``max=ROW_ID_MAX``: the bound is the store's, no choice of the user's,
    and as a range every ``--help`` showed it as ``[1<=x<=9223372036854775807]``; now only ``x>=1``.
    """
    if value > ROW_ID_MAX:
        raise typer.BadParameter(f"{value} is more than the store can hold (at most {ROW_ID_MAX})")
    return value


@handle_errors
def history_list(
    config: ConfigOption = DEFAULT_CONFIG,
    limit: Annotated[int, typer.Option(min=1, callback=_row_id_bound, help="How many runs, newest first.")] = 20,
    json_out: JsonOption = False,
) -> None:
    """Recent runs with their status (times in this machine's local time, with its UTC offset)."""
    from connector.engine import ENDED_UNRECORDED, ended_unrecorded

    store = _store(_config(config))
    gone = ended_unrecorded(store)
    with store.read() as conn:
        rows = [_run_doc(r, gone) for r in RunHistory(conn).recent_runs(limit)]
    if json_out:
        print_json(rows)
        return
    table = Table("run", "profile", "status", "started", "seconds")
    for r in rows:
        seconds = "-" if r["seconds"] is None else str(r["seconds"])
        status = f"{r['status']} (process gone)" if r["status"] == ENDED_UNRECORDED else r["status"]
        table.add_row(str(r["run_id"]), r["profile"], status, local_time(r["started_at"]), seconds)
    console.print(table)


@handle_errors
def history_clear(
    older_than: Annotated[
        float, typer.Option("--older-than", min=0.0, help="Days: delete finished runs that started before then.")
    ],
    config: ConfigOption = DEFAULT_CONFIG,
    json_out: JsonOption = False,
) -> None:
    """Delete old runs with their steps and per-object errors (MIM's "Clear Runs"). Schedule it.

    Runs still in progress, and the run holding each agent's latest step of each kind, are kept.
    """
    import time

    store = _store(_config(config))
    store.refuse_read_only("nothing was cleared")
    before = time.time() - older_than * 86_400
    cleared = ClearedRuns()
    while True:  # small transactions: runs go on meanwhile, and an interruption keeps what is done
        with store.transaction() as conn:
            batch = RunHistory(conn).clear_before(before)
        cleared += batch
        if not batch.runs:
            break
        if not json_out and cleared.runs % 1000 < batch.runs:
            err_console.print(f"cleared {cleared.runs} runs so far ...", highlight=False)
    if json_out:
        print_json({"older_than_days": older_than, **dataclasses.asdict(cleared)})
        return
    console.print(
        f"cleared {cleared.runs} runs started more than {older_than:g} days ago "
        f"({cleared.steps} steps, {cleared.errors} per-object errors)",
        highlight=False,
    )


@handle_errors
def history_show(
    run_id: Annotated[int, typer.Argument(min=1, callback=_row_id_bound, help="Run id from `mvsync history list`.")],
    config: ConfigOption = DEFAULT_CONFIG,
    errors: Annotated[int, typer.Option(help="Per-object errors to show per step.")] = 50,
    json_out: JsonOption = False,
) -> None:
    """One run: its steps, counters and per-object errors (times in local time, with the UTC offset)."""
    from connector.engine import ended_unrecorded, shown_status

    store = _store(_config(config))
    gone = ended_unrecorded(store)
    with store.read() as conn:
        history = RunHistory(conn)
        run_row = history.run(run_id)
        if run_row is None:
            raise fail(f"no run {run_id} in the store (see `mvsync history list`)", EXIT_CONFIG)
        doc: dict[str, Any] = {**_run_doc(run_row, gone), "steps": []}
        for s in history.steps(run_id):
            errs = history.errors(s.id, errors)
            found = people(conn, s.agent, (e.anchor for e in errs))
            doc["steps"].append(
                {
                    "step_id": s.id,
                    "agent": s.agent,
                    "kind": s.kind,
                    "status": shown_status(s.status, run_id in gone),
                    "message": s.message,
                    **_run_times(s.started_at, s.ended_at, s.seconds),
                    "counters": loads(s.counters, "run_step", s.id, "counters"),
                    "error_count": history.error_count(s.id),
                    "errors": [_error_doc(e, found.get(e.anchor or "")) for e in errs],
                }
            )
    if json_out:
        print_json(doc)
        return
    _print_run(doc)


def _took(doc: dict[str, Any]) -> str:
    """``started TIME, ended TIME (N s)`` of a run or step document, in local time with its offset."""
    if doc["ended_at"] is not None:
        ended = f"ended {local_time(doc['ended_at'])} ({doc['seconds']} s)"
    else:
        ended = "still running" if doc["status"] == "in-progress" else "its end not recorded"
    return f"started {local_time(doc['started_at'])}, {ended}"


def _print_run(doc: dict[str, Any]) -> None:
    """``history show``'s text: the run, then each step with its counters and per-object errors."""
    console.print(f"[bold]run {doc['run_id']}[/] {escape(doc['profile'])}: {doc['status']}")
    console.print(f"  {_took(doc)}", highlight=False, markup=False)
    if doc["message"]:
        console.print(f"  {doc['message']}", highlight=False, markup=False)
    for s in doc["steps"]:
        console.print(f"\n[bold]{s['agent']} {s['kind']}[/]: {s['status']}", highlight=False)
        console.print(f"  {_took(s)}", highlight=False, markup=False)
        if s["message"]:
            console.print(f"  {s['message']}", highlight=False, markup=False)
        console.print("  " + ", ".join(f"{k}={v}" for k, v in sorted(s["counters"].items()) if not isinstance(v, dict)))
        for e in s["errors"]:
            console.print(f"  [{e['severity']}] {_error_line(e)}", highlight=False, markup=False)


def _cs_doc(row: CsObject) -> dict[str, Any]:
    def doc(text: str | None, column: str) -> Any:
        return {k: plain_value(v) for k, v in loads(text, "cs_object", row.id, column).items()} if text else None

    return {
        "id": row.id,
        "agent": row.agent,
        "object_class": row.object_class,
        "anchor": row.anchor,
        "dn": row.dn,
        "metaverse_id": row.mv_id,
        "hologram": doc(row.hologram, "hologram"),
        "pending_import": row.pending_type,
        "pending_import_state": doc(row.pending, "pending"),
        "pending_export": row.export_type,
        "pending_export_changes": doc(row.export_changes, "export_changes"),
        "unconfirmed_export": doc(row.unconfirmed, "unconfirmed"),
        # attributes whose exported value the target shows in its own rendering (re-encoded)
        "exports_shown_rendered": sorted(loads(row.renderings, "cs_object", row.id, "renderings"))
        if row.renderings
        else [],
        "export_error": loads(row.export_error, "cs_object", row.id, "export_error") if row.export_error else None,
        "sync_error": loads(row.sync_error, "cs_object", row.id, "sync_error") if row.sync_error else None,
        "import_error": loads(row.import_error, "cs_object", row.id, "import_error") if row.import_error else None,
    }


def _unstaged_doc(agent: str, e: Any) -> dict[str, Any]:
    """An object an import could not read, as a search result: named by the error, not staged."""
    return {
        "id": None,
        "agent": agent,
        "object_class": e.object_class,
        "anchor": e.anchor,
        "display": e.display,
        "dn": None,
        "metaverse_id": None,
        "in_connector_space": False,
        "pending_import": None,
        "pending_export": None,
        "import_error": {"name": e.error_name, "detail": e.detail, "run_id": e.run_id, "step_id": e.step_id},
    }


@handle_errors
def cs_search(
    agent: Annotated[str, typer.Argument()],
    config: ConfigOption = DEFAULT_CONFIG,
    anchor: Annotated[str | None, typer.Option(help="Anchor or DN substring.")] = None,
    pending_import: Annotated[bool, typer.Option(help="Only objects with a pending import.")] = False,
    pending_export: Annotated[bool, typer.Option(help="Only objects with a pending export.")] = False,
    disconnectors: Annotated[bool, typer.Option(help="Only objects joined to no metaverse object.")] = False,
    errors: Annotated[bool, typer.Option(help="Only objects with an export or sync error.")] = False,
    limit: Annotated[int, typer.Option(min=1, callback=_row_id_bound, help="How many objects at most.")] = 50,
    json_out: JsonOption = False,
) -> None:
    """Search an agent's connector space (MIM's CS search scopes)."""
    cfg = _config(config)
    _known_agent(cfg, agent)
    store = _store(cfg)
    scope = CsSearch(anchor, pending_import, pending_export, disconnectors, errors)
    with store.read() as conn:
        rows = ConnectorSpace(conn).search(agent, scope, limit)
        found = people(conn, agent, (r.anchor for r in rows))
        # objects the last import could not read: in history by anchor, not in the connector space
        failed = import_failures(conn, agent, limit=limit) if errors and not anchor else []
        docs = [{**_cs_doc(r), "display": found[r.anchor].display if r.anchor in found else None} for r in rows]
    docs += [_unstaged_doc(agent, e) for e in failed]
    if json_out:
        print_json(docs)
        return
    table = Table("id", "anchor", "person", "dn", "mv", "pending import", "pending export", "error")
    for d in docs:
        error = next((d[k]["name"] for k in ("export_error", "sync_error", "import_error") if d.get(k)), "")
        table.add_row(
            str(d["id"] or "not staged"),
            d["anchor"],
            d["display"] or "",
            d["dn"] or "",
            str(d["metaverse_id"] or ""),
            d["pending_import"] or "",
            d["pending_export"] or "",
            error,
        )
    console.print(table)


@handle_errors
def cs_show(
    agent: Annotated[str, typer.Argument()],
    anchor: Annotated[str, typer.Argument(help="The object's anchor.")],
    config: ConfigOption = DEFAULT_CONFIG,
    json_out: JsonOption = False,
) -> None:
    """One connector-space object: hologram, pending import and export, errors."""
    cfg = _config(config)
    _known_agent(cfg, agent)
    store = _store(cfg)
    with store.read() as conn:
        row = ConnectorSpace(conn).get(agent, anchor)
        failed = import_failures(conn, agent, anchor=anchor) if row is None else []
        person = people(conn, agent, [anchor]).get(anchor)
    if row is None and failed:
        doc = _unstaged_doc(agent, failed[0])
        if json_out:
            print_json(doc)
            return
        error = doc["import_error"]
        console.print(
            f"{agent} {anchor} ({doc['display'] or 'no name recorded'}) is not in the connector space: "
            f"the import could not read it.\nlast import error, run {error['run_id']}: "
            f"{error['name']}: {error['detail']}",
            highlight=False,
            markup=False,
        )
        return
    if row is None:
        raise fail(f"no object {anchor!r} in the connector space of {agent!r} (try `mvsync cs search {agent}`)")
    with store.faults():  # a damaged document names this store
        doc = {**_cs_doc(row), "display": person.display if person else None}
    if json_out:
        print_json(doc)
        return
    who = f" ({doc['display']})" if doc["display"] else ""
    console.print(
        f"[bold]{agent}[/] {row.object_class} {escape(anchor)}{escape(who)}  dn={row.dn}  metaverse={row.mv_id}",
        highlight=False,
    )
    for key in ("hologram", "pending_import_state", "pending_export_changes", "unconfirmed_export"):
        if doc[key]:
            table = Table("attribute", "value", title=key.replace("_", " "))
            for k, v in sorted(doc[key].items()):
                table.add_row(
                    k,
                    _short(v)
                    if not isinstance(v, dict)
                    else f"<binary {v['bytes']} bytes, sha256 {v['sha256'][:12]}…>",
                )
            console.print(table)
    for key in ("pending_import", "pending_export", "export_error", "sync_error", "import_error"):
        if doc[key]:
            console.print(f"{key.replace('_', ' ')}: {doc[key]}", highlight=False)


@handle_errors
def mv_search(
    text: Annotated[str, typer.Argument(help="Part of a name, mail, UPN or account name.")] = "",
    config: ConfigOption = DEFAULT_CONFIG,
    limit: Annotated[int, typer.Option(min=1, callback=_row_id_bound, help="How many persons at most.")] = 50,
    json_out: JsonOption = False,
) -> None:
    """Find persons by name, mail, UPN or account name."""
    store = _store(_config(config))
    with store.read() as conn:
        rows = Metaverse(conn).search(text, limit)
    with store.faults():  # a damaged document names this store
        docs = []
        for r in rows:
            attrs = loads(r.attributes, "mv_object", r.id, "attributes")
            docs.append(
                {
                    "id": r.id,
                    "type": r.object_type,
                    "displayName": r.display_name,
                    "accountName": attrs.get("accountName"),
                    "mail": attrs.get("mail"),
                    "has_photo": "photo" in attrs,
                }
            )
    if json_out:
        print_json(docs)
        return
    table = Table("id", "displayName", "accountName", "mail", "photo")
    for d in docs:
        table.add_row(
            str(d["id"]),
            d["displayName"] or "",
            d["accountName"] or "",
            d["mail"] or "",
            "yes" if d["has_photo"] else "",
        )
    console.print(table)


@handle_errors
def mv_show(
    ident: Annotated[str, typer.Argument(help="Metaverse id, or an account name / mail / UPN.")],
    config: ConfigOption = DEFAULT_CONFIG,
    json_out: JsonOption = False,
) -> None:
    """One metaverse object: every attribute with the agent and rule that contributed it, and its connectors."""
    store = _store(_config(config))
    with store.read() as conn:
        metaverse = Metaverse(conn)
        if ident.isdigit():
            row = metaverse.get(int(ident)) if int(ident) <= ROW_ID_MAX else None
        else:
            matches = metaverse.search(ident, limit=2)
            if len(matches) > 1:
                raise fail(f"{ident!r} matches several persons; use `mvsync mv search {ident}` and pass an id")
            row = matches[0] if matches else None
        if row is None:
            raise fail(f"no metaverse object {ident!r} (try `mvsync mv search`)")
        connectors = ConnectorSpace(conn).joined_to(row.id)
        attrs = loads(row.attributes, "mv_object", row.id, "attributes")
        lineage = loads(row.lineage, "mv_object", row.id, "lineage")
    doc: dict[str, Any] = {
        "id": row.id,
        "type": row.object_type,
        "attributes": {
            k: {
                "value": plain_value(v),
                "agent": lineage.get(k, [None, None])[0],
                "rule": lineage.get(k, [None, None])[1],
            }
            for k, v in sorted(attrs.items())
        },
        "connectors": [
            {"agent": c.agent, "anchor": c.anchor, "dn": c.dn, "pending_export": c.export_type} for c in connectors
        ],
    }
    if json_out:
        print_json(doc)
        return
    table = Table("attribute", "value", "agent", "rule", title=f"person {row.id}")
    for k, v in doc["attributes"].items():
        table.add_row(k, _short(attrs[k]), v["agent"] or "", v["rule"] or "")
    console.print(table)
    ctable = Table("agent", "anchor", "dn", "pending export", title="connectors")
    for c in doc["connectors"]:
        ctable.add_row(c["agent"], c["anchor"], c["dn"] or "", c["pending_export"] or "")
    console.print(ctable)


def _export_format(output_format: str | None, json_out: bool) -> str:
    """The format ``pending-exports`` prints in: ``--format`` checked first, whatever ``--json`` says.

    Why: ``--json`` used to win before the check, so ``--format xml --json`` printed ``[]`` (exit 0)
    and ``--format csv --json`` quietly printed JSON; a script must hear about the mistake (exit 2).
    ``--json`` is ``--format json``: with any other ``--format`` the two conflict.
    """
    if output_format is not None and output_format not in ("json", "csv", "table"):
        raise fail(f"--format must be json, csv or table, not {escape(repr(output_format))}", EXIT_CONFIG)
    if json_out and output_format not in (None, "json"):
        raise fail(
            f"--json and --format {escape(output_format)} conflict: --json is --format json; give one of them",
            EXIT_CONFIG,
        )
    return "json" if json_out else output_format or "table"


@handle_errors
def pending_exports(
    agent: Annotated[str, typer.Argument()],
    config: ConfigOption = DEFAULT_CONFIG,
    output_format: Annotated[
        str | None, typer.Option("--format", help="json (one list), csv, or table (the default).", show_default=False)
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """What the next export of AGENT will do (mvsync's csexport), with OMODT/AMODT columns."""
    fmt = _export_format(output_format, json_out)
    cfg = _config(config)
    _known_agent(cfg, agent)
    store = _store(cfg)
    with store.read() as conn:
        rows = list(ConnectorSpace(conn).all_pending_exports(agent))
    with store.faults():  # a damaged document names this store
        records = []
        for r in rows:
            changes = loads(r.export_changes, "cs_object", r.id, "export_changes") if r.export_changes else {}
            hologram = loads(r.hologram, "cs_object", r.id, "hologram") if r.hologram else {}
            error = loads(r.export_error, "cs_object", r.id, "export_error") if r.export_error else None
            if r.export_type == "delete":
                records.append(
                    {
                        "anchor": r.anchor,
                        "dn": r.dn,
                        "omodt": "delete",
                        "attribute": "",
                        "amodt": "",
                        "before": "",
                        "after": "",
                        "last_error": error["name"] if error else "",
                    }
                )
            for attr, value in sorted(changes.items()):
                records.append(
                    {
                        "anchor": r.anchor,
                        "dn": r.dn,
                        "omodt": r.export_type,
                        "attribute": attr,
                        "amodt": "delete" if value is None else ("add" if attr not in hologram else "replace"),
                        "before": _short(hologram.get(attr)) if attr in hologram else "",
                        "after": "" if value is None else _short(value),
                        "last_error": error["name"] if error else "",
                    }
                )
    if fmt == "json":
        print_json(records)  # one document: `[]` when nothing is pending, never nothing at all
    elif fmt == "csv":
        buf = io.StringIO()
        writer = csv.DictWriter(
            buf, fieldnames=["anchor", "dn", "omodt", "attribute", "amodt", "before", "after", "last_error"]
        )
        writer.writeheader()
        writer.writerows(records)
        sys.stdout.write(buf.getvalue())
    else:
        table = Table(
            "anchor",
            "dn",
            "OMODT",
            "attribute",
            "AMODT",
            "before",
            "after",
            "last error",
            title=f"{agent}: {len(rows)} pending exports",
        )
        for rec in records:
            table.add_row(
                *(
                    str(rec[k] or "")
                    for k in ("anchor", "dn", "omodt", "attribute", "amodt", "before", "after", "last_error")
                )
            )
        console.print(table)


def register(app: typer.Typer) -> None:
    """Add the everyday commands to ``app`` (each command is a function of this module)."""
    app.command()(init)
    connectors = typer.Typer(help="Connector types registered through the mvsync.connectors entry points.")
    app.add_typer(connectors, name="connectors")
    connectors.command("list")(connectors_list)
    app.command()(schema)
    app.command()(run)
    history = typer.Typer(help="Run history (MIM's operations view).")
    app.add_typer(history, name="history")
    history.command("list")(history_list)
    history.command("show")(history_show)
    history.command("clear")(history_clear)
    cs = typer.Typer(help="Connector-space objects of an agent.")
    app.add_typer(cs, name="cs")
    cs.command("search")(cs_search)
    cs.command("show")(cs_show)
    mv = typer.Typer(help="Metaverse objects, with lineage.")
    app.add_typer(mv, name="mv")
    mv.command("search")(mv_search)
    mv.command("show")(mv_show)
    app.command("pending-exports")(pending_exports)
