"""The transform cache is a cache: a damaged row in it is recomputed and rewritten, never a stopped run."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import select, text, update

from connector.engine import Engine
from connector.store.tables import transform_cache
from tests.engine.conftest import World, thumbnails_to_ad


def _cached(world: World) -> dict[tuple[str, str], str]:
    with world.engine.store.read() as conn:
        rows = conn.execute(select(transform_cache.c.transform, transform_cache.c.input, transform_cache.c.output))
        return {(transform, inp): output for transform, inp, output in rows}


def _damage(world: World, damage: str) -> None:
    """Every cached output damaged as bytes changed on the disk leave it: cut short (no JSON), or, on
    SQLite, a byte that is no UTF-8 (PostgreSQL refuses to store one)."""
    with world.engine.store.transaction() as conn:
        if damage == "not-json":
            conn.execute(update(transform_cache).values(output='"\\u0000b:4f2a'))
        elif world.backend != "sqlite":
            pytest.skip("only SQLite keeps text that is no UTF-8")
        else:
            conn.execute(text("UPDATE transform_cache SET output = CAST(X'22FF' AS TEXT)"))


@pytest.mark.parametrize("damage", ["not-json", "not-utf8"])
def test_a_damaged_transform_cache_row_is_recomputed_and_rewritten_not_a_stopped_run(
    world: World, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    """Bytes changed inside a cached thumbnail's row: before, the next synchronization that met it
    stopped as a damaged store (stopped-store-corrupt), although the row is only a cache of what the
    transform computes again. Now it is a miss: the thumbnail is computed again, the row rewritten,
    and the run says which row it replaced."""
    thumbnails_to_ad(world, 2)
    world.cycle()
    cached = _cached(world)
    assert len(cached) == 2
    _damage(world, damage)
    world.engine.close()
    world.engine = Engine(world.config)  # nothing remembered in memory: the rows are read
    with caplog.at_level(logging.WARNING):
        result = world.run("full-sync")
    assert result.status == "success", result.as_dict()
    assert _cached(world) == cached  # recomputed and rewritten, as they were
    replaced = [r.getMessage() for r in caplog.records if "transform_cache row" in r.getMessage()]
    assert len(replaced) == 2 and all("is computed again and the row rewritten" in m for m in replaced), replaced
    assert world.run("export").status == "success"
    assert all(obj["thumbnail"].startswith(b"\xff\xd8") for obj in world.ad["objects"].values())
