"""More engine rules with the in-memory connector: object-level replace, multi-valued attribute
changes, permanent export failures, Allow Nulls, deletion thresholds, third-party transforms."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from connector.config import ConfigError, DeletionThreshold
from connector.engine import Engine
from connector.sdk import AttributeChange, CSEntryChange, ExportStatus, ObjectModificationType
from connector.store.tables import cs_object, mv_object, run_error, run_step
from tests.engine.conftest import World, add_users, reconfigure
from tests.engine.memory import DIRECTORIES, directory
from tests.imaging.images import photo


def mv_by_account(world: World) -> dict[str, dict[str, Any]]:
    with world.engine.store.read() as conn:
        docs = [json.loads(a) for a in conn.execute(select(mv_object.c.attributes)).scalars()]
    return {d["accountName"]: d for d in docs}


def cs_row(world: World, agent: str, anchor: str) -> Any:
    with world.engine.store.read() as conn:
        return conn.execute(select(cs_object).where(cs_object.c.agent == agent, cs_object.c.anchor == anchor)).first()


def export_and_confirm(world: World) -> None:
    assert world.run("export").status == "success"
    assert world.run("confirm").status == "success"


# ---------------------------------------------------------------------------------- imports
def test_import_of_an_object_level_replace_clears_attributes_it_does_not_name(world: World) -> None:
    add_users(world, 2)
    world.cycle()
    before = mv_by_account(world)["user001"]
    assert before["displayName"] == "User 1" and "photo" in before and "exoPhotoChecksum" in before

    # the whole object again, without displayName and photo: both are gone at the source
    world.exo["changes"].append(
        CSEntryChange.replace(
            "user", "exo-001", {"id": "exo-001", "accountName": "user001@example.test", "mail": "USER001@EXAMPLE.TEST"}
        )
    )
    imported = world.run("delta-import")
    assert imported.steps[1].counters["updates"] == 1
    row = cs_row(world, "exo", "exo-001")
    assert row.pending_type == "update"
    assert set(json.loads(row.pending)) == {"id", "accountName", "mail"}

    assert world.run("delta-sync").status == "success"
    row = cs_row(world, "exo", "exo-001")
    assert row.pending_type is None and set(json.loads(row.hologram)) == {"id", "accountName", "mail"}
    after = mv_by_account(world)
    assert "displayName" not in after["user001"]
    assert "photo" not in after["user001"] and "exoPhotoChecksum" not in after["user001"]
    assert after["user001"]["mail"] == "user001@example.test"  # AD's contribution stays
    assert after["user000"]["displayName"] == "User 0"  # the other person is untouched
    # AD never received those values, so the exports staged for them are withdrawn, not turned into clears
    assert cs_row(world, "ad", "guid-001").export_type is None
    assert cs_row(world, "ad", "guid-000").export_type == "update"


_MV_SCHEMA_WITH_GROUPS = """
[object_types.person]
attributes = [
  { name = "accountName", type = "string" },
  { name = "userPrincipalName", type = "string" },
  { name = "mail", type = "string" },
  { name = "displayName", type = "string" },
  { name = "photo", type = "binary" },
  { name = "adThumbnailChecksum", type = "string" },
  { name = "exoPhotoChecksum", type = "string" },
  { name = "groups", type = "string", multivalued = true },
]
"""


def test_attribute_level_add_and_delete_on_a_multivalued_attribute(world: World) -> None:
    schema = world.tmp_path / "metaverse-groups.toml"
    schema.write_text(_MV_SCHEMA_WITH_GROUPS)

    def groups_flow(data: dict[str, Any]) -> None:
        data["metaverse"]["schema"] = str(schema)
        data["agents"]["exo"]["import_flow"].append({"object_class": "user", "cs": "groups", "mv": "groups"})

    reconfigure(world, groups_flow)
    add_users(world, 2)
    world.exo["objects"]["exo-001"]["groups"] = ["staff", "sales"]
    world.cycle()
    assert mv_by_account(world)["user001"]["groups"] == ["sales", "staff"]
    assert "groups" not in mv_by_account(world)["user000"]

    def delta(*changes: CSEntryChange) -> None:
        world.exo["changes"].extend(changes)
        for profile in ("delta-import", "delta-sync"):
            result = world.run(profile)
            assert result.status == "success", result.as_dict()

    # ADD: new values join the existing ones (a value already there is not doubled)
    delta(CSEntryChange.update("user", "exo-001", [AttributeChange.add("groups", "admins", "staff")]))
    assert json.loads(cs_row(world, "exo", "exo-001").hologram)["groups"] == ["admins", "sales", "staff"]
    assert mv_by_account(world)["user001"]["groups"] == ["admins", "sales", "staff"]

    # DELETE of one value removes only that value; ADD to an object without the attribute creates it
    delta(
        CSEntryChange.update("user", "exo-001", [AttributeChange.delete("groups", "sales")]),
        CSEntryChange.update("user", "exo-000", [AttributeChange.add("groups", "new")]),
    )
    people = mv_by_account(world)
    assert people["user001"]["groups"] == ["admins", "staff"]
    assert people["user000"]["groups"] == ["new"]

    # DELETE without values removes the whole attribute; deleting the last value does too
    delta(
        CSEntryChange.update("user", "exo-001", [AttributeChange.delete("groups")]),
        CSEntryChange.update("user", "exo-000", [AttributeChange.delete("groups", "new")]),
    )
    people = mv_by_account(world)
    assert "groups" not in people["user001"] and "groups" not in people["user000"]
    assert "groups" not in json.loads(cs_row(world, "exo", "exo-001").hologram)
    assert people["user001"]["displayName"] == "User 1"  # attributes the changes do not name are kept


def test_a_join_rule_joins_only_the_metaverse_type_it_names(world: World) -> None:
    """A second object type, ``contact`` (mail contacts, projected by their own agent), holds the
    same mail as an employee. Exchange Online's rules join ``person`` (their default): the mailbox
    must neither join the contact while the person is not there yet, nor find the two ambiguous."""
    schema = world.tmp_path / "metaverse-contacts.toml"
    schema.write_text(_MV_SCHEMA_WITH_GROUPS + '[object_types.contact]\nattributes = [{ name = "mail" }]\n')
    contacts = directory(f"{world.prefix}-contacts")

    def with_contacts(data: dict[str, Any]) -> None:
        data["metaverse"]["schema"] = str(schema)
        settings = {"directory": f"{world.prefix}-contacts", "object_class": "contact"}
        contact = {"object_class": "contact"}
        data["agents"]["contacts"] = {
            "type": data["agents"]["ad"]["type"],
            "settings": settings,
            "projection": [{**contact, "metaverse_type": "contact"}],
            "import_flow": [{**contact, "cs": "mail", "mv": "mail"}],
        }
        steps = [{"type": kind, "agent": "contacts"} for kind in ("full-import", "full-sync")]
        data["run_profiles"]["contacts"] = {"steps": steps}

    reconfigure(world, with_contacts)
    try:
        contacts["objects"]["c-0"] = {"mail": "user000@example.test"}
        assert world.run("contacts").status == "success"
        add_users(world, 1)
        world.run("full-import")
        assert world.engine.run_profile("full-sync", agents={"exo"}).status == "success"
        assert cs_row(world, "exo", "exo-000").mv_id is None  # the person is not there yet
        result = world.run("full-sync")
        assert result.status == "success", result.as_dict()
        person = cs_row(world, "ad", "guid-000").mv_id
        assert cs_row(world, "exo", "exo-000").mv_id == person
        with world.engine.store.read() as conn:
            photo = conn.execute(select(mv_object.c.attributes).where(mv_object.c.id == person)).scalar_one()
        assert "photo" in json.loads(photo)
        # a type the schema does not have is named before anything runs
        reconfigure(world, lambda data: data["agents"]["exo"]["join"][0].update(metaverse_type="persn"))
        with pytest.raises(ConfigError, match=r"agents\.exo\.join\[0\]\.metaverse_type: unknown type 'persn'"):
            world.run("full-sync")
    finally:
        DIRECTORIES.pop(f"{world.prefix}-contacts", None)


# ---------------------------------------------------------------------------------- exports
def test_permanent_export_failure_stays_pending_with_its_error(world: World) -> None:
    add_users(world, 3)
    world.cycle()
    world.ad["fail"]["guid-001"] = (ExportStatus.FAILED, "permission-issue")
    result = world.run("export")
    step = result.steps[0]
    assert result.status == "completed-export-errors" and step.status == "completed-export-errors"
    assert step.counters["export_errors"] == 1 and step.counters["export_retryable"] == 0
    assert step.counters["export_updates"] == 2
    assert [(e.error_name, e.anchor) for e in step.errors] == [("permission-issue", "guid-001")]

    row = cs_row(world, "ad", "guid-001")
    assert row.export_type == "update" and set(json.loads(row.export_changes)) == {"thumbnail", "displayName"}
    assert row.unconfirmed is None
    assert json.loads(row.export_error) == {
        "name": "permission-issue",
        # the connector's detail, then where each value came from (the source to fix)
        "detail": 'injected failure; displayName came from agent "exo", object "CN=exo-001,OU=Test" (metaverse '
        'attribute displayName); thumbnail came from agent "exo", object "CN=exo-001,OU=Test" (metaverse attribute '
        "photo)",
        "status": "failed",
        "attempts": 1,
    }
    assert "thumbnail" not in world.ad["objects"]["guid-001"]
    assert world.ad["objects"]["guid-002"]["thumbnail"] == b"exo-photo-2"  # the rest of the batch went through
    with world.engine.store.read() as conn:
        recorded = conn.execute(
            select(run_error.c.error_name, run_error.c.anchor).where(run_error.c.step_id == step.step_id)
        ).all()
    assert [tuple(r) for r in recorded] == [("permission-issue", "guid-001")]

    # it stays pending: the next export sends it again and counts the attempt
    again = world.run("export")
    assert again.steps[0].counters["export_errors"] == 1 and again.steps[0].counters["export_updates"] == 0
    assert json.loads(cs_row(world, "ad", "guid-001").export_error)["attempts"] == 2


def test_export_flow_allow_null(world: World) -> None:
    """photo -> thumbnail has allow_null = true; displayName -> displayName has the default (false)."""
    add_users(world, 3)
    world.cycle()
    export_and_confirm(world)
    assert world.ad["objects"]["guid-001"]["thumbnail"] == b"exo-photo-1"
    assert world.ad["objects"]["guid-001"]["displayName"] == "User 1"

    del world.exo["objects"]["exo-001"]["photo"]
    del world.exo["objects"]["exo-001"]["displayName"]
    world.cycle()
    person = mv_by_account(world)["user001"]
    assert "photo" not in person and "displayName" not in person
    row = cs_row(world, "ad", "guid-001")
    assert row.export_type == "update" and json.loads(row.export_changes) == {"thumbnail": None}

    result = world.run("export")
    assert result.status == "success", result.as_dict()
    target = world.ad["objects"]["guid-001"]
    assert "thumbnail" not in target  # allow_null = true: the null cleared it
    assert target["displayName"] == "User 1"  # allow_null = false: the null left it alone
    cleared = world.ad["exports"][-1]
    assert cleared.anchor == "guid-001" and [(c.name, c.values) for c in cleared.changes] == [("thumbnail", ())]

    # the confirming import agrees, and nothing is staged again for the untouched displayName
    confirm = world.run("confirm")
    assert confirm.status == "success" and confirm.steps[0].counters["exports_confirmed"] == 1
    assert cs_row(world, "ad", "guid-001").export_type is None


def _stored_step(world: World, step_id: int | None) -> Any:
    with world.engine.store.read() as conn:
        return conn.execute(select(run_step).where(run_step.c.id == step_id)).first()


def test_deletion_threshold_trips_on_percent_alone(world: World) -> None:
    add_users(world, 10)
    world.cycle()
    export_and_confirm(world)
    for i in range(3):  # 3 thumbnail clears: 30 % of the 10 AD objects
        del world.exo["objects"][f"exo-{i:03d}"]["photo"]
    world.cycle()
    exported_before = len(world.ad["exports"])

    percent_only = DeletionThreshold(count=None, percent=25, attributes=("thumbnail",))
    result = world.engine.run_profile("export", step_overrides={"deletion_threshold": percent_only})
    step = result.steps[0]
    assert result.status == "stopped-deletion-threshold"
    assert step.counters["threshold_count"] == 3
    assert "0 object deletes and 3 attribute clears (30.0% of 10) exceed 25.0%;" in step.message
    assert len(world.ad["exports"]) == exported_before
    assert all("thumbnail" in obj for obj in world.ad["objects"].values())
    stored = _stored_step(world, step.step_id)
    assert stored.status == "stopped-deletion-threshold" and "exceed 25.0%" in stored.message
    tripped = json.loads(stored.counters)["deletion_threshold"]  # the figures are in history, not only in text
    assert tripped["tripped"] and tripped["clears"] == 3 and tripped["percent"] == 30.0
    assert cs_row(world, "ad", "guid-000").export_type == "update"  # still staged for a later run

    # a count of 5 alone lets the same three clears through (the profile's own: count 5, 50 %)
    passed = world.run("export")
    assert passed.status == "success"
    assert json.loads(_stored_step(world, passed.steps[0].step_id).counters)["deletion_threshold"]["percent"] == 30.0
    assert sorted(a for a, obj in world.ad["objects"].items() if "thumbnail" not in obj) == [
        "guid-000",
        "guid-001",
        "guid-002",
    ]


def test_a_deletion_threshold_naming_no_exported_attribute_refuses_the_run(world: World) -> None:
    """AD takes ``thumbnailphoto`` for ``thumbnailPhoto``, the threshold did not: spelled otherwise
    than the export flow's attribute, it counted no clear and 8 of 10 photos were cleared through a
    threshold of 5. The run is refused before any step, naming the setting and the right spelling."""
    add_users(world, 10)
    world.cycle()
    export_and_confirm(world)
    for i in range(8):  # a mass photo removal at the source
        del world.exo["objects"][f"exo-{i:03d}"]["photo"]
    world.cycle()
    exported_before = len(world.ad["exports"])
    # a threshold changed for one run, spelled otherwise than the flow's attribute
    typo = DeletionThreshold(count=5, percent=None, attributes=("Thumbnail",))
    problem = r"writes 'Thumbnail', so its clears would never count \(did you mean 'thumbnail'\?\)"
    with pytest.raises(ConfigError, match=r"this run's export step of 'ad': no export flow of agent 'ad' " + problem):
        world.engine.run_profile("export", step_overrides={"deletion_threshold": typo})

    # the profile's own, and an attribute no flow writes at all
    def misspell(data: dict[str, Any]) -> None:
        data["run_profiles"]["export"]["steps"][0]["deletion_threshold"]["attributes"] = ["Thumbnail", "photo"]

    reconfigure(world, misspell)
    with pytest.raises(ConfigError) as refused:
        world.run("export")
    assert str(refused.value).splitlines() == [
        f"config: run_profiles.\"export\".steps[0].deletion_threshold.attributes: no export flow of agent 'ad' {p}"
        for p in (
            "writes 'Thumbnail', so its clears would never count (did you mean 'thumbnail'?)",
            "writes 'photo', so its clears would never count (they write: displayName, thumbnail)",
        )
    ]
    assert len(world.ad["exports"]) == exported_before
    assert all("thumbnail" in obj for obj in world.ad["objects"].values())


def test_clears_staged_while_an_export_runs_wait_for_the_next_threshold(world: World) -> None:
    """The threshold is counted before the first page, and an export holds only its agent's lock:
    a synchronization that removed every photo while a long export ran had its clears read with
    the later pages and sent, 13 of 20 thumbnails through a threshold of 5 objects or 50 %. What the
    threshold did not count waits for the next export, which counts it (and here trips)."""
    add_users(world, 20)
    world.cycle()
    export_and_confirm(world)
    for i in range(20):  # something harmless for everyone: the export has 3 pages of 7
        world.exo["objects"][f"exo-{i:03d}"]["displayName"] = f"Renamed {i}"
    world.cycle()
    other = Engine(world.config)  # a second process, as far as the store is concerned

    def photos_removed_meanwhile() -> None:
        world.ad["during_export"] = None
        for i in range(20):
            del world.exo["objects"][f"exo-{i:03d}"]["photo"]
        for profile in ("full-import", "full-sync"):
            assert other.run_profile(profile, agents={"exo"}).status == "success"

    world.ad["during_export"] = photos_removed_meanwhile
    try:
        result = world.run("export")
    finally:
        other.close()
    assert result.status == "success", result.as_dict()
    step = result.steps[0]
    assert step.counters["export_updates"] == 7 and step.counters["exports_held_for_threshold"] == 13
    assert step.message.startswith("13 object deletes or attribute clears staged while this export ran were left")
    assert all("thumbnail" in obj for obj in world.ad["objects"].values())
    assert world.run("export").status == "stopped-deletion-threshold"
    assert all("thumbnail" in obj for obj in world.ad["objects"].values())


def _deprovision_ad(data: dict[str, Any]) -> None:
    """A person goes with their Exchange Online mailbox, and their AD account is deleted with them."""
    data["agents"]["ad"]["deprovision"] = "delete"
    data["metaverse"]["delete_when_disconnected_from"] = ["exo"]


def test_deletion_threshold_counts_object_deletes_from_deprovisioning(world: World) -> None:
    reconfigure(world, _deprovision_ad)
    add_users(world, 10)
    world.cycle()
    export_and_confirm(world)
    for i in range(4):  # four people leave Exchange Online: their persons go, and their AD accounts with them
        del world.exo["objects"][f"exo-{i:03d}"]
    world.cycle()
    assert len(mv_by_account(world)) == 6
    rows = [cs_row(world, "ad", f"guid-{i:03d}") for i in range(10)]
    assert [r.export_type for r in rows] == ["delete"] * 4 + [None] * 6
    assert all(r.mv_id is None for r in rows[:4])
    exported_before = len(world.ad["exports"])

    deletes_only = DeletionThreshold(count=3, percent=None)  # no attributes listed: only object deletes count
    result = world.engine.run_profile("export", step_overrides={"deletion_threshold": deletes_only})
    assert result.status == "stopped-deletion-threshold"
    assert "4 object deletes and 0 attribute clears (40.0% of 10) exceed count 3;" in result.steps[0].message
    assert len(world.ad["exports"]) == exported_before
    assert len(world.ad["objects"]) == 10

    # raised for one run, the deletes go through
    raised = world.engine.run_profile(
        "export", step_overrides={"deletion_threshold": DeletionThreshold(count=4, percent=None)}
    )
    assert raised.status == "success", raised.as_dict()
    assert raised.steps[0].counters["export_deletes"] == 4
    assert sorted(world.ad["objects"]) == [f"guid-{i:03d}" for i in range(4, 10)]
    assert all(cs_row(world, "ad", f"guid-{i:03d}").export_type is None for i in range(10))


# ------------------------------------------------------------------------------- transforms
_THIRD_PARTY_MODULE = "mvsync_thirdparty_shout"


@pytest.fixture
def third_party_transform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], None]]:
    """Returns ``install()``: puts a distribution that registers ``shout`` under ``mvsync.transforms``
    on sys.path, the way ``pip install`` of a third-party package would (a module and its dist-info)."""
    site = tmp_path / "site-packages"

    def install() -> None:
        site.mkdir()
        (site / f"{_THIRD_PARTY_MODULE}.py").write_text(
            "def shout_transform(suffix='!'):\n"
            "    def apply(value):\n"
            "        return None if value is None else str(value).upper() + suffix\n"
            "    return apply\n"
        )
        info = site / f"{_THIRD_PARTY_MODULE}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: mvsync-thirdparty-shout\nVersion: 1.0\n")
        (info / "entry_points.txt").write_text(f"[mvsync.transforms]\nshout = {_THIRD_PARTY_MODULE}:shout_transform\n")
        monkeypatch.syspath_prepend(str(site))

    yield install
    sys.modules.pop(_THIRD_PARTY_MODULE, None)


def test_third_party_transform_registered_as_an_entry_point(
    world: World, third_party_transform: Callable[[], None]
) -> None:
    def shout_flow(data: dict[str, Any]) -> None:
        data["agents"]["ad"]["export_flow"].append(
            {"object_class": "user", "mv": "displayName", "cs": "checksum", "transform": "shout(suffix='!')"}
        )

    reconfigure(world, shout_flow)
    add_users(world, 2)
    # not installed yet: the configuration is refused before anything runs
    with pytest.raises(ConfigError, match=r"agents\.ad\.export_flow\[2\]\.transform: unknown name 'shout'"):
        world.run("full-import")
    assert cs_row(world, "ad", "guid-000") is None

    third_party_transform()
    world.cycle()
    row = cs_row(world, "ad", "guid-001")
    assert json.loads(row.export_changes)["checksum"] == "USER 1!"
    assert world.run("export").status == "success"
    assert world.ad["objects"]["guid-001"]["checksum"] == "USER 1!"
    assert world.ad["objects"]["guid-000"]["checksum"] == "USER 0!"
    # the transformed value is what the confirming import finds: confirmed, nothing staged again
    confirm = world.run("confirm")
    assert confirm.status == "success" and confirm.steps[0].counters["exports_not_reimported"] == 0
    assert cs_row(world, "ad", "guid-001").export_type is None


def test_a_photo_an_import_transform_cannot_read_keeps_the_earlier_one(world: World) -> None:
    """The HR folder's photos are normalized on the way in (an import flow through ``thumbnail``).
    A broken upload replacing someone's photo used to withdraw the folder's photo from the metaverse,
    and AD's thumbnail was staged for clearing; the error then vanished from the next delta. The
    earlier photo stays, and the file stays in error until it is fixed."""

    def normalized(data: dict[str, Any]) -> None:
        data["agents"]["hr"]["import_flow"][0]["transform"] = "thumbnail(size=200, max_bytes=100000)"

    reconfigure(world, normalized)
    add_users(world, 1, photos=False)
    world.hr["objects"]["user000"] = {"accountName": "user000", "photo": photo(1, 300)}
    world.cycle()
    export_and_confirm(world)
    thumbnail = world.ad["objects"]["guid-000"]["thumbnail"]

    world.hr["objects"]["user000"]["photo"] = b"a broken upload"
    world.run("full-import")
    for _ in range(2):  # the error is there on every delta until the file is fixed
        hr = world.run("delta-sync").steps[2]
        assert hr.status == "completed-sync-errors" and [e.error_name for e in hr.errors] == ["invalid-image"]
    assert "photo" in mv_by_account(world)["user000"]
    assert cs_row(world, "ad", "guid-000").export_type is None
    assert world.run("export").status == "success" and world.ad["objects"]["guid-000"]["thumbnail"] == thumbnail

    world.hr["objects"]["user000"]["photo"] = photo(2, 300)
    world.run("full-import")
    assert world.run("delta-sync").status == "success"
    assert cs_row(world, "hr", "user000").sync_error is None
    assert cs_row(world, "ad", "guid-000").export_type == "update"


def test_an_export_flow_error_in_another_agents_sync_names_the_person(world: World) -> None:
    """Exchange Online's sync computes AD's thumbnail; a photo the transform cannot read is an error
    of that sync about an AD account. It names the person and the agent whose flow failed, in the
    result and in history (Exchange Online holds no object with the AD anchor to name it from), and the
    agent the photo came from (before, only the flow: the source to fix was left to be worked out)."""

    def thumbnail(data: dict[str, Any]) -> None:
        data["agents"]["ad"]["export_flow"][0]["transform"] = "thumbnail(size=96, max_bytes=10240)"

    reconfigure(world, thumbnail)
    add_users(world, 2)  # their Exchange Online "photos" are not images
    world.run("full-import")
    exo_sync = world.run("full-sync").steps[1]
    assert exo_sync.agent == "exo" and exo_sync.status == "completed-sync-errors"
    assert [(e.anchor, e.display) for e in exo_sync.errors] == [
        ("guid-000", "User 0 (user000)"),
        ("guid-001", "User 1 (user001)"),
    ]
    assert exo_sync.errors[0].detail.startswith("export flow photo -> ad.thumbnail: ")
    # and where the photo came from: the value to fix is there, not in AD
    assert exo_sync.errors[0].detail.endswith('; thumbnail came from agent "exo" (metaverse attribute photo)')
    with world.engine.store.read() as conn:
        stored = conn.execute(select(run_error.c.display).order_by(run_error.c.id)).scalars().all()
    assert stored == ["User 0 (user000)", "User 1 (user001)"]


def test_a_deleted_person_releases_the_connectors_of_every_agent(world: World) -> None:
    """When the deletion rule removes a person, the connectors it had in agents WITHOUT export flows
    (Exchange Online, the folder here) are disconnected too, or staged for deletion when their agent
    says ``deprovision = "delete"``: no connector-space object is left linked to a person that is gone."""
    from connector.doctor import run_doctor

    def rules(data: dict[str, Any]) -> None:
        data["metaverse"]["delete_when_disconnected_from"] = ["ad"]
        data["agents"]["hr"]["deprovision"] = "delete"

    reconfigure(world, rules)
    add_users(world, 3)
    for i in range(3):
        world.hr["objects"][f"user{i:03d}"] = {"accountName": f"user{i:03d}", "photo": f"hr-{i}".encode()}
    world.cycle()
    joined = cs_row(world, "exo", "exo-001").mv_id
    assert joined is not None and cs_row(world, "hr", "user001").mv_id == joined
    del world.ad["objects"]["guid-001"]
    world.cycle()
    assert "user001" not in mv_by_account(world)
    exo = cs_row(world, "exo", "exo-001")
    assert exo.mv_id is None and exo.export_type is None  # disconnected (the default)
    hr = cs_row(world, "hr", "user001")
    assert hr.mv_id is None and hr.export_type == "delete"  # its agent deprovisions by deleting
    assert cs_row(world, "exo", "exo-000").mv_id is not None  # the others keep their person
    report = run_doctor(world.config, connect=False)
    assert report.ok, report.as_dict()


def test_an_account_deleted_and_created_again_in_one_import_gets_its_own_person(world: World) -> None:
    """The admin deletes user001's AD account and creates it again (a new objectGUID, the same
    sAMAccountName); the deletion rule deletes a person whose AD account goes. The new account
    joined the person the same chunk then deleted, and pointed at its id; the next projection
    reused the id, and the next new hire's photo was exported to user001's account."""
    reconfigure(world, lambda data: data["metaverse"].update(delete_when_disconnected_from=["ad"]))
    add_users(world, 2)
    world.cycle()
    del world.ad["objects"]["guid-001"]
    world.ad["objects"]["guid-new"] = {"accountName": "user001", "mail": "user001@example.test"}
    world.run("full-import")
    assert world.run("delta-sync").status == "success"
    with world.engine.store.read() as conn:
        people = set(conn.execute(select(mv_object.c.id)).scalars())
    assert cs_row(world, "ad", "guid-new").mv_id in people
    assert cs_row(world, "exo", "exo-001").mv_id == cs_row(world, "ad", "guid-new").mv_id  # joined again

    world.ad["objects"]["guid-999"] = {"accountName": "user999", "mail": "user999@example.test"}
    world.hr["objects"]["user999"] = {"accountName": "user999", "photo": b"photo-of-user999"}
    world.run("full-import")
    assert world.run("delta-sync").status == "success"
    assert world.run("export").status == "success"
    assert world.ad["objects"]["guid-new"]["thumbnail"] == b"exo-photo-1"
    assert world.ad["objects"]["guid-999"]["thumbnail"] == b"photo-of-user999"


def test_an_account_only_in_ad_deleted_and_created_again_keeps_a_person(world: World) -> None:
    """The default deletion rule (no connector left) and a person only AD knows: the account deleted
    and created again in one import must leave the new account joined to a person that exists."""
    account = {"accountName": "solo", "mail": "solo@example.test"}
    world.ad["objects"]["guid-solo"] = account
    world.cycle()
    del world.ad["objects"]["guid-solo"]
    world.ad["objects"]["guid-solo-2"] = account
    world.run("full-import")
    assert world.run("delta-sync").status == "success"
    with world.engine.store.read() as conn:
        people = {
            json.loads(a)["accountName"]: i for i, a in conn.execute(select(mv_object.c.id, mv_object.c.attributes))
        }
    assert cs_row(world, "ad", "guid-solo-2").mv_id == people["solo"]


# ------------------------------------------------------------------------------ rule changes
def test_a_full_sync_applies_a_reordered_precedence(world: World) -> None:
    """The identity engineer puts the HR folder above Exchange Online for photos and runs the
    Full Synchronization the README prescribes after a rule change: the folder's photo must win,
    in the metaverse, its lineage and the AD export, although neither source changed."""
    add_users(world, 2)
    for i in range(2):
        world.hr["objects"][f"user{i:03d}"] = {"accountName": f"user{i:03d}", "photo": f"hr-{i}".encode()}
    world.cycle()
    export_and_confirm(world)
    assert world.ad["objects"]["guid-000"]["thumbnail"] == b"exo-photo-0"

    reconfigure(world, lambda data: data["metaverse"]["precedence"].update(photo=["hr", "exo"]))
    result = world.run("full-sync")
    assert result.status == "success", result.as_dict()
    with world.engine.store.read() as conn:
        lineage = [json.loads(t)["photo"][0] for t in conn.execute(select(mv_object.c.lineage)).scalars()]
    assert lineage == ["hr", "hr"]
    assert world.run("export").status == "success"
    assert [world.ad["objects"][f"guid-{i:03d}"]["thumbnail"] for i in range(2)] == [b"hr-0", b"hr-1"]


def test_a_full_sync_recalls_what_an_agent_without_import_flows_contributed(world: World) -> None:
    """The engineer retires the HR folder's photos by deleting its import flows (keeping the agent
    and its join for now) and runs a Full Synchronization: the folder's photo leaves the metaverse
    and AD's thumbnail is staged for clearing, as when one of several flows is removed."""
    add_users(world, 1, photos=False)
    world.hr["objects"]["user000"] = {"accountName": "user000", "photo": b"hr-0"}
    world.cycle()
    export_and_confirm(world)
    assert world.ad["objects"]["guid-000"]["thumbnail"] == b"hr-0"

    reconfigure(world, lambda data: data["agents"]["hr"].update(import_flow=[]))
    assert world.run("full-sync").status == "success"
    assert "photo" not in mv_by_account(world)["user000"]
    assert json.loads(cs_row(world, "ad", "guid-000").export_changes) == {"thumbnail": None}


