"""Running the photo-folder agent the way the engine does: pages until done, then the watermark."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from connector.agents.photo_folder import PhotoFolderConnector, PhotoFolderSettings
from connector.sdk import Connector, ConnectorContext, CSEntryChange, ImportMode, ImportRequest


def connector(tmp_path: Path, folder: Path, **settings: Any) -> PhotoFolderConnector:
    context = ConnectorContext(agent="photos", data_dir=tmp_path / "data")
    return PhotoFolderConnector(PhotoFolderSettings(path=folder, **settings), context)


def run_import(
    agent: Connector[Any], *, watermark: str | None = None, page_size: int = 500
) -> tuple[list[CSEntryChange], str, int]:
    """All entries of one import (delta when a watermark is given), the new watermark, and page count."""
    mode = ImportMode.DELTA if watermark is not None else ImportMode.FULL
    entries: list[CSEntryChange] = []
    token: str | None = None
    pages = 0
    while True:
        pages += 1
        page = agent.import_page(
            ImportRequest(mode=mode, page_size=page_size, page_number=pages, page_token=token, watermark=watermark)
        )
        assert len(page.entries) <= page_size
        entries.extend(page.entries)
        if not page.more_to_import:
            assert page.watermark is not None
            return entries, page.watermark, pages
        assert page.watermark is None and page.page_token is not None
        token = page.page_token


def by_anchor(entries: list[CSEntryChange]) -> dict[str, CSEntryChange]:
    anchors = [e.anchor for e in entries]
    assert len(anchors) == len(set(anchors)), f"an anchor was returned twice: {anchors}"
    return {e.anchor: e for e in entries}
