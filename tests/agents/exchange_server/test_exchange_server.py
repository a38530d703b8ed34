"""exchange-server-photos against the EWS emulator over real HTTPS (NTLM, Basic, OAuth)."""

from __future__ import annotations

import codecs
import contextlib
import datetime
import io
import itertools
import json
import logging
import os
import signal
import socket
import ssl
import sys
import threading
import time
import tracemalloc
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from pydantic import ValidationError
from sqlalchemy import select

from connector import __version__, files
from connector.agents._mailbox_photo import LIMIT_KEY
from connector.agents.exchange_server import (
    OBJECT_CLASS,
    ExchangeServerPhotosConnector,
    ExchangeServerSettings,
    _client,
    _connector,
    _versions,
)
from connector.agents.exchange_server._auth import refused, spn
from connector.agents.exchange_server._client import MAX_PHOTO_BYTES, throttle_signal
from connector.config import ConfigError, config_from_dict, load_config
from connector.emulator import EmulatorConfig, GraphEmulator
from connector.emulator._ews import SERVER_VERSIONS, EwsConfig, EwsEmulator, error_response, soap_fault
from connector.engine import Engine, import_in_memory, open_connector
from connector.logging import setup_logging
from connector.sdk import (
    AuthenticationError,
    ConfigurationError,
    ConnectorContext,
    CSEntryChange,
    ImportMode,
    ObjectModificationType,
    ResumeRefusedError,
    ServerDownError,
    StopRunError,
)
from connector.store import SqlStore
from connector.store.tables import cs_object
from connector.throttling import AdaptiveLimiter, LimitMemory, ThrottledTooLongError, forget_shared_limiters
from tests.agents.photo_folder.helpers import by_anchor
from tests.cli._configs import invoke
from tests.emulator.test_ews import _thumbnail
from tests.harness.sockets import handing_to, silent_server, trickling_server
from tests.harness.trust import other_ca, system_store
from tests.imaging.images import photo

PHOTO, PLAIN, THUMB = "photo@contoso.example", "plain@contoso.example", "thumb@contoso.example"


@pytest.fixture
def ews() -> Iterator[EwsEmulator]:
    with EwsEmulator(EwsConfig(extended_protection=True)) as emu:  # the agent's NTLM binds to the TLS channel
        emu.add_mailbox(PHOTO, photo=photo(1))
        emu.add_mailbox(PLAIN)
        emu.add_mailbox(THUMB, thumbnail=_thumbnail())
        yield emu


def _settings(emu: EwsEmulator, tmp_path: Path, **overrides: Any) -> ExchangeServerSettings:
    info = emu.info
    listing = tmp_path / "mailboxes.txt"
    tmp_path.mkdir(parents=True, exist_ok=True)
    if not listing.exists():
        listing.write_text(f"# Get-Mailbox output\n{PHOTO}\n{PLAIN.upper()}\n\n{THUMB}\n", encoding="utf-8")
    values: dict[str, Any] = {
        "ews_url": info["ews_url"],
        "ca_bundle": info["ca_cert"],
        "username": info["username"],
        "password": info["password"],
        "mailbox_file": listing,
        "backoff_initial_s": 0.01,
        **overrides,
    }
    return ExchangeServerSettings.model_validate(values)


def _agent(emu: EwsEmulator, tmp_path: Path, **overrides: Any) -> ExchangeServerPhotosConnector:
    context = ConnectorContext(agent="exs", data_dir=tmp_path / "data")
    return ExchangeServerPhotosConnector(_settings(emu, tmp_path, **overrides), context)


#: The agent state of each data folder (the engine keeps it in its store) and each agent's counts.
_STATES: dict[Path, dict[str, Any]] = {}
_COUNTS: dict[ExchangeServerPhotosConnector, Counter[str]] = {}


def _imported(agent: ExchangeServerPhotosConnector, watermark: str | None = None) -> tuple[dict[str, Any], str]:
    """One import the way the engine runs it (delta when a watermark is given), in pages of two."""
    mode = ImportMode.DELTA if watermark is not None else ImportMode.FULL
    state = _STATES.setdefault(agent.context.data_dir, {})
    counts = _COUNTS.setdefault(agent, Counter())
    with agent:
        entries, mark = import_in_memory(agent, mode, state, watermark=watermark, page_size=2, counters=counts)
    assert mark is not None
    return by_anchor(entries), mark


def test_full_import_photos_no_photo_and_the_ad_thumbnail(ews: EwsEmulator, tmp_path: Path) -> None:
    entries, watermark = _imported(_agent(ews, tmp_path, auth="ntlm"))
    assert set(entries) == {PHOTO, PLAIN, THUMB}
    got = entries[PHOTO].attributes
    assert got["EXSPhoto"][:2] == b"\xff\xd8" and got["EXSPhotoETag"].startswith('"')
    assert got["EXSPhotoSize"] == len(got["EXSPhoto"])
    # no photo, and the AD thumbnail Exchange falls back to (usually this sync's own export): no photo
    assert entries[PLAIN].attributes == {"mail": PLAIN}
    assert entries[THUMB].attributes == {"mail": THUMB}
    accepted, _ = _imported(_agent(ews, tmp_path / "b", accept_ad_thumbnail=True))
    assert accepted[THUMB].attributes["EXSPhoto"] == _thumbnail()
    assert watermark


def test_delta_within_the_window_sends_nothing(ews: EwsEmulator, tmp_path: Path) -> None:
    _entries, watermark = _imported(_agent(ews, tmp_path))
    before = ews.stats()["requests"]
    entries, _ = _imported(_agent(ews, tmp_path), watermark)
    assert entries == {} and ews.stats()["requests"] == before


def test_delta_rechecks_by_etag_and_follows_the_list(ews: EwsEmulator, tmp_path: Path) -> None:
    _entries, watermark = _imported(_agent(ews, tmp_path))
    ews.set_photo(PLAIN, photo(7))  # a photo appears
    ews.add_mailbox("new@contoso.example", photo=photo(8))
    (tmp_path / "mailboxes.txt").write_text(f"{PHOTO}\n{PLAIN}\nnew@contoso.example\n", encoding="utf-8")
    ews.service.stats.reset()
    agent = _agent(ews, tmp_path, photo_recheck_hours=0)
    entries, watermark = _imported(agent, watermark)
    assert entries[THUMB].modification == ObjectModificationType.DELETE
    assert entries[PLAIN].attributes["EXSPhotoChecksum"] and "new@contoso.example" in entries
    assert PHOTO not in entries  # 304: unchanged
    assert ews.stats()["not_modified"] == 1 and _COUNTS[agent]["unchanged"] == 1
    ews.set_photo(PLAIN, None)  # Remove-UserPhoto
    entries, _ = _imported(_agent(ews, tmp_path, photo_recheck_hours=0), watermark)
    assert entries[PLAIN].attributes == {"mail": PLAIN}
    assert set(entries) == {PLAIN}


def test_per_object_errors_and_their_recheck_window(ews: EwsEmulator, tmp_path: Path) -> None:
    (tmp_path / "mailboxes.txt").write_text(f"{PHOTO}\nmoved@contoso.example\n", encoding="utf-8")
    entries, watermark = _imported(_agent(ews, tmp_path, max_attempts=2))
    error = entries["moved@contoso.example"].error
    assert error is not None and error.name == "ews-error" and "moved@contoso.example" in error.detail
    assert "on-premises mailbox" in error.detail
    assert entries[PHOTO].error is None
    again, _ = _imported(_agent(ews, tmp_path, max_attempts=2), watermark)
    assert again == {}  # inside photo_error_recheck_hours: not asked again
    ews.add_mailbox("moved@contoso.example", photo=photo(4))
    fixed, _ = _imported(_agent(ews, tmp_path, photo_error_recheck_hours=0), watermark)
    assert fixed["moved@contoso.example"].attributes["EXSPhoto"]


def test_server_busy_pauses_the_shared_limiter(ews: EwsEmulator, tmp_path: Path) -> None:
    for n in range(20):
        ews.add_mailbox(f"m{n}@contoso.example", photo=photo(10 + n, size=120))
    (tmp_path / "mailboxes.txt").write_text("".join(f"m{n}@contoso.example\n" for n in range(20)), encoding="utf-8")
    # ErrorServerBusy for a deterministic half of the attempts (the draw depends on URL and attempt only)
    ews.set_faults({"429": 0.5, "retry_after": 0.05})
    agent = _agent(ews, tmp_path, concurrency=8)
    entries, _ = _imported(agent)
    assert len(entries) == 20 and all(e.error is None for e in entries.values())
    assert ews.stats()["faults"].get("ErrorServerBusy", 0) >= 1
    metrics = agent.metrics
    assert metrics["throttled"] >= 1 and metrics["backoff_ms_honoured"] > 0
    assert metrics["limiter"]["pauses"] >= 1 and metrics["limiter"]["peak_limit"] <= 8


def test_push_back_to_the_check_before_the_first_mailbox_is_waited_out_and_counted(
    ews: EwsEmulator, tmp_path: Path
) -> None:
    """The checks before the first mailbox (is it EWS, is it Exchange 2013 or later) took ErrorServerBusy
    as an answer: no pause, and left out of the step's throttled count (fresh-clone CI: the EWS bench
    counted 199 of the emulator's 200). A budget of one request in reserve and one every 2 s throttles
    the second check whenever it comes within 2 s of the first (and each request after it)."""
    ews.add_mailbox("m0@contoso.example", photo=photo(10, size=120))
    (tmp_path / "mailboxes.txt").write_text("m0@contoso.example\n", encoding="utf-8")
    ews.set_limits(budget_per_s=0.5, burst=1)
    agent = _agent(ews, tmp_path, concurrency=1)
    entries, _ = _imported(agent)
    assert entries["m0@contoso.example"].error is None and entries["m0@contoso.example"].attributes["EXSPhoto"]
    throttled = ews.stats()["throttled"]
    assert throttled >= 1 and agent.metrics["throttled"] == throttled
    assert agent.metrics["limiter"]["pauses"] >= 1


def test_a_back_off_longer_than_the_throttled_wait_stops_the_step_at_once_saying_so(
    ews: EwsEmulator, tmp_path: Path
) -> None:
    """ErrorServerBusy asking for an hour (BackOffMilliseconds 3,600,000) when the step may wait 5 minutes:
    the limiter pauses at most 120 s at a time, and that capped pause was all the throttle watch was
    shown, so the step asked again every 120 s against a server that had asked for an hour, then
    stopped after 5 minutes. Now the wait EWS asked for is weighed at once (as the Graph client weighs
    Retry-After), and the message tells the wait asked for from the time spent."""
    emails = _many_mailboxes(ews, tmp_path, 3)
    busy = soap_fault("ErrorServerBusy", "The server cannot service this request right now.", 3_600_000)
    for email in emails:
        ews.set_answer(email, 500, busy)
    agent = _agent(ews, tmp_path, concurrency=1, max_throttled_wait_minutes=5)
    caught: list[BaseException] = []

    def run() -> None:
        try:
            _imported(agent)
        except BaseException as exc:  # handed to the test's thread
            caught.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(60)  # before: still waiting out its second 120-s pause
    assert not worker.is_alive(), "the step kept asking a server that had asked for an hour's back-off"
    [error] = caught
    assert isinstance(error, ThrottledTooLongError), error
    message = str(error)
    assert "and asks to wait 60.0 minutes more (max_throttled_wait_minutes = 5)" in message, message


def test_wrong_password_stops_the_step(ews: EwsEmulator, tmp_path: Path) -> None:
    agent = _agent(ews, tmp_path, auth="basic", password="not-it")
    with pytest.raises(AuthenticationError) as caught:
        _imported(agent)
    assert "HTTP 401" in str(caught.value) and "not-it" not in str(caught.value)
    assert caught.value.status == "stopped-authentication"


def test_every_stop_names_ews_as_the_url_it_was_configured_with(ews: EwsEmulator, tmp_path: Path) -> None:
    """A stop because EWS is down named it "EWS at 127.0.0.1:PORT" while the stops for a refused account
    (401, 403), Kerberos and the per-object details said "EWS at https://127.0.0.1:PORT": two names for
    one server in one log. Every message now names it one way (the scheme, host and port of ews_url)."""
    origin = ews.info["ews_url"].split("/EWS")[0]
    with pytest.raises(AuthenticationError) as refused:
        _imported(_agent(ews, tmp_path, auth="basic", password="not-it"))
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: refused
        down_at = f"https://127.0.0.1:{closed.getsockname()[1]}"
        agent = _agent(ews, tmp_path, ews_url=f"{down_at}/EWS/Exchange.asmx", max_attempts=1)
        with pytest.raises(ServerDownError) as down:
            _imported(agent)
    assert str(refused.value).startswith(f"EWS at {origin} refused ")
    assert str(down.value).startswith(f"EWS at {down_at} did not answer: connection refused")


def test_oauth_hybrid_modern_authentication(tmp_path: Path) -> None:
    graph = GraphEmulator(EmulatorConfig(users=3)).start()
    accepting = [True]
    try:

        def validate(token: str) -> bool:
            return accepting[0] and graph.identity.validate(token)[0] is not None

        with EwsEmulator(EwsConfig(auth=("bearer",)), bearer_validator=validate) as emu:
            emu.add_mailbox(PHOTO, photo=photo(1))
            bundle = tmp_path / "cas.pem"
            bundle.write_bytes(Path(graph.info["ca_cert"]).read_bytes() + Path(emu.info["ca_cert"]).read_bytes())
            (tmp_path / "mailboxes.txt").write_text(PHOTO + "\n", encoding="utf-8")
            info = graph.info
            oauth = {
                "auth": "oauth",
                "username": None,
                "password": None,
                "ca_bundle": bundle,
                "tenant_id": info["tenant_id"],
                "client_id": info["client_id"],
                "client_secret": info["client_secret"],
                "authority": info["authority"],
                "instance_discovery": False,
                "oauth_scope": "https://graph.microsoft.com/.default",  # an audience the emulator issues for
            }
            agent = _agent(emu, tmp_path, **oauth)
            entries, _ = _imported(agent)
            assert entries[PHOTO].attributes["EXSPhoto"]
            # a token EWS does not accept (the app lacks full_access_as_app, another audience): what to grant,
            # not "check the account, its password reference" (before)
            accepting[0] = False
            with pytest.raises(AuthenticationError) as caught:
                _imported(_agent(emu, tmp_path / "refused", **oauth))
    finally:
        graph.stop()
    message = str(caught.value)
    issued = f"refused the token Entra ID issued to client {info['client_id']} for https://graph.microsoft.com/.default"
    assert issued in message
    assert "full_access_as_app" in message and "password" not in message


@pytest.mark.timeout(60)  # it used to wait forever: MSAL sets no timeout on the session it is given
def test_oauth_with_a_hung_authority_stops_naming_the_authority_within_the_timeout(
    ews: EwsEmulator, tmp_path: Path
) -> None:
    """The sign-in endpoint accepts the connection and never answers: the step stops as
    stopped-server-down naming the authority, not the Exchange server (which was never asked)."""
    (tmp_path / "mailboxes.txt").write_text(PHOTO + "\n", encoding="utf-8")
    with silent_server() as port:
        authority = f"https://127.0.0.1:{port}/contoso"
        agent = _agent(
            ews,
            tmp_path,
            auth="oauth",
            username=None,
            password=None,
            tenant_id="contoso",
            client_id="app",
            client_secret="not-the-point",
            authority=authority,
            instance_discovery=False,
            timeout_s=0.3,
        )
        with pytest.raises(AuthenticationError) as caught:
            _imported(agent)
    assert caught.value.status == "stopped-server-down"
    assert str(caught.value).startswith(f"cannot reach the authority {authority}: ")
    assert "no answer within the timeout" in str(caught.value)


def test_oauth_with_a_tenant_the_authority_does_not_know_is_named_not_a_traceback(tmp_path: Path) -> None:
    """A tenant_id with a typo: Entra ID answers the discovery of its authority with 400 (AADSTS90002,
    "Tenant ... not found"), and MSAL raises ValueError from inside the first photo request. Before,
    it escaped the worker as a traceback and the step ended as stopped-connector-exception (exit 4,
    with no word of the authority); now it is a configuration error naming the authority (exit 2),
    as the Exchange Online agent says it."""
    graph = GraphEmulator(EmulatorConfig(users=1)).start()
    try:
        with EwsEmulator(EwsConfig(auth=("bearer",)), bearer_validator=lambda _token: True) as emu:
            emu.add_mailbox(PHOTO, photo=photo(1))
            _listing(tmp_path, PHOTO)
            bundle = tmp_path / "cas.pem"
            bundle.write_bytes(Path(graph.info["ca_cert"]).read_bytes() + Path(emu.info["ca_cert"]).read_bytes())
            config = _cli_config(emu, tmp_path)
            (tmp_path / "secret").write_text(graph.info["client_secret"], encoding="utf-8")
            authority = graph.info["authority"].rsplit("/", 1)[0] + "/contoso-typo"
            oauth = (
                f'[agents.exs.settings]\nauth = "oauth"\ntenant_id = "contoso-typo"\n'
                f'client_id = "{graph.info["client_id"]}"\nclient_secret = {{ file = "secret" }}\n'
                f'authority = "{authority}"\ninstance_discovery = false\nca_bundle = "{bundle}"\n'
            )
            text = config.read_text(encoding="utf-8").replace("[agents.exs.settings]\n", oauth)
            text = "\n".join(line for line in text.splitlines() if not line.startswith(("username", "password")))
            config.write_text(text.replace(f'ca_bundle = "{emu.info["ca_cert"]}"\n', ""), encoding="utf-8")
            code, out, err = invoke("run", "full", "-c", str(config), "--json")
    finally:
        graph.stop()
    failure = json.loads(out.strip().splitlines()[-1])
    assert (code, failure["status"]) == (2, "stopped-configuration"), out + err
    said = " ".join(err.split())
    assert f"authority: cannot use authority {authority}: " in said, said
    assert "double check your tenant name" in said, said
    assert "Traceback" not in out + err and graph.info["client_secret"] not in out + err


