"""Engine semantics with the in-memory connector: the MIM rules the issue lists, one test each."""

from __future__ import annotations

import hashlib
import json

import pytest
from sqlalchemy import select

from connector.engine import Engine
from connector.sdk import CSEntryChange, ExportStatus
from connector.store import RunHistory
from connector.store.tables import cs_object, mv_object, run_error
from tests.engine.conftest import World, add_users, thumbnails_to_ad


def mv_rows(world: World) -> list[dict]:
    with world.engine.store.read() as conn:
        return [
            {"id": r.id, "attributes": json.loads(r.attributes), "lineage": json.loads(r.lineage)}
            for r in conn.execute(select(mv_object).order_by(mv_object.c.id))
        ]


def cs_row(world: World, agent: str, anchor: str):
    with world.engine.store.read() as conn:
        return conn.execute(select(cs_object).where(cs_object.c.agent == agent, cs_object.c.anchor == anchor)).first()


def test_projection_join_and_flows(world: World) -> None:
    add_users(world, 3)
    world.cycle()
    mvs = mv_rows(world)
    assert len(mvs) == 3
    first = mvs[0]["attributes"]
    assert first["accountName"] == "user000"
    assert first["displayName"] == "User 0"
    assert first["exoPhotoChecksum"] == hashlib.sha256(b"exo-photo-0").hexdigest()
    assert mvs[0]["lineage"]["photo"][0] == "exo"
    # exo joined by its second rule (mail, case-insensitive) since UPN isn't in the metaverse
    assert cs_row(world, "exo", "exo-000").mv_id == mvs[0]["id"]
    # the AD connector now has a pending export of photo and displayName
    row = cs_row(world, "ad", "guid-000")
    assert row.export_type == "update"
    assert set(json.loads(row.export_changes)) == {"thumbnail", "displayName"}


def test_export_then_confirming_import(world: World) -> None:
    add_users(world, 3)
    world.cycle()
    result = world.run("export")
    assert result.status == "success", result.as_dict()
    assert result.steps[0].counters["export_updates"] == 3
    assert world.ad["objects"]["guid-001"]["thumbnail"] == b"exo-photo-1"
    row = cs_row(world, "ad", "guid-001")
    assert row.export_type is None and json.loads(row.unconfirmed)["displayName"] == "User 1"
    confirm = world.run("confirm")
    assert confirm.steps[0].counters["exports_confirmed"] == 6
    row = cs_row(world, "ad", "guid-001")
    assert row.unconfirmed is None and row.export_type is None
    # nothing left to do: a second export writes nothing
    again = world.run("export")
    assert again.steps[0].counters.get("export_updates", 0) == 0


def test_exported_change_not_reimported(world: World) -> None:
    add_users(world, 2)
    world.cycle()
    world.ad["ignore_attrs"] = {"displayName"}  # the directory accepts the write but drops it
    assert world.run("export").status == "success"
    confirm = world.run("confirm")
    names = [e.error_name for e in confirm.steps[0].errors]
    assert names.count("exported-change-not-reimported") == 2
    assert confirm.steps[0].status == "completed-warnings"
    # the sync stages the export again, since the directory still differs
    row = cs_row(world, "ad", "guid-000")
    assert row.export_type == "update" and set(json.loads(row.export_changes)) == {"displayName"}


def test_precedence_fallback_when_top_source_goes_null(world: World) -> None:
    add_users(world, 1)
    world.hr["objects"]["hr-0"] = {"accountName": "USER000", "photo": b"hr-photo"}
    world.cycle()
    assert mv_rows(world)[0]["attributes"]["photo"].startswith("\x00b:" + hashlib.sha256(b"exo-photo-0").hexdigest())
    del world.exo["objects"]["exo-000"]["photo"]
    world.cycle()
    mv = mv_rows(world)[0]
    assert mv["attributes"]["photo"].startswith("\x00b:" + hashlib.sha256(b"hr-photo").hexdigest())
    assert mv["lineage"]["photo"][0] == "hr"
    # and back again when the top source returns
    world.exo["objects"]["exo-000"]["photo"] = b"exo-new"
    world.run("full-import")
    world.run("delta-sync")
    assert mv_rows(world)[0]["lineage"]["photo"][0] == "exo"


