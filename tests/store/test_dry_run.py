"""A dry run writes nothing, on both backends: every table's rows are identical afterwards.

(tests/engine checks the SQLite *file* byte for byte; on PostgreSQL the comparable promise is the
logical content. Sequences are the one thing PostgreSQL advances even in a rolled-back transaction,
so a dry run may use up ids, never rows.)
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from sqlalchemy import select

from connector.engine import Engine
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