@pytest.mark.parametrize("refusal", ["unknown-resource", "wrong-secret"])
def test_a_token_entra_id_refuses_is_named_with_its_reason_and_the_setting_to_fix(tmp_path: Path, refusal: str) -> None:
    """Entra ID refuses the token request. Before, only the OAuth error code was kept, and every
    refusal said to check the client secret and full_access_as_app: for AADSTS500011 ("the resource
    principal named https://<EWS host> was not found in the tenant", oauth_scope or the default scope
    naming a host hybrid modern authentication did not register) the advice sent the administrator
    to a secret that works. Now the message keeps Entra ID's reason (AADSTS code and first line) and
    says what to change for it."""
    graph = GraphEmulator(EmulatorConfig(users=1)).start()
    try:
        with EwsEmulator(EwsConfig(auth=("bearer",)), bearer_validator=lambda _token: True) as emu:
            _listing(tmp_path, PHOTO)
            bundle = tmp_path / "cas.pem"
            bundle.write_bytes(Path(graph.info["ca_cert"]).read_bytes() + Path(emu.info["ca_cert"]).read_bytes())
            info = graph.info
            secret = info["client_secret"] if refusal == "unknown-resource" else "not-the-secret"
            agent = _agent(
                emu,
                tmp_path,
                auth="oauth",
                username=None,
                password=None,
                ca_bundle=bundle,
                tenant_id=info["tenant_id"],
                client_id=info["client_id"],
                client_secret=secret,
                authority=info["authority"],
                instance_discovery=False,
                oauth_scope=None if refusal == "unknown-resource" else "https://graph.microsoft.com/.default",
            )
            with pytest.raises(AuthenticationError) as caught:
                _imported(agent)
            origin = emu.info["ews_url"].split("/EWS")[0]
    finally:
        graph.stop()
    said = str(caught.value)
    assert said.startswith(f"Entra ID refused a token for EWS at {origin} (client {info['client_id']}"), said
    assert "not-the-secret" not in said and info["client_secret"] not in said
    if refusal == "unknown-resource":
        assert f"invalid_resource (AADSTS500011: The resource principal named {origin} was not found" in said, said
        assert "oauth_scope" in said and "client secret" not in said, said
    else:
        assert "invalid_client (AADSTS7000215: Invalid client secret provided" in said, said
        assert "client_secret" in said, said


def test_delta_without_state_asks_for_a_full_import(ews: EwsEmulator, tmp_path: Path) -> None:
    with pytest.raises(StopRunError, match="run a full import"):
        _imported(_agent(ews, tmp_path), watermark="")
    # a watermark of the version that kept the state in a file of the agent's own: named as such
    with pytest.raises(StopRunError, match=r"ews-photo-state\.sqlite3.*into the store.*full import"):
        _imported(_agent(ews, tmp_path), watermark='{"v": 1, "delta": "", "gen": 1, "store": "other"}')


def test_settings_are_checked(ews: EwsEmulator, tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="below ews_max_concurrency"):
        _settings(ews, tmp_path, concurrency=27)
    with pytest.raises(ValidationError, match="https://"):
        _settings(ews, tmp_path, ews_url="http://mail.contoso.example/EWS/Exchange.asmx")
    with pytest.raises(ValidationError, match="needs username and password"):
        _settings(ews, tmp_path, password=None)
    with pytest.raises(ValidationError, match="mailboxes or mailbox_file"):
        _settings(ews, tmp_path, mailbox_file=None)
    assert _settings(ews, tmp_path, ews_url="https://mail.contoso.example/").ews_url.endswith("/EWS/Exchange.asmx")
    assert _settings(ews, tmp_path, photo_size="hr96x96").photo_size == "HR96x96"
    # QA: "Input should be 'ntlm', 'negotiate', 'basic' or 'oauth'" did not say which one Kerberos is
    with pytest.raises(ValidationError, match="Kerberos is auth = 'negotiate'"):
        _settings(ews, tmp_path, auth="kerberos")
    assert _settings(ews, tmp_path, auth="NTLM").auth == "ntlm"
    with pytest.raises(ValidationError, match="apply to auth 'negotiate' only"):
        _settings(ews, tmp_path, kerberos_host="mail.contoso.example")
    negotiate = _settings(ews, tmp_path, auth="negotiate", username=None, password=None)
    assert spn(negotiate) == "HTTP/127.0.0.1"  # the URL's host, unless kerberos_host names the SPN's
    assert spn(negotiate.model_copy(update={"kerberos_host": "mail.contoso.example"})) == "HTTP/mail.contoso.example"


def test_a_bad_mailbox_list_names_the_file_and_line(ews: EwsEmulator, tmp_path: Path) -> None:
    (tmp_path / "mailboxes.txt").write_text(f"{PHOTO}\nnot an address\n", encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"mailboxes.txt, line 2"):
        _imported(_agent(ews, tmp_path))
    agent = _agent(ews, tmp_path, mailbox_file=tmp_path / "missing.txt")
    with pytest.raises(ConfigurationError, match=r"missing\.txt"):
        _imported(agent)


def test_a_powershell_mailbox_list_in_utf16_is_read_and_a_latin1_one_is_named(ews: EwsEmulator, tmp_path: Path) -> None:
    # `Get-Mailbox | Select -Expand PrimarySmtpAddress > mailboxes.txt` in Windows PowerShell 5.1:
    # UTF-16 LE with a byte-order mark and CRLF line ends
    listing = tmp_path / "mailboxes.txt"
    listing.write_bytes(codecs.BOM_UTF16_LE + f"{PHOTO}\r\n{PLAIN}\r\n{THUMB}\r\n".encode("utf-16-le"))
    entries, _ = _imported(_agent(ews, tmp_path))
    assert set(entries) == {PHOTO, PLAIN, THUMB}
    listing.write_bytes(f"{PHOTO}\r\n# Jos\xe9's mailbox\r\n".encode("cp1252"))
    with pytest.raises(ConfigurationError) as info:
        _imported(_agent(ews, tmp_path / "b", mailbox_file=listing))
    assert f"cannot read the mailbox list {listing}: line 2 (byte " in str(info.value)
    assert "UTF-16 with a BOM" in str(info.value)


@pytest.mark.parametrize("server", ["hung", "refused", "untrusted"])
def test_an_ews_that_does_not_answer_stops_the_step_and_fails_no_mailbox(
    ews: EwsEmulator, tmp_path: Path, server: str
) -> None:
    """A wedged IIS, a stopped server or an untrusted certificate is no fault of 3 mailboxes (or 5,000):
    the step stops as server-down, naming the host and the kind, instead of giving each a per-object
    error that its recheck window would then defer."""
    fast = {"timeout_s": 0.3, "max_attempts": 2, "backoff_initial_s": 0.01}
    with silent_server() as hung, socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: refused
        port = {"hung": hung, "refused": closed.getsockname()[1], "untrusted": None}[server]
        if server == "untrusted":
            other = tmp_path / "other-ca.pem"
            trustme.CA().cert_pem.write_to_path(str(other))
            agent = _agent(ews, tmp_path, ca_bundle=str(other), **fast)
            where = ews.info["ews_url"].split("/EWS")[0]
        else:
            agent = _agent(ews, tmp_path, ews_url=f"https://127.0.0.1:{port}/EWS/Exchange.asmx", **fast)
            where = f"https://127.0.0.1:{port}"
        with pytest.raises(ServerDownError) as caught:
            _imported(agent)
    kind = {
        "hung": "connected, but no answer within the timeout",
        "refused": "connection refused (nothing listens there)",
        "untrusted": (
            f"TLS certificate not trusted ({tmp_path / 'other-ca.pem'}, which agents.exs.settings.ca_bundle names, "
            "does not hold the CA that issued it: add that CA to the file, or set agents.exs.settings.ca_bundle to a "
            "PEM file that holds it)"
        ),
    }[server]
    attempts = 1 if server == "hung" else 2  # a timeout with nothing answered is not asked again
    assert str(caught.value).startswith(f"EWS at {where} did not answer: {kind} ({attempts} attempts over ")
    assert "the mailboxes not fetched yet keep what they had" in str(caught.value)


def test_doctor_names_a_hung_ews_after_one_timeout(ews: EwsEmulator, tmp_path: Path) -> None:
    """Found (QA): ``mvsync doctor`` against an EWS that takes connections and never answers waited for
    five timeouts (the check's two requests, then a photo request's three attempts): five minutes with
    the default ``timeout_s`` of 60 s. The first request's silence is now its verdict."""
    with silent_server() as hung:
        agent = _agent(ews, tmp_path, ews_url=f"https://127.0.0.1:{hung}/EWS/Exchange.asmx", timeout_s=0.5)
        with agent:
            result = agent.check()
            sent = agent.metrics["requests"]
    assert not result.ok and sent == 1, (sent, result)
    assert result.detail == (
        f"EWS at https://127.0.0.1:{hung} did not answer: connected, but no answer within the timeout "
        "(timeout_s = 0.5 s); check the server (IIS and the EWS application pool), the network and the certificate; "
        "if EWS is only slow to answer, raise timeout_s"
    )


#: A hung EWS: every request, once authenticated, waits a minute before its answer (a wedged application
#: pool; the client gives up at its timeout_s long before).
_HUNG = {"latency": 1.0, "latency_ms": 60_000}


@pytest.mark.parametrize(("check", "concurrency"), [("made", 1), ("left-for-later", 1), ("left-for-later", 4)])
def test_a_hung_ews_stops_the_import_after_its_first_silent_requests(
    ews: EwsEmulator, tmp_path: Path, check: str, concurrency: int
) -> None:
    """Found (QA): an import against an EWS that takes connections and never answers waited for the
    check's two requests and a mailbox's three attempts, each ``timeout_s`` (8 minutes and more at the
    default 60 s), before it stopped. Now a timeout with nothing answered since is followed by one
    request that EWS answers at once (the check's empty SOAP request; it is that request when the check
    is made): silent too, the step stops and sends nothing more. Counted in requests, not seconds."""
    where = ews.info["ews_url"].split("/EWS")[0]
    settings = {"concurrency": concurrency, "timeout_s": 0.3, "max_attempts": 3}
    _many_mailboxes(ews, tmp_path, 12)
    if check == "left-for-later":  # a run within endpoint_check_hours of a check that passed
        _imported(_agent(ews, tmp_path, **settings))
    ews.set_faults(_HUNG)
    agent = _agent(ews, tmp_path, **settings)
    with pytest.raises(ServerDownError) as caught:
        _imported(agent)
    sent = agent.metrics["requests"]
    # the check's request alone; else a photo request and the check's, and what the other threads had under way
    assert sent == 1 if check == "made" else 2 <= sent <= concurrency + 1, sent
    assert str(caught.value).startswith(
        f"EWS at {where} did not answer: connected, but no answer within the timeout (1 attempts over "
    )
    assert str(caught.value).endswith(
        "and no request had an answer within timeout_s = 0.3 s or since, not even an empty SOAP request, which EWS "
        "answers at once); the mailboxes not fetched yet keep what they had; check the server (IIS and the EWS "
        "application pool), the network and the certificate; if EWS is only slow to answer, raise timeout_s"
    )


def test_one_slow_mailbox_of_a_working_ews_is_its_own_error_not_a_stop(ews: EwsEmulator, tmp_path: Path) -> None:
    """The other side of the rule above: a mailbox whose every request times out, asked alone (one at a
    time, and the last of the list), was taken for EWS down (``stopped-server-down``) after its attempts,
    as nothing else had an answer meanwhile. The empty SOAP request is answered: the mailbox is slow, not
    EWS; it is that mailbox's error, and the step goes on."""
    slow = "slow@contoso.example"
    ews.add_mailbox(slow, photo=photo(2))
    _listing(tmp_path, PHOTO, slow)
    ews.set_faults({**_HUNG, "path_pattern": "email=slow"})  # its photo requests only
    entries, _ = _imported(_agent(ews, tmp_path, concurrency=1, timeout_s=0.3, max_attempts=2))
    assert entries[PHOTO].attributes.get("EXSPhoto") and entries[PHOTO].error is None
    error = entries[slow].error
    assert error is not None and error.name == "ews-error", entries[slow]
    assert (
        error.detail.startswith(f"GetUserPhoto for {slow}: EWS at ")
        and (
            "connected, but no answer within the timeout (timeout_s = 0.3 s), while EWS answered other requests: this "
            "mailbox is slow to answer; any photo imported before is kept"
        )
        in error.detail
    ), error.detail


def test_without_ca_bundle_ews_is_verified_with_the_systems_trust_store(
    ews: EwsEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An internal CA in this machine's trust store (on Windows, where Group Policy deploys it) is
    enough: requests verified against certifi's public CAs, so EWS needed ca_bundle. A store
    without it stops the step naming the host, the store and both fixes, with the agent's key."""
    store = system_store(tmp_path, monkeypatch)
    store.write_bytes(Path(ews.info["ca_cert"]).read_bytes())
    photos, _ = _imported(_agent(ews, tmp_path / "trusted", ca_bundle=None))
    assert photos[PHOTO].attributes.get("EXSPhoto") and photos[PHOTO].error is None, photos[PHOTO]
    monkeypatch.setenv("SSL_CERT_FILE", str(other_ca(tmp_path)))
    fast = {"timeout_s": 5, "max_attempts": 1}
    with pytest.raises(ServerDownError) as caught:
        _imported(_agent(ews, tmp_path / "untrusted", ca_bundle=None, **fast))
    where = ews.info["ews_url"].split("/EWS")[0]
    assert str(caught.value).startswith(
        f"EWS at {where} did not answer: TLS certificate not trusted by this machine's trust store (add the CA"
    ), str(caught.value)
    assert "or set agents.exs.settings.ca_bundle to its PEM file)" in str(caught.value)


def test_a_certificate_requests_ca_bundle_does_not_trust_is_named_with_the_file_and_the_fixes(
    ews: EwsEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by QA: with REQUESTS_CA_BUNDLE set and no ca_bundle, an untrusted certificate said "the CA
    file in REQUESTS_CA_BUNDLE does not hold the CA that issued it": neither the file, nor the agent's
    ca_bundle (which wins over the variable), nor unsetting it. The stop and doctor's check now say all
    three; doctor no longer adds the timeout, nor sends the operator to IIS, for a certificate's fault."""
    system_store(tmp_path, monkeypatch).write_bytes(Path(ews.info["ca_cert"]).read_bytes())  # it would trust EWS
    other = other_ca(tmp_path)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(other))
    where = ews.info["ews_url"].split("/EWS")[0]
    untrusted = (
        f"EWS at {where} did not answer: TLS certificate not trusted ({other}, which REQUESTS_CA_BUNDLE names in "
        "mvsync's environment and which verifies every HTTPS agent without a ca_bundle, does not hold the CA that "
        f"issued it: set agents.exs.settings.ca_bundle to the PEM file of that CA, add the CA to {other}, or unset "
        "REQUESTS_CA_BUNDLE to verify with this machine's trust store)"
    )
    with pytest.raises(ServerDownError) as caught:
        _imported(_agent(ews, tmp_path, ca_bundle=None, timeout_s=5, max_attempts=1))
    assert str(caught.value).startswith(f"{untrusted} (1 attempts over "), str(caught.value)
    with _agent(ews, tmp_path / "doctor", ca_bundle=None, timeout_s=5) as agent:
        result = agent.check()  # mvsync doctor's agents.exs.reachable
    assert (result.ok, result.detail) == (False, untrusted)


def _many_mailboxes(ews: EwsEmulator, tmp_path: Path, count: int) -> list[str]:
    emails = [f"m{n}@contoso.example" for n in range(count)]
    for n, email in enumerate(emails):
        ews.add_mailbox(email, photo=photo(10 + n, size=120))
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "mailboxes.txt").write_text("".join(f"{email}\n" for email in emails), encoding="utf-8")
    return emails


def test_an_ews_that_answers_everything_with_5xx_stops_the_step(ews: EwsEmulator, tmp_path: Path) -> None:
    """A load balancer whose Exchange servers are all down answers 504 to everything: the step stops
    as server-down (a second mailbox is asked and fails too) instead of failing each mailbox in turn
    (200 mailboxes: 200 `ews-error`s in 29 s before)."""
    _many_mailboxes(ews, tmp_path, 20)
    ews.set_faults({"504": 1.0, "retry_after": None})
    with pytest.raises(ServerDownError) as caught:
        _imported(_agent(ews, tmp_path, concurrency=4))
    where = ews.info["ews_url"].split("/EWS")[0]
    assert str(caught.value).startswith(f"EWS at {where} answered with HTTP 504 (3 attempts over ")
    assert "and another mailbox failed too); the mailboxes not fetched yet keep what they had" in str(caught.value)


def test_a_few_broken_mailboxes_are_their_own_errors_not_an_outage(ews: EwsEmulator, tmp_path: Path) -> None:
    """Five mailboxes answer 500 every time, the rest work: five `ews-error`s, and the step goes on
    (a mailbox that had worked is asked again, and answers)."""
    emails = _many_mailboxes(ews, tmp_path, 20)
    ews.set_faults({"504": 1.0, "retry_after": None, "path_pattern": "email=m1[0-4]%40"})
    entries, _ = _imported(_agent(ews, tmp_path, concurrency=4))
    failed = {anchor: entry.error.name for anchor, entry in entries.items() if entry.error is not None}
    assert failed == {email: "ews-error" for email in emails[10:15]}
    assert len(entries) == 20


