"""``mvsync doctor`` on both backends: a healthy store passes; each kind of corruption is found."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import socket
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Connection, select, update

from connector.config import config_from_dict
from connector.doctor import EXIT_PROBLEMS, check_config, run_doctor
from connector.engine._agents import _certificate_problem as _certificate_problems
from connector.store import SCHEMA_VERSION
from connector.store.tables import agent_data, blob, cs_object, run_history, store_meta, transform_cache
from tests.engine.conftest import World, add_users
from tests.engine.memory import MemoryConnector


@pytest.fixture
def healthy(tmp_path: Path, store_url: str) -> Iterator[World]:
    world = World(tmp_path, store_url)
    add_users(world, 6)
    world.cycle()
    world.ad["fail"].clear()
    assert world.run("export").status == "success"
    yield world
    world.close()


def _errors(world: World) -> dict[str, int]:
    report = run_doctor(world.config)
    return {f.check: f.count for f in report.findings if f.severity == "error"}


def test_a_healthy_store_passes(healthy: World) -> None:
    report = run_doctor(healthy.config)
    assert report.ok, report.as_dict()
    assert report.exit_code == 0
    checks = {f.check for f in report.findings}
    assert {
        "integrity",
        "writable",
        "schema",
        "blobs",
        "links",
        "pending-exports",
        "runs",
        "rules",
        "agents.ad.reachable",
    } <= checks


def _first_blob(conn: Connection) -> str:
    return str(conn.execute(select(blob.c.sha256).order_by(blob.c.sha256).limit(1)).scalar_one())


def _delete_blob(conn: Connection) -> None:
    conn.execute(blob.delete().where(blob.c.sha256 == _first_blob(conn)))


def _corrupt_blob(conn: Connection) -> None:
    conn.execute(update(blob).where(blob.c.sha256 == _first_blob(conn)).values(data=b"bitrot"))


def _dangling_join(conn: Connection) -> None:
    conn.execute(update(cs_object).where(cs_object.c.anchor == "guid-001").values(mv_id=987654))


def _double_join(conn: Connection) -> None:
    mv_id = conn.execute(select(cs_object.c.mv_id).where(cs_object.c.anchor == "guid-001")).scalar_one()
    conn.execute(update(cs_object).where(cs_object.c.anchor == "guid-002").values(mv_id=mv_id))


def _orphan_export(conn: Connection) -> None:
    conn.execute(
        cs_object.insert().values(
            agent="ad", object_class="user", anchor="ghost", pending_type="add", pending="{}", export_type="update"
        )
    )


def _unjoined_export(conn: Connection) -> None:
    # an update staged on an object that no longer belongs to any person
    conn.execute(
        update(cs_object)
        .where(cs_object.c.agent == "ad", cs_object.c.anchor == "guid-001")
        .values(mv_id=None, export_type="update", export_changes='{"displayName": "stale"}')
    )


def _damaged_hologram(conn: Connection) -> None:
    # bytes changed on the disk inside a value: the database's own checks pass, the text is no JSON
    conn.execute(update(cs_object).where(cs_object.c.anchor == "guid-001").values(hologram='{"mail": "a@b'))


def _damaged_agent_state(conn: Connection) -> None:
    conn.execute(agent_data.insert().values(agent="ad", key="etag:guid-001", value="{not json", step_id=None))


def _damaged_transform_cache(conn: Connection) -> None:
    # a cached thumbnail whose bytes changed on the disk: its blob reference no longer reads
    conn.execute(
        transform_cache.insert().values(transform="thumbnail(size=96)", input="photo-input", output='"\\u0000b:4f2a')
    )


def _damaged_schema_version(conn: Connection) -> None:
    conn.execute(update(store_meta).where(store_meta.c.key == "schema_version").values(value="abc"))


def _newer_schema(conn: Connection) -> None:
    conn.execute(update(store_meta).where(store_meta.c.key == "schema_version").values(value=str(SCHEMA_VERSION + 1)))


@pytest.mark.parametrize(
    ("corrupt", "check"),
    [
        (_delete_blob, "blobs-missing"),
        (_corrupt_blob, "blobs-corrupt"),
        (_dangling_join, "links-dangling"),
        (_double_join, "links-duplicate"),
        (_orphan_export, "pending-exports-orphan"),
        (_unjoined_export, "pending-exports-orphan"),
        (_damaged_hologram, "documents"),
        (_damaged_agent_state, "documents"),
        (_damaged_transform_cache, "documents"),
        (_newer_schema, "schema"),
        (_damaged_schema_version, "schema"),
    ],
)
def test_corruption_is_found(healthy: World, corrupt: Callable[[Connection], None], check: str) -> None:
    with healthy.engine.store.transaction() as conn:
        corrupt(conn)
    report = run_doctor(healthy.config)
    assert not report.ok and report.exit_code == EXIT_PROBLEMS
    errors = {f.check: f for f in report.findings if f.severity == "error"}
    assert set(errors) == {check}, report.as_dict()
    assert errors[check].message


def test_config_problems_are_reported(tmp_path: Path) -> None:
    world = World(tmp_path)
    try:
        world.config.agents["hr"].settings["directory"] = 42  # not a string: the connector cannot start
        report = run_doctor(world.config, store=False)
        errors = [f for f in report.findings if f.severity == "error"]
        assert [f.check for f in errors] == ["agents.hr.connector"]
        assert "agents.hr.settings" in errors[0].message
    finally:
        world.close()


def _self_signed(path: Path, not_after: dt.datetime) -> Path:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "old ca")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(not_after - dt.timedelta(days=30))
        .not_valid_after(not_after)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_certificate_checks(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    assert _certificate_problems(_self_signed(tmp_path / "good.pem", now + dt.timedelta(days=90))) is None
    expired = _certificate_problems(_self_signed(tmp_path / "old.pem", now - dt.timedelta(days=1)))
    assert expired is not None and "expired" in expired
    (tmp_path / "junk.pem").write_text("not a certificate")
    assert "no PEM certificate" in (_certificate_problems(tmp_path / "junk.pem") or "")
    assert "cannot read" in (_certificate_problems(tmp_path / "missing.pem") or "")


def _cycled(tmp_path: Path, store_url: str) -> tuple[str, Path]:
    """``(the real mvsync, a configuration)`` after a run of its cycle: three generated people with photos."""
    mvsync, config = _configured(tmp_path, store_url)
    subprocess.run([mvsync, "run", "cycle", "-c", str(config), "--json"], check=True, capture_output=True, timeout=120)
    return mvsync, config


def _configured(tmp_path: Path, store_url: str) -> tuple[str, Path]:
    """``(the real mvsync, a configuration)`` of three generated people with photos, before any run."""
    config = tmp_path / "mvsync.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [store]
            url = {json.dumps(store_url)}

            [agents.people]
            type = "connector.bench.generated:GeneratedConnector"
            settings = {{ count = 3, seed = 1, photo_bytes = 16 }}
            projection = [{{ object_class = "person" }}]
            import_flow = [{{ object_class = "person", cs = "photo", mv = "photo" }}]

            [run_profiles.cycle]
            steps = [{{ type = "full-import", agent = "people" }}, {{ type = "full-sync", agent = "people" }}]
            """
        )
    )
    return str(Path(sys.executable).with_name("mvsync")), config


