"""A target that keeps its own rendering of an exported value (Exchange Online re-encodes photos).

The in-memory Exchange Online directory here stores ``jpeg:`` + the bytes written, as Graph stores its
own JPEG of an upload; its schema marks ``photo`` ``rendered_by_target``. HR's photo is the master.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.engine.conftest import World, add_users, reconfigure
from tests.engine.test_engine import cs_row


def _hr_master_exo_target(data: dict[str, Any]) -> None:
    data["metaverse"]["precedence"] = {"photo": ["hr", "exo"]}
    exo = data["agents"]["exo"]
    exo["settings"]["rendered"] = ["photo"]
    exo["export_flow"] = [{"object_class": "user", "mv": "photo", "cs": "photo"}]
    data["run_profiles"]["export-exo"] = {"steps": [{"type": "export", "agent": "exo"}]}
    data["run_profiles"]["confirm-exo"] = {
        "steps": [{"type": "full-import", "agent": "exo"}, {"type": "delta-sync", "agent": "exo"}]
    }


@pytest.fixture
def hr_world(world: World) -> World:
    reconfigure(world, _hr_master_exo_target)
    world.exo["render"]["photo"] = lambda data: b"jpeg:" + data
    add_users(world, 3)
    for i in range(3):
        world.hr["objects"][f"hr-{i}"] = {"accountName": f"USER{i:03d}", "photo": f"hr-photo-{i}".encode()}
    world.cycle()
    exported = world.run("export-exo")
    assert exported.steps[0].counters["export_updates"] == 3, exported.as_dict()
    assert world.exo["objects"]["exo-001"]["photo"] == b"jpeg:hr-photo-1"
    return world


def _exo_exports_staged(world: World) -> set[str]:
    return {a for a in ("exo-000", "exo-001", "exo-002") if cs_row(world, "exo", a).export_type is not None}


def test_an_export_the_target_shows_in_its_own_rendering_is_confirmed_and_not_written_again(hr_world: World) -> None:
    confirm = hr_world.run("confirm-exo")
    step = confirm.steps[0]
    assert step.counters["exports_confirmed_rendered"] == 3
    assert "exported-change-not-reimported" not in {e.error_name for e in step.errors}
    assert step.status == "success", confirm.as_dict()
    assert _exo_exports_staged(hr_world) == set()
    # cycle after cycle, nothing is written again (before: the three photos, every cycle)
    for _ in range(2):
        hr_world.cycle()
        again = hr_world.run("export-exo")
        assert again.steps[0].counters.get("export_updates", 0) == 0, again.as_dict()


def test_a_new_master_photo_or_a_photo_changed_in_the_target_is_exported_again(hr_world: World) -> None:
    hr_world.run("confirm-exo")
    hr_world.hr["objects"]["hr-0"]["photo"] = b"hr-photo-0-new"
    hr_world.exo["objects"]["exo-002"]["photo"] = b"set-by-an-admin"
    hr_world.cycle()
    row = cs_row(hr_world, "exo", "exo-000")
    assert _exo_exports_staged(hr_world) == {"exo-000", "exo-002"}
    assert set(json.loads(row.export_changes)) == {"photo"}
    exported = hr_world.run("export-exo")
    assert exported.steps[0].counters["export_updates"] == 2
    assert hr_world.exo["objects"]["exo-000"]["photo"] == b"jpeg:hr-photo-0-new"
    assert hr_world.exo["objects"]["exo-002"]["photo"] == b"jpeg:hr-photo-2"
    assert hr_world.run("confirm-exo").steps[0].counters["exports_confirmed_rendered"] == 2
    assert _exo_exports_staged(hr_world) == set()


def test_a_write_the_target_dropped_is_still_reported_and_exported_again(hr_world: World) -> None:
    hr_world.run("confirm-exo")
    hr_world.hr["objects"]["hr-1"]["photo"] = b"hr-photo-1-new"
    hr_world.cycle()
    hr_world.exo["ignore_attrs"] = {"photo"}  # accepted, but the target still shows the old rendering
    assert hr_world.run("export-exo").steps[0].counters["export_updates"] == 1
    confirm = hr_world.run("confirm-exo")
    assert [e.error_name for e in confirm.steps[0].errors] == ["exported-change-not-reimported"]
    assert confirm.steps[0].counters.get("exports_confirmed_rendered", 0) == 0
    assert _exo_exports_staged(hr_world) == {"exo-001"}
