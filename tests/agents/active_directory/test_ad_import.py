"""Full and delta import against the real (Samba) DC."""

from __future__ import annotations

import datetime as _dt
import json

import pytest
from ldap3 import MODIFY_REPLACE

from connector.agents.active_directory import ActiveDirectoryConnector, Watermark
from connector.config import config_from_dict
from connector.engine import Engine
from connector.sdk import (
    ConfigurationError,
    CSEntryChange,
    ImportMode,
    ImportRequest,
    ObjectModificationType,
    StopRunError,
)
from connector.store import ConnectorSpace
from tests.agents.active_directory.conftest import ADTestEnv, after_first_page, jpeg, photo_sync_config
from tests.harness.samba_dc import UserSpec

pytestmark = pytest.mark.samba


def run_import(
    connector: ActiveDirectoryConnector, mode: ImportMode, watermark: str | None = None, page_size: int = 500
) -> tuple[list[CSEntryChange], str | None, int]:
    """All pages of one import step, as the engine would drive it: (entries, new watermark, pages)."""
    entries: list[CSEntryChange] = []
    token: str | None = None
    new_watermark = watermark
    pages = 0
    while True:
        pages += 1
        page = connector.import_page(
            ImportRequest(mode, page_size=page_size, page_number=pages, page_token=token, watermark=watermark)
        )
        entries.extend(page.entries)
        if page.watermark is not None:
            new_watermark = page.watermark
        if not page.more_to_import:
            return entries, new_watermark, pages
        token = page.page_token


def test_paged_full_import_reads_every_user_with_typed_values(ad_env: ADTestEnv) -> None:
    specs = ad_env.specs(23)
    specs[0] = UserSpec(specs[0].name, mail=specs[0].mail, photo=specs[0].photo, extra={"employeeID": "E-0"})
    guids = ad_env.add_users(specs)
    connector = ad_env.connector(extra_attributes=["employeeID"], page_size=10)
    entries, watermark, pages = run_import(connector, ImportMode.FULL, page_size=10)
    assert pages == 4  # 10 + 10 + 3, then the late pass (objects changed during the import: none here)
    assert sorted(e.anchor for e in entries) == sorted(guids.values())
    assert all(e.modification == ObjectModificationType.ADD and e.object_class == "user" for e in entries)
    first = next(e for e in entries if e.anchor == guids[specs[0].name])
    assert first.attributes["thumbnailPhoto"] == specs[0].photo
    assert first.attributes["mail"] == specs[0].mail
    assert first.attributes["employeeID"] == "E-0"
    assert first.attributes["sAMAccountName"] == specs[0].name
    assert first.attributes["userPrincipalName"] == f"{specs[0].name}@{ad_env.ad.upn_suffix}"
    assert first.attributes["distinguishedName"] == first.dn == f"CN={specs[0].name},{ad_env.ou}"
    assert isinstance(first.attributes["uSNChanged"], int)
    assert isinstance(first.attributes["whenChanged"], _dt.datetime)
    assert first.attributes["objectGUID"] == first.anchor
    assert watermark is not None and Watermark.loads(watermark).usn > 0


def test_filter_equals_values_are_taken_literally(ad_env: ADTestEnv) -> None:
    tricky = "R&D (EMEA)*"
    ad_env.add_users(
        [
            UserSpec(f"{ad_env.tag}lit", extra={"department": tricky}),
            UserSpec(f"{ad_env.tag}other", extra={"department": "R&D (EMEA) West"}),
        ]
    )
    connector = ad_env.connector(filter_equals={"department": tricky})
    entries, _, _ = run_import(connector, ImportMode.FULL)
    assert [e.attributes["sAMAccountName"] for e in entries] == [f"{ad_env.tag}lit"]


