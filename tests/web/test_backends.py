"""The console's queries on each store backend (SQLite and PostgreSQL): migration 2's indexes,
keyset search and the coverage counts, on a small store filled by the benchmark's bulk loader."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import text

from connector.bench.ui import bench_config, fill_store
from connector.config import config_from_dict
from connector.store import SqlStore
from connector.web._queries import Console

pytestmark = pytest.mark.slow


def test_search_and_coverage_on_each_backend(store_url: str, tmp_path: Path) -> None:
    config = config_from_dict(bench_config(store_url, tmp_path), base_dir=tmp_path)
    store = SqlStore(config.store_url())
    try:
        sample = fill_store(store, 300)
        console = Console(config, store)
        with store.read() as conn:
            if store.dialect == "postgresql":
                names = set(conn.execute(text("SELECT indexname FROM pg_indexes")).scalars())
            else:
                names = set(conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'index'")).scalars())
            assert {"ix_mv_search", "ix_cs_photo", "ix_cs_error", "ix_cs_disconnected"} <= names
            found = console.search(conn, sample["mail"].upper())
            assert [h.id for h in found.hits] == [sample["mv_id"]]
            seen, after = [], None
            while True:
                page = console.search(conn, "", after=after, limit=40)
                seen += [h.id for h in page.hits]
                if page.next_after is None:
                    break
                after = page.next_after
            assert sorted(seen) == list(range(1, 301))
            agents, kinds, persons = console.coverage(conn)
            by = {a.agent: a for a in agents}
            assert persons == 300
            assert by["exo"].with_photo == sum(1 for i in range(1, 301) if i % 10 < 7)
            assert by["ad"].with_photo == 150 and by["ad"].joined == 300
            assert by["ad"].differing["thumbnailPhoto"] == (
                sum(1 for i in range(1, 301) if i % 20 == 1 and (i % 10 < 7 or i % 5 < 2)),
                sum(1 for i in range(1, 301) if i % 20 == 1 and not (i % 10 < 7 or i % 5 < 2)),
            )
            assert ("ad", "sync", "ambiguous-join", 1) in kinds
            assert console.thresholds(conn, "ad")[0][1]["connector_space"] == 300
    finally:
        store.close()
