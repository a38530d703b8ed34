"""Photo exports to Exchange Online through the real CLI (``mvsync run``, in this process) against the
emulator over HTTPS and a SQLite store: what a bad day does to the record of what was written."""

from __future__ import annotations

import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.agents.exchange_online.conftest import at_photo_upload, folder_to_exchange_online
from tests.cli._configs import invoke


def _pending(config: Path) -> set[str]:
    """The people whose photo export is still pending (``mvsync pending-exports exo --json``)."""
    code, out, err = invoke("pending-exports", "exo", "-c", str(config), "--json")
    assert code == 0, out + err
    return {row["anchor"] for row in json.loads(out)}


def _ctrl_c() -> None:
    """Ctrl-C as the terminal sends it: SIGINT to the main thread (where `mvsync run` waits)."""
    ident = threading.main_thread().ident
    assert ident is not None
    signal.pthread_kill(ident, signal.SIGINT)


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT to a thread (pthread_kill)")
@pytest.mark.usefixtures("cache_key")
def test_ctrl_c_mid_export_records_the_photos_graph_accepted(
    make_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found with `mvsync run export` and SIGTERM against the emulator: the interruption left every
    change of the batch pending, also the ten photos Graph had accepted (the worker pool even went on
    writing the rest of the batch after the signal). The next export wrote them all again. Now the
    photos written are recorded (no longer pending), no change is started after the interruption, and
    the run still ends as interrupted (exit 130)."""
    emu = make_emulator(users=40)
    config, people = folder_to_exchange_online(emu, tmp_path, 8, concurrency=1)  # one export worker
    code, out, err = invoke("run", "stage", "-c", str(config))
    assert code == 0, out + err
    assert _pending(config) == set(people)
    before = {person: emu.admin.get_photo(person) for person in people}
    assert set(before.values()) == {None}

    sent = at_photo_upload(monkeypatch, 3, _ctrl_c)
    # Python's own Ctrl-C handler: a session started as a background job (CI) inherits SIGINT ignored,
    # and Python then installs none, so the signal would do nothing
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code, out, err = invoke("run", "export", "-c", str(config))
    finally:
        signal.signal(signal.SIGINT, previous)

    assert code == 130, out + err
    assert "interrupted" in err and "Traceback" not in err
    assert "waiting for 1 photo write under way (at most 60 s) so that it is recorded" in err  # not at once: why
    written = {person for person in people if emu.admin.get_photo(person) is not None}
    assert set(sent[:3]) <= written  # the PUT under way when Ctrl-C came went through
    assert len(sent) <= 4, sent  # at most the change the worker was starting meanwhile
    assert _pending(config) == set(people) - written  # what Graph accepted is recorded, the rest pending


@pytest.mark.usefixtures("cache_key")
def test_a_revoked_sign_in_is_found_before_the_first_write_not_behind_a_cached_token(
    make_emulator: Any, tmp_path: Path
) -> None:
    """Found with `mvsync auth status`, `mvsync doctor` and `mvsync run` after an admin revoked the
    account's sessions: all three said ok (status "ok", doctor "Graph reachable, token valid", the export
    ran) on the access token the encrypted cache still held, so a revoked or expired sign-in showed only
    when that token ran out (up to 90 minutes later), in the middle of a scheduled run's writes. The
    first token of a process now redeems the refresh token."""
    emu = make_emulator(users=40)
    config, people = folder_to_exchange_online(emu, tmp_path, 3)
    code, out, err = invoke("run", "stage", "-c", str(config))
    assert code == 0, out + err  # the cache now holds the account and a fresh access token
    emu.admin.revoke_refresh_tokens()  # Entra ID: "Revoke sessions"; access tokens already issued stay valid

    code, out, err = invoke("auth", "status", "exo", "-c", str(config), "--json")
    status = json.loads(out)
    assert (code, status["ok"], status["status"], status["exit_code"]) == (4, False, "stopped-authentication", 4)
    assert "AADSTS50173" in status["detail"] and f"mvsync auth login exo -c {config}" in status["detail"]

    code, out, err = invoke("doctor", "-c", str(config), "--json")
    [reachable] = [f for f in json.loads(out)["findings"] if f["check"] == "agents.exo.reachable"]
    assert reachable["severity"] == "error" and "AADSTS50173" in reachable["message"], reachable

    code, out, err = invoke("run", "export", "-c", str(config), "--json")
    [step] = json.loads(out)["steps"]
    assert (code, step["status"]) == (4, "stopped-authentication"), out + err
    assert [person for person in people if emu.admin.get_photo(person) is not None] == []  # nothing written
    assert _pending(config) == set(people)


_READ_ONLY = ("https://graph.microsoft.com/User.Read.All", "https://graph.microsoft.com/ProfilePhoto.Read.All")


@pytest.mark.usefixtures("cache_key")
def test_a_token_without_the_photo_write_permission_stops_the_export_at_the_first_refusal(
    make_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found with `mvsync run export` for a sign-in consented to the read scopes only (the sample's): every
    change was sent and refused (403 ErrorInsufficientPermissionsInAccessToken), one per-object
    permission-issue per person, naming a .NET exception and nothing to do; 10,000 people, 10,000
    refused writes. Graph says the token lacks the permission, which no person can fix: the step stops
    at the first refusal (stopped-authentication) naming the permission, the key and the command."""
    emu = make_emulator(users=40, delegated_scopes=("User.Read", "User.Read.All", "ProfilePhoto.Read.All"))
    config, people = folder_to_exchange_online(emu, tmp_path, 5, scopes=list(_READ_ONLY), concurrency=1)
    code, out, err = invoke("run", "stage", "-c", str(config))
    assert code == 0, out + err

    sent = at_photo_upload(monkeypatch, 0, lambda: None)  # only counts the PUTs
    code, out, err = invoke("run", "export", "-c", str(config), "--json")

    [step] = json.loads(out)["steps"]
    assert (code, step["status"], step["object_errors"]) == (4, "stopped-authentication", []), out + err
    message = step["message"]
    assert "ProfilePhoto.ReadWrite.All" in message and "ErrorInsufficientPermissionsInAccessToken" in message
    assert "which photo exports need" in message
    assert "Add https://graph.microsoft.com/ProfilePhoto.ReadWrite.All to scopes" in message
    assert message.endswith(f"mvsync auth login exo -c {config}")
    assert len(sent) == 1  # the first refusal stops the step
    assert _pending(config) == set(people)