def test_ambiguous_join_is_a_per_object_error(world: World) -> None:
    add_users(world, 2, photos=False)
    # both AD users share the mail the exo user joins on (exo joins mail case-insensitively)
    world.ad["objects"]["guid-001"]["mail"] = "user000@example.test"
    world.exo["objects"] = {"exo-x": {"accountName": "nobody", "mail": "USER000@example.test"}}
    world.run("full-import")
    result = world.run("full-sync")
    exo_step = result.steps[1]
    assert [e.error_name for e in exo_step.errors] == ["ambiguous-join"]
    assert exo_step.status == "completed-sync-errors"
    assert cs_row(world, "exo", "exo-x").mv_id is None


def test_deletion_threshold_trips_and_nothing_is_exported(world: World) -> None:
    add_users(world, 10)
    world.cycle()
    world.run("export")
    world.run("confirm")
    for i in range(8):  # mass photo removal at the source
        del world.exo["objects"][f"exo-{i:03d}"]["photo"]
    world.cycle()
    exported_before = len(world.ad["exports"])
    result = world.run("export")
    assert result.status == "stopped-deletion-threshold"
    assert "nothing was exported" in result.steps[0].message
    assert len(world.ad["exports"]) == exported_before
    assert all("thumbnail" in obj for obj in world.ad["objects"].values())
    # under the threshold it goes through
    for i in range(8):
        world.exo["objects"][f"exo-{i:03d}"]["photo"] = f"exo-photo-{i}".encode()
    del world.exo["objects"]["exo-009"]["photo"]
    world.cycle()
    assert world.run("export").status == "success"
    assert "thumbnail" not in world.ad["objects"]["guid-009"]


def test_full_import_of_zero_objects_is_refused(world: World) -> None:
    add_users(world, 3)
    world.cycle()
    world.exo["objects"].clear()
    result = world.run("full-import")
    exo = result.steps[1]
    assert exo.status == "stopped-empty-import"
    assert cs_row(world, "exo", "exo-000").pending_type is None
    override = world.engine.run_profile("full-import", agents={"exo"}, step_overrides={"allow_empty_full_import": True})
    assert override.status == "success"
    assert cs_row(world, "exo", "exo-000").pending_type == "delete"


def test_import_errors_do_not_stop_the_run_and_keep_the_object(world: World) -> None:
    add_users(world, 3)
    world.cycle()
    world.exo["errors"]["exo-001"] = ("read-error", "photo service said 500")
    result = world.run("full-import")
    step = result.steps[1]
    assert step.status == "completed-discovery-errors"
    assert step.errors[0].error_name == "read-error" and step.errors[0].anchor == "exo-001"
    assert cs_row(world, "exo", "exo-001").pending_type is None  # not marked deleted
    with world.engine.store.read() as conn:
        assert (
            conn.execute(select(run_error.c.detail).where(run_error.c.anchor == "exo-001")).scalar()
            == "photo service said 500"
        )


def test_import_errors_of_objects_not_yet_imported_name_the_person(world: World) -> None:
    """A first import refuses two new AD accounts (a value of the wrong type, two values for a
    single-valued attribute) and an entry with no anchor: each error names the person from what the
    entry carries, in the result and in history, where only a GUID (or nothing) was named."""
    world.ad["objects"]["guid-1"] = {"accountName": "ada", "displayName": "Ada Lovelace", "enabled": "yes"}
    world.ad["objects"]["guid-2"] = {"accountName": "alan", "displayName": "Alan Turing", "mail": ["a@x", "b@x"]}
    world.ad["objects"]["guid-3"] = {"accountName": "grace", "displayName": "Grace Hopper"}
    world.cycle()
    world.ad["changes"].append(CSEntryChange.add("user", "", {"accountName": "kay", "displayName": "Mary Kay"}))
    assert world.run("delta-import").status == "completed-discovery-errors"
    with world.engine.store.read() as conn:
        named = conn.execute(select(run_error.c.anchor, run_error.c.display).order_by(run_error.c.id)).all()
    assert [tuple(row) for row in named] == [
        ("guid-1", "Ada Lovelace (ada)"),
        ("guid-2", "Alan Turing (alan)"),
        (None, "Mary Kay (kay)"),
    ]