def test_a_mailbox_whose_connections_are_reset_is_its_own_error_not_an_outage(ews: EwsEmulator, tmp_path: Path) -> None:
    """Found reading the EWS client beside the Graph one: a request whose every attempt met a reset
    connection was judged by silence alone. One mailbox whose requests are reset (a backend, or a
    firewall rule, that breaks off one mailbox's answer) with nothing else in flight, here one worker,
    stopped the step as server-down, and every mailbox after it waited for the next run. A reset is
    as often about the one request: a mailbox that had worked is asked again (as the Graph client
    does, ``connector.net``), and as it answers, the reset mailbox is its own ews-error."""
    emails = _many_mailboxes(ews, tmp_path, 6)
    ews.set_faults({"reset": 1.0, "path_pattern": "email=m3%40"})
    entries, _ = _imported(_agent(ews, tmp_path, concurrency=1, max_attempts=2))
    failed = {anchor: entry.error.name for anchor, entry in entries.items() if entry.error is not None}
    assert failed == {emails[3]: "ews-error"} and len(entries) == 6
    error = entries[emails[3]].error
    assert error is not None and error.detail.endswith("connection reset by the server"), error.detail


def test_an_ews_that_resets_every_connection_is_still_an_outage(ews: EwsEmulator, tmp_path: Path) -> None:
    """The other side of the recheck: when EWS resets every request (a mailbox that had worked fails
    too), the step stops as server-down, naming the recheck as the evidence."""
    first, *_, last = _many_mailboxes(ews, tmp_path, 6)
    agent = _agent(ews, tmp_path, concurrency=1, max_attempts=2)
    with pytest.raises(ServerDownError) as caught, agent:
        assert agent.client.fetch(first, None).kind == "photo"  # what the recheck asks again
        ews.set_faults({"reset": 1.0})
        agent.client.fetch(last, None)
    where = ews.info["ews_url"].split("/EWS")[0]
    assert str(caught.value).startswith(f"EWS at {where} did not answer: connection reset by the server (2 attempts")
    assert "a request that had worked before failed too" in str(caught.value)


def test_an_ews_answering_only_503_stops_the_step_as_throttled_and_names_the_application_pool(
    ews: EwsEmulator, tmp_path: Path
) -> None:
    """IIS answers 503 to everything when the EWS application pool is stopped, and 503 is also IIS's
    "queue full": push-back, waited out. Before, each mailbox waited out up to 30 pauses of up to
    120 s, so the step ran for hours; now nothing but push-back for max_throttled_wait_minutes stops it."""
    _many_mailboxes(ews, tmp_path, 20)
    ews.set_faults({"503": 1.0, "retry_after": None})
    with pytest.raises(StopRunError) as caught:
        _imported(_agent(ews, tmp_path, concurrency=4, max_throttled_wait_minutes=0.02))
    assert caught.value.status == "stopped-throttled"
    message = str(caught.value)
    assert message.startswith(f"EWS at {ews.info['ews_url'].split('/EWS')[0]} has throttled every request for ")
    assert "(max_throttled_wait_minutes = 0.02)" in message and "MSExchangeServicesAppPool" in message


def test_negotiate_without_the_kerberos_extra_says_what_to_install(ews: EwsEmulator, tmp_path: Path) -> None:
    pytest.importorskip("requests_ntlm")
    try:
        import requests_gssapi  # noqa: F401
    except ImportError:
        agent = _agent(ews, tmp_path, auth="negotiate", username=None, password=None)
        with pytest.raises(ConfigurationError, match=r"mvsync\[kerberos\]"):
            _imported(agent)
    else:
        pytest.skip("requests-gssapi is installed here")


def test_entries_are_whole_objects_of_the_schema(ews: EwsEmulator, tmp_path: Path) -> None:
    agent = _agent(ews, tmp_path)
    entries, _ = _imported(agent)
    names = {a.name for a in agent.get_schema().object_class(OBJECT_CLASS).attributes}
    for entry in entries.values():
        assert isinstance(entry, CSEntryChange) and entry.object_class == OBJECT_CLASS
        assert set(entry.attributes) <= names


@pytest.mark.parametrize("form", ["der", "not-a-certificate"])
def test_a_ca_bundle_that_holds_no_pem_certificate_is_a_configuration_error_naming_it(
    ews: EwsEmulator, tmp_path: Path, form: str
) -> None:
    """The CA exported on Windows as "DER encoded binary X.509 (.CER)", or a file that holds no
    certificate at all: Python's TLS reads PEM only. Before, every request failed its handshake,
    and the step stopped as stopped-server-down: "EWS at ... did not answer: TLS certificate not
    trusted (set ca_bundle to the CA that issued it)", while ca_bundle was set, to the right CA.
    Now it is a configuration error naming ca_bundle, the file and how to convert it."""
    pem = Path(ews.info["ca_cert"]).read_bytes()
    bundle = tmp_path / "root.cer"
    tmp_path.mkdir(parents=True, exist_ok=True)
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    bundle.write_bytes(der if form == "der" else b"mail.contoso.example root CA, see the wiki\n")
    with pytest.raises(ConfigurationError) as caught:
        _imported(_agent(ews, tmp_path, ca_bundle=bundle))
    said = str(caught.value)
    assert caught.value.key == "agents.exs.settings.ca_bundle", said  # (the agent's setting, as a run's checks say)
    assert said.startswith(f"agents.exs.settings.ca_bundle: {bundle} holds no certificate in PEM form"), said
    if form == "der":
        assert "DER" in said and "openssl x509 -inform der" in said, said


def _handshaking(context: ssl.SSLContext) -> Callable[[socket.socket], None]:
    """What a TLS server with ``context`` does with a connection: the handshake (and nothing after)."""

    def handshake(conn: socket.socket) -> None:
        with contextlib.suppress(OSError):  # the client refuses: the handshake fails here too
            context.wrap_socket(conn, server_side=True).recv(1)

    return handshake


def _serving(cert: trustme.LeafCert) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    return context


def _stop_said(ews: EwsEmulator, tmp_path: Path, handle: Callable[[socket.socket], None], bundle: Path) -> str:
    """What the step's stop said, after one attempt, with ews_url on a loopback port whose connections
    ``handle`` serves, its host named as the message names it (``EWS at WHERE``)."""
    with handing_to(handle) as port:
        where = f"https://127.0.0.1:{port}"
        agent = _agent(
            ews, tmp_path, ews_url=f"{where}/EWS/Exchange.asmx", ca_bundle=bundle, max_attempts=1, timeout_s=5
        )
        with pytest.raises(ServerDownError) as caught:
            _imported(agent)
    return str(caught.value).replace(where, "WHERE")


def _ca_bundle(tmp_path: Path) -> tuple[trustme.CA, Path]:
    ca, bundle = trustme.CA(), tmp_path / "ca.pem"
    tmp_path.mkdir(parents=True, exist_ok=True)
    ca.cert_pem.write_to_path(str(bundle))
    return ca, bundle


_PAST = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)


@pytest.mark.parametrize(
    ("certificate", "kind"),
    [
        (
            "other-name",
            "TLS certificate not issued for 127.0.0.1 (use a name it was issued for in the URL, or have the "
            "certificate reissued with this one)",
        ),
        ("expired", "TLS certificate expired (renew it on the server)"),
    ],
    ids=["other-name", "expired"],
)
def test_a_certificate_a_ca_bundle_cannot_cure_is_named_for_what_is_wrong(
    ews: EwsEmulator, tmp_path: Path, certificate: str, kind: str
) -> None:
    """EWS's certificate is issued by the CA in ca_bundle but for another name (ews_url by address, or a
    host name the certificate does not hold), or it has expired. Before, both stopped the step with
    "TLS certificate not trusted (set ca_bundle to the CA that issued it)": ca_bundle already named that
    CA, and setting it again changes nothing. Now each says what is wrong and where the fix lies."""
    ca, bundle = _ca_bundle(tmp_path)
    if certificate == "other-name":
        cert = ca.issue_cert("mail.contoso.example")
    else:
        cert = ca.issue_cert("127.0.0.1", not_before=_PAST, not_after=_PAST + datetime.timedelta(days=365))
    said = _stop_said(ews, tmp_path, _handshaking(_serving(cert)), bundle)
    assert said.startswith(f"EWS at WHERE did not answer: {kind} (1 attempts over "), said
    assert "ca_bundle" not in said, said


def _old_tls_only(cert: trustme.LeafCert) -> ssl.SSLContext:
    """A server context offering TLS 1.0 and 1.1 only (an Exchange 2013/2016 whose TLS 1.2 was never
    enabled), which this host's TLS refuses."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    with warnings.catch_warnings():  # the versions are deprecated: that is the point
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version, context.maximum_version = ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1
    cert.configure_cert(context)
    return context


def _plain_http(conn: socket.socket) -> None:
    """What a port without TLS answers a TLS ClientHello with: an HTTP 400."""
    conn.recv(4096)
    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


@pytest.mark.parametrize(
    ("server", "why"),
    [
        (
            "old-tls",
            "no TLS version both sides accept (this host needs TLS 1.2 or later; enable TLS 1.2 on the server)",
        ),
        ("plain-http", "the port answers without TLS (plain HTTP?); check the URL's port"),
    ],
    ids=["old-tls", "plain-http"],
)
def test_a_tls_handshake_that_fails_says_why_and_what_to_change(
    ews: EwsEmulator, tmp_path: Path, server: str, why: str
) -> None:
    """EWS offering TLS 1.0/1.1 only, or ews_url's port answering in plain HTTP (https:// to port 80,
    or to a load balancer's HTTP listener). Before, both stopped the step with "EWS at ... did not
    answer: TLS handshake failed", which says neither what is wrong nor where to fix it."""
    ca, bundle = _ca_bundle(tmp_path)
    old = _handshaking(_old_tls_only(ca.issue_cert("127.0.0.1", key_type=trustme.KeyType.RSA)))
    said = _stop_said(ews, tmp_path, old if server == "old-tls" else _plain_http, bundle)
    assert said.startswith(f"EWS at WHERE did not answer: TLS handshake failed: {why} (1 attempts over "), said


def _answer(status: int, body: bytes = b"", **headers: str) -> requests.Response:
    resp = requests.Response()
    resp.status_code, resp._content = status, body
    resp.headers.update(headers)
    return resp


def test_throttle_signals_from_ews_answers() -> None:
    busy = soap_fault("ErrorServerBusy", "busy", 2500)
    assert throttle_signal(_answer(500, busy, **{"Content-Type": "text/xml"})) == (True, 2.5)
    too_many = soap_fault("ErrorExceededConnectionCount", "too many")
    assert throttle_signal(_answer(500, too_many)) == (True, None)
    assert throttle_signal(_answer(503, b"", **{"Retry-After": "3"})) == (True, 3.0)
    assert throttle_signal(_answer(500, b"")) == (False, None)  # an unknown address: a failure, not push-back
    assert throttle_signal(_answer(200, b"\xff\xd8", **{"Content-Type": "image/jpeg"})) == (False, None)


def test_a_debug_log_holds_no_ntlm_message(ews: EwsEmulator, tmp_path: Path) -> None:
    """Found in a bad-day pass: `mvsync --log-level DEBUG run` logged each NTLM handshake whole (pyspnego's
    "NTLM step input/output", 68 records in a run of 23 mailboxes): the server's challenge with the
    account's response, which can be cracked offline for its password (NetNTLMv2)."""
    out = io.StringIO()
    handler = setup_logging("DEBUG", stream=out)
    try:
        _imported(_agent(ews, tmp_path))
    finally:
        logging.getLogger().removeHandler(handler)
    assert "DEBUG urllib3" in out.getvalue()  # the library's own DEBUG records are there
    assert "TlRMTVNTUA" not in out.getvalue() and ews.info["password"] not in out.getvalue()


def test_the_password_is_accepted_only_as_a_reference(ews: EwsEmulator, tmp_path: Path) -> None:
    info = ews.info
    config = tmp_path / "mvsync.toml"
    base = (
        'data_dir = "data"\n[store]\nurl = "sqlite:///x.db"\n[metaverse]\nschema = "person"\n'
        '[agents.exs]\ntype = "exchange-server-photos"\n[agents.exs.settings]\n'
        f'ews_url = "{info["ews_url"]}"\nusername = "svc"\nmailboxes = ["{PHOTO}"]\n'
    )
    config.write_text(base + 'password = "literal-secret"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        open_connector(load_config(config), "exs")
    assert "password" in str(caught.value) and "literal-secret" not in str(caught.value)
    (tmp_path / "pw").write_text(info["password"], encoding="utf-8")
    config.write_text(base + f'password = {{ file = "{tmp_path / "pw"}" }}\n', encoding="utf-8")
    agent = open_connector(load_config(config), "exs")
    assert isinstance(agent, ExchangeServerPhotosConnector)
    assert agent.settings.password is not None and agent.settings.password.get_secret_value() == info["password"]


def test_check_for_doctor(ews: EwsEmulator, tmp_path: Path) -> None:
    with _agent(ews, tmp_path) as agent:
        result = agent.check()
    assert result.ok and PHOTO in result.detail
    with _agent(ews, tmp_path / "bad", auth="basic", password="nope") as agent:
        result = agent.check()
    assert not result.ok and "HTTP 401" in result.detail and "nope" not in result.detail


def test_the_kerberos_library_logs_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """requests-gssapi logs its failures with ``log.exception``; a user must see one line, not a traceback."""
    gssapi_module = pytest.importorskip("requests_gssapi.gssapi_")
    from connector.agents.exchange_server._auth import _spnego_auth

    _spnego_auth()
    try:
        raise RuntimeError("GSSAPI step failed")
    except RuntimeError:
        gssapi_module.log.exception("generate_request_header(): initiating context failed:")
    record = next(r for r in caplog.records if r.name == "requests_gssapi.gssapi_")
    assert record.exc_info is None and "Traceback" not in caplog.text


def test_a_remembered_limit_starts_the_run_and_is_no_mailbox(ews: EwsEmulator, tmp_path: Path) -> None:
    """The limit an earlier run measured is recalled; a delta does not take its state key for a mailbox."""
    forget_shared_limiters()  # a new process: nothing learned in it yet
    agent = _agent(ews, tmp_path, concurrency=8)
    state = _STATES.setdefault(agent.context.data_dir, {})
    state[LIMIT_KEY] = LimitMemory(agent.limiter.name, 5, time.time() - 60).dumps()
    _entries, watermark = _imported(agent)
    assert _COUNTS[agent]["limit_recalled"] == 1 and agent.limiter.stats.peak_limit == 5
    assert state[LIMIT_KEY]["wall"] == 5  # a full import forgets what it does not write: kept as it was
    forget_shared_limiters()
    again = _agent(ews, tmp_path, concurrency=8, photo_recheck_hours=0)
    entries, _ = _imported(again, watermark)
    assert LIMIT_KEY not in entries and all(e.modification != ObjectModificationType.DELETE for e in entries.values())
    assert _COUNTS[again]["limit_recalled"] == 1 and LIMIT_KEY in state


def _listing(tmp_path: Path, *emails: str) -> None:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "mailboxes.txt").write_text("".join(f"{email}\n" for email in emails), encoding="utf-8")


def test_a_soap_fault_about_one_mailbox_is_its_own_error_naming_what_ews_said(ews: EwsEmulator, tmp_path: Path) -> None:
    """EWS's SOAP fault for one mailbox (moved to Exchange Online, refused to the account) is that
    mailbox's error, named as EWS named it, asked once; the others are imported. Before, each was
    asked three times and reported as "HTTP 500 ... is it an on-premises mailbox?", the code lost."""
    gone, denied, odd = "gone@contoso.example", "denied@contoso.example", "odd@contoso.example"
    ews.set_answer(gone, 500, soap_fault("ErrorNonExistentMailbox", "No mailbox with such guid."))
    denied_text = "The account does not have permission to impersonate the requested user."
    ews.set_answer(denied, 500, soap_fault("ErrorImpersonateUserDenied", denied_text))
    ews.set_answer(odd, 500, soap_fault("ErrorInvalidSmtpAddress", "The SMTP address has no mailbox associated."))
    _listing(tmp_path, PHOTO, gone, denied, odd)
    agent = _agent(ews, tmp_path)
    entries, _ = _imported(agent)
    errors = {anchor: entry.error for anchor, entry in entries.items() if entry.error is not None}
    assert {anchor: error.name for anchor, error in errors.items()} == {
        gone: "mailbox-not-found",
        denied: "permission-issue",
        odd: "ews-error",
    }
    assert "ErrorNonExistentMailbox: No mailbox with such guid." in errors[gone].detail
    assert "moved to Exchange Online or was removed" in errors[gone].detail and gone in errors[gone].detail
    assert f"ErrorImpersonateUserDenied: {denied_text}" in errors[denied].detail
    assert ews.info["username"] in errors[denied].detail and denied in errors[denied].detail
    assert errors[odd].detail == f"GetUserPhoto for {odd}: EWS answered ErrorInvalidSmtpAddress: " + (
        "The SMTP address has no mailbox associated."
    )
    assert entries[PHOTO].attributes["EXSPhoto"] and agent.metrics["retries"] == 0


def test_an_http_200_whose_soap_says_error_is_what_ews_said_not_a_picture(ews: EwsEmulator, tmp_path: Path) -> None:
    """EWS fails an operation inside an HTTP 200 too (``ResponseClass="Error"``; the throttling page lists
    a 200 with ErrorInternalServerError). Before, each such answer was taken for a photo, found to be no
    picture, and reported as "not-an-image ... a proxy or load balancer in front of EWS answered", asked
    once: the mailbox gone to Exchange Online and the server's own hiccup both lost what EWS said."""
    gone, hiccup = "gone@contoso.example", "hiccup@contoso.example"
    ews.set_answer(gone, 200, error_response("ErrorNonExistentMailbox", "No mailbox with such guid."))
    ews.set_answer(hiccup, 200, error_response("ErrorInternalServerError", "An internal server error occurred."))
    _listing(tmp_path, PHOTO, gone, hiccup)
    agent = _agent(ews, tmp_path, max_attempts=2)
    entries, _ = _imported(agent)
    errors = {anchor: entry.error for anchor, entry in entries.items() if entry.error is not None}
    assert {anchor: error.name for anchor, error in errors.items()} == {gone: "mailbox-not-found", hiccup: "ews-error"}
    assert "ErrorNonExistentMailbox: No mailbox with such guid." in errors[gone].detail and gone in errors[gone].detail
    assert errors[hiccup].detail.startswith(f"GetUserPhoto for {hiccup}: HTTP 200 (ErrorInternalServerError: ")
    assert agent.metrics["retries"] == 1  # the server's own fault is asked again; the mailbox's is not
    assert entries[PHOTO].attributes["EXSPhoto"]


