"""A photo folder on a network share whose server stops answering: a read that never comes back stops
the import after ``read_timeout_s``, naming the file, instead of hanging the run for ever.

A hard-mounted share's read blocks in the kernel; none can be made on loopback without an NFS server or
FUSE, so the read of one file is held here until the test lets it go (a handshake, not a timer): the
import's bound is what ends the wait, and the thread left blocked ends once the "share" answers."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from connector.agents.photo_folder import _connector
from tests.agents.photo_folder.helpers import cli_config
from tests.cli._configs import invoke
from tests.imaging.images import photo

THREAD = "mvsync photo-folder read: bob.jpg"


def test_a_read_that_never_comes_back_stops_the_import_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in a bad-day pass: with the photo share's server gone (a hard NFS mount, an SMB share whose
    server stopped answering), the import's read of a photo blocked for ever, and so did the run and
    every scheduled run after it (each waited for the run lock), without a word in any log."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "bob.jpg").write_bytes(photo(1, size=32))
    config = cli_config(tmp_path, folder, read_timeout_s=2)
    real_bounded = _connector.bounded
    held: list[str] = []  # the read the "share" holds, once it does

    def bounded(call: Callable[[], Any], timeout_s: float, name: str) -> Any:
        # the held read waits the configured bound; every other call, which must not time out, gets a
        # minute, so that a loaded machine's slow thread start cannot stop an import the test needs
        return real_bounded(call, timeout_s if name in held else 60.0, name)

    monkeypatch.setattr(_connector, "bounded", bounded)
    assert invoke("run", "full", "-c", str(config))[0] == 0

    share_back = threading.Event()
    real_read = _connector.read_photo

    def hung_read(root: Path, file: Any, max_file_bytes: int) -> tuple[bytes, int, int]:
        share_back.wait(120)  # the server does not answer until the test says so
        return real_read(root, file, max_file_bytes)

    monkeypatch.setattr(_connector, "read_photo", hung_read)
    held.append(THREAD)
    try:
        code, out, err = invoke("run", "full", "-c", str(config), "--json")
        assert code == 4, (out, err)
        [step] = json.loads(out)["steps"]
        assert step["status"].startswith("stopped-"), step
        assert "bob.jpg did not come back within 2 s (read_timeout_s)" in step["message"], step
        assert "nothing was marked deleted" in step["message"], step
        assert step["counters"].get("deletes", 0) == 0, step
        [stuck] = [t for t in threading.enumerate() if t.name == THREAD]  # the one read still blocked
        assert stuck.daemon
    finally:
        share_back.set()  # the share answers: the blocked read returns, and its thread ends
    stuck.join(60)
    assert not stuck.is_alive()
    assert not [t for t in threading.enumerate() if t.name.startswith("mvsync photo-folder read")]
