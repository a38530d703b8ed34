"""LDIF change records (RFC 2849) for change-controlled environments.

The file is what ``ldapmodify -f`` (OpenLDAP) and ``ldifde -i`` (Windows) apply: a ``version: 1``
header, then one ``changetype: modify`` record per object. Values that are not RFC 2849
SAFE-STRINGs (binary photos, non-ASCII text, leading space/colon/``<``, trailing space) are written
base64-encoded with ``::``; lines are folded at 76 columns, which both tools unfold.
"""

from __future__ import annotations

import base64
import contextlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO

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
    """Appends records to one file; the header is written once, when the file is new or empty."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.records = 0
        self._handle: IO[str] | None = None

    def write(self, records: Sequence[str]) -> None:
        """Append records and make them durable before the engine records the export as done.

        A file that cannot be opened is the setting's fault (``ConfigurationError`` naming
        ``ldif_output``); one that cannot take the records (a full disk) stops the step, and the
        batch stays pending. Either way the message names the file, never a traceback.
        """
        if self._handle is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._handle = open(self.path, "a", encoding="ascii", newline="\n")  # noqa: SIM115 - kept open per step
            except OSError as exc:  # a file in the way of the folder, no right to create it, a share not mounted
                reason = exc.strerror or exc
                msg = f"cannot open the LDIF change file {self.path} ({reason}): check the folder and its rights"
                raise ConfigurationError(msg, key="ldif_output") from None
        try:
            if self._handle.tell() == 0:
                self._handle.write("version: 1\n\n")
            self._handle.writelines(records)
            self._handle.flush()
            os.fsync(self._handle.fileno())
        except OSError as exc:
            handle, self._handle = self._handle, None
            with contextlib.suppress(OSError):  # its buffer cannot be written either; close() must not raise again
                handle.close()
            msg = (
                f"cannot write the LDIF change file {self.path} ({exc.strerror or exc}): this batch stays pending; "
                "free space (or fix the file) and run the export again. The file may end with part of this batch, "
                "which the next export writes again (replacing a value twice is harmless)"
            )
            raise StopRunError(msg) from None
        self.records += len(records)

    def close(self) -> None:
        handle, self._handle = self._handle, None
        if handle is not None:
            handle.close()
