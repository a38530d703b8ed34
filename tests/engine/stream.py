"""An import-contract-v2 connector for engine tests: objects from a module-level "directory",
each one fetched by deferred work on the engine's threads, with an ETag kept in the agent state."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, ClassVar

from connector.sdk import (
    Attribute,
    Capabilities,
    Checkpoint,
    Connector,
    ConnectorSettings,
    Count,
    CSEntryChange,
    Deferred,
    DeltaWatermark,
    ImportItem,
    ImportRun,
    ObjectClass,
    ResumeRefusedError,
    Schema,
    StateUpdate,
    StopRunError,
    Worker,
)

#: name -> {"objects": {anchor: etag}, "fetched": [anchors], "stop_after_fetches": int | None, ...}
STREAMS: dict[str, dict[str, Any]] = {}


def stream_directory(name: str) -> dict[str, Any]:
    return STREAMS.setdefault(
        name,
        {"objects": {}, "fetched": [], "stop_after_fetches": None, "refuse_resume": False, "resumed_from": []},
    )


class StreamSettings(ConnectorSettings):
    directory: str


class _Fetch(Worker[str]):
    """Fetches objects three at a time (a ``$batch``), four threads, one request per object at once."""

    batch_size = 3
    concurrency = 4
    per_key = 1

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.lock = threading.Lock()

    def run(self, tasks: list[Deferred[str]], cancel: threading.Event) -> list[list[ImportItem]]:
        out: list[list[ImportItem]] = []
        for task in tasks:
            anchor = task.task
            with self.lock:
                stop = self.data["stop_after_fetches"]
                if stop is not None and len(self.data["fetched"]) >= stop:
                    self.data["stop_after_fetches"] = None
                    raise StopRunError("stopped on purpose", status="stopped-throttled")
                self.data["fetched"].append(anchor)
            etag = self.data["objects"][anchor]
            entry = CSEntryChange.add("thing", anchor, {"id": anchor, "etag": etag})
            out.append([entry, StateUpdate(anchor, {"etag": etag}), Count("fetched")])
        return out


class StreamConnector(Connector[StreamSettings]):
    settings_model: ClassVar[type[ConnectorSettings]] = StreamSettings
    capabilities = Capabilities(delta_import=True)

    @property
    def data(self) -> dict[str, Any]:
        return stream_directory(self.settings.directory)

    def get_schema(self) -> Schema:
        return Schema.of(
            ObjectClass(name="thing", anchor="id", attributes=(Attribute(name="id"), Attribute(name="etag")))
        )

    def import_changes(self, run: ImportRun) -> Iterator[ImportItem]:
        data = self.data
        fetch = _Fetch(data)
        if run.resume_from is not None:
            if data["refuse_resume"]:
                raise ResumeRefusedError("the directory was rebuilt")
            data["resumed_from"].append(run.resume_from)
        anchors = sorted(data["objects"])
        if run.full:
            start = int(run.resume_from or 0)
            for i, anchor in enumerate(anchors[start:], start):
                yield Checkpoint(str(i))
                yield Deferred(fetch, anchor, key=anchor)
        else:
            known = dict(run.state.scan())
            for anchor in anchors:
                if known.get(anchor, {}).get("etag") == data["objects"][anchor]:
                    yield Count("unchanged")
                else:
                    yield Deferred(fetch, anchor, key=anchor)
            for anchor in sorted(set(known) - set(anchors)):
                yield CSEntryChange.delete("thing", anchor)
                yield StateUpdate(anchor, None)
        yield DeltaWatermark("w")


class NoImportConnector(Connector[StreamSettings]):
    """Implements neither import contract (a connector written against a future or broken SDK)."""

    settings_model: ClassVar[type[ConnectorSettings]] = StreamSettings

    def get_schema(self) -> Schema:
        return Schema.of(ObjectClass(name="thing", anchor="id", attributes=(Attribute(name="id"),)))
