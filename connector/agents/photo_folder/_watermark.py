"""The delta watermark: what each file looked like, and which accounts were imported, last time.

Per file: ``mtime_ns``, ``size`` and ``stamp`` (so an unchanged file is not even opened) plus its
sha256, or the import error it gave (so a broken file is reported again without being re-read, as long
as the limits it was judged by, ``limits``, are still the settings' own). Per
account: the anchor, file and checksum imported, so a delta can tell a new account (add) from a
changed one (replace), send deletes for accounts whose files are gone, and skip files that were
only touched (same checksum).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from connector.sdk import StopRunError

__all__ = ["AccountState", "FileState", "FolderState"]

_VERSION = 1


@dataclass(frozen=True, slots=True)
class FileState:
    mtime_ns: int
    size: int
    sha256: str | None = None
    error: tuple[str, str] | None = None
    #: Inode (file index on Windows) and ``st_ctime_ns``: a file replaced by another of the same size and
    #: time (a copy tool that keeps timestamps; same-sized BMPs) has another of either. None: a watermark
    #: written before it was kept (the file is compared by size and time, as then).
    stamp: tuple[int, int] | None = None


@dataclass(frozen=True, slots=True)
class AccountState:
    anchor: str
    path: str
    sha256: str


#: What a file's error may depend on besides its bytes: ``max_file_bytes``, ``max_pixels``, ``verify_images``.
Limits = tuple[int, int, bool]


@dataclass(slots=True)
class FolderState:
    folder: str
    recursive: bool
    files: dict[str, FileState] = field(default_factory=dict)
    accounts: dict[str, AccountState] = field(default_factory=dict)
    #: The settings the files' errors were judged by. None: a watermark written before they were kept.
    limits: Limits | None = None

    def dumps(self) -> str:
        return json.dumps(
            {
                "version": _VERSION,
                "folder": self.folder,
                "recursive": self.recursive,
                "files": {
                    path: [f.mtime_ns, f.size, f.sha256, list(f.error) if f.error else None, f.stamp and list(f.stamp)]
                    for path, f in sorted(self.files.items())
                },
                "accounts": {key: [a.anchor, a.path, a.sha256] for key, a in sorted(self.accounts.items())},
                "limits": list(self.limits) if self.limits else None,
            },
            separators=(",", ":"),
        )

    @classmethod
    def loads(cls, text: str, *, folder: str, recursive: bool) -> FolderState:
        """Parse a watermark written for this folder; anything else stops the step (run a full import)."""
        try:
            raw: Any = json.loads(text)
            if raw.get("version") != _VERSION:
                msg = f"version {raw.get('version')!r}"
                raise ValueError(msg)
            state = cls(
                folder=str(raw["folder"]),
                recursive=bool(raw["recursive"]),
                files={str(p): _file_state(values) for p, values in raw["files"].items()},
                accounts={str(k): AccountState(str(a), str(p), str(h)) for k, (a, p, h) in raw["accounts"].items()},
                limits=_limits(raw.get("limits")),
            )
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            msg = f"the delta watermark cannot be read ({exc}); run a full import"
            raise StopRunError(msg, status="stopped-connector-error") from None
        if state.folder != folder or state.recursive != recursive:
            msg = (
                f"the delta watermark is for folder {state.folder!r} (recursive={state.recursive}), "
                f"the settings say {folder!r} (recursive={recursive}); run a full import"
            )
            raise StopRunError(msg)
        return state


def _file_state(values: list[Any]) -> FileState:
    """One file of a watermark: ``[mtime_ns, size, sha256, error, stamp]``; the stamp is absent from the
    watermarks written before it was kept, which stay valid."""
    m, s, h, e = values[:4]
    stamp = values[4] if len(values) > 4 and values[4] else None
    return FileState(
        int(m),
        int(s),
        h,
        (str(e[0]), str(e[1])) if e else None,
        (int(stamp[0]), int(stamp[1])) if stamp else None,
    )


def _limits(values: list[Any] | None) -> Limits | None:
    """``[max_file_bytes, max_pixels, verify_images]``; absent from the watermarks written before they were kept."""
    if not values:
        return None
    size, pixels, verify = values
    return int(size), int(pixels), bool(verify)