def test_a_full_sync_withdraws_the_exports_of_removed_export_flows(world: World) -> None:
    """The engineer stops writing to AD by deleting its export flows (and the threshold that named
    their attribute) before the staged photos went out. After the Full Synchronization nothing is
    pending, and the export writes nothing: the staged values were written anyway (AD's scope guard
    refuses them: pending, and failing, for ever)."""
    add_users(world, 2)
    world.cycle()
    assert cs_row(world, "ad", "guid-000").export_type == "update"

    def no_export_flows(data: dict[str, Any]) -> None:
        data["agents"]["ad"]["export_flow"] = []
        del data["run_profiles"]["export"]["steps"][0]["deletion_threshold"]

    reconfigure(world, no_export_flows)
    result = world.run("full-sync")
    assert result.status == "success" and result.steps[0].counters["exports_withdrawn"] == 2
    assert [cs_row(world, "ad", f"guid-{i:03d}").export_type for i in range(2)] == [None, None]
    assert world.run("export").status == "success"
    assert world.ad["exports"] == []


def test_a_metaverse_id_is_never_given_again(world: World) -> None:
    """Ids were the highest id + 1: the newest person deleted, the next one projected got the same id,
    so run history, console links and ``mvsync mv show ID`` about the first named the second (found
    by the engine pass). A deleted person's id now stays unused, across runs."""
    reconfigure(world, lambda data: data["metaverse"].update(delete_when_disconnected_from=["ad"]))
    add_users(world, 2)  # people who stay (an import that finds nobody stops as empty)
    world.ad["objects"]["guid-old"] = {"accountName": "leaver", "mail": "leaver@example.test"}
    world.cycle()
    leaver = cs_row(world, "ad", "guid-old").mv_id
    with world.engine.store.read() as conn:
        assert leaver == max(conn.execute(select(mv_object.c.id)).scalars())  # the newest person
    del world.ad["objects"]["guid-old"]
    world.run("full-import")
    assert world.run("delta-sync").status == "success"
    with world.engine.store.read() as conn:
        assert leaver not in set(conn.execute(select(mv_object.c.id)).scalars())  # deleted with its account
    world.ad["objects"]["guid-joiner"] = {"accountName": "joiner", "mail": "joiner@example.test"}
    world.run("full-import")
    assert world.run("delta-sync").status == "success"
    assert cs_row(world, "ad", "guid-joiner").mv_id not in (None, leaver)


