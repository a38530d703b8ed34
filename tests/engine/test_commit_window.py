"""Ctrl-C on either side of a synchronization chunk's or an export batch record's COMMIT (SQLite and PostgreSQL).

Ctrl-C (or a stop signal) that arrives while the database driver runs a COMMIT, where Python handles no
signal, surfaces in the first Python code after it, with the transaction already in; one that arrives a
moment earlier rolls it back. Either way the step stops, and its history (counters, errors) must say what
the store kept, and the next run must finish the work with nothing lost and nothing done twice. The
interruption is raised at a precise point, not by a signal racing the work: as the transaction of the
chosen unit ends, just before its COMMIT (rolled back) or just after it (committed).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from connector.sdk import ExportStatus
from connector.store import ConnectorSpace, SqlStore
from connector.store.tables import cs_object, mv_object
from tests.engine.conftest import World, recorded_step, with_profiles

PROFILES = {
    "import": {"steps": [{"type": "full-import", "agent": a} for a in ("ad", "exo")]},
    "ad-sync": {"steps": [{"type": "full-sync", "agent": "ad"}]},
    "exo-sync": {"steps": [{"type": "full-sync", "agent": "exo"}]},
    "ad-export": {"steps": [{"type": "export", "agent": "ad", "batch_size": 5}]},
    "ad-import": {"steps": [{"type": "full-import", "agent": "ad"}]},
}
#: Mailboxes whose mail two AD accounts hold: an ``ambiguous-join`` each, in the first and third chunks of five.
AMBIGUOUS = ("e03", "e12")
#: The AD accounts that refuse their thumbnail: in the first and third export batches of five.
REFUSING = ("u01", "u14")


def _people(world: World, tmp_path: Path) -> None:
    """25 AD accounts and 25 mailboxes that join them on mail (two of them ambiguously), imported and the
    AD accounts projected, each mailbox with a photo that the mailbox sync stages as the AD thumbnail."""
    with_profiles(world, tmp_path, PROFILES)
    for i in range(25):
        world.ad["objects"][f"u{i:02d}"] = {"accountName": f"u{i:02d}", "mail": f"u{i:02d}@example.test"}
        world.exo["objects"][f"e{i:02d}"] = {"accountName": f"e{i:02d}", "mail": f"u{i:02d}@example.test"}
        world.exo["objects"][f"e{i:02d}"]["photo"] = f"photo-{i}".encode()
    for anchor in AMBIGUOUS:  # a second AD account with that mailbox's mail
        world.ad["objects"][f"x{anchor}"] = {"accountName": f"x{anchor}", "mail": f"u{anchor[1:]}@example.test"}
    for profile in ("import", "ad-sync"):
        assert world.run(profile).status == "success"


@contextlib.contextmanager
def _interrupted(monkeypatch: pytest.MonkeyPatch, marker: tuple[type, str], nth: int, side: str) -> Iterator[None]:
    """Raise KeyboardInterrupt as the transaction that calls ``marker`` (class, method) for the ``nth``
    time ends: ``before`` its COMMIT (it rolls back) or ``after`` it (it is in: what Ctrl-C during the
    driver's COMMIT looks like from Python). Undone on leaving."""
    owner, name = marker
    original, transaction = getattr(owner, name), SqlStore.transaction
    calls, fired = [0], [False]

    def counting(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(self, *args, **kwargs)

    def due() -> bool:
        if calls[0] == nth and not fired[0]:
            fired[0] = True
            return True
        return False

    @contextlib.contextmanager
    def interrupting(self: SqlStore, **kwargs: Any) -> Iterator[Any]:
        with transaction(self, **kwargs) as conn:
            yield conn
            if side == "before" and due():
                raise KeyboardInterrupt
        if side == "after" and due():
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(owner, name, counting)
        patch.setattr(SqlStore, "transaction", interrupting)
        yield
    assert fired[0], f"no transaction called {name} {nth} times"


def _joined_mailboxes(world: World) -> dict[str, int]:
    """The mailboxes joined to a metaverse object that exists, and its id; checks that the metaverse objects
    holding a photo (which only a mailbox brings) are exactly theirs, each joined by one mailbox."""
    with world.engine.store.read() as conn:
        mv_rows = conn.execute(select(mv_object.c.id, mv_object.c.attributes)).all()
        rows = conn.execute(select(cs_object.c.anchor, cs_object.c.mv_id).where(cs_object.c.agent == "exo")).all()
    mv_ids = {r.id for r in mv_rows}
    joined = {r.anchor: r.mv_id for r in rows if r.mv_id is not None and r.mv_id in mv_ids}
    with_photo = {r.id for r in mv_rows if "photo" in json.loads(r.attributes)}
    assert with_photo == set(joined.values()) and len(with_photo) == len(joined), (with_photo, joined)
    return joined


def _ad_rows(world: World) -> dict[str, Any]:
    with world.engine.store.read() as conn:
        rows = conn.execute(select(cs_object).where(cs_object.c.agent == "ad")).all()
    return {r.anchor: r for r in rows}


@pytest.mark.parametrize(("side", "chunks_kept"), [("before", 2), ("after", 3)])
def test_ctrl_c_at_a_sync_chunks_commit_leaves_history_saying_what_the_store_kept(
    world: World,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    side: str,
    chunks_kept: int,
) -> None:
    """A full synchronization of the mailboxes in chunks of five, interrupted as its third chunk's
    transaction ends: before its COMMIT the chunk is rolled back, after it the chunk is in. Found: the
    chunk's joins, staged exports and errors were counted while it ran, so a rolled-back chunk's stayed
    in history (13 joins and 2 errors where the store kept 9 joins and 1 error); and, the chunk's errors
    being written with it, history could not tell. The next run joins the rest, each mailbox once."""
    _people(world, tmp_path)
    monkeypatch.setattr("connector.engine._sync.CHUNK", 5)
    with (
        _interrupted(monkeypatch, (ConnectorSpace, "apply_sync"), 3, side),
        pytest.raises(KeyboardInterrupt),
        caplog.at_level(logging.INFO, logger="mvsync.engine"),
    ):
        world.run("exo-sync")
    # what the store kept: the mailboxes of the committed chunks (ids in anchor order), each joined once
    kept = {f"e{i:02d}" for i in range(5 * chunks_kept)} - set(AMBIGUOUS)
    joined = _joined_mailboxes(world)
    assert set(joined) == kept
    assert len(set(joined.values())) == len(kept)
    staged = {a for a, r in _ad_rows(world).items() if r.export_type == "update"}
    assert staged == {"u" + a[1:] for a in kept}  # their photos staged as AD thumbnails, no others
    status, counters, errors = recorded_step(world, 3)
    assert status == "stopped-interrupted"
    figures = (counters.get("chunks"), counters["joins"], counters["join_errors"], counters["export_updates"])
    assert figures == (chunks_kept, len(kept), len(errors), len(kept)), counters
    assert errors == [a for a in AMBIGUOUS if a in {f"e{i:02d}" for i in range(5 * chunks_kept)}]
    assert f"s ({len(errors)} errors)" in caplog.text, caplog.text  # the step's line and its metrics too

    result = world.run("exo-sync")  # the next run finishes the work: the rest, each once
    assert result.status == "completed-sync-errors", result.as_dict()
    _, again, errors_again = recorded_step(world, 4)
    assert again["joins"] + counters["joins"] == again["export_updates"] + counters["export_updates"] == 23, again
    assert errors_again == list(AMBIGUOUS)  # a full synchronization tries the ambiguous ones again
    joined = _joined_mailboxes(world)
    assert set(joined) == {f"e{i:02d}" for i in range(25)} - set(AMBIGUOUS)
    assert len(set(joined.values())) == 23
    assert len({a for a, r in _ad_rows(world).items() if r.export_type == "update"}) == 23


@pytest.mark.parametrize(("side", "batches_kept"), [("before", 2), ("after", 3)])
def test_ctrl_c_at_an_export_batch_records_commit_leaves_history_saying_what_the_store_kept(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, side: str, batches_kept: int
) -> None:
    """An export in batches of five, interrupted as the transaction that records the third batch's results
    ends, after the connector wrote that batch. Before its COMMIT: the batch's exports stay pending, history
    does not claim them (found: it counted 13 exports and 2 errors where the store recorded 9 and 1), and the
    next export sends them again, which a replace of the same values makes harmless. After it: history counts
    them, and the next export does not send them again. Either way an import then confirms every export."""
    _people(world, tmp_path)
    assert world.run("exo-sync").status == "completed-sync-errors"
    for anchor in REFUSING:
        world.ad["fail"][anchor] = (ExportStatus.FAILED, "constraint-violation")
    with _interrupted(monkeypatch, (ConnectorSpace, "record_exports"), 3, side), pytest.raises(KeyboardInterrupt):
        world.run("ad-export")
    staged = sorted(a for a, r in _ad_rows(world).items() if r.export_type == "update")  # in cs id order
    assert len(staged) == 23 - 5 * batches_kept + sum(1 for a in REFUSING if a in _first(batches_kept))
    sent = set(_first(batches_kept))
    recorded = {a for a, r in _ad_rows(world).items() if r.unconfirmed}
    assert recorded == sent - set(REFUSING)
    status, counters, errors = recorded_step(world, 4)
    assert status == "stopped-interrupted"
    assert (counters.get("batches"), counters["export_updates"], counters["export_errors"]) == (
        batches_kept,
        len(recorded),
        len(errors),
    ), counters
    assert errors == [a for a in REFUSING if a in sent]

    assert world.run("ad-export").status == "completed-export-errors"
    _, again, _ = recorded_step(world, 5)
    assert again["export_updates"] + counters["export_updates"] == 21, again
    times_sent = Counter(c.anchor for c in world.ad["exports"] if c.anchor not in REFUSING)
    sent_twice = {a for a, n in times_sent.items() if n == 2}
    # rolled back: the third batch was written and is written again; committed: nothing is
    assert sent_twice == (set(_third()) - set(REFUSING) if side == "before" else set()), times_sent
    assert set(times_sent.values()) <= {1, 2}
    for i in range(25):
        expected = f"photo-{i}".encode()
        if f"u{i:02d}" not in REFUSING and f"e{i:02d}" not in AMBIGUOUS:
            assert world.ad["objects"][f"u{i:02d}"]["thumbnail"] == expected
    confirmed = world.run("ad-import")
    assert confirmed.steps[0].counters["exports_confirmed"] == 21, confirmed.as_dict()
    assert not [e for e in confirmed.steps[0].errors if e.error_name == "exported-change-not-reimported"]


def _exported_order() -> list[str]:
    """The AD accounts with a staged thumbnail, in cs id order (the export's order)."""
    return [f"u{i:02d}" for i in range(25) if f"e{i:02d}" not in AMBIGUOUS]


def _first(batches: int) -> list[str]:
    return _exported_order()[: 5 * batches]


def _third() -> list[str]:
    return _exported_order()[10:15]
