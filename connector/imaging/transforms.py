"""Photo transforms for attribute flows: ``thumbnail(size=96, max_bytes=10240)`` and ``hd_photo(size=648)``.

Registered in pyproject under ``mvsync.transforms``. Each is a factory (see
``connector.sdk.TransformFactory``): parameters are checked once, when the flow is loaded, and
bad ones raise ``ConfigurationError`` naming the parameter; the function it returns maps photo
bytes to JPEG bytes, ``None`` to ``None``, and raises ``TransformError("invalid-image", ...)`` for
an image it cannot use, so the engine records a per-object error and goes on.
"""

from __future__ import annotations

import logging
from typing import Any

from connector.imaging._errors import ImageError, InvalidSpecError
from connector.imaging._normalize import normalize
from connector.imaging._spec import (
    AD_THUMBNAIL_MAX_BYTES,
    AD_THUMBNAIL_SIZE,
    EXCHANGE_PHOTO_MAX_BYTES,
    EXCHANGE_PHOTO_SIZE,
    PhotoSpec,
)
from connector.sdk import ConfigurationError, TransformError, TransformFunction, Value

__all__ = ["hd_photo_transform", "photo_transform", "thumbnail_transform"]

_log = logging.getLogger("mvsync.imaging")


def thumbnail_transform(**params: Any) -> TransformFunction:
    """AD ``thumbnailPhoto``: 96x96 in 10 KB by default; ``max_bytes`` may not exceed 102,400 (AD's limit)."""
    return photo_transform(
        "thumbnail", params, byte_ceiling=AD_THUMBNAIL_MAX_BYTES, size=AD_THUMBNAIL_SIZE, max_bytes=10_240
    )


def hd_photo_transform(**params: Any) -> TransformFunction:
    """Exchange / Entra ID photo: at most 648x648 and under 4 MB."""
    return photo_transform(
        "hd_photo",
        params,
        byte_ceiling=EXCHANGE_PHOTO_MAX_BYTES,
        size=EXCHANGE_PHOTO_SIZE,
        max_bytes=EXCHANGE_PHOTO_MAX_BYTES,
        max_quality=92,
    )


def photo_transform(name: str, params: dict[str, Any], *, byte_ceiling: int, **defaults: Any) -> TransformFunction:
    """Build a normalizing transform from flow parameters over ``defaults``.

    ``byte_ceiling`` is the destination's hard size limit, which no configuration may exceed.
    """
    try:
        spec = PhotoSpec.from_params(params, **defaults)
    except InvalidSpecError as exc:
        msg = f"transform {name}: {exc.message}"
        raise ConfigurationError(msg, key=exc.key) from None
    if spec.max_bytes > byte_ceiling:
        msg = f"transform {name}: {spec.max_bytes:,} bytes is over the destination's limit, {byte_ceiling:,}"
        raise ConfigurationError(msg, key="max_bytes")

    def apply(value: Value | None) -> Value | None:
        if value is None:
            return None
        if not isinstance(value, bytes | bytearray | memoryview):
            detail = f"{name} needs binary photo data, got {type(value).__name__}"
            raise TransformError("invalid-attribute-value", detail)
        try:
            photo = normalize(value, spec)
        except ImageError as exc:
            raise TransformError("invalid-image", f"{exc.name}: {exc.detail}") from None
        if photo.notes:
            _log.debug("%s: %s", name, "; ".join(photo.notes))
        return photo.data

    return apply
