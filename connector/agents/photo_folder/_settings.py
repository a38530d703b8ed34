"""Settings of the ``photo-folder`` agent."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from connector.imaging import DEFAULT_MAX_INPUT_BYTES, DEFAULT_MAX_PIXELS, EXCHANGE_PHOTO_SIZE
from connector.sdk import ConnectorSettings

__all__ = ["PhotoFolderSettings"]


class PhotoFolderSettings(ConnectorSettings):
    """Where the photos are, and where metaverse photos are backed up to.

    ``verify_images`` decodes each new or changed file (at 1/8 scale, about a millisecond) so that
    truncated or mislabelled files become per-object import errors here rather than failures in
    every export flow later.
    """

    path: Path = Field(description="Folder of photos named '<account>[ <anything>].<ext>'.")
    recursive: bool = Field(
        False, description="Also read photos in sub-folders (hidden folders are skipped)."
    )
    export_path: Path | None = Field(
        None, description="Folder that export writes '<account> 648x648.jpg' into."
    )
    export_size: int = Field(
        EXCHANGE_PHOTO_SIZE, ge=16, le=2048, description="Square size of exported photos."
    )
    max_file_bytes: int = Field(DEFAULT_MAX_INPUT_BYTES, ge=1, description="Larger files are import errors.")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, le=150_000_000, description="Pixel-bomb limit.")
    verify_images: bool = Field(True, description="Decode new and changed files to catch broken ones.")
