"""The one list of photo formats mvsync accepts: ``photo convert``, the photo-folder agent, the
imaging pipeline's decoder and the web console all read it.

Why one list: with a list per place, a folder of WebP photos was skipped by ``photo convert``
(its extension list lacked ``.webp``) although the decoder converts WebP fine. Everything else
(PSD, EPS, ICO, PCX ...) is refused: photos come in these formats, and each extra decoder is
extra attack surface.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = [
    "ACCEPTED_FORMATS_TEXT",
    "ALLOWED_FORMATS",
    "PHOTO_EXTENSIONS",
    "PHOTO_FORMATS",
    "UNREAD_IMAGE_EXTENSIONS",
    "PhotoFormat",
    "not_supported_text",
    "sniff_format",
    "unread_image_format",
]


@dataclass(frozen=True, slots=True)
class PhotoFormat:
    """One accepted format: Pillow's name for it, file extensions, content type and magic bytes."""

    name: str
    label: str
    extensions: tuple[str, ...]
    content_type: str
    magic: tuple[bytes, ...]
    #: every browser shows it in an ``<img>`` (the console previews the others as JPEG)
    browser_native: bool

    def matches(self, head: bytes) -> bool:
        if self.name == "WEBP":  # a RIFF container whose form type is WEBP
            return head.startswith(b"RIFF") and head[8:12] == b"WEBP"
        return head.startswith(self.magic)


PHOTO_FORMATS: tuple[PhotoFormat, ...] = (
    # .jfif: what Windows names a JPEG saved from a browser; .jpe: an old short form some tools still write
    PhotoFormat("JPEG", "JPEG", (".jpg", ".jpeg", ".jfif", ".jpe"), "image/jpeg", (b"\xff\xd8\xff",), True),
    PhotoFormat("PNG", "PNG", (".png",), "image/png", (b"\x89PNG\r\n\x1a\n",), True),
    PhotoFormat("GIF", "GIF", (".gif",), "image/gif", (b"GIF87a", b"GIF89a"), True),
    PhotoFormat("BMP", "BMP", (".bmp",), "image/bmp", (b"BM",), False),
    PhotoFormat("TIFF", "TIFF", (".tif", ".tiff"), "image/tiff", (b"II*\x00", b"MM\x00*"), False),
    PhotoFormat("WEBP", "WebP", (".webp",), "image/webp", (b"RIFF",), False),
)

#: Pillow format names the decoder may use (camera JPEGs with multi-picture data open as JPEG and
#: report the format MPO).
ALLOWED_FORMATS: tuple[str, ...] = tuple(f.name for f in PHOTO_FORMATS)
#: File extensions (lower case) taken as photos.
PHOTO_EXTENSIONS: frozenset[str] = frozenset(ext for f in PHOTO_FORMATS for ext in f.extensions)
#: Formats photos come in that are not read (each decoder is attack surface), by extension: a file named
#: for a person in one of them is an error telling to convert it, never a file skipped in silence.
UNREAD_IMAGE_EXTENSIONS: dict[str, str] = {
    ".heic": "HEIC",
    ".heif": "HEIF",
    ".avif": "AVIF",
    ".jxl": "JPEG XL",
    ".jp2": "JPEG 2000",
    ".psd": "Photoshop (PSD)",
}
#: For messages: "JPEG, PNG, GIF, BMP, TIFF or WebP".
ACCEPTED_FORMATS_TEXT = ", ".join(f.label for f in PHOTO_FORMATS[:-1]) + f" or {PHOTO_FORMATS[-1].label}"


def sniff_format(head: bytes) -> PhotoFormat | None:
    """The accepted format these leading bytes (at least 12) start, or None."""
    return next((f for f in PHOTO_FORMATS if f.matches(head)), None)


def has_photo_extension(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in PHOTO_EXTENSIONS


def unread_image_format(name: str) -> str | None:
    """The label of the format ``name``'s extension says, when it is an image format that is not read."""
    return UNREAD_IMAGE_EXTENSIONS.get(os.path.splitext(name)[1].lower())


def not_supported_text(kind: str) -> str:
    """What an image of a format that is not read (``kind``: "HEIC") is told, wherever it is found."""
    return f"{kind} images are not supported; convert the photo to JPEG or PNG"
