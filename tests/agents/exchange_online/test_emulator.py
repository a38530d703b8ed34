"""The Exchange Online agent against the Graph + Entra emulator (real HTTPS, real MSAL)."""

from __future__ import annotations

import hashlib
import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest

from connector import metrics
from connector.agents.exchange_online._photos import PhotoTask, read_response, task_request
from connector.agents.exchange_online._tokencache import CACHE_FILE_NAME
from connector.emulator import exo_agent_settings
from connector.sdk import AuthenticationError, ImportMode, ObjectModificationType
from tests.agents.exchange_online.conftest import (
    REAUTH,
    agent_state,
    counts,
    delete_user_at_photo_probe,
    full_import,
    imported,
    make_connector,
    run_import,
)

pytestmark = pytest.mark.usefixtures("cache_key")


def _by_anchor(entries: list[Any]) -> dict[str, Any]:
    return {e.anchor: e for e in entries}


def _mailbox_users(emu: Any) -> list[dict[str, Any]]:
    return [u for u in emu.admin.users() if u.get("mail") and u["mailbox"] != "none"]  # guests have mail


def test_full_import_matches_the_tenant(make_emulator: Any, tmp_path: Path) -> None:
    emu = make_emulator(users=60)
    entries, watermark = full_import(emu, tmp_path)
    assert watermark is not None
    got = _by_anchor(entries)
    users = _mailbox_users(emu)
    assert set(got) == {u["id"] for u in users}
    for user in users:
        entry = got[user["id"]]
        if user["mailbox"] == "on-premises":
            # a known state in a hybrid organisation, not an error (exchange_online._hybrid)
            assert entry.error is None and entry.attributes["EXOMailboxLocation"] == "on-premises"
            assert "EXOPhoto" not in entry.attributes
            continue
        assert entry.error is None
        assert entry.attributes["userPrincipalName"] == user["userPrincipalName"]
        if user["hasPhoto"]:
            data = entry.attributes["EXOPhoto"]
            assert entry.attributes["EXOPhotoChecksum"] == hashlib.sha256(data).hexdigest()
            assert entry.attributes["EXOPhotoSize"] == len(data)
            # never the unbounded original: at most the configured 648x648
            side = min(user["photo"]["width"], user["photo"]["height"])
            expected = max(s for s in (48, 64, 96, 120, 240, 360, 432, 504, 648) if s <= min(648, side))
            assert data == emu.admin.get_photo(
                user["id"], size=expected if expected != side else None
            ) or data == emu.admin.get_photo(user["id"], size=expected)
        else:
            assert "EXOPhoto" not in entry.attributes


def test_delta_finds_photo_and_user_changes_and_downloads_only_those(make_emulator: Any, tmp_path: Path) -> None:
    emu = make_emulator(users=50)
    conn = make_connector(emu, tmp_path, photo_recheck_hours=0)
    conn.open()
    _, watermark = run_import(conn, ImportMode.FULL)
    conn.close()

    # nothing changed: every photo probed, nothing downloaded, nothing staged
    conn = make_connector(emu, tmp_path, photo_recheck_hours=0)
    conn.open()
    entries, watermark = run_import(conn, ImportMode.DELTA, watermark)
    assert entries == [] or all(e.error is not None for e in entries)
    assert counts(conn)["photo_downloads"] == 0 and counts(conn)["probes"] > 0
    conn.close()

    users = [u for u in _mailbox_users(emu) if u["mailbox"] == "cloud"]
    with_photo = next(u for u in users if u["hasPhoto"])
    without = next(u for u in users if not u["hasPhoto"])
    renamed = next(u for u in users if u["id"] not in (with_photo["id"], without["id"]))
    gone = next(u for u in users if u["id"] not in (with_photo["id"], without["id"], renamed["id"]))
    jpeg = (Path(__file__).parents[2] / "data" / "astronaut.jpg").read_bytes()
    emu.admin.set_photo(without["id"], jpeg)
    emu.admin.delete_photo(with_photo["id"])
    emu.admin.update_user(renamed["id"], displayName="Renamed Person")
    emu.admin.delete_user(gone["id"])
    added = emu.admin.add_user(givenName="Newt", surname="Comer", mailbox="cloud", photo=jpeg)

    conn = make_connector(emu, tmp_path, photo_recheck_hours=0)
    conn.open()
    entries, watermark = run_import(conn, ImportMode.DELTA, watermark)
    conn.close()
    got = _by_anchor([e for e in entries if e.error is None])
    assert got[without["id"]].attributes["EXOPhoto"]
    assert "EXOPhoto" not in got[with_photo["id"]].attributes
    assert got[renamed["id"]].modification == ObjectModificationType.UPDATE
    assert got[gone["id"]].modification == ObjectModificationType.DELETE
    assert got[added["id"]].attributes["EXOPhoto"]
    assert counts(conn)["photo_downloads"] == 2  # the changed photo and the new user's
    assert watermark is not None


