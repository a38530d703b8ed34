"""Unit tests: Graph wire shapes replayed from doc-authored cassettes, retry maths, token cache."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

import msal
import pytest
import vcr
from cryptography.fernet import Fernet

from connector.agents.exchange_online import ExchangeOnlineSettings
from connector.agents.exchange_online._graph import (
    BatchItem,
    GraphClient,
    GraphResponse,
    backoff_seconds,
    parse_retry_after,
)
from connector.agents.exchange_online._photos import (
    PhotoOutcome,
    PhotoTask,
    normalize_etag,
    pick_size,
    read_response,
)
from connector.agents.exchange_online._tokencache import EncryptedTokenCache, load_key
from connector.sdk import ConfigurationError

CASSETTES = Path(__file__).parent / "cassettes"

SETTINGS = ExchangeOnlineSettings(tenant_id="contoso", client_id="app", backoff_initial_s=0.5, backoff_max_s=8)


class _StubAuth:
    """Stands in for MSAL: the cassettes carry no token traffic (and no secrets)."""

    def token(self) -> str:
        return "stub"

    def invalidate(self, rejected: str) -> None:
        pass


def _path_matcher(r1: Any, r2: Any) -> None:
    assert r1.method == r2.method and r1.path.rsplit("/v1.0/", 1)[-1] == r2.path.rsplit("/v1.0/", 1)[-1]


@pytest.fixture(autouse=True)
def _replayed_read1(monkeypatch: pytest.MonkeyPatch) -> None:
    """vcrpy's replayed response takes no ``decode_content`` in ``read1`` (its ``read`` does), which
    urllib3's own takes and the Graph client's capped, streamed read passes (``connector.net``); a
    cassette keeps its bodies decoded, so the option changes nothing there."""
    from vcr.stubs import VCRHTTPResponse

    def read1(response: Any, amt: int = -1, decode_content: bool | None = None) -> bytes:
        return bytes(response._content.read1(amt))

    monkeypatch.setattr(VCRHTTPResponse, "read1", read1)


def _vcr() -> vcr.VCR:
    v = vcr.VCR(cassette_library_dir=str(CASSETTES), record_mode="none", match_on=["graph_path"])
    v.register_matcher("graph_path", _path_matcher)
    return v


def _client() -> GraphClient:
    import requests

    return GraphClient(SETTINGS, _StubAuth(), session_factory=requests.Session)  # type: ignore[arg-type]


def test_users_delta_page_from_the_docs() -> None:
    with _vcr().use_cassette("graph_photo_batch.yaml"):
        resp = _client().get_json(
            "users/delta?$select=id,userPrincipalName,mail,mailNickname,displayName,accountEnabled"
        )
    assert resp.ok
    values = resp.json_body["value"]
    assert [v.get("@removed") is not None for v in values] == [False, False, True]
    assert "$deltatoken=" in resp.json_body["@odata.deltaLink"]


def _tiny_jpeg() -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (240, 240), (10, 20, 30)).save(out, "JPEG")
    return out.getvalue()


def test_batch_items_from_the_docs() -> None:
    items = [
        BatchItem("GET", "/users/a/photo"),
        BatchItem("GET", "/users/b/photo"),
        BatchItem("GET", "/users/c/photo"),
        BatchItem("GET", "/users/d/photos/240x240/$value"),
    ]
    client = _client()
    with _vcr().use_cassette("graph_photo_batch.yaml"):
        meta, missing, throttled, binary = client.batch(items)  # answered out of order, matched by id
    follow = read_response(PhotoTask("a"), meta, "648x648")
    assert isinstance(follow, PhotoTask) and follow.kind == "get"
    assert follow.size == "240x240" and follow.etag == "BA09D118"  # never asks above the original
    assert isinstance(read_response(PhotoTask("b"), missing, "648x648"), PhotoOutcome)
    assert read_response(PhotoTask("b"), missing, "648x648").kind == "none"  # type: ignore[union-attr]
    assert throttled.status == 429 and throttled.retry_after == pytest.approx(2.128)
    assert client.item_retry(1, throttled) == pytest.approx(2.128)
    assert client.stats.throttled == 1 and client.stats.batch_items == 4
    # the docs' body is a JPEG header with no picture after it: no photo to stage (_photos._no_picture)
    assert binary.body.startswith(b"\xff\xd8")
    placeholder = read_response(PhotoTask("d", "get", "240x240", "BA09D118"), binary, "648x648")
    assert isinstance(placeholder, PhotoOutcome) and placeholder.kind == "error"
    assert placeholder.error == "graph-malformed-response"
    binary.body = photo = _tiny_jpeg()
    got = read_response(PhotoTask("d", "get", "240x240", "BA09D118"), binary, "648x648")
    assert isinstance(got, PhotoOutcome) and got.kind == "photo"
    assert got.data == photo and got.etag == "BA09D118"
    assert got.data is not None and got.checksum == got.data.sha256 == hashlib.sha256(photo).hexdigest()
    assert binary.body == b""  # taken out of the answer: the photo is held once (_photos._taken)
    # the bytes' ETag header (W/"f7ff...", 64 hex) is not a mediaEtag: never taken as the version
    assert binary.headers["etag"].startswith('W/"f7ff')
    binary.body = photo
    unversioned = read_response(PhotoTask("d", "get", "240x240"), binary, "648x648")
    assert isinstance(unversioned, PhotoOutcome) and unversioned.kind == "photo" and unversioned.etag is None


@pytest.mark.parametrize(
    ("header", "seconds"), [("10", 10.0), ("2.128", 2.128), (" 0 ", 0.0), ("soon", None), (None, None)]
)
def test_retry_after_parsing(header: str | None, seconds: float | None) -> None:
    assert parse_retry_after(header) == (pytest.approx(seconds) if seconds is not None else None)


def test_backoff_honours_retry_after_and_jitters_otherwise() -> None:
    assert backoff_seconds(3, 2.128, SETTINGS) == pytest.approx(2.128)
    assert backoff_seconds(1, 999.0, SETTINGS) == SETTINGS.retry_after_max_s
    waits = [backoff_seconds(4, None, SETTINGS) for _ in range(50)]
    assert all(2.0 <= w <= 4.0 for w in waits) and len(set(waits)) > 1  # 0.5 * 2**3 = 4, equal jitter
    assert all(backoff_seconds(20, None, SETTINGS) <= SETTINGS.backoff_max_s for _ in range(10))


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("ImageNotFound", 404, "none"),
        ("ErrorEntityNotFound", 404, "none"),
        ("ErrorItemNotFound", 404, "none"),
        ("GetUserPhoto", 404, "none"),
        ("Request_ResourceNotFound", 404, "gone"),
        ("MailboxNotHostedInExchangeOnline", 404, "none"),
        ("MailboxNotEnabledForRESTAPI", 404, "none"),
        ("MailboxNotSupportedForRESTAPI", 404, "none"),
        ("ErrorNonExistentMailbox", 404, "error"),
        ("AuthenticationError", 400, "error"),
        ("ErrorInsufficientPermissionsInAccessToken", 403, "error"),
    ],
)
def test_error_bodies(code: str, status: int, kind: str) -> None:
    resp = GraphResponse(status, {}, b"", {"error": {"code": code, "message": "m"}})
    out = read_response(PhotoTask("u"), resp, "648x648")
    assert isinstance(out, PhotoOutcome) and out.kind == kind


def test_legacy_no_photo_and_unchanged() -> None:
    legacy = GraphResponse(200, {}, b"", {"@odata.mediaEtag": "", "id": "1x1", "width": 1, "height": 1})
    assert read_response(PhotoTask("u"), legacy, "648x648").kind == "none"  # type: ignore[union-attr]
    gif = GraphResponse(200, {"content-type": "image/gif"}, b"GIF89a\x01\x00\x01\x00rest")
    assert read_response(PhotoTask("u", "get"), gif, "648x648").kind == "none"  # type: ignore[union-attr]
    meta = GraphResponse(200, {}, b"", {"@odata.mediaEtag": '"AB12"', "width": 648, "height": 648})
    same = read_response(PhotoTask("u", baseline=(True, "AB12")), meta, "648x648")
    assert isinstance(same, PhotoOutcome) and same.kind == "unchanged"
    changed = read_response(PhotoTask("u", baseline=(True, "OLD")), meta, "96x96")
    assert isinstance(changed, PhotoTask) and changed.size == "96x96"


def test_sizes_and_etags() -> None:
    assert pick_size("648x648", 2000, 1500) == "648x648"
    assert pick_size("648x648", 800, 600) == "504x504"
    assert pick_size("648x648", 30, 30) is None
    assert normalize_etag('W/"abc"') == normalize_etag('"abc"') == "abc"
    assert normalize_etag('""') is None


def test_settings_refuse_unbounded_sizes_and_plain_http() -> None:
    with pytest.raises(ValueError):
        ExchangeOnlineSettings(tenant_id="t", client_id="c", photo_size="1024x1024")
    with pytest.raises(ValueError):
        ExchangeOnlineSettings(tenant_id="t", client_id="c", graph_url="http://graph")
    with pytest.raises(ValueError):
        ExchangeOnlineSettings(tenant_id="t", client_id="c", auth_mode="app")


def test_token_cache_encrypted_atomic_0600(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key = Fernet.generate_key()
    monkeypatch.setenv("K", key.decode())
    assert load_key("K", None) == key
    cache = EncryptedTokenCache(tmp_path / "c.bin", key)
    cache.cache.add(
        {
            "client_id": "app",
            "scope": ["s"],
            "token_endpoint": "https://login.example/t/oauth2/v2.0/token",
            "response": {
                "access_token": "AT-SECRET",
                "refresh_token": "RT-SECRET",
                "expires_in": 3600,
                "token_type": "Bearer",
            },
        }
    )
    assert cache.persist_if_changed() and not cache.persist_if_changed()
    blob = (tmp_path / "c.bin").read_bytes()
    assert b"RT-SECRET" not in blob and b"AT-SECRET" not in blob
    assert stat.S_IMODE(os.stat(tmp_path / "c.bin").st_mode) == 0o600
    again = EncryptedTokenCache(tmp_path / "c.bin", key)
    refresh = next(iter(again.cache.search(msal.TokenCache.CredentialType.REFRESH_TOKEN)))
    assert refresh["secret"] == "RT-SECRET"
    with pytest.raises(ConfigurationError):
        EncryptedTokenCache(tmp_path / "c.bin", Fernet.generate_key())
    monkeypatch.delenv("K")
    with pytest.raises(ConfigurationError) as missing:
        load_key("K", None)
    assert "K" in str(missing.value)


@pytest.mark.parametrize("listed", [None, {"0": {"status": 200}}, "responses", [None, 3, {"id": "1", "status": 404}]])
def test_a_batch_envelope_without_a_usable_responses_list_fails_its_items_not_the_run(
    listed: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connector.agents.exchange_online._graph import BatchItem, GraphResponse

    client = _client()
    monkeypatch.setattr(client, "request", lambda *a, **k: GraphResponse(200, {}, b"", {"responses": listed}))
    out = client.batch([BatchItem("GET", "/users/a/photo"), BatchItem("GET", "/users/b/photo")])
    # item 0 is missing everywhere: a retryable per-item failure; item 1 is read when it is there
    assert out[0].status == 503 and out[0].error_code == "MissingBatchItem"
    assert out[1].status == (404 if isinstance(listed, list) else 503)


def test_a_request_that_fails_before_sending_hands_its_share_of_the_limit_back() -> None:
    """The limiter is shared by the process: an authentication stop must not shrink it for later steps."""
    import requests

    from connector.sdk import AuthenticationError

    class _RevokedAuth(_StubAuth):
        def token(self) -> str:
            raise AuthenticationError("refresh token revoked; run mvsync auth login")

    client = GraphClient(SETTINGS, _RevokedAuth(), session_factory=requests.Session)  # type: ignore[arg-type]
    ticket = client.limiter.acquire(4)
    with pytest.raises(AuthenticationError):
        client.batch([BatchItem("GET", "/users/a/photo")], ticket=ticket)
    with pytest.raises(AuthenticationError):
        client.get_json("users")
    assert client.limiter.in_flight == 0


@pytest.mark.parametrize(
    ("limit", "waiting", "size"),
    [
        (48, 5000, 20),  # plenty waiting: full batches
        (48, 240, 20),  # five rounds of the limit: still full batches
        (48, 200, 20),  # five rounds (the last one short)
        (48, 90, 8),  # two rounds: eight per batch, twelve batches at once
        (48, 30, 4),  # one round: four per batch
        (4, 30, 20),  # a strict limit (one batch at a time): no point in splitting
        (12, 30, 12),  # three batches at once, three rounds
    ],
)
def test_the_photo_worker_shares_the_last_tasks_among_the_batches_the_limit_runs(
    limit: int, waiting: int, size: int
) -> None:
    """Graph runs a $batch four items at a time: the tail of a run in a few full batches would run
    for five rounds on a few lanes while the rest of the limit idles."""
    from types import SimpleNamespace

    from connector.agents.exchange_online._import import PhotoWorker
    from connector.throttling import AdaptiveLimiter

    limiter = AdaptiveLimiter("test", ceiling=64, initial=limit)
    importer = SimpleNamespace(settings=SETTINGS, connector=SimpleNamespace(graph=SimpleNamespace(limiter=limiter)))
    worker = PhotoWorker(importer)  # type: ignore[arg-type]
    assert worker.batch_size == 20
    assert worker.take_size(waiting) == size


def _photo_worker(limiter: Any, sent: list[int]) -> Any:
    """A ``PhotoWorker`` on ``limiter`` whose ``$batch``es are answered "no photo" and counted into ``sent``."""
    from types import SimpleNamespace

    from connector.agents.exchange_online._graph import GraphResponse
    from connector.agents.exchange_online._import import PhotoWorker

    def batch(items: list[Any], **_: Any) -> list[GraphResponse]:
        sent.append(len(items))
        return [GraphResponse(404, {}, b"", {"error": {"code": "ImageNotFound"}}) for _ in items]

    graph = SimpleNamespace(limiter=limiter, batch=batch)
    importer = SimpleNamespace(
        settings=SETTINGS,
        connector=SimpleNamespace(graph=graph),
        outcome=lambda outcome: [],
        limit=SimpleNamespace(update=list),
    )
    return PhotoWorker(importer)  # type: ignore[arg-type]


def test_a_full_batch_whose_turn_comes_after_the_stream_ended_is_sized_for_what_is_left() -> None:
    """A thread that took a full batch while users were still being listed, then waited for the limiter
    until the listing had ended, sends what the tasks left now call for and hands the rest back.

    Why: more threads wait so than the limit has batches, each holding twenty tasks. Sent whole at the end
    of a run, twenty items run five of Graph's rounds after the rest of the limit has finished (a
    no-change delta of 2,000 users ended 4 % later). A batch taken after the end is sent as taken.
    """
    import threading

    from connector.agents.exchange_online._photos import PhotoTask
    from connector.sdk import Deferred
    from connector.throttling import AdaptiveLimiter, Signal

    limiter = AdaptiveLimiter("test", ceiling=64, initial=48)
    waiting_for_room = threading.Event()

    class _Limiter:
        """The real limiter; says when a thread has asked it for room."""

        def __getattr__(self, name: str) -> Any:
            return getattr(limiter, name)

        def acquire(self, *args: Any, **kwargs: Any) -> Any:
            waiting_for_room.set()
            return limiter.acquire(*args, **kwargs)

    sent: list[int] = []
    worker = _photo_worker(_Limiter(), sent)
    tasks = [Deferred(worker, PhotoTask(f"user-{n}")) for n in range(20)]
    held = limiter.acquire(48)  # the limit is in use: the next batch waits for room
    results: list[list[Any]] = []
    runner = threading.Thread(target=lambda: results.extend(worker.run(tasks, threading.Event())))
    runner.start()
    assert waiting_for_room.wait(10)
    assert worker.take_size(6) == 4  # the listing ended: six tasks wait, one round's worth for each batch
    limiter.release(held, Signal.OK)
    runner.join(10)
    assert sent == [4]  # 6 waiting and its own 20: one round of the limit
    assert results[4:] == [[task] for task in tasks[4:]]  # handed back unsent, in order

    after = [Deferred(worker, PhotoTask(f"late-{n}")) for n in range(8)]
    worker.run(after, threading.Event())
    assert sent == [4, 8]  # taken after the end: sized by take_size then, sent as taken


def test_against_a_rate_a_batch_runs_one_round_and_hands_the_rest_back() -> None:
    """Once the limiter has seen a rate (``rate_bound``), twenty tasks on four units go out as four items.

    Why: a token bucket run dry refuses every item still queued in a batch, one after another, so a
    twenty-item batch cost twenty refusals for four units (23 % of requests refused at 150 requests/s
    with 20 ms round trips). The sixteen left are handed back unsent, first in line.
    """
    import threading

    from connector.agents.exchange_online._photos import PhotoTask
    from connector.sdk import Deferred
    from connector.throttling import AdaptiveLimiter

    sent: list[int] = []
    # at the ceiling the client's own bound binds, not the rate: one-round batches would only cost five
    # times the requests (the 50,000-user import at 0 ms took 87 s instead of 38)
    for ceiling, rate_bound, expected in ((64, True, [4]), (64, False, [20]), (12, True, [20])):
        limiter = AdaptiveLimiter("test", ceiling=ceiling)
        limiter.recall(12, rate_bound=rate_bound)
        worker = _photo_worker(limiter, sent)
        tasks = [Deferred(worker, PhotoTask(f"user-{n}")) for n in range(20)]
        sent.clear()
        results = worker.run(tasks, threading.Event())
        assert sent == expected
        assert results[expected[0] :] == [[task] for task in tasks[expected[0] :]]


def test_a_batch_decodes_each_binary_body_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The docs' ``$batch`` (one JPEG in base64 beside a 429): its JPEG is decoded once, by ``batch``.

    Before, the check for push-back in the envelope (``_worst_item_pushback``) built every item as an
    answer first, so each photo of a ``$batch`` was decoded twice: 2 calls here, now 1, and the throttled
    item still tells the limiter (``throttled`` counted, Retry-After read)."""
    import base64

    decoded: list[int] = []
    real = base64.b64decode

    def counting(data: Any, *args: Any, **kwargs: Any) -> bytes:
        decoded.append(len(data))
        return real(data, *args, **kwargs)

    monkeypatch.setattr(base64, "b64decode", counting)
    items = [BatchItem("GET", f"/users/{u}/photo") for u in "abc"]
    items.append(BatchItem("GET", "/users/d/photos/240x240/$value"))
    client = _client()
    with _vcr().use_cassette("graph_photo_batch.yaml"):
        out = client.batch(items)
    assert out[3].body.startswith(b"\xff\xd8")
    assert len(decoded) == 1
    assert out[2].status == 429 and client.stats.throttled == 1


