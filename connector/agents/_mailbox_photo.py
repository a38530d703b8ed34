"""The photo attributes both mailbox-photo agents stage: Exchange Online (``EXO``) and Exchange Server (``EXS``).

Why one place: the metaverse rules, the console and the thumbnail flow read the same five
attributes from either agent (the picture, its SHA-256, the server's version tag, its size, when
its bytes last changed); defining them twice let the two drift apart.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from connector.sdk import Attribute, AttributeAccess, AttributeType

__all__ = ["photo_attributes", "photo_values"]

_IMPORT_ONLY = AttributeAccess.IMPORT_ONLY


def photo_attributes(
    prefix: str, *, photo: str, etag: str, photo_access: AttributeAccess = _IMPORT_ONLY
) -> tuple[Attribute, ...]:
    """``<prefix>Photo``, ``…Checksum``, ``…ETag``, ``…Size`` and ``…LastChecked``, described."""
    return (
        Attribute(name=f"{prefix}Photo", type=AttributeType.BINARY, access=photo_access, description=photo),
        Attribute(name=f"{prefix}PhotoChecksum", access=_IMPORT_ONLY, description=f"SHA-256 hex of {prefix}Photo"),
        Attribute(name=f"{prefix}PhotoETag", access=_IMPORT_ONLY, description=etag),
        Attribute(name=f"{prefix}PhotoSize", type=AttributeType.INTEGER, access=_IMPORT_ONLY, description="bytes"),
        Attribute(name=f"{prefix}PhotoLastChecked", type=AttributeType.DATETIME, access=_IMPORT_ONLY),
    )


def photo_values(prefix: str, data: bytes, checksum: str | None, etag: str | None, changed_at: float) -> dict[str, Any]:
    """The five attributes' values for a photo whose bytes last changed at ``changed_at`` (Unix time)."""
    return {
        f"{prefix}Photo": data,
        f"{prefix}PhotoChecksum": checksum,
        f"{prefix}PhotoETag": etag,
        f"{prefix}PhotoSize": len(data),
        f"{prefix}PhotoLastChecked": _dt.datetime.fromtimestamp(changed_at, _dt.UTC),
    }