def _delta_scenario(ad_env: ADTestEnv, method: str) -> None:
    """Change, delete, move out of scope, add, stop matching the filter: the delta must see all five."""
    outside = f"OU=outside-{ad_env.tag},{ad_env.ad.base_dn}"
    ad_env.admin.add(outside, ["top", "organizationalUnit"])
    try:
        guids = ad_env.add_users(ad_env.specs(6))
        hidden = "(&(objectClass=user)(!(description=hidden)))"
        connector = ad_env.connector(delta_method=method, filter=hidden)
        full, watermark, _ = run_import(connector, ImportMode.FULL)
        assert len(full) == 6
        mark = Watermark.loads(watermark or "")
        assert (mark.dirsync is not None) == (method == "dirsync")

        names = list(guids)
        admin = ad_env.admin
        admin.modify(f"CN={names[0]},{ad_env.ou}", {"thumbnailPhoto": [(MODIFY_REPLACE, [jpeg(1000)])]})
        admin.delete(f"CN={names[1]},{ad_env.ou}")
        admin.modify_dn(f"CN={names[2]},{ad_env.ou}", f"CN={names[2]}", new_superior=outside)
        admin.modify(f"CN={names[3]},{ad_env.ou}", {"description": [(MODIFY_REPLACE, ["hidden"])]})
        added = ad_env.add_users([UserSpec(f"{ad_env.tag}new", mail="new@mvsync.test")])

        delta, watermark2, _ = run_import(
            ad_env.connector(delta_method=method, filter=hidden), ImportMode.DELTA, watermark
        )
        by_anchor = {e.anchor: e for e in delta}
        changed = by_anchor[guids[names[0]]]
        assert changed.modification == ObjectModificationType.REPLACE
        assert changed.attributes["thumbnailPhoto"] == jpeg(1000)
        assert by_anchor[added[f"{ad_env.tag}new"]].attributes["mail"] == "new@mvsync.test"
        for gone in (names[1], names[2], names[3]):
            assert guids[gone] in by_anchor and by_anchor[guids[gone]].modification == ObjectModificationType.DELETE, (
                gone,
                names,
            )
        assert guids[names[4]] not in by_anchor and guids[names[5]] not in by_anchor
        assert watermark2 is not None and watermark2 != watermark

        again, watermark3, _ = run_import(
            ad_env.connector(delta_method=method, filter=hidden), ImportMode.DELTA, watermark2
        )
        assert [e for e in again if e.anchor in set(guids.values()) | set(added.values())] == []
        assert watermark3 is not None
    finally:
        admin = ad_env.admin
        admin.search(outside, "(objectClass=user)", attributes=["1.1"])
        for entry in list(admin.response):
            if entry.get("type") == "searchResEntry":
                admin.delete(entry["dn"])
        admin.delete(outside)


def test_usn_delta_sees_changes_adds_moves_and_tombstones(ad_env: ADTestEnv) -> None:
    _delta_scenario(ad_env, "usn")


def test_dirsync_delta_sees_changes_adds_moves_and_tombstones(ad_env: ADTestEnv) -> None:
    _delta_scenario(ad_env, "dirsync")


def test_auto_prefers_dirsync_when_permitted(ad_env: ADTestEnv) -> None:
    ad_env.add_users(ad_env.specs(1))
    _, watermark, _ = run_import(ad_env.connector(), ImportMode.FULL)
    assert Watermark.loads(watermark or "").dirsync is not None


def test_delta_from_another_dc_or_a_restore_demands_a_full_import(ad_env: ADTestEnv) -> None:
    ad_env.add_users(ad_env.specs(1))
    connector = ad_env.connector(delta_method="usn")
    _, watermark, _ = run_import(connector, ImportMode.FULL)
    data = json.loads(watermark or "")
    foreign = json.dumps({**data, "invocation_id": "00000000-0000-0000-0000-000000000001"})
    with pytest.raises(StopRunError, match="full import") as caught:
        run_import(connector, ImportMode.DELTA, foreign)
    assert "invocationId" in str(caught.value)
    rewound = json.dumps({**data, "usn": data["usn"] + 10_000_000})
    with pytest.raises(StopRunError, match="restored from a backup"):
        run_import(connector, ImportMode.DELTA, rewound)
    with pytest.raises(StopRunError, match="run a full import first"):
        run_import(connector, ImportMode.DELTA, None)


def test_missing_base_dn_names_the_setting(ad_env: ADTestEnv) -> None:
    from connector.sdk import ConfigurationError

    connector = ad_env.connector(base_dns=[f"OU=nope-{ad_env.tag},{ad_env.ad.base_dn}"], delta_method="usn")
    with pytest.raises(ConfigurationError, match="base_dns"):
        run_import(connector, ImportMode.FULL)


@pytest.mark.parametrize("method", ["usn", "dirsync"])
def test_a_delta_import_after_the_base_ou_was_renamed_stops_naming_the_base_dn(ad_env: ADTestEnv, method: str) -> None:
    """Found in the AD pass: with the base OU renamed after the full import, a DirSync delta import
    ended "success" with nothing imported (it reads the naming context), its people kept under DNs that
    are gone; a full or USN delta import said the base DN does not exist. Now DirSync says so too."""
    people = ad_env.sub_ou("people")
    ad_env.add_users(ad_env.specs(2), ou=people)
    connector = ad_env.connector(delta_method=method, base_dns=[people])
    _, watermark, _ = run_import(connector, ImportMode.FULL)
    renamed = f"OU=people-renamed-{ad_env.tag}"
    assert ad_env.admin.modify_dn(people, renamed), ad_env.admin.result
    try:
        with pytest.raises(ConfigurationError) as caught:
            run_import(ad_env.connector(delta_method=method, base_dns=[people]), ImportMode.DELTA, watermark)
        assert str(caught.value) == (
            f"base_dns: the base DN {people!r} does not exist on {ad_env.ad.host} (noSuchObject); check base_dns"
        )
    finally:
        ad_env.admin.modify_dn(f"{renamed},{ad_env.ou}", people.split(",", 1)[0])


