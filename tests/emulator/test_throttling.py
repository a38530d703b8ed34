"""Throttling model: per-mailbox 4 concurrent and 10,000/10 min, per-app rate and concurrency, Retry-After."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from connector.emulator import GraphEmulator, parse_throttle
from tests.emulator.conftest import Api, make_api
from tests.harness.emulator import emulator_http


def _parallel(api: Api, paths: list[str]) -> list[requests.Response]:
    """Fire all requests at once, one connection each (sessions are not thread-safe)."""
    sessions = [emulator_http(api.emu) for _ in paths]
    for s in sessions:  # open the connections first so the requests really overlap
        s.get(api.emu.info["authority"] + "/v2.0/.well-known/openid-configuration", timeout=10)

    def call(args: tuple[requests.Session, str]) -> requests.Response:
        session, path = args
        return session.get(api.graph + path, headers=api.headers, timeout=10)

    with ThreadPoolExecutor(len(paths)) as pool:
        results = list(pool.map(call, zip(sessions, paths, strict=True)))
    for s in sessions:
        s.close()
    return results


def _codes(responses: list[requests.Response]) -> list[Any]:
    return sorted((r.status_code, r.json()["error"]["code"] if r.status_code >= 400 else "") for r in responses)


def test_mailbox_allows_four_concurrent(graph_emulator_factory: Callable[..., GraphEmulator]) -> None:
    api = make_api(graph_emulator_factory(latency_ms=400))
    user = api.user(lambda u: u["mailbox"] == "cloud" and u["hasPhoto"])
    responses = _parallel(api, [f"/users/{user['id']}/photo"] * 7)
    assert _codes(responses) == [(200, "")] * 4 + [(429, "ApplicationThrottled")] * 3
    throttled = [r for r in responses if r.status_code == 429]
    assert throttled[0].json()["error"]["message"] == "Application is over its MailboxConcurrency limit."
    assert throttled[0].headers["Retry-After"] == "1"
    # different mailboxes are independent in the default (per app+mailbox) scope
    others = [u for u in api.emu.admin.users() if u["mailbox"] == "cloud"][:6]
    assert all(r.status_code in (200, 404) for r in _parallel(api, [f"/users/{u['id']}/photo" for u in others]))


def test_mailbox_concurrency_per_app_scope(graph_emulator_factory: Callable[..., GraphEmulator]) -> None:
    api = make_api(graph_emulator_factory(latency_ms=400, mailbox_concurrency_scope="app"))
    users = [u for u in api.emu.admin.users() if u["mailbox"] == "cloud"][:6]
    codes = [r.status_code for r in _parallel(api, [f"/users/{u['id']}/photo" for u in users])]
    assert codes.count(429) == 2


def test_app_concurrency(graph_emulator_factory: Callable[..., GraphEmulator]) -> None:
    api = make_api(graph_emulator_factory(latency_ms=400, app_concurrency=3))
    users = api.emu.admin.users()[:5]
    responses = _parallel(api, [f"/users/{u['id']}" for u in users])
    assert _codes(responses) == [(200, "")] * 3 + [(429, "TooManyRequests")] * 2
    body = next(r for r in responses if r.status_code == 429).json()["error"]
    assert body["message"] == "Please retry again later."
    assert body["innerError"]["code"] == "429" and body["innerError"]["status"] == "429"


def test_app_rate_and_integer_retry_after(graph_emulator_factory: Callable[..., GraphEmulator]) -> None:
    api = make_api(graph_emulator_factory(app_rate_per_s=4))
    codes = [api.get("/users?$top=1").status_code for _ in range(8)]
    assert codes[:4] == [200] * 4 and 429 in codes[4:]
    throttled = api.get("/users?$top=1")
    assert throttled.status_code == 429 and re.fullmatch(r"\d+", throttled.headers["Retry-After"])
    time.sleep(float(throttled.headers["Retry-After"]))
    assert api.get("/users?$top=1").status_code == 200  # honouring Retry-After gets through


def test_decimal_retry_after(graph_emulator_factory: Callable[..., GraphEmulator]) -> None:
    api = make_api(graph_emulator_factory(app_rate_per_s=2, retry_after_format="decimal"))
    responses = [api.get("/users?$top=1") for _ in range(4)]
    retry = [r.headers["Retry-After"] for r in responses if r.status_code == 429]
    assert retry and all(re.fullmatch(r"\d+\.\d{3}", v) for v in retry)
    assert 0 < float(retry[0]) <= 0.5


def test_mailbox_request_budget(graph_emulator_factory: Callable[..., GraphEmulator]) -> None:
    api = make_api(graph_emulator_factory(mailbox_requests_per_10min=3))
    user = api.user(lambda u: u["mailbox"] == "cloud" and u["hasPhoto"])
    codes = [api.get(f"/users/{user['id']}/photo/$value").status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    last = api.get(f"/users/{user['userPrincipalName']}/photo/$value")  # same mailbox by UPN
    assert last.status_code == 429 and int(last.headers["Retry-After"]) > 100  # 3 per 600 s refills slowly
    other = api.user(lambda u: u["mailbox"] == "cloud" and u["id"] != user["id"])
    assert api.get(f"/users/{other['id']}/photo").status_code in (200, 404)


def test_limits_can_be_changed_mid_run(api: Api) -> None:
    api.emu.admin.set_limits(app_rate_per_s=1, app_concurrency=None)
    assert [api.get("/users?$top=1").status_code for _ in range(3)].count(429) >= 1
    api.emu.admin.set_limits(app_rate_per_s=None, app_concurrency=None)
    assert all(api.get("/users?$top=1").status_code == 200 for _ in range(5))


def test_mailbox_upload_budget(graph_emulator_factory: Callable[..., GraphEmulator]) -> None:
    """Outlook's upload limit: bytes of PUT bodies per app and mailbox per 5 minutes (150 MB by default)."""
    import io

    from PIL import Image

    noisy = Image.effect_noise((400, 400), 80).convert("RGB")
    buffer = io.BytesIO()
    noisy.save(buffer, "JPEG", quality=95)
    photo = buffer.getvalue()
    api = make_api(graph_emulator_factory(mailbox_upload_bytes_per_5min=int(len(photo) * 1.5)))
    user = api.user(lambda u: u["mailbox"] == "cloud")
    url = f"/users/{user['id']}/photo/$value"
    headers = {"Content-Type": "image/jpeg"}
    assert api.request("PUT", url, data=photo, headers=headers).status_code == 200
    refused = api.request("PUT", url, data=photo, headers=headers)
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "ApplicationThrottled"
    assert "Upload" in refused.json()["error"]["message"] and float(refused.headers["Retry-After"]) > 0
    assert api.get(url).status_code == 200  # reads are not uploads
    other = api.user(lambda u: u["mailbox"] == "cloud" and u["id"] != user["id"])
    assert api.request("PUT", f"/users/{other['id']}/photo/$value", data=photo, headers=headers).status_code == 200


