"""Photo normalization: any image a person supplies -> the small square JPEG a directory accepts.

``normalize(data, PhotoSpec(size=96, max_bytes=10240))`` for AD ``thumbnailPhoto``,
``PhotoSpec(size=648, max_bytes=EXCHANGE_PHOTO_MAX_BYTES)`` for Exchange; ``probe`` and ``verify``
check a file without producing output. Bad input raises an ``ImageError`` subclass, never more.
"""

from __future__ import annotations

from connector.imaging._decode import ImageInfo, probe, verify
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
from connector.imaging._files import is_photo_name, unread_image_name
from connector.imaging._formats import (
    ACCEPTED_FORMATS_TEXT,
    ALLOWED_FORMATS,
    PHOTO_EXTENSIONS,
    PHOTO_FORMATS,
    PhotoFormat,
    not_supported_text,
    sniff_format,
)
from connector.imaging._normalize import NormalizedPhoto, encode_jpeg, meets_spec, normalize
from connector.imaging._spec import (
    AD_THUMBNAIL_MAX_BYTES,
    AD_THUMBNAIL_SIZE,
    DEFAULT_MAX_INPUT_BYTES,
    DEFAULT_MAX_PIXELS,
    EXCHANGE_PHOTO_MAX_BYTES,
    EXCHANGE_PHOTO_SIZE,
    MAX_INPUT_BYTES_CEILING,
    MAX_PIXELS_CEILING,
    SMALLER_PHOTO_HINT,
    CropMode,
    InputLimits,
    PhotoSpec,
    parse_byte_size,
)

__all__ = [
    "ACCEPTED_FORMATS_TEXT",
    "AD_THUMBNAIL_MAX_BYTES",
    "AD_THUMBNAIL_SIZE",
    "ALLOWED_FORMATS",
    "DEFAULT_MAX_INPUT_BYTES",
    "DEFAULT_MAX_PIXELS",
    "EXCHANGE_PHOTO_MAX_BYTES",
    "EXCHANGE_PHOTO_SIZE",
    "MAX_INPUT_BYTES_CEILING",
    "MAX_PIXELS_CEILING",
    "PHOTO_EXTENSIONS",
    "PHOTO_FORMATS",
    "SMALLER_PHOTO_HINT",
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
    "PhotoFormat",
    "PhotoSpec",
    "TooManyPixelsError",
    "TruncatedImageError",
    "UnsupportedImageError",
    "encode_jpeg",
    "face_finder",
    "is_photo_name",
    "meets_spec",
    "normalize",
    "not_supported_text",
    "parse_byte_size",
    "probe",
    "sniff_format",
    "unread_image_name",
    "verify",
]