def test_delta_import_attribute_level_changes(world: World) -> None:
    from connector.sdk import AttributeChange

    add_users(world, 2)
    world.cycle()
    world.exo["changes"].append(
        CSEntryChange.update("user", "exo-001", [AttributeChange.replace("displayName", "Renamed")])
    )
    world.exo["changes"].append(CSEntryChange.delete("user", "exo-000"))
    result = world.run("delta-import")
    assert result.steps[1].counters["updates"] == 1 and result.steps[1].counters["deletes"] == 1
    world.run("delta-sync")
    names = {m["attributes"].get("accountName"): m["attributes"] for m in mv_rows(world)}
    assert names["user001"]["displayName"] == "Renamed"
    assert "photo" not in names["user000"]  # exo disconnected, its contribution withdrawn


def test_a_delta_import_after_a_stage_only_import_counts_a_changed_staged_add_as_an_update(world: World) -> None:
    """MIM's staging counters say what the import found in the connector space, not what the object's
    pending import is: "Adds" are objects the anchor did not find there (a new connector space object),
    "Updates" objects it found whose attributes the change alters. A user staged by a full import (stage
    only), never synchronized, keeps its pending import Add when a delta import changes it, and that
    import counted it among its adds, as if the user were new to the connector space."""
    from connector.sdk import AttributeChange

    add_users(world, 3)
    staged = world.run("full-import")
    assert staged.steps[1].counters["adds"] == 3
    world.exo["changes"].append(
        CSEntryChange.update("user", "exo-001", [AttributeChange.replace("displayName", "Renamed")])
    )
    world.exo["changes"].append(("exo-002", {**world.exo["objects"]["exo-002"], "displayName": "Whole"}))  # PSMA's Add
    world.exo["changes"].append(("exo-009", {"accountName": "user009@example.test", "displayName": "New"}))
    counters = world.run("delta-import").steps[1].counters
    assert (counters.get("adds"), counters.get("updates")) == (1, 2), counters
    assert {a: cs_row(world, "exo", a).pending_type for a in ("exo-001", "exo-002", "exo-009")} == dict.fromkeys(
        ("exo-001", "exo-002", "exo-009"), "add"
    )  # never synchronized: still pending adds
    world.run("full-sync")
    names = {m["attributes"].get("accountName"): m["attributes"] for m in mv_rows(world)}
    assert names["user001"]["displayName"] == "Renamed" and names["user002"]["displayName"] == "Whole"


def test_delta_sync_touches_only_pending_objects(world: World) -> None:
    add_users(world, 50)
    world.cycle()
    world.run("export")
    world.run("confirm")
    world.exo["objects"]["exo-007"]["photo"] = b"changed"
    world.run("full-import")
    result = world.run("delta-sync")
    exo = result.steps[1]
    assert exo.counters["attribute_flows"] >= 1
    assert sum(1 for r in [cs_row(world, "ad", f"guid-{i:03d}") for i in range(50)] if r.export_type) == 1
    assert cs_row(world, "ad", "guid-007").export_type == "update"


