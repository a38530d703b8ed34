"""Blobs as a repository, for readers: the content-addressed bytes of binary values.

The engine stores and loads whole blobs through ``SqlStore.put_blobs``/``get_blobs`` (bounded by
the bytes of one query); readers that only look at a photo's header read it here.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import Connection, func, select

from connector.store.tables import blob

__all__ = ["Blobs"]

_IN_BATCH = 500


class Blobs:
    """The blob table, read inside one store transaction (``conn``)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def heads(self, hashes: Iterable[str], head_bytes: int) -> list[tuple[str, int, bytes]]:
        """``(sha256, size, first head_bytes bytes)`` of the stored blobs among ``hashes``.

        The database cuts the data, so a page of HD photos never crosses the wire whole (the
        console reads a photo's type and pixel size from its header).
        """
        keys = list(dict.fromkeys(hashes))
        head = func.substr(blob.c.data, 1, head_bytes)
        found: list[tuple[str, int, bytes]] = []
        for i in range(0, len(keys), _IN_BATCH):
            query = select(blob.c.sha256, blob.c.size, head).where(blob.c.sha256.in_(keys[i : i + _IN_BATCH]))
            found.extend((sha, int(size), bytes(data)) for sha, size, data in self._conn.execute(query))
        return found