def test_the_limit_percentage_header_warns_before_the_resource_unit_budget_runs_out(
    graph_emulator_factory: Callable[..., GraphEmulator],
) -> None:
    """Identity APIs send x-ms-throttle-limit-percentage once more than 0.8 of the budget is used."""
    api = make_api(graph_emulator_factory(directory_ru_per_10s=40))
    seen: list[float] = []
    for _ in range(400):  # GET /users?$top=1 costs 1 resource unit ($top below 20 takes one off); 4 refill per s
        resp = api.get("/users?$top=1")
        if resp.status_code == 429:
            break
        header = resp.headers.get("x-ms-throttle-limit-percentage")
        if header is not None:
            seen.append(float(header))
    assert seen, "no early warning before the 429"
    assert all(0.8 < value <= 1.0 for value in seen)
    assert resp.status_code == 429 and resp.headers.get("x-ms-throttle-information") == "ResourceUnitLimitExceeded"


def test_a_named_model_can_be_switched_mid_run(graph_emulator_factory: Callable[..., GraphEmulator]) -> None:
    emu = graph_emulator_factory(latency_ms=1500)  # long enough for all six to overlap on a busy machine
    api = make_api(emu)
    users = [u["id"] for u in emu.admin.users()][:6]
    assert all(r.status_code != 429 for r in _parallel(api, [f"/users/{u}/photo" for u in users]))
    limits = emu.admin.set_throttle("outlook-per-app")
    assert limits["mailbox_concurrency_scope"] == "app"
    statuses = [r.status_code for r in _parallel(api, [f"/users/{u}/photo" for u in users])]
    assert statuses.count(429) == 2  # six different mailboxes, but only 4 photo requests per app now


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ('{"app_concurrency": "x"}', "throttling limit 'app_concurrency' cannot be 'x': Input should be a valid int"),
        ('{"app_concurrency": -1}', "throttling limit 'app_concurrency' cannot be -1: Input should be greater than"),
        ('{"app_rate_per_s": 0}', "throttling limit 'app_rate_per_s' cannot be 0: Input should be greater than 0"),
        ('{"app_concurrency": true}', "throttling limit 'app_concurrency' cannot be True"),
        ('{"app_rate_per_s": -1}', "throttling limit 'app_rate_per_s' cannot be -1: Input should be greater than 0"),
        ('{"mailbox_concurrency_scope": "tenant"}', "throttling limit 'mailbox_concurrency_scope' cannot be 'tenant'"),
        ('{"retry_after_format": "http-date"}', "throttling limit 'retry_after_format' cannot be 'http-date'"),
        ('{"base": "nope"}', "unknown throttling model 'nope'"),
        ('{"base": {"app_concurrency": 4}}', "a throttling model's base must be a model name"),
        ("[4]", "unknown throttling model '[4]'"),
        ('{"app_concurrency": 4', "throttling model is not valid JSON"),
    ],
)
def test_a_limit_the_emulator_cannot_take_is_refused_with_its_name(spec: str, says: str) -> None:
    """Found here, not on the first request: the command line says it in one line with exit code 2."""
    with pytest.raises(ValueError, match="^" + re.escape(says)):
        parse_throttle(spec)


def test_a_json_model_takes_what_each_limit_takes() -> None:
    spec = '{"base": "rate-150", "app_rate_per_s": 75, "app_concurrency": null, "directory_ru_per_10s": 0}'
    limits = parse_throttle(spec)
    assert limits["app_rate_per_s"] == 75.0 and isinstance(limits["app_rate_per_s"], float)
    assert limits["app_concurrency"] is None and limits["directory_ru_per_10s"] == 0
    assert limits["mailbox_concurrency_scope"] == "mailbox"  # the base model's, untouched
    assert parse_throttle({"app_concurrency": 0})["app_concurrency"] == 0  # a tenant that admits nothing
