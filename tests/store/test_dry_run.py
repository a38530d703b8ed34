"""A dry run writes nothing, on both backends: every table's rows are identical afterwards.

(tests/engine checks the SQLite *file* byte for byte; on PostgreSQL the comparable promise is the
logical content. Sequences are the one thing PostgreSQL advances even in a rolled-back transaction,
so a dry run may use up ids, never rows.)
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
from sqlalchemy import select

from connector.engine import Engine
from connector.store import RunHistory, StoreCorruptError, damaged
from connector.store.tables import metadata
from tests.engine.conftest import World, add_users


def _content_digest(engine: Engine) -> str:
    digest = hashlib.sha256()
    with engine.store.read() as conn:
        for table in metadata.sorted_tables:
            order = list(table.primary_key.columns) or list(table.columns)
            for row in conn.execute(select(table).order_by(*order)):
                digest.update(repr((table.name, tuple(row))).encode())
    return digest.hexdigest()


def test_dry_run_leaves_every_table_unchanged(tmp_path: Path, store_url: str) -> None:
    world = World(tmp_path, store_url)
    try:
        add_users(world, 5)
        world.cycle()
        before = _content_digest(world.engine)
        world.exo["objects"]["exo-002"]["photo"] = b"new"
        world.ad["objects"]["guid-001"]["mail"] = "changed@example.test"
        changes: list[dict] = []
        for profile in ("full-import", "full-sync", "export"):
            result = world.run(profile, dry_run=True, emit=changes.append)
            assert not result.status.startswith("stopped"), result.as_dict()
        assert any(c.get("pending_import") == "update" for c in changes)
        assert any(c.get("export") == "update" for c in changes)
        assert _content_digest(world.engine) == before
    finally:
        world.close()


def test_a_dry_run_whose_end_cannot_be_written_names_no_run_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Found: a dry run on a damaged store logged "the end of run 5 not recorded in history", naming the
    id of a history row the dry run rolls back (its --json says run_id null). The store refuses the ends
    of its step and of the run here; the log names the dry run and its step by place, not by id."""
    world = World(tmp_path)
    try:
        add_users(world, 2)

        def refused(*_args: object) -> None:
            raise damaged(world.engine.store.where, "a page of run_history")

        monkeypatch.setattr(RunHistory, "finish_step", refused)
        monkeypatch.setattr(RunHistory, "finish_run", refused)
        with pytest.raises(StoreCorruptError), caplog.at_level(logging.WARNING, logger="mvsync.engine"):
            world.run("full-import", dry_run=True)
        assert "the end of the dry run not recorded in history" in caplog.text, caplog.text
        assert "the end of run" not in caplog.text
    finally:
        world.close()