@pytest.mark.parametrize("status", [500, 200], ids=["soap-fault", "response-class-error"])
def test_a_mailbox_being_moved_is_its_own_retryable_error_that_keeps_its_photo(
    ews: EwsEmulator, tmp_path: Path, status: int
) -> None:
    """EWS answers ErrorMailboxMoveInProgress while a mailbox moves (to another database, or to Exchange
    Online): "the mailbox is being moved to a different mailbox store or server" (EWS ResponseCode
    reference). Before, it was a generic ews-error ("GetUserPhoto for ...: EWS answered ..."), which
    said neither that the move is passing nor that the photo stays. Now it is an error of its own,
    asked once, that keeps the photo imported before and is asked again after the error window."""
    moving = "ErrorMailboxMoveInProgress", "Mailbox move in progress. Try again later."
    _imported(_agent(ews, tmp_path))
    ews.set_answer(PHOTO, status, soap_fault(*moving) if status == 500 else error_response(*moving))
    agent = _agent(ews, tmp_path, photo_recheck_hours=0)
    entries, watermark = _imported(agent, json.dumps({"v": 2}))
    error = entries[PHOTO].error
    assert error is not None and error.name == "mailbox-move-in-progress", error
    assert "EXSPhoto" not in entries[PHOTO].attributes  # the photo stays as it was
    assert f"the mailbox {PHOTO} is being moved (ErrorMailboxMoveInProgress: Mailbox move in progress" in error.detail
    assert "the photo imported before is kept" in error.detail and "photo_error_recheck_hours" in error.detail
    assert agent.metrics["retries"] == 0  # a move takes hours: not asked again within the run
    again, _ = _imported(_agent(ews, tmp_path, photo_recheck_hours=0), watermark)
    assert PHOTO not in again  # inside photo_error_recheck_hours
    ews.set_answer(PHOTO, None)  # the move is done
    done, _ = _imported(_agent(ews, tmp_path, photo_recheck_hours=0, photo_error_recheck_hours=0), watermark)
    assert done[PHOTO].error is None


def test_an_ews_closed_to_the_account_with_403_stops_the_step_once_naming_host_and_account(
    ews: EwsEmulator, tmp_path: Path
) -> None:
    """A bare HTTP 403 (no SOAP fault) is EWS or IIS refusing the caller, not one mailbox: EWS disabled
    for the account (Set-CASMailbox -EwsEnabled $false), an EWS application access policy, IIS's IP
    restrictions. Before, each of 20 mailboxes became its own "permission-issue" (5,000 on a real site)
    and the step "completed with errors"; now it stops once as an authentication stop naming the host
    and the account (never the password). One mailbox's 403 while others answer stays its own error."""
    emails = _many_mailboxes(ews, tmp_path, 20)
    forbidden = b"<html><body><h2>403 - Forbidden: Access is denied.</h2></body></html>"
    ews.set_answer(emails[3], 403, forbidden, content_type="text/html")
    entries, _ = _imported(_agent(ews, tmp_path, concurrency=4))
    assert {anchor: entry.error.name for anchor, entry in entries.items() if entry.error} == {
        emails[3]: "permission-issue"
    }
    for email in emails:
        ews.set_answer(email, 403, forbidden, content_type="text/html")
    agent = _agent(ews, tmp_path, concurrency=4)
    with pytest.raises(AuthenticationError) as caught:
        _imported(agent)
    where, account = ews.info["ews_url"].split("/")[2], ews.info["username"]
    assert str(caught.value).startswith(f"EWS at https://{where} refused {account} (HTTP 403 Forbidden for ")
    assert "EwsEnabled" in str(caught.value) and ews.info["password"] not in str(caught.value)
    assert caught.value.status == "stopped-authentication"


def test_an_ews_that_answers_400_to_every_request_stops_the_step_once_saying_what_it_means(tmp_path: Path) -> None:
    """Found (QA): IIS answers 400 "Request Too Long" to every request whose headers are over HTTP.sys's
    MaxFieldLength (the Kerberos ticket of an account in many groups), and the step gave each mailbox its
    own ews-error ("HTTP 400"), N of them. The very same status for the first REFUSALS_TO_STOP mailboxes,
    none read, now stops the step once (stopped-connector-error, exit 4), saying what it likely means and
    what to do, having asked no more than those and what was in flight."""
    with EwsEmulator(EwsConfig(extended_protection=True, max_field_length=300)) as ews:  # NTLM's 3rd leg is over
        emails = _many_mailboxes(ews, tmp_path, 30)
        with pytest.raises(StopRunError) as caught:
            _imported(_agent(ews, tmp_path, concurrency=4))
        refused = ews.stats()["request_too_long"]
        where = ews.info["ews_url"].split("/EWS")[0]
    first = _client.REFUSALS_TO_STOP
    assert first <= refused <= 2 + first + 4 + 2, refused  # the check's two, then at most those in flight besides
    said = str(caught.value)
    assert said.startswith(f"EWS at {where} answered HTTP 400 (Bad Request) to GetUserPhoto for m"), said
    assert f", and the first {first} mailboxes asked were answered HTTP 400 (Bad Request) too, none read: " in said
    assert "it refuses this agent's requests, not one mailbox. IIS answers so to a request whose headers" in said
    assert "MaxFieldLength and MaxRequestBytes" in said and said.endswith(
        "the mailboxes not fetched yet keep what they had"
    )
    assert caught.value.status == "stopped-connector-error" and not any(email in said for email in emails[first + 6 :])


def test_mailboxes_answered_400_while_one_read_before_still_answers_are_their_own_errors(
    ews: EwsEmulator, tmp_path: Path
) -> None:
    """The other side: ten mailboxes in a row answered 400 (each of them, by a proxy's rule, say), while
    the mailbox read just before still answers when asked again: each is its own ews-error, saying what
    the status would mean if every mailbox got it, and the others are imported."""
    emails = _many_mailboxes(ews, tmp_path, 12)
    page = b"<html><body><h1>Bad Request</h1></body></html>"
    for email in emails[1:11]:
        ews.set_answer(email, 400, page, content_type="text/html")
    entries, _ = _imported(_agent(ews, tmp_path, concurrency=1))
    errors = {anchor: entry.error for anchor, entry in entries.items() if entry.error is not None}
    assert {anchor: error.name for anchor, error in errors.items()} == dict.fromkeys(emails[1:11], "ews-error")
    detail = errors[emails[5]].detail
    assert detail.startswith(f"GetUserPhoto for {emails[5]}: HTTP 400 (Bad Request) from EWS at https://"), detail
    assert "any photo imported before is kept" in detail and "If every mailbox gets it: IIS answers so" in detail
    assert entries[emails[11]].attributes["EXSPhoto"] and entries[emails[0]].attributes["EXSPhoto"]


@pytest.mark.parametrize(
    "fault",
    [
        ("ErrorAccessDenied", "Access is denied. Check credentials and try again."),
        ("ErrorImpersonateUserDenied", "The account does not have permission to impersonate the requested user."),
    ],
    ids=["access-denied", "impersonation-denied"],
)
def test_an_ews_that_refuses_every_mailbox_stops_the_step_once_naming_the_account(
    ews: EwsEmulator, tmp_path: Path, fault: tuple[str, str]
) -> None:
    """ErrorAccessDenied ("the calling account does not have the rights to perform the requested action",
    EWS ResponseCode reference) or ErrorImpersonateUserDenied for every mailbox is the account's condition,
    not each mailbox's: before, each of 20 mailboxes became its own permission-issue (5,000 on a real site,
    each deferred by its error window) and the step "completed with errors". Now, as for a bare 403, a
    refusal that another mailbox meets too (one that had worked, else the one refused before) stops the
    step once (stopped-authentication) naming the host, the account (never the password), EWS's words
    and what to check. One mailbox refused while the others answer stays its own permission-issue."""
    emails = _many_mailboxes(ews, tmp_path, 20)
    refused = soap_fault(*fault)
    ews.set_answer(emails[3], 500, refused)
    entries, _ = _imported(_agent(ews, tmp_path, concurrency=4))
    errors = {anchor: entry.error for anchor, entry in entries.items() if entry.error is not None}
    assert {anchor: error.name for anchor, error in errors.items()} == {emails[3]: "permission-issue"}
    assert f"{fault[0]}: {fault[1]}" in errors[emails[3]].detail and emails[3] in errors[emails[3]].detail
    for email in emails:
        ews.set_answer(email, 500, refused)
    agent = _agent(ews, tmp_path, concurrency=4)
    with pytest.raises(AuthenticationError) as caught:
        _imported(agent)
    where, account = ews.info["ews_url"].split("/")[2], ews.info["username"]
    said = str(caught.value)
    assert said.startswith(f"EWS at https://{where} refused {account} the photo of m"), said
    assert f"({fault[0]}: {fault[1]}), and " in said and "not one mailbox" in said
    assert "EwsEnabled" in said and "ApplicationImpersonation" in said and ews.info["password"] not in said
    assert caught.value.status == "stopped-authentication"


def test_a_fault_of_the_server_itself_is_retried_and_named_when_it_stops_the_step(
    ews: EwsEmulator, tmp_path: Path
) -> None:
    """A mailbox database that is not mounted fails every mailbox: retried, then the step stops as
    server-down, naming EWS's code."""
    emails = _many_mailboxes(ews, tmp_path, 6)
    for email in emails:
        ews.set_answer(email, 500, soap_fault("ErrorMailboxStoreUnavailable", "The mailbox database is offline."))
    with pytest.raises(ServerDownError) as caught:
        _imported(_agent(ews, tmp_path, concurrency=2))
    assert "answered with HTTP 500 (ErrorMailboxStoreUnavailable: The mailbox database is offline.) (3 attempts" in (
        str(caught.value)
    )


def test_an_answer_that_is_no_picture_is_the_mailboxs_error_and_keeps_its_photo(
    ews: EwsEmulator, tmp_path: Path
) -> None:
    """A proxy's HTML page with 200, damaged bytes, or an endless body: before, each became the
    mailbox's photo (the page's 49 bytes flowed to the metaverse ahead of the HR photo), and an
    endless body was read whole into memory."""
    _imported(_agent(ews, tmp_path))
    html = b"<html><body><h1>Service temporarily unavailable</h1></body></html>"
    ews.set_answer(PHOTO, 200, html, content_type="text/html")
    ews.set_answer(PLAIN, 200, bytes(range(256)) * 8, content_type="image/jpeg")
    ews.set_answer(THUMB, 200, b"\xff\xd8\xff" + bytes(MAX_PHOTO_BYTES), content_type="image/jpeg")
    entries, _ = _imported(_agent(ews, tmp_path, photo_recheck_hours=0), json.dumps({"v": 2}))
    errors = {anchor: entry.error for anchor, entry in entries.items()}
    assert {anchor: (error.name if error else None) for anchor, error in errors.items()} == {
        PHOTO: "not-an-image",
        PLAIN: "not-an-image",
        THUMB: "image-input-too-large",
    }
    assert all("EXSPhoto" not in entry.attributes for entry in entries.values())  # the photo stays as it was
    photo_error = errors[PHOTO]
    assert photo_error is not None
    assert f"GetUserPhoto for {PHOTO} answered HTTP 200 with {len(html)} bytes of text/html" in photo_error.detail
    assert "any photo imported before is kept" in photo_error.detail and "proxy or load balancer" in photo_error.detail


