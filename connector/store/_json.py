"""JSON documents as the store keeps them (text, the same on SQLite and PostgreSQL).

orjson: the stdlib encoder was among the largest costs in profiles of a synchronization.
"""

from __future__ import annotations

from typing import Any

import orjson

__all__ = ["dumps", "loads"]


def dumps(obj: Any) -> str:
    """JSON text of ``obj`` (compact, UTF-8 preserved)."""
    return orjson.dumps(obj).decode()


def loads(text: str | bytes) -> Any:
    return orjson.loads(text)
