"""The console's queries on each store backend (SQLite and PostgreSQL): migration 2's indexes,
keyset search and the coverage counts, on a small store filled by the benchmark's bulk loader."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text

from connector.bench.ui import bench_config, fill_store
from connector.config import config_from_dict
from connector.store import SqlStore
from connector.web import create_app
from connector.web._queries import Console

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2.*")  # Starlette asks for httpx2, falls back to httpx
    from fastapi.testclient import TestClient

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


@pytest.mark.postgres
def test_a_store_that_stops_answering_is_a_503_page_and_the_console_recovers(
    tmp_path: Path, postgres_db: Callable[[], str]
) -> None:
    """A PostgreSQL restart under a running console: a page that names the store and says to reload,
    not a bare 500 with a traceback; the next request after the store is back is served."""
    url = postgres_db()
    config = config_from_dict(bench_config(url, tmp_path), base_dir=tmp_path)
    store = SqlStore(config.store_url())
    fill_store(store, 10)
    client = TestClient(create_app(config, store=store), base_url="http://127.0.0.1")
    database = make_url(url).database
    dba = create_engine(url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    try:
        assert client.get("/").status_code == 200
        with dba.connect() as conn:  # the store refuses connections, and the console's are cut
            conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
            cut = text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d")
            conn.execute(cut, {"d": database})
        down = client.get("/")
        assert down.status_code == 503 and "Store unavailable" in down.text
        assert f"cannot use the store postgresql+psycopg://{make_url(url).username}:***@" in down.text
        assert "reload this page once the store answers" in down.text and "Traceback" not in down.text
        assert make_url(url).password not in down.text
        photo = client.get("/photo/" + "a" * 64)
        assert photo.status_code == 503 and photo.headers["content-type"].startswith("text/plain")
        with dba.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
        assert client.get("/").status_code == 200
    finally:
        with dba.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
        dba.dispose()
        client.close()
        store.close()
