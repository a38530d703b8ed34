"""Encoded store values as the console shows them.

Values stay encoded in the store; the console decodes them with the store's one decoder
(``connector.store.decode_value``) without a blob loader, so a binary is never loaded for display:
it becomes a :class:`~connector.store.BlobRef` (a link to ``/photo/<sha256>`` plus its size).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from connector.store import BlobRef, decode_value
from connector.timestamps import local_time

__all__ = ["BinaryRef", "Shown", "binary_refs", "format_time", "show_value"]

#: The console's name for a binary value shown by reference.
BinaryRef = BlobRef


@dataclass(frozen=True)
class Shown:
    """One attribute value ready for a template: text, and the binaries it holds (if any)."""

    text: str
    binaries: tuple[BinaryRef, ...] = ()


def _decoded(value: Any) -> list[Any]:
    decoded = decode_value(value)
    return decoded if isinstance(decoded, list) else [decoded]


def binary_refs(value: Any) -> tuple[BinaryRef, ...]:
    """Every binary in an encoded value (single or multi-valued)."""
    return tuple(v for v in _decoded(value) if isinstance(v, BlobRef))


def _text(decoded: Any) -> str:
    if isinstance(decoded, BlobRef):
        return f"<{decoded.size:,} bytes, sha256 {decoded.sha256[:12]}\u2026>"
    if isinstance(decoded, dt.datetime):
        return decoded.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    if isinstance(decoded, bool):
        return "true" if decoded else "false"
    return str(decoded)


def show_value(value: Any) -> Shown:
    """Text for an encoded value (multi-values joined by '; ') and its binaries."""
    if value is None:
        return Shown("(none)")
    values = _decoded(value)
    return Shown("; ".join(_text(v) for v in values), tuple(v for v in values if isinstance(v, BlobRef)))


def format_time(epoch: float | None) -> str:
    """The console machine's local time of an epoch timestamp with its UTC offset, as ``mvsync history``
    shows it: the browser reading it may be in another time zone, and an autumn hour repeats."""
    if epoch is None:
        return ""
    return local_time(epoch)
