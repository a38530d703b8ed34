"""Fault profiles: named and custom, deterministic from the seed, resets and truncated bodies on the wire."""

from __future__ import annotations

import base64
import gzip
import re
from collections.abc import Callable
from dataclasses import replace

import pytest
import requests

from connector.emulator import PROFILES, GraphEmulator, parse_faults
from tests.emulator.conftest import make_api


def test_parse_profiles() -> None:
    assert parse_faults(None).active is False
    assert parse_faults("resilience") == PROFILES["resilience"]
    res = PROFILES["resilience"]
    assert (res.rate_429, res.rate_503, res.rate_reset, res.rate_truncate) == (0.10, 0.02, 0.01, 0.01)
    custom = parse_faults('{"429": 0.5, "retry_after": 2.5, "retry_after_decimal": true, "base": "light"}')
    assert custom.rate_429 == 0.5 and custom.rate_503 == PROFILES["light"].rate_503
    assert parse_faults({"reset": 0.2}).rate_reset == 0.2
    for bad in ("nope", {"bogus": 1}, {"429": 0.9, "503": 0.5}):
        with pytest.raises(ValueError):
            parse_faults(bad)


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ('{"base": "nope"}', "unknown base fault profile 'nope'; known: none, light, resilience, storm"),
        ('{"429": "x"}', "fault setting '429' cannot be 'x': Input should be a valid number"),
        ('{"retry_after_decimal": 1}', "fault setting 'retry_after_decimal' cannot be 1: Input should be a valid bool"),
        ("{bad", "fault profile is not valid JSON"),
        ('{"speed": 1}', "unknown fault setting 'speed'; known: 429, 503"),
    ],
)
def test_a_bad_fault_setting_is_a_value_error_that_names_it(spec: str, says: str) -> None:
    """The command line turns these into one line and exit code 2; a KeyError or a late crash would be a traceback."""
    with pytest.raises(ValueError, match="^" + re.escape(says)):
        parse_faults(spec)
    # the values a setting does take go through as that type
    taken = parse_faults('{"429": 1, "retry_after": null}')
    assert taken == replace(PROFILES["none"], name="custom", rate_429=1.0, retry_after_s=None)


def _outcomes(emu: GraphEmulator, paths: list[str]) -> list[str]:
    api = make_api(emu)
    out: list[str] = []
    for path in paths:
        try:
            resp = api.get(path)
            out.append(f"{resp.status_code}:{resp.headers.get('Retry-After', '')}")
        except requests.exceptions.ChunkedEncodingError:
            out.append("truncated")
        except requests.exceptions.ConnectionError:
            out.append("reset")
            api.http.close()
    return out


def test_faults_are_deterministic_and_on_the_wire(
    graph_emulator_factory: Callable[..., GraphEmulator],
) -> None:
    storm = {"base": "storm", "latency": 0.0}  # the storm mix without its extra latency (fast test)
    a = graph_emulator_factory(seed=5, faults=storm, users=10)
    b = graph_emulator_factory(seed=5, faults=storm, users=10)
    ids = [u["id"] for u in a.admin.users()]
    paths = [f"/users/{ids[i % len(ids)]}/photo" for i in range(150)]
    first, second = _outcomes(a, paths), _outcomes(b, paths)
    assert first == second
    kinds = {o.split(":")[0] for o in first}
    assert {"429", "503", "504", "reset", "truncated"} <= kinds
    assert "429:2.128" in first  # storm sends decimal Retry-After
    stats = a.admin.stats()
    assert stats["faults_injected"] == sum(
        stats["faults"].get(k, 0) for k in ("429", "503", "504", "reset", "truncate")
    )
    c = graph_emulator_factory(seed=6, faults=storm, users=10)
    assert _outcomes(c, paths) != first


def test_resilience_mix_rates(graph_emulator_factory: Callable[..., GraphEmulator]) -> None:
    emu = graph_emulator_factory(seed=1, faults="resilience", users=5)
    api = make_api(emu)
    codes = []
    for i in range(400):
        try:
            codes.append(api.get(f"/users?$top=1&n={i}").status_code)
        except requests.exceptions.RequestException:
            codes.append(0)
            api.http.close()
    assert 20 <= codes.count(429) <= 65 and codes.count(503) <= 20 and codes.count(0) <= 20


