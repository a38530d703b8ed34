"""Fixtures for the Active Directory agent's tests: an OU per test on the session's Samba DC, users
with photos, and a factory for connectors pointed at that OU."""

from __future__ import annotations

import io
import logging
import random
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from ldap3 import BASE

from connector.agents.active_directory import ActiveDirectoryConnector, ActiveDirectorySettings
from connector.sdk import ConnectorContext, ImportPage, ImportRequest
from tests.harness.samba_dc import ADSettings, UserSpec, connect, create_users, delete_subtree, ensure_ou


def jpeg(seed: int, size: int = 96) -> bytes:
    """A real, deterministic JPEG (noise, so every seed gives different bytes)."""
    from PIL import Image

    rng = random.Random(seed)
    image = Image.frombytes("RGB", (size, size), bytes(rng.getrandbits(8) for _ in range(size * size * 3)))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=80)
    return out.getvalue()


@dataclass
class ADTestEnv:
    """One test's corner of the directory: its OU, an admin connection, and helpers."""

    ad: ADSettings
    ou: str
    admin: Any
    tmp_path: Path
    tag: str = ""
    guids: dict[str, str] = field(default_factory=dict)
    connectors: list[ActiveDirectoryConnector] = field(default_factory=list)

    def specs(self, count: int, prefix: str = "u", photos: bool = True) -> list[UserSpec]:
        """Users named ``<tag><prefix><i>`` (sAMAccountName is unique domain-wide: each test tags its own)."""
        return [
            UserSpec(
                f"{self.tag}{prefix}{i}",
                mail=f"{self.tag}{prefix}{i}@mvsync.test",
                display_name=f"User {prefix}{i}",
                photo=jpeg(i) if photos else None,
            )
            for i in range(count)
        ]

    def add_users(self, users: list[UserSpec], ou: str | None = None) -> dict[str, str]:
        created = create_users(self.admin, ou or self.ou, users, self.ad.upn_suffix)
        self.guids.update(created)
        return created

    def people_with_photos(self, count: int, seed: int = 700) -> tuple[str, list[str], Path]:
        """An OU "people" of ``count`` users without a photo, and a folder "hr-photos" with a photo for each
        (``jpeg(seed + i)`` for the i-th name in order)."""
        people = self.sub_ou("people")
        names = sorted(self.add_users(self.specs(count, photos=False), ou=people))
        photos = self.tmp_path / "hr-photos"
        photos.mkdir()
        for i, name in enumerate(names):
            (photos / f"{name}.jpg").write_bytes(jpeg(seed + i))
        return people, names, photos

    def sub_ou(self, name: str) -> str:
        dn = f"OU={name},{self.ou}"
        ensure_ou(self.admin, dn)
        return dn

    def read(self, name: str, attribute: str, ou: str | None = None) -> list[bytes]:
        self.admin.search(f"CN={name},{ou or self.ou}", "(objectClass=*)", BASE, attributes=[attribute, "uSNChanged"])
        return list(self.admin.response[0]["raw_attributes"].get(attribute, []))

    def usn(self, name: str, ou: str | None = None) -> int:
        return int(self.read(name, "uSNChanged", ou)[0])

    def settings(self, **overrides: Any) -> ActiveDirectorySettings:
        values: dict[str, Any] = {
            "host": self.ad.host,
            "port": self.ad.ldaps_port,
            "ca_file": str(self.ad.ca_cert) if self.ad.ca_cert else None,
            "bind_dn": self.ad.bind_dn,
            "password": self.ad.password,
            "base_dns": [self.ou],
            "max_writes_per_second": None,
        }
        values.update(overrides)
        return ActiveDirectorySettings.model_validate(values)

    def connector(
        self,
        *,
        export_attributes: tuple[str, ...] = ("thumbnailPhoto",),
        dry_run: bool = False,
        logger: logging.Logger | None = None,
        open: bool = True,
        **overrides: Any,
    ) -> ActiveDirectoryConnector:
        context = ConnectorContext(
            agent="ad",
            data_dir=self.tmp_path,
            dry_run=dry_run,
            export_attributes={"user": frozenset(export_attributes)},
            logger=logger or logging.getLogger("mvsync.agent.ad"),
        )
        connector = ActiveDirectoryConnector(self.settings(**overrides), context)
        self.connectors.append(connector)
        if open:
            connector.open()
        return connector


