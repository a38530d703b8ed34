"""A page of photos is held once while it is staged: the page's blobs are the entries' own bytes.

A connector hands each photo over as ``HashedBytes`` (it carries its SHA-256, the blob's address).
The engine gathers a page's binaries by hash (``_Writes.blobs``) until the page is written, beside the
page's entries. It gathered ``bytes(value)``, which for a subclass of ``bytes`` is a copy: every photo
of the page was held twice, on the engine's thread, until the page was committed.
"""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.sdk import HashedBytes
from connector.store import SqlStore
from tests.engine.conftest import World, with_profiles

PHOTOS = 8
#: Large next to what the engine allocates besides them in a step (a few hundred KB): 16 MB in all.
SIZE = 2 << 20


@pytest.fixture
def staged(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[int, dict[str, bytes]]]]:
    """Each non-empty ``put_blobs`` call of the step: the bytes traced then, and the blobs it got."""
    calls: list[tuple[int, dict[str, bytes]]] = []
    put = SqlStore.put_blobs

    def measured(self: SqlStore, conn: Any, blobs: dict[str, bytes]) -> None:
        if blobs:
            calls.append((tracemalloc.get_traced_memory()[0], dict(blobs)))
        put(self, conn, blobs)

    monkeypatch.setattr(SqlStore, "put_blobs", measured)
    yield calls


def test_a_page_of_photos_is_staged_without_a_second_copy(
    world: World, tmp_path: Path, staged: list[tuple[int, dict[str, bytes]]]
) -> None:
    """Before: 17.1 to 17.9 MB traced when the page's blobs went to the store (the copies; the photos
    were made before tracing began); now 0.3 to 1.1 MB (PostgreSQL, SQLite; measured), and each blob
    is the very object the connector handed over."""
    engine = with_profiles(
        world, tmp_path, {"exo-full": {"steps": [{"type": "full-import", "agent": "exo", "page_size": PHOTOS}]}}
    )
    photos = {f"exo-{i}": HashedBytes(os.urandom(SIZE)) for i in range(PHOTOS)}
    for anchor, data in photos.items():
        world.exo["objects"][anchor] = {"accountName": f"{anchor}@example.test", "photo": data}
    tracemalloc.start()
    try:
        result = engine.run_profile("exo-full")
    finally:
        tracemalloc.stop()
    assert result.status == "success", result.as_dict()
    assert result.steps[0].counters["adds"] == PHOTOS
    assert len(staged) == 1, [len(blobs) for _, blobs in staged]
    held, blobs = staged[0]
    assert sorted(blobs) == sorted(p.sha256 for p in photos.values())
    assert all(blobs[p.sha256] is p for p in photos.values()), "a blob is a copy of the connector's photo"
    # a second copy of the page would be 16 MB; the bound leaves the step's own work ample room
    assert held < PHOTOS * SIZE // 2, f"{held:,} bytes traced when a page of {PHOTOS * SIZE:,} in photos was staged"
    # what the store holds is addressed by the same hash, and reads back the same bytes
    with world.engine.store.transaction() as conn:
        back = world.engine.store.get_blobs(conn, [p.sha256 for p in photos.values()])
    assert {sha: bytes(data) for sha, data in back.items()} == {p.sha256: bytes(p) for p in photos.values()}
