"""Photo normalization: any image a person supplies -> the small square JPEG a directory accepts.

``normalize(data, PhotoSpec(size=96, max_bytes=10240))`` for AD ``thumbnailPhoto``,
``PhotoSpec(size=648, max_bytes=EXCHANGE_PHOTO_MAX_BYTES)`` for Exchange; ``probe`` and ``verify``
check a file without producing output. Bad input raises an ``ImageError`` subclass, never more.
"""

from __future__ import annotations

from connector.imaging._decode import ALLOWED_FORMATS, ImageInfo, probe, verify
from connector.imaging._errors import (
    CorruptImageError,
    EmptyImageError,
    ImageDoesNotFitError,
    ImageError,
    InputTooLargeError,
    InvalidSpecError,
    NotAnImageError,
    TooManyPixelsError,
    TruncatedImageError,
    UnsupportedImageError,
)
from connector.imaging._face import FaceBox, FaceFinder, face_finder
from connector.imaging._files import PHOTO_EXTENSIONS, is_photo_name, write_atomic
from connector.imaging._normalize import NormalizedPhoto, encode_jpeg, normalize
from connector.imaging._spec import (
    AD_THUMBNAIL_MAX_BYTES,
    AD_THUMBNAIL_SIZE,
    DEFAULT_MAX_INPUT_BYTES,
    DEFAULT_MAX_PIXELS,
    EXCHANGE_PHOTO_MAX_BYTES,
    EXCHANGE_PHOTO_SIZE,
    CropMode,
    InputLimits,
    PhotoSpec,
    parse_byte_size,
)

__all__ = [
    "AD_THUMBNAIL_MAX_BYTES",
    "AD_THUMBNAIL_SIZE",
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_INPUT_BYTES",
    "DEFAULT_MAX_PIXELS",
    "EXCHANGE_PHOTO_MAX_BYTES",
    "EXCHANGE_PHOTO_SIZE",
    "PHOTO_EXTENSIONS",
    "CorruptImageError",
    "CropMode",
    "EmptyImageError",
    "FaceBox",
    "FaceFinder",
    "ImageDoesNotFitError",
    "ImageError",
    "ImageInfo",
    "InputLimits",
    "InputTooLargeError",
    "InvalidSpecError",
    "NormalizedPhoto",
    "NotAnImageError",
    "PhotoSpec",
    "TooManyPixelsError",
    "TruncatedImageError",
    "UnsupportedImageError",
    "encode_jpeg",
    "face_finder",
    "is_photo_name",
    "normalize",
    "parse_byte_size",
    "probe",
    "verify",
    "write_atomic",
]
