"""Answers larger than any Graph sends (an oversized photo, a gzip bomb from Graph or a proxy in between):
read no further than a cap, and only the person whose answer it is fails."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import pytest

from connector.agents.exchange_online import _graph as graph
from connector.agents.exchange_online._graph import MAX_JSON_BYTES, MAX_PHOTO_BYTES, BatchItem
from connector.sdk import StopRunError

from .conftest import full_import, make_connector

#: Decoded, the gzip-encoded photo the emulator sends: 256 MB (its base64 in a $batch, 341 MB), 0.3 MB on the wire.
BOMB = 256 << 20


def _photo_users(emu: Any) -> list[str]:
    return sorted(u["id"] for u in emu.admin.users() if u.get("mail") and u["mailbox"] == "cloud" and u["hasPhoto"])


def test_a_gzip_bomb_photo_is_the_users_error_and_the_read_stays_near_the_cap(
    make_emulator: Any, tmp_path: Path, cache_key: str
) -> None:
    """One user's photo answer is gzip-encoded and decodes to 256 MB, inside the $batch envelope (base64)
    and on its own. Before, the Graph client read every answer whole (``resp.content``, which decodes
    gzip completely): the envelope's 341 MB were held, parsed and decoded. Now the envelope is read no
    further than the cap its items allow, its items are asked one by one, and that user's own photo no
    further than MAX_PHOTO_BYTES: the user's image-input-too-large naming the user and the cap, every
    other photo imported, and the memory the import took stays near the caps."""
    emu = make_emulator(users=8, photo_ratio=0.3)
    with_photo = _photo_users(emu)
    assert len(with_photo) == 2  # so an envelope holds two photo reads at most: its cap is 16 MB
    bomb = with_photo[0]
    emu.admin.set_faults({"gzip_photo": BOMB, "path_pattern": f"/users/{bomb}/photo"})
    tracemalloc.start()
    try:
        entries, _ = full_import(emu, tmp_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    errors = {e.anchor: e.error for e in entries if e.error is not None}
    assert list(errors) == [bomb], errors
    error = errors[bomb]
    assert error.name == "image-input-too-large", error
    assert bomb in error.detail and f"more than {MAX_PHOTO_BYTES:,} bytes" in error.detail, error.detail
    assert "photo imported before is kept" in error.detail
    photos = {e.anchor for e in entries if e.error is None and e.attributes.get("EXOPhoto")}
    assert photos == set(with_photo[1:])
    assert emu.admin.stats()["faults"]["gzip_photo"] >= 2  # in the envelope, then asked on its own
    # an envelope read to its cap and joined (twice 16 MB at most), not the 341 MB of the bomb's base64
    assert peak < 8 * MAX_PHOTO_BYTES, f"{peak:,} bytes at the peak"


def test_an_envelope_of_twenty_photo_reads_is_read_no_further_than_a_json_answer(
    make_emulator: Any, tmp_path: Path, cache_key: str
) -> None:
    """A ``$batch`` of twenty photo downloads (Graph's most), one of them a gzip bomb (256 MB decoded,
    341 MB in base64 in the envelope), sent by the agent's Graph client. Before, an envelope's cap grew
    with its photo reads: twenty allowed 224 MB, read and then joined, over 400 MB at the peak on each
    thread that met such an answer. Now an envelope is read no further than any JSON answer
    (MAX_JSON_BYTES); over it, each item is asked on its own: the bomb's own read stops at
    MAX_PHOTO_BYTES and the nineteen others get their photos."""
    emu = make_emulator(users=60, photo_ratio=1.0)
    with_photo = _photo_users(emu)[:20]
    assert len(with_photo) == 20
    bomb = with_photo[0]
    emu.admin.set_faults({"gzip_photo": BOMB, "path_pattern": f"/users/{bomb}/photo"})
    connector = make_connector(emu, tmp_path)
    connector.open()
    tracemalloc.start()
    try:
        answers = connector.graph.batch([BatchItem("GET", f"/users/{user}/photo/$value") for user in with_photo])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        connector.close()
    assert answers[0].oversized == MAX_PHOTO_BYTES, answers[0].describe()
    assert [a.status for a in answers[1:]] == [200] * 19
    assert all(a.body.startswith((b"\xff\xd8", b"\x89PNG")) for a in answers[1:])
    assert emu.admin.stats()["faults"]["gzip_photo"] == 2  # in the envelope, then asked on its own
    # the envelope read to MAX_JSON_BYTES and joined (twice 16 MB at most), not to 224 MB
    assert peak < 4 * MAX_JSON_BYTES, f"{peak:,} bytes at the peak"


def test_a_users_page_over_the_cap_stops_the_step_saying_so_and_where_to_look(
    make_emulator: Any, tmp_path: Path, cache_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A users/delta page larger than any Graph sends (the cap lowered to 1 KB here, so that a real page
    is over it) is read no further: the listing cannot skip a page, so the step stops, naming the cap
    and what to check, with nothing changed."""
    monkeypatch.setattr(graph, "MAX_JSON_BYTES", 1024)
    emu = make_emulator(users=20)
    with pytest.raises(StopRunError) as caught:
        full_import(emu, tmp_path)
    assert str(caught.value) == (
        "Graph answered the user listing with HTTP 200 with more than 1,024 bytes (the rest was not read), far "
        "more than a page of users (about 0.5 MB for 999); nothing was changed. Check any proxy in front of "
        "Graph, then run the step again"
    )