def test_recheck_window_bounds_probes(make_emulator: Any, tmp_path: Path) -> None:
    emu = make_emulator(users=30)
    conn = make_connector(emu, tmp_path)  # default: re-check photos every 24 h
    conn.open()
    _, watermark = run_import(conn, ImportMode.FULL)
    conn.close()
    conn = make_connector(emu, tmp_path, reverify_fraction=1.0)
    conn.open()
    entries, _ = run_import(conn, ImportMode.DELTA, watermark)
    conn.close()
    assert counts(conn)["reverified"] > 0 and counts(conn)["photo_changes"] == 0
    assert [e for e in entries if e.error is None] == []
    conn = make_connector(emu, tmp_path)
    conn.open()
    run_import(conn, ImportMode.DELTA, watermark)
    conn.close()
    assert counts(conn)["probes"] == 0  # inside the window nobody is probed


@pytest.mark.parametrize(
    "variant",
    ["ImageNotFound", "ImageNotFoundPeople", "ErrorEntityNotFound", "ErrorItemNotFound", "legacy-1x1"],
)
def test_every_no_photo_variant_means_no_photo(make_emulator: Any, tmp_path: Path, variant: str) -> None:
    emu = make_emulator(users=20, no_photo_variant=variant)
    conn = make_connector(emu, tmp_path)
    conn.open()
    entries, _ = run_import(conn, ImportMode.FULL)
    conn.close()
    got = _by_anchor(entries)
    for user in _mailbox_users(emu):
        if user["mailbox"] == "cloud" and not user["hasPhoto"]:
            assert got[user["id"]].error is None
            assert "EXOPhoto" not in got[user["id"]].attributes


def test_unknown_user_and_user_without_mailbox(make_emulator: Any, tmp_path: Path) -> None:
    emu = make_emulator(users=20, no_mailbox_photo="error")
    nobox = emu.admin.add_user(givenName="No", surname="Box", mailbox="none", mail="no.box@contoso.example")
    conn = make_connector(emu, tmp_path)
    conn.open()
    try:
        # an unknown user on a photo URL is 404 Request_ResourceNotFound in Graph: the user is gone
        ghost = PhotoTask("00000000-0000-0000-0000-000000000000")
        resp = conn.graph.batch([task_request(ghost)])[0]
        assert (resp.status, resp.error_code) == (404, "Request_ResourceNotFound")
        assert read_response(ghost, resp, "648x648").kind == "gone"
        entries, _ = run_import(conn, ImportMode.FULL)
    finally:
        conn.close()
    entry = _by_anchor(entries)[nobox["id"]]
    assert entry.error is not None and entry.error.name == "no-exchange-mailbox"


def test_access_token_expiry_mid_run_is_refreshed_silently(make_emulator: Any, tmp_path: Path) -> None:
    # one batch at a time, so that most photo requests are still to come when page 1 is committed, even
    # on a busy machine (the engine works ahead of the pages): 3 probe batches of 5 latencies each
    emu = make_emulator(users=60, latency_ms=100)
    conn = make_connector(emu, tmp_path, concurrency=4)

    def expire_after_first(number: int, page: Any) -> None:
        if number == 1:
            emu.admin.expire_access_tokens()  # Graph now answers 401 for the token in use

    conn.open()
    try:
        entries, watermark = run_import(conn, ImportMode.FULL, page_size=10, on_page=expire_after_first)
    finally:
        conn.close()
    assert watermark is not None
    assert all(e.error is None for e in entries)
    assert {e.anchor for e in entries} == {u["id"] for u in _mailbox_users(emu)}
    assert conn.metrics["token_refreshes_on_401"] >= 1
    assert conn.auth.refresh_count >= 2  # a new access token (and a rotated refresh token) mid-run


def _prometheus(name: str, **labels: str) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


