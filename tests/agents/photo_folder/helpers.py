"""Running the photo-folder agent the way the engine does: its stream in pages, then the watermark."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from connector.agents.photo_folder import PhotoFolderConnector, PhotoFolderSettings
from connector.demo import dump_toml
from connector.engine import Page, import_in_memory
from connector.sdk import Connector, ConnectorContext, CSEntryChange, ImportMode


def cli_config(tmp_path: Path, folder: Path, **settings: int | bool) -> Path:
    """``mvsync.toml`` for the CLI: a photo-folder agent ``hr`` on ``folder`` (``settings`` added to its own),
    profiles ``full`` and ``delta`` (its full and delta imports)."""
    photo_file = {"object_class": "photoFile"}
    config = tmp_path / "mvsync.toml"
    document = {
        "store": {"url": f"sqlite:///{(tmp_path / 'mvsync.db').as_posix()}"},
        "agents": {
            "hr": {
                "type": "photo-folder",
                "settings": {"path": folder.as_posix(), **settings},
                "projection": [photo_file],
                "import_flow": [{**photo_file, "cs": "accountName", "mv": "accountName"}],
            }
        },
        "run_profiles": {kind: {"steps": [{"type": f"{kind}-import", "agent": "hr"}]} for kind in ("delta", "full")},
    }
    config.write_text(dump_toml(document), encoding="utf-8")
    return config


def connector(tmp_path: Path, folder: Path, **settings: Any) -> PhotoFolderConnector:
    context = ConnectorContext(agent="photos", data_dir=tmp_path / "data")
    return PhotoFolderConnector(PhotoFolderSettings(path=folder, **settings), context)


def run_import(
    agent: Connector[Any], *, watermark: str | None = None, page_size: int = 500
) -> tuple[list[CSEntryChange], str, int]:
    """All entries of one import (delta when a watermark is given), the new watermark, and page count.

    Driven the way the engine drives it (``import_in_memory``: the engine's pager, no store).
    """
    mode = ImportMode.DELTA if watermark is not None else ImportMode.FULL
    sizes: list[int] = []

    def page_seen(number: int, page: Page) -> None:
        assert len(page.entries) <= page_size
        assert page.watermark is None or page.last  # the watermark comes with the last page only
        sizes.append(len(page.entries))

    entries, new_watermark = import_in_memory(
        agent, mode, {}, watermark=watermark, page_size=page_size, on_page=page_seen
    )
    assert new_watermark is not None
    return entries, new_watermark, len(sizes)


def by_anchor(entries: list[CSEntryChange]) -> dict[str, CSEntryChange]:
    anchors = [e.anchor for e in entries]
    assert len(anchors) == len(set(anchors)), f"an anchor was returned twice: {anchors}"
    return {e.anchor: e for e in entries}
