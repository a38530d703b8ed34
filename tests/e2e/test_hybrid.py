"""Hybrid people end to end: on-premises mailboxes' photos reach AD through the exs agent (issue #19).

The sample's rules and profiles, the Graph emulator and the EWS emulator over HTTPS (NTLM), and the
demo's LDIF directory stand-in, whose snapshot is the directory's state after each export.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from connector.config import load_config
from connector.demo import DEMO_SCOPES, prepare_scenario, read_ldif, start_ews
from connector.demo._world import _portrait
from connector.emulator import EmulatorConfig, GraphEmulator
from connector.engine import Engine

pytestmark = pytest.mark.slow


@pytest.fixture
def tenant() -> Iterator[GraphEmulator]:
    with GraphEmulator(EmulatorConfig(users=40, photo_ratio=0.6, seed=19, delegated_scopes=DEMO_SCOPES)) as emu:
        yield emu


def _thumbnails(snapshot: Path) -> dict[str, bytes | None]:
    return {str(e["sAMAccountName"]): e.get("thumbnailPhoto") for e in read_ldif(snapshot)}


def test_on_premises_mailbox_photos_reach_ad(tenant: GraphEmulator, tmp_path: Path) -> None:
    # three more people move on-premises (hybrid): two with a photo, one without
    cloud = [u for u in tenant.admin.users()[1:] if u["mailbox"] == "cloud" and u["mail"]]
    with_photo = [u for u in cloud if u["hasPhoto"]][:2]
    without = [u for u in cloud if not u["hasPhoto"]][:1]
    for user in [*with_photo, *without]:
        tenant.admin.update_user(user["id"], mailbox="on-premises")
    users = tenant.admin.users()
    ews = start_ews(users)
    try:
        scenario = prepare_scenario(
            tmp_path, tenant.info, users, ews_info=ews.info, fallbacks=0, exs_overrides={"photo_recheck_hours": 0}
        )
        onprem = {u.sam: u for u in scenario.users if u.exs_photo}
        by_sam: dict[str, Any] = {u["mailNickname"]: u for u in users}
        assert {u["mailNickname"] for u in with_photo} <= set(onprem)
        engine = Engine(load_config(scenario.config_path))
        try:
            full = engine.run_profile("Full Cycle")
            assert not full.status.startswith("stopped-"), full.as_dict()
            # Exchange Online imports the on-premises people as such (EXOMailboxLocation), not as errors
            exo = next(s for s in full.steps if (s.agent, s.kind) == ("exo", "full-import"))
            assert exo.status == "success" and not exo.errors, [e.error_name for e in exo.errors]
            assert full.status == "success", full.as_dict()
            exs = next(s for s in full.steps if (s.agent, s.kind) == ("exs", "full-import"))
            mailboxes = [u for u in users if u["mailbox"] == "on-premises" and u["mail"]]
            assert exs.status == "success" and exs.counters["adds"] == len(mailboxes) >= 3
            assert scenario.snapshot is not None
            directory = _thumbnails(scenario.snapshot)
            # everybody with a photo in Exchange Online or Exchange Server has a thumbnail, nobody else
            expected = {u.sam for u in scenario.users if u.exo_photo or u.exs_photo}
            assert {sam for sam, photo in directory.items() if photo} == expected
            for sam in onprem:
                image = Image.open(io.BytesIO(directory[sam] or b""))
                assert image.format == "JPEG" and image.size == (96, 96)

            # a new photo on Exchange Server (Set-UserPhoto): exactly that person's thumbnail changes
            changed = sorted(onprem)[0]
            ews.set_photo(str(by_sam[changed]["mail"]), _portrait("a new look", 648))
            result = engine.run_profile("Delta Cycle")
            assert result.status == "success", result.as_dict()
            after = _thumbnails(scenario.snapshot)
            assert {sam for sam in after if after[sam] != directory[sam]} == {changed}

            # nothing changed: the re-check is a 304 and nothing is exported
            result = engine.run_profile("Delta Cycle")
            exported = sum(s.counters.get("export_updates", 0) for s in result.steps if s.kind == "export")
            assert result.status == "success" and exported == 0
            assert ews.stats()["not_modified"] >= 2
        finally:
            engine.close()
    finally:
        ews.stop()