@pytest.mark.usefixtures("cache_key")
@pytest.mark.parametrize("in_the_way", ["agent folder", "token cache"])
def test_an_agent_folder_or_token_cache_that_cannot_be_used_is_named_not_a_traceback(
    make_emulator: Any, tmp_path: Path, in_the_way: str
) -> None:
    """Found with `mvsync auth status`, `mvsync doctor` and `mvsync run` on a data folder where the agent's
    folder (data/exo) was a file, or its token cache a folder: FileExistsError / NotADirectoryError /
    IsADirectoryError tracebacks (exit 1), the run's step a stopped-connector-exception. Any OSError
    there (the token cache of another account, a read-only share) took the same path. Now each names the
    path and what to do, as a configuration error (exit 2)."""
    emu = make_emulator(users=40)
    config, _ = folder_to_exchange_online(emu, tmp_path, 1)
    (tmp_path / "data").mkdir()
    if in_the_way == "agent folder":
        (tmp_path / "data" / "exo").write_text("not a folder")
        named = f"cannot create the agent's folder {tmp_path / 'data' / 'exo'}"
    else:
        (tmp_path / "data" / "exo" / "token-cache.bin").mkdir(parents=True)
        named = f"cannot read the token cache {tmp_path / 'data' / 'exo' / 'token-cache.bin'}"

    for command in (("auth", "status", "exo"), ("run", "stage")):
        code, out, err = invoke(*command, "-c", str(config))
        assert code == 2, (command, out + err)
        assert named in out + err and "Traceback" not in out + err, (command, out + err)
    code, out, err = invoke("doctor", "-c", str(config), "--json")  # it creates nothing: the cache path fails
    [reachable] = [f for f in json.loads(out)["findings"] if f["check"] == "agents.exo.reachable"]
    cache = f"cannot read the token cache {tmp_path / 'data' / 'exo' / 'token-cache.bin'}"
    assert (code, reachable["severity"]) == (6, "error") and cache in reachable["message"], reachable


