"""A store filled by the engine with the in-memory connector and real photos, and clients over it.

Sixty people: Exchange Online (``exo``) has a JPEG for most, the HR folder (``hr``) a PNG for some,
AD (``ad``) a thumbnail for a few; AD exports the metaverse photo. One AD export is made to fail
(a per-object error), and after the export some photos change again so exports are pending.
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from connector.config import MvsyncConfig
from connector.engine import Engine
from connector.sdk import ExportStatus
from connector.web import AccessPolicy, create_app
from tests.engine.conftest import make_config
from tests.engine.memory import DIRECTORIES, directory
from tests.web.images import image_bytes

with warnings.catch_warnings():
    # Starlette asks for ``httpx2`` and warns when it falls back to ``httpx`` (what [test] installs)
    warnings.filterwarnings("ignore", message=".*httpx2.*")
    from fastapi.testclient import TestClient

PEOPLE = 60
LOOPBACK = "http://127.0.0.1"


@dataclass
class PhotoWorld:
    config: MvsyncConfig
    engine: Engine
    directories: dict[str, dict[str, Any]]
    failed_anchor: str


def fill(tmp: Path) -> PhotoWorld:
    prefix = uuid.uuid4().hex[:8]
    config = make_config(tmp, prefix)
    dirs = {name: directory(f"{prefix}-{name}") for name in ("ad", "exo", "hr")}
    for i in range(PEOPLE):
        account = f"user{i:03d}"
        dirs["ad"]["objects"][f"guid-{i:03d}"] = {
            "accountName": account,
            "mail": f"{account}@example.test",
            **({"thumbnail": image_bytes(1000 + i, 48)} if i % 10 == 0 else {}),
        }
        dirs["exo"]["objects"][f"exo-{i:03d}"] = {
            "accountName": f"{account}@example.test",
            "mail": f"{account}@example.test",
            "displayName": f"Person {i:02d} Example",
            **({"photo": image_bytes(i, 96)} if i % 4 != 3 else {}),
        }
        if i % 3 == 0:
            dirs["hr"]["objects"][f"hr-{i:03d}"] = {"accountName": account, "photo": image_bytes(500 + i, 64, "PNG")}
    engine = Engine(config)
    for profile in ("full-import", "full-sync"):
        engine.run_profile(profile)
    failed = "guid-001"
    dirs["ad"]["fail"][failed] = (ExportStatus.FAILED, "constraint-violation")
    engine.run_profile("export")
    engine.run_profile("confirm")
    # new photos in Exchange Online for a few people: exports pending again
    for i in (4, 8, 12):
        dirs["exo"]["objects"][f"exo-{i:03d}"]["photo"] = image_bytes(2000 + i, 96)
    # and one person loses their photo everywhere: the AD thumbnail will be cleared
    dirs["exo"]["objects"]["exo-020"].pop("photo", None)
    dirs["hr"]["objects"].pop("hr-020", None)
    for profile in ("full-import", "full-sync"):
        engine.run_profile(profile)
    return PhotoWorld(config, engine, dirs, failed)


@pytest.fixture(scope="module")
def photo_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PhotoWorld]:
    world = fill(tmp_path_factory.mktemp("web"))
    yield world
    world.engine.close()
    for d in world.directories.values():
        for key in [k for k, v in DIRECTORIES.items() if v is d]:
            DIRECTORIES.pop(key, None)


@pytest.fixture(scope="module")
def client(photo_world: PhotoWorld) -> Iterator[TestClient]:
    app = create_app(photo_world.config, store=photo_world.engine.store)
    with TestClient(app, base_url=LOOPBACK) as c:
        yield c


def make_client(world: PhotoWorld, policy: AccessPolicy, base_url: str = LOOPBACK) -> TestClient:
    return TestClient(create_app(world.config, store=world.engine.store, policy=policy), base_url=base_url)
