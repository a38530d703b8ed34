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
    """The names in ``folder`` (none when it does not exist yet: a dry run), grouped by case-insensitive key."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            names = []
        self._by_key: dict[str, set[str]] = {}
        for name in names:
            self.wrote(name)

    def clash(self, name: str) -> str | None:
        """The name in the folder that differs from ``name`` only in case (the same file on Windows), unless
        ``name`` itself is there too (a folder written by a case-sensitive system holds both)."""
        spellings = self._by_key.get(name.lower(), set())
        return None if not spellings or name in spellings else min(spellings)

    def wrote(self, name: str) -> None:
        self._by_key.setdefault(name.lower(), set()).add(name)

    def removed(self, name: str) -> None:
        spellings = self._by_key.get(name.lower(), set())
        spellings.discard(name)
        if not spellings:
            self._by_key.pop(name.lower(), None)
