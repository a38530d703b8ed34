"""The admin HTTP API, ``mvsync emulator serve --json`` and ``mvsync bench emulator``."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys

import requests
from PIL import Image

from connector.bench.emulator import run as run_bench
from connector.emulator import GraphEmulator
from tests.emulator.conftest import make_api
from tests.harness.emulator import emulator_http

INFO_KEYS = {
    "authority",
    "graph_url",
    "ca_cert",
    "tenant_id",
    "client_id",
    "client_secret",
    "refresh_token",
    "admin_url",
    "token_url",
}


def test_admin_http_api(graph_emulator: GraphEmulator) -> None:
    http = emulator_http(graph_emulator)
    admin = graph_emulator.info["admin_url"]
    api = make_api(graph_emulator)

    def call(method: str, path: str, **kw: object) -> requests.Response:
        return http.request(method, admin + path, timeout=10, **kw)  # type: ignore[arg-type]

    assert set(call("GET", "/info").json()) >= INFO_KEYS
    users = call("GET", "/users").json()
    assert len(users) == 20 and {"mailbox", "hasPhoto", "mailNickname"} <= set(users[0])
    added = call("POST", "/users", json={"givenName": "Ada", "surname": "Lovelace", "mailbox": "cloud"}).json()
    assert added["mailNickname"] == "ada.lovelace" and added["userPrincipalName"] == "ada.lovelace@contoso.example"
    assert call("GET", f"/users/{added['userPrincipalName']}").json()["id"] == added["id"]
    assert call("PATCH", f"/users/{added['id']}", json={"jobTitle": "Analyst"}).json()["jobTitle"] == "Analyst"
    out = io.BytesIO()
    Image.new("RGB", (64, 64), "purple").save(out, "JPEG")
    assert call("PUT", f"/users/{added['id']}/photo", data=out.getvalue()).json()["hasPhoto"] is True
    assert api.get(f"/users/{added['id']}/photo/$value").content == out.getvalue()
    assert call("DELETE", f"/users/{added['id']}/photo").json() == {"deleted": True}
    assert call("DELETE", f"/users/{added['id']}").status_code == 200
    assert call("GET", f"/users/{added['id']}").status_code == 404
    assert call("POST", "/users", json={"bogus": 1}).status_code == 400
    assert call("POST", "/tokens/revoke", json={}).json()["revoked"] >= 1
    assert call("POST", "/tokens/lifetime", json={"seconds": 42}).json() == {"seconds": 42}
    token = http.post(
        graph_emulator.info["token_url"],
        timeout=10,
        data={
            "client_id": graph_emulator.info["client_id"],
            "client_secret": graph_emulator.info["client_secret"],
            "grant_type": "client_credentials",
            "scope": "https://graph.microsoft.com/.default",
        },
    ).json()
    assert token["expires_in"] == 42
    assert call("POST", "/tokens/expire-access").status_code == 200
    assert api.get("/users").status_code == 401
    assert call("PUT", "/faults", json={"profile": "light"}).json()["name"] == "light"
    assert call("GET", "/faults").json()["rate_429"] == 0.02
    assert call("PUT", "/faults", json={"profile": None}).json()["name"] == "none"
    assert call("PUT", "/latency", json={"latency_ms": 5}).status_code == 200
    assert call("POST", "/delta/expire").status_code == 200
    assert call("POST", "/tokens/refresh-token", json={}).json()["refresh_token"]
    stats = call("GET", "/stats").json()
    assert stats["admin_requests"] >= 10 and stats["by_status"]["401"] == 1
    assert call("POST", "/stats/reset").status_code == 200
    assert call("GET", "/nope").status_code == 404
    assert call("GET", "/tokens/revoke").json() == {"error": "no admin route GET /tokens/revoke"}  # POST only
    assert call("GET", "/users/x/unknown").status_code == 404
    assert call("DELETE", "/photo-update-settings").json() == {}  # an operation with no result


def test_cli_serve_prints_info_and_stops_on_sigterm() -> None:
    cmd = [
        sys.executable,
        "-c",
        "from connector.cli import main; main()",
        "emulator",
        "serve",
        "--users",
        "5",
        "--seed",
        "3",
        "--faults",
        "light",
        "--json",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        info = json.loads(proc.stdout.readline())
        assert set(info) >= INFO_KEYS
        http = requests.Session()
        http.verify, http.trust_env = info["ca_cert"], False
        doc = http.get(f"{info['authority']}/v2.0/.well-known/openid-configuration", timeout=10)
        assert doc.json()["token_endpoint"] == info["token_url"]
        http.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    assert not os.path.exists(info["ca_cert"])  # temp files are cleaned up


def test_cli_serve_rejects_bad_faults() -> None:
    cmd = [
        sys.executable,
        "-c",
        "from connector.cli import main; main()",
        "emulator",
        "serve",
        "--faults",
        "x",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "unknown fault profile" in proc.stderr


def test_a_bad_throttling_model_or_tenant_is_a_usage_error_for_serve_and_bench() -> None:
    """Exit code 2 and what is wrong, from ``emulator serve`` and from ``bench import`` (which starts no emulator).

    With ``--json`` a failure is also its failure object on stdout: one the command itself finds, and
    click's check of an option's range, which comes before the command."""
    for args, says, failure_object in (
        (["emulator", "serve", "--throttle", '{"app_concurrency": "x"}'], "throttling limit 'app_concurrency'", False),
        (
            ["bench", "import", "--throttle", "rate-15", "--json"],
            "--throttle: unknown throttling model 'rate-15'",
            True,
        ),
        (["emulator", "serve", "--users", "0"], "Invalid value for '--users'", False),
        (["bench", "import", "--photo-ratio", "2", "--json"], "Invalid value for '--photo-ratio'", True),
    ):
        cmd = [sys.executable, "-c", "from connector.cli import main; main()", *args]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 2, proc.stderr
        assert says in proc.stderr and "Traceback" not in proc.stderr
        if failure_object:
            doc = json.loads(proc.stdout)
            assert doc["status"] == "stopped-configuration" and doc["exit_code"] == 2 and says in doc["message"]
        else:
            assert proc.stdout == ""


def test_bench_runs_from_a_separate_process() -> None:
    result = run_bench(seconds=0.5, concurrency=4, users=30)
    assert result["photo_requests_per_s"] > 50
    assert result["errors"] == {} and result["server_photo_requests"] == result["responses"]
    assert result["emulator_assumptions"]["latency"].startswith("0 ms added to every Graph call: an assumption")
    from connector.cli._bench import bench_app  # the CLI holds the command; the benchmark is a library

    assert "emulator" in [c.name for c in bench_app.registered_commands]
