"""A page of ``GET /users`` or ``users/delta`` costs the emulator what the page holds, not the tenant.

Benchmarks measure the agent against the emulator at 100,000 users; when each page filtered, sorted and
scanned the whole tenant again, the emulator was the limit. Cost is read from the emulator's
``users_examined`` counter, never from the clock, so the tests hold on a loaded machine.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from typing import Any

from connector.emulator import GraphEmulator
from tests.emulator.conftest import Api, make_api

EVENTUAL = {"ConsistencyLevel": "eventual"}
MAILBOX_USERS = "/users?$select=id,mail&$filter=mail ne null&$count=true&$top=25"


def _pages(api: Api, url: str, headers: dict[str, str]) -> Iterator[tuple[dict[str, Any], int]]:
    """Each page of a listing with the number of users the emulator examined to serve it."""
    next_url: str | None = url
    while next_url:
        before = api.emu.admin.stats().get("users_examined", 0)
        body = api.get(next_url, headers=headers).json()
        yield body, api.emu.admin.stats().get("users_examined", 0) - before
        next_url = body.get("@odata.nextLink")


def _listing_cost(emu: GraphEmulator, url: str, headers: dict[str, str]) -> tuple[int, list[int]]:
    """How many users a listing returned, and what each page after the first examined."""
    api = make_api(emu)
    pages = list(_pages(api, url, headers))
    api.http.close()
    return sum(len(body["value"]) for body, _ in pages), [examined for _, examined in pages[1:]]


def test_a_users_page_examines_only_its_own_users(graph_emulator_factory: Callable[..., GraphEmulator]) -> None:
    for size in (100, 1000):
        listed, later_pages = _listing_cost(graph_emulator_factory(users=size), MAILBOX_USERS, EVENTUAL)
        assert listed > size // 2 and len(later_pages) == -(-listed // 25) - 1
        # before: every page filtered and sorted the whole tenant again (examined [size] * pages)
        assert later_pages == [25] * (len(later_pages) - 1) + [listed - 25 * len(later_pages)], size


def test_a_change_to_the_tenant_between_pages_is_seen_by_the_next_page(api: Api) -> None:
    pages = _pages(api, "/users?$select=id,displayName&$top=5&$orderby=displayName", {})
    first, _ = next(pages)
    added = api.emu.admin.add_user(givenName="Zz", surname="Last", displayName="zzz last")
    listed = [u["id"] for body, _ in pages for u in body["value"]] + [u["id"] for u in first["value"]]
    assert added["id"] in listed and len(listed) == len(set(listed)) == 21


def test_descending_pages_are_the_ascending_listing_reversed(session_api: Api) -> None:
    def listing(order: str) -> list[str]:
        url = f"/users?$select=id,displayName&$top=30&$orderby=displayName {order}"
        return [u["id"] for body, _ in _pages(session_api, url, {}) for u in body["value"]]

    ascending = listing("asc")
    assert len(ascending) == 200 and listing("desc") == ascending[::-1]


def test_a_skiptoken_the_emulator_did_not_make_is_a_bad_request(session_api: Api) -> None:
    for key in ([1, 2], ["a"], "k", None):
        token = base64.urlsafe_b64encode(json.dumps({"k": key}).encode()).decode().rstrip("=")
        resp = session_api.get(f"/users?$top=5&$skiptoken={token}")
        # before: a non-string key reached the comparison and the emulator answered 500
        assert resp.status_code == 400, (key, resp.status_code)
        assert resp.json()["error"]["message"] == "The specified page token value is not valid."


def test_a_delta_page_examines_only_the_users_it_may_list(graph_emulator_factory: Callable[..., GraphEmulator]) -> None:
    prefer = {"Prefer": "odata.maxpagesize=50"}
    emu = graph_emulator_factory(users=1000)
    api = make_api(emu)
    pages = list(_pages(api, "/users/delta?$select=id,mail", prefer))
    assert sum(len(body["value"]) for body, _ in pages) == 1000
    # before: each page listed the whole tenant's live users again (examined 1000 per page)
    assert [examined for _, examined in pages] == [51] * 19 + [50]
    users = emu.admin.users()
    emu.admin.update_user(users[500]["id"], mail="changed@contoso.example")
    emu.admin.delete_user(users[900]["id"])
    changes = list(_pages(api, pages[-1][0]["@odata.deltaLink"], prefer))
    assert [entry["id"] for body, _ in changes for entry in body["value"]] == sorted(
        [users[500]["id"], users[900]["id"]]
    )
    # before: a round of two changes visited all 1000 users
    assert [examined for _, examined in changes] == [2]
    api.http.close()
