"""A full import's memory per user: what the agent keeps about each user until the round is listed.

The agent must remember, for the whole ``users/delta`` round, whom it listed (a replay in the round is
skipped) and, for each user whose photo it sent for, where that answer is (the round's last word about
a user may be ``@removed``, which must reach the engine after the answer). Before, that was a set of
the listed users beside a dict of one ``_Asked`` object per user asked: about 145 bytes a user besides
its id (which the listing's JSON holds), 100 MB on a 700,000-user tenant. Now one dict, whose values are
shared constants: its slot, about 24 bytes a user.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from connector.engine._stream import Page, import_in_memory
from connector.sdk import ImportMode
from tests.agents.exchange_online.conftest import make_connector

pytestmark = pytest.mark.usefixtures("cache_key")

USERS = 600
#: What the work in flight holds at the last page whatever the tenant's size (tasks, answers, entries).
IN_FLIGHT = 24 * 1024


class _Dropped(dict[str, Any]):
    """Agent state that keeps nothing: the engine writes it to its store, so what the agent holds is
    all this test measures."""

    def __setitem__(self, key: str, value: Any) -> None:
        return


def test_a_full_import_keeps_a_few_bytes_per_user_besides_its_id(make_emulator: Any, tmp_path: Path) -> None:
    emu = make_emulator(users=USERS, photo_ratio=0.1)
    held: list[int] = []

    def at_the_last_page(number: int, page: Page) -> None:
        if page.last:  # every user is listed and answered: what the agent keeps about them is all there
            snapshot = tracemalloc.take_snapshot()
            mine = snapshot.filter_traces([tracemalloc.Filter(True, "*/agents/exchange_online/_import.py")])
            held.append(sum(stat.size for stat in mine.statistics("filename")))

    connector = make_connector(emu, tmp_path)
    connector.open()
    tracemalloc.start(1)
    try:
        entries, _ = import_in_memory(connector, ImportMode.FULL, _Dropped(), page_size=50, on_page=at_the_last_page)
    finally:
        tracemalloc.stop()
        connector.close()
    listed = len({e.anchor for e in entries})
    assert listed > USERS // 2
    assert len(held) == 1
    assert held[0] < 40 * listed + IN_FLIGHT, f"{held[0]} bytes held by the agent's import for {listed} users"