def test_an_exported_delete_the_import_still_finds_says_that_nothing_deletes_it_again(world: World) -> None:
    """The confirming import of a deprovisioning delete that did not take (the directory refused it
    quietly, or the account was created again) said "it will be exported again after sync", but the
    object is no longer joined and no sync stages its delete again (found by the engine pass): the
    reader waited for nothing. It now says so, and what to do."""

    reconfigure(world, _deprovision_ad)
    add_users(world, 3)
    world.cycle()
    export_and_confirm(world)
    del world.exo["objects"]["exo-000"]  # the person goes, and their AD account is to be deleted
    world.cycle()
    kept = dict(world.ad["objects"]["guid-000"])
    assert world.run("export").status == "success"
    world.ad["objects"]["guid-000"] = kept  # the delete did not take
    confirm = world.run("confirm")
    [error] = [e for e in confirm.steps[0].errors if e.error_name == "exported-change-not-reimported"]
    assert error.detail.startswith("the object was exported as deleted, but the import still finds it")
    assert "no sync deletes it again; delete it in the directory if it should go" in error.detail
    assert world.run("delta-sync").status == "success"
    assert cs_row(world, "ad", "guid-000").export_type != "delete"  # what the message says: not staged again


def test_a_delete_staged_for_an_object_that_joins_again_is_withdrawn(world: World) -> None:
    """Found in the AD export pass: a deprovisioning delete stays staged on the connector-space object, and
    when the object joined a person again (the mailbox restored before the export ran, or deprovisioning
    set back to "disconnect" and a full sync projecting the account again), the delete stayed: the next
    export deleted the account of the person it now belongs to. Joining or projecting withdraws it."""
    reconfigure(world, _deprovision_ad)
    add_users(world, 3)
    world.cycle()
    export_and_confirm(world)
    mailbox = world.exo["objects"].pop("exo-000")  # the person leaves: their AD account is to be deleted
    world.cycle()
    assert cs_row(world, "ad", "guid-000").export_type == "delete"
    world.exo["objects"]["exo-000"] = mailbox  # restored before the export ran
    world.run("full-import")
    synced = world.run("full-sync")
    assert sum(s.counters.get("export_deletes_withdrawn", 0) for s in synced.steps) == 1, synced.as_dict()
    row = cs_row(world, "ad", "guid-000")
    assert row.mv_id is not None and row.export_type != "delete", row
    assert world.run("export").status == "success"
    assert "guid-000" in world.ad["objects"]  # the account of the person it belongs to again is kept
    assert not any(e.modification == ObjectModificationType.DELETE for e in world.ad["exports"])


