"""The Exchange Online agent under every throttling model, a model that changes mid-run, and a
full import stopped by throttling that resumes on its next run (real HTTPS to the emulator, real
engine and store).

Outcomes are asserted, not speed: who is imported, which errors, what history says. The figures
(share of the model's ceiling, throttled ratio) come from ``mvsync bench import --throttle``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from connector.config import config_from_dict
from connector.demo import emulator_exo_settings, load_sample
from connector.emulator import THROTTLE_MODELS, EmulatorConfig, GraphEmulator, parse_throttle
from connector.engine import Engine, NullProgress
from connector.metrics import REGISTRY
from connector.sdk import AttributeChange, CSEntryChange, ExportStatus, ImportMode
from connector.store import SqlStore
from connector.store.tables import agent_state, cs_object
from connector.throttling import LimitMemory, forget_shared_limiters
from tests.agents.exchange_online.conftest import agent_state as exo_state
from tests.agents.exchange_online.conftest import counts, imported, make_connector, run_import
from tests.harness.crash import lab_emulator_config


def _mailbox_ids(emu: GraphEmulator) -> set[str]:
    return {u["id"] for u in emu.admin.users() if u.get("mail") and u["mailbox"] != "none"}  # guests have mail


@pytest.mark.parametrize("model", sorted(THROTTLE_MODELS))
def test_every_named_model_imports_everybody_and_fails_nobody_for_throttling(
    model: str, tmp_path: Path, cache_key: str
) -> None:
    with GraphEmulator(EmulatorConfig(users=120, seed=5, latency_ms=20, **parse_throttle(model))) as emu:
        conn = make_connector(emu, tmp_path, retry_budget=0)  # no failure budget: throttling must not need it
        entries, watermark = imported(conn, page_size=40)
        assert watermark is not None
        assert {e.anchor for e in entries} == _mailbox_ids(emu)
        assert {e.error.name for e in entries if e.error is not None} == set()
        assert conn.metrics["retry_budget_spent"] == 0
        limiter = conn.metrics["limiter"]
        assert limiter["limit"] >= 1 and limiter["peak_limit"] <= conn.settings.concurrency
        # the limit it found is a Prometheus series, for a dashboard next to the throttles
        series = REGISTRY.get_sample_value("mvsync_concurrency_limit", {"limiter": conn.graph.limiter.name})
        assert series == limiter["limit"]


def test_a_fractional_retry_after_pauses_everybody_for_a_round_trip_at_least(tmp_path: Path, cache_key: str) -> None:
    """A rate limit whose 429 names when the next token comes ("Retry-After: 0.004", the fractional form
    an older Graph page shows): client-wide pauses that short had every thread re-send its share of the
    limit into the same empty bucket each few milliseconds (10 % to 43 % of a 2,000-user bench's
    requests refused). A pause now lasts a round trip at least: each request takes 20 ms here."""
    limits = {"app_rate_per_s": 60.0, "retry_after_format": "decimal"}
    with GraphEmulator(EmulatorConfig(users=200, seed=8, latency_ms=20, **limits)) as emu:
        conn = make_connector(emu, tmp_path, retry_budget=0)
        entries, _ = imported(conn, page_size=40)
        assert {e.anchor for e in entries} == _mailbox_ids(emu)
        assert {e.error.name for e in entries if e.error is not None} == set()
        limiter = conn.metrics["limiter"]
        assert limiter["pauses"] >= 1, limiter  # 60 requests/s is far below what the limiter starts at
        assert limiter["pause_seconds"] / limiter["pauses"] >= 0.02, limiter


def test_a_model_that_tightens_mid_run_is_followed_down(tmp_path: Path, cache_key: str) -> None:
    """Default limits for the first page, then Outlook's 4 per app: the limiter follows, nobody fails."""
    # the engine runs at most max_ahead (200 here) users ahead of the store: with 1,000 users most of
    # the photo requests are still to come when the model changes after the first page
    with GraphEmulator(EmulatorConfig(users=1000, seed=6, latency_ms=5)) as emu:
        conn = make_connector(emu, tmp_path, retry_budget=0)
        peaks: list[int] = []

        def tighten_after_first(number: int, page: Any) -> None:
            if number == 1:
                peaks.append(conn.graph.limiter.limit)
                emu.admin.set_throttle("outlook-per-app")

        conn.open()
        try:
            entries, _ = run_import(conn, ImportMode.FULL, page_size=50, on_page=tighten_after_first)
        finally:
            conn.close()
        assert {e.anchor for e in entries} == _mailbox_ids(emu)
        assert {e.error.name for e in entries if e.error is not None} == set()
        limiter = conn.graph.limiter
        assert limiter.stats.decreases >= 1 and limiter.limit < peaks[0]
        assert emu.admin.stats()["throttled"] > 0  # the tighter model did push back, and was honoured


