"""An agent for ``test_exit_codes``: a full import that ends the way its ``outcome`` setting says,
in a real ``mvsync`` process (its module is found through ``PYTHONPATH``, as a site's own connector)."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import ClassVar

from connector.sdk import (
    Attribute,
    Capabilities,
    Connector,
    ConnectorSettings,
    CSEntryChange,
    ImportPage,
    ImportRequest,
    ObjectClass,
    Schema,
    ServerDownError,
)


class OutcomeSettings(ConnectorSettings):
    #: ok, object-error (one object cannot be read), server-down, or wait (until a signal ends the run)
    outcome: str = "ok"
    #: ``wait``: the file the import writes its pid to once it is under way (the test's handshake)
    ready: str = ""


class OutcomeConnector(Connector[OutcomeSettings]):
    settings_model: ClassVar[type[ConnectorSettings]] = OutcomeSettings
    capabilities = Capabilities(full_import=True, delta_import=False, export=False)

    def get_schema(self) -> Schema:
        return Schema.of(ObjectClass(name="user", anchor="id", attributes=(Attribute(name="id"),)))

    def import_page(self, request: ImportRequest) -> ImportPage:
        outcome = self.settings.outcome
        if outcome == "server-down":
            raise ServerDownError("cannot reach the test directory at test.invalid:636")
        if outcome == "wait":
            Path(self.settings.ready).write_text(str(os.getpid()), encoding="utf-8")
            threading.Event().wait()  # never set: the signal the test sends ends the wait
        entries = [CSEntryChange.add("user", "u1", {"id": "u1"})]
        if outcome == "object-error":
            entries.append(CSEntryChange.import_error("u2", "read-error", "unreadable", object_class="user"))
        return ImportPage(entries)
