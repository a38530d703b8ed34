from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.config import MvsyncConfig, config_from_dict
from connector.engine import Engine
from tests.engine.memory import DIRECTORIES, directory
from tests.imaging.images import photo

MEMORY = "tests.engine.memory:MemoryConnector"


def make_config(tmp_path: Path, prefix: str, store_url: str | None = None, **overrides: Any) -> MvsyncConfig:
    data: dict[str, Any] = {
        "store": {"url": store_url or f"sqlite:///{tmp_path / 'store.db'}"},
        "metaverse": {"schema": "person", "precedence": {"photo": ["exo", "hr"]}},
        "agents": {
            "ad": {
                "type": MEMORY,
                "settings": {"directory": f"{prefix}-ad"},
                "projection": [{"object_class": "user"}],
                "join": [
                    {"object_class": "user", "match": [{"cs": "accountName", "mv": "accountName", "ignore_case": True}]}
                ],
                "import_flow": [
                    {"object_class": "user", "cs": "accountName", "mv": "accountName"},
                    {"object_class": "user", "cs": "mail", "mv": "mail"},
                    {"object_class": "user", "cs": "thumbnail", "mv": "adThumbnailChecksum", "transform": "sha256"},
                ],
                "export_flow": [
                    {"object_class": "user", "mv": "photo", "cs": "thumbnail", "allow_null": True},
                    {"object_class": "user", "mv": "displayName", "cs": "displayName"},
                ],
            },
            "exo": {
                "type": MEMORY,
                "settings": {"directory": f"{prefix}-exo"},
                "join": [
                    {"object_class": "user", "match": [{"cs": "accountName", "mv": "userPrincipalName"}]},
                    {"object_class": "user", "match": [{"cs": "mail", "mv": "mail", "ignore_case": True}]},
                ],
                "import_flow": [
                    {"object_class": "user", "cs": "photo", "mv": "photo"},
                    {"object_class": "user", "cs": "displayName", "mv": "displayName"},
                    {"object_class": "user", "cs": "photo", "mv": "exoPhotoChecksum", "transform": "sha256"},
                ],
            },
            "hr": {
                "type": MEMORY,
                "settings": {"directory": f"{prefix}-hr"},
                "join": [
                    {"object_class": "user", "match": [{"cs": "accountName", "mv": "accountName", "ignore_case": True}]}
                ],
                "import_flow": [{"object_class": "user", "cs": "photo", "mv": "photo"}],
            },
        },
        "run_profiles": {
            "full-import": {"steps": [{"type": "full-import", "agent": a} for a in ("ad", "exo", "hr")]},
            "delta-import": {"steps": [{"type": "delta-import", "agent": a} for a in ("ad", "exo", "hr")]},
            "full-sync": {"steps": [{"type": "full-sync", "agent": a} for a in ("ad", "exo", "hr")]},
            "delta-sync": {"steps": [{"type": "delta-sync", "agent": a} for a in ("ad", "exo", "hr")]},
            "export": {
                "steps": [
                    {
                        "type": "export",
                        "agent": "ad",
                        "batch_size": 7,
                        "deletion_threshold": {"count": 5, "percent": 50, "attributes": ["thumbnail"]},
                    }
                ]
            },
            "confirm": {"steps": [{"type": "full-import", "agent": "ad"}, {"type": "delta-sync", "agent": "ad"}]},
        },
    }
    for key, value in overrides.items():
        data[key] = value
    return config_from_dict(data, base_dir=tmp_path)


class World:
    """Three in-memory directories (AD, Exchange Online, HR folder) and an engine over them."""

    def __init__(self, tmp_path: Path, store_url: str | None = None) -> None:
        self.prefix = uuid.uuid4().hex[:8]
        self.tmp_path = tmp_path
        self.config = make_config(tmp_path, self.prefix, store_url)
        self.backend = self.config.store_url().split(":", 1)[0].split("+", 1)[0]
        self.engine = Engine(self.config)
        self.ad = directory(f"{self.prefix}-ad")
        self.exo = directory(f"{self.prefix}-exo")
        self.hr = directory(f"{self.prefix}-hr")

    def run(self, profile: str, **kwargs: Any) -> Any:
        return self.engine.run_profile(profile, **kwargs)

    def cycle(self) -> None:
        for profile in ("full-import", "full-sync"):
            result = self.run(profile)
            assert not result.status.startswith("stopped"), result.as_dict()

    def close(self) -> None:
        self.engine.close()
        for d in ("ad", "exo", "hr"):
            DIRECTORIES.pop(f"{self.prefix}-{d}", None)