class _ThrottleOnceResumable(NullProgress):
    """Watches the engine commit pages; once a committed checkpoint points past the first
    ``users/delta`` page, the tenant starts refusing every request (a resumable stop, deterministically).
    """

    def __init__(self, emulator: GraphEmulator, config: Any) -> None:
        self.emulator: GraphEmulator | None = emulator
        self.config = config

    def advance(self, n: int = 1) -> None:
        if self.emulator is not None and "skiptoken" in (_store_figures(self.config)["checkpoint"] or ""):
            self.emulator.admin.set_throttle({"app_concurrency": 0})  # nothing is admitted any more
            self.emulator = None


def _store_figures(config: Any) -> dict[str, Any]:
    store = SqlStore(config.store_url())
    try:
        with store.read() as conn:
            held = conn.execute(select(func.count()).select_from(cs_object).where(cs_object.c.agent == "exo"))
            deletes = conn.execute(
                select(func.count())
                .select_from(cs_object)
                .where(cs_object.c.agent == "exo", cs_object.c.pending_type == "delete")
            )
            checkpoint = conn.execute(select(agent_state.c.import_checkpoint).where(agent_state.c.agent == "exo"))
            return {"held": held.scalar_one(), "deletes": deletes.scalar_one(), "checkpoint": checkpoint.scalar()}
    finally:
        store.close()


def test_a_full_import_stopped_by_throttling_keeps_its_pages_and_resumes(tmp_path: Path) -> None:
    # 1,000 users in listing pages of 200: the agent runs at most 200 users ahead of the engine, so
    # when the tenant starts refusing, most of the work is still to do
    with GraphEmulator(lab_emulator_config(users=1000, seed=8, latency_ms=5)) as emu:

        def configured(**exo_settings: Any) -> Any:
            exo = emulator_exo_settings(load_sample(), emu.info, tmp_path / "secrets", **exo_settings)
            return config_from_dict(
                {
                    "store": {"url": "sqlite:///mvsync.db"},
                    "data_dir": "data",
                    "agents": {"exo": {"type": "exchange-online-photos", "settings": exo}},
                    "run_profiles": {
                        "Full Import": {"steps": [{"type": "full-import", "agent": "exo", "page_size": 50}]}
                    },
                },
                base_dir=tmp_path,
            )

        # Until the refusals begin, nothing pushes back: a user of the first listing page throttled
        # at a cold start would hold back the checkpoint that fires them (it waits for that user)
        # for so long that the run could end first. Tasks then finish about in order, and that
        # checkpoint is committed within a few hundred users whatever the machine's speed.
        emu.admin.set_throttle({"app_concurrency": 100_000, "app_rate_per_s": 1_000_000})
        # 6 s of nothing but push-back stops the first run
        config = configured(max_throttled_wait_minutes=0.1)
        engine = Engine(config)
        try:
            stopped = engine.run_profile("Full Import", progress=_ThrottleOnceResumable(emu, config))
            step = stopped.steps[0]
            assert stopped.status == "stopped-throttled", stopped.as_dict()
            assert "max_throttled_wait_minutes" in step.message and "resumes" in step.message
            # throttling failed nobody (people with an on-premises mailbox are a known state, not errors)
            assert [(e.error_name, e.detail) for e in step.errors] == []
            kept = _store_figures(config)
            assert kept["held"] >= 200 and "skiptoken" in kept["checkpoint"]  # past the first listing page

            emu.admin.set_throttle("default")
            emu.admin.reset_stats()
        finally:
            engine.close()
        forget_shared_limiters()  # the next scheduled run is a new process: it starts afresh
        engine = Engine(configured())  # ... with the default max_throttled_wait_minutes
        try:
            resumed = engine.run_profile("Full Import")
        finally:
            engine.close()
        again = resumed.steps[0]
        assert resumed.status in ("success", "completed-discovery-errors"), resumed.as_dict()
        assert again.counters["resumed_from_step"] == step.step_id
        assert again.message.startswith("resumed the full import interrupted in step")
        figures = _store_figures(config)
        mailbox_users = _mailbox_ids(emu)
        assert figures["held"] + again.error_count >= len(mailbox_users) - step.error_count
        assert figures["deletes"] == 0 and figures["checkpoint"] is None
        # the resumed run listed (and probed) only the users from the checkpoint's page on
        assert again.counters["connector.users"] <= len(mailbox_users) - 150


