"""A store as an older mvsync left it, for the tests of what opens it (migrations, dry runs)."""

from __future__ import annotations

from sqlalchemy import text, update

from connector.store import SqlStore
from connector.store.tables import store_meta


def make_version_5(store: SqlStore) -> None:
    """Make ``store`` one that an mvsync of schema version 5 wrote: before ``cs_object.renderings``."""
    with store.transaction() as conn:
        conn.execute(text("ALTER TABLE cs_object DROP COLUMN renderings"))
        conn.execute(update(store_meta).where(store_meta.c.key == "schema_version").values(value="5"))
