"""The store on both backends (``store_url`` runs each test on SQLite and on a real PostgreSQL):
migrations, content-addressed blobs, large binary values, driver-level executemany, NUL-safe keys."""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import func, select, text, update

from connector.store import SCHEMA_VERSION, BatchInsert, BatchUpdate, SqlStore, StoreVersionError
from connector.store._migrations import current_version
from connector.store._sql import SQLITE_CACHE_KIB
from connector.store.tables import blob, cs_object, store_meta, transform_cache
from tests.conftest import require_or_skip
from tests.store._old_store import make_version_5


def test_fresh_store_is_migrated_to_the_current_version(store_url: str) -> None:
    store = SqlStore(store_url)
    try:
        with store.read() as conn:
            assert current_version(conn) == SCHEMA_VERSION
            assert conn.execute(select(func.count()).select_from(cs_object)).scalar_one() == 0
    finally:
        store.close()


def test_migration_rerun_is_idempotent(store_url: str) -> None:
    SqlStore(store_url).close()
    again = SqlStore(store_url)  # opening an up-to-date store changes nothing
    try:
        with again.read() as conn:
            rows = conn.execute(select(store_meta.c.key, store_meta.c.value).order_by(store_meta.c.key)).all()
        assert rows == [("run_locks_from", "1"), ("schema_version", str(SCHEMA_VERSION))]
    finally:
        again.close()


def test_a_version_5_store_gains_the_renderings_column_and_its_runs_hold_no_run_lock(store_url: str) -> None:
    """A store written before renderings were kept: migration 6 adds the column, keeping the rows;
    migration 7 records that the runs already in history held no run lock (an earlier mvsync's)."""
    store = SqlStore(store_url)
    make_version_5(store)
    with store.transaction() as conn:
        conn.execute(text("INSERT INTO cs_object (agent, object_class, anchor) VALUES ('exo', 'EXOUser', 'u1')"))
        conn.execute(
            text("INSERT INTO run_history (profile, status, dry_run, started_at) VALUES ('c', 'success', false, 1)")
        )
    store.close()
    again = SqlStore(store_url)
    try:
        with again.read() as conn:
            assert current_version(conn) == SCHEMA_VERSION == 7
            row = conn.execute(select(cs_object.c.anchor, cs_object.c.renderings)).one()
            runs_from = conn.execute(select(store_meta.c.value).where(store_meta.c.key == "run_locks_from")).scalar()
        assert tuple(row) == ("u1", None)
        assert runs_from == "2"
    finally:
        again.close()


def test_a_newer_store_is_refused(store_url: str) -> None:
    store = SqlStore(store_url)
    with store.transaction() as conn:
        conn.execute(
            update(store_meta).where(store_meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION + 1))
        )
    store.close()
    with pytest.raises(StoreVersionError, match="newer than this mvsync understands"):
        SqlStore(store_url)


def test_blobs_are_content_addressed(store_url: str) -> None:
    store = SqlStore(store_url)
    try:
        photo = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
        sha = hashlib.sha256(photo).hexdigest()
        with store.transaction() as conn:
            store.put_blobs(conn, {sha: photo})
        with store.transaction() as conn:  # a second agent holding the same photo adds nothing
            store.put_blobs(conn, {sha: photo, hashlib.sha256(b"other").hexdigest(): b"other"})
        with store.read() as conn:
            assert conn.execute(select(func.count()).select_from(blob)).scalar_one() == 2
            assert store.get_blobs(conn, [sha, sha]) == {sha: photo}
            assert conn.execute(select(blob.c.size).where(blob.c.sha256 == sha)).scalar_one() == len(photo)
        assert store.get_blob(sha) == photo
        assert store.get_blob("0" * 64) is None
    finally:
        store.close()


