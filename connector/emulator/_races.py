"""Races of a real tenant, made to happen on cue: a user removed while its photo is being read.

Why: in a ``users/delta`` round a user can be listed present on one page and ``@removed`` on a later
one (Learn, delta-query-overview, *Replays*: the same object may come again, the most recent change
last). An agent that reads the photos of listed users on other threads then holds two answers about
one user, and which one reaches its engine last is up to timing. Waiting for the timing to line up
makes a flaky test; this module lines it up:

1. ``users/delta`` pages after the one that listed the user present wait until the user's photo
   has been read (so the removal lands in the same round, however fast the listing is);
2. the photo read is answered as the user then is; right after, the user is deleted, and the
   answer is held back until a ``users/delta`` page has listed the user ``@removed`` (the emulator
   replays a removal of a user listed earlier in the round on the next page: ``_graph._delta``).

Each wait ends after ``timeout_s`` whatever happened, so an agent that never reads the photo (or
never asks for the next page) fails its test instead of hanging it. Event loop only.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from connector.emulator._tenant import Tenant

__all__ = ["RemovalRace"]

T = TypeVar("T")


@dataclass
class RemovalRace:
    """The user ``user_id`` is deleted the moment its photo is read, mid-round (see the module docstring)."""

    user_id: str
    timeout_s: float = 30.0
    #: A users/delta page listed the user present: later pages wait for the photo read.
    presented: bool = False
    read: asyncio.Event = field(default_factory=asyncio.Event)
    listed_removed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def done(self) -> bool:
        return self.listed_removed.is_set()

    async def _wait(self, event: asyncio.Event) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), self.timeout_s)

    async def before_delta_page(self) -> None:
        """Hold a users/delta page that comes after the user was listed, until its photo was read."""
        if self.presented and not self.read.is_set():
            await self._wait(self.read)

    def served_delta_page(self, values: list[dict[str, Any]]) -> None:
        """Note what a users/delta page said of the user: present, or ``@removed`` (which ends the race)."""
        for value in values:
            if value.get("id") != self.user_id:
                continue
            if "@removed" in value:
                self.listed_removed.set()
            else:
                self.presented = True

    async def photo_read(self, tenant: Tenant, answer: Callable[[], Awaitable[T]]) -> T:
        """Answer the user's first photo read as the user is now; then delete the user and hold the
        answer (or the error) back until a users/delta page has listed the user ``@removed``."""
        if self.read.is_set():
            return await answer()
        try:
            return await answer()
        finally:
            user = tenant.find(self.user_id)
            if user is not None:
                tenant.delete_user(user)
            self.read.set()
            await self._wait(self.listed_removed)