def test_photo_exports_share_the_limiter_and_wait_out_throttling(tmp_path: Path, cache_key: str) -> None:
    """PUT and DELETE go through the same limiter as the import; half of them throttled, none fails."""
    jpeg = (Path(__file__).parents[2] / "data" / "astronaut.jpg").read_bytes()
    with GraphEmulator(EmulatorConfig(users=30, seed=9, faults={"429": 0.5, "retry_after_s": 0.05})) as emu:
        users = [u for u in emu.admin.users() if u.get("mailbox") == "cloud"][:12]
        changes = []
        for n, user in enumerate(users):
            change = AttributeChange.replace("EXOPhoto", jpeg) if n % 2 else AttributeChange.delete("EXOPhoto")
            entry = CSEntryChange.update("EXOUser", user["id"], [change])
            entry.identifier = str(n)
            changes.append(entry)
        conn = make_connector(emu, tmp_path, retry_budget=0)
        conn.open()
        try:
            importer_limiter = conn.graph.limiter
            results = conn.export(changes)
        finally:
            conn.close()
        assert [r.status for r in results] == [ExportStatus.SUCCESS] * len(changes), results
        assert conn.metrics["throttled"] > 0 and conn.metrics["retry_budget_spent"] == 0
        again = make_connector(emu, tmp_path / "again")
        assert again.graph.limiter is importer_limiter  # one limiter for every caller of this app and tenant


def _run_in_a_new_process(
    emu: GraphEmulator, tmp_path: Path, remembered: tuple[int, float] | None = None, **overrides: Any
) -> tuple[Any, Any, list[CSEntryChange]]:
    """A full import as a scheduled run's new process makes it (no limiter learned in the process).

    ``remembered``: a wall and its age in seconds, put in the agent state first as an earlier run
    would have left it. Returns the connector, its limiter and the entries.
    """
    forget_shared_limiters()
    conn = make_connector(emu, tmp_path, **overrides)
    conn.open()
    try:
        limiter = conn.graph.limiter
        if remembered is not None:
            wall, age_s = remembered
            exo_state(conn)["~limit"] = LimitMemory(limiter.name, wall, time.time() - age_s).dumps()
        entries, _ = run_import(conn, ImportMode.FULL, page_size=40)
    finally:
        conn.close()
    return conn, limiter, entries


def test_a_scheduled_run_starts_at_the_wall_an_earlier_run_measured(tmp_path: Path, cache_key: str) -> None:
    """A new process (no limiter learned in it) reads the wall from the agent state: no overshoot, no pause.

    The emulator allows 12 requests in flight; the agent's ceiling is 16, its cold start 8. Started
    at a remembered 11, the run never offers Graph more than it admits.
    """
    with GraphEmulator(EmulatorConfig(users=120, seed=5, latency_ms=20, **parse_throttle("in-flight-12"))) as emu:
        conn, limiter, entries = _run_in_a_new_process(emu, tmp_path, remembered=(11, 600))
        assert {e.anchor for e in entries} == _mailbox_ids(emu)
        assert counts(conn)["limit_recalled"] == 1
        assert limiter.stats.peak_limit == 11 and limiter.stats.pauses == 0, limiter.stats
        assert emu.admin.stats()["throttled"] == 0
        kept = LimitMemory.loads(exo_state(conn).get("~limit"))  # kept through the full import, not renewed
        assert kept is not None and kept.wall == 11 and kept.measured_at < time.time() - 500


def test_a_remembered_wall_is_trusted_only_for_limit_memory_hours(tmp_path: Path, cache_key: str) -> None:
    with GraphEmulator(EmulatorConfig(users=40, seed=5, latency_ms=5)) as emu:
        conn, _, _ = _run_in_a_new_process(emu, tmp_path, remembered=(11, 7200), limit_memory_hours=1)
        assert counts(conn)["limit_recalled"] == 0


def test_a_cold_run_keeps_what_its_limiter_measured_in_the_agent_state(tmp_path: Path, cache_key: str) -> None:
    """Whatever the run's limiter ends up knowing about the wall is what the next run finds in the state."""
    with GraphEmulator(EmulatorConfig(users=200, seed=5, latency_ms=20, **parse_throttle("in-flight-12"))) as emu:
        conn, limiter, _ = _run_in_a_new_process(emu, tmp_path, retry_budget=0)
        assert limiter.measurements >= 1, limiter.stats  # the slow start met the wall of 12
        # the last batch's worker saw the limiter's final state: the level reached, never above the census
        kept = LimitMemory.loads(exo_state(conn).get("~limit"))
        wall = limiter.wall()
        assert (kept.wall if kept is not None else None) == (min(wall, limiter.limit) if wall is not None else None)
        assert kept is None or kept.wall <= 16


def test_limit_memory_hours_zero_keeps_nothing(tmp_path: Path, cache_key: str) -> None:
    with GraphEmulator(EmulatorConfig(users=200, seed=5, latency_ms=20, **parse_throttle("in-flight-12"))) as emu:
        conn, limiter, _ = _run_in_a_new_process(emu, tmp_path, retry_budget=0, limit_memory_hours=0)
        assert limiter.measurements >= 1, limiter.stats  # it did measure the wall of 12, and kept nothing
        assert "~limit" not in exo_state(conn)
