"""LDIF change records (RFC 2849) for change-controlled environments.

The file is what ``ldapmodify -f`` (OpenLDAP) and ``ldifde -i`` (Windows) apply: a ``version: 1``
header, then one ``changetype: modify`` record per object. Values that are not RFC 2849
SAFE-STRINGs (binary photos, non-ASCII text, leading space/colon/``<``, trailing space) are written
base64-encoded with ``::``; lines are folded at 76 columns, which both tools unfold.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import os
from collections.abc import Sequence
from io import FileIO
from pathlib import Path

from connector.sdk import ConfigurationError, StopRunError

__all__ = ["LdifWriter", "ldif_line", "modify_record"]

_FOLD = 76


def _is_safe(value: bytes) -> bool:
    """RFC 2849 SAFE-STRING that also does not end in a space (which tools may strip)."""
    if not value:
        return True
    if value[0] in b" :<" or value[-1:] == b" ":
        return False
    return all(0 < byte < 128 and byte not in (10, 13) for byte in value)


def ldif_line(name: str, value: bytes | str) -> str:
    """``name: value`` or ``name:: base64``, folded into lines of at most 76 characters."""
    raw = value.encode("utf-8") if isinstance(value, str) else bytes(value)
    line = f"{name}: {raw.decode('ascii')}" if _is_safe(raw) else f"{name}:: {base64.b64encode(raw).decode('ascii')}"
    if len(line) <= _FOLD:
        return line + "\n"
    parts = [line[:_FOLD]]
    parts.extend(" " + line[i : i + _FOLD - 1] for i in range(_FOLD, len(line), _FOLD - 1))
    return "\n".join(parts) + "\n"


def modify_record(dn: str, operations: Sequence[tuple[str, str, Sequence[bytes | str]]]) -> str:
    """One ``changetype: modify`` record; operations are (``replace``/``add``/``delete``, attribute, values).

    A ``replace`` with no values removes the attribute, exactly like LDAP's MODIFY_REPLACE of [].
    """
    out = [ldif_line("dn", dn), "changetype: modify\n"]
    for op, attribute, values in operations:
        out.append(f"{op}: {attribute}\n")
        out.extend(ldif_line(attribute, v) for v in values)
        out.append("-\n")
    out.append("\n")
    return "".join(out)


class LdifWriter:
    """Appends records to one file; the header is written once, when the file is new or empty.

    The file only ever grows by whole batches: a batch the disk could take only part of (a full
    disk, a quota, a file-size limit) is cut off again. Why: the next export appends after it, and
    a record cut in the middle of its base64 photo, the next ``dn:`` glued onto it, is a file that
    ``ldapmodify -f`` stops on (or applies a cut photo from) until someone edits it by hand. So is a
    batch an interruption (Ctrl-C, a stop signal) catches before it is durable: the engine has no
    result for it and keeps it pending, and the next export would append it a second time.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records = 0
        self._handle: FileIO | None = None

    def write(self, records: Sequence[str]) -> None:
        """Append records and make them durable before the engine records the export as done.

        A file that cannot be opened is the setting's fault (``ConfigurationError`` naming
        ``ldif_output``); one that cannot take the records (a full disk) stops the step, the file
        cut back to where the batch began, and the batch stays pending. Either way the message
        names the file, never a traceback.
        """
        handle = self._open()
        start = handle.seek(0, os.SEEK_END)
        data = ("version: 1\n\n" if start == 0 else "").encode("ascii") + "".join(records).encode("ascii")
        try:
            _write_all(handle, data)
            os.fsync(handle.fileno())
        except KeyboardInterrupt:  # Ctrl-C, a stop signal: the batch stays pending, so out of the file too
            self._cut_back(handle, start)
            raise
        except OSError as exc:
            self._cut_back(handle, start)
            msg = (
                f"cannot write the LDIF change file {self.path} ({exc.strerror or exc}): this batch stays pending "
                "and the file ends where it began; free space (or fix the file) and run the export again"
            )
            raise StopRunError(msg) from None
        self.records += len(records)

    def _cut_back(self, handle: FileIO, start: int) -> None:
        """End the file where the batch began and close it (the next write opens it again)."""
        self._handle = None
        with contextlib.suppress(OSError):  # unbuffered: nothing is left to write, truncating frees space
            os.ftruncate(handle.fileno(), start)
        with contextlib.suppress(OSError):
            handle.close()

    def _open(self) -> FileIO:
        """The file, opened for appending without a buffer (a failed write leaves nothing to flush later)."""
        if self._handle is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._handle = open(self.path, "ab", buffering=0)  # noqa: SIM115 - kept open per step
            except OSError as exc:  # a file in the way of the folder, no right to create it, a share not mounted
                reason = exc.strerror or exc
                msg = f"cannot open the LDIF change file {self.path} ({reason}): check the folder and its rights"
                raise ConfigurationError(msg, key="ldif_output") from None
        return self._handle

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()


def _write_all(handle: FileIO, data: bytes) -> None:
    """Write all of ``data``: an unbuffered write may take part of it (a signal, a pipe, a share)."""
    view = memoryview(data)
    while view:
        written = handle.write(view)
        if not written:  # never for a file; a device that takes nothing must not loop for ever
            raise OSError(errno.EIO, "the file took no bytes")
        view = view[written:]