def test_a_tripped_threshold_names_the_limit_it_exceeded_and_how_to_raise_it(world: World) -> None:
    """One photo removed in a one-person directory under count 5 / 50 % (only the percent trips):
    the message named both limits as exceeded ("1 clear ... exceed count 5 / 50.0%"), and "raise
    the threshold for this run" pointed at an option that does not exist (README: a copy of the
    profile)."""
    add_users(world, 1)
    world.cycle()
    export_and_confirm(world)
    del world.exo["objects"]["exo-000"]["photo"]
    world.cycle()
    result = world.run("export")
    message = result.steps[0].message
    assert result.status == "stopped-deletion-threshold"
    assert "0 object deletes and 1 attribute clears (100.0% of 1) exceed 50.0%;" in message
    assert "count 5" not in message
    assert "for this run" not in message
    assert 'raise deletion_threshold of the export step of "ad" in a copy of the run profile' in message


def test_a_delta_sync_joins_the_mailbox_that_a_deleted_one_leaves_its_person_to(world: World) -> None:
    """A mailbox created again in Exchange Online (a new object, same mail) is imported while the old
    one is still there: it cannot join the person the old one holds. The delta synchronization that
    disconnects the old one must join the new one, as a full synchronization does. It did not (the
    metaverse had not changed since the agent's last synchronization, so its disconnectors were not
    visited): the person's AD thumbnail clear was staged, and where the old mailbox's contribution was
    not the metaverse's value (outranked) the new one stayed unjoined through every delta."""
    add_users(world, 1)
    world.exo["objects"]["exo-new"] = {**world.exo["objects"]["exo-000"], "photo": b"exo-new-photo"}
    world.cycle()
    export_and_confirm(world)
    assert world.ad["objects"]["guid-000"]["thumbnail"] == b"exo-photo-0"
    assert cs_row(world, "exo", "exo-new").mv_id is None
    for profile in ("delta-import", "delta-sync"):
        world.run(profile)
    del world.exo["objects"]["exo-000"]
    world.exo["changes"].append(CSEntryChange.delete("user", "exo-000"))
    world.run("delta-import")
    result = world.run("delta-sync")
    assert result.steps[1].counters["joins"] == 1
    assert cs_row(world, "exo", "exo-new").mv_id == cs_row(world, "ad", "guid-000").mv_id
    staged = json.loads(cs_row(world, "ad", "guid-000").export_changes)
    assert staged["thumbnail"] is not None  # the new photo, never a clear
    world.run("export")
    assert world.ad["objects"]["guid-000"]["thumbnail"] == b"exo-new-photo"


