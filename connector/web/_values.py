"""Encoded store values as the console shows them.

Values stay encoded in the store (``connector.store._values``); the console decodes them with the
store's own ``decode_value`` except binaries, which it never loads for display: a binary becomes a
reference to ``/photo/<sha256>`` plus its size, read from the encoded value itself.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from connector.store import decode_value, is_blob_ref, parse_blob_ref

__all__ = ["BinaryRef", "Shown", "binary_refs", "format_time", "show_value"]


@dataclass(frozen=True)
class BinaryRef:
    sha256: str
    size: int


@dataclass(frozen=True)
class Shown:
    """One attribute value ready for a template: text, and the binaries it holds (if any)."""

    text: str
    binaries: tuple[BinaryRef, ...] = ()


def _never_load(_sha: str) -> bytes:  # binaries are filtered out before decoding
    raise AssertionError("binary values are not decoded for display")


def binary_refs(value: Any) -> tuple[BinaryRef, ...]:
    """Every binary in an encoded value (single or multi-valued)."""
    values = value if isinstance(value, list) else [value]
    return tuple(BinaryRef(*parse_blob_ref(v)) for v in values if is_blob_ref(v))


def _text(value: Any) -> str:
    if is_blob_ref(value):
        sha, size = parse_blob_ref(value)
        return f"<{size:,} bytes, sha256 {sha[:12]}\u2026>"
    decoded = decode_value(value, _never_load)
    if isinstance(decoded, dt.datetime):
        return decoded.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(decoded, bool):
        return "true" if decoded else "false"
    return str(decoded)


def show_value(value: Any) -> Shown:
    """Text for an encoded value (multi-values joined by '; ') and its binaries."""
    if value is None:
        return Shown("(none)")
    values = value if isinstance(value, list) else [value]
    return Shown("; ".join(_text(v) for v in values), binary_refs(value))


def format_time(epoch: float | None) -> str:
    """Local wall-clock time of an epoch timestamp, as operators read run history."""
    if epoch is None:
        return ""
    return dt.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")
