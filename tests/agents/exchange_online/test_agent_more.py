"""More of the Exchange Online agent: certificate credentials, a refresh token revoked inside an
engine step, an expired delta link, and the photo work queue's manners."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select

from connector.emulator import exo_agent_settings
from connector.sdk import (
    AttributeChange,
    AuthenticationError,
    ConfigurationError,
    ConnectorError,
    CSEntryChange,
    ExportStatus,
    ImportMode,
    ObjectModificationType,
    ServerDownError,
    StopRunError,
)
from tests.agents.exchange_online.conftest import (
    at_photo_upload,
    delete_user_at_photo_probe,
    make_connector,
    photo_changes,
    revoke_sign_in,
    run_import,
)

# --------------------------------------------------------------------------------------- helpers


def _by_anchor(entries: list[Any]) -> dict[str, Any]:
    return {e.anchor: e for e in entries}


def _mailbox_users(emu: Any) -> list[dict[str, Any]]:
    return [u for u in emu.admin.users() if u.get("mail") and u["mailbox"] != "none"]  # guests have mail


def _staged_ids(emu: Any) -> set[str]:
    """Users the agent stages in the connector space: every mailbox user, on-premises ones with their location."""
    return {u["id"] for u in _mailbox_users(emu)}


def _engine_config(emu: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, page_size: int) -> Any:
    """A configuration file's worth: the exo agent on the emulator, a full and a delta import profile."""
    from connector.config import config_from_dict

    info = emu.info
    monkeypatch.setenv("EXO_RT", info["refresh_token"])
    settings = exo_agent_settings(info, refresh_token={"env": "EXO_RT"}, backoff_initial_s=0.05)
    return config_from_dict(
        {
            "store": {"url": f"sqlite:///{tmp_path / 'mv.db'}"},
            "data_dir": str(tmp_path / "data"),
            "agents": {"exo": {"type": "exchange-online-photos", "settings": settings}},
            "run_profiles": {
                "full": {"steps": [{"type": "full-import", "agent": "exo", "page_size": page_size}]},
                "delta": {"steps": [{"type": "delta-import", "agent": "exo", "page_size": page_size}]},
            },
        },
        file=tmp_path / "mvsync.toml",
    )


def _cs_rows(engine: Any, agent: str = "exo") -> dict[str, Any]:
    from connector.store.tables import cs_object

    with engine.store.read() as conn:
        rows = conn.execute(
            select(cs_object.c.anchor, cs_object.c.pending_type, cs_object.c.pending).where(cs_object.c.agent == agent)
        ).all()
    return {row.anchor: row for row in rows}


def _watermark(engine: Any, agent: str = "exo") -> str | None:
    from connector.engine._import import load_watermark

    with engine.store.read() as conn:
        return load_watermark(conn, agent)


# ------------------------------------------------------------------ 1. app-only with a certificate


def _app_certificate_pem(emu: Any, folder: Path) -> Path:
    """What an operator does: read the app's certificate and key off the emulator's admin API
    (``GET /_emulator/info``: the emulator issues the app registration's certificate), and put both
    into the one PEM file ``client_certificate`` names."""
    info = emu.info
    with requests.Session() as http:
        http.verify = info["ca_cert"]
        http.trust_env = False
        published = http.get(f"{info['admin_url']}/info", timeout=10).json()
    pem = folder / "exo.pem"
    pem.write_bytes(Path(published["client_cert"]).read_bytes() + Path(published["client_key"]).read_bytes())
    pem.chmod(0o600)
    return pem


@pytest.mark.usefixtures("cache_key")
def test_app_only_with_a_client_certificate_imports_everything(make_emulator: Any, tmp_path: Path) -> None:
    emu = make_emulator(users=30)
    pem = _app_certificate_pem(emu, tmp_path)
    conn = make_connector(emu, tmp_path / "data", auth_mode="app", client_certificate=pem, refresh_token=None)
    conn.open()
    try:
        entries, watermark = run_import(conn, ImportMode.FULL, page_size=7)
    finally:
        conn.close()
    assert watermark is not None
    got = _by_anchor(entries)
    assert set(got) == {u["id"] for u in _mailbox_users(emu)}
    for user in _mailbox_users(emu):
        entry = got[user["id"]]
        if user["mailbox"] == "on-premises":
            # a known state in a hybrid organisation, not an error (exchange_online._hybrid)
            assert entry.error is None and entry.attributes["EXOMailboxLocation"] == "on-premises"
            assert "EXOPhoto" not in entry.attributes
            continue
        assert entry.error is None, entry.error
        assert entry.attributes["userPrincipalName"] == user["userPrincipalName"]
        assert ("EXOPhoto" in entry.attributes) == bool(user["hasPhoto"])
    # client credentials, not a refresh token: no account was signed in, no refresh token used
    assert conn.auth.app().get_accounts() == []
    assert not conn.auth.delegated


