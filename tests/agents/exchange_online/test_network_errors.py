"""Network failures toward Graph name the host, the port and the kind of failure; a changed
``graph_url`` is noticed instead of delta imports silently following the old host's link."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import certifi
import pytest
import requests

from connector.agents.exchange_online._graph import UNANSWERED_WARNING_S
from connector.agents.exchange_online._import import Importer, Watermark
from connector.emulator import TEST_HOSTNAME
from connector.engine import MemoryState, Page
from connector.net import CA_BUNDLE_VARIABLES, describe_request_error, verifying_session
from connector.sdk import (
    AuthenticationError,
    ConfigurationError,
    CSEntryChange,
    Deferred,
    ExportStatus,
    ImportMode,
    ImportRun,
    ServerDownError,
    Stop,
    StopRunError,
)
from tests.agents.exchange_online.conftest import (
    authority_outage_at_open,
    imported,
    make_connector,
    photo_changes,
    run_import,
)
from tests.harness.sockets import connect_proxy, silent_server


def test_an_unreachable_graph_url_names_host_port_and_kind(make_emulator: Any, tmp_path: Path, cache_key: str) -> None:
    emu = make_emulator(users=5)
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound and never listening: refused, and no other process can take it
        port = closed.getsockname()[1]
        conn = make_connector(emu, tmp_path, graph_url=f"https://127.0.0.1:{port}/v1.0", max_attempts=2)
        conn.open()  # the token comes from the (reachable) authority
        try:
            with pytest.raises(ServerDownError) as caught:
                run_import(conn, ImportMode.FULL, page_size=10)
        finally:
            conn.close()
    message = str(caught.value)
    assert message.startswith(f"Graph at 127.0.0.1:{port} did not answer: connection refused (nothing listens there)")
    assert "no other request had a working answer meanwhile" in message and "Bearer" not in message


def test_a_graph_that_goes_away_mid_import_stops_the_step_instead_of_failing_each_user(
    make_emulator: Any, tmp_path: Path, cache_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Graph (or the way to it) goes down after the first page: the step stops as stopped-server-down
    once a request has used its attempts while nothing answered, and the users not fetched yet get no
    per-object error (an error recheck window would then put them off). It used to take every user
    through their own retries: 751 `graph-unavailable` errors and 64 s for a 2,000-user tenant."""
    emu = make_emulator(users=120, photo_ratio=1.0)
    ca_bundle = _ca_copy(emu, tmp_path)  # the emulator removes its own when it stops
    conn = make_connector(emu, tmp_path, max_attempts=3, backoff_max_s=0.2, ca_bundle=ca_bundle)
    caplog.set_level(logging.WARNING, logger="mvsync.agent.exchange_online.graph")
    started = time.monotonic()
    message = _stopped_by_an_outage_after_the_first_page(conn, emu.stop)
    assert f"Graph at {urlsplit(emu.info['graph_url']).netloc} did not answer: " in message, message
    assert "nothing is lost (users not fetched yet keep what they had" in message
    # every worker thread met the outage: one warning says so, not one per request and attempt
    warnings = [r.getMessage() for r in caplog.records if "trying again" in r.getMessage()]
    assert 1 <= len(warnings) <= 1 + (time.monotonic() - started) // UNANSWERED_WARNING_S, warnings


def _stopped_after_the_first_page(
    conn: Any, event: Callable[[], None], stop: type[Exception]
) -> tuple[pytest.ExceptionInfo[Exception], list[Page]]:
    """A full import in pages of 20 that meets ``event`` once its first page is committed and must end
    with ``stop``: what it raised, and the pages committed."""
    pages: list[Page] = []

    def after_the_first_page(number: int, page: Page) -> None:
        pages.append(page)
        if number == 1:
            event()

    conn.open()
    try:
        with pytest.raises(stop) as caught:
            run_import(conn, ImportMode.FULL, page_size=20, on_page=after_the_first_page)
    finally:
        conn.close()
    return caught, pages