def test_cli_exit_codes_and_json(tmp_path: Path, store_url: str) -> None:
    mvsync, config = _cycled(tmp_path, store_url)
    ok = subprocess.run([mvsync, "doctor", "-c", str(config), "--json"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert json.loads(ok.stdout)["ok"] is True
    from connector.store import SqlStore

    store = SqlStore(store_url)
    with store.transaction() as conn:
        conn.execute(blob.delete())
    store.close()
    bad = subprocess.run([mvsync, "doctor", "-c", str(config)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == EXIT_PROBLEMS, bad.stdout + bad.stderr
    assert "blobs-missing" in bad.stdout and "problems found" in bad.stdout


def test_an_empty_store_is_a_warning_that_the_first_run_creates_it(tmp_path: Path, store_url: str) -> None:
    """Found: on a new, empty PostgreSQL database (what README: Production store on PostgreSQL has the
    operator create) doctor reported a damaged store (exit 6) from ten "relation ... does not exist"
    errors, with a SQLite restore's advice; on a SQLite file without tables (a first run that stopped on
    a full disk after SQLite wrote its first page) it ended in a traceback (exit 1). Such a store is now
    a warning like a missing one, and `history list` says it is empty and that the first run creates it."""
    if store_url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(store_url.removeprefix("sqlite:///"))) as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # the 4096 bytes such a run left, no table in them
    mvsync, config = _configured(tmp_path, store_url)
    done = subprocess.run(
        [mvsync, "doctor", "--no-connect", "--json", "-c", str(config)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stdout + done.stderr
    store = [f for f in json.loads(done.stdout)["findings"] if f["area"] == "store" and f["severity"] != "ok"]
    assert [(f["check"], f["severity"]) for f in store] == [("schema", "warning")], store
    assert "is empty: it holds no mvsync tables yet" in store[0]["message"]
    assert "the first `mvsync run` creates them" in store[0]["message"]
    assert "restore" not in store[0]["message"]
    listed = subprocess.run([mvsync, "history", "list", "-c", str(config)], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 2 and "Traceback" not in listed.stderr, listed.stderr
    assert "is empty: it holds no mvsync tables yet" in listed.stderr and "no schema version" not in listed.stderr
    subprocess.run([mvsync, "run", "cycle", "-c", str(config)], check=True, capture_output=True, timeout=120)
    done = subprocess.run([mvsync, "doctor", "--no-connect", "-c", str(config)], capture_output=True, timeout=120)
    assert done.returncode == 0, done.stdout


class _ExpiredCacheAuth:
    """What the Exchange Online agent's auth says when its token cache holds no usable account."""

    def status(self) -> Any:
        from connector.agents.exchange_online._auth import AuthStatus

        return AuthStatus(
            "delegated", Path("cache.bin"), True, (), False, "no signed-in account; run mvsync auth login"
        )


class TokenCacheConnector(MemoryConnector):
    """A connector with a token cache, as the doctor sees it (``.auth.status()``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.auth = _ExpiredCacheAuth()


def test_a_token_cache_without_a_usable_account_is_an_error(tmp_path: Path) -> None:
    config = config_from_dict(
        {
            "store": {"url": f"sqlite:///{tmp_path / 'store.db'}"},
            "agents": {"exo": {"type": "tests.doctor.test_doctor:TokenCacheConnector", "settings": {"directory": "x"}}},
        },
        base_dir=tmp_path,
    )
    findings = {f.check: f for f in check_config(config)}
    token = findings["agents.exo.token-cache"]
    assert token.severity == "error" and "mvsync auth login" in token.message


def test_a_run_whose_process_ended_is_a_warning_until_the_next_run(healthy: World) -> None:
    """kill -9 leaves a run in progress; doctor says its process has ended, and the next run closes it."""
    from connector.store import RunHistory, SqlStore

    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    store = SqlStore(healthy.config.store_url())
    try:
        with store.transaction() as conn:
            run_id = RunHistory(conn).start_run("Delta Cycle", dry_run=False, started_at=1.0)
            conn.execute(update(run_history).where(run_history.c.id == run_id).values(pid=ended.pid))
    finally:
        store.close()
    report = run_doctor(healthy.config)
    [left] = [f for f in report.findings if f.check == "runs-left-in-progress"]
    assert left.severity == "warning" and report.ok  # the next run closes it: nothing to repair
    assert left.count == 1 and left.examples == [
        f"run {run_id} (Delta Cycle): pid {ended.pid} on {socket.gethostname()}"
    ]
    assert "the next run records them as stopped-interrupted" in left.message

    assert healthy.run("export").status == "success"
    after = run_doctor(healthy.config)
    assert [f.severity for f in after.findings if f.check.startswith("runs")] == ["ok"]


def test_years_of_history_are_a_warning_that_names_the_command_to_schedule(healthy: World) -> None:
    import time

    from connector.store import RunHistory, SqlStore

    [fresh] = [f for f in run_doctor(healthy.config).findings if f.check == "history"]
    assert fresh.severity == "ok" and "per-object errors) over the last 0 days" in fresh.message
    store = SqlStore(healthy.config.store_url())
    try:
        with store.transaction() as conn:
            RunHistory(conn).record_refused("Delta Cycle", "stopped-configuration", "x", time.time() - 400 * 86_400)
    finally:
        store.close()
    report = run_doctor(healthy.config)
    [old] = [f for f in report.findings if f.check == "history"]
    assert old.severity == "warning" and report.ok  # a nudge, not a failure (exit 0)
    assert "over the last 400 days" in old.message and "mvsync history clear --older-than 90" in old.message


def test_an_empty_photo_folder_is_a_warning_that_asks_whether_the_share_is_mounted(tmp_path: Path) -> None:
    """Found in the photo-folder pass: doctor called the empty mount point of an unmounted share
    "readable", and the next import stopped as empty; now doctor says so first (a warning: exit 0)."""
    photos = tmp_path / "hr-photos"
    photos.mkdir()
    config = config_from_dict(
        {
            "store": {"url": f"sqlite:///{tmp_path / 'store.db'}"},
            "agents": {"hr": {"type": "photo-folder", "settings": {"path": str(photos)}}},
        },
        base_dir=tmp_path,
    )

    def reachable() -> tuple[str, str]:
        [found] = [f for f in check_config(config) if f.check == "agents.hr.reachable"]
        return found.severity, found.message

    assert reachable() == ("warning", f"{photos} is readable but holds no photos: if it is a share, is it mounted?")
    (photos / "jdoe.jpg").write_bytes(b"a photo's bytes are not read here")
    assert reachable() == ("ok", f"{photos} is readable")


def _damaged_but_json(conn: Connection) -> list[str]:
    """Change bytes inside three documents so that each still reads as JSON but is not what mvsync wrote
    (as the console finds them: connector/web/_queries.py ``_readable``); what doctor should name."""
    from connector.store.tables import mv_object, run_step

    mv_id, attributes = conn.execute(select(mv_object.c.id, mv_object.c.attributes).limit(1)).one()
    dated = {**json.loads(attributes), "whenChanged": "\x00d:2026-13-45T99:00:00+00:00"}  # a date no longer a date
    conn.execute(update(mv_object).where(mv_object.c.id == mv_id).values(attributes=json.dumps(dated)))
    step_id = conn.execute(select(run_step.c.id).limit(1)).scalar_one()
    conn.execute(update(run_step).where(run_step.c.id == step_id).values(counters="[17]"))  # a list, not an object
    cs_id = conn.execute(select(cs_object.c.id).limit(1)).scalar_one()
    conn.execute(update(cs_object).where(cs_object.c.id == cs_id).values(hologram='"bitrot"'))  # a string
    return [f"cs_object row {cs_id}: its hologram", f"mv_object row {mv_id}: its attributes", f"run_step row {step_id}"]


def test_documents_that_are_json_but_damaged_are_found_by_the_real_cli(tmp_path: Path, store_url: str) -> None:
    mvsync, config = _cycled(tmp_path, store_url)
    from connector.store import SqlStore

    store = SqlStore(store_url)
    with store.transaction() as conn:
        named = _damaged_but_json(conn)
    store.close()
    done = subprocess.run([mvsync, "doctor", "-c", str(config), "--json"], capture_output=True, text=True, timeout=120)
    assert done.returncode == EXIT_PROBLEMS, done.stdout + done.stderr
    [documents] = [f for f in json.loads(done.stdout)["findings"] if f["check"] == "documents"]
    assert documents["severity"] == "error" and documents["count"] == 3, documents
    for row, example in zip(named, sorted(documents["examples"]), strict=True):
        assert example.startswith(row), documents
    assert "holds a date that is not one mvsync wrote" in " ".join(documents["examples"]), documents
    assert "restore" in documents["message"] and "mvsync doctor" in documents["message"], documents