def _encrypted_pem(pem: Path, password: bytes) -> Path:
    """The same certificate and key with the key encrypted, as `openssl pkcs12 -in app.pfx -out app.pem` writes it."""
    from cryptography.hazmat.primitives import serialization

    data = pem.read_bytes()
    key = serialization.load_pem_private_key(data, password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.BestAvailableEncryption(password)
    )
    cert = data[: data.index(b"-----END CERTIFICATE-----") + len(b"-----END CERTIFICATE-----\n")]
    out = pem.with_name("exo-encrypted.pem")
    out.write_bytes(cert + encrypted)
    return out


@pytest.mark.parametrize(
    ("which", "password", "problem"),
    [
        ("encrypted", "Pfx-Export-1", None),
        (
            "encrypted",
            None,
            "the private key in {pem} is encrypted: set client_certificate_password ({{ env = .. }} or "
            "{{ file = .. }})",
        ),
        ("encrypted", "wrong", "client_certificate_password does not decrypt the private key in {pem}"),
        ("plain", "Pfx-Export-1", "the private key in {pem} is not encrypted: remove client_certificate_password"),
    ],
)
def test_a_client_certificate_password_that_does_not_fit_the_key_is_named(
    make_emulator: Any, tmp_path: Path, which: str, password: str | None, problem: str | None
) -> None:
    """Found trying `client_certificate_password` (an encrypted key, as exported from a PFX): a missing or
    wrong password, or one for a key that has none, all said "PATH must hold a PEM private key and
    certificate (TypeError)" / "(ValueError)", sending the admin to a file that was fine. The password
    itself was never tested working: the first case signs in with it."""
    emu = make_emulator(users=5)
    pem = _app_certificate_pem(emu, tmp_path)
    if which == "encrypted":
        pem = _encrypted_pem(pem, b"Pfx-Export-1")
    conn = make_connector(
        emu,
        tmp_path / "data",
        auth_mode="app",
        client_certificate=pem,
        client_certificate_password=password,
        refresh_token=None,
    )
    try:
        if problem is None:
            conn.open()
            assert conn.check().ok
            return
        with pytest.raises(ConfigurationError) as caught:
            conn.open()
    finally:
        conn.close()
    assert str(caught.value) == "agents.exo.settings.client_certificate_password: " + problem.format(pem=pem)
    assert password is None or password not in str(caught.value)


@pytest.mark.usefixtures("cache_key")
def test_a_client_certificate_without_its_key_names_the_agents_setting(make_emulator: Any, tmp_path: Path) -> None:
    """QA: found during the step, it said "client_certificate: ... holds no PEM private key", not where the
    setting is (agents.exo.settings.client_certificate), as the checks before a run name a setting."""
    emu = make_emulator(users=1)
    pem = _app_certificate_pem(emu, tmp_path)
    text = pem.read_bytes()
    pem.write_bytes(text[: text.index(b"-----END CERTIFICATE-----") + len(b"-----END CERTIFICATE-----\n")])
    conn = make_connector(emu, tmp_path / "data", auth_mode="app", client_certificate=pem, refresh_token=None)
    try:
        with pytest.raises(ConfigurationError) as caught:
            conn.open()
    finally:
        conn.close()
    assert str(caught.value).startswith(f"agents.exo.settings.client_certificate: {pem} holds no PEM private key")


@pytest.mark.usefixtures("cache_key")
def test_unknown_client_certificate_stops_with_authentication_error(make_emulator: Any, tmp_path: Path) -> None:
    from connector.emulator._identity import ClientCertificate

    emu = make_emulator(users=5)
    rogue = ClientCertificate.generate("not registered with the app")
    pem = tmp_path / "rogue.pem"
    pem.write_bytes(rogue.cert_pem + rogue.key_pem)
    before = emu.admin.stats()
    conn = make_connector(emu, tmp_path / "data", auth_mode="app", client_certificate=pem, refresh_token=None)
    with pytest.raises(AuthenticationError) as caught:
        conn.open()
    conn.close()
    error = caught.value
    message = str(error)
    assert error.status == "stopped-authentication"
    assert "invalid_client" in message and "AADSTS700027" in message  # the key was not found
    assert "Trace ID" not in message and "\r" not in message  # only the first line of Entra's text
    assert "PRIVATE KEY" not in message and rogue.key_pem.decode().splitlines()[1] not in message
    # app mode signs nobody in: the message must not send the operator to `mvsync auth login`, which
    # refuses app mode; it points at the configured credential instead
    assert "auth login" not in message
    assert "client_certificate" in message
    with pytest.raises(ConfigurationError, match="nothing to sign in"):
        conn.auth.login_with_refresh_token("anything")  # what `mvsync auth login` would have done
    # refused at the token endpoint: Graph never saw a request
    assert emu.admin.stats()["graph_requests"] == before["graph_requests"]


