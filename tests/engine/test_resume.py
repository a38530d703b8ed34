"""A full import stopped half-way resumes from its last committed page (on SQLite and PostgreSQL).

The in-memory connector's checkpoint is an offset into its sorted objects, as durable as an LDAP
paged-results cookie is not; ``stop_after_page`` stops a step the way ``stopped-throttled`` or a
crash would, after some pages were committed.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from connector.sdk import StopRunError
from connector.store import SqlStore
from connector.store.tables import agent_state, cs_object
from tests.engine.conftest import World, numbered_ad_users, recorded_step, with_profiles
from tests.engine.memory import directory

PROFILES = {
    "ad-full": {"steps": [{"type": "full-import", "agent": "ad", "page_size": 5}]},
    "ad-full-no-resume": {
        "steps": [{"type": "full-import", "agent": "ad", "page_size": 5, "resume_interrupted": False}]
    },
    "ad-delta": {"steps": [{"type": "delta-import", "agent": "ad", "page_size": 5}]},
    "ad-sync": {"steps": [{"type": "full-sync", "agent": "ad"}]},
}


def _cs(world: World) -> dict[str, Any]:
    store = SqlStore(world.config.store_url())
    try:
        with store.read() as conn:
            rows = conn.execute(
                select(cs_object.c.anchor, cs_object.c.pending_type).where(cs_object.c.agent == "ad")
            ).all()
            checkpoint = conn.execute(
                select(agent_state.c.import_checkpoint).where(agent_state.c.agent == "ad")
            ).scalar()
    finally:
        store.close()
    return {"objects": {r.anchor: r.pending_type for r in rows}, "checkpoint": checkpoint}


def test_an_interrupted_full_import_resumes_and_judges_deletions_over_the_whole_listing(
    world: World, tmp_path: Path
) -> None:
    engine = with_profiles(world, tmp_path, PROFILES)
    numbered_ad_users(world, 25)
    assert engine.run_profile("ad-full").status == "success"
    assert (
        engine.run_profile("ad-sync").status == "success"
    )  # holograms: a later full import that misses an object marks it deleted
    del world.ad["objects"]["u22"]  # gone from the directory, in the part the resumed run lists
    world.ad["stop_after_page"] = 2
    world.ad["requests"].clear()

    stopped = engine.run_profile("ad-full")
    assert stopped.status == "stopped-throttled"
    assert _cs(world)["checkpoint"] is not None  # pages 1 and 2 were committed with their checkpoint

    world.ad["requests"].clear()
    resumed = engine.run_profile("ad-full")
    step = resumed.steps[0]
    assert resumed.status == "success", resumed.as_dict()
    assert world.ad["requests"][0] == 10  # started at the page after the last committed one
    assert step.counters["resumed_from_step"] == stopped.steps[0].step_id
    assert step.counters["resumed_after_page"] == 2 and step.counters["resumed_entries"] == 10
    assert step.message.startswith("resumed the full import interrupted in step")
    cs = _cs(world)
    # u00..u09 were seen by the interrupted step only: adopted, not deleted; u22 is gone
    assert {a for a, pending in cs["objects"].items() if pending == "delete"} == {"u22"}
    assert cs["checkpoint"] is None  # finished: nothing left to resume


def _recorded_message(world: World, run_id: int) -> str | None:
    """The message history keeps for the only step of run ``run_id``."""
    from connector.store import RunHistory

    store = SqlStore(world.config.store_url())
    try:
        with store.read() as conn:
            [step] = RunHistory(conn).steps(run_id)
    finally:
        store.close()
    return step.message


def test_a_delta_import_that_changes_objects_discards_the_checkpoint_and_says_so(world: World, tmp_path: Path) -> None:
    """A resumed full import lists only what follows its checkpoint, so an object the delta import added
    before it would be marked deleted at the end: the next full import starts over, and history says why."""
    engine = with_profiles(world, tmp_path, PROFILES)
    numbered_ad_users(world, 20)
    world.ad["stop_after_page"] = 1
    assert engine.run_profile("ad-full").status == "stopped-throttled"
    world.ad["changes"].append(("u005a", {"displayName": "New Hire"}))
    delta = engine.run_profile("ad-delta")
    assert delta.status == "success"
    assert "the full import interrupted in step" in (delta.steps[0].message or "")
    assert "will start over" in (_recorded_message(world, delta.run_id) or "")
    assert _cs(world)["checkpoint"] is None
    world.ad["requests"].clear()
    again = engine.run_profile("ad-full")
    assert again.status == "success" and world.ad["requests"][0] == 0
    assert "resumed_from_step" not in again.steps[0].counters


@pytest.mark.parametrize("delta", ["changes-nothing", "stops-before-a-page"])
def test_a_delta_import_that_changes_nothing_keeps_the_checkpoint(world: World, tmp_path: Path, delta: str) -> None:
    """Found by QA: a scheduled delta import that found Graph unreachable (or had no delta state yet to
    read) dropped the interrupted full import's checkpoint before it read anything, and the next full
    import listed all 37 pages again. Only a delta import that changes objects makes resuming unsafe."""
    engine = with_profiles(world, tmp_path, PROFILES)
    numbered_ad_users(world, 20)
    world.ad["stop_after_page"] = 2
    assert engine.run_profile("ad-full").status == "stopped-throttled"
    saved = _cs(world)["checkpoint"]
    if delta == "stops-before-a-page":

        def unreachable(page_number: int) -> None:
            raise StopRunError("Graph did not answer", status="stopped-server-down")

        world.ad["during_import"] = unreachable
    ran = engine.run_profile("ad-delta")
    world.ad.pop("during_import", None)
    assert ran.status == ("success" if delta == "changes-nothing" else "stopped-server-down")
    assert _cs(world)["checkpoint"] == saved
    world.ad["requests"].clear()
    resumed = engine.run_profile("ad-full")
    assert resumed.status == "success" and world.ad["requests"][0] == 10
    assert resumed.steps[0].counters["resumed_after_page"] == 2


def test_a_refused_checkpoint_starts_over_and_says_so(world: World, tmp_path: Path) -> None:
    engine = with_profiles(world, tmp_path, PROFILES)
    numbered_ad_users(world, 20)
    world.ad["stop_after_page"] = 2
    assert engine.run_profile("ad-full").status == "stopped-throttled"
    world.ad["refuse_resume"] = True
    world.ad["requests"].clear()
    again = engine.run_profile("ad-full")
    assert again.status == "success"
    assert world.ad["requests"][0] == 0
    assert "could not resume" in again.steps[0].message and "rebuilt" in again.steps[0].message
    assert not any(p == "delete" for p in _cs(world)["objects"].values())


def test_resume_interrupted_false_starts_over(world: World, tmp_path: Path) -> None:
    engine = with_profiles(world, tmp_path, PROFILES)
    numbered_ad_users(world, 20)
    world.ad["stop_after_page"] = 2
    assert engine.run_profile("ad-full").status == "stopped-throttled"
    world.ad["requests"].clear()
    assert engine.run_profile("ad-full-no-resume").status == "success"
    assert world.ad["requests"][0] == 0
    assert _cs(world)["checkpoint"] is None


def test_a_dry_run_neither_resumes_nor_discards(world: World, tmp_path: Path) -> None:
    engine = with_profiles(world, tmp_path, PROFILES)
    numbered_ad_users(world, 20)
    world.ad["stop_after_page"] = 2
    assert engine.run_profile("ad-full").status == "stopped-throttled"
    saved = _cs(world)["checkpoint"]
    world.ad["requests"].clear()
    engine.run_profile("ad-full", dry_run=True)
    assert world.ad["requests"][0] == 0
    assert _cs(world)["checkpoint"] == saved
    _ = directory  # the module's directories are what the connector reads


def test_a_page_rolled_back_by_ctrl_c_takes_its_counts_and_errors_with_it(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Ctrl-C inside page 3's transaction (after its entries and errors were written, before its commit):
    the page is rolled back, so the step's recorded figures are those of pages 1 and 2 alone. Found: the
    rolled-back page's adds and its import error stayed in the step's recorded counters (adds 13 and
    import_errors 2 where the store kept 9 objects and 1 error), since they were counted while the page
    was applied."""
    import json

    from connector.store import RunHistory

    engine = with_profiles(world, tmp_path, PROFILES)
    numbered_ad_users(world, 25)
    world.ad["errors"] = {"u03": ("bad-photo", "page 1's"), "u12": ("bad-photo", "page 3's")}
    note_progress = RunHistory.note_progress

    def interrupted_at_page_3(self: RunHistory, step_id: int, counters: str) -> None:
        note_progress(self, step_id, counters)
        if json.loads(counters)["pages"] == 3:
            raise KeyboardInterrupt

    monkeypatch.setattr(RunHistory, "note_progress", interrupted_at_page_3)
    with pytest.raises(KeyboardInterrupt), caplog.at_level(logging.INFO, logger="mvsync.engine"):
        engine.run_profile("ad-full")
    monkeypatch.undo()
    assert set(_cs(world)["objects"]) == {f"u{i:02d}" for i in range(10)} - {"u03"}  # pages 1 and 2
    status, counters, errors = recorded_step(world, 1)
    assert status == "stopped-interrupted"
    assert (counters["pages"], counters["adds"], counters["import_errors"]) == (2, 9, 1), counters
    assert errors == ["u03"]
    # the step's line (and its metrics) count the errors the store kept, not page 3's too
    assert "full-import: stopped-interrupted in " in caplog.text and "s (1 errors)" in caplog.text, caplog.text