def test_a_person_moved_between_base_dns_during_a_full_import_is_not_deleted(
    ad_env: ADTestEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in the AD import pass: a user moved from a base DN the full import had not read yet into one
    it had read (an OU reorganisation while the import ran) was in neither search, so the import staged a
    delete for a person still in scope (the sync then disconnected them). AD's paged searches can miss an
    object moved within one base DN the same way."""
    sales, staff = ad_env.sub_ou("a-sales"), ad_env.sub_ou("b-staff")
    ad_env.add_users(ad_env.specs(2, prefix="s", photos=False), ou=sales)
    moved = ad_env.add_users(ad_env.specs(3, prefix="t", photos=False), ou=staff)
    name = next(iter(moved))
    photos = ad_env.tmp_path / "hr-photos"
    photos.mkdir()
    config = photo_sync_config(ad_env, sales, photos, {"base_dns": [sales, staff], "page_size": 2})
    config["run_profiles"]["Import"] = {"steps": [{"type": "full-import", "agent": "ad", "page_size": 2}]}
    engine = Engine(config_from_dict(config, base_dir=ad_env.tmp_path))
    try:
        assert engine.run_profile("Prepare").status == "success"
        after_first_page(  # the first page read Sales: the user moves from Staff, not read yet, to Sales
            monkeypatch, lambda: ad_env.admin.modify_dn(f"CN={name},{staff}", f"CN={name}", new_superior=sales)
        )
        run = engine.run_profile("Import")
        with engine.store.read() as conn:
            row = ConnectorSpace(conn).get("ad", moved[name])
    finally:
        engine.close()
    step = run.steps[0]
    assert run.status == "success", step.as_dict()
    assert step.counters.get("deletes", 0) == 0, step.as_dict()
    assert row is not None and row.pending_type != "delete" and row.dn == f"CN={name},{sales}", row


@pytest.mark.parametrize(
    ("setting", "value", "name"),
    [
        ("extra_attributes", ["employeeID", "departmentNumbr|string[]"], "departmentNumbr"),
        ("filter_equals", {"deparment": "Sales"}, "deparment"),
        ("filter", "(&(objectClass=user)(!(extensionAtribute15=hidden)))", "extensionAtribute15"),
    ],
)
def test_an_attribute_the_directory_does_not_know_stops_the_import_and_fails_the_check(
    ad_env: ADTestEnv, setting: str, value: object, name: str
) -> None:
    """Found in the AD import pass: a DC ignores an attribute it does not know, so a misspelt extra
    attribute came back empty for every user (a flow of it then emptied the metaverse attribute of
    everyone) and a filter on one matched nobody, while doctor said all was well."""
    ad_env.add_users(ad_env.specs(2, photos=False))
    expected = (
        f"{setting}: {name}: not an attribute of the directory on {ad_env.ad.host} (its schema has no such "
        "lDAPDisplayName), so every user would import it empty and a filter on it matches nobody; check the "
        f"spelling in {setting}"
    )
    with pytest.raises(ConfigurationError) as caught:
        run_import(ad_env.connector(**{setting: value}), ImportMode.FULL)
    assert str(caught.value) == expected
    _, watermark, _ = run_import(ad_env.connector(), ImportMode.FULL)
    with pytest.raises(ConfigurationError) as caught:
        run_import(ad_env.connector(**{setting: value}), ImportMode.DELTA, watermark)
    assert str(caught.value) == expected
    check = ad_env.connector(open=False, **{setting: value}).check()
    assert not check.ok and check.detail == expected


def test_a_value_its_declared_type_cannot_hold_names_the_person_and_the_setting(ad_env: ADTestEnv) -> None:
    """Found in the AD import pass: an extra attribute declared ``|integer`` whose value is "E-12" failed the
    user with "employeeNumber: ValueError: cannot decode as integer": no person (the error showed a GUID
    only), no remedy."""
    name = f"{ad_env.tag}v"
    guids = ad_env.add_users([UserSpec(name, display_name="Vera Valid", extra={"employeeNumber": "E-12"})])
    entries, _, _ = run_import(ad_env.connector(extra_attributes=["employeeNumber|integer"]), ImportMode.FULL)
    [entry] = [e for e in entries if e.anchor == guids[name]]
    assert entry.error is not None and entry.error.name == "cd-invalid-value"
    assert entry.error.display == f"Vera Valid ({name}@{ad_env.ad.upn_suffix})"
    assert entry.error.detail == (
        "employeeNumber: a value is not integer (ValueError): declare it as 'employeeNumber|string' in "
        "extra_attributes, or correct the value in the directory"
    )