def test_the_worst_push_back_of_a_batch_is_read_without_the_other_items_bodies() -> None:
    """``_worst_item_pushback`` as before the single decode: the item with the longest Retry-After
    (the first of equals), the share of pushed-back items among the listed dicts and their number
    (what the batch ran tells the limiter's census); a 503 without Retry-After, a status that is none
    and a photo are not push-back."""
    from connector.agents.exchange_online._graph import _worst_item_pushback

    photo = {"id": "0", "status": 200, "headers": {"Content-Type": "image/jpeg"}, "body": "/9j/4AAQ"}
    slow = {"id": "1", "status": 429, "headers": {"Retry-After": "5"}, "body": {"error": {"code": "TooManyRequests"}}}
    same = {"id": "2", "status": 503, "headers": {"retry-after": "5"}, "body": {"error": {"code": "Later"}}}
    quick = {"id": "3", "status": 429, "headers": {"Retry-After": "1"}}
    failed = {"id": "4", "status": 503, "headers": {}}
    odd = {"id": "5", "status": "soon", "headers": {"Retry-After": "9"}}
    worst, share, items = _worst_item_pushback({"responses": [photo, slow, same, quick, failed, odd, "x"]})
    assert worst is not None and worst.status == 429 and worst.retry_after == 5.0
    assert worst.error_code == "TooManyRequests"
    assert (share, items) == (pytest.approx(3 / 6), 6)
    assert _worst_item_pushback({"responses": [photo, failed, odd]}) == (None, 0.0, 3)
    assert _worst_item_pushback({"responses": "x"}) == (None, 0.0, 0)
    assert _worst_item_pushback(None) == (None, 0.0, 0)