def test_a_sync_frees_a_deleted_objects_person_before_it_judges_the_agents_other_objects(world: World) -> None:
    """Objects are visited in id order, so an unjoined mailbox older than the deleted one was judged
    while the person was still held: it stayed unjoined, and with the metaverse unchanged (the deleted
    mailbox's photo being the same) no later delta visited it again. A sync now disconnects the
    agent's deleted objects first."""
    add_users(world, 1)
    older = {"accountName": "nobody@example.test", "mail": "NOBODY@EXAMPLE.TEST", "photo": b"exo-photo-0"}
    world.exo["objects"] = {"exo-0-old": older, **world.exo["objects"]}  # listed first: the lower id
    world.cycle()
    export_and_confirm(world)
    assert cs_row(world, "exo", "exo-0-old").id < cs_row(world, "exo", "exo-000").id
    assert cs_row(world, "exo", "exo-0-old").mv_id is None  # matches nobody yet
    # in one delta: the older mailbox takes the person's address, and the one holding the person goes
    older.update(accountName="user000@example.test", mail="USER000@EXAMPLE.TEST", displayName="User 0")
    del world.exo["objects"]["exo-000"]
    world.exo["changes"] += [
        CSEntryChange.replace("user", "exo-0-old", {"id": "exo-0-old", **older}),
        CSEntryChange.delete("user", "exo-000"),
    ]
    world.run("delta-import")
    result = world.run("delta-sync")
    assert result.steps[1].counters["joins"] == 1, result.as_dict()
    assert cs_row(world, "exo", "exo-0-old").mv_id == cs_row(world, "ad", "guid-000").mv_id
    for profile in ("delta-sync", "export"):
        world.run(profile)
    assert world.ad["objects"]["guid-000"]["thumbnail"] == b"exo-photo-0"  # never cleared


