"""Typed errors for images that cannot be used, one class per reason a caller may act on.

Every error carries a MIM-style ``name`` (recorded per object by the engine and the CLI) and a
``detail`` a person can act on. The tree::

    ImageError                      base; ``name`` is "invalid-image"
    ├── EmptyImageError             zero bytes
    ├── InputTooLargeError          more bytes than the input limit (default 20 MB)
    ├── NotAnImageError             no known image signature
    ├── UnsupportedImageError       a real image format we do not decode (HEIC, AVIF, PSD, PDF, SVG ...)
    ├── TruncatedImageError         a supported format whose data ends early
    ├── CorruptImageError           a supported format the decoder rejects for another reason
    ├── TooManyPixelsError          a decompression bomb: more pixels than the pixel limit
    └── ImageDoesNotFitError        even the lowest allowed JPEG quality exceeds ``max_bytes``
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "COPY_AGAIN",
    "CorruptImageError",
    "EmptyImageError",
    "ImageDoesNotFitError",
    "ImageError",
    "InputTooLargeError",
    "InvalidSpecError",
    "NotAnImageError",
    "TooManyPixelsError",
    "TruncatedImageError",
    "UnsupportedImageError",
]


class ImageError(Exception):
    """An image that cannot be normalized. Per object: callers record it and go on."""

    name: ClassVar[str] = "invalid-image"

    def __init__(self, detail: str) -> None:
        super().__init__(f"{self.name}: {detail}")
        self.detail = detail


class EmptyImageError(ImageError):
    name = "empty-image"


class InputTooLargeError(ImageError):
    name = "image-input-too-large"


class NotAnImageError(ImageError):
    name = "not-an-image"


class UnsupportedImageError(ImageError):
    name = "unsupported-image-format"


#: What to do about a photo file whose data ends early: most often a copy that failed, or that has not finished.
COPY_AGAIN = "a copy cut short, or still under way? Copy or save the photo again"


class TruncatedImageError(ImageError):
    """A supported format whose data ends early: ``finding`` says how, ``advice`` what to do.

    Why apart: what to do depends on where the bytes came from, which only the caller knows. For a file
    (a photo folder, ``mvsync photo``) it is the copy (``COPY_AGAIN``, the default); for a server's
    answer it is the photo the server stores, which the person, or an administrator, sets again: the
    caller gives that advice (``advised``), and the image checks stay here, once.
    """

    name = "truncated-image"

    def __init__(self, finding: str, advice: str = COPY_AGAIN) -> None:
        super().__init__(f"{finding}: {advice}")
        self.finding = finding
        self.advice = advice

    def __reduce__(self) -> tuple[type[TruncatedImageError], tuple[str, str]]:
        return type(self), (self.finding, self.advice)  # pickled whole, not as its message

    def advised(self, advice: str) -> TruncatedImageError:
        """The same finding with ``advice`` (what the caller knows to do about it) instead."""
        return TruncatedImageError(self.finding, advice)


class CorruptImageError(ImageError):
    name = "corrupt-image"


class TooManyPixelsError(ImageError):
    name = "image-too-many-pixels"


class ImageDoesNotFitError(ImageError):
    name = "image-does-not-fit"


class InvalidSpecError(ValueError):
    """A ``PhotoSpec`` parameter is out of range. ``key`` names the parameter for config errors."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message
