"""The photo's export path does its work once: the engine decides what to write (against the
hologram and any unconfirmed write) and loads only the photo to be written, never the old one."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Any

import pytest

from tests.engine.conftest import World, add_users


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_an_export_loads_the_new_photo_and_not_the_one_it_replaces(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_users(world, 1)
    world.cycle()
    assert world.run("export").status == "success"
    assert world.run("confirm").status == "success"
    old = world.ad["objects"]["guid-000"]["thumbnail"]
    world.exo["objects"]["exo-000"]["photo"] = b"exo-photo-new"
    world.cycle()

    asked: list[str] = []
    get_blobs = world.engine.store.get_blobs

    def recording(conn: Any, hashes: Iterable[str]) -> dict[str, bytes]:
        hashes = list(hashes)
        asked.extend(hashes)
        return get_blobs(conn, hashes)

    monkeypatch.setattr(world.engine.store, "get_blobs", recording)
    exported = world.run("export")

    assert exported.status == "success", exported.as_dict()
    assert world.ad["objects"]["guid-000"]["thumbnail"] == b"exo-photo-new"
    assert _sha(b"exo-photo-new") in asked
    assert _sha(old) not in asked  # the old thumbnail is not read back for a second no-op check
    sent = world.ad["exports"][-1]
    assert "thumbnail" not in sent.previous


def test_a_value_staged_again_after_an_unconfirmed_write_is_written(world: World) -> None:
    """Hologram A, unconfirmed B, staged A again: the directory holds B, so A is written (a connector
    that compared with the hologram alone would call it a no-op and leave B)."""
    add_users(world, 1)
    world.cycle()
    assert world.run("export").status == "success"
    assert world.run("confirm").status == "success"  # hologram: exo-photo-0
    first = world.ad["objects"]["guid-000"]["thumbnail"]
    world.exo["objects"]["exo-000"]["photo"] = b"exo-photo-B"
    world.cycle()
    assert world.run("export").status == "success"  # unconfirmed: B, not imported yet
    world.exo["objects"]["exo-000"]["photo"] = first
    world.cycle()
    assert world.run("export").status == "success"
    staged = {c.name: c.values for c in world.ad["exports"][-1].changes}
    assert staged["thumbnail"] == (first,)
    assert world.ad["objects"]["guid-000"]["thumbnail"] == first
