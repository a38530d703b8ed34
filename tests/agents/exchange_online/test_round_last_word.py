"""The last word of a ``users/delta`` round about a user wins, through the engine and its store.

Learn, delta-query-overview, *Replays*: one round can name a user more than once, the most recent
change last. The agent reads the photos of listed users on the engine's worker threads, so a user
listed present and then ``@removed`` had its photo answer and its removal travel separately to the
engine, in either order. The emulator lines the race up (``Admin.remove_at_photo_read``: the user is
deleted the moment its photo is read, and that answer is held back until a later page of the round has
listed the user ``@removed``), so the losing order happens every time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from connector.config import load_config
from connector.engine import Engine, RunResult
from connector.store import AgentStateReader
from connector.store._connector_space import ConnectorSpace
from tests.agents.exchange_online.test_delta_replays import removed_first

pytestmark = pytest.mark.usefixtures("cache_key")

#: Listing pages of 200 users (the agent asks for twice the engine's page), so 450 users are 3 pages.
PAGE = 50


def _engine(emu: Any, root: Path) -> Engine:
    """An engine with one agent, ``exo`` on the emulator; profiles ``full`` and ``delta`` import it."""
    from connector.demo import dump_toml, write_secret
    from connector.emulator import exo_agent_settings

    token = write_secret(root / "secrets" / "refresh-token", emu.info["refresh_token"])
    settings = exo_agent_settings(emu.info, refresh_token={"file": str(token)}, backoff_initial_s=0.05)
    config = {
        "data_dir": "data",
        "store": {"url": "sqlite:///store.db"},
        "metaverse": {"schema": "person"},
        "agents": {"exo": {"type": "exchange-online-photos", "settings": settings}},
        "run_profiles": {
            "full": {"steps": [{"type": "full-import", "agent": "exo", "page_size": PAGE}]},
            "delta": {"steps": [{"type": "delta-import", "agent": "exo", "page_size": PAGE}]},
        },
    }
    path = root / "mvsync.toml"
    path.write_text(dump_toml(config), encoding="utf-8")
    return Engine(load_config(path))


def _anchors(engine: Engine) -> set[str]:
    """The users the connector space holds (a pending delete is gone)."""
    with engine.store.read() as conn:
        return {o.anchor for o in ConnectorSpace(conn).objects("exo") if o.pending_type != "delete"}


def _run(engine: Engine, profile: str) -> RunResult:
    result = engine.run_profile(profile)
    step = result.steps[0]
    assert result.status == "success", result.as_dict()
    assert not step.errors, [(e.anchor, e.error_name, e.detail) for e in step.errors]
    return result


def _first_listed_without_photo(emu: Any) -> str:
    """A cloud mailbox without a photo on the round's first page (the emulator lists users in id order)."""
    users = [u for u in emu.admin.users() if u["mail"] and u["mailbox"] == "cloud" and not u["hasPhoto"]]
    return min(u["id"] for u in users)


def test_full_import_user_listed_then_removed_in_the_round_is_not_imported(make_emulator: Any, tmp_path: Path) -> None:
    """Before: the user's photo answer ("no photo") reached the engine after the round had listed the
    user ``@removed``, and the full import staged a user who no longer exists."""
    emu = make_emulator(users=450)
    victim = _first_listed_without_photo(emu)
    emu.admin.remove_at_photo_read(victim)
    engine = _engine(emu, tmp_path)
    try:
        _run(engine, "full")
        assert victim not in {u["id"] for u in emu.admin.users()}  # the race did happen
        assert victim not in _anchors(engine)
        assert AgentStateReader(engine.store, "exo").get_many([victim]) == {}
        assert len(_anchors(engine)) == sum(1 for u in emu.admin.users() if u["mail"] and u["mailbox"] != "none")
    finally:
        engine.close()


def test_delta_user_listed_then_removed_in_the_round_is_deleted(make_emulator: Any, tmp_path: Path) -> None:
    """Delta: a new user listed, then ``@removed`` in the same round: not in the connector space, no error."""
    emu = make_emulator(users=450)
    engine = _engine(emu, tmp_path)
    try:
        _run(engine, "full")
        newcomer = emu.admin.add_user(id="00000000-0000-4000-8000-000000000001", givenName="Ada", surname="Early")
        for user in emu.admin.users():  # a round of three pages, the newcomer first on the first
            emu.admin.update_user(user["id"], displayName=f"{user['displayName']} (moved)")
        emu.admin.remove_at_photo_read(newcomer["id"])
        _run(engine, "delta")
        assert newcomer["id"] not in {u["id"] for u in emu.admin.users()}  # the race did happen
        assert newcomer["id"] not in _anchors(engine)
        assert AgentStateReader(engine.store, "exo").get_many([newcomer["id"]]) == {}
    finally:
        engine.close()


@pytest.mark.parametrize("where", ["same-page", "earlier-page"])
def test_delta_user_removed_then_listed_again_stays_through_the_engine(
    make_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """``@removed``, then the user again (restored, renamed): the user stays, renamed, with no error."""
    emu = make_emulator(users=450)
    engine = _engine(emu, tmp_path)
    try:
        _run(engine, "full")
        victim = max(u["id"] for u in emu.admin.users() if u["mail"] and u["mailbox"] == "cloud")  # on a later page
        for user in emu.admin.users():
            emu.admin.update_user(user["id"], displayName=f"{user['displayName']} (moved)")
        emu.admin.update_user(victim, displayName="Restored Person")
        changed = removed_first(monkeypatch, victim, where)
        _run(engine, "delta")
        assert changed
        assert victim in _anchors(engine)
        with engine.store.read() as conn:
            held = next(o for o in ConnectorSpace(conn).objects("exo") if o.anchor == victim)
        assert "Restored Person" in (held.pending or "") + (held.hologram or "")
    finally:
        engine.close()
