"""Replacing a file another program holds open (Windows): tried again for a moment, then said plainly.

On Windows a rename over a file that another process has open without ``FILE_SHARE_DELETE`` fails
with ERROR_ACCESS_DENIED or ERROR_SHARING_VIOLATION (``PermissionError``, ``winerror`` 5 or 32):
an antivirus scanning the file just written, a backup agent, windows_exporter reading the metrics
textfile, ``mvsync auth status`` reading the token cache. Such a hold lasts milliseconds.

Linux renames over open files, so these tests play Windows' part: ``os.replace`` fails as Windows
would, for the one target, a given number of times. Everything else is the package's real code.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from connector import metrics
from connector.files import atomic_write

ERROR_SHARING_VIOLATION = 32
Replace = Callable[[str | os.PathLike[str], str | os.PathLike[str]], None]


@pytest.fixture
def held_open(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path, int], list[str]]]:
    """``hold(target, times)``: the next ``times`` renames onto ``target`` fail as on Windows; the
    attempts are listed (their sources) in the list it returns."""
    real: Replace = os.replace

    def hold(target: Path, times: int) -> list[str]:
        attempts: list[str] = []

        def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
            if Path(dst) == target:
                attempts.append(os.fspath(src))
                if len(attempts) <= times:
                    exc = PermissionError(errno.EACCES, "Access is denied", os.fspath(src), None, os.fspath(dst))
                    exc.winerror = ERROR_SHARING_VIOLATION  # type: ignore[attr-defined]
                    raise exc
            real(src, dst)

        monkeypatch.setattr(os, "replace", replace)
        return attempts

    yield hold


def test_a_target_held_open_for_a_moment_is_replaced(
    tmp_path: Path, held_open: Callable[[Path, int], list[str]]
) -> None:
    """Found: the first refusal failed the write; for the token cache, that stopped the run
    ("cannot write the token cache ...: free space there"), for a photo backup it failed the person."""
    target = tmp_path / "token-cache.bin"
    target.write_bytes(b"old")
    attempts = held_open(target, 3)
    atomic_write(target, b"new", private=True)
    assert target.read_bytes() == b"new"
    assert len(attempts) == 4 and len(set(attempts)) == 1  # the same temporary, tried again
    assert [p.name for p in tmp_path.iterdir()] == ["token-cache.bin"]


def test_a_target_held_open_for_good_is_said_and_the_old_file_kept(
    tmp_path: Path, held_open: Callable[[Path, int], list[str]]
) -> None:
    target = tmp_path / "jdoe 648x648.jpg"
    target.write_bytes(b"old")
    attempts = held_open(target, 10_000)
    with pytest.raises(PermissionError) as caught:
        atomic_write(target, b"new")
    assert 1 < len(attempts) < 100
    assert caught.value.filename == str(target)
    assert caught.value.strerror is not None and "another program has it open" in caught.value.strerror
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_other_failures_are_not_tried_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        calls.append(os.fspath(src))
        raise PermissionError(errno.EACCES, "Permission denied", os.fspath(src))  # POSIX: the folder's mode

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(PermissionError, match="Permission denied"):
        atomic_write(tmp_path / "x", b"data")
    assert len(calls) == 1


def test_the_metrics_textfile_held_open_by_the_collector_is_written(
    tmp_path: Path, held_open: Callable[[Path, int], list[str]]
) -> None:
    """windows_exporter's textfile collector reads ``*.prom`` while mvsync replaces it (prometheus_client's
    writer renamed once, with ``os.replace`` on Windows)."""
    target = tmp_path / "mvsync.prom"
    target.write_text("# old\n", encoding="utf-8")
    metrics.configure(textfile=target)
    try:
        attempts = held_open(target, 2)
        assert metrics.write_textfile() == target
        assert len(attempts) == 3  # the rename Windows refused twice, and the one it took
    finally:
        metrics.configure(textfile=None)
    assert "mvsync_" in target.read_text(encoding="utf-8")
    # no temporary file left behind; the lock runs take turns with stays (the collector reads *.prom only)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mvsync.prom", "mvsync.prom.lock"]
