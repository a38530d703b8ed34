"""The transform cache as a repository: a transform's encoded output per encoded input.

Transforms are deterministic, so an output computed once (a 96x96 thumbnail of a photo) is kept
by input checksum and reused by every later synchronization.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, LargeBinary, cast, select

from connector.store.tables import transform_cache

__all__ = ["TransformCache"]

_IN_BATCH = 500


class TransformCache:
    """The cache, read and written inside one store transaction (``conn``)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def outputs(self, transform: str, inputs: Sequence[str]) -> Iterator[tuple[str, str | bytes]]:
        """``(input, output JSON)`` of the ``inputs`` already cached for ``transform``.

        On SQLite the output is read as bytes: a damaged value that is no UTF-8 then fails as JSON,
        for its row alone (the caller recomputes it), instead of failing the read of the whole batch.
        """
        output = transform_cache.c.output
        read = cast(output, LargeBinary) if self._conn.dialect.name == "sqlite" else output
        for i in range(0, len(inputs), _IN_BATCH):
            query = select(transform_cache.c.input, read).where(
                transform_cache.c.transform == transform, transform_cache.c.input.in_(inputs[i : i + _IN_BATCH])
            )
            for row in self._conn.execute(query):
                yield row[0], row[1]

    def add(self, rows: list[dict[str, Any]]) -> None:
        """New entries: ``transform``, ``input`` and ``output`` (JSON) each."""
        if rows:
            self._conn.execute(transform_cache.insert(), rows)

    def drop(self, keys: Iterable[tuple[str, str]]) -> None:
        """Remove the entries of ``(transform, input)`` ``keys`` (damaged ones, before they are rewritten)."""
        by_transform: dict[str, list[str]] = {}
        for transform, inp in keys:
            by_transform.setdefault(transform, []).append(inp)
        for transform, inputs in by_transform.items():
            for i in range(0, len(inputs), _IN_BATCH):
                self._conn.execute(
                    transform_cache.delete().where(
                        transform_cache.c.transform == transform,
                        transform_cache.c.input.in_(inputs[i : i + _IN_BATCH]),
                    )
                )
