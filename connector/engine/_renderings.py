"""Renderings: the value a connected system shows for an exported value it keeps in its own encoding.

Why: Exchange Online stores its own JPEG encoding of a photo written to it, so the confirming import
never shows the bytes exported. Compared byte for byte, every such export looked lost: each sync
staged it again and each export wrote it again, every cycle, for every person (a folder of HR photos
flowing to Exchange Online). For an attribute the connector marks ``rendered_by_target``, the import
that confirms an export and shows a *new* value (neither the exported one nor the one shown before)
records the pair (digest of the value exported, digest of the value shown) on the object. The export
flow then counts the target as holding the exported value while it still shows that rendering. A
changed source value, or somebody changing the value in the target, no longer matches the pair, so
the export is staged again as it should be; an import that still shows the old value is a lost
write and is reported as before.

Digests, not the values: a pair only has to be compared, never read back, and a binary value's
encoding names a blob that the pair must not keep alive.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["holds_rendering", "rendering"]


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def rendering(exported: Any, shown: Any) -> list[str]:
    """The pair to record for an attribute whose exported (encoded) value the target shows as ``shown``."""
    return [_digest(exported), _digest(shown)]


def holds_rendering(renderings: dict[str, Any], attribute: str, value: Any, current: Any) -> bool:
    """Whether the target, showing ``current``, holds its rendering of ``value`` (both encoded)."""
    pair = renderings.get(attribute)
    return pair is not None and pair == rendering(value, current)
