"""``users/delta`` rounds that name one user more than once.

Learn, "Use delta query to track changes in Microsoft Graph data" (delta-query-overview), *Replays*:
"Your application must be prepared for replays, which occur when the same change appears in
subsequent responses", and for directory objects the most recent change comes last. A user
soft-deleted and restored within one round is listed ``@removed`` and then again as a user: the
later entry is the user's state. The emulator lists each user once per round, so these tests add
the earlier entry to the page Graph answered, on its way to the agent (deterministic).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from connector.agents.exchange_online._graph import GraphClient
from connector.sdk import ImportMode, ObjectModificationType
from tests.agents.exchange_online.conftest import delta_after_full, make_connector, run_import

pytestmark = pytest.mark.usefixtures("cache_key")


def removed_first(monkeypatch: pytest.MonkeyPatch, user_id: str, where: str) -> list[str]:
    """An ``@removed`` entry for ``user_id`` before the user's own entry in each ``users/delta`` round:
    just before it on its page (``same-page``), or at the end of the round's first page (``earlier-page``).

    Returns the URLs of the pages that were changed, filled in as the agent runs.
    """
    get = GraphClient.get_json
    changed: list[str] = []
    removal = {"id": user_id, "@removed": {"reason": "changed"}}

    def replaying(client: GraphClient, url: str, **options: Any) -> Any:
        resp = get(client, url, **options)
        body = resp.json_body
        if "users/delta" not in url or not isinstance(body, dict):
            return resp
        values = body.get("value", [])
        at = next((i for i, v in enumerate(values) if v.get("id") == user_id and "@removed" not in v), None)
        if where == "same-page" and at is not None:
            values.insert(at, removal)
            changed.append(url)
        elif where == "earlier-page" and "$skiptoken=" not in url:  # a round's first page
            assert at is None, "pick a user listed on a later page"
            values.append(removal)
            changed.append(url)
        return resp

    monkeypatch.setattr(GraphClient, "get_json", replaying)
    return changed


def _last_mailbox_user(emu: Any) -> dict[str, Any]:
    """A cloud mailbox user listed last (the emulator pages users in id order): on a later page."""
    return max((u for u in emu.admin.users() if u.get("mail") and u["mailbox"] == "cloud"), key=lambda u: u["id"])


WHERE = pytest.mark.parametrize("where", ["same-page", "earlier-page"])


@WHERE
def test_delta_user_removed_then_restored_in_one_round_stays(
    make_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Delta: ``@removed`` then the user again (restored, renamed): the user stays, with the new name.

    Before: the removal was applied and the later entry skipped as "a replay within one round", so a
    user who exists was deleted from the connector space until the next full import.
    """
    emu = make_emulator(users=450)  # three users/delta pages of 200
    victim = _last_mailbox_user(emu)
    conn = make_connector(emu, tmp_path / "data")

    def between() -> Any:
        for user in emu.admin.users():  # a round of three pages: everybody changed
            emu.admin.update_user(user["id"], displayName=f"{user['displayName']} (moved)")
        emu.admin.update_user(victim["id"], displayName="Restored Person")
        return removed_first(monkeypatch, victim["id"], where)

    delta, changed = delta_after_full(conn, between)
    assert changed
    mine = [e for e in delta if e.anchor == victim["id"]]
    assert mine, "the restored user's entry is missing"
    last = mine[-1]
    assert last.error is None
    assert last.modification != ObjectModificationType.DELETE
    named = last.attributes.get("displayName") or next(c.values[0] for c in last.changes if c.name == "displayName")
    assert named == "Restored Person"


@WHERE
def test_full_import_user_removed_then_listed_again_is_imported(
    make_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Full import: an ``@removed`` entry, then the user: the user is imported (else the engine's
    full-import rule deletes a user who exists)."""
    emu = make_emulator(users=450)  # three users/delta pages of 200
    victim = _last_mailbox_user(emu)
    changed = removed_first(monkeypatch, victim["id"], where)
    conn = make_connector(emu, tmp_path / "data")
    conn.open()
    try:
        full, _ = run_import(conn, ImportMode.FULL)
    finally:
        conn.close()
    assert changed
    assert victim["id"] in {e.anchor for e in full if e.error is None}
