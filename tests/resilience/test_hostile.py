"""Hostile input: each a clear per-object or configuration error, no crash, nothing lost.

Graph: the emulator cannot send a damaged ``$batch`` item or a junk-filled page, so those shapes are
handed to the agent's own response readers (item level) and to its users/delta walk (a huge page
of 5,000 entries, most of them junk, around the tenant's real users). Damaged bodies on the wire
(truncated, reset) come from the emulator's fault profile in test_faults.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from ldap3 import SUBTREE

from connector.agents.exchange_online._graph import GraphClient, GraphResponse, _item_response
from connector.agents.exchange_online._photos import PhotoTask, read_response
from connector.bench.resilience import (
    _exo_only_config,
    hostile_configs,
    hostile_file_names,
    hostile_images,
    odd_images,
)
from connector.config import config_from_dict
from connector.emulator import GraphEmulator
from connector.engine import Engine
from tests.harness.crash import lab_emulator_config, lab_tag
from tests.harness.samba_dc import ADSettings, UserSpec, connect, create_users, delete_subtree, ensure_ou


def test_odd_images_through_the_export_transform(tmp_path: Path) -> None:
    figures = hostile_images(tmp_path)
    assert not any(s == "stopped-connector-exception" for s in figures["statuses"]), figures
    assert figures["unexplained"] == [] and figures["bad_thumbnails"] == [], figures
    for name in ("garbage", "truncated-jpeg", "pixel-bomb-header", "svg-text", "nul-bytes"):
        assert figures["outcomes"][name] == "full-sync:invalid-image", figures["outcomes"]
    # (a 0-byte file never reaches the transform: the folder's import refuses it, verified or not)
    assert figures["outcomes"]["empty"] == "full-import:empty-image", figures["outcomes"]
    for name in ("plain-jpeg", "cmyk-jpeg", "png-16-bit", "png-alpha", "webp", "exif-rotated-jpeg"):
        assert figures["outcomes"][name] == "thumbnail", figures["outcomes"]


def test_odd_file_names_in_the_photo_folder(tmp_path: Path) -> None:
    figures = hostile_file_names(tmp_path)
    assert not figures["status"].startswith("stopped-"), figures
    assert figures["read_outside_folder"] is False
    assert figures["imported"] + figures["errors"] + figures["hidden"] == figures["tried"], figures
    assert set(figures["error_names"]) <= {"invalid-file-name", "symlink-refused"}, figures
    assert "star*(paren)\\back" in figures["accounts"]


def test_unknown_keys_and_wrong_types_name_the_key_and_the_file(tmp_path: Path) -> None:
    figures = hostile_configs(tmp_path)
    assert set(figures["outcomes"].values()) == {"clear"}, figures["outcomes"]


def test_malformed_photo_metadata_is_an_error_not_no_photo() -> None:
    damaged = _item_response({"id": "0", "status": 200, "headers": {"Content-Type": "application/json"}, "body": "{x"})
    outcome = read_response(PhotoTask("u1"), damaged, "648x648")
    assert outcome.kind == "error" and outcome.error == "graph-malformed-response"  # not "none": that clears
    listed = read_response(PhotoTask("u1"), GraphResponse(200, {}, b"", ["not", "an", "object"]), "648x648")
    assert listed.kind == "error"


@pytest.mark.parametrize(
    "raw",
    [
        {"id": "0", "status": "two hundred", "body": "x"},
        {"id": "0", "status": None},
        {"id": "0"},
        {"id": "0", "status": 7000, "headers": "not a map"},
        {"id": "0", "status": 200, "headers": ["Content-Type", "image/jpeg"], "body": "AAAA"},
    ],
)
def test_a_malformed_batch_item_is_that_users_error(raw: dict[str, Any]) -> None:
    """An item Graph could not describe fails one user (retryable), never the worker or the step."""
    item = _item_response(raw)
    if item.status == 200:  # headers that are not a map are ignored; the body is still read
        assert item.body == b"\x00\x00\x00"
        return
    assert item.status == 502 and item.error_code == "MalformedBatchItem"
    outcome = read_response(PhotoTask("u1"), item, "648x648")
    assert outcome.kind == "error" and outcome.error == "graph-unavailable"


def test_a_huge_junk_filled_delta_page_imports_the_real_users(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with GraphEmulator(lab_emulator_config(users=30, seed=3)) as emu:
        config = _exo_only_config(tmp_path, emu.info)
        real = GraphClient.get_json
        junk: list[Any] = [{"displayName": "x" * 10_000}, "a string", 42, None, {"id": ""}, {"id": 7}, [1, 2]]

        def huge(self: GraphClient, url: str, **kwargs: Any) -> GraphResponse:
            resp = real(self, url, **kwargs)
            if "delta" in url and isinstance(resp.json_body, dict):
                resp.json_body["value"] = [*(junk * 700), *resp.json_body["value"]]
            return resp

        monkeypatch.setattr(GraphClient, "get_json", huge)
        engine = Engine(config)
        try:
            result = engine.run_profile("Full Import")
        finally:
            engine.close()
        mailbox_users = [u for u in emu.admin.users() if u.get("mail") and u["mailbox"] != "none"]  # not guests
    step = result.steps[0]
    assert not result.status.startswith("stopped-"), result.as_dict()
    # every real mailbox user is staged (on-premises mailboxes too, with their location)
    assert step.counters["adds"] == len(mailbox_users), step.counters
    assert {e.error_name for e in step.errors} == set()


@pytest.mark.samba
def test_ldap_metacharacters_and_nul_in_import_join_and_export(samba_ad: ADSettings, tmp_path: Path) -> None:
    """Values full of ``*()\\`` (and NUL where the DC takes it) pass through import, join and export."""
    tag = lab_tag()
    ou = f"OU=mvsync-hostile-{tag}"
    ou_dn = f"{ou},{samba_ad.base_dn}"
    hostile = "st*r)(|(objectClass=*)\\5c(x"
    conn = connect(samba_ad)
    try:
        delete_subtree(conn, ou_dn)
        ensure_ou(conn, ou_dn)
        specs = [
            UserSpec(f"{tag}-h{i}", display_name=f"{hostile}{i}", extra={"description": f"{hostile}{i}"})
            for i in range(3)
        ]
        create_users(conn, ou_dn, specs, samba_ad.upn_suffix)
    finally:
        conn.unbind()
    folder = tmp_path / "photos"
    folder.mkdir()
    # the HR file is named after the hostile display name; the join matches it literally
    (folder / f"{hostile}1.jpg").write_bytes(odd_images()["plain-jpeg"])
    password = tmp_path / "pw"
    password.write_text(samba_ad.password)
    ad_settings = {
        "host": samba_ad.host,
        "port": samba_ad.ldaps_port,
        "bind_dn": samba_ad.bind_dn,
        "password": {"file": str(password)},
        "base_dns": [ou_dn],
        "filter_equals": {"description": f"{hostile}1"},  # escaped: matches one user, not all
        "max_writes_per_second": 0,
        **({"ca_file": str(samba_ad.ca_cert)} if samba_ad.ca_cert else {}),
    }
    config = config_from_dict(
        {
            "store": {"url": "sqlite:///mvsync.db"},
            "agents": {
                "ad": {
                    "type": "active-directory",
                    "settings": ad_settings,
                    "projection": [{"object_class": "user"}],
                    "import_flow": [{"object_class": "user", "cs": "displayName", "mv": "displayName"}],
                    "export_flow": [
                        {"object_class": "user", "mv": "photo", "cs": "thumbnailPhoto", "transform": "thumbnail"}
                    ],
                },
                "hr": {
                    "type": "photo-folder",
                    "settings": {"path": str(folder)},
                    "join": [{"object_class": "photoFile", "match": [{"cs": "accountName", "mv": "displayName"}]}],
                    "import_flow": [{"object_class": "photoFile", "cs": "photo", "mv": "photo"}],
                },
            },
            "run_profiles": {
                "Cycle": {
                    "steps": [
                        {"type": "full-import", "agent": "ad"},
                        {"type": "full-import", "agent": "hr"},
                        {"type": "full-sync", "agent": "ad"},
                        {"type": "full-sync", "agent": "hr"},
                        {"type": "export", "agent": "ad"},
                        {"type": "delta-import", "agent": "ad"},
                    ]
                }
            },
        },
        base_dir=tmp_path,
    )
    engine = Engine(config)
    try:
        result = engine.run_profile("Cycle")
    finally:
        engine.close()
    assert result.status == "success", result.as_dict()
    steps = {(s.agent, s.kind): s for s in result.steps}
    assert steps[("ad", "full-import")].counters["adds"] == 1  # the filter value was escaped
    assert steps[("ad", "export")].counters["export_updates"] == 1
    conn = connect(samba_ad)
    try:
        conn.search(ou_dn, "(objectClass=user)", SUBTREE, attributes=["displayName", "thumbnailPhoto"])
        photos = {
            e["raw_attributes"]["displayName"][0].decode(): bool(e["raw_attributes"].get("thumbnailPhoto"))
            for e in conn.response
            if e.get("type") == "searchResEntry"
        }
        delete_subtree(conn, ou_dn)
    finally:
        conn.unbind()
    assert photos == {f"{hostile}0": False, f"{hostile}1": True, f"{hostile}2": False}