#: Tests that inspect the SQLite file itself; tests/store covers the same promise on PostgreSQL.
_SQLITE_FILE_TESTS = {"test_dry_run_leaves_the_store_byte_identical": "tests/store/test_dry_run.py"}


@pytest.fixture
def world(request: pytest.FixtureRequest, tmp_path: Path, store_url: str) -> Iterator[World]:
    """The world on each store backend (``store_url`` is parametrized: SQLite and PostgreSQL)."""
    covered_by = _SQLITE_FILE_TESTS.get(request.node.originalname)
    if covered_by and not store_url.startswith("sqlite"):
        pytest.skip(f"reads the SQLite store file; the PostgreSQL equivalent is {covered_by}")
    w = World(tmp_path, store_url if not store_url.startswith("sqlite") else None)
    yield w
    w.close()


def reconfigure(world: World, change: Callable[[dict[str, Any]], None]) -> None:
    """Rebuild the world's configuration (and engine) from its own, changed by ``change``."""
    data = world.config.model_dump(mode="json", by_alias=True)
    change(data)
    world.engine.close()
    world.config = config_from_dict(data, base_dir=world.tmp_path)
    world.engine = Engine(world.config)


def with_profiles(world: World, tmp_path: Path, profiles: dict[str, Any]) -> Engine:
    """The world's engine, rebuilt on the same store with ``profiles`` as its run profiles."""
    config = make_config(tmp_path, world.prefix, world.config.store_url(), run_profiles=profiles)
    world.engine.close()
    world.engine = Engine(config)
    return world.engine


def numbered_ad_users(world: World, n: int, digits: int = 2) -> None:
    """``n`` AD users ``u00``, ``u01``... (``digits`` wide, so they sort in number order)."""
    for i in range(n):
        name = f"u{i:0{digits}d}"
        world.ad["objects"][name] = {"accountName": name, "displayName": f"User {i}"}


def add_users(world: World, n: int, *, photos: bool = True) -> None:
    for i in range(n):
        account = f"user{i:03d}"
        world.ad.setdefault("objects", {})[f"guid-{i:03d}"] = {
            "accountName": account,
            "mail": f"{account}@example.test",
        }
        world.exo["objects"][f"exo-{i:03d}"] = {
            "accountName": f"{account}@example.test",
            "mail": f"{account.upper()}@EXAMPLE.TEST",
            "displayName": f"User {i}",
            **({"photo": f"exo-photo-{i}".encode()} if photos else {}),
        }


def thumbnails_to_ad(world: World, users: int) -> None:
    """``users`` people whose Exchange Online photo goes to AD through the ``thumbnail`` transform
    (the transform whose results the store caches)."""

    def thumbnails(data: dict[str, Any]) -> None:
        data["agents"]["ad"]["export_flow"][0]["transform"] = "thumbnail(size=96, max_bytes=10240)"

    reconfigure(world, thumbnails)
    add_users(world, users)
    for i in range(users):
        world.exo["objects"][f"exo-{i:03d}"]["photo"] = photo(i, 200)


def recorded_step(world: World, run_id: int) -> tuple[str, dict[str, Any], list[str | None]]:
    """The only step of run ``run_id`` as history recorded it: its status, its counters and the anchors of
    its errors (what an interrupted step says it did, to hold against what the store kept)."""
    import json

    from connector.store import RunHistory, SqlStore

    store = SqlStore(world.config.store_url())
    try:
        with store.read() as conn:
            history = RunHistory(conn)
            [step] = history.steps(run_id)
            errors = history.errors(step.id, 100)
    finally:
        store.close()
    return step.status, json.loads(step.counters), [e.anchor for e in errors]
