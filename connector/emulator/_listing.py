"""Sorted ``GET /users`` listings, kept until the tenant changes, so a page costs what it holds.

Each page used to filter and sort the whole tenant again and then find its ``$skiptoken`` by a
linear scan: listing 100,000 users 999 at a time took over a minute on a 2-core machine, and the
emulator rather than the client bounded a large benchmark. A listing is now built once per query
(its filter, search, headers and order) and tenant state; a page is a bisect and a slice.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from connector.emulator._tenant import User

__all__ = ["Listing", "ListingCache", "SortKey"]

#: (the order property's value, lowercased; the user id): ids make the order total.
SortKey = tuple[str, str]


@dataclass(frozen=True)
class Listing:
    """The users a query matches, ascending by ``keys``; a descending page reads it backwards."""

    keys: list[SortKey]
    users: list[User]

    def page(self, after: SortKey | None, top: int, descending: bool) -> tuple[list[tuple[SortKey, User]], bool]:
        """Up to ``top`` users that come after ``after`` in the query's order, and whether more follow."""
        if not descending:
            start = 0 if after is None else bisect.bisect_right(self.keys, after)
            end = min(start + top, len(self.keys))
            return list(zip(self.keys[start:end], self.users[start:end], strict=True)), end < len(self.keys)
        stop = len(self.keys) if after is None else bisect.bisect_left(self.keys, after)
        first = max(0, stop - top)
        pairs = list(zip(self.keys[first:stop], self.users[first:stop], strict=True))
        pairs.reverse()
        return pairs, first > 0


class ListingCache:
    """Listings by query, all dropped when the tenant's edit count moves (any user added, changed or deleted).

    Bounded, oldest first out: a client trying many filters must not grow the emulator without end.
    """

    MAX_LISTINGS = 16

    def __init__(self) -> None:
        self._edits = -1
        self._listings: dict[Hashable, Listing] = {}

    def get(self, edits: int, query: Hashable, build: Callable[[], Listing]) -> Listing:
        """The listing for ``query`` at tenant edit count ``edits``, built by ``build`` when missing."""
        if edits != self._edits:
            self._listings.clear()
            self._edits = edits
        listing = self._listings.get(query)
        if listing is None:
            if len(self._listings) >= self.MAX_LISTINGS:
                del self._listings[next(iter(self._listings))]
            listing = self._listings[query] = build()
        return listing
