"""Photo bytes from the blob table: what type they are, and their pixel size from the header only.

The console serves blobs to browsers, so it decides the content type itself from the magic bytes
(never from a stored name or attribute) and serves nothing that is not a JPEG, PNG or GIF: a blob
may hold any binary attribute, and only images belong in an ``<img>``. Photos a folder may hold in
other formats (BMP, TIFF, WebP) are shown as a JPEG preview made by the imaging pipeline, which
decodes untrusted bytes within its limits.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

from connector.imaging import sniff_format
from connector.store import Blobs, StoreConnection

__all__ = ["HEADER_BYTES", "PREVIEW_SIZE", "PhotoInfo", "jpeg_preview", "photo_infos", "sniff_image_type"]

#: Enough for a JPEG's frame header behind ordinary EXIF/ICC segments (Pillow reads only headers).
HEADER_BYTES = 131_072

#: Pixels of the preview's side (the largest photo Exchange Online keeps).
PREVIEW_SIZE = 648


def sniff_image_type(head: bytes, *, previewed: bool = False) -> str | None:
    """The image content type for these leading bytes, or None when they are not a JPEG/PNG/GIF
    (with ``previewed``, also the other accepted formats (BMP, TIFF, WebP), shown through
    :func:`jpeg_preview`). The formats are the one list in ``connector.imaging``."""
    found = sniff_format(head)
    if found is None or not (found.browser_native or previewed):
        return None
    return found.content_type


def jpeg_preview(data: bytes) -> bytes | None:
    """A square JPEG preview of a photo in a format browsers may not show; None if it does not decode."""
    from connector.imaging import ImageError, PhotoSpec, normalize

    try:
        return normalize(data, PhotoSpec(size=PREVIEW_SIZE, max_bytes=102_400, max_quality=90)).data
    except ImageError:
        return None


@dataclass(frozen=True)
class PhotoInfo:
    """What the console tells about one stored photo."""

    sha256: str
    size: int
    content_type: str | None
    width: int | None = None
    height: int | None = None

    @property
    def is_image(self) -> bool:
        return self.content_type is not None

    @property
    def pixels(self) -> str:
        return f"{self.width}\u00d7{self.height}" if self.width and self.height else "?"


def _probe(sha256: str, size: int, head: bytes) -> PhotoInfo:
    content_type = sniff_image_type(head, previewed=True)
    if content_type is None:
        return PhotoInfo(sha256, size, None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: we never decode the pixels
            with Image.open(io.BytesIO(head)) as image:
                width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        # a header claiming over twice MAX_IMAGE_PIXELS is an error, not a warning, even though nothing
        # is decoded: a hostile thumbnailPhoto or a folder file made the person's page a 500
        return PhotoInfo(sha256, size, content_type)
    return PhotoInfo(sha256, size, content_type, width, height)


def photo_infos(conn: StoreConnection, hashes: list[str]) -> dict[str, PhotoInfo]:
    """Type and pixel size of these blobs, reading only the first ``HEADER_BYTES`` of each."""
    if not hashes:
        return {}
    return {sha: _probe(sha, size, head) for sha, size, head in Blobs(conn).heads(hashes, HEADER_BYTES)}
