"""A photo folder whose paths are longer than Windows reads (MAX_PATH, 260) without long paths enabled.

On Windows, unless "Enable Win32 long paths" is on, a file function given a path of 260 characters
or more fails as if nothing were there (ERROR_PATH_NOT_FOUND, ``FileNotFoundError``), while the
listing of the folder above it shows the name (learn.microsoft.com, "Maximum Path Length
Limitation"). A deep HR share (``\\\\fileserver\\hr\\photos\\<site>\\<department>\\...``) gets there.

Linux reaches such paths, so these tests play Windows' part: the path is really that long here, and
the one call Windows would fail fails the same way (as the other bad-day tests of the agent inject
what a local file system will not do). Everything else is the agent's real code.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import connector.files as files
from connector.agents.photo_folder import _scan
from connector.sdk import StopRunError
from tests.agents.photo_folder.helpers import by_anchor, connector, run_import
from tests.imaging.images import photo

MAX_PATH = 260


def _deep(tmp_path: Path) -> tuple[Path, Path]:
    """``photos`` and a sub-folder of it whose path passes MAX_PATH (its parent's is 30 characters short)."""
    folder = tmp_path / "photos"
    site = folder / "Human Resources - Site B"
    department = site / ("Department " + "D" * (MAX_PATH - 30 - len(str(site)) - len("/Department ")))
    assert len(str(department)) == MAX_PATH - 30  # (whatever the length of this machine's temporary folder)
    deep = department / ("2026 " + "x" * 40)
    deep.mkdir(parents=True)
    return folder, deep


def _fail_past_max_path(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """``_scan.os.<name>`` fails for a path of MAX_PATH or more as Windows does without long paths."""
    real: Callable[..., Any] = getattr(os, name)

    def call(path: Any, *args: Any, **kwargs: Any) -> Any:
        if len(os.fspath(path)) + (2 if name == "scandir" else 0) >= MAX_PATH:  # scandir lists "folder\*"
            raise FileNotFoundError(errno.ENOENT, "The system cannot find the path specified", os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(files, "_WINDOWS", True, raising=False)
    monkeypatch.setattr(_scan.os, name, call)


def test_a_photo_past_max_path_is_that_persons_error_saying_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found: the file was listed, then its open failed as 'not found', so bob's error said 'was removed
    during the import' at every import, sending HR to look for a photo that is there."""
    folder, deep = _deep(tmp_path)
    (deep / "bob.jpg").write_bytes(photo(1, size=64))
    (folder / "ann.jpg").write_bytes(photo(2, size=64))
    with monkeypatch.context() as windows:
        _fail_past_max_path(windows, "lstat")
        found, watermark, _ = run_import(connector(tmp_path, folder, recursive=True))
    entries = by_anchor(found)
    assert entries["ann"].error is None
    error = entries["bob"].error
    assert error is not None and error.name == "path-too-long", error
    assert "characters" in error.detail and "Enable Win32 long paths" in error.detail
    assert "removed" not in error.detail
    # long paths enabled (the file unchanged): the next delta import reads it
    delta = by_anchor(run_import(connector(tmp_path, folder, recursive=True), watermark=watermark)[0])
    assert delta["bob"].error is None and delta["bob"].attributes["photo"] == photo(1, size=64)


def test_a_sub_folder_past_max_path_stops_the_import_saying_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found: the sub-folder was listed, then its own listing failed as 'not found', and the step stopped
    with '... was removed or renamed while the import listed it; run the import again', at every import."""
    folder, deep = _deep(tmp_path)
    (deep / "bob.jpg").write_bytes(photo(1, size=64))
    _fail_past_max_path(monkeypatch, "scandir")
    with pytest.raises(StopRunError) as stopped:
        run_import(connector(tmp_path, folder, recursive=True))
    said = str(stopped.value)
    assert said.startswith(f"cannot list {deep}: its path is "), said
    assert "Enable Win32 long paths" in said and "nothing was marked deleted" in said
    assert "removed or renamed" not in said


def test_off_windows_or_short_a_missing_path_is_what_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    long_path = tmp_path / ("z" * 300)
    assert files.windows_path_too_long(long_path) == ""  # Linux reads it: not a reason here
    monkeypatch.setattr(files, "_WINDOWS", True)
    assert files.windows_path_too_long(tmp_path / "short") == ""
    assert files.windows_path_too_long(long_path).startswith(f"its path is {len(str(long_path))} characters")