def test_a_photo_ews_returns_cut_short_says_to_set_it_again_not_to_copy_a_file(
    ews: EwsEmulator, tmp_path: Path
) -> None:
    """Found (QA): a JPEG that EWS returned cut short (whole as HTTP goes: the photo Exchange holds) was
    the mailbox's error with imaging's advice for a file, "a copy cut short, or still under way? Copy or
    save the photo again", which nobody can do about a server's answer. It now says what fits: the person
    uploads it again, or an administrator sets it again, naming the mailbox."""
    whole = photo(1)
    ews.set_answer(PHOTO, 200, whole[: len(whole) // 2], content_type="image/jpeg")
    _listing(tmp_path, PHOTO)
    entries, _ = _imported(_agent(ews, tmp_path))
    error = entries[PHOTO].error
    assert error is not None and error.name == "truncated-image", entries[PHOTO]
    assert "the image data ends early (" in error.detail and "Copy or save" not in error.detail, error.detail
    assert (
        "EWS returned the photo cut short, as Exchange holds it: ask the person to upload it again (Outlook on the "
        f"web, Teams), or set it again (Set-UserPhoto -Identity {PHOTO} -PictureData ...)); any photo imported "
        "before is kept."
    ) in error.detail, error.detail
    assert error.detail.endswith("any photo imported before is kept.")  # no proxy page to suspect


def test_an_xml_answer_to_the_photo_request_is_named_by_its_content_type_not_as_a_file_to_convert(
    ews: EwsEmulator, tmp_path: Path
) -> None:
    """Found in a bad-day pass: a 200 of XML to the REST GetUserPhoto (a SOAP answer cut short) was
    "unsupported-image-format ... (SVG/XML files are not supported; convert the photo to JPEG or PNG)":
    advice about a file, which no administrator can follow about an answer of EWS."""
    cut = b'<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/"><s:Body><m:GetUs'
    ews.set_answer(PHOTO, 200, cut, content_type="text/xml; charset=utf-8")
    _listing(tmp_path, PHOTO)
    entries, _ = _imported(_agent(ews, tmp_path))
    error = entries[PHOTO].error
    assert error is not None and error.name == "not-an-image", error
    assert "its Content-Type, text/xml; charset=utf-8, names no image" in error.detail and "convert" not in error.detail


def _gzip_bomb(decoded_bytes: int) -> bytes:
    """A gzip body of ``decoded_bytes`` zero bytes after a JPEG's first bytes: about a thousandth of it on the wire."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip format
    block = bytes(1 << 20)
    parts = [packer.compress(b"\xff\xd8\xff")]
    parts += [packer.compress(block) for _ in range(decoded_bytes >> 20)]
    return b"".join([*parts, packer.flush()])


def test_a_gzip_bomb_photo_is_the_mailboxs_error_read_no_further_than_the_cap(ews: EwsEmulator, tmp_path: Path) -> None:
    """A photo answer with Content-Encoding: gzip whose 0.25 MB on the wire decode to 256 MB: the body is
    read streamed, decoded a bounded piece at a time (urllib3 2.6.0 and later, CVE-2025-66471: before
    it, one read could decode all it had received), and left once over MAX_PHOTO_BYTES: the mailbox's
    image-input-too-large, the others imported, and the memory the read took stays near the cap."""
    _listing(tmp_path, PHOTO, THUMB)
    bomb = _gzip_bomb(256 << 20)
    assert len(bomb) < 1 << 20
    ews.set_answer(PHOTO, 200, bomb, content_type="image/jpeg", headers={"Content-Encoding": "gzip"})
    tracemalloc.start()
    try:
        entries, _ = _imported(_agent(ews, tmp_path, concurrency=1))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    error = entries[PHOTO].error
    assert error is not None and error.name == "image-input-too-large", error
    assert f"{MAX_PHOTO_BYTES:,} bytes; the rest was not read" in error.detail and PHOTO in error.detail
    assert entries[THUMB].error is None
    # the cap's worth of pieces and their join (urllib3 2.5: a 64 MB piece from one read), not 256 MB
    assert peak < 2.5 * MAX_PHOTO_BYTES, f"{peak:,} bytes at the peak"


def test_a_photo_cut_off_midway_is_retried_then_the_mailboxs_error(ews: EwsEmulator, tmp_path: Path) -> None:
    """The photo's body is read as a stream (bounded): a body cut off midway is still a failure to
    retry and then that mailbox's error, never a traceback or half a photo."""
    _listing(tmp_path, PHOTO, THUMB)
    ews.set_faults({"truncate": 1.0, "path_pattern": "email=photo%40"})
    entries, _ = _imported(_agent(ews, tmp_path, max_attempts=2))
    error = entries[PHOTO].error
    assert error is not None and error.name == "ews-error"
    assert (
        error.detail
        == f"GetUserPhoto for {PHOTO}: EWS at {ews.info['ews_url'].split('/EWS')[0]}: the answer was cut off"
    )
    assert entries[THUMB].error is None


@pytest.mark.parametrize("every_s", [0.05, 3600.0], ids=["trickles", "stalls"])
def test_a_photo_that_trickles_in_stops_at_the_timeout_not_days_later(
    ews: EwsEmulator, tmp_path: Path, every_s: float
) -> None:
    """A proxy or a dying link that sends a byte every 50 ms never trips the per-read timeout: the
    step waited for the whole body (this one, 1 MB, would take 14 hours; `mvsync run` was still
    waiting when `timeout 60` ended it). The whole photo must now arrive within timeout_s. A body
    that stalls is the same failure, named as a timeout (it read "connection failed")."""
    _stops_at_the_timeout(ews, tmp_path, every_s=every_s)


def _stops_at_the_timeout(ews: EwsEmulator, tmp_path: Path, **server: Any) -> None:
    """An import against ``trickling_server(**server)`` (timeout_s 0.5) stops as a timeout, naming the host."""
    ca = trustme.CA()
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(tls)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    _listing(tmp_path, PHOTO)
    # the server closes first on the way out, which frees a reader still waiting (as before the fix)
    with ThreadPoolExecutor(1) as pool, trickling_server(tls, **server) as port:
        agent = _agent(
            ews,
            tmp_path,
            auth="basic",
            ews_url=f"https://127.0.0.1:{port}/EWS/Exchange.asmx",
            ca_bundle=str(tmp_path / "ca.pem"),
            timeout_s=0.5,
            max_attempts=1,
        )
        importing = pool.submit(_imported, agent)
        with pytest.raises(ServerDownError) as caught:
            importing.result(timeout=60)  # generous under load; it ends about a second in
    assert str(caught.value).startswith(
        f"EWS at https://127.0.0.1:{port} did not answer: connected, but no answer within the timeout (1 attempts over "
    )


def test_credentials_in_the_ews_url_are_refused_and_shown_nowhere(ews: EwsEmulator, tmp_path: Path) -> None:
    """`ews_url = "https://svc:<password>@mail/..."` ran, and its password was in every message that
    named the server: the per-object errors and the step's message (a 401), on screen and in history."""
    host = ews.info["ews_url"].split("/")[2]
    (tmp_path / "pw").write_text(ews.info["password"], encoding="utf-8")
    _listing(tmp_path, PHOTO)
    config = tmp_path / "mvsync.toml"
    config.write_text(
        'data_dir = "data"\n[store]\nurl = "sqlite:///x.db"\n'
        '[agents.exs]\ntype = "exchange-server-photos"\n[agents.exs.settings]\n'
        f'ews_url = "https://svc:Url-Secret-1@{host}/EWS/Exchange.asmx"\nca_bundle = "{ews.info["ca_cert"]}"\n'
        f'username = \'{ews.info["username"]}\'\npassword = {{ file = "pw" }}\nmailbox_file = "mailboxes.txt"\n'
        '[run_profiles.import]\nsteps = [{ type = "full-import", agent = "exs" }]\n',
        encoding="utf-8",
    )
    code, out, err = invoke("run", "import", "-c", str(config))
    assert code == 2, out + err
    assert "agents.exs.settings.ews_url: must not hold a user name or password" in err
    assert "the secret as { env = .. } or { file = .. }" in err
    stored = (tmp_path / "x.db").read_bytes() if (tmp_path / "x.db").exists() else b""
    assert "Url-Secret-1" not in out + err and b"Url-Secret-1" not in stored


def test_a_redirect_is_the_mailboxs_error_and_no_credentials_follow_it(ews: EwsEmulator, tmp_path: Path) -> None:
    """A GetUserPhoto answered with a redirect to another server (where a moved mailbox may now
    live, or a proxy's sign-in page): before, it was followed with the credentials' scheme, and that
    server's 401 stopped the whole step as stopped-authentication ("EWS ... refused"), for one mailbox."""
    moved = "moved@contoso.example"
    with EwsEmulator(EwsConfig(username="someone-else")) as elsewhere:
        elsewhere.add_mailbox(moved, photo=photo(3))
        bundle = tmp_path / "cas.pem"
        tmp_path.mkdir(parents=True, exist_ok=True)
        bundle.write_bytes(Path(ews.info["ca_cert"]).read_bytes() + Path(elsewhere.info["ca_cert"]).read_bytes())
        target = f"{elsewhere.info['ews_url']}/s/GetUserPhoto?email={moved}&size=HR648x648"
        ews.set_answer(moved, 302, b"", content_type="text/html", headers={"Location": target})
        _listing(tmp_path, PHOTO, moved)
        entries, _ = _imported(_agent(ews, tmp_path, auth="basic", ca_bundle=bundle))
        asked_elsewhere = elsewhere.stats()["requests"]
    error = entries[moved].error
    assert error is not None and error.name == "ews-error"
    assert error.detail.startswith(
        f"GetUserPhoto for {moved} answered HTTP 302, a redirect to {elsewhere.info['ews_url'].split('/')[2]}, "
        "which is not followed"
    )
    assert entries[PHOTO].attributes["EXSPhoto"] and asked_elsewhere == 0


@pytest.mark.parametrize(
    ("authority", "says"),
    [
        ("http://login.contoso.example/contoso", "must be an https:// URL"),
        ("https://login.contoso.example", "must name the tenant in its path"),
        ("https://app:Authority-Secret-1@login.contoso.example/contoso", "must not hold a user name or password"),
    ],
)
def test_an_authority_msal_would_refuse_is_a_configuration_error_before_any_step(
    ews: EwsEmulator, tmp_path: Path, authority: str, says: str
) -> None:
    """MSAL refuses such an authority only when the first photo request asks for a token, with a
    ValueError from a worker thread: the run printed its traceback and stopped the step as
    stopped-connector-exception (exit 4) after 10 s. Now the configuration is refused up front (exit 2)."""
    (tmp_path / "secret").write_text("not-the-point", encoding="utf-8")
    _listing(tmp_path, PHOTO)
    config = tmp_path / "mvsync.toml"
    config.write_text(
        'data_dir = "data"\n[store]\nurl = "sqlite:///x.db"\n'
        '[agents.exs]\ntype = "exchange-server-photos"\n[agents.exs.settings]\n'
        f'ews_url = "{ews.info["ews_url"]}"\nca_bundle = "{ews.info["ca_cert"]}"\nauth = "oauth"\n'
        'tenant_id = "contoso"\nclient_id = "app"\nclient_secret = { file = "secret" }\n'
        f'authority = "{authority}"\ninstance_discovery = false\nmailbox_file = "mailboxes.txt"\n'
        '[run_profiles.import]\nsteps = [{ type = "full-import", agent = "exs" }]\n',
        encoding="utf-8",
    )
    code, out, err = invoke("run", "import", "-c", str(config))
    assert code == 2, out + err
    assert f"agents.exs.settings.authority: {says}" in err
    assert "Traceback" not in out + err and "Authority-Secret-1" not in out + err


def test_a_mailbox_throttled_past_its_retries_says_what_to_change(ews: EwsEmulator, tmp_path: Path) -> None:
    """A mailbox whose every attempt is ErrorServerBusy (while others get through) gives up after
    max_throttled_retries; its error said only "EWS kept throttling <address>"."""
    _listing(tmp_path, PHOTO, THUMB)
    ews.set_faults({"429": 1.0, "retry_after": 0.01, "path_pattern": "email=photo%40"})
    entries, _ = _imported(_agent(ews, tmp_path, max_throttled_retries=2))
    error = entries[PHOTO].error
    assert error is not None and error.name == "throttled"
    assert error.detail.startswith(f"EWS kept throttling {PHOTO} (2 answers in a row were ErrorServerBusy")
    assert "max_throttled_retries" in error.detail and "New-ThrottlingPolicy" in error.detail
    assert entries[THUMB].error is None


def test_a_429_from_what_stands_in_front_of_ews_is_waited_out_not_the_mailboxs_error(
    ews: EwsEmulator, tmp_path: Path
) -> None:
    """A load balancer or reverse proxy in front of EWS that rate-limits answers 429 Too Many Requests
    with Retry-After (RFC 6585). Before, the mailbox failed at once as "ews-error: HTTP 429", its
    retries unspent and the shared limiter never told to slow down; now it is push-back like 503:
    Retry-After pauses the limiter, and the photo comes once the proxy lets the request through."""
    _listing(tmp_path, PHOTO, THUMB)
    ews.set_answer(PHOTO, 429, b"<html>Too Many Requests</html>", "text/html", {"Retry-After": "0"}, times=2)
    agent = _agent(ews, tmp_path)
    entries, _ = _imported(agent)
    assert entries[PHOTO].error is None, entries[PHOTO].error
    assert entries[PHOTO].attributes["EXSPhoto"]
    assert agent.metrics["throttled"] == 2
    assert throttle_signal(_answer(429, b"", **{"Retry-After": "7"})) == (True, 7.0)


@pytest.mark.parametrize("push_back", ["ErrorExceededConnectionCount", "BackOffMilliseconds=0"])
def test_push_back_that_asks_for_no_wait_is_not_asked_again_at_once(
    ews: EwsEmulator, tmp_path: Path, push_back: str
) -> None:
    """ErrorExceededConnectionCount (other clients of the account hold its EWSMaxConcurrency) carries no
    BackOffMilliseconds, and ErrorServerBusy may carry 0. The shared limiter pauses once for a push-back,
    not again while it judges that decrease; the mailbox was asked again at once, each time: its 30
    throttled retries were spent in about 2 s (a request every few milliseconds to a server saying it
    is too busy), and the mailbox failed as "throttled". Now each retry after push-back that named no
    wait waits the back-off first (backoff_initial_s, doubling), so the mailbox gets its photo once
    the connections are free."""
    _listing(tmp_path, PHOTO)
    code, backoff = ("ErrorServerBusy", 0) if push_back.startswith("BackOff") else (push_back, None)
    ews.set_answer(PHOTO, 500, soap_fault(code, "Try again later.", backoff), times=4)
    entries, _ = _imported(_agent(ews, tmp_path, backoff_initial_s=0.05))
    assert entries[PHOTO].error is None and entries[PHOTO].attributes["EXSPhoto"]
    sent = ews.canned_times(PHOTO)
    gaps = [later - earlier for earlier, later in itertools.pairwise(sent)]
    assert len(gaps) == 3
    # the n-th retry waits at least half of backoff_initial_s * 2**(n-1) (the jitter's least)
    assert all(gap >= 0.025 * 2**n for n, gap in enumerate(gaps)), gaps


def test_a_304_to_a_request_that_was_not_conditional_keeps_the_photo(ews: EwsEmulator, tmp_path: Path) -> None:
    """304 Not Modified answers a conditional request only (RFC 9110 §15.4.5); a full import sends no
    If-None-Match. A cache or proxy in front of EWS that answered 304 all the same made the mailbox
    "unchanged", which yields no entry: the full import then left it out, which deletes it (its photo
    out of the metaverse, and thumbnailPhoto cleared at the next export). Now it is the mailbox's
    error, naming what answered, and the photo imported before is kept."""
    _listing(tmp_path, PHOTO, PLAIN)
    first, _ = _imported(_agent(ews, tmp_path))
    assert first[PHOTO].attributes["EXSPhoto"]
    ews.set_answer(PHOTO, 304, b"", "text/plain", {"ETag": '"cached"'})
    again, _ = _imported(_agent(ews, tmp_path))
    assert set(again) == {PHOTO, PLAIN}, again  # before: PHOTO left out of the full import
    error = again[PHOTO].error
    assert error is not None and error.name == "ews-error", again[PHOTO]
    assert f"GetUserPhoto for {PHOTO} answered HTTP 304 (Not Modified) to a request that was not conditional" in (
        error.detail
    )
    assert "any photo imported before is kept" in error.detail


def test_a_back_off_of_thousands_of_digits_is_no_traceback(ews: EwsEmulator, tmp_path: Path) -> None:
    """ErrorServerBusy whose BackOffMilliseconds has 4,400 digits (a broken or hostile answer, within
    the 8 KB read): int() refuses more than 4,300 digits, and the ValueError escaped the worker as a
    traceback (stopped-connector-exception). Now a value of more than 15 digits is no wait named:
    the mailbox waits its own back-off, and gets its photo once EWS answers."""
    _listing(tmp_path, PHOTO)
    busy = soap_fault("ErrorServerBusy", "The server cannot service this request right now.", 1)
    huge = busy.replace(b">1</t:Value>", b">" + b"9" * 4400 + b"</t:Value>")
    assert huge != busy
    ews.set_answer(PHOTO, 500, huge, times=1)
    agent = _agent(ews, tmp_path)
    entries, _ = _imported(agent)
    assert entries[PHOTO].error is None and entries[PHOTO].attributes["EXSPhoto"]
    assert agent.metrics["throttled"] == 1


def _cli_config(ews: EwsEmulator, tmp_path: Path) -> Path:
    """A configuration of the ``exs`` agent on the emulator (NTLM, the mailbox file) with ``full`` and
    ``delta`` import profiles, for the real CLI."""
    (tmp_path / "pw").write_text(ews.info["password"], encoding="utf-8")
    config = tmp_path / "mvsync.toml"
    config.write_text(
        'data_dir = "data"\n[store]\nurl = "sqlite:///x.db"\n'
        '[agents.exs]\ntype = "exchange-server-photos"\n[agents.exs.settings]\n'
        f'ews_url = "{ews.info["ews_url"]}"\nca_bundle = "{ews.info["ca_cert"]}"\n'
        f'username = \'{ews.info["username"]}\'\npassword = {{ file = "pw" }}\nmailbox_file = "mailboxes.txt"\n'
        '[run_profiles.full]\nsteps = [{ type = "full-import", agent = "exs" }]\n'
        '[run_profiles.delta]\nsteps = [{ type = "delta-import", agent = "exs" }]\n',
        encoding="utf-8",
    )
    return config


def test_a_wrong_password_costs_one_failed_logon_per_step_not_one_per_thread(tmp_path: Path) -> None:
    """Found in a bad-day pass: every request answered 401 after carrying a wrong password is a failed
    logon at the DC, which locks the account out at its threshold (10 in Microsoft's baseline, 5 or fewer
    in CIS's). One run made 6 (the check's two, then the first photo request of each thread), 4 within
    endpoint_check_hours, and `mvsync doctor` 3: a doctor and a run could lock the service account out of
    Exchange and everything else it serves. Until an answer shows the credentials accepted, requests now
    go one at a time, and none after a 401: one failed logon per step, and per doctor."""
    emails = [f"u{i:02}@contoso.example" for i in range(40)]
    with EwsEmulator(EwsConfig(extended_protection=True)) as emu:
        for email in emails:
            emu.add_mailbox(email, photo=photo(1) if email < "u03" else None)

        def failed_logons(*args: str, config: Path, code: int) -> int:
            before = emu.stats().get("failed_logons", 0)
            got, out, err = invoke(*args, "-c", str(config))
            assert got == code and "Traceback" not in err, out + err
            assert f"refused {emu.info['username']} (HTTP 401" in out + err and "locked out" in out + err, out + err
            assert args[0] != "run" or "Get-ADUser svc-mvsync -Properties LockedOut" in out, out  # (doctor wraps)
            return int(emu.stats().get("failed_logons", 0)) - before

        for folder in ("new", "known"):
            _listing(tmp_path / folder, *emails)
            _cli_config(emu, tmp_path / folder)
        known = tmp_path / "known" / "mvsync.toml"
        assert invoke("run", "full", "-c", str(known))[0] == 0  # its check is remembered: photo requests first
        for folder in ("new", "known"):
            (tmp_path / folder / "pw").write_text("not-" + emu.info["password"], encoding="utf-8")
        config = tmp_path / "new" / "mvsync.toml"
        assert failed_logons("run", "full", "--json", config=config, code=4) == 1
        assert failed_logons("run", "full", "--json", config=known, code=4) == 1
        assert failed_logons("doctor", config=config, code=6) == 1


def test_an_agent_folder_that_cannot_be_made_is_named_not_a_traceback(ews: EwsEmulator, tmp_path: Path) -> None:
    """A file where the agent's folder goes (data/exs) ended the step in a FileExistsError traceback
    (stopped-connector-exception); it is a configuration error naming the folder, as for exo."""
    _listing(tmp_path, PHOTO)
    config = _cli_config(ews, tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "exs").write_text("not a folder", encoding="utf-8")
    code, out, err = invoke("run", "full", "-c", str(config))
    assert code == 2, out + err
    assert f"cannot create the agent's folder {tmp_path / 'data' / 'exs'}" in out + err
    assert "Traceback" not in out + err


def test_an_empty_mailbox_list_deletes_nothing_in_a_delta_import(ews: EwsEmulator, tmp_path: Path) -> None:
    """The scheduled `Get-Mailbox ... > mailboxes.txt` that cannot reach Exchange leaves an empty file.
    A full import of it stops (stopped-empty-import, the engine's guard), but a delta import deleted
    every mailbox from the connector space and reported success (exit 0): their photos left the
    metaverse, and the next export would clear thumbnailPhoto in AD."""
    _listing(tmp_path, PHOTO, PLAIN, THUMB)
    config = _cli_config(ews, tmp_path)
    assert invoke("run", "full", "-c", str(config))[0] == 0
    (tmp_path / "mailboxes.txt").write_text("", encoding="utf-8")
    code, out, err = invoke("run", "delta", "-c", str(config), "--json")
    step = json.loads(out)["steps"][0]
    assert (code, step["status"]) == (4, "stopped-empty-import"), out + err
    assert step["message"].startswith(f"the mailbox list {tmp_path / 'mailboxes.txt'} is empty, but 3 mailboxes")
    assert "--allow-empty-import" in step["message"]
    code, out, _ = invoke("cs", "search", "exs", "-c", str(config), "--json")
    assert len(json.loads(out)) == 3 and not any(d["pending_import"] == "delete" for d in json.loads(out))
    # an empty list that is meant: a full import with the engine's own permission empties the space
    assert invoke("run", "full", "-c", str(config), "--allow-empty-import")[0] == 0


def test_an_ews_url_that_is_not_ews_stops_before_any_mailbox_reads_as_without_photo(
    ews: EwsEmulator, tmp_path: Path
) -> None:
    """GetUserPhoto's 404 means "no photo". With a typo in ews_url's path every request answered 404,
    so the full import succeeded and removed every mailbox's photo (updates=6, connector.none=7 in the
    CLI run that found it); the export after it would clear thumbnailPhoto. The URL is now asked
    once, before the first mailbox, whether it is EWS at all."""
    _imported(_agent(ews, tmp_path))
    typo = ews.info["ews_url"].replace("/Exchange.asmx", "/Exchang.asmx")
    before = ews.stats().get("photo_requests", 0)
    with pytest.raises(ConfigurationError) as caught:
        _imported(_agent(ews, tmp_path, ews_url=typo))
    assert caught.value.key == "ews_url"
    assert str(caught.value).startswith(f"ews_url: {typo} is not EWS: it answered HTTP 404 to a SOAP request")
    assert ews.stats().get("photo_requests", 0) == before  # no mailbox was asked
    with _agent(ews, tmp_path, ews_url=typo) as agent:
        result = agent.check()  # mvsync doctor
    assert not result.ok and "is not EWS" in result.detail


@pytest.mark.parametrize(
    ("path", "redirect", "said"),
    [
        ("/owa/", None, "it answered a SOAP request with HTTP 302, a redirect to 127.0.0.1:{port}/owa/auth/logon.aspx"),
        (
            "/owa/auth/logon.aspx",
            None,
            "it answered a SOAP request with HTTP 200 and text/html; charset=utf-8, a web page",
        ),
        ("/EWS/Exchange.asmx", "https://mail.contoso.example/owa", "a redirect to mail.contoso.example:443/owa"),
        # the WSDL's URL: 405 to the POST, and 404 ("no photo") to every photo request below it
        ("/EWS/Services.wsdl", None, "it answered HTTP 405 (no Content-Type) to a SOAP request, which EWS answers in"),
        # Autodiscover's POX endpoint: its error 600 in a 200 of XML, which passed the check too
        ("/autodiscover/autodiscover.xml", None, "with HTTP 200 and XML that is no SOAP envelope (Autodiscover's"),
    ],
)
def test_an_ews_url_that_leads_to_a_sign_in_page_stops_once_before_any_mailbox(
    tmp_path: Path, path: str, redirect: str | None, said: str
) -> None:
    """Found in a bad-day pass: ews_url naming Outlook on the web (its sign-in redirect, or the sign-in
    page itself, a 200 of HTML), or EWS behind IIS's HTTP Redirect of the Default Web Site (set to shorten
    the OWA URL, inherited by the EWS virtual directory), passed the check before the first mailbox (it
    stopped only on a 404): the import went on and failed every mailbox with the same error (23 of 23
    "not-an-image" or "a redirect ... not followed", completed-discovery-errors, exit 3), thousands in a
    real organisation. Worse, ews_url naming the WSDL (/EWS/Services.wsdl) passed it with a 405, and every
    photo request's 404 read as "no photo": a first import succeeded with no photo at all. The check now
    stops the step once (stopped-configuration, exit 2), naming the URL and where it led, and no mailbox
    is asked."""
    with EwsEmulator(EwsConfig(extended_protection=True, http_redirect=redirect)) as emu:
        emu.add_mailbox(PHOTO, photo=photo(1))
        _listing(tmp_path, PHOTO, PLAIN)
        url = emu.info["ews_url"].replace("/EWS/Exchange.asmx", path)
        config = _cli_config(emu, tmp_path)
        config.write_text(config.read_text(encoding="utf-8").replace(emu.info["ews_url"], url), encoding="utf-8")
        code, out, err = invoke("run", "full", "-c", str(config), "--json")
        photo_requests = emu.stats().get("photo_requests", 0)
    failure = json.loads(out)
    assert (code, failure["status"]) == (2, "stopped-configuration"), out + err
    message = failure["message"]
    assert f"ews_url: {url.rstrip('/')} is not EWS: " in message, message
    assert said.format(port=emu.info["port"]) in message and "/EWS/Exchange.asmx" in message, message
    assert photo_requests == 0


def test_only_a_getuserphoto_answer_without_a_picture_confirms_no_photo() -> None:
    """The SOAP re-ask confirms a 404 before a photo is removed; a 200 without PictureData counted as
    "no photo" whatever it was, so Autodiscover's XML (ews_url naming it) or a proxy's page removed the
    photo, and the next export cleared thumbnailPhoto."""

    def answer(status: int, body: bytes) -> requests.Response:
        resp = requests.Response()
        resp.status_code, resp._content = status, body
        return resp

    autodiscover = b'<?xml version="1.0"?><Autodiscover><Response><Error><ErrorCode>600</ErrorCode></Error></Response>'
    no_picture = b'<s:Envelope><s:Body><m:GetUserPhotoResponse ResponseClass="Success"><m:HasChanged>false'
    picture = no_picture + b"</m:HasChanged><m:PictureData>/9j/4AAQ</m:PictureData>"
    assert _client._says_no_photo(answer(404, b"")) and _client._says_no_photo(answer(200, no_picture))
    for status, body in ((200, autodiscover), (200, b"<html>sign in</html>"), (200, picture), (500, no_picture)):
        assert not _client._says_no_photo(answer(status, body)), body


def test_a_redirect_set_after_the_check_was_remembered_stops_the_step_at_the_first_mailbox(
    ews: EwsEmulator, tmp_path: Path
) -> None:
    """Within endpoint_check_hours the step sends its photo requests alone; an HTTP Redirect added to the
    web site since (inherited by EWS) failed every mailbox with "a redirect ... not followed". The first
    redirect or web page makes the check left for later, which stops the step once."""
    _listing(tmp_path, PHOTO, PLAIN, THUMB)
    config = _cli_config(ews, tmp_path)
    assert invoke("run", "full", "-c", str(config))[0] == 0
    ews.service.config.http_redirect = "https://mail.contoso.example/owa"
    code, out, err = invoke("run", "full", "-c", str(config), "--json")
    failure = json.loads(out)
    assert (code, failure["status"]) == (2, "stopped-configuration"), out + err
    assert "is not EWS: it answered a SOAP request with HTTP 302, a redirect to mail.contoso" in failure["message"]


class _Writer:
    """Stands in for the clock while a mailbox list is written: each wait of the agent's is a moment in
    which the task writing the list runs one more of its ``steps`` (no real time passes, so the test
    does not depend on how fast a loaded machine runs the writer)."""

    def __init__(self, path: Path, steps: list[str]) -> None:
        self.path, self.steps, self.waits = path, steps, 0

    def __call__(self, seconds: float, stopping: threading.Event) -> bool:
        self.waits += 1
        if self.steps:
            with self.path.open("a", encoding="utf-8") as out:
                out.write(self.steps.pop(0))
            stamp = time.time_ns() + self.waits * 1_000_000_000  # a new modification time, even on coarse clocks
            os.utime(self.path, ns=(stamp, stamp))
        return stopping.is_set()


def test_a_mailbox_list_still_being_written_deletes_nobody(
    ews: EwsEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scheduled `Get-Mailbox ... | Out-File mailboxes.txt` running late leaves a list that reads
    short while it is written; a delta import then deleted every mailbox not written yet (their photos
    left the metaverse, and the next export would clear thumbnailPhoto). Now a list that leaves out
    mailboxes imported before is read again once it has stopped changing; a run that deletes nobody
    does not wait at all."""
    listing = tmp_path / "mailboxes.txt"
    _listing(tmp_path, PHOTO, PLAIN, THUMB)
    _entries, watermark = _imported(_agent(ews, tmp_path))
    listing.write_text(f"{PHOTO}\n", encoding="utf-8")  # the writer has written one line so far
    writer = _Writer(listing, [f"{PLAIN}\n", f"{THUMB}\n"])
    monkeypatch.setattr(files, "_sleep", writer)
    entries, watermark = _imported(_agent(ews, tmp_path), watermark)
    assert not any(e.modification == ObjectModificationType.DELETE for e in entries.values()), entries
    assert writer.waits == 3  # two lines written, then one quiet look
    # a list that deletes nobody is read at once
    quiet = _Writer(listing, [])
    monkeypatch.setattr(files, "_sleep", quiet)
    assert _imported(_agent(ews, tmp_path), watermark)[0] == {} and quiet.waits == 0
    # a mailbox really removed from a finished list is deleted after one quiet look
    _listing(tmp_path, PHOTO, PLAIN)
    entries, _ = _imported(_agent(ews, tmp_path), watermark)
    assert entries[THUMB].modification == ObjectModificationType.DELETE and quiet.waits == 1


def test_a_mailbox_list_that_keeps_changing_stops_the_import_and_deletes_nobody(
    ews: EwsEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A list that is still changing after the agent's wait stops the step: it says what to fix (the
    task that writes the list, or writing it elsewhere and renaming it over), and deletes nothing."""
    listing = tmp_path / "mailboxes.txt"
    _listing(tmp_path, PHOTO, PLAIN, THUMB)
    _entries, watermark = _imported(_agent(ews, tmp_path))
    listing.write_text(f"{PHOTO}\n", encoding="utf-8")
    monkeypatch.setattr(files, "_sleep", _Writer(listing, ["#\n"] * 1000))
    with pytest.raises(StopRunError) as stopped:
        _imported(_agent(ews, tmp_path), watermark)
    message = str(stopped.value)
    assert message.startswith(f"the mailbox list {listing} kept changing for 60 s")
    assert "nothing was deleted" in message and "rename it over the list" in message


def test_an_authentication_method_ews_does_not_offer_is_named_not_taken_for_a_wrong_password(tmp_path: Path) -> None:
    """Found in a bad-day pass: ``auth = "basic"`` against an EWS virtual directory that offers Windows
    authentication only (Exchange's default: Negotiate and NTLM; here NTLM) stopped with "refused CONTOSO\\svc
    ... check the account, its password reference", with the right password: an administrator would
    reset it, and the next run would say the same. EWS's 401 says which methods it offers
    (WWW-Authenticate); the message now names them and the setting that matches."""
    with EwsEmulator(EwsConfig(auth=("ntlm",))) as emu:
        emu.add_mailbox(PHOTO, photo=photo(1))
        _listing(tmp_path, PHOTO)
        config = _cli_config(emu, tmp_path)
        config.write_text(
            config.read_text(encoding="utf-8").replace(
                "[agents.exs.settings]\n", '[agents.exs.settings]\nauth = "basic"\n'
            ),
            encoding="utf-8",
        )
        code, out, err = invoke("run", "full", "-c", str(config), "--json")
    step = json.loads(out)["steps"][0]
    assert (code, step["status"]) == (4, "stopped-authentication"), out + err
    said = step["message"]
    assert f"EWS at {emu.info['ews_url'].split('/EWS')[0]} does not offer Basic authentication" in said, said
    assert "it offers NTLM (WWW-Authenticate)" in said, said
    assert "Set auth = 'ntlm', or enable Basic authentication on the EWS virtual directory" in said, said
    assert "password reference" not in said and emu.info["password"] not in out + err


def test_once_the_first_request_has_ended_the_others_that_waited_for_it_go_at_once(
    ews: EwsEmulator, tmp_path: Path
) -> None:
    """The credential gate holds the step's requests behind its first; those that waited for it then went
    one at a time all the same, each holding the turn for its whole request (a delta of 300 mailboxes at
    50 ms took 1.85 s instead of 1.45). Here two that waited must be under way together."""
    settings = _settings(ews, tmp_path)
    limiter = AdaptiveLimiter("ews-gate-test", ceiling=4)
    gate = _client.CredentialGate(settings, limiter, threading.Event)
    first_sent, release_first = threading.Event(), threading.Event()
    together = threading.Barrier(2, timeout=30)

    def answer(wait: Callable[[], object]) -> requests.Response:
        wait()
        resp = requests.Response()
        resp.status_code = 200
        return resp

    def first() -> requests.Response:
        first_sent.set()
        return answer(lambda: release_first.wait(30))

    with ThreadPoolExecutor(3) as pool:
        head = pool.submit(gate.send, limiter.acquire(), first)
        assert first_sent.wait(30)
        waiting = [pool.submit(gate.send, limiter.acquire(), lambda: answer(together.wait)) for _ in range(2)]
        release_first.set()
        assert head.result().status_code == 200
        assert [f.result().status_code for f in waiting] == [200, 200]  # a BrokenBarrierError if one at a time


def test_an_ews_that_takes_kerberos_only_says_to_use_negotiate_not_a_traceback(tmp_path: Path) -> None:
    """Found in a bad-day pass: with auth = "ntlm" against an EWS virtual directory whose Windows
    authentication takes Kerberos only (the Negotiate provider without NTLM, or NTLM refused by the
    domain's policy), requests-ntlm's NTLM inside Negotiate got no challenge back and it raised
    PermissionError: a traceback, stopped-connector-exception, "Access denied: Server did not respond with
    NTLM challenge token". It is a stop naming the server and the setting that works."""
    unread = tmp_path / "no.keytab"  # no Kerberos ticket comes: its keys are never read
    with EwsEmulator(EwsConfig(auth=("negotiate",), ntlm_in_negotiate=False, kerberos_keytab=unread)) as emu:
        emu.add_mailbox(PHOTO, photo=photo(1))
        _listing(tmp_path, PHOTO)
        code, out, err = invoke("run", "full", "-c", str(_cli_config(emu, tmp_path)), "--json")
        logons = emu.stats().get("failed_logons", 0)
    step = json.loads(out)["steps"][0]
    assert (code, step["status"]) == (4, "stopped-authentication") and "Traceback" not in err, out + err
    said = step["message"]
    assert said.startswith(f"EWS at {emu.info['ews_url'].split('/EWS')[0]} did not answer the NTLM negotiation "), said
    assert "it offers Negotiate" in said and "takes Kerberos only" in said and "Set auth = 'negotiate'" in said, said
    assert logons == 0 and emu.info["password"] not in out + err


@pytest.mark.parametrize(
    ("auth", "challenge", "said"),
    [
        (
            "basic",
            'Negotiate, NTLM, Bearer trusted_issuers="x@y", client_id="z"',
            "Set auth = 'negotiate' for Kerberos (or 'ntlm', 'oauth')",
        ),
        (
            "ntlm",
            'Basic realm="mail.contoso.example"',
            "does not offer NTLM authentication (auth = 'ntlm'): it offers Basic",
        ),
        ("ntlm", "Negotiate", None),  # requests-ntlm answers Negotiate with NTLM inside it
        ("basic", 'Negotiate, NTLM, Basic realm="x"', None),  # offered: the account or password is refused
        ("basic", None, None),
    ],
)
def test_what_a_refusal_says_follows_the_methods_ews_offers(
    tmp_path: Path, auth: str, challenge: str | None, said: str | None
) -> None:
    settings = ExchangeServerSettings.model_validate(
        {
            "ews_url": "https://mail.contoso.test/EWS/Exchange.asmx",
            "auth": auth,
            "username": "CONTOSO\\svc",
            "password": "pw",
            "mailboxes": [PHOTO],
        }
    )
    message = str(refused(settings, challenge))
    if said is None:
        assert message.startswith("EWS at https://mail.contoso.test refused CONTOSO\\svc (HTTP 401"), message
    else:
        assert said in message and "(WWW-Authenticate)" in message, message


def test_a_bad_line_of_the_mailbox_list_is_named_where_it_is(ews: EwsEmulator, tmp_path: Path) -> None:
    """Found in a bad-day pass: with addresses in both ``mailboxes`` and ``mailbox_file``, a bad line of
    the file was named with the wrong line number (``PrimarySmtpAddress``, the header that
    ``Get-Mailbox | Select PrimarySmtpAddress`` writes on line 1, was "line 3" after two ``mailboxes``
    entries), a bad ``mailboxes`` entry was named as a line of the file, and both under the key
    ``mailboxes``, lower-cased and without what to do. Now each is named where it is, as written."""
    _listing(tmp_path, PHOTO)
    listing = tmp_path / "mailboxes.txt"
    listing.write_text(f"PrimarySmtpAddress\n------------------\n{PHOTO}\n", encoding="utf-8")
    config = _cli_config(ews, tmp_path)
    text = config.read_text(encoding="utf-8")
    config.write_text(
        text.replace("[agents.exs.settings]\n", f'[agents.exs.settings]\nmailboxes = ["{PLAIN}", "{THUMB}"]\n')
    )
    code, _out, err = invoke("run", "full", "-c", str(config))
    said = err.strip().splitlines()[-1]
    assert code == 2, err
    assert said.startswith(
        f"error: {config}: agents.exs.settings.mailbox_file: 'PrimarySmtpAddress' is not an SMTP address ({listing}, "
        "line 1)"
    ), said
    assert "one address a line" in said and "% PrimarySmtpAddress" in said, said

    listing.write_text(f"{PHOTO}\n", encoding="utf-8")
    config.write_text(
        text.replace("[agents.exs.settings]\n", f'[agents.exs.settings]\nmailboxes = ["{PLAIN}", "Thumb at contoso"]\n')
    )
    code, _out, err = invoke("run", "full", "-c", str(config))
    said = err.strip().splitlines()[-1]
    assert code == 2, err
    assert said.startswith(
        f"error: {config}: agents.exs.settings.mailboxes: 'Thumb at contoso' is not an SMTP address "
        "(mailboxes, entry 2)"
    ), said


@pytest.mark.parametrize("status", ["500 Internal Server Error", "502 Bad Gateway", "403 Forbidden"])
def test_an_error_answer_that_trickles_in_stops_at_the_timeout_too(
    ews: EwsEmulator, tmp_path: Path, status: str
) -> None:
    """Found in a bad-day pass: only a photo (a 200) had to arrive whole within timeout_s; any other
    answer's body was read without a deadline or a bound, so a proxy or a dying link sending an error
    page a byte every 50 ms (or a body without end) held the step, and its lock, for hours (this one,
    1 MB, 14 hours). Every answer's body is now read within timeout_s, and only its head is kept."""
    _stops_at_the_timeout(ews, tmp_path, status=status)


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT to a thread (pthread_kill)")
def test_ctrl_c_ends_the_wait_for_a_mailbox_list_still_being_written(
    ews: EwsEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in the photo-folder and EWS pass: Ctrl-C while the agent waited for a mailbox list still being
    written (up to 60 s) could not end the wait, which slept in the import's stream, out of reach of the
    step's stop: `mvsync run` took the engine's 10 s for joining the stream's thread, and the thread
    outlived the step. The wait now ends on the step's stop (``ImportRun.stopping``)."""
    listing = tmp_path / "mailboxes.txt"
    _listing(tmp_path, PHOTO, PLAIN, THUMB)
    _entries, watermark = _imported(_agent(ews, tmp_path))
    listing.write_text(f"{PHOTO}\n", encoding="utf-8")  # the writer is still at it
    woken: list[bool] = []

    def wait(seconds: float, stopping: threading.Event) -> bool:
        with listing.open("a", encoding="utf-8") as out:  # the list keeps changing
            out.write("#\n")
        if not woken:  # Ctrl-C during the first wait
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
        woken.append(stopping.wait(seconds))
        return woken[-1]

    monkeypatch.setattr(files, "_sleep", wait)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            _imported(_agent(ews, tmp_path), watermark)
            threading.Event().wait(60)  # (the signal arrives on the way: never reached)
        left = [t.name for t in threading.enumerate() if t.name == "import-source"]
    finally:
        signal.signal(signal.SIGINT, previous)
    assert woken == [True] and left == []  # the wait ended on the stop, not after its 2 s


@pytest.mark.skipif(sys.platform == "win32", reason="sends SIGINT to a thread (pthread_kill)")
def test_ctrl_c_stops_a_mailbox_waiting_to_be_asked_again(
    ews: EwsEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in a bad-day pass: Ctrl-C (or SIGTERM) while a mailbox waited out its retry backoff after
    a 504 (or a throttling pause) left its thread waiting: the worker waited on the agent's own stop
    event, set only when the agent closes, not on the step's stop the engine hands it. `mvsync run`
    took 10.5 s to stop (the engine's limit for joining worker threads), and the thread outlived the
    step. The worker now waits on the step's stop: no thread of the step is left when it ends."""
    _listing(tmp_path, PHOTO)
    ews.set_faults({"504": 1.0, "path_pattern": "email=photo%40"})
    agent = _agent(ews, tmp_path, backoff_initial_s=3600, backoff_max_s=3600)
    real = _client.PhotoClient._send

    def send(client: _client.PhotoClient, email: str, *args: Any, **kwargs: Any) -> requests.Response:
        answer = real(client, email, *args, **kwargs)
        if answer.status_code == 504:  # the mailbox now waits an hour before it is asked again
            signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGINT)
        return answer

    monkeypatch.setattr(_client.PhotoClient, "_send", send)
    # Python's own Ctrl-C handler: a session started as a background job inherits SIGINT ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with agent, pytest.raises(KeyboardInterrupt):
            import_in_memory(agent, ImportMode.FULL, {}, page_size=2)
            threading.Event().wait(60)  # (the signal arrives on the way: never reached)
        left = [t.name for t in threading.enumerate() if t.name.startswith("import-_PhotoWorker")]
    finally:
        signal.signal(signal.SIGINT, previous)
    assert left == []


def _engine_config(ews: EwsEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A store, the agent (one thread, so mailboxes finish in list order) and a full-import profile."""
    monkeypatch.setenv("EXS_TEST_PASSWORD", ews.info["password"])
    info = ews.info
    settings = {
        "ews_url": info["ews_url"],
        "ca_bundle": info["ca_cert"],
        "username": info["username"],
        "password": {"env": "EXS_TEST_PASSWORD"},
        "mailbox_file": str(tmp_path / "mailboxes.txt"),
        "concurrency": 1,
    }
    return config_from_dict(
        {
            "store": {"url": "sqlite:///mvsync.db"},
            "data_dir": "data",
            "agents": {"exs": {"type": "exchange-server-photos", "settings": settings}},
            "run_profiles": {"Full": {"steps": [{"type": "full-import", "agent": "exs", "page_size": 2}]}},
        },
        base_dir=tmp_path,
    )


def _run_full(config: Any) -> Any:
    engine = Engine(config)
    try:
        return engine.run_profile("Full")
    finally:
        engine.close()


def test_an_interrupted_full_import_resumes_after_the_mailboxes_it_committed(
    ews: EwsEmulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full import stopped at the 9th of 12 mailboxes (an expired password, a reboot) fetched all 12
    again on its next run: the agent yielded no checkpoint (5,000 photos downloaded again on a real
    site). Now the next full import resumes after the mailboxes committed, and still holds all 12."""
    emails = _many_mailboxes(ews, tmp_path, 12)
    ews.set_answer(emails[8], 401, b"401 - Unauthorized", content_type="text/html")
    config = _engine_config(ews, tmp_path, monkeypatch)
    stopped = _run_full(config)
    assert stopped.status == "stopped-authentication", stopped.as_dict()
    ews.set_answer(emails[8], None)
    before = ews.stats()["photo_downloads"]
    forget_shared_limiters()
    resumed = _run_full(config)
    step = resumed.steps[0]
    assert resumed.status == "success", resumed.as_dict()
    assert step.counters["resumed_from_step"] == stopped.steps[0].step_id
    assert step.message.startswith("resumed the full import interrupted in step")
    assert ews.stats()["photo_downloads"] - before == 4  # the 9th to the 12th
    store = SqlStore(config.store_url())
    try:
        with store.read() as conn:
            held = conn.execute(select(cs_object.c.anchor).where(cs_object.c.agent == "exs")).scalars().all()
    finally:
        store.close()
    assert sorted(held) == sorted(emails)


def test_a_checkpoint_holds_only_for_the_same_mailbox_list_up_to_it() -> None:
    """The list is re-read by the resumed import: mailboxes added after the point are fetched; one added
    or removed before it would be missed or misplaced, so the engine is told to start over."""
    listed = [f"m{n}@contoso.example" for n in range(6)]
    point = _connector._checkpoint(listed, 4)
    assert _connector._resumed_past(point, [*listed, "new@contoso.example"]) == 4
    assert _connector._resumed_past(None, listed) == 0
    for changed in (["new@contoso.example", *listed], listed[1:], listed[:3]):
        with pytest.raises(ResumeRefusedError, match="the mailbox list changed"):
            _connector._resumed_past(point, changed)
    with pytest.raises(ResumeRefusedError, match="not one this agent wrote"):
        _connector._resumed_past('{"link": "https://graph"}', listed)


def test_an_exchange_2010_server_stops_the_step_once_naming_its_version_and_keeps_every_photo(
    ews: EwsEmulator, tmp_path: Path
) -> None:
    """Exchange 2010 has no GetUserPhoto (introduced in Exchange 2013). Pointed at one (here: ews_url now
    leads to a 2010 server), the agent asked every mailbox in turn, and the REST form, which a 2010 server
    does not serve, answered 404: "no photo" for each, so a full import took every photo out of the
    connector space (the next export would clear thumbnailPhoto). Now the probe before the first mailbox
    asks in SOAP with RequestServerVersion Exchange2013, as the GetUserPhoto operation page does; a 2010
    server refuses that version (ErrorInvalidServerVersion), and the step stops once, as a configuration
    error naming the server, its version from ServerVersionInfo and what to do, before any mailbox."""
    _listing(tmp_path, PHOTO, PLAIN, THUMB)
    config = _cli_config(ews, tmp_path)
    assert invoke("run", "full", "-c", str(config))[0] == 0
    ews.service.version = SERVER_VERSIONS["Exchange2010_SP1"]  # the same URL, now an Exchange 2010 server
    ews.service.stats.reset()
    code, out, err = invoke("run", "full", "-c", str(config), "--json")
    failure = json.loads(out.strip().splitlines()[-1])
    assert (code, failure["status"]) == (2, "stopped-configuration"), out + err
    where = ews.info["ews_url"].split("/EWS")[0]
    said = " ".join(failure["message"].split())
    assert said.startswith(  # the setting as the configuration file has it (the engine names it so)
        f"{config}: agents.exs.settings.ews_url: EWS at {where} is Exchange 2010 (version 14.0.478.0, schema "
        "Exchange2010_SP1): "
    )
    assert "it refused RequestServerVersion Exchange2013 (ErrorInvalidServerVersion: The specified server" in said
    assert "GetUserPhoto needs Exchange 2013 or later" in said
    assert "thumbnailPhoto" in said and ews.info["password"] not in out + err
    assert ews.stats().get("photo_requests", 0) == 0  # no mailbox was asked
    code, out, _ = invoke("cs", "search", "exs", "-c", str(config), "--json")
    spaced = {doc["anchor"]: doc["pending_import_state"] for doc in json.loads(out)}
    assert spaced[PHOTO]["EXSPhotoChecksum"] and set(spaced) == {PHOTO, PLAIN, THUMB}  # the photo is kept


def test_what_the_version_probe_makes_of_each_answer() -> None:
    """Pure logic of ``_versions.older_than_2013``: the fault alone is enough (a fault may carry no
    ServerVersionInfo); a 2013+ server's per-mailbox version fault (a mixed organisation) is not the server."""
    where = "EWS at https://mail.contoso.example"
    bare = soap_fault("ErrorInvalidServerVersion", "The specified server version is invalid.")
    said = _versions.older_than_2013(where, bare, "ErrorInvalidServerVersion", "ErrorInvalidServerVersion: x")
    assert said is not None and said.startswith(f"{where} is older than Exchange 2013 (its answer names no version): ")
    header = SERVER_VERSIONS["Exchange2013"].header()
    mixed = soap_fault("ErrorInvalidSchemaVersionForMailboxVersion", "The mailbox ...", header=header)
    assert _versions.older_than_2013(where, mixed, "ErrorInvalidSchemaVersionForMailboxVersion", "x") is None
    assert _versions.older_than_2013(where, mixed, "ErrorInvalidServerVersion", "x") is None  # names itself 15
    assert _versions.older_than_2013(where, b"<not xml", None, "None") is None
    old = SERVER_VERSIONS["Exchange2010_SP1"].header().encode()
    assert "is Exchange 2010 (version 14.0.478.0, schema Exchange2010_SP1) (its ServerVersionInfo). " in (
        _versions.older_than_2013(where, old, None, "None") or ""
    )
    assert b"<m:Email>a&amp;b@contoso.example</m:Email>" in _versions.probe("a&b@contoso.example")


def test_doctor_says_an_exchange_2010_server_cannot_serve_photos(tmp_path: Path) -> None:
    with EwsEmulator(EwsConfig(server_version="Exchange2010_SP1", extended_protection=True)) as emu:
        emu.add_mailbox(PHOTO, photo=photo(1))
        _listing(tmp_path, PHOTO)
        result = _agent(emu, tmp_path).check()
    assert not result.ok and "is Exchange 2010 (version 14.0.478.0" in result.detail
    assert "GetUserPhoto needs Exchange 2013 or later" in result.detail


def test_a_mailbox_on_an_exchange_2010_server_of_a_mixed_organisation_is_its_own_error_saying_why(
    ews: EwsEmulator, tmp_path: Path
) -> None:
    """In a mixed organisation EWS (2013+) cannot serve a mailbox still on an Exchange 2010 server
    (ErrorInvalidSchemaVersionForMailboxVersion: "a proxy request that was sent to another server is not
    able to service the request due to a versioning mismatch"). That is the one mailbox's condition,
    asked once, its photo kept: before, it was a generic ews-error ("GetUserPhoto for ...: EWS answered
    ...") that said neither what it means nor what to do; now it names the person, the server's release
    and the way out. The other mailboxes, and the step, go on."""
    old = ["old1@contoso.example", "old2@contoso.example"]
    for email in old:
        ews.add_mailbox(email, photo=photo(5), server_version="Exchange2010_SP1")
    _listing(tmp_path, old[0], PHOTO, PLAIN, old[1])  # the probe asks the first: the step goes on all the same
    agent = _agent(ews, tmp_path)
    entries, _ = _imported(agent)
    errors = {anchor: entry.error for anchor, entry in entries.items() if entry.error is not None}
    assert {anchor: error.name for anchor, error in errors.items()} == dict.fromkeys(old, "mailbox-on-old-exchange")
    for email in old:
        detail = errors[email].detail
        assert detail.startswith(f"the mailbox {email} is on an Exchange server older than 2013"), detail
        assert "ErrorInvalidSchemaVersionForMailboxVersion" in detail and "thumbnailPhoto" in detail
        assert "New-MoveRequest" in detail and "photo_error_recheck_hours" in detail
    assert entries[PHOTO].attributes["EXSPhoto"] and agent.metrics["retries"] == 0


def test_an_ews_application_access_policy_lets_the_agent_through_by_its_user_agent(tmp_path: Path) -> None:
    """EWS identifies applications by their user agent, and an organisation that enforces an allow list
    (Set-OrganizationConfig -EwsApplicationAccessPolicy EnforceAllowList -EwsAllowList ...) lets through
    only those it lists ("Controlling client application access to EWS in Exchange"). The agent sent
    requests' own "python-requests/2.x", which names every Python client and changes with each upgrade:
    an allow list of "mvsync/*" refused it (every mailbox 403; the step stopped-authentication) and its
    message did not say which user agent to allow. Now it says "mvsync/<version> (exchange-server-photos)",
    and a policy that leaves it out stops the step once, naming the user agent and the allow list."""
    config = EwsConfig(extended_protection=True, ews_allow_list=("OWA/*", "mvsync/*"))
    with EwsEmulator(config) as emu:
        emu.add_mailbox(PHOTO, photo=photo(1))
        _listing(tmp_path, PHOTO, PLAIN)
        emu.add_mailbox(PLAIN)
        entries, _ = _imported(_agent(emu, tmp_path))
        assert entries[PHOTO].attributes["EXSPhoto"] and emu.stats().get("blocked", 0) == 0
        emu.config.ews_allow_list = ("OWA/*",)  # the agent left out
        with pytest.raises(AuthenticationError) as caught:
            _imported(_agent(emu, tmp_path / "b", mailbox_file=tmp_path / "mailboxes.txt"))
    said = str(caught.value)
    assert "(HTTP 403 Forbidden for " in said and "EwsAllowList" in said
    assert f'"mvsync/{__version__} (exchange-server-photos)"' in said and "mvsync/*" in said


def test_ews_disabled_for_the_organisation_stops_the_step_once(tmp_path: Path) -> None:
    """Set-OrganizationConfig -EwsEnabled $false: every request refused (403), one stop naming the host
    and the account, and what to check (the emulator's ews_enabled=False)."""
    with EwsEmulator(EwsConfig(extended_protection=True, ews_enabled=False)) as emu:
        emails = _many_mailboxes(emu, tmp_path, 20)
        with pytest.raises(AuthenticationError) as caught:
            _imported(_agent(emu, tmp_path, concurrency=2))
        asked = emu.stats()["blocked"]
    assert "EwsEnabled" in str(caught.value) and emu.info["password"] not in str(caught.value)
    assert asked < len(emails)  # the two probes and a few mailboxes, not one error per mailbox


@pytest.mark.parametrize("concurrency", [1, 4])
def test_the_first_mailboxes_refused_one_by_one_are_their_own_errors_not_the_account(
    ews: EwsEmulator, tmp_path: Path, concurrency: int
) -> None:
    """The first two mailboxes of the list are refused on their own (one whose permissions were
    restricted, ErrorAccessDenied; one outside the account's impersonation scope, ErrorImpersonateUserDenied),
    the other 18 answer. Before, the second refusal asked the first again, which was refused too, and
    the step stopped "refused everywhere" (stopped-authentication) with 18 readable mailboxes never
    asked. Now two refusals and no read is not "every mailbox": each is its own permission-issue."""
    emails = _many_mailboxes(ews, tmp_path, 20)
    ews.set_answer(emails[0], 500, soap_fault("ErrorAccessDenied", "Access is denied. Check credentials."))
    ews.set_answer(emails[1], 500, soap_fault("ErrorImpersonateUserDenied", "The account may not impersonate."))
    entries, _ = _imported(_agent(ews, tmp_path, concurrency=concurrency))
    errors = {anchor: entry.error for anchor, entry in entries.items() if entry.error is not None}
    assert {anchor: error.name for anchor, error in errors.items()} == dict.fromkeys(emails[:2], "permission-issue")
    assert all(entries[email].attributes["EXSPhoto"] for email in emails[2:])


def test_a_mailbox_refused_with_a_bare_403_names_the_account_and_what_to_check(
    ews: EwsEmulator, tmp_path: Path
) -> None:
    """Found in a bad-day pass: a mailbox EWS refused with a bare 403 was "EWS refused to read the photo
    of X": neither the account nor what to check, nor that its photo is kept."""
    emails = _many_mailboxes(ews, tmp_path, 4)
    ews.set_answer(emails[1], 403, b"")
    entries, _ = _imported(_agent(ews, tmp_path))
    error = entries[emails[1]].error
    assert error is not None and error.name == "permission-issue"
    assert error.detail.startswith(f"EWS refused {ews.info['username']} the photo of {emails[1]} (HTTP 403"), error
    assert "any photo imported before is kept" in error.detail and "ApplicationImpersonation" in error.detail


def test_an_account_refused_everywhere_stops_after_the_first_few_mailboxes_not_the_whole_list(
    ews: EwsEmulator, tmp_path: Path
) -> None:
    """Every mailbox refuses the account (its ApplicationImpersonation role removed) on the first run:
    the step stops (stopped-authentication) once the first REFUSALS_TO_STOP distinct mailboxes were
    refused and none was read, having asked no more than those and what was in flight, not the whole
    list; the message says how many were refused."""
    emails = _many_mailboxes(ews, tmp_path, 60)
    refused = soap_fault("ErrorImpersonateUserDenied", "The account does not have permission to impersonate.")
    for email in emails:
        ews.set_answer(email, 500, refused)
    with pytest.raises(AuthenticationError) as caught:
        _imported(_agent(ews, tmp_path, concurrency=4))
    asked = sum(len(ews.canned_times(email)) for email in emails)
    first = _client.REFUSALS_TO_STOP
    assert first <= asked <= first + 4, asked  # at most the ones in flight besides
    said = str(caught.value)
    assert f"and the first {first} mailboxes asked were refused too, none read" in said, said
    assert caught.value.status == "stopped-authentication"


def test_a_few_mailboxes_due_and_refused_are_their_own_errors_when_one_read_before_still_answers(
    ews: EwsEmulator, tmp_path: Path
) -> None:
    """A delta import where only two mailboxes are due (they failed last time) and both are refused
    on their own: before, the second refusal asked the first again and the step stopped "refused
    everywhere", every hour. Now, with fewer mailboxes due than REFUSALS_TO_STOP, all refused, a mailbox
    read in an earlier run is asked again; it answers, so each refusal is the mailbox's own error."""
    a, b = "a@contoso.example", "b@contoso.example"
    ews.add_mailbox(a, photo=photo(3))
    ews.add_mailbox(b, photo=photo(4))
    _listing(tmp_path, PHOTO, a, b)
    for email in (a, b):
        ews.set_answer(email, 500, soap_fault("ErrorInvalidSmtpAddress", "No mailbox associated."))
    _, watermark = _imported(_agent(ews, tmp_path))
    for email in (a, b):
        ews.set_answer(email, 500, soap_fault("ErrorAccessDenied", "Access is denied."))
    entries, _ = _imported(_agent(ews, tmp_path, photo_error_recheck_hours=0), watermark)
    assert {anchor: entry.error.name for anchor, entry in entries.items() if entry.error} == dict.fromkeys(
        (a, b), "permission-issue"
    )
    assert PHOTO not in entries  # not due: only asked again to judge the refusals


def _kept_or_named(entries: dict[str, Any], expected: dict[str, bool]) -> list[str]:
    """The mailboxes of ``entries`` that are errors, each naming its mailbox; every other one as
    ``expected`` says (True: its photo imported; False: no photo). Returns the errors' mailboxes."""
    errors = []
    for anchor, entry in entries.items():
        if entry.error is not None:
            assert anchor in entry.error.detail and "kept" in entry.error.detail, entry.error
            errors.append(anchor)
        else:
            assert bool(entry.attributes.get("EXSPhoto")) == expected[anchor], (anchor, entry.attributes)
    return errors


def test_a_version_check_that_lands_on_an_exchange_2010_server_of_a_mixed_pool_does_not_stop_the_step(
    tmp_path: Path,
) -> None:
    """Behind one EWS URL, a load balancer spreads requests over an Exchange 2013 and an Exchange 2010
    server (the emulator's pool, round robin: an ASSUMPTION). The version check's probe landed on the
    2010 one, and the step stopped (stopped-configuration, "is Exchange 2010") though half its requests
    would have worked. Now the probe is asked again on new connections (VERSION_PROBES in all), and
    one answer from 2013 or later lets the step go on, counting the older answers; what the 2010
    server then answers a photo request (404, an ASSUMPTION) takes no photo away."""
    config = EwsConfig(extended_protection=True, pool=("Exchange2013", "Exchange2010_SP1"))
    with EwsEmulator(config) as emu:
        emu.add_mailbox(PHOTO, photo=photo(1))
        emu.add_mailbox(PLAIN)
        _listing(tmp_path, PHOTO, PLAIN)
        agent = _agent(emu, tmp_path, concurrency=1)
        entries, _ = _imported(agent)
        assert emu.stats()["answered_by_Exchange2010_SP1"] >= 1
    _kept_or_named(entries, {PHOTO: True, PLAIN: False})
    assert agent.metrics["older_server_answers"] == 1


def test_a_mixed_pool_that_answers_some_photo_requests_from_exchange_2010_keeps_their_photos(
    ews: EwsEmulator, tmp_path: Path
) -> None:
    """The version check met the 2013 server of a mixed pool, then photo requests landed on the 2010 one,
    whose REST GetUserPhoto answers 404 (an ASSUMPTION: undocumented). Before, 404 is "no photo": each
    such mailbox's photo was taken out of the connector space (and thumbnailPhoto cleared at the next
    export). Now a 404 for a mailbox that had a photo is asked again in SOAP with RequestServerVersion
    Exchange2013, on a new connection while the 2010 server answers it: only a server that knows that
    version saying "no photo" removes it, and a picture in its answer is the photo (here every re-ask
    reaches a 2013 server within the pool's turn, so nobody gets an error; an answer from 2010 every time:
    the next test)."""
    emails = _many_mailboxes(ews, tmp_path, 12)
    _, watermark = _imported(_agent(ews, tmp_path))
    ews.service.pool = [
        SERVER_VERSIONS["Exchange2010_SP1"],
        SERVER_VERSIONS["Exchange2013"],
        SERVER_VERSIONS["Exchange2013"],
    ]
    agent = _agent(ews, tmp_path, photo_recheck_hours=0, concurrency=1)
    entries, _ = _imported(agent, watermark)
    assert ews.service.stats.counters["answered_by_Exchange2010_SP1"] > 0  # some requests met the 2010 server
    assert not _kept_or_named(entries, dict.fromkeys(emails, True)), entries  # and every photo was kept
    for email in emails:
        assert _STATES[agent.context.data_dir][email]["checksum"], email


def test_a_404_whose_soap_re_ask_meets_exchange_2010_every_time_is_the_mailboxs_error_its_photo_kept(
    ews: EwsEmulator, tmp_path: Path
) -> None:
    """The REST request and every SOAP re-ask of its 404 land on the pool's 2010 server (a balancer's
    affinity, say): asked VERSION_PROBES times in all on new connections, then the mailbox's
    server-older-than-2013 error naming the person, its photo kept. Before, the first re-ask that met 2010
    was the error at once, where the next connection might have reached a newer server."""
    _listing(tmp_path, PHOTO)
    _, watermark = _imported(_agent(ews, tmp_path))
    newer, older = SERVER_VERSIONS["Exchange2013"], SERVER_VERSIONS["Exchange2010_SP1"]
    ews.service.pool = [newer, newer, *[older] * (1 + _client.VERSION_PROBES), newer]  # the checks, then 2010
    agent = _agent(ews, tmp_path, photo_recheck_hours=0, concurrency=1, endpoint_check_hours=0)
    entries, _ = _imported(agent, watermark)
    error = entries[PHOTO].error
    assert error is not None and error.name == "server-older-than-2013", entries
    detail = " ".join(error.detail.split())
    assert f"GetUserPhoto for {PHOTO} answered 404 (no photo), and asked again in SOAP, 5 times" in detail, detail
    assert "kept" in detail and "out of that pool" in detail, detail
    assert ews.service.stats.counters["answered_by_Exchange2010_SP1"] == 1 + _client.VERSION_PROBES
    assert _STATES[agent.context.data_dir][PHOTO]["checksum"]  # the photo is kept


def test_a_step_within_endpoint_check_hours_sends_no_request_but_the_photos(ews: EwsEmulator, tmp_path: Path) -> None:
    """Every step asked ews_url two SOAP questions before the first mailbox (is it EWS; is it Exchange 2013
    or later), two requests more than its photos. Now a check that passed is kept in the agent state for
    endpoint_check_hours (24): a delta within it sends the photo requests alone (measured: 2 fewer than
    the same delta with endpoint_check_hours = 0, which checks every step)."""
    _, watermark = _imported(_agent(ews, tmp_path))  # checks, and keeps that it did
    every = _agent(ews, tmp_path, photo_recheck_hours=0, endpoint_check_hours=0)
    _imported(every, watermark)
    cached = _agent(ews, tmp_path, photo_recheck_hours=0)
    entries, _ = _imported(cached, watermark)
    assert not entries  # all three unchanged (304)
    assert (every.metrics["requests"], cached.metrics["requests"]) == (3 + 2, 3)


def test_a_cached_check_is_made_again_before_a_no_photo_removes_a_photo(ews: EwsEmulator, tmp_path: Path) -> None:
    """Within endpoint_check_hours the server behind ews_url became an Exchange 2010 one, whose REST form
    answers 404 ("no photo"; an ASSUMPTION). The first "no photo" that would remove a photo runs the
    skipped check first: the step stops (stopped-configuration, naming Exchange 2010) and keeps the photo."""
    _listing(tmp_path, PHOTO)
    _, watermark = _imported(_agent(ews, tmp_path))
    ews.service.version = SERVER_VERSIONS["Exchange2010_SP1"]
    agent = _agent(ews, tmp_path, photo_recheck_hours=0)
    with pytest.raises(ConfigurationError) as caught:
        _imported(agent, watermark)
    assert "is Exchange 2010 (version 14.0.478.0" in str(caught.value)
    assert _STATES[agent.context.data_dir][PHOTO]["checksum"]  # the photo is kept


def _alternating(ews: EwsEmulator, *servers: str) -> None:
    """From the next request on, the servers of a mixed pool answer in this order, in turn (round robin)."""
    ews.service.pool = [SERVER_VERSIONS[name] for name in servers]
    ews.service._turn = 0


def test_a_photo_the_soap_re_ask_finds_after_a_404_from_exchange_2010_is_imported(
    ews: EwsEmulator, tmp_path: Path
) -> None:
    """A mixed pool (Exchange 2010, Exchange 2013 in turn; an ASSUMPTION): each mailbox's REST GetUserPhoto
    lands on 2010, which answers 404, and the SOAP re-ask of that 404 lands on 2013, which sends the
    picture. Before, that answer made each mailbox an ews-error for the run ("asked again in SOAP it
    answered HTTP 200"), so a changed photo waited photo_error_recheck_hours. Now the SOAP answer is a
    GetUserPhoto answer like the REST one: its PictureData is taken, validated as a REST photo is, with
    the SOAP answer's ETag; an unchanged one stages nothing."""
    emails = _many_mailboxes(ews, tmp_path, 3)
    _, watermark = _imported(_agent(ews, tmp_path))
    before = dict(_STATES[tmp_path / "data"])
    changed = photo(99, size=120)
    ews.set_photo(emails[0], changed)  # Set-UserPhoto meanwhile: a new picture, a new ETag
    # the check (an empty SOAP request, then the probe) meets 2010 then 2013; then each REST request 2010
    _alternating(ews, "Exchange2010_SP1", "Exchange2013")
    agent = _agent(ews, tmp_path, photo_recheck_hours=0, endpoint_check_hours=0, concurrency=1)
    entries, _ = _imported(agent, watermark)
    assert {anchor: entry.error for anchor, entry in entries.items() if entry.error} == {}
    assert set(entries) == {emails[0]}  # the other two: the same picture, nothing staged
    served = ews.service.mailboxes[emails[0]].variants[120]  # what Exchange 2013 sends at HR648x648
    assert entries[emails[0]].attributes["EXSPhoto"] == served
    state = _STATES[tmp_path / "data"]
    etag = ews.service.etag(ews.service.mailboxes[emails[0]], ("photo", 120))
    assert state[emails[0]]["etag"] == etag  # the SOAP answer's ETag
    assert [state[e]["checksum"] for e in emails[1:]] == [before[e]["checksum"] for e in emails[1:]]
    assert ews.stats()["answered_by_Exchange2010_SP1"] == 1 + len(emails)  # the empty check, each REST request


@pytest.mark.parametrize("accept_ad_thumbnail", [False, True])
def test_the_ad_thumbnail_the_soap_re_ask_finds_follows_the_thumbnail_rule(
    ews: EwsEmulator, tmp_path: Path, accept_ad_thumbnail: bool
) -> None:
    """The mailbox's photo was removed (Remove-UserPhoto); Exchange then serves its AD thumbnailPhoto at
    every size. Its REST request met a server without GetUserPhoto (404, once) and the SOAP re-ask found the
    thumbnail: that is "no photo" unless accept_ad_thumbnail, as when the REST form sends it (the same
    bytes at HR48x48), not the mailbox's error as before."""
    email = "both@contoso.example"
    ews.add_mailbox(email, photo=photo(7), thumbnail=_thumbnail())
    _listing(tmp_path, email)
    settings: dict[str, Any] = {"accept_ad_thumbnail": accept_ad_thumbnail}
    _, watermark = _imported(_agent(ews, tmp_path, **settings))
    ews.set_photo(email, None)
    ews.set_answer(email, 404, times=1)
    entries, _ = _imported(_agent(ews, tmp_path, photo_recheck_hours=0, **settings), watermark)
    assert entries[email].error is None, entries[email].error
    assert entries[email].attributes.get("EXSPhoto") == (_thumbnail() if accept_ad_thumbnail else None)


def test_a_picture_the_soap_re_ask_finds_that_is_no_picture_is_the_mailboxs_error(
    ews: EwsEmulator, tmp_path: Path
) -> None:
    """PictureData that is no picture (damaged bytes) is checked as a REST body is: the mailbox's error
    naming it and what came, the photo imported before kept."""
    _listing(tmp_path, PHOTO)
    _, watermark = _imported(_agent(ews, tmp_path))
    ews.service.mailboxes[PHOTO].variants = dict.fromkeys((48, 64, 96, 120, 240, 360, 432, 504, 648), b"\xff\xd8junk")
    ews.set_answer(PHOTO, 404, times=1)
    entries, _ = _imported(_agent(ews, tmp_path, photo_recheck_hours=0), watermark)
    error = entries[PHOTO].error
    assert error is not None and error.name != "ews-error", error
    assert PHOTO in error.detail and "base64 PictureData of a SOAP answer" in error.detail and "kept" in error.detail
    assert _STATES[tmp_path / "data"][PHOTO]["checksum"]


_OLDER_FAULT = "ErrorInvalidServerVersion"


def test_a_mixed_pool_whose_exchange_2010_faults_the_rest_form_is_asked_again_on_a_new_connection(
    tmp_path: Path,
) -> None:
    """A mixed pool (2013, 2010 in turn; an ASSUMPTION) whose Exchange 2010 server answers the REST
    GetUserPhoto with the SOAP fault ErrorInvalidServerVersion (the emulator's older_rest option; an
    ASSUMPTION too: undocumented) rather than 404. Before, each mailbox it answered was a generic
    ews-error ("EWS answered ErrorInvalidServerVersion"), not asked again in the run. Now, the check having
    met the 2013 server, the request is asked again on a new connection, which lands on 2013: every photo."""
    config = EwsConfig(
        extended_protection=True, pool=("Exchange2013", "Exchange2010_SP1"), older_rest="ErrorInvalidServerVersion"
    )
    with EwsEmulator(config) as emu:
        emails = _many_mailboxes(emu, tmp_path, 4)
        agent = _agent(emu, tmp_path, concurrency=1)
        entries, _ = _imported(agent)
        faulted = emu.stats()["answered_by_Exchange2010_SP1"]
    assert {anchor: entry.error for anchor, entry in entries.items() if entry.error} == {}
    assert all(entries[email].attributes["EXSPhoto"] for email in emails)
    # the check's probe met 2010 once; then each mailbox's first request, asked again once
    assert (faulted, agent.metrics["older_server_answers"]) == (1 + len(emails), 1 + len(emails))


def test_a_mailbox_whose_requests_exchange_2010_faults_every_time_is_its_own_error_its_photo_kept(
    ews: EwsEmulator, tmp_path: Path
) -> None:
    """The check met Exchange 2013, but one mailbox's REST requests are answered by an Exchange 2010 server
    every time (ErrorInvalidServerVersion with its ServerVersionInfo; a balancer's affinity, say): asked
    VERSION_PROBES times in all on new connections, then the mailbox's server-older-than-2013 error naming
    the person, the release and what to do, its photo kept, asked again after photo_error_recheck_hours;
    the other mailboxes read as usual."""
    _listing(tmp_path, PHOTO, THUMB)
    _, watermark = _imported(_agent(ews, tmp_path))
    header = SERVER_VERSIONS["Exchange2010_SP1"].header()
    ews.set_answer(PHOTO, 500, soap_fault(_OLDER_FAULT, "The specified server version is invalid.", header=header))
    agent = _agent(ews, tmp_path, photo_recheck_hours=0, endpoint_check_hours=0)
    entries, _ = _imported(agent, watermark)
    error = entries[PHOTO].error
    assert error is not None and error.name == "server-older-than-2013", error
    detail = " ".join(error.detail.split())
    assert detail.startswith(f"GetUserPhoto for {PHOTO} was answered by Exchange 2010 (version 14.0.478.0"), detail
    said = "to all 5 requests (each after the first on a new connection)"
    assert f"({_OLDER_FAULT}: The specified server version is invalid.), {said}" in detail
    assert "kept" in detail and "photo_error_recheck_hours" in detail and "out of that pool" in detail
    assert len(ews.canned_times(PHOTO)) == _client.VERSION_PROBES
    assert _STATES[agent.context.data_dir][PHOTO]["checksum"]  # the photo is kept
    assert set(entries) == {PHOTO}  # THUMB read as usual: the same "no photo" as before, nothing staged


def test_a_cached_check_is_made_again_when_exchange_2010_faults_a_photo_request(
    ews: EwsEmulator, tmp_path: Path
) -> None:
    """Within endpoint_check_hours the server behind ews_url became an Exchange 2010 one that answers the
    REST form with ErrorInvalidServerVersion: the check left for later is made then, and the step stops
    (stopped-configuration, naming Exchange 2010), the photo kept, rather than each mailbox an error."""
    _listing(tmp_path, PHOTO)
    _, watermark = _imported(_agent(ews, tmp_path))
    ews.service.version = SERVER_VERSIONS["Exchange2010_SP1"]
    ews.service.config.older_rest = "ErrorInvalidServerVersion"
    agent = _agent(ews, tmp_path, photo_recheck_hours=0)
    with pytest.raises(ConfigurationError) as caught:
        _imported(agent, watermark)
    assert "is Exchange 2010 (version 14.0.478.0" in str(caught.value)
    assert _STATES[agent.context.data_dir][PHOTO]["checksum"]


def test_an_exchange_2010_fault_when_the_check_met_no_newer_server_is_the_mailboxs_error_at_once(
    ews: EwsEmulator, tmp_path: Path
) -> None:
    """The check had no answer from EWS (a gateway's 504 to both SOAP requests: inconclusive, so the step
    goes on), and a photo request is answered by Exchange 2010 (ErrorInvalidServerVersion): nothing shows a
    newer server behind ews_url, so no pool to try again on: the mailbox's server-older-than-2013 error at
    once (asked once), its photo kept, saying the check could not tell."""
    _listing(tmp_path, PHOTO)
    _, watermark = _imported(_agent(ews, tmp_path))
    header = SERVER_VERSIONS["Exchange2010_SP1"].header()
    ews.set_answer(PHOTO, 500, soap_fault(_OLDER_FAULT, "The specified server version is invalid.", header=header))
    ews.set_faults({"504": 1.0, "retry_after": None, "path_pattern": r"\.asmx$"})  # the SOAP requests only
    agent = _agent(ews, tmp_path, photo_recheck_hours=0, endpoint_check_hours=0)
    entries, _ = _imported(agent, watermark)
    error = entries[PHOTO].error
    assert error is not None and error.name == "server-older-than-2013", error
    assert "the check before the first mailbox could not tell" in error.detail and "kept" in error.detail
    assert len(ews.canned_times(PHOTO)) == 1 and agent.metrics["retries"] == 0
    assert _STATES[agent.context.data_dir][PHOTO]["checksum"]