def test_a_join_matches_a_name_written_in_either_unicode_normalization_form(world: World) -> None:
    """An account name typed on one system in composed form (NFC, ``é``) and on another in decomposed
    form (NFD, ``e`` + combining acute: macOS file names, some HR exports) is the same name: AD's own
    comparison finds one by the other, and the join must too, or the person silently gets no photo.
    Two people whose names differ only in that form are a real ambiguity: named, never a pick."""
    composed, decomposed = "jos\u00e9", "jose\u0301"
    world.ad["objects"] = {"guid-0": {"accountName": decomposed, "mail": "jose@example.test"}}
    world.hr["objects"] = {"hr-0": {"accountName": composed.upper(), "photo": b"hr-photo"}}
    world.cycle()
    assert cs_row(world, "hr", "hr-0").mv_id == cs_row(world, "ad", "guid-0").mv_id is not None

    world.ad["objects"]["guid-1"] = {"accountName": "zo\u00eb", "mail": "zoe1@example.test"}
    world.ad["objects"]["guid-2"] = {"accountName": "zoe\u0308", "mail": "zoe2@example.test"}
    world.hr["objects"]["hr-1"] = {"accountName": "zo\u00eb", "photo": b"hr-photo-1"}
    world.run("full-import")
    result = world.run("full-sync")
    hr_step = result.steps[2]
    assert [e.error_name for e in hr_step.errors] == ["ambiguous-join"], result.as_dict()
    assert cs_row(world, "hr", "hr-1").mv_id is None


