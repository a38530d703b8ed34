"""Photo files on disk: which names count as photos, and writing output without half-written files.

Shared by ``mvsync photo convert`` and the ``photo-folder`` agent, which both read folders of
photos and write JPEGs that other programs (or the next import) may read at any moment.
"""

from __future__ import annotations

from pathlib import Path

from connector.files import atomic_write
from connector.imaging._formats import PHOTO_EXTENSIONS, has_photo_extension

__all__ = ["PHOTO_EXTENSIONS", "is_photo_name", "write_atomic"]


def is_photo_name(name: str) -> bool:
    """A visible file whose extension is an accepted photo format's, in any case (``JDOE.JPG``)."""
    return not name.startswith(".") and has_photo_extension(name)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a partial one.

    ``connector.files.atomic_write``: a hidden temporary file in the same folder (so ``os.replace``
    is a rename on one file system) is flushed to disk before the rename. Photo-folder scans skip
    hidden files, so a crash leaves at most an ignored temporary behind. The file is created 0600
    on POSIX (photos are personal data).
    """
    atomic_write(path, data)
