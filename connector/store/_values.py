"""How attribute values are held in the store and compared by the engine.

Values are kept *encoded* end to end inside the engine: plain ``str``/``int``/``bool`` stay as they
are, and the rare types become tagged strings that compare correctly with ``==``:

* binary  -> ``"\\x00b:<sha256 hex>:<size>"``: the bytes live once in the ``blob`` table (content
  addressed), so holograms stay small and two agents holding the same photo share one blob;
* datetime -> ``"\\x00d:<ISO 8601 UTC>"``;
* a string that itself starts with NUL -> ``"\\x00s:<string>"`` (so hostile input cannot pose as a
  blob reference).

Multi-valued attributes are sorted lists, so set-equal values compare equal.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections.abc import Callable
from typing import Any

__all__ = [
    "BLOB_PREFIX",
    "blob_ref",
    "decode_value",
    "encode_value",
    "is_blob_ref",
    "normalize_values",
    "parse_blob_ref",
]

BLOB_PREFIX = "\x00b:"
_DATE_PREFIX = "\x00d:"
_STR_PREFIX = "\x00s:"


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
        data = bytes(value)
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


def _decode_one(value: Any, get_blob: Callable[[str], bytes]) -> Any:
    if isinstance(value, str) and value.startswith("\x00"):
        if value.startswith(BLOB_PREFIX):
            return get_blob(parse_blob_ref(value)[0])
        if value.startswith(_DATE_PREFIX):
            return _dt.datetime.fromisoformat(value[len(_DATE_PREFIX) :])
        if value.startswith(_STR_PREFIX):
            return value[len(_STR_PREFIX) :]
    return value


def decode_value(value: Any, get_blob: Callable[[str], bytes]) -> Any:
    """The connector-facing value (bytes, datetime, str ...) of an encoded value or list."""
    if isinstance(value, list):
        return [_decode_one(v, get_blob) for v in value]
    return _decode_one(value, get_blob)
