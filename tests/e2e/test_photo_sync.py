"""The photo solution end to end: the sample's rules, the Graph emulator over HTTPS, a real Samba AD DC.

Users exist in AD (sAMAccountName = mailNickname behind this test's own prefix, the same UPN in a
tenant domain of its own: other sessions may run this test on the same DC at the same time) and photos
in Exchange Online. The test drives the sample's "Full Cycle" and "Delta Cycle" profiles and checks the directory itself
(``thumbnailPhoto`` and ``uSNChanged``, which the DC bumps on every write), not just counters.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ldap3 import SUBTREE
from PIL import Image

from connector.config import load_config
from connector.demo import SharedNames, prepare_scenario
from connector.demo._run import DEMO_SCOPES
from connector.demo._world import _portrait
from connector.emulator import EmulatorConfig, GraphEmulator
from connector.engine import Engine, RunResult
from tests.harness.samba_dc import ADSettings, connect, delete_subtree

pytestmark = [pytest.mark.samba, pytest.mark.slow]


@pytest.fixture
def names() -> SharedNames:
    """This test's OU, account names and tenant domain: other sessions may run it on the same DC now."""
    return SharedNames.new()


@pytest.fixture
def tenant(names: SharedNames) -> Iterator[GraphEmulator]:
    config = EmulatorConfig(users=40, photo_ratio=0.6, seed=11, delegated_scopes=DEMO_SCOPES, domain=names.domain())
    with GraphEmulator(config) as emu:
        yield emu


@pytest.fixture
def ou(samba_ad: ADSettings, names: SharedNames) -> Iterator[str]:
    name = names.ou("e2e")
    yield name
    conn = connect(samba_ad)
    try:
        delete_subtree(conn, f"{name},{samba_ad.base_dn}")
    finally:
        conn.unbind()


def _directory(ad: ADSettings, ou_dn: str) -> dict[str, dict[str, Any]]:
    """sAMAccountName -> {photo, usn} as the DC holds them now."""
    conn = connect(ad)
    try:
        conn.search(ou_dn, "(objectClass=user)", SUBTREE, attributes=["sAMAccountName", "thumbnailPhoto", "uSNChanged"])
        out = {}
        for entry in conn.response:
            if entry.get("type") != "searchResEntry":
                continue
            raw = entry["raw_attributes"]
            out[raw["sAMAccountName"][0].decode()] = {
                "photo": raw["thumbnailPhoto"][0] if raw.get("thumbnailPhoto") else None,
                "usn": int(raw["uSNChanged"][0]),
            }
        return out
    finally:
        conn.unbind()


def _changed(before: dict[str, dict[str, Any]], after: dict[str, dict[str, Any]]) -> set[str]:
    return {sam for sam in after if after[sam]["usn"] != before[sam]["usn"]}


def _exports(result: RunResult) -> int:
    return sum(s.counters.get("export_updates", 0) for s in result.steps if s.kind == "export")


def _assert_thumbnail(data: bytes) -> None:
    assert len(data) <= 10_240
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    assert image.size == (96, 96)


def test_exchange_online_photos_reach_ad_thumbnailphoto(
    tenant: GraphEmulator, samba_ad: ADSettings, ou: str, names: SharedNames, tmp_path: Path
) -> None:
    users = tenant.admin.users()
    scenario = prepare_scenario(
        tmp_path,
        tenant.info,
        users,
        ad=samba_ad,
        ad_ou=ou,
        exo_overrides={"photo_recheck_hours": 0},
        fallbacks=2,
        account_prefix=names.account_prefix,
    )
    ou_dn = f"{ou},{samba_ad.base_dn}"
    in_ad = {u.sam for u in scenario.users}
    by_upn = {u["userPrincipalName"]: u for u in users}
    by_sam = {u.sam: by_upn[u.upn] for u in scenario.users if u.upn in by_upn}  # the tenant user of each account
    # Exchange Online serves photos of cloud mailboxes; on-premises mailboxes are per-object errors.
    from_exo = {sam for sam in in_ad if sam in by_sam and by_sam[sam]["hasPhoto"] and by_sam[sam]["mailbox"] == "cloud"}
    expected = from_exo | set(scenario.hr["fallback"])
    assert from_exo and scenario.hr["fallback"]

    engine = Engine(load_config(scenario.config_path))
    try:
        full = engine.run_profile("Full Cycle")
        assert not full.status.startswith("stopped-"), full.as_dict()
        confirm = next(s for s in reversed(full.steps) if s.kind == "delta-import")
        assert confirm.counters["exports_confirmed"] == len(expected)
        assert confirm.counters.get("exports_not_reimported", 0) == 0
        directory = _directory(samba_ad, ou_dn)
        assert {sam for sam, e in directory.items() if e["photo"]} == expected
        for sam in expected:
            _assert_thumbnail(directory[sam]["photo"])

        # one photo changes in Exchange Online -> exactly that user is rewritten
        changed_sam = sorted(from_exo - set(scenario.hr["shadowed"]))[0]
        tenant.admin.set_photo(by_sam[changed_sam]["userPrincipalName"], _portrait("a new look"))
        before = directory
        result = engine.run_profile("Delta Cycle")
        assert result.status == "success", result.as_dict()
        directory = _directory(samba_ad, ou_dn)
        assert _changed(before, directory) == {changed_sam}
        assert directory[changed_sam]["photo"] != before[changed_sam]["photo"]
        _assert_thumbnail(directory[changed_sam]["photo"])
        assert _exports(result) == 1

        # one photo removed -> cleared in AD (under the threshold)
        removed_sam = sorted(from_exo - {changed_sam} - set(scenario.hr["shadowed"]))[0]
        tenant.admin.delete_photo(by_sam[removed_sam]["userPrincipalName"])
        before = directory
        result = engine.run_profile("Delta Cycle")
        assert result.status == "success", result.as_dict()
        directory = _directory(samba_ad, ou_dn)
        assert _changed(before, directory) == {removed_sam}
        assert directory[removed_sam]["photo"] is None

        # a mass removal trips the deletion threshold: nothing is cleared
        victims = sorted(from_exo - {changed_sam, removed_sam} - set(scenario.hr["shadowed"]))[:6]
        originals = {sam: tenant.admin.get_photo(by_sam[sam]["userPrincipalName"]) for sam in victims}
        for sam in victims:
            tenant.admin.delete_photo(by_sam[sam]["userPrincipalName"])
        before = directory
        result = engine.run_profile("Delta Cycle")
        assert result.status == "stopped-deletion-threshold", result.as_dict()
        assert "6 attribute clears" in result.steps[-1].message
        assert _directory(samba_ad, ou_dn) == before

        # the pictures come back (Exchange re-encodes an upload, so the bytes may differ): the staged
        # clears are withdrawn; at most the victims are rewritten, and none loses its thumbnail
        for sam, data in originals.items():
            assert data is not None
            tenant.admin.set_photo(by_sam[sam]["userPrincipalName"], data)
        result = engine.run_profile("Delta Cycle")
        assert result.status == "success", result.as_dict()
        directory = _directory(samba_ad, ou_dn)
        assert _changed(before, directory) <= set(victims)
        for sam in victims:
            _assert_thumbnail(directory[sam]["photo"])
        before = directory

        # and once more: nothing changed, nothing written
        result = engine.run_profile("Delta Cycle")
        assert result.status == "success"
        assert _exports(result) == 0
        assert _directory(samba_ad, ou_dn) == before
    finally:
        engine.close()
