"""A user's photo changing while the agent reads it: between the metadata probe and the download.

Graph serves a photo in two requests (``_photos``): the metadata, then the bytes at a size the
metadata said exists. Anything may happen to the photo in between (a user uploads a new one in
Outlook, an admin removes it). These tests make each race deterministic: the change is applied
to the emulated tenant at the moment the agent sends the download, before it reaches Graph.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest

from connector.agents.exchange_online._graph import GraphClient
from connector.agents.exchange_online._photos import normalize_etag
from tests.agents.exchange_online.conftest import delta_after_full, full_import, make_connector

pytestmark = pytest.mark.usefixtures("cache_key")


def _jpeg(side: int, shade: int) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (side, side), (shade, 90, 160)).save(out, "JPEG")
    return out.getvalue()


def at_photo_download(monkeypatch: pytest.MonkeyPatch, user_id: str, change: Any) -> list[tuple[str, int, str]]:
    """Run ``change()`` once, the moment the agent sends ``user_id``'s first photo download.

    Returns (url, status, error code) of every photo request for that user, filled in as the agent runs.
    """
    send = GraphClient.batch
    seen: list[tuple[str, int, str]] = []

    def racing(client: GraphClient, items: Any, **options: Any) -> Any:
        mine = [i for i, item in enumerate(items) if item.url.startswith(f"/users/{user_id}/photo")]
        if any(items[i].url.endswith("$value") for i in mine) and not any(u.endswith("$value") for u, _, _ in seen):
            change()
        responses = send(client, items, **options)
        seen.extend((items[i].url, responses[i].status, responses[i].error_code) for i in mine)
        return responses

    monkeypatch.setattr(GraphClient, "batch", racing)
    return seen


def _photo_user(emu: Any) -> dict[str, Any]:
    def large(u: dict[str, Any]) -> bool:
        return bool(u["hasPhoto"]) and min(u["photo"]["width"], u["photo"]["height"]) >= 648

    return next(u for u in emu.admin.users() if u.get("mail") and u["mailbox"] == "cloud" and large(u))


def test_photo_replaced_by_a_smaller_one_before_the_download_is_not_no_photo(
    make_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe says 648x648 exists; before the download the user uploads a 100 px photo.

    Graph then has no 648x648 size and answers the download 404 ImageNotFound, the same answer as
    "no photo". Read as "no photo", the import cleared a photo the user has. The agent must ask the
    metadata again and download the new photo at a size it has.
    """
    emu = make_emulator(users=20)
    victim = _photo_user(emu)
    small = _jpeg(100, 30)
    sent = at_photo_download(monkeypatch, victim["id"], lambda: emu.admin.set_photo(victim["id"], small))
    entries, _ = full_import(emu, tmp_path)
    got = {e.anchor: e for e in entries}[victim["id"]]
    assert (f"/users/{victim['id']}/photos/648x648/$value", 404, "ImageNotFound") in sent
    assert got.error is None
    assert got.attributes.get("EXOPhoto") == emu.admin.get_photo(victim["id"], 96)
    assert got.attributes.get("EXOPhotoETag") == normalize_etag(emu.admin.get_user(victim["id"])["photo"]["mediaEtag"])