def photo_sync_config(
    ad_env: ADTestEnv,
    people: str,
    photos: Path,
    ad_settings: dict[str, Any],
    *,
    import_flow: tuple[dict[str, str], ...] = (),
    export_step: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The photo solution on ``ad_env``'s DC: ``ad`` (the users under ``people``) and ``hr`` (the folder
    ``photos``), profiles "Prepare" (imports and syncs) and "Export"; ``ad_settings`` adds to or
    replaces the DC's own connection settings, ``import_flow`` adds AD flows, ``export_step`` to the step."""
    secret = ad_env.tmp_path / "ad-password"
    secret.write_text(ad_env.ad.password)
    user = {"object_class": "user"}
    return {
        "store": {"url": f"sqlite:///{ad_env.tmp_path / 'mvsync.db'}"},
        "data_dir": str(ad_env.tmp_path / "data"),
        "metaverse": {"schema": "person"},
        "agents": {
            "ad": {
                "type": "active-directory",
                "settings": {
                    "host": ad_env.ad.host,
                    "port": ad_env.ad.ldaps_port,
                    "ca_file": str(ad_env.ad.ca_cert) if ad_env.ad.ca_cert else None,
                    "bind_dn": ad_env.ad.bind_dn,
                    "password": {"file": str(secret)},
                    "base_dns": [people],
                    "max_writes_per_second": 0,
                    **ad_settings,
                },
                "projection": [{**user, "metaverse_type": "person"}],
                "import_flow": [{**user, "cs": "sAMAccountName", "mv": "accountName"}, *import_flow],
                "export_flow": [{**user, "mv": "photo", "cs": "thumbnailPhoto"}],
            },
            "hr": {
                "type": "photo-folder",
                "settings": {"path": str(photos)},
                "join": [{"object_class": "photoFile", "match": [{"cs": "accountName", "mv": "accountName"}]}],
                "import_flow": [{"object_class": "photoFile", "cs": "photo", "mv": "photo"}],
            },
        },
        "run_profiles": {
            "Prepare": {
                "steps": [
                    {"type": "full-import", "agent": "ad"},
                    {"type": "full-import", "agent": "hr"},
                    {"type": "full-sync", "agent": "ad"},
                    {"type": "full-sync", "agent": "hr"},
                ]
            },
            "Export": {"steps": [{"type": "export", "agent": "ad", **(export_step or {})}]},
        },
    }


def after_first_page(monkeypatch: pytest.MonkeyPatch, event: Callable[[], None], *, every_page: bool = False) -> None:
    """Call ``event`` once the connector has answered the step's first page (the search is under way),
    or each page with ``every_page``."""
    original = ActiveDirectoryConnector.import_page

    def import_page(self: ActiveDirectoryConnector, request: ImportRequest) -> ImportPage:
        page = original(self, request)
        if request.page_number == 1 or every_page:
            event()
        return page

    monkeypatch.setattr(ActiveDirectoryConnector, "import_page", import_page)


@pytest.fixture
def ad_env(samba_ad: ADSettings, tmp_path: Path) -> Iterator[ADTestEnv]:
    admin = connect(samba_ad)
    tag = uuid.uuid4().hex[:8]
    ou = f"OU=t-{tag},{samba_ad.base_dn}"
    ensure_ou(admin, ou)
    env = ADTestEnv(samba_ad, ou, admin, tmp_path, tag=tag)
    try:
        yield env
    finally:
        for connector in env.connectors:
            connector.close()
        delete_subtree(admin, ou)
        admin.unbind()
