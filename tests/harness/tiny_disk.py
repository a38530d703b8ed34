"""A small volume that fills up for real: a tmpfs of a chosen size, mounted without root.

Why a real volume: a full disk is the kernel answering a write with ENOSPC, which SQLite turns into
SQLITE_FULL at whichever write meets it (a page of the file, a frame of the ``-wal``, the ``-shm``).
``max_page_count`` makes only SQLite's own limit; ``RLIMIT_FSIZE`` gives EFBIG, another error. The
tmpfs is mounted in a new user and mount namespace (``unshare -rm``: no root needed where the
kernel allows unprivileged user namespaces), held by a child that waits on its stdin; commands
run in that namespace with ``nsenter``. Outside it the folder is the empty mount point (SQLite
resolves the ``/proc/PID/root`` path a test could reach it by, so the store must be opened inside).
Linux only: the tests that use it skip elsewhere, or where namespaces are not allowed.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["TinyDisk", "tiny_disk"]


class TinyDisk:
    """The tmpfs at ``folder``, as commands run in its namespace see it."""

    def __init__(self, folder: Path, holder: subprocess.Popen[str]) -> None:
        self.folder = folder
        self._holder = holder

    def run(self, *command: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """``command`` run where the tmpfs is mounted, from its folder; output captured as text."""
        return subprocess.run([*self._enter, *command], capture_output=True, text=True, timeout=timeout, check=False)

    def fill(self, leave_bytes: int = 0) -> None:
        """Fill the volume with ``filler`` and ``filler-2`` until ``leave_bytes`` or fewer are free."""
        done = self.run(sys.executable, "-c", _FILL, str(self.folder), str(leave_bytes))
        assert done.returncode == 0, done.stderr

    def free(self) -> None:
        """Remove what :meth:`fill` wrote: the volume has room again."""
        done = self.run("rm", "-f", str(self.folder / "filler"), str(self.folder / "filler-2"))
        assert done.returncode == 0, done.stderr

    def sizes(self) -> dict[str, int]:
        """The files in the volume's folder and their sizes in bytes."""
        done = self.run(sys.executable, "-c", _SIZES, str(self.folder))
        assert done.returncode == 0, done.stderr
        return {name: int(size) for name, size in (line.rsplit(" ", 1) for line in done.stdout.splitlines())}

    @property
    def _enter(self) -> list[str]:
        return ["nsenter", "-t", str(self._holder.pid), "-U", "-m", "--preserve-credentials", f"--wd={self.folder}"]


#: Fill the folder ``argv[1]`` until at most ``argv[2]`` bytes are free: one big file, then 4 KiB writes.
_FILL = """
import os, shutil, sys
folder, leave = sys.argv[1], int(sys.argv[2])
free = shutil.disk_usage(folder).free
with open(os.path.join(folder, "filler"), "wb") as f:
    try:
        f.write(b"\\0" * max(0, free - leave - 65536))
        f.flush()
    except OSError:
        pass
with open(os.path.join(folder, "filler-2"), "wb", buffering=0) as f:
    try:
        while shutil.disk_usage(folder).free > leave:
            f.write(b"\\0" * 4096)
    except OSError:
        pass
"""
#: Each file of the folder ``argv[1]`` as ``NAME SIZE`` lines.
_SIZES = """
import os, sys
for entry in os.scandir(sys.argv[1]):
    if entry.is_file():
        print(entry.name, entry.stat().st_size)
"""


@contextlib.contextmanager
def tiny_disk(folder: Path, size_kib: int) -> Iterator[TinyDisk]:
    """A tmpfs of ``size_kib`` KiB mounted on ``folder`` (made if missing) in a namespace of its own."""
    import pytest

    if not sys.platform.startswith("linux") or shutil.which("unshare") is None or shutil.which("nsenter") is None:
        pytest.skip("needs Linux's unshare and nsenter to mount a small tmpfs")
    folder.mkdir(parents=True, exist_ok=True)
    script = f'mount -t tmpfs -o size={size_kib}k tmpfs "$1" && echo mounted && exec cat'
    holder = subprocess.Popen(
        ["unshare", "-rm", "sh", "-c", script, "sh", str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None
        if holder.stdout.readline().strip() != "mounted":
            pytest.skip(f"cannot mount a tmpfs in a user namespace here: {holder.communicate(timeout=30)[1].strip()}")
        yield TinyDisk(folder, holder)
    finally:
        try:
            holder.communicate(timeout=30)  # closes its stdin: cat ends, and with it the namespace and the tmpfs
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.communicate()
