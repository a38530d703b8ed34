"""The transform cache as a repository: a transform's encoded output per encoded input.

Transforms are deterministic, so an output computed once (a 96x96 thumbnail of a photo) is kept
by input checksum and reused by every later synchronization.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, select

from connector.store.tables import transform_cache

__all__ = ["TransformCache"]

_IN_BATCH = 500


class TransformCache:
    """The cache, read and written inside one store transaction (``conn``)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def outputs(self, transform: str, inputs: Sequence[str]) -> Iterator[tuple[str, str]]:
        """``(input, output JSON)`` of the ``inputs`` already cached for ``transform``."""
        for i in range(0, len(inputs), _IN_BATCH):
            query = select(transform_cache.c.input, transform_cache.c.output).where(
                transform_cache.c.transform == transform, transform_cache.c.input.in_(inputs[i : i + _IN_BATCH])
            )
            for row in self._conn.execute(query):
                yield row[0], row[1]

    def add(self, rows: list[dict[str, Any]]) -> None:
        """New entries: ``transform``, ``input`` and ``output`` (JSON) each."""
        if rows:
            self._conn.execute(transform_cache.insert(), rows)