def test_a_client_certificate_that_stopped_working_is_found_by_the_next_process_not_an_hour_later(
    make_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """App mode keeps its tokens for one process: after the certificate is replaced by one the app
    does not know (a botched rotation), the very next run (or ``mvsync doctor``) says so, instead of
    serving a cached token until it expires. Nothing is written to disk, and no cache key is needed."""
    from connector.emulator._identity import ClientCertificate

    monkeypatch.delenv("MVSYNC_TOKEN_CACHE_KEY", raising=False)
    emu = make_emulator(users=5)
    data = tmp_path / "data"
    good = _app_certificate_pem(emu, tmp_path)
    conn = make_connector(emu, data, auth_mode="app", client_certificate=good, refresh_token=None)
    conn.open()
    conn.close()
    status = conn.auth.status()
    assert status.token_ok and status.cache_file is None and not status.cache_exists  # `mvsync auth status`

    rogue = ClientCertificate.generate("the new certificate, never uploaded to the app")
    good.write_bytes(rogue.cert_pem + rogue.key_pem)
    conn = make_connector(emu, data, auth_mode="app", client_certificate=good, refresh_token=None)
    with pytest.raises(AuthenticationError, match="AADSTS700027"):
        conn.open()
    conn.close()
    assert not conn.auth.status().token_ok  # what doctor reports
    assert not conn.auth.cache_path.exists()


# ------------------------------------------------- 2. refresh token revoked inside an engine step


class _RevokeAfterFirstPage:
    """A ``Progress`` sink: the engine calls ``advance`` once per applied page, on its own thread."""

    def __init__(self, emu: Any) -> None:
        self.emu = emu
        self.pages = 0
        self.revoked = 0

    def start(self, label: str, total: int | None = None) -> None:
        pass

    def advance(self, n: int = 1) -> None:
        self.pages += 1
        if self.pages == 1:
            self.revoked = self.emu.admin.revoke_refresh_tokens()  # an admin revokes sessions
            self.emu.admin.expire_access_tokens()  # ... and the token in use dies with them

    def finish(self) -> None:
        pass


@pytest.mark.usefixtures("cache_key")
def test_refresh_token_revoked_mid_engine_step_stops_and_keeps_earlier_imports(
    make_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connector.engine import Engine

    # enough users that the pipeline (at most ~200 users ahead of the engine) still has photo requests
    # to send when page 1 is applied; latency keeps them in flight
    emu = make_emulator(users=300, latency_ms=20)
    config = _engine_config(emu, tmp_path, monkeypatch, page_size=5)
    engine = Engine(config)
    try:
        first = engine.run_profile("full")
        assert not first.status.startswith("stopped-"), first.steps[0].message
        before = _cs_rows(engine)
        watermark = _watermark(engine)
        assert set(before) == _staged_ids(emu)
        assert watermark is not None

        hook = _RevokeAfterFirstPage(emu)
        second = engine.run_profile("full", progress=hook)
        after = _cs_rows(engine)
        watermark_after = _watermark(engine)
    finally:
        engine.close()

    step = second.steps[0]
    assert hook.revoked >= 1 and hook.pages >= 1
    assert step.status == "stopped-authentication", (step.status, step.message)
    assert second.status == "stopped-authentication"
    message = step.message or ""
    assert f"mvsync auth login exo -c {tmp_path / 'mvsync.toml'}" in message
    assert "invalid_grant" in message and "AADSTS50173" in message  # revoked, in Entra's words
    assert emu.info["refresh_token"] not in message
    # it stopped in the middle: not every user was imported again
    assert step.counters["pages"] < len(before) // 5
    # nothing the earlier run imported is lost or marked deleted, and the watermark is untouched
    assert set(after) == set(before)
    assert all(row.pending_type == "add" and row.pending for row in after.values())
    assert {a: r.pending for a, r in after.items()} == {a: r.pending for a, r in before.items()}
    assert watermark_after == watermark


def _export_stopped(conn: Any, changes: list[Any]) -> AuthenticationError:
    """Open ``conn``, export ``changes``, which must stop the step on authentication; the stop."""
    conn.open()
    try:
        with pytest.raises(AuthenticationError) as stopped:
            conn.export(changes)
    finally:
        conn.close()
    return stopped.value


@pytest.mark.usefixtures("cache_key")
def test_a_sign_in_revoked_mid_export_stops_with_the_photos_already_written(
    make_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found with `mvsync run` against the emulator: sessions revoked during a photo export stopped the
    step (stopped-authentication) without the results of the photos it had written, so they stayed
    pending and were written again by the next export; and every later change of the batch was still
    tried after the stop. Now the stop carries the results of the writes done (the engine records them)
    and no change is tried after it."""
    emu = make_emulator(users=30)
    changes = photo_changes(emu, 8)
    sent = at_photo_upload(monkeypatch, 3, lambda: revoke_sign_in(emu))
    conn = make_connector(emu, tmp_path, concurrency=1)  # one export worker: the changes go in order
    stopped = _export_stopped(conn, changes)
    assert "invalid_grant" in str(stopped) and "AADSTS50173" in str(stopped)
    done = [(r.identifier, r.status) for r in stopped.results]
    assert done == [("0", ExportStatus.SUCCESS), ("1", ExportStatus.SUCCESS)]
    assert all(emu.admin.get_photo(c.anchor) is not None for c in changes[:2])
    assert sent == [c.anchor for c in changes[:3]]  # the third met the revocation; nothing was tried after it


def test_an_app_without_the_photo_write_permission_is_told_which_application_permission_to_grant(
    make_emulator: Any, tmp_path: Path
) -> None:
    """App mode's side of the export-time permission stop (the CLI test covers delegated mode)."""
    emu = make_emulator(users=30, app_roles=("User.Read.All", "ProfilePhoto.Read.All"))
    changes = photo_changes(emu, 3)
    before = [emu.admin.get_photo(c.anchor) for c in changes]
    secret = emu.info["client_secret"]
    conn = make_connector(emu, tmp_path, auth_mode="app", client_secret=secret, refresh_token=None, concurrency=1)
    stopped = _export_stopped(conn, changes)
    assert str(stopped).endswith(
        "auth_mode is 'app': add the application permission ProfilePhoto.ReadWrite.All to the app registration "
        "in Entra ID and grant admin consent for it"
    )
    assert stopped.results == [] and secret not in str(stopped)
    assert [emu.admin.get_photo(c.anchor) for c in changes] == before  # nothing written


@pytest.mark.usefixtures("cache_key")
def test_a_photo_export_to_an_on_premises_mailbox_says_so_not_that_the_user_is_missing(
    make_emulator: Any, tmp_path: Path
) -> None:
    """Found with the sample's optional folder -> Exchange Online flow in a hybrid tenant: a person whose
    mailbox is on Exchange Server got `cd-missing-object` at every export, which the README explains as
    "the user was deleted or moved" (run a delta import): Graph answers 404
    MailboxNotHostedInExchangeOnline for a mailbox it cannot write. It is now named for what it is."""
    emu = make_emulator(users=30)
    on_premises = [u["id"] for u in emu.admin.users() if u.get("mailbox") == "on-premises"][:2]
    jpeg = (Path(__file__).parents[2] / "data" / "astronaut.jpg").read_bytes()
    put = CSEntryChange.update("EXOUser", on_premises[0], [AttributeChange.replace("EXOPhoto", jpeg)])
    remove = CSEntryChange.update("EXOUser", on_premises[1], [AttributeChange.delete("EXOPhoto")])
    put.identifier, remove.identifier = "1", "2"
    conn = make_connector(emu, tmp_path)
    conn.open()
    try:
        results = conn.export([put, remove])
    finally:
        conn.close()
    assert [(r.status, r.error_name) for r in results] == [(ExportStatus.FAILED, "mailbox-on-premises")] * 2
    assert "Graph cannot write the photo of a mailbox on Exchange Server" in results[0].error_detail
    assert results[0].error_detail.startswith("HTTP 404 MailboxNotHostedInExchangeOnline")


@pytest.mark.usefixtures("cache_key")
def test_each_refused_photo_write_says_why_and_what_happens_next(make_emulator: Any, tmp_path: Path) -> None:
    """Found by the export pass: a user without an Exchange Online mailbox (Graph: 400 AuthenticationError
    "Error authenticating with resource") was a `cd-error` reading like a failed sign-in, though the
    import names the same answer `no-exchange-mailbox`; and no per-object export error said what
    happens next or what to do (a user deleted since the import: "HTTP 404 Request_ResourceNotFound:
    Resource '...' does not exist ..." and nothing more). Each now says so; the rest of the export goes on."""
    emu = make_emulator(users=40, no_mailbox_photo="error")
    users = emu.admin.users()
    cloud = [u["id"] for u in users if u.get("mailbox") == "cloud"]
    [no_mailbox] = [u["id"] for u in users if u.get("mailbox") == "none" and u.get("mail")][:1]
    gone = cloud[-1]
    emu.admin.delete_user(gone, permanent=True)
    jpeg = (Path(__file__).parents[2] / "data" / "astronaut.jpg").read_bytes()
    changes = []
    for number, user in enumerate((gone, gone, no_mailbox, cloud[1])):
        change = AttributeChange.delete("EXOPhoto") if number == 1 else AttributeChange.replace("EXOPhoto", jpeg)
        changes.append(CSEntryChange.update("EXOUser", user, [change]))
        changes[-1].identifier = str(number)
    conn = make_connector(emu, tmp_path)
    conn.open()
    try:
        results = conn.export(changes)
    finally:
        conn.close()
    put_gone, remove_gone, put_no_mailbox, put_cloud = results
    for result in (put_gone, remove_gone):
        assert (result.status, result.error_name) == (ExportStatus.FAILED, "cd-missing-object")
        assert result.error_detail.startswith("HTTP 404 Request_ResourceNotFound")
        assert result.error_detail.endswith(
            "The user no longer exists in Entra ID (deleted since agent 'exo' last imported it): its next "
            "import removes the user, and this change with it"
        )
    assert (put_no_mailbox.status, put_no_mailbox.error_name) == (ExportStatus.FAILED, "no-exchange-mailbox")
    assert put_no_mailbox.error_detail.startswith("HTTP 400 AuthenticationError")
    assert "a user without an Exchange Online mailbox" in put_no_mailbox.error_detail
    assert put_no_mailbox.error_detail.endswith("the change is tried again at every export")
    assert put_cloud.status == ExportStatus.SUCCESS


@pytest.mark.usefixtures("cache_key")
def test_an_access_token_that_expires_mid_export_fails_nobody_when_the_retry_budget_is_spent(
    make_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the token pass: Graph's 401 for an access token that ran out (or was revoked by
    continuous access evaluation) was a failure like a 5xx: its retry with a new token spent the
    step's retry budget, so with the budget spent (a stormy run, or retry_budget = 0) the write in
    flight got no retry and became that person's permission-issue, though nothing about the person
    was wrong. One retry with a new token is now free, as waiting out throttling is."""
    emu = make_emulator(users=30)
    changes = photo_changes(emu, 4)
    conn = make_connector(emu, tmp_path, retry_budget=0, concurrency=1)
    at_photo_upload(monkeypatch, 3, emu.admin.expire_access_tokens)  # Graph now answers 401 for the token in use
    conn.open()
    try:
        results = conn.export(changes)
    finally:
        conn.close()
    assert [(r.status, r.error_name) for r in results] == [(ExportStatus.SUCCESS, "")] * 4, results
    assert conn.metrics["token_refreshes_on_401"] == 1 and conn.metrics["retry_budget_spent"] == 0


def test_a_token_cache_that_cannot_be_written_stops_the_step_naming_the_file(
    make_emulator: Any, tmp_path: Path, cache_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk of data_dir full when the run renews its sign-in: an OSError traceback, the step a
    stopped-connector-exception. Now a stop naming the file, saying the cache keeps the sign-in before."""
    import errno

    from connector.agents.exchange_online import _tokencache

    emu = make_emulator(users=5)
    data = tmp_path / "data"
    seeded = make_connector(emu, data)
    seeded.open()
    seeded.close()
    before = (data / _tokencache.CACHE_FILE_NAME).read_bytes()

    def full_disk(path: Path, data: bytes, **options: Any) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(_tokencache, "atomic_write", full_disk)
    conn = make_connector(emu, data)
    try:
        with pytest.raises(StopRunError) as caught:
            conn.open()  # the first token of a process redeems the refresh token: a rotated one to save
    finally:
        monkeypatch.undo()
        conn.close()
    assert str(caught.value).startswith(
        f"cannot write the token cache {data / _tokencache.CACHE_FILE_NAME} (No space left on device): the renewed "
        "sign-in is not saved (the file keeps the one before)"
    )
    assert (data / _tokencache.CACHE_FILE_NAME).read_bytes() == before


# ------------------------------------------------------------------------- 3. expired delta link


@pytest.mark.usefixtures("cache_key")
def test_expired_delta_link_stops_and_asks_for_a_full_import(make_emulator: Any, tmp_path: Path) -> None:
    emu = make_emulator(users=30)
    data = tmp_path / "data"
    conn = make_connector(emu, data)
    conn.open()
    _, watermark = run_import(conn, ImportMode.FULL)
    conn.close()
    assert watermark is not None

    emu.admin.expire_delta_tokens()  # Graph now answers 410 resyncRequired for the stored link

    conn = make_connector(emu, data)
    conn.open()
    try:
        with pytest.raises(StopRunError) as caught:
            run_import(conn, ImportMode.DELTA, watermark)
    finally:
        conn.close()
    error = caught.value
    # documented in _connector._listing_error: the step stops (not a server-down, not an auth problem)
    assert type(error) is StopRunError
    assert not isinstance(error, AuthenticationError | ServerDownError)
    assert error.status == "stopped-connector-error"
    assert "users/delta link is no longer valid" in str(error)
    assert "410" in str(error) and "resyncRequired" in str(error)
    # why the Location (a new initial round) is not followed, and what to do (Learn: "Synchronization reset")
    assert "Graph asks for a full synchronization of the users" in str(error)
    assert "with a new initial round at its Location header" in str(error)
    assert "miss every user deleted since the last import; nothing was changed" in str(error)
    assert str(error).endswith("Run a full import of agent 'exo', and delta imports go on from it")

    # doing what the message says recovers: a full import, then delta imports work again
    emu.admin.update_user(_mailbox_users(emu)[0]["id"], displayName="After The Resync")
    conn = make_connector(emu, data)
    conn.open()
    try:
        full, watermark = run_import(conn, ImportMode.FULL)
        assert watermark is not None
        delta, watermark = run_import(conn, ImportMode.DELTA, watermark)
    finally:
        conn.close()
    assert {e.anchor for e in full} == {u["id"] for u in _mailbox_users(emu)}
    assert [e for e in delta if e.error is None] == []  # nothing changed since the full import
    assert watermark is not None


@pytest.mark.usefixtures("cache_key")
def test_engine_delta_step_with_expired_link_stops_and_full_import_recovers(
    make_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connector.engine import Engine

    emu = make_emulator(users=25)
    engine = Engine(_engine_config(emu, tmp_path, monkeypatch, page_size=10))
    try:
        assert not engine.run_profile("full").status.startswith("stopped-")
        rows = _cs_rows(engine)
        watermark = _watermark(engine)
        emu.admin.expire_delta_tokens()
        delta = engine.run_profile("delta")
        step = delta.steps[0]
        assert step.status == "stopped-connector-error", (step.status, step.message)
        assert "Run a full import of agent 'exo'" in (step.message or "")
        assert "resyncRequired" in (step.message or "")
        # the stopped delta neither lost objects nor replaced the watermark
        assert set(_cs_rows(engine)) == set(rows)
        assert _watermark(engine) == watermark
        # the remedy the message names
        again = engine.run_profile("full")
        assert not again.status.startswith("stopped-"), again.steps[0].message
        assert _watermark(engine) not in (None, watermark)
        after = engine.run_profile("delta")
        assert not after.status.startswith("stopped-"), after.steps[0].message
    finally:
        engine.close()


@pytest.mark.usefixtures("cache_key")
def test_engine_drops_a_user_gone_before_its_photo_probe(
    make_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ "User gone" through the engine: listed by the full import, deleted before its photo probe.

    The emulator answers that probe 404 Request_ResourceNotFound (as Graph does for a user that does
    not resolve); the agent leaves the user out of the import, so the engine's full-import rule stages
    a delete. Read as "no photo", it would have staged an update clearing EXOPhoto instead.
    """
    from connector.engine import Engine

    emu = make_emulator(users=20)
    victim = next(u for u in _mailbox_users(emu) if u["hasPhoto"] and u["mailbox"] == "cloud")
    engine = Engine(_engine_config(emu, tmp_path, monkeypatch, page_size=10))
    try:
        assert not engine.run_profile("full").status.startswith("stopped-")
        before = _cs_rows(engine)
        assert before[victim["id"]].pending_type == "add"
        answers = delete_user_at_photo_probe(monkeypatch, emu, victim["id"])
        second = engine.run_profile("full")
        assert not second.status.startswith("stopped-"), second.steps[0].message
        rows = _cs_rows(engine)
    finally:
        engine.close()
    assert answers == [(404, "Request_ResourceNotFound")]
    assert victim["id"] not in rows
    assert set(rows) == set(before) - {victim["id"]}  # everyone else is still there


def test_a_refused_sign_in_keeps_the_account_that_was_signed_in(
    make_emulator: Any, tmp_path: Path, cache_key: str
) -> None:
    """``mvsync auth login --refresh-token-file`` with a token Entra refuses (a stale copy, the
    wrong file), or an unreachable sign-in endpoint, used to empty the token cache on disk first:
    the working sign-in was gone, and the next scheduled run stopped as stopped-authentication."""
    emu = make_emulator(users=1)
    data = tmp_path / "data"
    ca_bundle = tmp_path / "ca.pem"  # the emulator removes its own when it stops
    ca_bundle.write_bytes(Path(emu.info["ca_cert"]).read_bytes())
    seeded = make_connector(emu, data)  # the configured refresh token seeds the cache, as a first login does
    seeded.open()
    seeded.close()
    conn = make_connector(emu, data, refresh_token=None, ca_bundle=ca_bundle)  # production: the cache alone
    before = conn.auth.cache_path.read_bytes()
    accounts = [a["username"] for a in conn.auth.app().get_accounts()]
    assert accounts
    with pytest.raises(ConnectorError) as refused:
        conn.auth.login_with_refresh_token("not-a-refresh-token")
    assert str(refused.value).startswith("the refresh token was refused: invalid_grant")
    assert str(refused.value).endswith(f"; the token cache {conn.auth.cache_path} was left as it was")
    emu.stop()
    with pytest.raises(AuthenticationError) as unreachable:  # (MSAL answers a repeated refused request itself)
        conn.auth.login_with_refresh_token("another-token")
    assert unreachable.value.status == "stopped-server-down"
    assert conn.auth.cache_path.read_bytes() == before
    assert [a["username"] for a in conn.auth.app().get_accounts()] == accounts  # and in memory


@pytest.mark.usefixtures("cache_key")
def test_users_without_mail_are_skipped_and_counted(make_emulator: Any, tmp_path: Path) -> None:
    """Users without ``mail`` are taken for users without a mailbox (why: ``_import._is_mailbox_user``):
    no probe, no object, and run history counts them (before: skipped without a trace, so a synchronized
    user with a mailbox but an empty AD ``mail`` lost its photo unseen)."""
    from tests.agents.exchange_online.conftest import counts, imported

    emu = make_emulator(users=60)
    without = {u["id"] for u in emu.admin.users() if not u["mail"]}
    assert without
    conn = make_connector(emu, tmp_path / "data")
    entries, _ = imported(conn)
    assert not without & {e.anchor for e in entries}
    assert counts(conn)["skipped_without_mail"] == len(without)
    mailboxes = [u for u in emu.admin.users() if u["mail"] and u["userType"] != "Guest"]
    assert counts(conn)["probes"] == len(mailboxes)


def test_an_expired_delta_link_says_how_long_one_lasts(make_emulator: Any, tmp_path: Path) -> None:
    """Learn, "Token duration": a directory delta link lasts seven days, then a 400 ``syncStateNotFound``
    (what the emulator answers for a link older than that). The stop says so and how to avoid it."""
    from connector.agents.exchange_online._graph import GraphResponse

    conn = make_connector(make_emulator(users=2), tmp_path / "data")
    body = {"error": {"code": "syncStateNotFound", "message": "The sync state generation is not found."}}
    message = str(conn._listing_error(GraphResponse(400, {}, b"", body)))
    assert "HTTP 400 syncStateNotFound" in message and "the link expired (Graph keeps one for seven days)" in message
    assert "Run a full import of agent 'exo'" in message
    assert message.endswith("run a delta import of it more often than weekly")


@pytest.mark.usefixtures("cache_key")
def test_guests_are_neither_probed_nor_errors(make_emulator: Any, tmp_path: Path) -> None:
    """B2B guests (``#EXT#`` userPrincipalName, userType Guest) have ``mail``, their own address, and no
    mailbox in the tenant. Before: each was probed like a mailbox user, and where Graph answers a photo
    read for a user without a mailbox with 400 AuthenticationError, each was an import error."""
    from tests.agents.exchange_online.conftest import counts, imported

    emu = make_emulator(users=100, guest_ratio=0.05, no_mailbox_photo="error")
    guests = {u["id"] for u in emu.admin.users() if u["userType"] == "Guest"}
    assert len(guests) >= 3 and all("#EXT#@" in u["userPrincipalName"] for u in emu.admin.users() if u["id"] in guests)
    conn = make_connector(emu, tmp_path / "data")
    entries, _ = imported(conn)
    assert not [(e.anchor, e.error.name) for e in entries if e.error is not None]
    assert not guests & {e.anchor for e in entries}
    assert counts(conn)["skipped_guests"] == len(guests)
    mailbox_users = [u for u in emu.admin.users() if u["mail"] and u["id"] not in guests]
    assert counts(conn)["probes"] == len(mailbox_users)


@pytest.mark.usefixtures("cache_key")
def test_guests_staged_by_an_older_version_are_skipped_by_a_delta_too(make_emulator: Any, tmp_path: Path) -> None:
    """Guests staged before the listing skipped them (an older version of this agent: each one's state
    row, its object in the connector space) were probed again by every delta whose re-check window had
    passed, until the next full import, which alone drops them: a delta lists only changed users, and
    the re-check of the others did not ask whether they are mailbox users. Now the re-check skips them
    as the listing does, counted, and removes what the older version staged, as the full import would."""
    from connector.agents._mailbox_photo import UserState
    from tests.agents.exchange_online.conftest import agent_state, counts, imported

    emu = make_emulator(users=60, guest_ratio=0.1, no_mailbox_photo="error")
    guests = {u["id"]: u for u in emu.admin.users() if u["userType"] == "Guest"}
    assert len(guests) >= 3
    conn = make_connector(emu, tmp_path / "data")
    _, watermark = imported(conn)
    state = agent_state(conn)
    for gid, user in guests.items():  # as an older version left them: staged, photo checked long ago
        attrs = {name: user[name] for name in ("userPrincipalName", "mail", "mailNickname", "displayName")}
        state[gid] = UserState(gid, attrs, in_cs=True, checked_at=1.0).update().value
    delta = make_connector(emu, tmp_path / "data")
    entries, watermark = imported(delta, ImportMode.DELTA, watermark=watermark)
    assert counts(delta)["probes"] == 0, counts(delta)  # no guest probed (nor anyone else: within the window)
    assert {e.anchor for e in entries if e.modification == ObjectModificationType.DELETE} == set(guests)
    assert not [e for e in entries if e.error is not None]
    assert counts(delta)["skipped_guests"] == len(guests) and not set(guests) & set(state)
    again = make_connector(emu, tmp_path / "data")
    assert imported(again, ImportMode.DELTA, watermark=watermark)[0] == [] and counts(again)["probes"] == 0


@pytest.mark.usefixtures("cache_key")
@pytest.mark.parametrize("resets", [1, 2])
def test_a_synchronization_reset_during_a_full_import_lists_the_round_again(
    make_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, resets: int
) -> None:
    """Graph resets synchronization (410 ``resyncRequired``) while a full import follows the round's
    ``@odata.nextLink`` pages. Learn, delta-query-overview, "Synchronization reset": the application
    "must restart with a full synchronization". A full import is one: it starts the round again from
    the initial query, within the step, and stages every user. Before: the step stopped saying that a
    "delta step does not start a new round" and "nothing was changed" (pages were staged) and asked
    for the full import it was."""
    from connector.agents.exchange_online._connector import ExchangeOnlinePhotosConnector
    from connector.engine import Engine

    emu = make_emulator(users=450)  # listing pages of 200 users (twice the engine's page): three pages
    walk = ExchangeOnlinePhotosConnector.walk_delta
    done: list[str] = []

    def reset_after_the_first_page(self: Any, url: str, **kwargs: Any) -> Any:
        pages = walk(self, url, **kwargs)
        first = next(pages)
        if len(done) < resets:  # Graph resets while the round's first page is being handled
            emu.admin.expire_delta_tokens()
            done.append(first.url)
        yield first
        return (yield from pages)

    monkeypatch.setattr(ExchangeOnlinePhotosConnector, "walk_delta", reset_after_the_first_page)
    engine = Engine(_engine_config(emu, tmp_path, monkeypatch, page_size=100))
    try:
        result = engine.run_profile("full")
        step = result.steps[0]
        assert len(done) == resets, "the resets did not happen"
        if resets == 2:
            assert step.status == "stopped-connector-error", (step.status, step.message)
            assert "Graph reset the synchronization of the users again" in (step.message or "")
            assert "410 resyncRequired" in (step.message or "")
            assert (step.message or "").endswith("Run the full import of agent 'exo' again")
            result = engine.run_profile("full")  # doing what it says
            step = result.steps[0]
        assert result.status == "success", (step.status, step.message)
        assert set(_cs_rows(engine)) == _staged_ids(emu)
        assert not step.errors
        after = engine.run_profile("delta")  # the watermark is the new round's
        assert after.status == "success", after.steps[0].message
    finally:
        engine.close()


@pytest.mark.usefixtures("cache_key", "ctrl_c_raises")
def test_ctrl_c_on_windows_stops_a_photo_export_while_a_put_hangs(
    make_emulator: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On Windows before Python 3.14 nothing cuts a lock wait short: Ctrl-C is seen only when the main thread next runs
    Python code (CPython bpo-29971, gh-125541). The export waited for its first PUT with ``future.result()``, so a
    Ctrl-C while that PUT hung was not seen until it ended, and meanwhile the other workers kept starting changes.
    ``_thread.interrupt_main`` raises the interruption that same way, on Linux too. Now the wait wakes every
    ``POLL_S`` (``connector.sdk.wait_all``): the interruption is seen while the PUT still hangs, which is what ends
    it (its retries and waits end on the batch's ``interrupted`` event), and no change starts after it."""
    import _thread

    from connector.agents.exchange_online._connector import ExchangeOnlinePhotosConnector
    from connector.sdk import ExportResult, export_results

    started: list[str] = []
    told: list[bool] = []

    def hung_put(self: Any, change: CSEntryChange, cancel: Any) -> ExportResult:
        started.append(change.identifier)
        if len(started) == 1:
            _thread.interrupt_main()  # Ctrl-C, the Windows way: no signal interrupts the main thread's wait
        told.append(cancel.wait(60))  # a server that stopped answering: only the interruption ends the wait
        return ExportResult.success(change.identifier)

    emu = make_emulator(users=30)
    changes = photo_changes(emu, 12)
    conn = make_connector(emu, tmp_path, concurrency=2)  # two export workers
    conn.open()
    monkeypatch.setattr(ExchangeOnlinePhotosConnector, "_export_one", hung_put)
    try:
        with pytest.raises(KeyboardInterrupt) as caught:
            conn.export(changes)
    finally:
        conn.close()
    assert told and all(told), told  # each hung PUT learnt of the interruption while it hung
    assert 1 <= len(started) <= 2, started  # the changes under way; none started after the Ctrl-C
    assert {r.identifier for r in export_results(caught.value)} == set(started)  # their results go with it