def test_a_delta_sync_joins_a_disconnector_as_a_full_sync_would(world: World) -> None:
    """HR files the new hire's photo before AD has the account. Once the account arrives, the
    scheduled cycle (deltas only) must join the photo and stage AD's thumbnail: a delta that left
    the folder's disconnector alone until someone ran a full synchronization disagreed with one."""
    add_users(world, 1, photos=False)
    world.hr["objects"]["newhire"] = {"accountName": "newhire", "photo": b"hr-newhire"}
    # a room mailbox: nobody in AD, a disconnector for good
    world.exo["objects"]["exo-room"] = {"accountName": "room@example.test", "mail": "room@example.test"}
    world.cycle()
    assert cs_row(world, "hr", "newhire").mv_id is None

    account = {"accountName": "newhire", "mail": "newhire@example.test"}
    world.ad["objects"]["guid-new"] = account
    world.ad["changes"].append(("guid-new", account))
    assert world.run("delta-import").status == "success"
    delta = world.run("delta-sync")
    assert delta.status == "success" and delta.steps[2].counters["joins"] == 1
    person = cs_row(world, "ad", "guid-new").mv_id
    assert person is not None and cs_row(world, "hr", "newhire").mv_id == person
    assert "thumbnail" in json.loads(cs_row(world, "ad", "guid-new").export_changes)

    # on the same data a full synchronization finds nothing left to do
    full = world.run("full-sync")
    work = {"joins", "projections", "attribute_flows", "export_updates", "export_updates_changed", "exports_withdrawn"}
    assert [sorted(work & set(s.counters)) for s in full.steps] == [[], [], []]
    # and with the metaverse unchanged since, a delta visits no disconnector (the room mailbox)
    assert [dict(s.counters) for s in world.run("delta-sync").steps] == [{}, {}, {}]


def test_failed_exports_stay_pending_and_are_retried(world: World) -> None:
    add_users(world, 3)
    world.cycle()
    world.ad["fail"]["guid-001"] = (ExportStatus.RETRY, "cd-error")
    result = world.run("export")
    assert result.status == "completed-export-errors"
    row = cs_row(world, "ad", "guid-001")
    assert row.export_type == "update" and json.loads(row.export_error)["name"] == "cd-error"
    world.ad["fail"].clear()
    assert world.run("export").status == "success"
    assert cs_row(world, "ad", "guid-001").export_type is None


def test_a_stop_in_the_middle_of_a_batch_records_the_results_it_carries(world: World) -> None:
    """``StopRunError.results``: what a batch did before the error that stopped its step is recorded
    (the written objects are not exported again), the rest of the batch stays pending with no error."""
    add_users(world, 3)
    world.cycle()
    world.ad["stop_export_after"] = 2  # two written, then the directory goes away in the same batch
    result = world.run("export")
    assert result.status == "stopped-server-down" and result.steps[0].counters.get("export_updates") == 2
    assert result.steps[0].errors == []
    states = [cs_row(world, "ad", f"guid-{i:03d}").export_type for i in range(3)]
    assert states == [None, None, "update"]
    world.ad["stop_export_after"] = None
    assert world.run("export").status == "success"
    assert [c.anchor for c in world.ad["exports"]] == ["guid-000", "guid-001", "guid-002"]  # none twice


def test_dry_run_leaves_the_store_byte_identical(world: World) -> None:
    add_users(world, 5)
    world.cycle()
    world.engine.store.close()
    db = world.tmp_path / "store.db"
    import sqlite3

    def digest() -> str:
        con = sqlite3.connect(db)
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        con.close()
        return hashlib.sha256(db.read_bytes()).hexdigest()

    before = digest()
    world.exo["objects"]["exo-002"]["photo"] = b"new"
    engine = Engine(world.config)
    changes: list[dict] = []
    for profile in ("full-import", "full-sync", "export"):
        result = engine.run_profile(profile, dry_run=True, emit=changes.append)
        assert not result.status.startswith("stopped"), result.as_dict()
    engine.close()
    assert any(c.get("pending_import") == "update" for c in changes)
    assert any(c.get("export") == "update" for c in changes)  # would-be exports are emitted, not sent
    assert digest() == before
    assert world.ad["exports"] == []


def test_dry_run_emits_would_be_exports(world: World) -> None:
    add_users(world, 2)
    world.cycle()
    changes: list[dict] = []
    result = world.engine.run_profile("export", dry_run=True, emit=changes.append)
    assert result.status == "success"
    assert {c["anchor"] for c in changes} == {"guid-000", "guid-001"}
    assert world.ad["exports"] == []
    assert cs_row(world, "ad", "guid-000").export_type == "update"


