"""A stand-in for Active Directory when there is none: a directory snapshot in an LDIF file.

The demo must run on a machine with no domain controller, yet the ``ad`` agent has to *have*
users: AD is the agent that projects people into the metaverse. Faking the AD agent's network
layer would hide what really happens, so instead this connector is an honest, tiny directory:

* its data is ``snapshot``, an RFC 2849 LDIF *content* file (what ``ldifde -f`` or
  ``ldapsearch -LLL`` dumps) holding one entry per user with the attributes the real agent reads;
* it has the real agent's schema (object class ``user``, anchored on ``objectGUID``), so the
  connector space, join and flow rules are exactly the sample's;
* export plans each change with the real agent's planner (``plan_change``: scope guard, the
  102,400-byte ``thumbnailPhoto`` limit; the engine has left out no-op changes already), appends
  the resulting ``changetype: modify`` records to ``ldif_output`` -- a file ``ldapmodify -f``
  applies to a real DC -- and then applies them to the snapshot, as a DC would;
* each applied change bumps the entry's ``uSNChanged``, and delta import returns the entries
  above the watermark, which is how the real agent's USN delta works; the confirming import after
  an export therefore sees exactly the bytes that were exported.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field

from connector.agents.active_directory import (
    ANCHOR,
    OBJECT_CLASS,
    LdifWriter,
    Operation,
    build_schema,
    ldif_line,
    modify_record,
    plan_change,
)
from connector.files import atomic_write
from connector.sdk import (
    Capabilities,
    CheckResult,
    Connector,
    ConnectorContext,
    ConnectorSettings,
    CSEntryChange,
    ExportResult,
    ImportMode,
    ImportPage,
    ImportRequest,
    Schema,
    paginate_list,
)

__all__ = ["DirectorySnapshotConnector", "DirectorySnapshotSettings", "read_ldif", "write_ldif"]

#: Attributes kept as bytes (everything else is UTF-8 text).
_BINARY = frozenset({"thumbnailphoto"})
_SNAPSHOT_ATTRIBUTES = ("objectGUID", "sAMAccountName", "userPrincipalName", "mail", "displayName", "thumbnailPhoto")

Entry = dict[str, Any]


class DirectorySnapshotSettings(ConnectorSettings):
    """Where the snapshot is, and where exported changes are written as LDIF."""

    snapshot: Path = Field(description="LDIF content file: one entry per user (the directory's state)")
    ldif_output: Path = Field(description="LDIF change file the exports are appended to")


def read_ldif(path: Path) -> list[Entry]:
    """Parse an LDIF content file (folded lines, ``::`` base64 values, comments) into entries.

    Each entry maps ``dn`` and attribute names to a value (single-valued attributes only: that is
    all the snapshot holds); binary attributes stay bytes.
    """
    entries: list[Entry] = []
    lines: list[str] = []
    for raw in path.read_text(encoding="ascii").splitlines():
        if raw.startswith(" ") and lines:
            lines[-1] += raw[1:]
        else:
            lines.append(raw)
    entry: Entry = {}
    for line in [*lines, ""]:
        if not line.strip():
            if "dn" in entry:
                entries.append(entry)
            entry = {}
            continue
        if line.startswith(("#", "version:")):
            continue
        name, _, rest = line.partition(":")
        value: Any
        if rest.startswith(":"):
            value = base64.b64decode(rest[1:].strip())
            if name.lower() not in _BINARY:
                value = value.decode("utf-8")
        else:
            value = rest.strip()
            if name.lower() in _BINARY:
                value = value.encode("utf-8")
        entry[name] = value
    return entries


def write_ldif(path: Path, entries: Iterable[Entry]) -> None:
    """Write entries as an LDIF content file, atomically (a crash leaves the old snapshot)."""
    out = ["version: 1\n\n"]
    for entry in entries:
        out.append(ldif_line("dn", entry["dn"]))
        out.extend(ldif_line(k, v) for k, v in entry.items() if k != "dn" and v is not None)
        out.append("\n")
    atomic_write(path, "".join(out).encode("ascii"))


def _apply(entry: Entry, operations: Sequence[Operation]) -> None:
    """Apply planned LDAP operations to one single-valued entry, as the DC would."""
    for verb, attribute, values in operations:
        key = next((k for k in entry if k.lower() == attribute.lower()), attribute)
        if verb == "replace" or verb == "add":
            entry[key] = values[0] if values else None
        else:  # delete
            entry[key] = None
        if entry[key] is None:
            del entry[key]


class DirectorySnapshotConnector(Connector[DirectorySnapshotSettings]):
    """AD users from an LDIF snapshot; exports become LDIF change records applied to the snapshot."""

    settings_model: ClassVar[type[ConnectorSettings]] = DirectorySnapshotSettings
    capabilities: ClassVar[Capabilities] = Capabilities(
        full_import=True, delta_import=True, export=True, max_batch_size=500
    )
    description: ClassVar[str] = "AD stand-in for the demo: an LDIF directory snapshot, exports written as LDIF"

    def __init__(self, settings: DirectorySnapshotSettings, context: ConnectorContext) -> None:
        super().__init__(settings, context)
        self._schema = build_schema(())
        self._entries: list[Entry] | None = None
        self._ldif: LdifWriter | None = None
        self.records_written = 0

    def get_schema(self) -> Schema:
        return self._schema

    def _path(self, path: Path) -> Path:
        """Relative paths are relative to the configuration file, like the store's."""
        if path.is_absolute() or self.context.config_file is None:
            return path
        return self.context.config_file.parent / path

    def check(self) -> CheckResult:
        path = self._path(self.settings.snapshot)
        return CheckResult(path.is_file(), f"snapshot {path}" if path.is_file() else f"{path} does not exist")

    def close(self) -> None:
        if self._ldif is not None:
            self._ldif.close()
            self._ldif = None

    def _load(self) -> list[Entry]:
        if self._entries is None:
            self._entries = read_ldif(self._path(self.settings.snapshot))
        return self._entries

    # -- import ---------------------------------------------------------------------------------
    def import_page(self, request: ImportRequest) -> ImportPage:
        entries = self._load()
        usn = max((int(e.get("uSNChanged", 0)) for e in entries), default=0)
        if request.mode == ImportMode.DELTA and request.watermark is not None:
            since = int(request.watermark)
            selected = [e for e in entries if int(e.get("uSNChanged", 0)) > since]
            make = CSEntryChange.replace  # whole objects: an attribute gone from the entry is cleared
        else:
            selected, make = entries, CSEntryChange.add

        def to_entry(entry: Entry) -> CSEntryChange:
            attrs = {k: entry.get(k) for k in _SNAPSHOT_ATTRIBUTES}
            attrs["distinguishedName"] = entry["dn"]
            attrs["uSNChanged"] = int(entry.get("uSNChanged", 0))
            return make(OBJECT_CLASS, str(entry[ANCHOR]), attrs, dn=entry["dn"])

        return paginate_list(selected, request, to_entry, watermark=str(usn))

    # -- export ---------------------------------------------------------------------------------
    def export(self, changes: Sequence[CSEntryChange]) -> list[ExportResult]:
        entries = self._load()
        by_guid = {str(e[ANCHOR]).lower(): e for e in entries}
        object_class = self._schema.object_class(OBJECT_CLASS)
        assert object_class is not None
        allowed = frozenset(
            a.lower() for cls, names in self.context.export_attributes.items() if cls == OBJECT_CLASS for a in names
        )
        usn = max((int(e.get("uSNChanged", 0)) for e in entries), default=0)
        results: list[ExportResult] = []
        records: list[str] = []
        for change in changes:
            outcome = plan_change(change, object_class, allowed)
            if isinstance(outcome, ExportResult):
                results.append(outcome)
                continue
            entry = by_guid.get(change.anchor.lower())
            if entry is None:
                results.append(ExportResult.failed(change.identifier, "cd-missing-object", f"no user {change.anchor}"))
                continue
            if outcome:
                records.append(modify_record(entry["dn"], outcome))
                if not self.context.dry_run:
                    _apply(entry, outcome)
                    usn += 1
                    entry["uSNChanged"] = str(usn)
            results.append(ExportResult.success(change.identifier))
        if records and not self.context.dry_run:
            if self._ldif is None:
                self._ldif = LdifWriter(self._path(self.settings.ldif_output))
            self._ldif.write(records)  # the change file first: it is what a real DC would be given
            write_ldif(self._path(self.settings.snapshot), entries)
            self.records_written += len(records)
        return results