def test_throttling_storm_completes_without_errors(make_emulator: Any, tmp_path: Path) -> None:
    emu = make_emulator(users=30, faults="storm")
    conn = make_connector(emu, tmp_path, retry_after_max_s=0.2, max_attempts=12)
    before = {
        "throttles": _prometheus("mvsync_graph_throttles_total"),
        "retries": _prometheus("mvsync_graph_retries_total"),
        "429": _prometheus("mvsync_graph_requests_total", status="429"),
        "200": _prometheus("mvsync_graph_requests_total", status="200"),
    }
    conn.open()
    try:
        entries, watermark = run_import(conn, ImportMode.FULL)
    finally:
        conn.close()
    assert watermark is not None
    assert conn.metrics["throttled"] > 0 and conn.metrics["retries"] > 0
    # the same events reach Prometheus: throttles and retries, requests by status
    assert _prometheus("mvsync_graph_throttles_total") - before["throttles"] == conn.metrics["throttled"]
    assert _prometheus("mvsync_graph_retries_total") - before["retries"] == conn.metrics["retries"]
    assert _prometheus("mvsync_graph_requests_total", status="429") > before["429"]
    assert _prometheus("mvsync_graph_requests_total", status="200") > before["200"]
    names = {e.error.name for e in entries if e.error is not None}
    assert names == set()
    assert {e.anchor for e in entries} == {u["id"] for u in _mailbox_users(emu)}


def test_retry_budget_turns_failures_into_object_errors(make_emulator: Any, tmp_path: Path) -> None:
    emu = make_emulator(users=30, faults={"504": 0.5})
    conn = make_connector(emu, tmp_path, retry_budget=0, max_attempts=1)
    conn.open()
    try:
        entries, _ = run_import(conn, ImportMode.FULL)
    except Exception as exc:  # the listing itself may be what failed: then the step stops, naming Graph
        assert "Graph" in str(exc)
        return
    finally:
        conn.close()
    assert any(e.error is not None and e.error.name == "graph-unavailable" for e in entries)


def test_throttling_never_spends_the_retry_budget_nor_fails_a_user(make_emulator: Any, tmp_path: Path) -> None:
    """Half of all requests answered 429 and no failure budget at all: everybody is still imported."""
    emu = make_emulator(users=30, faults={"429": 0.5, "retry_after_s": 0.01})
    conn = make_connector(emu, tmp_path, retry_budget=0, max_attempts=1)
    entries, watermark = imported(conn)
    assert watermark is not None
    assert conn.metrics["throttled"] > 0 and conn.metrics["retry_budget_spent"] == 0
    names = {e.error.name for e in entries if e.error is not None}
    assert names == set()
    assert {e.anchor for e in entries} == {u["id"] for u in _mailbox_users(emu)}


def test_revoked_refresh_token_stops_mid_run_with_the_reauthorize_command(make_emulator: Any, tmp_path: Path) -> None:
    emu = make_emulator(users=400, latency_ms=30)  # the engine runs at most ~200 users ahead
    conn = make_connector(emu, tmp_path)
    first: list[Any] = []

    def revoke_after_first(number: int, page: Any) -> None:
        if number == 1:
            first.append(page)
            emu.admin.revoke_refresh_tokens()
            emu.admin.expire_access_tokens()

    conn.open()
    with pytest.raises(AuthenticationError) as caught:
        run_import(conn, ImportMode.FULL, page_size=5, on_page=revoke_after_first)
    conn.close()
    assert first and first[0].entries and not first[0].last
    assert caught.value.status == "stopped-authentication"
    assert REAUTH in str(caught.value)
    assert "AADSTS" in str(caught.value)
    assert emu.info["refresh_token"] not in str(caught.value)