def test_ctrl_c_that_surfaces_just_after_a_pages_commit_keeps_that_pages_counts(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C that arrives while the store runs page 3's COMMIT surfaces in the first Python code after it:
    the page is in the store, so the step's recorded figures include it. Found by the fresh-clone CI under
    load (test_ctrl_c's child): the store held 1,499 objects and history said 2 pages and 999 adds, because
    the interruption was taken for a rollback. Here KeyboardInterrupt is raised as page 3's transaction ends,
    after its commit."""
    import contextlib
    import json
    from collections.abc import Iterator

    from connector.store import RunHistory

    engine = with_profiles(world, tmp_path, PROFILES)
    numbered_ad_users(world, 25)
    world.ad["errors"] = {"u03": ("bad-photo", "page 1's"), "u12": ("bad-photo", "page 3's")}
    note_progress, transaction = RunHistory.note_progress, SqlStore.transaction
    noted: list[int] = []

    def noting(self: RunHistory, step_id: int, counters: str) -> None:
        note_progress(self, step_id, counters)
        noted.append(json.loads(counters)["pages"])

    @contextlib.contextmanager
    def interrupted_after_page_3(self: SqlStore, **kwargs: Any) -> Iterator[Any]:
        with transaction(self, **kwargs) as conn:
            yield conn
        if noted[-1:] == [3]:
            noted.append(0)  # once
            raise KeyboardInterrupt

    monkeypatch.setattr(RunHistory, "note_progress", noting)
    monkeypatch.setattr(SqlStore, "transaction", interrupted_after_page_3)
    with pytest.raises(KeyboardInterrupt):
        engine.run_profile("ad-full")
    monkeypatch.undo()
    assert set(_cs(world)["objects"]) == {f"u{i:02d}" for i in range(15)} - {"u03", "u12"}  # pages 1 to 3
    status, counters, errors = recorded_step(world, 1)
    assert status == "stopped-interrupted"
    assert (counters["pages"], counters["adds"], counters["import_errors"]) == (3, 13, 2), counters
    assert errors == ["u03", "u12"]