def test_a_rule_naming_what_the_connector_s_schema_lacks_stops_the_import_naming_the_key(world: World) -> None:
    """Found by QA: an import flow from ``EXOFoto`` (for ``EXOPhoto``) or a projection of ``EXOUsers`` was
    accepted; every step succeeded and no photo ever reached the metaverse. The import step, which asks
    the connector for its schema, now stops ``stopped-configuration`` naming each key and the name it
    resembles; an agent whose rules are right imports as before. Case is no typo: the engine matches
    object classes without regard to it, and an attribute in another case is left to the connector."""

    def misspelt(data: dict[str, Any]) -> None:
        data["agents"]["exo"]["import_flow"][0]["cs"] = "phto"
        data["agents"]["exo"]["join"][1]["match"][0]["cs"] = "mial"
        data["agents"]["ad"]["projection"][0]["object_class"] = "usr"
        data["agents"]["hr"]["import_flow"][0]["object_class"] = "USER"
        data["agents"]["hr"]["import_flow"][0]["cs"] = "Photo"
        for agent in ("ad", "exo", "hr"):
            data["run_profiles"][f"{agent}-full"] = {"steps": [{"type": "full-import", "agent": agent}]}

    reconfigure(world, misspelt)
    add_users(world, 3)
    assert world.run("hr-full").status == "success"
    exo, ad = world.run("exo-full").steps[0], world.run("ad-full").steps[0]
    assert exo.status == ad.status == "stopped-configuration"
    assert exo.message is not None and ad.message is not None
    assert exo.message.splitlines() == [
        "agents.exo.join[1].match.cs: object class 'user' of the exo agent has no attribute 'mial': did you mean "
        "'mail'?",
        "agents.exo.import_flow[0].cs: object class 'user' of the exo agent has no attribute 'phto': did you mean "
        "'photo'?",
    ]
    assert (
        ad.message
        == "agents.ad.projection[0].object_class: the ad agent has no object class 'usr': did you mean 'user'?"
    )
