"""``mvsync ui``: refuses unsafe binds, explains a missing [web] extra, and serves for real."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from connector.cli._app import app
from tests.web.conftest import PhotoWorld

CONFIG = """
[store]
url = "sqlite:///{db}"
[agents.hr]
type = "photo-folder"
settings = {{ path = "photos" }}
"""


@pytest.fixture
def config_file(tmp_path: Path, photo_world: PhotoWorld) -> Path:
    db = photo_world.config.store_url().removeprefix("sqlite:///")
    path = tmp_path / "mvsync.toml"
    path.write_text(CONFIG.format(db=db), encoding="utf-8")
    return path


def test_refuses_a_public_bind_without_credentials(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MVSYNC_UI_TOKEN", "MVSYNC_UI_USER", "MVSYNC_UI_PASSWORD"):
        monkeypatch.delenv(var, raising=False)
    result = CliRunner().invoke(app, ["ui", "-c", str(config_file), "--host", "0.0.0.0"])
    assert result.exit_code == 2
    assert "refusing to listen on 0.0.0.0" in result.output and "MVSYNC_UI_TOKEN" in result.output


def test_public_bind_with_a_token_starts(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    started: dict[str, Any] = {}
    monkeypatch.setenv("MVSYNC_UI_TOKEN", "tok-123")

    def run(server: Any, sockets: list[socket.socket]) -> None:
        started.update(config=server.config, bound=[s.getsockname() for s in sockets])
        for sock in sockets:
            sock.close()

    monkeypatch.setattr("uvicorn.Server.run", run)
    port = _free_port()
    result = CliRunner().invoke(app, ["ui", "-c", str(config_file), "--host", "0.0.0.0", "--port", str(port)])
    assert result.exit_code == 0, result.output
    config = started["config"]
    assert config.host == "0.0.0.0" and config.port == port and config.server_header is False
    assert started["bound"] == [("0.0.0.0", port)]


def test_a_port_in_use_is_one_line_that_says_what_to_do_and_exit_2(config_file: Path) -> None:
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        result = CliRunner().invoke(app, ["ui", "-c", str(config_file), "--port", str(port)])
    assert result.exit_code == 2, result.output
    assert f"cannot listen on 127.0.0.1:{port}" in result.output and "--port" in result.output
    assert "mvsync console on" not in result.output  # it never said it was up


def test_missing_web_extra_is_explained(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn -> ModuleNotFoundError
    result = CliRunner().invoke(app, ["ui", "-c", str(config_file)])
    assert result.exit_code == 2
    assert "[web] extra" in result.output and "pip install 'mvsync[web]'" in result.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serves_on_loopback(config_file: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MVSYNC_UI_")}
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "mvsync"), "ui", "-c", str(config_file), "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/search?q=person")
                response = conn.getresponse()
                body = response.read().decode()
                break
            except ConnectionRefusedError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "mvsync ui did not start"
                time.sleep(0.1)
        assert response.status == 200 and "Person 00 Example" in body
        assert response.getheader("x-content-type-options") == "nosniff"
        assert response.getheader("server") is None
    finally:
        proc.terminate()
        proc.wait(10)