def _stopped_by_an_outage_after_the_first_page(conn: Any, outage: Callable[[], None]) -> str:
    """A full import in pages of 20 that meets ``outage`` once its first page is committed: the stop
    message of the ServerDownError it must end with. No user got a per-object error meanwhile, and
    the step stopped well before the run-wide retry budget ran dry."""
    caught, pages = _stopped_after_the_first_page(conn, outage, ServerDownError)
    entries = [entry for page in pages for entry in page.entries]
    # (a page holds the users whose answers are in: one still under way when it is cut goes to the next,
    # so the first page of 20 users may hold 19: seen on a busy machine)
    assert entries and not [entry.error for entry in entries if entry.error is not None]
    assert conn.metrics["retry_budget_spent"] < conn.settings.retry_budget / 2
    return str(caught.value)


@pytest.mark.parametrize(
    ("faults", "status"),
    [
        pytest.param({"504": 1.0, "retry_after": None}, 504, id="every-request-504"),
        # Graph's front door works, the mailboxes behind it do not: 200 envelopes of failed items
        pytest.param({"503": 1.0, "retry_after": None, "path_pattern": "/photo"}, 503, id="every-photo-item-503"),
    ],
)
def test_a_graph_that_answers_everything_with_5xx_stops_the_step_instead_of_failing_each_user(
    make_emulator: Any, tmp_path: Path, cache_key: str, faults: dict[str, Any], status: int
) -> None:
    """An outage that still answers: every request (or every photo item of every ``$batch``) gets a 5xx
    without Retry-After. Before, each user went through its own retries until the run-wide budget ran
    dry: a 400-user tenant took 286 s and left 284 `graph-unavailable` errors."""
    emu = make_emulator(users=120, photo_ratio=1.0)
    conn = make_connector(emu, tmp_path, max_attempts=3, backoff_max_s=0.2)
    message = _stopped_by_an_outage_after_the_first_page(conn, lambda: emu.admin.set_faults(faults))
    assert message.startswith(f"Graph at {urlsplit(emu.info['graph_url']).netloc} answered with HTTP {status}"), message
    assert "a request that had worked before failed too); nothing is lost" in message