def test_set_faults_mid_run_and_batch_items(api_factory_emu: GraphEmulator) -> None:
    api = make_api(api_factory_emu)
    assert api.get("/users?$top=1").status_code == 200
    api.emu.admin.set_faults({"429": 1.0, "retry_after": 3})
    resp = api.get("/users?$top=1")
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "3"
    api.emu.admin.set_faults({"reset": 1.0})
    with pytest.raises(requests.exceptions.ConnectionError):
        api.get("/users?$top=1")
    api.http.close()
    api.emu.admin.set_faults(None)
    assert api.get("/users?$top=1").status_code == 200
    assert api.emu.admin.stats()["faults"] == {"429": 1, "reset": 1}


@pytest.fixture
def api_factory_emu(graph_emulator_factory: Callable[..., GraphEmulator]) -> GraphEmulator:
    return graph_emulator_factory(users=5)


def test_batch_item_faults(graph_emulator_factory: Callable[..., GraphEmulator]) -> None:
    emu = graph_emulator_factory(users=5, seed=3)
    api = make_api(emu)
    emu.admin.set_faults({"503": 0.5, "reset": 0.0})
    seen: set[int] = set()
    for n in range(5):
        try:
            resp = api.batch([{"id": str(i), "method": "GET", "url": f"/users?$top=1&n={n}-{i}"} for i in range(10)])
        except requests.exceptions.RequestException:
            api.http.close()
            continue
        if resp.status_code == 200:
            seen |= {r["status"] for r in resp.json()["responses"]}
    assert {200, 503} <= seen


def test_a_path_pattern_confines_faults_to_matching_requests_and_batch_items(
    graph_emulator_factory: Callable[..., GraphEmulator],
) -> None:
    """Graph's front door works while one workload fails: a `$batch` envelope (its path does not match)
    comes back 200 with the matching items failed, the others served."""
    emu = graph_emulator_factory(users=5, seed=3)
    api = make_api(emu)
    ids = [u["id"] for u in emu.admin.users()]
    emu.admin.set_faults({"504": 1.0, "retry_after": None, "path_pattern": f"/users/{ids[0]}/photo"})
    assert api.get(f"/users/{ids[0]}/photo").status_code == 504
    assert api.get(f"/users/{ids[1]}").status_code == 200
    resp = api.batch([{"id": str(i), "method": "GET", "url": f"/users/{user}/photo"} for i, user in enumerate(ids[:3])])
    assert resp.status_code == 200
    statuses = {r["id"]: r["status"] for r in resp.json()["responses"]}
    assert statuses["0"] == 504 and 504 not in (statuses["1"], statuses["2"])
    with pytest.raises(ValueError, match="path_pattern is no regular expression"):
        parse_faults({"504": 1.0, "path_pattern": "("})


def test_a_gzip_photo_fault_sends_one_users_photo_gzip_encoded_and_oversized(
    graph_emulator_factory: Callable[..., GraphEmulator],
) -> None:
    """``gzip_photo``: the user's photo download answers a gzip body that decodes to that many bytes (a
    JPEG's start, then zeros), on its own and inside a ``$batch`` (the envelope gzip-encoded around the
    photo's base64); the user's metadata and the other users are served as ever."""
    emu = graph_emulator_factory(users=6, seed=3, photo_ratio=1.0)
    api = make_api(emu)
    ids = [u["id"] for u in emu.admin.users() if u["hasPhoto"]]
    size = (1 << 20) + 2  # not a multiple of 3: the base64 ends with padding
    emu.admin.set_faults({"gzip_photo": size, "path_pattern": f"/users/{ids[0]}/photo"})
    alone = api.get(f"/users/{ids[0]}/photo/$value", stream=True)
    wire = alone.raw.read(decode_content=False)
    assert alone.headers["Content-Encoding"] == "gzip" and len(wire) < size // 100
    photo = gzip.decompress(wire)
    assert len(photo) == size and photo.startswith(b"\xff\xd8\xff") and not photo[3:].strip(b"\0")
    urls = [f"/users/{ids[0]}/photo/$value", f"/users/{ids[0]}/photo", f"/users/{ids[1]}/photo/$value"]
    resp = api.batch([{"id": str(i), "method": "GET", "url": url} for i, url in enumerate(urls)])
    assert resp.headers["Content-Encoding"] == "gzip"
    items = {r["id"]: r for r in resp.json()["responses"]}
    assert base64.b64decode(items["0"]["body"], validate=True) == photo
    assert items["1"]["body"]["@odata.mediaEtag"] and base64.b64decode(items["2"]["body"])[:2] == b"\xff\xd8"
    assert emu.admin.stats()["faults"] == {"gzip_photo": 2}
    with pytest.raises(ValueError, match="gzip_photo_bytes must be >= 0"):
        parse_faults({"gzip_photo": -1})