def test_large_binary_values_round_trip_in_bounded_queries(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many multi-megabyte values come back intact, fetched in queries that each stay under the budget."""
    from connector.store import _sql

    monkeypatch.setattr(_sql, "BLOB_QUERY_BYTES", 5 * 1024 * 1024)
    store = SqlStore(store_url)
    try:
        values = {}
        for i in range(6):
            data = hashlib.sha256(str(i).encode()).digest() * (2 * 1024 * 1024 // 32 + i)  # ~2 MiB each
            values[hashlib.sha256(data).hexdigest()] = data
        with store.transaction() as conn:
            store.put_blobs(conn, values)
        queries: list[int] = []
        with store.read() as conn:
            original = conn.execute

            def counting(statement, *args, **kwargs):  # type: ignore[no-untyped-def]
                if "blob.data" in str(statement):
                    queries.append(1)
                return original(statement, *args, **kwargs)

            monkeypatch.setattr(conn, "execute", counting)
            got = store.get_blobs(conn, list(values))
        assert got == values
        assert len(queries) >= 3  # 12 MiB in queries of at most 5 MiB (two values each)
    finally:
        store.close()


def test_batch_statements_reach_the_driver(store_url: str) -> None:
    """Batches reach the driver in its own style (one ``unnest`` statement on PostgreSQL, named
    ``executemany`` on sqlite3); values holding ``:`` are data, never placeholders."""
    store = SqlStore(store_url)
    try:
        rows = [
            {"agent": "a", "object_class": "user", "anchor": f"x{i}:y", "hologram": '{"k":"a:b"}', "updated_at": i}
            for i in range(250)
        ]
        with store.transaction() as conn:
            BatchInsert(cs_object, ("agent", "object_class", "anchor", "hologram", "updated_at")).run(conn, rows)
            x7 = conn.execute(select(cs_object.c.id).where(cs_object.c.anchor == "x7:y")).scalar_one()
            BatchUpdate(cs_object, ("dn",)).run(conn, [{"dn": "cn=x", "_id": x7}])
            BatchUpdate(cs_object, ("dn",)).run(conn, [])  # nothing to do
        with store.read() as conn:
            assert conn.execute(select(func.count()).select_from(cs_object)).scalar_one() == 250
            assert conn.execute(select(cs_object.c.dn).where(cs_object.c.anchor == "x7:y")).scalar_one() == "cn=x"
            assert conn.execute(text("SELECT hologram FROM cs_object WHERE anchor = 'x3:y'")).scalar_one() == (
                '{"k":"a:b"}'
            )
    finally:
        store.close()


def test_transform_cache_keys_may_hold_nul(store_url: str) -> None:
    """Encoded values start with NUL; PostgreSQL text cannot hold NUL, so the key type escapes it."""
    store = SqlStore(store_url)
    try:
        keys = ["\x00b:" + "ab" * 32 + ":10", "back\\slash\\0", "\x00s:\x00x\\"]
        with store.transaction() as conn:
            conn.execute(transform_cache.insert(), [{"transform": "t", "input": k, "output": "1"} for k in keys])
        with store.read() as conn:
            got = conn.execute(
                select(transform_cache.c.input)
                .where(transform_cache.c.input.in_(keys))
                .order_by(transform_cache.c.input)
            ).scalars()
            assert sorted(got) == sorted(keys)
    finally:
        store.close()


def test_rolled_back_transaction_leaves_nothing(store_url: str) -> None:
    store = SqlStore(store_url)
    try:
        with pytest.raises(RuntimeError), store.transaction() as conn:
            conn.execute(cs_object.insert().values(agent="a", object_class="u", anchor="1"))
            raise RuntimeError
        with store.read() as conn:
            assert conn.execute(select(func.count()).select_from(cs_object)).scalar_one() == 0
    finally:
        store.close()


def test_batches_keep_row_by_row_semantics(store_url: str) -> None:
    """PostgreSQL runs these as one ``unnest`` statement; the result must equal row-by-row execution."""
    store = SqlStore(store_url)
    try:
        with store.transaction() as conn:
            BatchInsert(cs_object, ("agent", "object_class", "anchor", "dn", "joined_at", "seen_step")).run(
                conn,
                [
                    {"agent": "a", "object_class": "u", "anchor": str(i), "dn": None, "joined_at": 5, "seen_step": i}
                    for i in range(4)
                ],
            )
            ids = dict(conn.execute(select(cs_object.c.anchor, cs_object.c.id)).all())
            # COALESCE over the row's own column, an all-NULL parameter, ints and floats mixed
            BatchUpdate(cs_object, ("joined_at", "dn", "updated_at"), keep_when_null=frozenset({"joined_at"})).run(
                conn,
                [
                    {"_id": ids["0"], "joined_at": None, "dn": None, "updated_at": 1},
                    {"_id": ids["1"], "joined_at": 7.5, "dn": None, "updated_at": 2.5},
                ],
            )
            # the same row twice: the later values win, as when executed one by one
            BatchUpdate(cs_object, ("dn",)).run(
                conn,
                [{"_id": ids["2"], "dn": "first"}, {"_id": ids["2"], "dn": "second"}, {"_id": ids["3"], "dn": "x"}],
            )
        with store.read() as conn:
            got = {
                r.anchor: (r.joined_at, r.dn, r.updated_at)
                for r in conn.execute(
                    select(cs_object.c.anchor, cs_object.c.joined_at, cs_object.c.dn, cs_object.c.updated_at)
                )
            }
        assert got == {
            "0": (5, None, 1),
            "1": (7.5, None, 2.5),
            "2": (5, "second", None),
            "3": (5, "x", None),
        }
    finally:
        store.close()


def test_batch_statements_are_built_from_the_table() -> None:
    """Array element types come from the column types, COALESCE keeps the stored value, NULLs are literal."""
    update = BatchUpdate(
        cs_object, ("dn", "joined_at"), nulls=("export_error",), keep_when_null=frozenset({"joined_at"})
    )
    assert update._postgres == (
        "UPDATE cs_object SET dn = v._p_dn, joined_at = COALESCE(v._p_joined_at, cs_object.joined_at), "
        "export_error = NULL FROM unnest(%(dn)b::TEXT[], %(joined_at)b::FLOAT[], %(_id)b::BIGINT[]) "
        "AS v(_p_dn, _p_joined_at, _p__id) WHERE cs_object.id = v._p__id"
    )
    assert update.sql("sqlite") == (
        "UPDATE cs_object SET dn = :dn, joined_at = COALESCE(:joined_at, joined_at), export_error = NULL "
        "WHERE id = :_id"
    )
    with pytest.raises(ValueError, match="value processing"):
        BatchInsert(transform_cache, ("transform", "input", "output"))  # NUL-escaped keys need SQLAlchemy


def test_growing_tables_get_fresh_planner_statistics(store_url: str) -> None:
    """On PostgreSQL, ANALYZE runs as a table doubles, so anchor lookups keep using the right index."""
    store = SqlStore(store_url)
    try:
        with store.transaction() as conn:
            BatchInsert(cs_object, ("agent", "object_class", "anchor")).run(
                conn, [{"agent": "a", "object_class": "u", "anchor": str(i)} for i in range(1500)]
            )
            store.note_inserts(conn, "cs_object", 1500)
        with pytest.raises(ValueError, match="unknown store table"):
            store.note_inserts(conn, "pg_class; DROP TABLE blob", 5000)
        if store.dialect == "postgresql":
            with store.read() as conn:
                tuples = conn.execute(text("SELECT reltuples FROM pg_class WHERE relname = 'cs_object'")).scalar_one()
            assert tuples == 1500
    finally:
        store.close()


def _sqlite_memory_used() -> Callable[[], int]:
    """SQLite's own count of the memory it holds (``sqlite3_memory_used``, every connection of the process),
    read from the library Python's sqlite3 module runs on; skipped where that library cannot be reached."""
    name = ctypes.util.find_library("sqlite3")
    if name is None:
        require_or_skip("no SQLite shared library to ask sqlite3_memory_used (a statically linked Python)")
    lib = ctypes.CDLL(name)
    lib.sqlite3_libversion.restype = ctypes.c_char_p
    lib.sqlite3_memory_used.restype = ctypes.c_int64
    if lib.sqlite3_libversion().decode() != sqlite3.sqlite_version:
        require_or_skip(f"{name} is not the SQLite Python's sqlite3 module runs on")
    return lambda: int(lib.sqlite3_memory_used())


def test_a_sqlite_store_caches_at_most_its_page_cache_of_what_it_wrote(tmp_path: Path) -> None:
    """Photos written once are not held in SQLite's page cache beyond ``SQLITE_CACHE_KIB``.

    Why: an import writes tens of MB of photos per page and never reads them back through the cache; with
    a 64 MB cache per connection SQLite's memory reached 76 MB in the 50,000-user benchmark, and glibc kept
    that heap for the rest of the run (the upper of its two peak-RSS modes). 48 MB of distinct blobs in
    one transaction must leave SQLite holding about the cache (plus its overhead), not the 48 MB.
    """
    memory_used = _sqlite_memory_used()
    store = SqlStore(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        before = memory_used()
        photos = [hashlib.sha256(str(i).encode()).digest() * 2048 for i in range(768)]  # 64 KiB each
        with store.transaction() as conn:
            store.put_blobs(conn, {hashlib.sha256(p).hexdigest(): p for p in photos})
        held = memory_used() - before
    finally:
        store.close()
    written = sum(len(p) for p in photos)
    assert written == 48 * 1024 * 1024
    assert held <= SQLITE_CACHE_KIB * 1024 + 8 * 1024 * 1024, f"SQLite holds {held:,} bytes after writing {written:,}"
