"""The console's queries on each store backend (SQLite and PostgreSQL): migration 2's indexes,
keyset search and the coverage counts, on a small store filled by the benchmark's bulk loader."""

from __future__ import annotations

import contextlib
import html
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text

from connector.bench.ui import bench_config, fill_store
from connector.config import config_from_dict
from connector.store import BUSY_TIMEOUT_S, SqlStore
from connector.web import create_app, page_deadline, serve_in_background
from connector.web._queries import Console
from tests.harness.sockets import FaultyProxy, faulty_proxy
from tests.web.conftest import LOOPBACK

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*httpx2.*")  # Starlette asks for httpx2, falls back to httpx
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.slow


def test_search_and_coverage_on_each_backend(store_url: str, tmp_path: Path) -> None:
    config = config_from_dict(bench_config(store_url, tmp_path), base_dir=tmp_path)
    store = SqlStore(config.store_url())
    try:
        sample = fill_store(store, 300)
        console = Console(config, store)
        with store.read() as conn:
            if store.dialect == "postgresql":
                names = set(conn.execute(text("SELECT indexname FROM pg_indexes")).scalars())
            else:
                names = set(conn.execute(text("SELECT name FROM sqlite_master WHERE type = 'index'")).scalars())
            assert {"ix_mv_search", "ix_cs_photo", "ix_cs_error", "ix_cs_disconnected"} <= names
            found = console.search(conn, sample["mail"].upper())
            assert [h.id for h in found.hits] == [sample["mv_id"]]
            seen, after = [], None
            while True:
                page = console.search(conn, "", after=after, limit=40)
                seen += [h.id for h in page.hits]
                if page.next_after is None:
                    break
                after = page.next_after
            assert sorted(seen) == list(range(1, 301))
            agents, kinds, persons = console.coverage(conn)
            by = {a.agent: a for a in agents}
            assert persons == 300
            assert by["exo"].with_photo == sum(1 for i in range(1, 301) if i % 10 < 7)
            assert by["ad"].with_photo == 150 and by["ad"].joined == 300
            assert by["ad"].differing["thumbnailPhoto"] == (
                sum(1 for i in range(1, 301) if i % 20 == 1 and (i % 10 < 7 or i % 5 < 2)),
                sum(1 for i in range(1, 301) if i % 20 == 1 and not (i % 10 < 7 or i % 5 < 2)),
            )
            assert ("ad", "sync", "ambiguous-join", 1) in kinds
            assert console.thresholds(conn, "ad")[0][1]["connector_space"] == 300
    finally:
        store.close()


