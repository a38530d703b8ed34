"""A photo swapped for a link *during* the read is refused without ``O_NOFOLLOW`` (as on Windows).

The swap is made for real on the file system at the exact moment (inside ``os.open``), so the
checks around the open, not the flag, are what is tested: ``_READ_FLAGS`` is stripped of
``O_NOFOLLOW`` as Windows has none.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from connector.agents.photo_folder import _scan
from tests.imaging.images import photo


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(_scan, "_READ_FLAGS", _scan._READ_FLAGS & ~getattr(os, "O_NOFOLLOW", 0))
    path = tmp_path / "photos"
    path.mkdir()
    (path / "jdoe.jpg").write_bytes(photo(1, size=64))
    (path / "asmith.jpg").write_bytes(photo(2, size=64))
    return path


def _swap_to_link(path: Path, target: Path) -> None:
    os.remove(path)
    os.symlink(target, path)


def _open_with(
    monkeypatch: pytest.MonkeyPatch, name: str, before: Callable[[], None], after: Callable[[], None]
) -> None:
    """``os.open`` of ``name`` runs ``before`` just before and ``after`` just after the real open."""
    real_open = os.open

    def swapping_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.path.basename(os.fspath(path)) != name:
            return real_open(path, flags, *args, **kwargs)
        before()
        fd = real_open(path, flags, *args, **kwargs)
        after()
        return fd

    monkeypatch.setattr(os, "open", swapping_open)


def _read(folder: Path, name: str) -> bytes:
    entry = next(f for f in _scan.scan_folder(folder, recursive=False, max_file_bytes=10**6) if f.relpath == name)
    return _scan.read_photo(folder, entry, 10**6)[0]


def test_unswapped_files_read_normally(folder: Path) -> None:
    assert _read(folder, "jdoe.jpg") == photo(1, size=64)


def test_a_link_swapped_in_between_lstat_and_open_is_refused(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "shadow.jpg"
    secret.write_bytes(b"not for the tenant")
    _open_with(monkeypatch, "jdoe.jpg", lambda: _swap_to_link(folder / "jdoe.jpg", secret), lambda: None)
    with pytest.raises(_scan.ReadError) as refused:
        _read(folder, "jdoe.jpg")
    assert refused.value.name == "symlink-refused"


def test_a_link_to_another_photo_of_the_folder_is_refused_too(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the resolved path stays inside the folder, so only the inode comparison catches it
    _open_with(monkeypatch, "jdoe.jpg", lambda: _swap_to_link(folder / "jdoe.jpg", folder / "asmith.jpg"), lambda: None)
    with pytest.raises(_scan.ReadError) as refused:
        _read(folder, "jdoe.jpg")
    assert refused.value.name == "symlink-refused"


def test_a_link_swapped_in_right_after_the_open_is_refused(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "shadow.jpg"
    secret.write_bytes(b"not for the tenant")
    _open_with(monkeypatch, "jdoe.jpg", lambda: None, lambda: _swap_to_link(folder / "jdoe.jpg", secret))
    with pytest.raises(_scan.ReadError) as refused:
        _read(folder, "jdoe.jpg")
    assert refused.value.name == "symlink-refused"


def test_a_read_that_fails_after_the_open_is_a_transient_read_error(
    folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A share that drops between the open and the read (EIO, ESTALE) failed the read with a bare
    OSError, which ended the step as a connector exception with a traceback. The I/O error is
    injected here (no file system on this machine fails a read on demand)."""
    real_fdopen = os.fdopen

    class _DroppedShare:
        def __init__(self, handle: Any) -> None:
            self._handle = handle

        def __enter__(self) -> _DroppedShare:
            return self

        def __exit__(self, *exc: object) -> None:
            self._handle.close()

        def fileno(self) -> int:
            fileno: int = self._handle.fileno()
            return fileno

        def read(self, _size: int) -> bytes:
            raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "fdopen", lambda fd, *args: _DroppedShare(real_fdopen(fd, *args)))
    with pytest.raises(_scan.ReadError) as failed:
        _read(folder, "jdoe.jpg")
    assert (failed.value.name, failed.value.transient) == ("file-unreadable", True)
    assert failed.value.detail == "jdoe.jpg: Input/output error"
