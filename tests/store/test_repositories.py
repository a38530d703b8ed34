"""The store's repositories on both backends (``store_url``: SQLite and a real PostgreSQL): what the
engine, CLI, console and doctor read and write through them comes back as typed rows, unchanged."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from connector.store import (
    ConnectorSpace,
    CsSearch,
    Metaverse,
    RunHistory,
    SqlStore,
    StoreAudit,
    blob_ref,
    bulk_insert,
    dumps,
    loads,
)


@dataclass
class _Error:
    stage: str = "export"
    error_name: str = "constraint-violation"
    detail: str = "x" * 5000
    anchor: str | None = "a-1"
    object_class: str | None = "user"
    cs_id: int | None = None
    severity: str = "error"
    display: str | None = "Ada Lovelace"


def _cs_row(cs_id: int, agent: str, mv_id: int | None, **extra: object) -> dict[str, object]:
    return {
        "id": cs_id,
        "agent": agent,
        "object_class": "user",
        "anchor": f"a-{cs_id}",
        "dn": f"CN=u{cs_id},DC=example",
        "hologram": dumps({"mail": f"u{cs_id}@example.org"}),
        "mv_id": mv_id,
        "export_type": extra.get("export_type"),
        "export_changes": extra.get("export_changes"),
        "updated_at": 1.0,
    }


def _world(store: SqlStore) -> None:
    """Two persons; agent ``ad`` joined to both (one with a pending export), ``hr`` to one."""
    mv = [
        {
            "id": i,
            "object_type": "person",
            "attributes": dumps({"displayName": name, "photo": blob_ref("f" * 64, 3)}),
            "contributions": "{}",
            "lineage": "{}",
            "display_name": name,
            "search_text": name.lower(),
            "created_at": 1.0,
            "updated_at": 1.0,
        }
        for i, name in ((1, "Ada Lovelace"), (2, "Alan Turing"))
    ]
    cs = [
        _cs_row(1, "ad", 1, export_type="update", export_changes=dumps({"thumbnailPhoto": None})),
        _cs_row(2, "ad", 2),
        _cs_row(3, "hr", 1),
        _cs_row(4, "hr", None),
    ]
    with store.transaction() as conn:
        bulk_insert(conn, "mv_object", mv)
        bulk_insert(conn, "cs_object", cs)


def test_run_history_round_trips_runs_steps_and_errors(store_url: str) -> None:
    store = SqlStore(store_url)
    try:
        with store.transaction() as conn:
            history = RunHistory(conn)
            run_id = history.start_run("Delta Cycle", dry_run=False, started_at=100.0)
            step_id = history.start_step(run_id, 1, "ad", "export", 100.5)
            history.record_errors(step_id, [_Error(), _Error(error_name="cd-busy", anchor="a-2")])
            history.finish_step(step_id, "completed-export-errors", 101.0, dumps({"exports": 2}), None)
            history.finish_run(run_id, "completed-export-errors", 102.0, None)
        with store.read() as conn:
            history = RunHistory(conn)
            run = history.run(run_id)
            assert run is not None
            assert (run.status, run.ended_at, run.dry_run) == ("completed-export-errors", 102.0, False)
            assert [r.id for r in history.recent_runs(5)] == [run_id]
            assert history.recent_runs(5, before=run_id) == []
            (step,) = history.steps(run_id)
            assert (step.agent, step.kind, loads(step.counters, "run_step", step.id, "counters")) == (
                "ad",
                "export",
                {"exports": 2},
            )
            errors = history.errors(step_id, 10)
            assert [e.error_name for e in errors] == ["constraint-violation", "cd-busy"]
            assert len(errors[0].detail or "") == 4000  # kept bounded
            assert history.errors(step_id, 10, after=errors[0].id)[0].anchor == "a-2"
            assert history.error_counts([step_id]) == {step_id: 2}
            assert history.error_names(step_id) == {"constraint-violation": 1, "cd-busy": 1}
            assert history.latest_step_errors()[0][:2] == ("ad", "export")
    finally:
        store.close()


def test_connector_space_reads_and_export_results(store_url: str) -> None:
    store = SqlStore(store_url)
    try:
        _world(store)
        with store.read() as conn:
            space = ConnectorSpace(conn)
            assert space.count("ad") == 2 and space.count("ad", pending_export=True) == 1
            (pending,) = space.pending_exports("ad")
            assert (
                pending.anchor,
                pending.export_type,
                loads(pending.export_changes or "", "cs_object", pending.id, "export_changes"),
            ) == (
                "a-1",
                "update",
                {"thumbnailPhoto": None},
            )
            assert [o.anchor for o in space.search("hr", CsSearch(disconnectors=True), 10)] == ["a-4"]
            assert [o.anchor for o in space.search("ad", CsSearch(text="u2"), 10)] == ["a-2"]
            assert sorted(o.agent for o in space.joined_to(1)) == ["ad", "hr"]
            assert [o.id for o in space.objects("hr", page=1)] == [3, 4]
            assert space.agents_joined_to([1, 2], ignoring=[3]) == {1: {"ad"}, 2: {"ad"}}
            assert space.counts_per_agent(only="disconnected") == {"hr": 1}
            assert space.counts_per_agent(only="pending-export") == {"ad": 1}
            assert space.export_writes_and_clears("ad", "thumbnailPhoto") == (0, 1)
            with pytest.raises(ValueError, match="unknown"):
                space.counts_per_agent(only="everything")
        with store.transaction() as conn:
            space = ConnectorSpace(conn)
            assert space.export_states([1])[1].export_type == "update"
            space.record_exports(
                [
                    {
                        "_id": 1,
                        "export_type": None,
                        "export_changes": None,
                        "unconfirmed": dumps({"thumbnailPhoto": None}),
                        "export_error": None,
                        "anchor": "a-1",
                        "updated_at": 2.0,
                    }
                ]
            )
        with store.read() as conn:
            space = ConnectorSpace(conn)
            assert space.pending_exports("ad") == []
            row = space.get("ad", "a-1")
            assert row is not None and loads(row.unconfirmed or "", "cs_object", row.id, "unconfirmed") == {
                "thumbnailPhoto": None
            }
    finally:
        store.close()


def test_metaverse_search_pages_and_audit(store_url: str) -> None:
    store = SqlStore(store_url)
    try:
        _world(store)
        with store.read() as conn:
            metaverse = Metaverse(conn)
            assert metaverse.next_id() == 3 and metaverse.count() == 2
            assert metaverse.search_page("a", after=None, before=None, limit=10) == [1, 2]
            assert metaverse.search_page("a", after=1, before=None, limit=10) == [2]
            assert metaverse.search_page("a", after=None, before=2, limit=10) == [1]
            assert metaverse.count_matching("turing", cap=10) == 1
            assert metaverse.display_names([2, 99]) == {2: "Alan Turing"}
            assert [m.display_name for m in metaverse.search("LOVELACE", 5)] == ["Ada Lovelace"]
            audit = StoreAudit(store, conn)
            assert audit.integrity_problems() == []
            # the persons reference a blob that was never stored: the audit finds it
            assert set(audit.referenced_blobs()) == {"f" * 64}
            assert audit.blob_sizes(["f" * 64]) == {}
            assert audit.dangling_links() == [] and audit.duplicate_links() == []
        store.clear()
        with store.read() as conn:
            assert Metaverse(conn).count() == 0 and ConnectorSpace(conn).count("ad") == 0
    finally:
        store.close()


def test_bulk_insert_refuses_what_is_not_a_store_column(store_url: str) -> None:
    store = SqlStore(store_url)
    try:
        with store.transaction() as conn, pytest.raises(ValueError, match="not a store table"):
            bulk_insert(conn, "cs_object", [{"id": 1, "password": "x"}])
    finally:
        store.close()
