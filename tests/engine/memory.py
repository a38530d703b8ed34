"""A small in-memory connector for engine tests: a "directory" the test can read and change.

Directories live in a module-level dict keyed by the ``directory`` setting, so a test holds the
same dict the connector (built fresh by the engine for every step) reads and writes.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from typing import Any, ClassVar

from connector.sdk import (
    Attribute,
    AttributeType,
    Capabilities,
    Connector,
    ConnectorSettings,
    CSEntryChange,
    ExportResult,
    ImportPage,
    ImportRequest,
    ObjectClass,
    ObjectModificationType,
    ResumeRefusedError,
    Schema,
    ServerDownError,
    StopRunError,
)

DIRECTORIES: dict[str, dict[str, Any]] = {}


def directory(name: str) -> dict[str, Any]:
    """The directory called ``name``: {"objects": {anchor: attrs}, "log": [...], "fail": {...}}."""
    return DIRECTORIES.setdefault(
        name,
        {
            "objects": {},
            "changes": [],
            "exports": [],
            "fail": {},
            "stop_export_after": None,
            "crash_after_page": None,
            "stop_after_page": None,
            "refuse_resume": False,
            "requests": [],
            "errors": {},
            "ignore_attrs": set(),
            # attribute -> function: the directory keeps its own rendering of a value written to it
            "render": {},
        },
    )


class MemorySettings(ConnectorSettings):
    directory: str
    object_class: str = "user"
    anchor: str = "id"
    #: attributes the schema marks ``rendered_by_target``
    rendered: list[str] = []


class MemoryConnector(Connector[MemorySettings]):
    settings_model: ClassVar[type[ConnectorSettings]] = MemorySettings
    capabilities = Capabilities(full_import=True, delta_import=True, export=True)

    @property
    def data(self) -> dict[str, Any]:
        return directory(self.settings.directory)

    def open(self) -> None:
        hook = self.data.get("during_open")
        if hook is not None:  # something happening as the step begins, on the engine's thread (tests)
            hook()

    def get_schema(self) -> Schema:
        s = self.settings
        return Schema.of(
            ObjectClass(
                name=s.object_class,
                anchor=s.anchor,
                attributes=(
                    Attribute(name=s.anchor),
                    Attribute(name="accountName"),
                    Attribute(name="mail"),
                    Attribute(name="displayName"),
                    Attribute(name="photo", type=AttributeType.BINARY, rendered_by_target="photo" in s.rendered),
                    Attribute(name="thumbnail", type=AttributeType.BINARY),
                    Attribute(name="checksum"),
                    Attribute(name="groups", multivalued=True),
                    Attribute(name="enabled", type=AttributeType.BOOLEAN),
                ),
            )
        )

    def _entry(self, anchor: str, attrs: dict[str, Any]) -> CSEntryChange:
        if anchor in self.data["errors"]:
            return CSEntryChange.import_error(
                anchor, *self.data["errors"][anchor], object_class=self.settings.object_class, attributes=attrs
            )
        return CSEntryChange.add(
            self.settings.object_class, anchor, {self.settings.anchor: anchor, **attrs}, dn=f"CN={anchor},OU=Test"
        )

    def import_page(self, request: ImportRequest) -> ImportPage:
        data = self.data
        hook = data.get("during_import")
        if hook is not None:  # something else happening while the directory is read (tests)
            hook(request.page_number)
        if request.mode == "delta":
            start = int(request.watermark or 0)
            changes = data["changes"][start:]
            entries = [c if isinstance(c, CSEntryChange) else self._entry(*c) for c in changes]
            return ImportPage(entries, False, None, str(len(data["changes"])))
        items = sorted(data["objects"].items())
        if request.resume_from is not None and data["refuse_resume"]:
            raise ResumeRefusedError("the directory was rebuilt")
        offset = int(request.resume_from or request.page_token or 0)
        data["requests"].append(offset)
        page = items[offset : offset + request.page_size]
        if data["crash_after_page"] is not None and request.page_number > data["crash_after_page"]:
            os._exit(77)  # simulate kill -9 in the middle of an import (used from a subprocess)
        if data["stop_after_page"] is not None and request.page_number > data["stop_after_page"]:
            data["stop_after_page"] = None
            raise StopRunError("stopped on purpose", status="stopped-throttled")
        more = offset + request.page_size < len(items)
        return ImportPage(
            [self._entry(a, v) for a, v in page],
            more,
            str(offset + request.page_size) if more else None,
            str(len(data["changes"])),
            checkpoint=str(offset + request.page_size),  # an offset into the sorted objects: resumable
        )

    def export(self, changes: Sequence[CSEntryChange]) -> list[ExportResult]:
        hook = self.data.get("during_export")
        if hook is not None:  # something else happening while the directory is written (tests)
            hook()
        results: list[ExportResult] = []
        for change in changes:
            if len(self.data["exports"]) == self.data["stop_export_after"]:  # the directory goes away here
                raise ServerDownError("the directory went away", results=results)
            self.data["exports"].append(copy.deepcopy(change))
            failure = self.data["fail"].get(change.anchor)
            if failure:
                status, name = failure
                results.append(ExportResult(change.identifier, status, name, "injected failure"))
                continue
            obj = self.data["objects"].get(change.anchor)
            if change.modification == ObjectModificationType.DELETE:
                self.data["objects"].pop(change.anchor, None)
            elif obj is not None:
                for attr_change in change.changes:
                    if attr_change.name in self.data["ignore_attrs"]:
                        continue  # a directory that silently drops the write
                    if attr_change.values:
                        value = attr_change.values[0] if len(attr_change.values) == 1 else list(attr_change.values)
                        render = self.data["render"].get(attr_change.name)
                        obj[attr_change.name] = render(value) if render is not None else value
                    else:
                        obj.pop(attr_change.name, None)
            results.append(ExportResult.success(change.identifier))
        return results