@pytest.mark.usefixtures("cache_key")
def test_photos_exchange_online_re_encodes_are_not_written_again_every_cycle(
    make_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found with the folder -> Exchange Online flow, HR's photos the only source: Exchange keeps its own
    JPEG of an upload, so the confirming import never showed the bytes exported. Every cycle reported
    each photo as exported-change-not-reimported, staged it again and wrote it again (every photo, every
    cycle). The import now records the rendering Exchange shows for an export, and the export flow counts
    the photo as written while Exchange shows that rendering."""
    emu = make_emulator(users=40)
    config, people = folder_to_exchange_online(emu, tmp_path, 3)
    sent = at_photo_upload(monkeypatch, 0, lambda: None)
    assert invoke("run", "stage", "-c", str(config))[0] == 0
    code, out, err = invoke("run", "export", "-c", str(config))
    assert (code, sorted(sent)) == (0, sorted(people)), out + err
    shown = {person: emu.admin.get_photo(person) for person in people}
    for _ in range(2):  # a scheduled cycle, twice: the confirming import and sync, then the export
        code, out, err = invoke("run", "stage", "-c", str(config), "--json")
        steps = json.loads(out)["steps"]
        assert code == 0 and all(s["errors"] == s["warnings"] == 0 for s in steps), out + err
        assert _pending(config) == set()
        assert invoke("run", "export", "-c", str(config))[0] == 0
    assert len(sent) == len(people)  # each photo written once
    assert {person: emu.admin.get_photo(person) for person in people} == shown
    confirmed = steps[0]["counters"]
    assert confirmed.get("exports_not_reimported", 0) == 0, confirmed


@pytest.mark.usefixtures("cache_key")
def test_an_outage_of_the_photo_policy_read_stops_the_export_before_any_write(
    make_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found reading the photo policy guard: when the read of photoUpdateSettings failed (here Graph
    answers it with 504 on every attempt while the rest of Graph works), the export went on "anyway"
    in a tenant that masters photos on-premises. With the default on_premises_photo_policy = "refuse"
    the step now stops (stopped-server-down, exit 4) before the first PUT, and every export stays
    pending for the next run."""
    scopes = ("User.Read", "User.Read.All", "ProfilePhoto.ReadWrite.All", "PeopleSettings.Read.All")
    emu = make_emulator(users=40, delegated_scopes=scopes)
    emu.admin.set_photo_update_settings({"source": "onPremises"})
    graph_scopes = [f"https://graph.microsoft.com/{scope}" for scope in scopes[1:]]
    config, people = folder_to_exchange_online(emu, tmp_path, 3, scopes=graph_scopes, max_attempts=2)
    assert invoke("run", "stage", "-c", str(config))[0] == 0
    emu.admin.set_faults({"504": 1.0, "retry_after": None, "path_pattern": "photoUpdateSettings"})

    sent = at_photo_upload(monkeypatch, 0, lambda: None)  # only counts the PUTs
    code, out, err = invoke("run", "export", "-c", str(config), "--json")
    [step] = json.loads(out)["steps"]
    assert (code, step["status"], step["object_errors"]) == (4, "stopped-server-down", []), out + err
    policy_url = emu.info["graph_url"].replace("/v1.0", "/beta") + "/admin/people/photoUpdateSettings"
    assert f"could not read the tenant's photo policy ({policy_url}): HTTP 504" in step["message"]
    assert "run the step again later" in step["message"]
    assert sent == [] and [p for p in people if emu.admin.get_photo(p) is not None] == []
    assert _pending(config) == set(people)


@pytest.mark.usefixtures("cache_key")
def test_deprovision_delete_on_exchange_online_is_refused_before_any_step(make_emulator: Any, tmp_path: Path) -> None:
    """Found by the export pass: the agent changes photos of existing users and refuses every object
    delete (export-not-supported), yet `deprovision = "delete"` on it was accepted, so each person
    deprovisioned became a delete that every export refused (a per-object error per person, exit 3 on
    every run, nothing to do about it but edit the configuration). It is now refused before any step,
    as on the AD agent, naming the key and what to set."""
    emu = make_emulator(users=10)
    config, _ = folder_to_exchange_online(emu, tmp_path, 1)
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace("[agents.exo]\n", '[agents.exo]\ndeprovision = "delete"\n', 1), encoding="utf-8")

    code, out, err = invoke("run", "stage", "-c", str(config))

    assert code == 2, out + err
    assert 'agents.exo.deprovision = "delete", but the exchange-online-photos agent does not delete objects' in err
    assert 'set deprovision = "disconnect"' in err and "Traceback" not in err
    assert emu.admin.stats()["graph_requests"] == 0  # refused before any step


@pytest.mark.usefixtures("cache_key")
def test_a_refused_photo_export_names_the_folder_and_file_it_came_from(make_emulator: Any, tmp_path: Path) -> None:
    """Found reading `mvsync history show` after an export Exchange Online refused: the per-object error
    named the person and the Graph answer, not where the photo came from, so the engineer could not tell
    which source (here the HR folder, and which file in it) to fix. The error now names the contributing
    agent and the source object (the folder's file), in history, the console and the object's export error."""
    from connector.config import load_config
    from connector.store import SqlStore
    from connector.web import create_app
    from tests.web.conftest import LOOPBACK, TestClient

    emu = make_emulator(users=40)
    config, people = folder_to_exchange_online(emu, tmp_path, 2)
    code, out, err = invoke("run", "stage", "-c", str(config))
    assert code == 0, out + err
    gone = people[1]  # (not the first: the tenant's first user is the account the agent signs in with)
    nick = next(u["mailNickname"] for u in emu.admin.users() if u["id"] == gone)
    emu.admin.delete_user(gone)  # the mailbox goes between the staging and the export: Graph answers 404

    code, out, err = invoke("run", "export", "-c", str(config), "--json")
    run = json.loads(out)
    [step] = run["steps"]
    assert (code, step["errors"]) == (3, 1), out + err
    [error] = step["object_errors"]
    source = f'EXOPhoto came from agent "hr", object "{nick}.jpg" (metaverse attribute photo)'
    assert error["anchor"] == gone and source in error["detail"], error
    assert "Traceback" not in out + err

    code, out, err = invoke("history", "show", str(run["run_id"]), "-c", str(config))
    assert code == 0 and source in " ".join(out.split()), out + err
    code, out, err = invoke("cs", "show", "exo", gone, "-c", str(config), "--json")  # the object's export error
    assert code == 0 and source in json.loads(out)["export_error"]["detail"], out + err

    loaded = load_config(config)
    store = SqlStore(loaded.store_url(), create=False)
    with TestClient(create_app(loaded, store=store), base_url=LOOPBACK) as console:
        page = console.get(f"/steps/{step['step_id']}")
    assert page.status_code == 200 and source.replace('"', "&#34;") in page.text, page.text
