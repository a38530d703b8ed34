"""After each step the engine asks glibc to give its free pages back (connector/engine/_heap.py)."""

from __future__ import annotations

import ctypes
import os
import platform
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.engine import _engine, _heap
from tests.engine.conftest import World, with_profiles

GLIBC = sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


def _resident_bytes() -> int:
    """This process's resident set (Linux: /proc/self/statm, in pages)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``_malloc_trim`` looked up again (it is cached for the process), and again after the test."""
    _heap._malloc_trim.cache_clear()
    monkeypatch.setattr(_heap, "_malloc_trim", _heap._malloc_trim)
    yield
    _heap._malloc_trim.cache_clear()


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's (a GNU extension)")
def test_the_free_pages_inside_the_heap_go_back_to_the_system() -> None:
    """96 MB of 48 KB values (below glibc's mmap threshold, 128 KB: they come from the heap) are freed
    but every sixteenth, so no free space is at the heap's top: ``free`` gives none of it back, and
    it stays resident. ``malloc_trim(0)`` gives back the whole free pages inside the heap's chunks
    (man-pages, malloc_trim(3), glibc 2.8 and later): most of the 90 MB freed."""
    values = [os.urandom(48 << 10) for _ in range(2048)]
    kept = values[::16]
    del values
    freed = (2048 - len(kept)) * (48 << 10)
    before = _resident_bytes()
    assert _heap.return_freed_heap() is True
    returned = before - _resident_bytes()
    assert returned > freed // 2, f"{returned:,} bytes returned of {freed:,} freed"
    assert len(kept) == 128


def test_nothing_is_asked_where_the_c_library_is_not_glibc(monkeypatch: pytest.MonkeyPatch, fresh: None) -> None:
    """musl (Alpine) has no ``gnu_get_libc_version``: nothing is called, whatever else it exports."""

    class _Musl:
        def __init__(self, name: Any) -> None:
            self.malloc_trim = lambda pad: pytest.fail("malloc_trim called on a C library that is not glibc")

    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(ctypes, "CDLL", _Musl)
    assert _heap.return_freed_heap() is False


def test_nothing_is_loaded_on_windows(monkeypatch: pytest.MonkeyPatch, fresh: None) -> None:
    def no_load(name: Any) -> None:
        pytest.fail("a C library loaded on Windows")

    monkeypatch.setattr(sys, "platform", "win32")
    monkeypatch.setattr(ctypes, "CDLL", no_load)
    assert _heap.return_freed_heap() is False


def test_the_engine_returns_the_freed_heap_after_each_step(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    monkeypatch.setattr(_engine, "return_freed_heap", lambda: calls.append(len(calls)) or True)
    steps = [{"type": "full-import", "agent": "ad"}, {"type": "full-import", "agent": "exo"}]
    engine = with_profiles(world, tmp_path, {"two": {"steps": steps}})
    result = engine.run_profile("two")
    assert [s.status for s in result.steps] == ["success", "success"]
    assert len(calls) == 2
