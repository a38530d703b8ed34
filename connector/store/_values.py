"""How attribute values are held in the store and compared by the engine.

Values are kept *encoded* end to end inside the engine: plain ``str``/``int``/``bool`` stay as they
are, and the rare types become tagged strings that compare correctly with ``==``:

* binary  -> ``"\\x00b:<sha256 hex>:<size>"``: the bytes live once in the ``blob`` table (content
  addressed), so holograms stay small and two agents holding the same photo share one blob;
* datetime -> ``"\\x00d:<ISO 8601 UTC>"``;
* a string that itself starts with NUL -> ``"\\x00s:<string>"`` (so hostile input cannot pose as a
  blob reference).

Multi-valued attributes are sorted lists, so set-equal values compare equal.

This module is the only place that knows the tags: the engine, the CLI, the console and ``doctor``
read values through :func:`decode_value` (with a blob loader, or without one to get a
:class:`BlobRef` instead of the bytes) and :func:`plain_value` (JSON-ready), never by hand.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

__all__ = [
    "BLOB_PREFIX",
    "BlobRef",
    "blob_ref",
    "blob_refs",
    "decode_value",
    "encode_value",
    "is_blob_ref",
    "normalize_values",
    "parse_blob_ref",
    "plain_value",
    "undecodable",
]

BLOB_PREFIX = "\x00b:"
_DATE_PREFIX = "\x00d:"
_STR_PREFIX = "\x00s:"


@dataclass(frozen=True, slots=True)
class BlobRef:
    """A binary value named by its checksum and size, for readers that show it without loading it."""

    sha256: str
    size: int


def blob_ref(sha256_hex: str, size: int) -> str:
    return f"{BLOB_PREFIX}{sha256_hex}:{size}"


def is_blob_ref(value: object) -> bool:
    return isinstance(value, str) and value.startswith(BLOB_PREFIX)


def parse_blob_ref(value: str) -> tuple[str, int]:
    """``(sha256 hex, size)`` of an encoded binary value."""
    sha, _, size = value[len(BLOB_PREFIX) :].partition(":")
    return sha, int(size)


def _encode_one(value: Any, put_blob: Callable[[str, bytes], None]) -> Any:
    if isinstance(value, str):
        return _STR_PREFIX + value if value.startswith("\x00") else value
    if isinstance(value, bool | int):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        # bytes as they are, a subclass too: ``bytes(value)`` of a HashedBytes copies it, and the page's
        # blobs then held every photo a second time beside its entry until the page was written
        data = value if isinstance(value, bytes) else bytes(value)
        # a value that carries its hash (connector.sdk.HashedBytes) is not hashed again
        known = getattr(value, "sha256", None)
        sha = known if isinstance(known, str) else hashlib.sha256(data).hexdigest()
        put_blob(sha, data)
        return blob_ref(sha, len(data))
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.UTC)
        return _DATE_PREFIX + value.astimezone(_dt.UTC).isoformat()
    if isinstance(value, float):
        return value
    msg = f"unsupported value type {type(value).__name__}"
    raise TypeError(msg)


def _sort_key(value: Any) -> tuple[str, str]:
    return (type(value).__name__, str(value))


def normalize_values(values: list[Any]) -> list[Any]:
    """Encoded multi-values in their canonical (deduplicated, sorted) order."""
    return sorted(set(values), key=_sort_key)


def encode_value(value: Any, put_blob: Callable[[str, bytes], None]) -> Any:
    """Encode one value or a list of values (sorted); ``put_blob(sha, data)`` stores binaries."""
    if isinstance(value, list | tuple | set | frozenset):
        encoded = [_encode_one(v, put_blob) for v in value if v is not None]
        return normalize_values(encoded) if encoded else None
    if value is None:
        return None
    return _encode_one(value, put_blob)


def _decode_one(value: Any, get_blob: Callable[[str], bytes] | None) -> Any:
    if isinstance(value, str) and value.startswith("\x00"):
        if value.startswith(BLOB_PREFIX):
            sha, size = parse_blob_ref(value)
            return BlobRef(sha, size) if get_blob is None else get_blob(sha)
        if value.startswith(_DATE_PREFIX):
            return _dt.datetime.fromisoformat(value[len(_DATE_PREFIX) :])
        if value.startswith(_STR_PREFIX):
            return value[len(_STR_PREFIX) :]
    return value


def decode_value(value: Any, get_blob: Callable[[str], bytes] | None = None) -> Any:
    """The connector-facing value (bytes, datetime, str ...) of an encoded value or list.

    ``get_blob(sha256)`` loads a binary's bytes; without it a binary decodes to a :class:`BlobRef`,
    so a reader that only shows values (CLI, console, dry runs) never loads a photo.
    """
    if isinstance(value, list):
        return [_decode_one(v, get_blob) for v in value]
    return _decode_one(value, get_blob)


def plain_value(value: Any) -> Any:
    """A JSON-ready rendering of an encoded value or list, for ``--json`` outputs and dry runs.

    A binary becomes ``{"sha256": ..., "bytes": ...}`` and a date its ISO 8601 text (UTC).
    """
    decoded = decode_value(value)
    if isinstance(decoded, list):
        return [_plain_one(v) for v in decoded]
    return _plain_one(decoded)


def _plain_one(value: Any) -> Any:
    if isinstance(value, BlobRef):
        return {"sha256": value.sha256, "bytes": value.size}
    if isinstance(value, _dt.datetime):
        return value.isoformat()
    return value


def blob_refs(document: Any) -> Iterator[BlobRef]:
    """Every binary referenced anywhere in a stored document (values, lists, nested objects).

    A damaged reference (its size not a number) yields size -1, so ``doctor`` can report it.
    """
    if isinstance(document, str):
        if document.startswith(BLOB_PREFIX):
            sha, _, size = document[len(BLOB_PREFIX) :].partition(":")
            yield BlobRef(sha, int(size) if size.isdigit() else -1)
    elif isinstance(document, dict):
        for item in document.values():
            yield from blob_refs(item)
    elif isinstance(document, list | tuple):
        for item in document:
            yield from blob_refs(item)


#: What an encoded value is, by its tag, as messages about a damaged one name it.
_TAG_NAMES = {BLOB_PREFIX: "binary value's reference", _DATE_PREFIX: "date"}


def undecodable(document: Any) -> str | None:
    """What kind of encoded value anywhere in a stored document does not decode ("date", "binary value's
    reference"), or None when every one does.

    Why: a byte changed inside a value's text (a size's digit, a date's) leaves the document JSON, so it
    passes :func:`~connector.store.loads`, and :func:`decode_value` then failed with a ``ValueError`` far
    from the row it came from. Readers that show rows (the console) ask this first and show the row as
    damaged. Never the value itself: it may be a person's data.
    """
    if isinstance(document, str):
        if not document.startswith("\x00"):
            return None
        try:
            _decode_one(document, None)
        except ValueError:
            return _TAG_NAMES.get(document[: len(BLOB_PREFIX)], "value")
        return None
    items = document.values() if isinstance(document, dict) else document if isinstance(document, list) else ()
    return next((kind for kind in map(undecodable, items) if kind is not None), None)