@pytest.mark.postgres
def test_a_store_that_stops_answering_is_a_503_page_and_the_console_recovers(
    tmp_path: Path, postgres_db: Callable[[], str]
) -> None:
    """A PostgreSQL restart under a running console: a page that names the store and says to reload,
    not a bare 500 with a traceback; the next request after the store is back is served."""
    url = postgres_db()
    config = config_from_dict(bench_config(url, tmp_path), base_dir=tmp_path)
    store = SqlStore(config.store_url())
    fill_store(store, 10)
    client = TestClient(create_app(config, store=store), base_url="http://127.0.0.1")
    database = make_url(url).database
    dba = create_engine(url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    try:
        assert client.get("/").status_code == 200
        with dba.connect() as conn:  # the store refuses connections, and the console's are cut
            conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
            cut = text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d")
            conn.execute(cut, {"d": database})
        down = client.get("/")
        assert down.status_code == 503 and "Store unavailable" in down.text
        assert f"cannot use the store postgresql+psycopg://{make_url(url).username}:***@" in down.text
        assert "reload this page once the store answers" in down.text and "Traceback" not in down.text
        assert make_url(url).password not in down.text
        photo = client.get("/photo/" + "a" * 64)
        assert photo.status_code == 503 and photo.headers["content-type"].startswith("text/plain")
        with dba.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
        assert client.get("/").status_code == 200
    finally:
        with dba.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
        dba.dispose()
        client.close()
        store.close()


def _get(url: str) -> tuple[int, str]:
    """Status and body of a GET; the client's own timeout only stops a test that would hang."""
    try:
        with urllib.request.urlopen(url, timeout=120) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _get_quietly(url: str) -> None:
    with contextlib.suppress(OSError):
        _get(url)


def _quiet_store(tmp_path: Path, url: str, store_relay: FaultyProxy) -> tuple[str, Path]:
    """A store filled directly, and its URL through ``store_relay``; a configuration file naming it."""
    direct = SqlStore(url)
    try:
        fill_store(direct, 10)
    finally:
        direct.close()
    relayed = make_url(url).set(port=store_relay.port).render_as_string(hide_password=False)
    path = tmp_path / "mvsync.toml"
    path.write_text('[store]\nurl = { env = "MVSYNC_STORE_URL" }\n', encoding="utf-8")
    return relayed, path


@contextlib.contextmanager
def _console_over_a_relay(
    tmp_path: Path, url: str, deadline_s: float, query: str = ""
) -> Iterator[tuple[str, SqlStore, FaultyProxy]]:
    """A console (page deadline ``deadline_s``) over the PostgreSQL store ``url`` through a relay that a
    test makes quiet; yields its URL, its store (``query`` added to the store's URL) and the relay.
    The console has served a page, so the pool holds a connection through the relay; at the end the
    relay answers again and the console must serve once more: it recovers."""
    with faulty_proxy(("127.0.0.1", make_url(url).port or 5432)) as store_relay:
        relayed, _ = _quiet_store(tmp_path, url, store_relay)
        config = config_from_dict(bench_config(relayed, tmp_path), base_dir=tmp_path)
        store = SqlStore(relayed + query, create=False)
        console = serve_in_background(create_app(config, store=store, page_deadline_s=deadline_s))
        try:
            assert _get(console.url + "/")[0] == 200
            yield console.url, store, store_relay
            store_relay.thaw()
            assert _get(console.url + "/")[0] == 200
        finally:
            store_relay.thaw()
            console.stop()
            store.close()


@pytest.mark.postgres
def test_a_store_that_goes_quiet_is_a_503_page_within_the_deadline_and_the_console_recovers(
    tmp_path: Path, postgres_db: Callable[[], str]
) -> None:
    """Found by hand: with PostgreSQL hung (the connection open, nothing answered) a page the pool
    served on a connection it held never loaded, and its thread waited for ever."""
    url = postgres_db()
    with _console_over_a_relay(tmp_path, url, 3) as (console_url, _, store_relay):
        store_relay.hold()
        status, body = _get(console_url + "/")
        assert status == 503 and "Store unavailable" in body
        assert "has not answered within 3 s" in body and ":***@127.0.0.1" in body
        assert make_url(url).password not in body


@pytest.mark.postgres
def test_pages_stuck_on_a_quiet_store_taking_every_connection_leave_the_next_page_a_503(
    tmp_path: Path, postgres_db: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in the console pass: pages left waiting on a hung PostgreSQL keep their connections, and
    once they held all the pool may open (5 + 10), the next page or photo waited for one and got
    SQLAlchemy's pool TimeoutError: a bare "Internal Server Error" without the security headers, and
    two tracebacks in the console's output, where the store's 503 page belongs."""
    monkeypatch.setattr("connector.store._sql.BUSY_TIMEOUT_S", 1.0)  # how long a page waits for a connection
    url = postgres_db()
    # new connections wait a minute for the quiet server, as the open ones wait for their answers
    with _console_over_a_relay(tmp_path, url, 4, "?connect_timeout=60") as (console_url, store, store_relay):
        pool = store.engine.pool
        store_relay.hold()
        stuck = [threading.Thread(target=_get_quietly, args=(console_url + "/coverage",)) for _ in range(15)]
        for page in stuck:
            page.start()
        for page in stuck:  # each answered at the deadline; its thread still waits on the store
            page.join()
        waited_until = time.monotonic() + 60  # a busy machine may start a page's thread late
        while pool.checkedout() < 15:
            assert time.monotonic() < waited_until, pool.status()
            time.sleep(0.02)
        for path, kind in (("/", "text/html"), ("/photo/" + "a" * 64, "text/plain")):
            with pytest.raises(urllib.error.HTTPError) as answer:
                urllib.request.urlopen(console_url + path, timeout=120)
            status, headers, body = answer.value.code, answer.value.headers, answer.value.read().decode()
            assert status == 503 and headers["content-type"].startswith(kind), (path, status, body)
            assert headers["content-security-policy"] and headers["x-content-type-options"] == "nosniff"
            assert "no connection to it came free within 1 s" in html.unescape(body), body
            assert ":***@127.0.0.1" in body and make_url(url).password not in body


@contextlib.contextmanager
def _console_waiting_on_a_quiet_store(tmp_path: Path, url: str) -> Iterator[tuple[subprocess.Popen[str], FaultyProxy]]:
    """``mvsync ui`` (a real process) with one page waiting on its PostgreSQL store, gone quiet."""
    with faulty_proxy(("127.0.0.1", make_url(url).port or 5432)) as store_relay:
        relayed, config = _quiet_store(tmp_path, url, store_relay)
        env = {**os.environ, "MVSYNC_STORE_URL": relayed}
        # Ctrl-C as at a terminal: a test session started as a background job (CI under nohup) hands its
        # children SIGINT ignored, and uvicorn, which re-raises the signal once it has stopped, then exits 0
        main = (
            "import signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from connector.cli import main; main()"
        )
        command = [sys.executable, "-c", main, "ui", "-c", str(config), "--port", "0"]
        console = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        try:
            assert console.stderr is not None
            first = console.stderr.readline()
            assert "mvsync console on http://127.0.0.1:" in first, first
            base = first.split(" on ", 1)[1].split("/ ", 1)[0]
            assert _get(base + "/")[0] == 200
            store_relay.hold()
            # the page's answer (a 503 at the deadline, or the connection closed) is not what is tested
            threading.Thread(target=_get_quietly, args=(base + "/",), daemon=True).start()
            assert store_relay.held.wait(60), "the page never asked the store"
            yield console, store_relay
        finally:
            store_relay.thaw()
            if console.poll() is None:
                console.kill()
                console.communicate()


@pytest.mark.postgres
def test_ctrl_c_stops_the_console_while_a_page_waits_on_a_quiet_store(
    tmp_path: Path, postgres_db: Callable[[], str]
) -> None:
    """Found by hand: Ctrl-C did not end ``mvsync ui`` while a page waited on a hung PostgreSQL (it
    waited for the page's worker thread, for ever); now it says why it waits, and ends (exit 130) once
    the page is answered (by the store, or by the page deadline at the latest)."""
    with _console_waiting_on_a_quiet_store(tmp_path, postgres_db()) as (console, store_relay):
        assert console.stderr is not None
        console.send_signal(signal.SIGINT)
        said = console.stderr.readline()
        assert said.startswith("stopping: 1 page(s) still read the store (at most 45 s)"), said
        store_relay.thaw()
        _, rest = console.communicate(timeout=120)
    assert console.returncode == 130, rest
    assert "interrupted by Ctrl-C" in rest and "Traceback" not in rest


@pytest.mark.postgres
def test_ctrl_c_twice_stops_the_console_at_once_without_a_traceback(
    tmp_path: Path, postgres_db: Callable[[], str]
) -> None:
    """Found by hand: the first Ctrl-C said nothing while the console waited for the page (up to the
    deadline), and a second one stopped it with uvicorn's tracebacks of the cancelled request and of
    its lifespan task; now the first says why it waits and the second stops it quietly."""
    with _console_waiting_on_a_quiet_store(tmp_path, postgres_db()) as (console, _):
        assert console.stderr is not None
        console.send_signal(signal.SIGINT)
        said = console.stderr.readline()
        assert said.startswith("stopping: 1 page(s) still read the store"), said
        console.send_signal(signal.SIGINT)
        _, rest = console.communicate(timeout=120)
    assert console.returncode == 130, rest
    assert "interrupted by Ctrl-C" in rest and "Traceback" not in rest and "ERROR" not in rest


@pytest.mark.postgres
def test_a_table_lock_is_said_as_such_within_the_page_deadline(
    tmp_path: Path, postgres_db: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page deadline outlasts the store's own waits, so a lock (a VACUUM FULL, a transaction left
    open) is the store's "busy: another session holds a lock" page, not "has not answered" (found by
    hand: both were 30 s, and the deadline came first)."""
    url = postgres_db()
    monkeypatch.setattr("connector.store._sql.BUSY_TIMEOUT_S", 2.0)  # the session's lock_timeout
    config = config_from_dict(bench_config(url, tmp_path), base_dir=tmp_path)
    store = SqlStore(url)
    fill_store(store, 3)
    with_timeout = SqlStore(url + "?connect_timeout=60", create=False)
    try:
        assert page_deadline(store) > max(BUSY_TIMEOUT_S, store.connect_timeout_s or 0)
        assert page_deadline(with_timeout) > 60  # a connect_timeout in store.url counts too
        holder = create_engine(url)
        with holder.connect() as conn, TestClient(create_app(config, store=store), base_url=LOOPBACK) as client:
            conn.execute(text("LOCK TABLE run_history IN ACCESS EXCLUSIVE MODE"))
            busy = client.get("/")
            conn.rollback()
            assert busy.status_code == 503 and "is busy: another session holds a lock" in busy.text
            assert client.get("/").status_code == 200
        holder.dispose()
    finally:
        store.close()
        with_timeout.close()


@pytest.mark.postgres
def test_a_statement_the_server_cancels_is_a_503_naming_the_cancel_and_statement_timeout(
    tmp_path: Path, postgres_db: Callable[[], str]
) -> None:
    """Found in the console pass: a DBA's statement_timeout on the database (or the role), or a
    pg_cancel_backend, cancels a page's statement (here while it waits for a table lock), and the
    console answered its 500 "This page could not be shown: OperationalError ... report the error":
    the store's fault classifier did not know SQLSTATE 57014 (query_canceled)."""
    url = postgres_db()
    config = config_from_dict(bench_config(url, tmp_path), base_dir=tmp_path)
    direct = SqlStore(url)
    try:
        fill_store(direct, 3)
    finally:
        direct.close()
    dba = create_engine(url, isolation_level="AUTOCOMMIT")
    with dba.connect() as conn:
        conn.execute(text(f'ALTER DATABASE "{make_url(url).database}" SET statement_timeout = 1000'))
        # a lock_timeout the DBA chose is kept, so the statement timeout ends the lock wait (with none
        # chosen the wait would end at 90 % of it, as busy)
        conn.execute(text(f"ALTER DATABASE \"{make_url(url).database}\" SET lock_timeout = '60s'"))
    dba.dispose()
    store = SqlStore(url, create=False)  # its sessions start with the database's statement_timeout
    holder = create_engine(url)
    try:
        with holder.connect() as conn, TestClient(create_app(config, store=store), base_url=LOOPBACK) as client:
            conn.execute(text("SET statement_timeout = 0"))
            conn.execute(text("LOCK TABLE run_history IN ACCESS EXCLUSIVE MODE"))
            canceled = client.get("/")
            conn.rollback()
            assert canceled.status_code == 503, canceled.text
            said = html.unescape(canceled.text)
            assert "canceled a statement (canceling statement due to statement timeout)" in said, said
            assert "SHOW statement_timeout" in said and "ALTER ROLE" in said and "Traceback" not in said
            assert make_url(url).password not in said
            assert client.get("/").status_code == 200
    finally:
        holder.dispose()
        store.close()


def test_search_text_with_a_nul_character_is_a_400_page_on_each_backend(store_url: str, tmp_path: Path) -> None:
    # found by hand: /search?q=%00 was a bare "Internal Server Error" on PostgreSQL (psycopg refuses a
    # NUL in a text parameter) and, on SQLite, every person matched (the needle ended at the NUL)
    config = config_from_dict(bench_config(store_url, tmp_path), base_dir=tmp_path)
    store = SqlStore(config.store_url())
    try:
        fill_store(store, 20)
        with TestClient(create_app(config, store=store), base_url=LOOPBACK, raise_server_exceptions=False) as c:
            for query in ("%00", "a%00b"):
                page = c.get(f"/search?q={query}")
                assert page.status_code == 400, (query, page.text)
                assert page.headers["content-type"].startswith("text/html")
                assert "<title>Bad address" in page.text and "NUL character" in page.text
                assert page.headers["content-security-policy"] and page.headers["cache-control"] == "no-store"
            assert c.get("/search?q=a").status_code == 200
    finally:
        store.close()


#: How a kind of damage changes a document's text: (column, text) -> (the damaged text, what the page says).
Damage = Callable[[str, str], tuple[str, str]]


def _not_json(column: str, text: str) -> tuple[str, str]:
    """The document is no longer JSON."""
    return ("[1, 2" if column == "counters" else "{not json"), "is not the JSON mvsync wrote"


def _still_json(column: str, text: str) -> tuple[str, str]:
    """The document stays JSON: a digit of a photo's reference or of a date changed, or (the counters, the
    sync error) the document is no longer an object."""
    import re

    if column in ("counters", "sync_error"):
        return "[1, 2]", "is not the JSON object mvsync wrote (it is a JSON list)"
    if column == "hologram":
        kind, pattern = "date", r"(\\u0000d:)\d"
    else:
        kind, pattern = "binary value's reference", r"(\\u0000b:[0-9a-f]{64}:)\d"
    damaged, found = re.subn(pattern, r"\g<1>X", text, count=1)
    assert found, (column, text)
    return damaged, f"holds a {kind} that is not one mvsync wrote"


def _damage_one_of_each(store: SqlStore, mv_id: int, damage: Damage) -> dict[str, tuple[int, str]]:
    """One damaged document per kind of row a page shows: page -> (row id, what the page says)."""
    from sqlalchemy import Table, select, update

    from connector.store.tables import cs_object, mv_object, run_step

    with store.transaction() as conn:
        step_id, run_id, counters = conn.execute(
            select(run_step.c.id, run_step.c.run_id, run_step.c.counters).order_by(run_step.c.id.desc())
        ).first()
        pending_id, changes = next(  # a pending export that writes a photo
            row
            for row in conn.execute(
                select(cs_object.c.id, cs_object.c.export_changes)
                .where(cs_object.c.agent == "ad", cs_object.c.export_type.is_not(None))
                .order_by("id")
            )
            if "u0000b:" in row.export_changes
        )
        error_id, error = conn.execute(
            select(cs_object.c.id, cs_object.c.sync_error).where(cs_object.c.sync_error.is_not(None)).order_by("id")
        ).first()
        exo_id, hologram = conn.execute(
            select(cs_object.c.id, cs_object.c.hologram).where(
                cs_object.c.agent == "exo", cs_object.c.mv_id == mv_id + 1
            )
        ).one()
        attributes = conn.execute(select(mv_object.c.attributes).where(mv_object.c.id == mv_id)).scalar_one()
        said = {}
        documents: list[tuple[Table, int, str, str]] = [
            (run_step, step_id, "counters", counters),
            (mv_object, mv_id, "attributes", attributes),
            (cs_object, exo_id, "hologram", hologram),
            (cs_object, pending_id, "export_changes", changes),
            (cs_object, error_id, "sync_error", error),
        ]
        for table, row_id, column, text in documents:
            damaged, says = damage(column, text)
            conn.execute(update(table).where(table.c.id == row_id).values({column: damaged}))
            said[column] = (row_id, f"{table.name} row {row_id}: its {column} {says}")
    return {
        "/": said["counters"],
        f"/runs/{run_id}": said["counters"],
        f"/steps/{step_id}": said["counters"],
        f"/persons/{mv_id}": said["attributes"],
        f"/persons/{mv_id + 1}": said["hologram"],
        "/pending/ad": said["export_changes"],
        "/coverage": (error_id, "(damaged row: run mvsync doctor)"),
    }


@pytest.mark.parametrize("damage", [_not_json, _still_json], ids=["not-json", "still-json"])
def test_one_damaged_row_is_shown_as_damaged_and_the_rest_of_its_page_renders(
    store_url: str, tmp_path: Path, damage: Damage
) -> None:
    """Found by hand: one run_step row whose counters were not JSON made the operations page (and the
    run's page) a 500, hiding every other run; a damaged connector hid its person's page, a damaged
    pending export the agent's whole pending list. Each page now shows the other rows, and the damaged
    one as damaged with `mvsync doctor`, on the real console over HTTP, on SQLite and PostgreSQL.

    Found in the console pass: damage that leaves the text JSON (a digit of a photo's reference or of a
    date changed, counters that are a list) passed as intact, and the page was the console's 500 (the
    search page too, for every search that listed the person)."""
    config = config_from_dict(bench_config(store_url, tmp_path), base_dir=tmp_path)
    store = SqlStore(config.store_url())
    try:
        sample = fill_store(store, 40)
        pages = _damage_one_of_each(store, sample["mv_id"], damage)
        console = serve_in_background(create_app(config, store=store))
        try:
            for path, (_row, says) in pages.items():
                status, body = _get(console.url + path)
                assert status == 200, (path, body)
                assert says in html.unescape(body), (path, body)
                assert "mvsync doctor" in body, path
            _, ops = _get(console.url + "/")
            assert ops.count('class="step ') > 50  # every other step of the page is there
            _, person = _get(console.url + f"/persons/{sample['mv_id']}")
            assert "Connectors (" in person and person.count('<details class="cs"') >= 2  # its connectors are shown
            _, pending = _get(console.url + "/pending/ad")
            assert "Deletion threshold (" in pending and pending.count('<figure class="pending') > 1
            status, found = _get(console.url + "/search?q=" + urllib.parse.quote(sample["mail"]))
            assert (
                status == 200 and "damaged row: run mvsync doctor" in found and f"/persons/{sample['mv_id']}" in found
            )
        finally:
            console.stop()
    finally:
        store.close()


def test_a_store_moved_away_or_replaced_while_the_console_runs_is_a_503_naming_the_path(tmp_path: Path) -> None:
    """Found by hand: a store file moved away (or deleted) while `mvsync ui` ran was still served from
    the file the console had open, as if nothing had happened; a file copied in its place (a restore)
    was never shown. Now every page and photo answers 503 naming the path and what to do; the file put
    back is served again. A rename, as Windows refuses for an open file: the check is os.stat's identity."""
    db = tmp_path / "store.db"
    config = config_from_dict(bench_config(f"sqlite:///{db}", tmp_path), base_dir=tmp_path)
    filler = SqlStore(config.store_url())
    try:
        photo = fill_store(filler, 5)["photo"]
    finally:
        filler.close()
    console = serve_in_background(create_app(config))  # opens the store as `mvsync ui` does
    try:
        assert _get(console.url + "/")[0] == 200  # the pool holds the open file from here on
        aside = tmp_path / "moved-away.db"
        db.rename(aside)
        for path in ("/", f"/photo/{photo}", "/coverage"):
            status, body = _get(console.url + path)
            assert status == 503, (path, body)
            assert f"the store {db} is no longer there: it was moved or deleted while the console" in html.unescape(
                body
            )
        assert _get(console.url + "/static/ui.css")[0] == 200  # the error page keeps its style
        aside.rename(db)
        assert _get(console.url + "/")[0] == 200  # put back: served again
        copy = tmp_path / "restored.db"
        shutil.copyfile(db, copy)
        copy.replace(db)  # another file at the path: what a restore from a backup does
        status, body = _get(console.url + "/")
        assert status == 503 and f"the store {db} was replaced while the console" in html.unescape(body)
        assert "restart the console (`mvsync ui`) to use that one" in html.unescape(body)
    finally:
        console.stop()


@pytest.mark.postgres
def test_a_console_started_while_its_store_is_closed_serves_503_pages_until_it_answers(
    tmp_path: Path, postgres_db: Callable[[], str]
) -> None:
    """Found: `mvsync ui` started while PostgreSQL refused connections (a server still starting at boot,
    a restart, a database closed for maintenance) exited with 4, although a console already running
    rides out the same outage with 503 pages: a service started before its database stayed down. It
    now says that the store does not answer yet, starts, and serves its pages once the store answers.
    (A store it could never use, a wrong password or a missing database, still stops it at once.)"""
    url = postgres_db()
    direct = SqlStore(url)
    try:
        fill_store(direct, 3)
    finally:
        direct.close()
    config = tmp_path / "mvsync.toml"
    config.write_text('[store]\nurl = { env = "MVSYNC_STORE_URL" }\n', encoding="utf-8")
    database = make_url(url).database
    dba = create_engine(url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    main = "from connector.cli import main; main()"
    env = {**os.environ, "MVSYNC_STORE_URL": url}
    console: subprocess.Popen[str] | None = None
    try:
        with dba.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS false'))
        command = [sys.executable, "-c", main, "ui", "-c", str(config), "--port", "0"]
        console = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        assert console.stderr is not None
        said = console.stderr.readline()
        assert said.startswith("warning: cannot use the store postgresql+psycopg://"), said
        assert "is not currently accepting connections" in said and "until the store answers" in said
        first = console.stderr.readline()
        assert "mvsync console on http://127.0.0.1:" in first, first
        base = first.split(" on ", 1)[1].split("/ ", 1)[0]
        status, body = _get(base + "/")
        assert status == 503 and "Store unavailable" in body and make_url(url).password not in body
        with dba.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
        assert _get(base + "/")[0] == 200
    finally:
        with dba.connect() as conn:
            conn.execute(text(f'ALTER DATABASE "{database}" ALLOW_CONNECTIONS true'))
        dba.dispose()
        if console is not None and console.poll() is None:
            console.kill()
            console.communicate()
    assert make_url(url).password not in said