def test_a_batch_item_that_meets_graph_down_keeps_the_other_answers_of_its_batch(
    make_emulator: Any, tmp_path: Path, cache_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outage verdict comes from one item of a ``$batch``: the batch's other answers are the
    outcomes of their users (committed before the step stops, see tests/engine/test_stream.py), and
    the item itself is a ``Stop``. They used to be dropped with the exception and fetched again by
    the next run. (Whether Graph is down is the recheck's verdict, tested above; here it says so.)"""
    emu = make_emulator(users=12, photo_ratio=0.0)
    first, broken, third = sorted(u["id"] for u in emu.admin.users() if u.get("mailbox") == "cloud")[:3]
    emu.admin.set_faults({"504": 1.0, "retry_after": None, "path_pattern": f"/users/{broken}/photo"})
    conn = make_connector(emu, tmp_path, max_attempts=1)
    monkeypatch.setattr(conn.graph, "confirmed_down", lambda cancel=None: True)
    conn.open()
    try:
        importer = Importer(conn, ImportRun(mode=ImportMode.FULL, state=MemoryState({})))
        tasks = [item for uid in (first, broken, third) for item in importer._probe(uid, {"mail": uid}, None, None)]
        results = importer.worker.run([t for t in tasks if isinstance(t, Deferred)], threading.Event())
    finally:
        conn.close()
    staged = [[item.anchor for item in items if isinstance(item, CSEntryChange)] for items in results]
    assert staged == [[first], [], [third]]
    stop = results[1][0]
    assert isinstance(stop, Stop) and isinstance(stop.error, ServerDownError)
    assert "answered with HTTP 504" in str(stop.error)


@pytest.mark.parametrize(
    ("users", "broken_count"),
    [
        pytest.param(1, 1, id="the-tenants-only-mailbox"),  # the last request, nothing else answering meanwhile
        pytest.param(60, 10, id="ten-of-sixty"),  # the last ones retried once the rest is done
    ],
)
def test_broken_mailboxes_are_their_users_errors_and_the_run_completes(
    make_emulator: Any, tmp_path: Path, cache_key: str, users: int, broken_count: int
) -> None:
    """The other side of the outage rule: a 5xx is an answer about one request. Mailboxes whose photo
    requests fail with 504 every time are per-object errors, not an outage, even when nothing else is
    left to answer (a photo read that worked, or the directory, is asked again and answers)."""
    emu = make_emulator(users=users, photo_ratio=1.0)
    cloud = sorted(u["id"] for u in emu.admin.users() if u.get("mail") and u.get("mailbox") == "cloud")
    broken = cloud[-broken_count:]
    emu.admin.set_faults({"504": 1.0, "retry_after": None, "path_pattern": f"/users/({'|'.join(broken)})/photo"})
    conn = make_connector(emu, tmp_path, max_attempts=3, backoff_max_s=0.2)
    conn.open()
    try:
        entries, _ = run_import(conn, ImportMode.FULL, page_size=20)
    finally:
        conn.close()
    failed = {e.anchor: e.error.name for e in entries if e.error is not None}
    assert failed == dict.fromkeys(broken, "graph-unavailable")


def test_a_graph_that_accepts_connections_and_never_answers_stops_the_step(
    make_emulator: Any, tmp_path: Path, cache_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A wedged proxy or load balancer: connected, then silence until the timeout. Each silent
    attempt takes ``timeout_s``, so the wait is said as it happens, not only when the step stops."""
    caplog.set_level(logging.WARNING, logger="mvsync.agent.exchange_online.graph")
    emu = make_emulator(users=5)
    with silent_server() as port:
        conn = make_connector(emu, tmp_path, graph_url=f"https://127.0.0.1:{port}/v1.0", max_attempts=2, timeout_s=0.3)
        conn.open()
        try:
            with pytest.raises(ServerDownError) as caught:
                run_import(conn, ImportMode.FULL, page_size=10)
        finally:
            conn.close()
    assert str(caught.value).startswith(
        f"Graph at 127.0.0.1:{port} did not answer: connected, but no answer within the timeout (2 attempts over "
    )
    assert [r.getMessage() for r in caplog.records] == [
        f"Graph at 127.0.0.1:{port}: connected, but no answer within the timeout (attempt 1 of 2); trying again"
    ]


def test_an_authority_whose_certificate_is_not_trusted_is_named_with_the_fix(
    make_emulator: Any, tmp_path: Path, cache_key: str
) -> None:
    """A TLS-inspecting proxy, or a private cloud's CA missing from ca_bundle: the stop names the
    authority and says what to set, instead of "SSLError"."""
    emu = make_emulator(users=1)
    message = authority_outage_at_open(make_connector(emu, tmp_path, ca_bundle=Path(certifi.where())))  # public CAs
    assert message == (  # the file set, which does not hold the issuer (QA: "set ca_bundle" while it was set)
        f"cannot reach the authority {emu.info['authority']}: TLS certificate not trusted ({certifi.where()}, "
        "which agents.exo.settings.ca_bundle names, does not hold the CA that issued it: add that CA to the file, "
        "or set agents.exo.settings.ca_bundle to a PEM file that holds it)"
    )


@pytest.mark.timeout(60)  # it used to wait forever: MSAL sets no timeout on the session it is given
def test_an_authority_that_accepts_connections_and_never_answers_stops_within_the_timeout(
    make_emulator: Any, tmp_path: Path, cache_key: str
) -> None:
    """A hung sign-in endpoint (a wedged proxy on the way to login.microsoftonline.com): the step
    stops as stopped-server-down, naming the authority, after ``timeout_s``; it used to hang the run,
    ``mvsync doctor`` and ``mvsync auth status`` with the agent's lock held."""
    emu = make_emulator(users=1)
    with silent_server() as port:
        authority = f"https://127.0.0.1:{port}/{emu.info['tenant_id']}"
        message = authority_outage_at_open(make_connector(emu, tmp_path, authority=authority, timeout_s=0.3))
    assert message == f"cannot reach the authority {authority}: connected, but no answer within the timeout"


def test_an_authority_that_goes_away_mid_run_is_named_not_mistaken_for_graph(
    make_emulator: Any, tmp_path: Path, cache_key: str
) -> None:
    """The access token runs out and the sign-in endpoint is unreachable: the stop names the
    authority (whose outage it is), not Graph and not a traceback from inside MSAL."""
    emu = make_emulator(users=1)
    ca_bundle = tmp_path / "ca.pem"  # the emulator removes its own when it stops
    ca_bundle.write_bytes(Path(emu.info["ca_cert"]).read_bytes())
    conn = make_connector(emu, tmp_path, ca_bundle=ca_bundle)
    conn.open()
    try:
        authority = conn.settings.resolved_authority
        conn.auth.invalidate(conn.auth.token())  # as after a 401: the next token is fetched
        emu.stop()
        with pytest.raises(AuthenticationError) as caught:
            conn.auth.token()
    finally:
        conn.close()
    assert caught.value.status == "stopped-server-down"
    assert str(caught.value) == f"cannot reach the authority {authority}: connection refused (nothing listens there)"


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (requests.exceptions.ConnectTimeout("x"), "timed out while connecting"),
        (requests.exceptions.ReadTimeout("x"), "no answer within the timeout"),
        (requests.exceptions.SSLError("CERTIFICATE_VERIFY_FAILED"), "certificate not trusted"),
        (requests.exceptions.ConnectionError("Name or service not known"), "DNS lookup failed"),
        (requests.exceptions.ConnectionError("Connection reset by peer"), "connection reset"),
    ],
)
def test_each_kind_of_network_failure_is_named(exc: requests.RequestException, kind: str) -> None:
    text = describe_request_error(exc, "https://graph.example.com/v1.0/users", "Graph")
    assert text.startswith("Graph at graph.example.com:443: ") and kind in text


def test_a_delta_link_of_another_graph_host_is_discarded_with_a_warning(
    make_emulator: Any, tmp_path: Path, cache_key: str, caplog: pytest.LogCaptureFixture
) -> None:
    emu = make_emulator(users=30)
    conn = make_connector(emu, tmp_path)
    _, watermark = imported(conn, ImportMode.FULL)
    assert watermark is not None
    saved = Watermark.loads(watermark)
    assert saved is not None
    moved = json.loads(watermark)
    moved["delta"] = saved.delta_link.replace(emu.info["graph_url"].split("/v1.0")[0], "https://old-graph.example")
    conn = make_connector(emu, tmp_path)
    conn.open()
    try:
        with caplog.at_level(logging.WARNING, logger="mvsync.agent.exchange_online"):
            delta, new_watermark = run_import(conn, ImportMode.DELTA, watermark=json.dumps(moved))
    finally:
        conn.close()
    assert any("old-graph.example" in r.getMessage() and "discarded" in r.getMessage() for r in caplog.records)
    assert new_watermark is not None and "old-graph.example" not in new_watermark
    # a new round over the same tenant: nothing changed, nothing staged (the users Graph cannot serve a
    # photo for, on-premises mailboxes, are reported again as they are on every run)
    assert [e for e in delta if e.error is None] == []


def test_a_photo_export_while_graph_is_down_leaves_every_change_pending_after_one_verdict(
    make_emulator: Any, tmp_path: Path, cache_key: str
) -> None:
    """Like the AD agent's `cd-server-down`: the changes stay pending for the next export, and only the
    requests already under way spend their attempts, not each of the changes in turn."""
    emu = make_emulator(users=30)
    ca_bundle = tmp_path / "ca.pem"  # the emulator removes its own when it stops
    ca_bundle.write_bytes(Path(emu.info["ca_cert"]).read_bytes())
    changes = photo_changes(emu, 20)
    conn = make_connector(emu, tmp_path, ca_bundle=ca_bundle, max_attempts=3, backoff_max_s=0.2, concurrency=1)
    conn.open()
    try:
        assert conn.export(changes[:1])[0].status == ExportStatus.SUCCESS  # Graph was there
        emu.stop()
        results = conn.export(changes[1:])
        requests_sent = conn.graph.stats.http_requests
    finally:
        conn.close()
    assert [r.identifier for r in results] == [c.identifier for c in changes[1:]]
    assert {(r.status, r.error_name) for r in results} == {(ExportStatus.RETRY, "cd-server-down")}
    assert "did not answer: connection refused" in results[-1].error_detail
    assert requests_sent <= 1 + 3 + 1, requests_sent  # the first change, one change's attempts (and the policy read)


@pytest.mark.parametrize(
    ("faults", "said"),
    [
        pytest.param({"504": 1.0, "retry_after": None}, "answered with HTTP 504", id="504"),
        # the other side of test_uploads_of_one_mailbox_reset_mid_request_fail_that_change_only_not_the_batch
        pytest.param({"reset": 1.0}, "did not answer: connection reset by the server", id="reset"),
    ],
)
def test_a_photo_export_while_graph_answers_only_5xx_leaves_every_change_pending(
    make_emulator: Any, tmp_path: Path, cache_key: str, faults: dict[str, Any], said: str
) -> None:
    """Graph up but failing every request with 504 (or resetting every connection): one change's
    attempts and a recheck decide it, and every change stays pending (`cd-server-down`) instead of
    each spending its own attempts."""
    emu = make_emulator(users=30)
    changes = photo_changes(emu, 12)
    conn = make_connector(emu, tmp_path, max_attempts=3, backoff_max_s=0.2, concurrency=1)
    conn.open()
    try:
        assert conn.export(changes[:1])[0].status == ExportStatus.SUCCESS  # Graph worked
        emu.admin.set_faults(faults)
        before = conn.graph.stats.http_requests
        results = conn.export(changes[1:])
        requests_sent = conn.graph.stats.http_requests - before
    finally:
        conn.close()
    assert {(r.status, r.error_name) for r in results} == {(ExportStatus.RETRY, "cd-server-down")}
    assert said in results[-1].error_detail and "had worked before failed too" in results[-1].error_detail
    assert requests_sent <= 3 + 2, requests_sent  # one change's attempts, and the recheck twice


def test_a_photo_export_to_one_broken_mailbox_fails_that_change_only(
    make_emulator: Any, tmp_path: Path, cache_key: str
) -> None:
    """The same 504s for one mailbox only, exported last and alone: that change alone is retried later."""
    emu = make_emulator(users=30)
    changes = photo_changes(emu, 6)
    conn = make_connector(emu, tmp_path, max_attempts=3, backoff_max_s=0.2, concurrency=1)
    emu.admin.set_faults({"504": 1.0, "retry_after": None, "path_pattern": f"/users/{changes[-1].anchor}/photo"})
    conn.open()
    try:
        first = conn.export(changes[:-1])
        last = conn.export(changes[-1:])
    finally:
        conn.close()
    assert {r.status for r in first} == {ExportStatus.SUCCESS}
    # its own retry at the next export (cd-error), not the outage verdict
    assert [(r.status, r.error_name, r.error_detail) for r in last] == [
        (
            ExportStatus.RETRY,
            "cd-error",
            "HTTP 504 UnknownError: Gateway timeout. Graph failed this time: the change stays pending and is sent "
            "again at the next export",
        )
    ]


@pytest.mark.parametrize("where", ["missing", "folder"])
def test_a_ca_bundle_that_is_no_file_is_a_configuration_error_naming_the_key(
    make_emulator: Any, tmp_path: Path, cache_key: str, where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It used to be requests' OSError ("Could not find a suitable TLS CA certificate bundle, invalid
    path") out of the first request: a stopped-connector-exception with a traceback in the log. The
    Exchange Server agent builds its sessions with the same helper."""
    emu = make_emulator(users=1)
    bundle = tmp_path / "ca" if where == "folder" else tmp_path / "nowhere" / "ca.pem"
    if where == "folder":
        bundle.mkdir()
    conn = make_connector(emu, tmp_path, ca_bundle=bundle)
    try:
        with pytest.raises(ConfigurationError) as caught:
            conn.open()
    finally:
        conn.close()
    reason = "is a folder, not a PEM file" if where == "folder" else "does not exist"
    assert str(caught.value) == (  # (the agent's setting, as the checks before a run name it)
        f"agents.exo.settings.ca_bundle: {bundle} {reason}: give the PEM file of the CA that issued the server's "
        "certificate"
    )
    with pytest.raises(ConfigurationError, match=r"^ca_bundle: "):
        verifying_session(bundle)
    for variable in CA_BUNDLE_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    assert verifying_session(None).verify is True  # the system's trust store (see test_trust.py)


def _through_proxy(monkeypatch: pytest.MonkeyPatch, port: int) -> None:
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    # a CA bundle in the environment that does not trust the emulator: ca_bundle must win over it
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())


def _graph_by_name(emu: Any) -> str:
    """The emulator's Graph URL under a name that is not loopback (only the test proxy resolves it)."""
    return f"https://{TEST_HOSTNAME}:{urlsplit(emu.info['graph_url']).port}/v1.0"


def test_with_a_ca_bundle_the_proxy_from_the_environment_is_still_used(
    make_emulator: Any, tmp_path: Path, cache_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server behind a TLS-inspecting proxy needs both: its CA in ca_bundle and HTTPS_PROXY. Turning
    trust_env off to keep REQUESTS_CA_BUNDLE from overriding ca_bundle used to drop the proxy too."""
    emu = make_emulator(users=12)
    with connect_proxy(hosts={TEST_HOSTNAME: "127.0.0.1"}) as (port, targets):
        _through_proxy(monkeypatch, port)
        entries, watermark = imported(make_connector(emu, tmp_path, graph_url=_graph_by_name(emu)))
    assert watermark is not None and entries and not [e for e in entries if e.error is not None]
    assert set(targets) == {f"{TEST_HOSTNAME}:{urlsplit(emu.info['graph_url']).port}"}, targets


def test_loopback_never_goes_through_the_proxy(
    make_emulator: Any, tmp_path: Path, cache_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No proxy can reach this machine's loopback: `mvsync demo` works where HTTPS_PROXY is set."""
    emu = make_emulator(users=5)
    with connect_proxy() as (port, targets):
        _through_proxy(monkeypatch, port)
        entries, watermark = imported(make_connector(emu, tmp_path))
    assert watermark is not None and entries and targets == []


def test_a_proxy_that_refuses_the_tunnel_is_named_with_what_to_do(
    make_emulator: Any, tmp_path: Path, cache_key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    emu = make_emulator(users=1)
    with connect_proxy(refuse="407 Proxy Authentication Required") as (port, targets):
        _through_proxy(monkeypatch, port)
        conn = make_connector(emu, tmp_path, graph_url=_graph_by_name(emu), max_attempts=2)
        conn.open()  # the token comes from the authority, on loopback: no proxy
        try:
            with pytest.raises(ServerDownError) as caught:
                run_import(conn, ImportMode.FULL, page_size=10)
        finally:
            conn.close()
    assert targets, "the request did not go to the proxy"
    assert (
        f"did not answer: the proxy at 127.0.0.1:{port} refused the tunnel (407 Proxy Authentication Required): it "
        "wants credentials: give them in HTTPS_PROXY"
    ) in str(caught.value)


def test_a_next_page_link_to_another_host_is_not_followed_with_the_token(
    make_emulator: Any, tmp_path: Path, cache_key: str
) -> None:
    """GraphClient followed any https:// link Graph's answer held (``@odata.nextLink``) with the
    bearer token, to whatever host it named. Here graph_url names the emulator as localhost and its
    links name 127.0.0.1: the second page of users/delta went to another host, token and all. Now the
    step stops, naming both hosts, and the link is not followed."""
    emu = make_emulator(users=250)  # more than a page: users/delta pages hold 200
    port = urlsplit(emu.info["graph_url"]).port
    conn = make_connector(emu, tmp_path, graph_url=f"https://localhost:{port}/v1.0")
    with pytest.raises(StopRunError) as stopped:
        imported(conn)
    message = str(stopped.value)
    said = f"Graph answered with a link to https://127.0.0.1:{port}, not to graph_url's localhost:{port}"
    assert message.startswith(said), message
    assert "the access token went nowhere else" in message


def test_uploads_of_one_mailbox_reset_mid_request_fail_that_change_only_not_the_batch(
    make_emulator: Any, tmp_path: Path, cache_key: str
) -> None:
    """Found by the export pass: Graph (or a proxy in front of it) resetting every upload for one
    mailbox, with one export worker (concurrency = 1), was taken for Graph gone: that change used its
    attempts with nothing else under way ("no other request had a working answer meanwhile"), and
    every later change of the batch was left cd-server-down without being tried, at every export for
    as long as that change came first. A connection that was reset had reached Graph, so a request
    that worked before is asked again (as for a 5xx): it answers, and only that change is retried
    later; the rest are written."""
    emu = make_emulator(users=30)
    changes = photo_changes(emu, 5)
    conn = make_connector(emu, tmp_path, max_attempts=3, backoff_max_s=0.2, concurrency=1)
    emu.admin.set_faults({"reset": 1.0, "path_pattern": f"/users/{changes[0].anchor}/photo/"})
    conn.open()
    try:
        results = conn.export(changes)
    finally:
        conn.close()
    [first, *rest] = results
    assert (first.status, first.error_name) == (ExportStatus.RETRY, "cd-error"), first
    assert "connection reset by the server" in first.error_detail, first.error_detail
    assert [r.status for r in rest] == [ExportStatus.SUCCESS] * 4, rest
    assert all(emu.admin.get_photo(change.anchor) is not None for change in changes[1:])


def _ca_copy(emu: Any, tmp_path: Path) -> Path:
    """A copy of the emulator's CA for ``ca_bundle``, for a test to take away."""
    ca_bundle = tmp_path / "q" / "ca.pem"
    ca_bundle.parent.mkdir()
    ca_bundle.write_bytes(Path(emu.info["ca_cert"]).read_bytes())
    return ca_bundle


def _ca_gone_message(ca_bundle: Path) -> str:
    return (
        f"agents.exo.settings.ca_bundle: {ca_bundle} does not exist now (it did when the step began): put the CA "
        "file back there, or set agents.exo.settings.ca_bundle to where it is now, and run again; what the step "
        "committed is kept"
    )


def test_a_ca_bundle_gone_mid_import_stops_the_step_as_a_configuration_error(
    make_emulator: Any, tmp_path: Path, cache_key: str
) -> None:
    """QA: ``mv ca.pem ca.old`` during a full import (or the emulator stopping, which removes its CA
    folder). requests looks for the file before every request: its ``OSError`` ("Could not find a
    suitable TLS CA certificate bundle, invalid path") left the step as a traceback and
    stopped-connector-exception. Now the setting and the file are named (stopped-configuration, exit 2),
    and the page committed before is kept, with no per-user error."""
    emu = make_emulator(users=60, photo_ratio=1.0)
    ca_bundle = _ca_copy(emu, tmp_path)
    conn = make_connector(emu, tmp_path, ca_bundle=ca_bundle)
    caught, pages = _stopped_after_the_first_page(
        conn, lambda: ca_bundle.rename(ca_bundle.with_name("ca.old")), ConfigurationError
    )
    assert str(caught.value) == _ca_gone_message(ca_bundle)
    assert getattr(caught.value, "key", None) == "agents.exo.settings.ca_bundle"
    # the pages whose answers were all in before the file went may be committed too (a busy machine's timing)
    assert pages[0].entries and not [e for page in pages for e in page.entries if e.error is not None]


def test_a_ca_bundle_gone_before_a_token_refresh_is_a_configuration_error_too(
    make_emulator: Any, tmp_path: Path, cache_key: str
) -> None:
    """The sign-in (MSAL) sends on the same kind of session: the refresh after Graph's 401 meets the
    missing file and stops with the same words, not requests' OSError out of MSAL."""
    emu = make_emulator(users=1)
    ca_bundle = _ca_copy(emu, tmp_path)
    conn = make_connector(emu, tmp_path, ca_bundle=ca_bundle)
    conn.open()
    try:
        conn.auth.invalidate(conn.auth.token())
        ca_bundle.unlink()
        with pytest.raises(ConfigurationError) as caught:
            conn.auth.token()
    finally:
        conn.close()
    assert str(caught.value) == _ca_gone_message(ca_bundle)


def test_a_graph_url_with_no_graph_api_names_the_url_and_the_setting(
    make_emulator: Any, tmp_path: Path, cache_key: str
) -> None:
    """QA: ``graph_url = "https://HOST:PORT/beta2"`` stopped a full import with "Graph refused the user
    listing: HTTP 404" alone. A 404 for the first page of the listing is the setting's to fix: the step
    stops as stopped-configuration naming the URL asked and agents.exo.settings.graph_url."""
    emu = make_emulator(users=5)
    graph_url = emu.info["graph_url"].rsplit("/", 1)[0] + "/beta2"
    conn = make_connector(emu, tmp_path, graph_url=graph_url)
    caught, pages = _stopped_after_the_first_page(conn, lambda: None, ConfigurationError)
    assert pages == []  # the first page's request is the one refused
    message = str(caught.value)
    assert message.startswith(
        f"agents.exo.settings.graph_url: Graph answered the user listing at {graph_url}/users/delta with HTTP 404"
    ), message
    assert f"there is no Graph API at {graph_url}; check it" in message, message
