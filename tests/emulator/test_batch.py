"""POST /$batch: limits, ids, base64 bodies, dependsOn -> 424, per-item 429, Outlook's 4 at a time."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import Callable

import pytest
from PIL import Image

from connector.emulator import GraphEmulator
from tests.emulator.conftest import Api, make_api


def _jpeg(color: str = "red", size: int = 200) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), color).save(out, "JPEG")
    return out.getvalue()


def test_mixed_batch_with_binary_bodies(api: Api) -> None:
    with_photo = api.user(lambda u: u["hasPhoto"] and u["mailbox"] == "cloud")
    without = api.user(lambda u: not u["hasPhoto"] and u["mailbox"] == "cloud")
    resp = api.batch(
        [
            {"id": "1", "method": "GET", "url": f"/users/{with_photo['id']}/photo/$value"},
            {"id": "2", "method": "GET", "url": f"users/{with_photo['id']}/photo"},
            {"id": "3", "method": "GET", "url": f"/users/{without['id']}/photo/$value"},
            {
                "id": "4",
                "method": "GET",
                "url": "/users?$select=id,mail&$filter=mail ne null&$count=true&$top=3",
                "headers": {"ConsistencyLevel": "eventual"},
            },
            {"id": "5", "method": "GET", "url": "/users/$count", "headers": {"ConsistencyLevel": "eventual"}},
        ]
    )
    assert resp.status_code == 200
    items = {r["id"]: r for r in resp.json()["responses"]}
    assert items["1"]["status"] == 200 and items["1"]["headers"]["Content-Type"].startswith("image/")
    assert base64.b64decode(items["1"]["body"], validate=True) == api.emu.admin.get_photo(with_photo["id"])
    assert items["2"]["body"]["@odata.mediaEtag"] and items["2"]["headers"]["Content-Type"].startswith(
        "application/json"
    )
    assert items["3"]["status"] == 404 and items["3"]["body"]["error"]["code"] == "ImageNotFound"
    assert items["4"]["status"] == 200 and items["4"]["body"]["@odata.count"] > 0
    assert items["5"]["body"] == "20"
    stats = api.emu.admin.stats()
    assert stats["batch_items"] == 5 and stats["photo_requests"] == 3


def test_put_photo_in_batch_with_base64_bodies(api: Api) -> None:
    users = [u for u in api.emu.admin.users() if u["mailbox"] == "cloud"][:2]
    red, blue = _jpeg("red"), _jpeg("blue", 300)
    resp = api.batch(
        [
            {
                "id": "a",
                "method": "PUT",
                "url": f"/users/{users[0]['id']}/photo/$value",
                "headers": {"Content-Type": "image/jpeg"},
                "body": base64.b64encode(red).decode(),
            },
            {
                "id": "b",
                "method": "PUT",
                "url": f"/users/{users[1]['id']}/photo/$value",
                "headers": {"Content-Type": "image/jpeg"},
                "body": base64.urlsafe_b64encode(blue).decode().rstrip("="),
            },
            {
                "id": "c",
                "method": "PUT",
                "url": f"/users/{users[1]['id']}/photo/$value",
                "headers": {"Content-Type": "image/jpeg"},
                "body": "***not base64***",
                "dependsOn": ["b"],
            },
        ]
    )
    items = {r["id"]: r for r in resp.json()["responses"]}
    assert items["a"]["status"] == 200 and items["b"]["status"] == 200 and items["c"]["status"] == 400
    assert api.emu.admin.get_user(users[1]["id"])["photo"]["width"] == 300


def test_batch_validation(api: Api) -> None:
    item = {"method": "GET", "url": "/users"}
    too_many = api.batch([{"id": str(i), **item} for i in range(21)])
    assert too_many.status_code == 400 and too_many.json()["error"]["code"] == "BadRequest"
    assert api.batch([{"id": str(i), **item} for i in range(20)]).status_code == 200
    dup = api.batch([{"id": "x", **item}, {"id": "X", **item}])
    assert dup.status_code == 400 and "duplicate" in dup.json()["error"]["message"]
    assert api.batch([{"id": "1", "method": "GET"}]).status_code == 400
    no_ct = api.batch([{"id": "1", "method": "PUT", "url": "/users/x/photo/$value", "body": "AAAA"}])
    assert no_ct.status_code == 400 and "Content-Type" in no_ct.json()["error"]["message"]
    assert api.batch([{"id": "1", "dependsOn": ["9"], **item}]).status_code == 400
    cycle = api.batch([{"id": "1", "dependsOn": ["2"], **item}, {"id": "2", "dependsOn": ["1"], **item}])
    assert cycle.status_code == 400
    assert (
        api.request("POST", "/$batch", data=b"{nope", headers={"Content-Type": "application/json"}).status_code == 400
    )
    absolute = api.batch([{"id": "1", "method": "GET", "url": "https://graph.microsoft.com/v1.0/users"}])
    assert absolute.status_code == 200 and absolute.json()["responses"][0]["status"] == 400


def test_depends_on_failure_gives_424(api: Api) -> None:
    ok = api.user(lambda u: u["mailbox"] == "cloud")
    resp = api.batch(
        [
            {"id": "1", "method": "GET", "url": "/users/ghost@contoso.example"},
            {"id": "2", "method": "GET", "url": f"/users/{ok['id']}", "dependsOn": ["1"]},
            {"id": "3", "method": "GET", "url": f"/users/{ok['id']}", "dependsOn": ["2"]},
            {"id": "4", "method": "GET", "url": f"/users/{ok['id']}"},
            {"id": "5", "method": "GET", "url": f"/users/{ok['id']}", "dependsOn": ["4"]},
        ]
    )
    status = {r["id"]: r["status"] for r in resp.json()["responses"]}
    assert status == {"1": 404, "2": 424, "3": 424, "4": 200, "5": 200}


def test_items_run_four_at_a_time(
    graph_emulator_factory: Callable[..., GraphEmulator], monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 items: 20 item latencies, none for the envelope, at most 4 at once (one mailbox's limit).

    Counted, not timed: the latencies the emulator sleeps are recorded as they start and end, so a
    loaded machine that wakes the emulator late cannot fail the test (an upper bound on the wall
    clock did); the lower bound is the sleeps' own, which load only lengthens.
    """
    emulator = graph_emulator_factory(latency_ms=200)
    api = make_api(emulator)
    user = api.user(lambda u: u["mailbox"] == "cloud" and u["hasPhoto"])
    batch = [{"id": str(i), "method": "GET", "url": f"/users/{user['id']}/photo"} for i in range(20)]
    api.batch(batch[:1])  # warm up the connection
    sleeping, peak, slept = [0], [0], [0]
    real_sleep = asyncio.sleep

    async def latency(seconds: float) -> None:
        if seconds != 0.2:  # not the configured latency: nothing to count
            await real_sleep(seconds)
            return
        sleeping[0] += 1  # one event loop: no lock needed
        peak[0], slept[0] = max(peak[0], sleeping[0]), slept[0] + 1
        try:
            await real_sleep(seconds)
        finally:
            sleeping[0] -= 1

    monkeypatch.setattr(asyncio, "sleep", latency)  # the emulator's loop looks it up at each call
    started = time.monotonic()
    resp = api.batch(batch)
    elapsed = time.monotonic() - started
    assert all(r["status"] == 200 for r in resp.json()["responses"])
    assert (slept[0], peak[0]) == (20, 4)  # one latency per item, none for the envelope; 4 at a time
    assert elapsed >= 0.98, elapsed  # ceil(20/4) latencies one after another


def test_items_are_throttled_one_by_one(graph_emulator_factory: Callable[..., GraphEmulator]) -> None:
    api = make_api(graph_emulator_factory(app_rate_per_s=5))
    batch = [{"id": str(i), "method": "GET", "url": "/users?$top=1"} for i in range(20)]
    items = api.batch(batch).json()["responses"]
    throttled = [r for r in items if r["status"] == 429]
    assert len(throttled) >= 14 and len([r for r in items if r["status"] == 200]) >= 5
    for item in throttled:
        assert int(item["headers"]["Retry-After"]) >= 1
        assert item["body"]["error"]["code"] == "TooManyRequests"
        assert item["body"]["error"]["innerError"]["code"] == "429"
    assert api.emu.admin.stats()["throttled"] == len(throttled)
