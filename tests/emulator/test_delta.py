"""GET /users/delta: paging, deltaLink rounds, @removed, minimal responses, no photo changes."""

from __future__ import annotations

from typing import Any

from tests.emulator.conftest import Api


def _round(api: Api, url: str, headers: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], str, int]:
    items: list[dict[str, Any]] = []
    pages = 0
    while pages < 50:
        body = api.get(url, headers=headers or {}).json()
        pages += 1
        items += body["value"]
        if "@odata.deltaLink" in body:
            return items, body["@odata.deltaLink"], pages
        url = body["@odata.nextLink"]
    raise AssertionError("delta never ended")


def test_initial_round_pages_then_delta_link(api: Api) -> None:
    items, link, pages = _round(api, "/users/delta?$select=displayName,mail", {"Prefer": "odata.maxpagesize=6"})
    assert pages == 4 and len(items) == 20 and "$deltatoken=" in link
    assert all(set(i) <= {"id", "displayName", "mail"} for i in items)
    assert all(
        "mail" not in i for i in items if i["id"] in {u["id"] for u in api.emu.admin.users() if u["mail"] is None}
    )  # never-set values are left out
    nothing, link2, _ = _round(api, link)
    assert nothing == [] and link2


def test_delta_function_forms(api: Api) -> None:
    """``delta`` (the docs), ``delta()`` (msgraph-sdk's URL template) and ``microsoft.graph.delta()`` (OData)."""
    rounds = [
        _round(api, f"/users/{form}?$select=displayName") for form in ("delta", "delta()", "microsoft.graph.delta()")
    ]
    assert all(sorted(i["id"] for i in items) == sorted(i["id"] for i in rounds[0][0]) for items, _, _ in rounds)
    assert all("/users/delta?$deltatoken=" in link for _, link, _ in rounds)
    assert api.get("/users/deltas()").json()["error"]["code"] == "Request_ResourceNotFound"  # a user key, as in Graph


def test_changes_deletions_and_no_photo_changes(api: Api) -> None:
    _, link, _ = _round(api, "/users/delta?$select=displayName,jobTitle")
    users = api.emu.admin.users()
    api.emu.admin.update_user(users[0]["id"], jobTitle="Chief Photo Officer")
    api.emu.admin.update_user(users[1]["id"], officeLocation="Mars")  # not tracked by this $select
    api.emu.admin.delete_user(users[2]["id"])
    api.emu.admin.delete_user(users[3]["id"], permanent=True)
    added = api.emu.admin.add_user(givenName="Nina", surname="Neu")
    photo_user = next(u for u in users[4:] if u["hasPhoto"])
    api.emu.admin.delete_photo(photo_user["id"])  # photo changes never show in delta
    api.request("DELETE", f"/users/{users[5]['id']}/photo/$value")
    items, link, _ = _round(api, link)
    by_id = {i["id"]: i for i in items}
    assert set(by_id) == {users[0]["id"], users[2]["id"], users[3]["id"], added["id"]}
    assert by_id[users[0]["id"]]["jobTitle"] == "Chief Photo Officer"
    assert by_id[users[0]["id"]]["displayName"] == users[0]["displayName"]  # full tracked object by default
    assert by_id[users[2]["id"]]["@removed"] == {"reason": "changed"}
    assert by_id[users[3]["id"]]["@removed"] == {"reason": "deleted"}
    assert "@removed" not in by_id[added["id"]]
    api.emu.admin.update_user(users[0]["id"], jobTitle=None)
    minimal, _, _ = _round(api, link, {"Prefer": "return=minimal"})
    assert minimal == [{"id": users[0]["id"], "jobTitle": None}]


def test_latest_filter_and_expired_tokens(api: Api) -> None:
    latest = api.get("/users/delta?$deltatoken=latest").json()
    assert latest["value"] == [] and "@odata.deltaLink" in latest
    users = api.emu.admin.users()
    ids = [users[0]["id"], users[1]["id"]]
    flt = " or ".join(f"id eq '{i}'" for i in ids)
    items, link, _ = _round(api, f"/users/delta?$filter={flt}")
    assert sorted(i["id"] for i in items) == sorted(ids)
    assert api.get("/users/delta?$filter=displayName eq 'x'").status_code == 400
    api.emu.admin.expire_delta_tokens()
    expired = api.get(link)
    assert expired.status_code == 410 and expired.json()["error"]["code"] == "resyncRequired"
    assert expired.headers["Location"] == api.graph + "/users/delta?$deltatoken="  # the initial query
    again, _, _ = _round(api, expired.headers["Location"])
    assert len(again) == len(api.emu.admin.users())
    assert api.get("/users/delta?$deltatoken=garbage!").status_code == 400


def test_a_user_deleted_after_its_page_is_replayed_removed_on_the_next_page(api: Api) -> None:
    """Learn, delta-query-overview, *Replays*: a user listed on page 1 and deleted before page 2 is
    listed ``@removed`` on page 2, in the same round (before: never, until the next round)."""
    six = {"Prefer": "odata.maxpagesize=6"}
    first = api.get("/users/delta?$select=displayName", headers=six).json()
    listed = first["value"][0]["id"]
    api.emu.admin.delete_user(listed)
    second = api.get(first["@odata.nextLink"], headers=six).json()
    assert second["value"][0] == {"id": listed, "@removed": {"reason": "changed"}}
    rest, _, _ = _round(api, second["@odata.nextLink"], six)
    assert listed not in {i["id"] for i in rest}  # once
    assert len(second["value"]) == 7  # the replay, then a full page


def test_remove_at_photo_read_lines_the_race_up(api: Api) -> None:
    """``Admin.remove_at_photo_read``: page 2 of the round waits for the user's photo read; the read is
    answered as the user was (a photo, not "no such user"), the user is deleted, and the answer is held
    until page 2 has listed the user ``@removed``."""
    import threading

    six = {"Prefer": "odata.maxpagesize=6"}
    first = api.get("/users/delta?$select=displayName", headers=six).json()
    user = next(i["id"] for i in first["value"] if api.emu.admin.get_user(i["id"])["hasPhoto"])
    api.emu.admin.remove_at_photo_read(user, timeout_s=20)
    first = api.get("/users/delta?$select=displayName", headers=six).json()
    pages: list[dict[str, Any]] = []
    page_two = threading.Thread(target=lambda: pages.append(api.get(first["@odata.nextLink"], headers=six).json()))
    page_two.start()
    photo = api.get(f"/users/{user}/photo")
    page_two.join()
    assert photo.status_code == 200 and photo.json()["@odata.mediaEtag"]
    assert {"id": user, "@removed": {"reason": "changed"}} in pages[0]["value"]
    assert api.get(f"/users/{user}/photo").json()["error"]["code"] == "Request_ResourceNotFound"
    assert user not in {u["id"] for u in api.emu.admin.users()}