def test_engine_step_stops_authentication_and_keeps_earlier_imports(
    make_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connector.config import config_from_dict
    from connector.engine import Engine

    emu = make_emulator(users=20)
    info = emu.info
    monkeypatch.setenv("EXO_RT", info["refresh_token"])
    settings = exo_agent_settings(info, refresh_token={"env": "EXO_RT"})
    cfg_file = tmp_path / "mvsync.toml"
    config = config_from_dict(
        {
            "store": {"url": f"sqlite:///{tmp_path / 'mv.db'}"},
            "data_dir": str(tmp_path / "data"),
            "agents": {"exo": {"type": "exchange-online-photos", "settings": settings}},
            "run_profiles": {"full": {"steps": [{"type": "full-import", "agent": "exo", "page_size": 5}]}},
        },
        file=cfg_file,
    )
    engine = Engine(config)
    try:
        first = engine.run_profile("full")
        assert first.status.startswith("completed") or first.status == "success", first
        emu.admin.revoke_refresh_tokens()
        emu.admin.expire_access_tokens()
        second = engine.run_profile("full")
    finally:
        engine.close()
    step = second.steps[0]
    assert step.status == "stopped-authentication"
    assert f"mvsync auth login exo -c {cfg_file}" in (step.message or "")
    assert info["refresh_token"] not in (step.message or "")


def test_token_cache_is_encrypted_0600_and_rotated(make_emulator: Any, tmp_path: Path) -> None:
    emu = make_emulator(users=5, access_token_lifetime_s=1)
    conn = make_connector(emu, tmp_path)
    conn.open()
    first = (tmp_path / CACHE_FILE_NAME).read_bytes()
    import time

    time.sleep(1.1)
    conn.auth.token()  # expired: refreshed, the rotated refresh token persisted
    conn.close()
    path = tmp_path / CACHE_FILE_NAME
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    blob = path.read_bytes()
    assert blob != first
    assert b"refresh_token" not in blob.lower() and b"secret" not in blob.lower()
    assert emu.info["refresh_token"].encode() not in blob
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_export_puts_and_deletes_photos(make_emulator: Any, tmp_path: Path) -> None:
    from connector.sdk import AttributeChange, CSEntryChange, ExportStatus

    emu = make_emulator(users=10)
    users = [u for u in _mailbox_users(emu) if u["mailbox"] == "cloud"]
    jpeg = (Path(__file__).parents[2] / "data" / "astronaut.jpg").read_bytes()
    put = CSEntryChange.update("EXOUser", users[0]["id"], [AttributeChange.replace("EXOPhoto", jpeg)])
    put.identifier = "1"
    remove = CSEntryChange.update("EXOUser", users[1]["id"], [AttributeChange.delete("EXOPhoto")])
    remove.identifier = "2"
    missing = CSEntryChange.update(
        "EXOUser", "00000000-0000-0000-0000-00000000dead", [AttributeChange.replace("EXOPhoto", jpeg)]
    )
    missing.identifier = "3"
    conn = make_connector(emu, tmp_path)
    conn.open()
    try:
        results = conn.export([put, remove, missing])
    finally:
        conn.close()
    assert [r.identifier for r in results] == ["1", "2", "3"]
    assert results[0].status == ExportStatus.SUCCESS and results[1].status == ExportStatus.SUCCESS
    assert results[2].status == ExportStatus.FAILED
    stored = emu.admin.get_photo(users[0]["id"])
    assert stored is not None and len(stored) < 4_000_000
    import io

    from PIL import Image

    assert max(Image.open(io.BytesIO(stored)).size) <= 648
    assert emu.admin.get_photo(users[1]["id"]) is None


def test_the_photo_state_lives_in_the_agent_state_not_in_a_file(make_emulator: Any, tmp_path: Path) -> None:
    emu = make_emulator(users=5)
    conn = make_connector(emu, tmp_path)
    conn.open()
    entries, _ = run_import(conn, ImportMode.FULL)
    conn.close()
    assert not list(tmp_path.glob("*.sqlite3"))  # no state database of the agent's own
    state = agent_state(conn)
    for entry in entries:
        if entry.error is None:
            assert state[entry.anchor]["in_cs"] is True
            assert state[entry.anchor]["checksum"] == entry.attributes.get("EXOPhotoChecksum")


def test_cli_auth_login_and_status(make_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from typer.testing import CliRunner

    from connector.cli._app import app

    emu = make_emulator(users=5)
    info = emu.info
    monkeypatch.delenv("MVSYNC_TOKEN_CACHE_KEY")
    (tmp_path / "rt.txt").write_text(info["refresh_token"])
    cfg = tmp_path / "mvsync.toml"
    cfg.write_text(
        f'data_dir = "data"\n[agents.exo]\ntype = "exchange-online-photos"\n[agents.exo.settings]\n'
        f'tenant_id = "{info["tenant_id"]}"\nclient_id = "{info["client_id"]}"\n'
        f'authority = "{info["authority"]}"\n'
        f'graph_url = "{info["graph_url"]}"\ninstance_discovery = false\nca_bundle = "{info["ca_cert"]}"\n'
        f'token_cache_key_file = "{tmp_path / "cache.key"}"\n'
    )
    runner = CliRunner()
    before = runner.invoke(app, ["auth", "status", "exo", "-c", str(cfg)])
    assert before.exit_code == 2
    login = runner.invoke(
        app, ["auth", "login", "exo", "-c", str(cfg), "--refresh-token-file", str(tmp_path / "rt.txt")]
    )
    assert login.exit_code == 0, login.output
    status = runner.invoke(app, ["auth", "status", "exo", "-c", str(cfg), "--json"])
    assert status.exit_code == 0 and json.loads(status.stdout)["ok"] is True
    assert info["refresh_token"] not in login.output + status.output
    assert stat.S_IMODE(os.stat(tmp_path / "cache.key").st_mode) == 0o600


def test_device_code_sign_in(make_emulator: Any, tmp_path: Path) -> None:
    emu = make_emulator(users=5)  # the emulator approves device codes at once
    conn = make_connector(emu, tmp_path, refresh_token=None)
    shown: list[str] = []
    who = conn.auth.login_device_code(shown.append, timeout_s=30)
    assert shown and "@" in who
    conn.open()  # the cache now holds the account: no seed token needed
    conn.close()


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_device_code_sign_in_logs_no_device_code_at_debug(
    make_emulator: Any, tmp_path: Path, log_format: str
) -> None:
    """QA: ``mvsync --log-level DEBUG auth login`` logged MSAL's token_cache event with the device
    code in clear (as ``device_code`` and ``code``): redeemable for the tokens while a sign-in is
    pending. The user code stays in the prompt: the user types it, and it redeems nothing alone."""
    import subprocess
    import sys

    emu = make_emulator(users=1)  # the emulator approves device codes at once ("DAQABAAEAAAD...")
    info = emu.info
    cfg = tmp_path / "mvsync.toml"
    cfg.write_text(
        f'data_dir = "{(tmp_path / "data").as_posix()}"\n[agents.exo]\ntype = "exchange-online-photos"\n'
        f'[agents.exo.settings]\ntenant_id = "{info["tenant_id"]}"\nclient_id = "{info["client_id"]}"\n'
        f'authority = "{info["authority"]}"\ngraph_url = "{info["graph_url"]}"\ninstance_discovery = false\n'
        f'ca_bundle = "{Path(info["ca_cert"]).as_posix()}"\n'
        f'token_cache_key_file = "{(tmp_path / "cache.key").as_posix()}"\n',
        encoding="utf-8",
    )
    args = ["--log-level", "DEBUG", "--log-format", log_format, "auth", "login", "exo", "-c", str(cfg)]
    cli = [sys.executable, "-c", "from connector.cli import main; main()", *args]
    env = {k: v for k, v in os.environ.items() if k != "MVSYNC_TOKEN_CACHE_KEY"}  # (the key file's, made here)
    done = subprocess.run(cli, capture_output=True, text=True, timeout=120, check=False, env=env)
    said = done.stdout + done.stderr
    assert done.returncode == 0, said
    assert "device_code" in said and "DAQABAAEAAAD" not in said, said  # the event was logged, masked
    assert re.search(r"and enter the code [A-Z0-9]{9} to authenticate", " ".join(said.split())), said  # the prompt


def test_a_slow_store_bounds_what_the_agent_holds(make_emulator: Any, tmp_path: Path) -> None:
    """Memory does not grow with the tenant: photos wait in Graph, not in the agent, when the store is slow."""
    import time

    emu = make_emulator(users=1500)  # no latency: Graph outruns the store
    conn = make_connector(emu, tmp_path)
    committed = 0
    sent: list[tuple[int, int]] = []

    def slow_store(number: int, page: Any) -> None:
        nonlocal committed
        if number <= 3:
            time.sleep(1.0)  # the engine writing a slow page; the workers run on meanwhile
            sent.append((committed, conn.graph.stats.batch_items))
        committed += len(page.entries)

    conn.open()
    try:
        entries, _ = run_import(conn, ImportMode.FULL, page_size=10, on_page=slow_store)
    finally:
        conn.close()
    # at most max_ahead (200) users between the listing and the store, two requests each (probe and
    # download, plus a few throttled resends): the rest of the tenant waits in Graph, however long
    # the store takes
    for done, requests_sent in sent:
        assert requests_sent <= 2 * (done + 10 + 200) + 100, sent
    # nothing lost to the back-pressure
    assert {e.anchor for e in entries} == {u["id"] for u in _mailbox_users(emu)}
    assert len(entries) == len(_mailbox_users(emu))


def test_user_deleted_between_listing_and_photo_probe_is_gone_not_photo_less(
    make_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full import lists a user; the user is deleted before the photo probe reaches Graph.

    Graph answers the probe 404 Request_ResourceNotFound (the user does not resolve), which the agent
    reads as "gone": the user leaves the import (the engine's full-import rule then deletes it), never
    "no photo" (which would clear the photo downstream). The deletion happens at the moment the
    probe's batch is sent, so the race is deterministic.
    """
    emu = make_emulator(users=20)
    victim = next(u for u in _mailbox_users(emu) if u["hasPhoto"] and u["mailbox"] == "cloud")
    answers = delete_user_at_photo_probe(monkeypatch, emu, victim["id"])
    entries, _ = full_import(emu, tmp_path)
    assert answers == [(404, "Request_ResourceNotFound")]
    got = _by_anchor(entries)
    assert victim["id"] not in got  # gone: neither a photo-less entry nor an error
    others = {u["id"] for u in _mailbox_users(emu)}  # live users only
    assert set(got) == others


def test_on_premises_mailbox_is_a_known_state_that_follows_a_move(make_emulator: Any, tmp_path: Path) -> None:
    """Hybrid: an on-premises mailbox is imported with its location, re-staged only when it moves."""
    emu = make_emulator(users=40)
    onprem = [u for u in _mailbox_users(emu) if u["mailbox"] == "on-premises"]
    cloud_photo = next(u for u in _mailbox_users(emu) if u["mailbox"] == "cloud" and u["hasPhoto"])
    emu.admin.update_user(cloud_photo["id"], mailbox="on-premises")  # now hidden from Graph, photo or not
    stays, moves = onprem[0], onprem[1]
    conn = make_connector(emu, tmp_path, photo_recheck_hours=0)
    entries, watermark = imported(conn)
    got = _by_anchor(entries)
    for user in (stays, moves, cloud_photo):
        entry = got[user["id"]]
        assert entry.error is None and entry.attributes["EXOMailboxLocation"] == "on-premises"
        assert "EXOPhoto" not in entry.attributes
    assert counts(conn)["mailbox_on_premises"] == len(onprem) + 1 and counts(conn)["errors"] == 0

    # nothing moved: the re-check finds them on-premises again and stages nothing
    conn = make_connector(emu, tmp_path, photo_recheck_hours=0)
    entries, watermark = imported(conn, ImportMode.DELTA, watermark=watermark)
    assert entries == [] and counts(conn)["unchanged"] >= len(onprem) + 1

    # two mailboxes move to Exchange Online, one without a photo, one with: both entries lose the location
    if moves["hasPhoto"]:
        emu.admin.delete_photo(moves["id"])  # the move Graph answers "no photo" for (ImageNotFound)
    emu.admin.update_user(moves["id"], mailbox="cloud")
    emu.admin.update_user(cloud_photo["id"], mailbox="cloud")
    conn = make_connector(emu, tmp_path, photo_recheck_hours=0)
    entries, _ = imported(conn, ImportMode.DELTA, watermark=watermark)
    got = _by_anchor(entries)
    assert set(got) == {moves["id"], cloud_photo["id"]}
    assert "EXOMailboxLocation" not in got[moves["id"]].attributes
    assert "EXOPhoto" not in got[moves["id"]].attributes
    assert "EXOMailboxLocation" not in got[cloud_photo["id"]].attributes
    assert got[cloud_photo["id"]].attributes["EXOPhoto"][:2] == b"\xff\xd8"


def test_a_mailbox_that_cannot_be_found_stays_an_error() -> None:
    from connector.agents.exchange_online._graph import GraphResponse

    body = {
        "error": {"code": "ErrorNonExistentMailbox", "message": "The SMTP address has no mailbox associated with it."}
    }
    out = read_response(PhotoTask("u"), GraphResponse(404, {}, b"", body), "648x648")
    assert out.kind == "error" and out.error == "mailbox-not-found"  # type: ignore[union-attr]
