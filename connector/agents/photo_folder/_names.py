"""The file names of the photo backup folder, compared the way Windows compares them.

Why: NTFS (and SMB shares) match names case-insensitively, so ``JDoe 648x648.jpg`` and ``jdoe
648x648.jpg`` are one file there. Two accounts differing only in case would share one backup (the
second photo overwriting the first), and an account renamed in case (``jdoe`` to ``JDoe``) would
lose the backup it had just written when the old name's file is removed. One export reads the names
once and keeps them up to date as it writes and removes, so each change needs no listing of its own.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["BackupNames"]


class BackupNames:
    """The names in ``folder`` (none when it does not exist yet: a dry run), by case-insensitive key."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            names = []
        self._names = set(names)
        self._by_key = {name.lower(): name for name in names}

    def clash(self, name: str) -> str | None:
        """The name in the folder that differs from ``name`` only in case (the same file on Windows), unless
        ``name`` itself is there too (a folder written by a case-sensitive system holds both)."""
        held = self._by_key.get(name.lower())
        return held if held is not None and name not in self._names else None

    def wrote(self, name: str) -> None:
        self._names.add(name)
        self._by_key[name.lower()] = name

    def removed(self, name: str) -> None:
        self._names.discard(name)
        twins = [other for other in self._names if other.lower() == name.lower()]
        if twins:
            self._by_key[name.lower()] = twins[0]
        else:
            self._by_key.pop(name.lower(), None)