def test_photo_removed_before_the_download_is_no_photo_after_a_second_look(
    make_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The probe says there is a photo; before the download an admin removes it: the user has none."""
    emu = make_emulator(users=20)
    victim = _photo_user(emu)
    sent = at_photo_download(monkeypatch, victim["id"], lambda: emu.admin.delete_photo(victim["id"]))
    entries, _ = full_import(emu, tmp_path)
    got = {e.anchor: e for e in entries}[victim["id"]]
    assert sent[-1] == (f"/users/{victim['id']}/photo", 404, "ImageNotFound")  # looked again
    assert got.error is None and "EXOPhoto" not in got.attributes


def test_delta_keeps_the_held_photo_when_the_download_misses_the_new_one(
    make_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Delta: the held photo is replaced (new ETag), then again by a small one before the download.

    The connector space held a photo; an import that cleared it on a 404 lost data the user still has.
    """
    emu = make_emulator(users=20)
    victim = _photo_user(emu)
    data = tmp_path / "data"
    conn = make_connector(emu, data, photo_recheck_hours=0.0)
    small = _jpeg(100, 60)

    def between() -> None:
        emu.admin.set_photo(victim["id"], _jpeg(700, 200))
        at_photo_download(monkeypatch, victim["id"], lambda: emu.admin.set_photo(victim["id"], small))

    delta, _ = delta_after_full(conn, between)
    got = {e.anchor: e for e in delta}[victim["id"]]
    assert got.error is None
    assert got.attributes.get("EXOPhoto") == emu.admin.get_photo(victim["id"], 96)


def test_a_photo_that_keeps_changing_is_an_error_that_keeps_the_held_photo() -> None:
    """The second download that misses after looking again is a per-user error, never "no photo"."""
    from connector.agents.exchange_online._graph import GraphResponse
    from connector.agents.exchange_online._photos import PhotoTask, read_response

    missing = GraphResponse(404, {}, b"", {"error": {"code": "ImageNotFound", "message": "Exception of type ..."}})
    first = read_response(PhotoTask("u1", "get", "648x648", "e1", baseline=(True, "e0")), missing, "648x648")
    assert isinstance(first, PhotoTask) and first.kind == "probe" and first.looked_again
    assert first.baseline == (True, "e0")
    again = PhotoTask("u1", "get", "648x648", "e2", baseline=(True, "e0"), looked_again=True)
    second = read_response(again, missing, "648x648")
    assert not isinstance(second, PhotoTask)
    assert second.kind == "error" and second.error == "photo-changed-during-read"
    assert "ImageNotFound" in second.detail and "next import reads the photo again" in second.detail


def damage_download(monkeypatch: pytest.MonkeyPatch, user_id: str, damage: Any) -> list[int]:
    """Replace the body of ``user_id``'s photo downloads (a 200) with ``damage(body)`` on its way to the agent.

    What a proxy in between, or a Graph answer cut short inside an intact ``$batch`` envelope, hands
    over. Returns the sizes of the bodies damaged, filled in as the agent runs.
    """
    send = GraphClient.batch
    damaged: list[int] = []

    def damaging(client: GraphClient, items: Any, **options: Any) -> Any:
        responses = send(client, items, **options)
        for item, resp in zip(items, responses, strict=True):
            if item.url.startswith(f"/users/{user_id}/photo") and item.url.endswith("$value") and resp.ok:
                damaged.append(len(resp.body))
                resp.body = damage(resp.body)
        return responses

    monkeypatch.setattr(GraphClient, "batch", damaging)
    return damaged


@pytest.mark.parametrize(
    ("damage", "said"),
    [
        # the photo Exchange Online holds: set again, not a file to copy again (imaging's "Copy or save")
        pytest.param(
            lambda body: body[: len(body) // 2],
            "Graph returned the photo cut short, as Exchange Online holds it: ask the person to upload it again",
            id="truncated",
        ),
        pytest.param(lambda body: b"", "an empty body", id="empty"),
        pytest.param(
            lambda body: b"<html><body>Access denied</body></html>", "not a recognised image", id="proxy-page"
        ),
    ],
)
def test_a_download_that_is_no_picture_keeps_the_held_photo_and_names_the_user(
    make_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, damage: Any, said: str
) -> None:
    """A 200 whose body is no whole picture says nothing about the photo (as the Exchange Server agent
    already reads it): staged as the photo, it replaced the user's picture with broken bytes. What it
    says fits a server's answer (QA find: a photo cut short got imaging's advice about a file)."""
    emu = make_emulator(users=20)
    victim = _photo_user(emu)
    conn = make_connector(emu, tmp_path / "data", photo_recheck_hours=0.0)

    def between() -> Any:
        emu.admin.set_photo(victim["id"], _jpeg(700, 120))  # a new ETag: the delta downloads it
        return damage_download(monkeypatch, victim["id"], damage)

    delta, damaged = delta_after_full(conn, between)
    assert damaged
    mine = [e for e in delta if e.anchor == victim["id"]]
    assert len(mine) == 1 and mine[0].error is not None, mine
    error = mine[0].error
    assert error.name == "graph-malformed-response"
    assert victim["userPrincipalName"] in (error.display or "")
    assert "kept" in error.detail and "HTTP 200" in error.detail
    assert said in error.detail and "Copy or save" not in error.detail, error.detail
