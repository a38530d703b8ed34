"""What a normalized photo must look like (``PhotoSpec``) and the limits for reading untrusted input.

Specs are validated once, when built, so that a bad configuration fails before a run starts
instead of once per object. ``PhotoSpec.from_params`` accepts the loose values configuration files
and command lines produce (``"96"``, ``"10 KB"``, ``"true"``) so every caller parses them the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from connector.imaging._errors import InvalidSpecError

__all__ = [
    "AD_THUMBNAIL_MAX_BYTES",
    "AD_THUMBNAIL_SIZE",
    "DEFAULT_MAX_INPUT_BYTES",
    "DEFAULT_MAX_PIXELS",
    "EXCHANGE_PHOTO_MAX_BYTES",
    "EXCHANGE_PHOTO_SIZE",
    "MAX_INPUT_BYTES_CEILING",
    "MAX_PIXELS_CEILING",
    "SMALLER_PHOTO_HINT",
    "CropMode",
    "InputLimits",
    "PhotoSpec",
    "parse_byte_size",
]

#: AD ``thumbnailPhoto`` rangeUpper: the directory refuses anything larger.
AD_THUMBNAIL_MAX_BYTES = 102_400
#: Microsoft's guidance for GAL photos (Exchange only falls back to thumbnails under 10 KB).
AD_THUMBNAIL_DEFAULT_BYTES = 10_240
AD_THUMBNAIL_SIZE = 96
#: Entra ID / Graph accept photos up to 4 MB; stay under both the decimal and binary reading.
EXCHANGE_PHOTO_MAX_BYTES = 4_000_000
EXCHANGE_PHOTO_SIZE = 648
#: What to do about a photo over a size or pixel limit, wherever it is refused.
SMALLER_PHOTO_HINT = (
    f"save the photo at a smaller size (a directory keeps {EXCHANGE_PHOTO_SIZE}x{EXCHANGE_PHOTO_SIZE} at most)"
)

DEFAULT_MAX_INPUT_BYTES = 20 * 1024 * 1024
#: Above the 8256x5504 (45 MP) uploads Entra ID is known to hold, well below Pillow's own bomb limit.
DEFAULT_MAX_PIXELS = 50_000_000
#: The highest input limits any setting may raise them to (checked by ``InputLimits`` and by the
#: settings that feed it, so that a value past them is refused with the configuration, not per file).
MAX_INPUT_BYTES_CEILING = 1 << 31
MAX_PIXELS_CEILING = 150_000_000

#: Smallest sensible output budget: a JPEG's headers alone take about 600 bytes, so a smaller
#: value is almost certainly a unit mistake ("10" meaning 10 KB).
MIN_OUTPUT_BYTES = 1024
MIN_SIZE = 16
MAX_SIZE = 2048


class CropMode(StrEnum):
    CENTER = "center"
    FACE = "face"


@dataclass(frozen=True, slots=True)
class InputLimits:
    """Bounds on untrusted input, checked before any pixel is decoded."""

    max_input_bytes: int = DEFAULT_MAX_INPUT_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS

    def __post_init__(self) -> None:
        _check_range("max_input_bytes", self.max_input_bytes, 1, MAX_INPUT_BYTES_CEILING)
        _check_range("max_pixels", self.max_pixels, 1, MAX_PIXELS_CEILING)


@dataclass(frozen=True, slots=True)
class PhotoSpec:
    """A square JPEG of ``size`` pixels (or less: never upscaled unless ``upscale``) in ``max_bytes``.

    ``margin`` (1..50, face crop only) is the space kept around the detected face on every side,
    in percent of the face's size: 40 gives a crop 1.8 times the face, a head-and-shoulders frame.
    The encoder uses the highest quality in ``min_quality..max_quality`` whose output fits.
    """

    size: int = AD_THUMBNAIL_SIZE
    max_bytes: int = AD_THUMBNAIL_DEFAULT_BYTES
    crop: CropMode = CropMode.CENTER
    margin: int = 40
    min_quality: int = 30
    max_quality: int = 90
    upscale: bool = False
    limits: InputLimits = field(default_factory=InputLimits)

    def __post_init__(self) -> None:
        _check_range("size", self.size, MIN_SIZE, MAX_SIZE)
        _check_range("max_bytes", self.max_bytes, MIN_OUTPUT_BYTES, EXCHANGE_PHOTO_MAX_BYTES)
        _check_range("margin", self.margin, 1, 50)
        _check_range("min_quality", self.min_quality, 1, 95)
        _check_range("max_quality", self.max_quality, self.min_quality, 95)
        if not isinstance(self.crop, CropMode):
            object.__setattr__(self, "crop", _coerce_crop(self.crop))

    @classmethod
    def from_params(cls, params: Mapping[str, Any], **defaults: Any) -> PhotoSpec:
        """Build a spec from configuration-style values (strings allowed); unknown keys are errors.

        ``defaults`` are the caller's own defaults (``size=648`` for Exchange photos), overridden
        by ``params``. Raises ``InvalidSpecError`` naming the offending key.
        """
        merged = {**defaults, **params}
        limit_keys = {"max_input_bytes", "max_pixels"}
        known = {"size", "max_bytes", "crop", "margin", "min_quality", "max_quality", "upscale"} | limit_keys
        unknown = sorted(set(merged) - known)
        if unknown:
            expected = ", ".join(sorted(known))
            raise InvalidSpecError(unknown[0], f"unknown parameter (expected one of {expected})")
        values: dict[str, Any] = {}
        for key, value in merged.items():
            if key in ("max_bytes", "max_input_bytes"):
                values[key] = parse_byte_size(value, key=key)
            elif key == "crop":
                values[key] = _coerce_crop(value)
            elif key == "upscale":
                values[key] = _coerce_bool(key, value)
            else:
                values[key] = _coerce_int(key, value)
        limits = InputLimits(**{k: values.pop(k) for k in limit_keys if k in values})
        return cls(limits=limits, **values)


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?i?b?)\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1024,
    "kb": 1024,
    "kib": 1024,
    "m": 1024**2,
    "mb": 1024**2,
    "mib": 1024**2,
    "g": 1024**3,
    "gb": 1024**3,
    "gib": 1024**3,
}


def parse_byte_size(value: object, *, key: str = "max_bytes") -> int:
    """``10240``, ``"10240"``, ``"10KB"``, ``"10 KB"``, ``"4 MiB"`` -> bytes.

    KB means 1024 bytes, as in Microsoft's "10 KB" thumbnail guidance (``max_bytes=10240``).
    """
    if isinstance(value, bool):
        raise InvalidSpecError(key, f"expected a byte size, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value)
        if match and match.group(2).lower() in _UNITS:
            return int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    raise InvalidSpecError(key, f"expected a byte size such as 10240 or '10 KB', got {value!r}")


def _check_range(key: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidSpecError(key, f"expected an integer, got {value!r}")
    if not low <= value <= high:
        raise InvalidSpecError(key, f"{value} is outside {low}..{high}")


def _coerce_int(key: str, value: object) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise InvalidSpecError(key, f"expected an integer, got {value!r}")


def _coerce_bool(key: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false", "yes", "no", "1", "0"):
        return value.strip().lower() in ("true", "yes", "1")
    raise InvalidSpecError(key, f"expected true or false, got {value!r}")


def _coerce_crop(value: object) -> CropMode:
    try:
        return CropMode(str(value).strip().lower())
    except ValueError:
        raise InvalidSpecError("crop", f"expected 'center' or 'face', got {value!r}") from None
