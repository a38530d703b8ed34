"""A full import's memory per user: what the agent keeps about each user until the round is listed.

The agent must remember, for the whole ``users/delta`` round, whom it listed (a replay in the round is
skipped) and, for each user whose photo it sent for, where that answer is (the round's last word about
a user may be ``@removed``, which must reach the engine after the answer). Before, that was a set of
the listed users beside a dict of one ``_Asked`` object per user asked: about 145 bytes a user besides
its id (which the listing's JSON holds), 100 MB on a 700,000-user tenant. Then one dict, whose values are
shared constants: its slot, about 24 bytes a user, and the id's text (85 bytes) that the dict kept. Now
the id is kept as its 128-bit number (44 bytes, made by the agent, so counted here): 112 bytes a user in
all where it was 71 besides the id's 88 (measured, in-flight work included).
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


def test_a_full_import_keeps_about_a_hundred_bytes_per_user_its_id_included(make_emulator: Any, tmp_path: Path) -> None:
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
    assert held[0] < 100 * listed + IN_FLIGHT, f"{held[0]} bytes held by the agent's import for {listed} users"


def test_the_round_keys_a_guid_by_its_number_and_any_other_id_by_its_text() -> None:
    """``_RoundUsers`` answers as the dict of ids it replaced did: a GUID in Graph's lower-case form is
    kept as its number, anything else (upper case, braces, no hyphens, text that ``int`` would read
    as hex with a sign, underscores or spaces) as itself, so distinct ids stay distinct."""
    from connector.agents.exchange_online._import import _compact_id, _RoundUsers

    guid = "0f8fad5b-d9cb-469f-a165-70867728950e"
    others = [
        guid.upper(),
        "{" + guid[1:-1] + "}",
        guid.replace("-", "") + "----",
        "+f8fad5b-d9cb-469f-a165-70867728950e",
        "0f8fad5b-d9cb-469f-a165-70867728950_",
        " f8fad5b-d9cb-469f-a165-70867728950e",
        "0x8fad5b-d9cb-469f-a165-70867728950e",
        "00000000-0000-0000-0000-000000000000x",
        "alice",
        "",
    ]
    assert _compact_id(guid) == int(guid.replace("-", ""), 16)
    assert _compact_id("00000000-0000-0000-0000-000000000001") == 1
    assert [_compact_id(other) for other in others] == others
    users, reference = _RoundUsers(), {}
    for n, user_id in enumerate([guid, *others]):
        users[user_id] = reference[user_id] = ("listed", "asked", "sent")[n % 3]  # type: ignore[literal-required]
    assert len(users) == len(reference) == len(others) + 1
    for user_id, stage in reference.items():
        assert user_id in users and users.get(user_id) == stage
    assert "00000000-0000-0000-0000-000000000001" not in users and users.get("nobody", "listed") == "listed"
    assert users.setdefault(guid, "gone") == reference[guid]
    del users[guid]
    assert guid not in users and guid.upper() in users
    assert users.setdefault(guid, "gone") == "gone" and users.get(guid) == "gone"


def test_the_round_holds_a_listed_user_in_about_a_hundred_bytes_its_id_included() -> None:
    """50,000 GUIDs from a listing's JSON, each kept for the round: by their text in a dict (as before)
    about 123 bytes a user; by their number (``_RoundUsers``) about 96 (measured)."""
    import gc
    import json
    import uuid

    from connector.agents.exchange_online._import import _RoundUsers

    count = 50_000
    page = json.dumps({"value": [{"id": str(uuid.UUID(int=n * 7919 + 1, version=4))} for n in range(count)]})

    def cost(keep: Any) -> float:
        gc.collect()
        tracemalloc.start()
        try:
            for user in json.loads(page)["value"]:
                keep(user["id"])
            gc.collect()
            held, _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return held / count

    texts: dict[str, str] = {}
    numbers = _RoundUsers()
    by_text = cost(lambda user_id: texts.__setitem__(user_id, "listed"))
    by_number = cost(lambda user_id: numbers.__setitem__(user_id, "listed"))
    assert len(texts) == len(numbers) == count
    assert by_text > 115, by_text
    assert by_number < 105, f"{by_number:.0f} bytes a user (by text: {by_text:.0f})"
