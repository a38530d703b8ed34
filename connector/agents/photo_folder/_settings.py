"""Settings of the ``photo-folder`` agent."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

from pydantic import Field, model_validator

from connector.imaging import (
    DEFAULT_MAX_INPUT_BYTES,
    DEFAULT_MAX_PIXELS,
    EXCHANGE_PHOTO_SIZE,
    MAX_INPUT_BYTES_CEILING,
    MAX_PIXELS_CEILING,
)
from connector.sdk import MUST_EXIST, ConnectorSettings

__all__ = ["PhotoFolderSettings"]


class PhotoFolderSettings(ConnectorSettings):
    """Where the photos are, and where metaverse photos are backed up to.

    ``verify_images`` decodes each new or changed file (at 1/8 scale, about a millisecond) so that
    truncated or mislabelled files become per-object import errors here rather than failures in
    every export flow later.
    """

    path: Annotated[
        Path, Field(description="Folder of photos named '<account>[ <anything>].<ext>'.", json_schema_extra=MUST_EXIST)
    ]
    recursive: Annotated[
        bool, Field(description="Also read sub-folders (hidden ones, recycle bins and NAS caches are skipped).")
    ] = False
    export_path: Annotated[
        Path | None, Field(description="Folder that export writes '<account> 648x648.jpg' into.")
    ] = None
    export_size: Annotated[int, Field(ge=16, le=2048, description="Square size of exported photos.")] = (
        EXCHANGE_PHOTO_SIZE
    )
    #: Bounded as the decoder's own limits are: past them, every file's read stopped the step
    #: (``InputLimits`` refused the value), though the configuration had been accepted.
    max_file_bytes: Annotated[
        int, Field(ge=1, le=MAX_INPUT_BYTES_CEILING, description="Larger files are import errors.")
    ] = DEFAULT_MAX_INPUT_BYTES
    max_pixels: Annotated[int, Field(ge=1, le=MAX_PIXELS_CEILING, description="Pixel-bomb limit.")] = DEFAULT_MAX_PIXELS
    verify_images: Annotated[bool, Field(description="Decode new and changed files to catch broken ones.")] = True
    read_timeout_s: Annotated[
        float,
        Field(
            gt=0,
            le=3600,
            description="Seconds a listing or a file read may take before the import stops (a share not answering).",
        ),
    ] = 120.0

    @model_validator(mode="after")
    def _export_path_apart(self) -> PhotoFolderSettings:
        """Backups written where this agent imports would come back as its own photos.

        ``<account> 648x648.jpg`` beside ``<account>.jpg`` is a duplicate-account error for every
        person with an HR photo, and for everyone else the backup of a photo from another source
        (Exchange) becomes an HR photo: once that source removes it, the backup keeps it alive.
        """
        if self.export_path is None:
            return self
        source, target = (os.path.normcase(os.path.realpath(p)) for p in (self.path, self.export_path))
        inside = self.recursive and os.path.commonpath([source, target]) == source
        if target == source or inside:
            where = "is the folder" if target == source else "lies inside the folder (recursive = true)"
            msg = (
                f"export_path {where} this agent imports (path = {self.path}): its backups would be imported "
                "again as photos of the same accounts; choose a folder outside it"
            )
            raise ValueError(msg)
        return self