def test_a_preview_then_the_run_in_one_engine_exports_the_thumbnails(world: World) -> None:
    """A script previews the cycle with ``run_steps(..., dry_run=True)`` and then runs it with the
    same engine. The thumbnails the preview computed were rolled back with it, but the engine
    remembered them: the run staged blobs that were never stored, and the export stopped on them."""
    thumbnails_to_ad(world, 2)
    profiles = world.config.run_profiles
    preview = world.engine.run_steps(
        "preview", [*profiles["full-import"].steps, *profiles["full-sync"].steps], dry_run=True
    )
    assert preview.status == "success", preview.as_dict()
    world.cycle()
    result = world.run("export")
    assert result.status == "success", result.as_dict()
    assert all(obj["thumbnail"].startswith(b"\xff\xd8") for obj in world.ad["objects"].values())  # JPEGs


def test_error_limit_stops_the_step(world: World) -> None:
    add_users(world, 3)
    world.cycle()
    for a in ("exo-000", "exo-001", "exo-002"):
        world.exo["errors"][a] = ("read-error", "x")
    result = world.engine.run_profile("full-import", agents={"exo"}, step_overrides={"error_limit": 2})
    assert result.status == "stopped-error-limit"


def test_mv_object_deleted_when_projecting_source_goes(world: World) -> None:
    add_users(world, 2)
    world.cycle()
    del world.ad["objects"]["guid-000"]
    world.run("full-import")
    world.run("delta-sync")
    accounts = [m["attributes"].get("accountName") for m in mv_rows(world)]
    # the person keeps existing while Exchange Online still has a connector (no deletion rule set)
    assert "user000" not in accounts or len(accounts) == 2
    assert cs_row(world, "ad", "guid-000") is None


def test_a_sync_staging_newer_values_during_an_export_is_not_lost(world: World) -> None:
    """An export holds only its agent's lock: another agent's synchronization may stage newer values on
    the rows being exported. Recording the export's results must keep that newer pending export."""
    add_users(world, 2)
    world.cycle()
    other = Engine(world.config)  # a second process, as far as the store is concerned

    def concurrent_sync() -> None:
        world.exo["objects"]["exo-001"]["photo"] = b"exo-photo-1-new"
        world.ad["during_export"] = None
        for profile in ("delta-import", "delta-sync"):
            assert other.run_profile(profile, agents={"exo"}).status == "success"

    world.exo["changes"].append(("exo-001", dict(world.exo["objects"]["exo-001"], photo=b"exo-photo-1-new")))
    world.ad["during_export"] = concurrent_sync
    try:
        result = world.run("export")
    finally:
        other.close()
    assert result.status == "success", result.as_dict()
    assert world.ad["objects"]["guid-001"]["thumbnail"] == b"exo-photo-1"  # what this export sent
    row = cs_row(world, "ad", "guid-001")
    assert row.export_type == "update"  # the newer photo still waits for the next export
    assert json.loads(row.unconfirmed)["displayName"] == "User 1"
    assert world.run("export").status == "success"
    assert world.ad["objects"]["guid-001"]["thumbnail"] == b"exo-photo-1-new"
    untouched = cs_row(world, "ad", "guid-000")
    assert untouched.export_type is None


def test_a_run_an_engine_bug_ends_says_so_in_history_not_as_an_interruption(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C and stop signals name themselves; anything else that ends a run outside a step (a bug)
    leaves a message saying it was unexpected, so nobody reads a silent ``stopped-interrupted`` as a
    person's Ctrl-C."""

    def broken(*_args: object) -> int:
        raise RuntimeError("the step's history row")

    monkeypatch.setattr(Engine, "_start_step", broken)
    with pytest.raises(RuntimeError):
        world.run("full-import")
    with world.engine.store.transaction() as conn:
        history = RunHistory(conn)
        [run] = history.recent_runs(1)
    assert run.status == "stopped-interrupted"
    assert run.message == "stopped by an unexpected RuntimeError (a bug: the traceback is in the error output)"
