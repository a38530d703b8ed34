"""``mvsync demo --json`` as a user runs it: a real subprocess, the emulator over HTTPS, no AD."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from ldap3 import SUBTREE

from connector.config import ConfigError
from connector.demo import SharedNames, prepare_dir, run_demo
from tests.harness.samba_dc import ADSettings, connect, delete_subtree

pytestmark = pytest.mark.slow

MVSYNC = [sys.executable, "-c", "from connector.cli import main; main()"]


def _demo(data_dir: Path, users: int = 30) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AD_")}  # the LDIF stand-in
    proc = subprocess.run(
        [*MVSYNC, "demo", "--users", str(users), "--data-dir", str(data_dir), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, proc.stdout  # one JSON object, nothing else on stdout
    return json.loads(lines[0])


def test_demo_json_and_everything_under_the_folder(tmp_path: Path) -> None:
    data_dir = tmp_path / "demo"
    report = _demo(data_dir)
    assert report["status"] == "success"
    assert report["seconds"] < 60
    assert report["tenant"]["users"] == 30
    assert report["photos_exported"] > 0
    assert report["delta_cycle"]["status"] == "success"
    assert report["delta_cycle"]["work_done"] == 0
    assert report["delta_exports"] == 0
    assert report["ad"]["mode"] == "ldif-snapshot"
    kinds = [(s["agent"], s["step"]) for s in report["full_cycle"]["steps"]]
    assert ("ad", "export") in kinds and kinds[-2:] == [("ad", "delta-import"), ("ad", "delta-sync")]
    # hybrid (issue #19): the on-premises mailboxes' photos come from Exchange Server over EWS
    exs = next(s for s in report["full_cycle"]["steps"] if (s["agent"], s["step"]) == ("exs", "full-import"))
    assert exs["status"] == "success" and report["exchange_server"]["mailboxes"] == exs["counters"].get("adds", 0)
    for key in ("config", "store", "ldif"):
        path = Path(report[key])
        assert path.is_file() and path.is_relative_to(data_dir), key
    ldif = Path(report["ldif"]).read_text()
    assert ldif.startswith("version: 1") and ldif.count("changetype: modify") == report["photos_exported"]
    for secret in (data_dir / "secrets").iterdir():
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert "{ file = " in (data_dir / "mvsync.toml").read_text()

    # the folder works with the other commands afterwards
    history = subprocess.run(
        [*MVSYNC, "history", "list", "-c", report["config"], "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Full Cycle" in history.stdout and "Delta Cycle" in history.stdout
    # mv show (the README's next step) and pending-exports read the folder's store and agents
    store = sqlite3.connect(report["store"])
    try:
        account = store.execute(
            "SELECT json_extract(attributes, '$.accountName') FROM mv_object "
            "WHERE json_extract(attributes, '$.photo') IS NOT NULL LIMIT 1"
        ).fetchone()[0]
    finally:
        store.close()
    shown = subprocess.run(
        [*MVSYNC, "mv", "show", account, "-c", report["config"], "--json"], capture_output=True, text=True
    )
    assert shown.returncode == 0, shown.stderr
    assert account in shown.stdout and "photo" in shown.stdout
    pending = subprocess.run(
        [*MVSYNC, "pending-exports", "ad", "-c", report["config"], "--format", "json"],
        capture_output=True,
        text=True,
    )
    assert pending.returncode == 0 and pending.stdout.strip() == "[]"  # the delta cycle left nothing to export
    # and the console serves its pages over the same folder
    from fastapi.testclient import TestClient

    from connector.config import load_config
    from connector.web import create_app

    with TestClient(create_app(load_config(Path(report["config"]))), base_url="http://127.0.0.1") as console:
        assert console.get("/").status_code == 200
        found = console.get("/search", params={"q": account})
        assert found.status_code == 200 and account in found.text
        assert "AD thumbnail" in console.get("/persons/1").text

    # issue 16: the folder the demo leaves is one doctor and the README's dry run handle cleanly
    doctor = subprocess.run(
        [*MVSYNC, "doctor", "-c", report["config"], "--json"], capture_output=True, text=True, check=False
    )
    assert doctor.returncode == 0, doctor.stdout
    warned = {f["check"]: f["message"] for f in json.loads(doctor.stdout)["findings"] if f["severity"] == "warning"}
    assert warned and all(
        m.startswith("the demo's emulator is not running; run `mvsync demo` again") for m in warned.values()
    )
    dry = subprocess.run(
        [*MVSYNC, "run", "Delta Cycle", "--dry-run", "-c", report["config"]],
        capture_output=True,
        text=True,
        check=False,
    )
    assert dry.returncode == 4 and "Traceback" not in dry.stderr
    assert "hint: the demo's emulator is not running; run `mvsync demo` again" in dry.stderr

    # running it again starts afresh in the same folder
    again = _demo(data_dir)
    assert again["full_cycle"]["run_id"] == 1
    assert again["photos_exported"] == report["photos_exported"]


def test_demo_refuses_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "precious.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not made by `mvsync demo`"):
        prepare_dir(tmp_path)
    assert (tmp_path / "precious.txt").read_text() == "keep me"


@pytest.mark.samba
def test_demo_writes_to_the_directory_the_ad_variables_name(
    samba_ad: ADSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With AD_* set the demo creates its users in its own OU of that directory and exports there."""
    env = {"AD_HOST": samba_ad.host, "AD_BASE_DN": samba_ad.base_dn, "AD_BIND_DN": samba_ad.bind_dn}
    env |= {"AD_PASSWORD": samba_ad.password, "AD_LDAPS_PORT": str(samba_ad.ldaps_port)}
    if samba_ad.ca_cert:
        env["AD_CA_CERT"] = str(samba_ad.ca_cert)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    names = SharedNames.new()  # another session may run this test on the same DC now
    ou = f"{names.ou('mvsync-demo')},{samba_ad.base_dn}"
    try:
        report = run_demo(25, tmp_path / "demo", names=names)
        assert report["status"] == "success"
        assert report["ad"]["mode"] == "directory" and report["ldif"] is None
        assert report["delta_cycle"]["work_done"] == 0
        conn = connect(samba_ad)
        try:
            conn.search(ou, "(thumbnailPhoto=*)", SUBTREE, attributes=["sAMAccountName"])
            written = [e for e in conn.response if e.get("type") == "searchResEntry"]
        finally:
            conn.unbind()
        assert len(written) == report["photos_exported"] > 0
    finally:
        conn = connect(samba_ad)
        try:
            delete_subtree(conn, ou)
        finally:
            conn.unbind()
