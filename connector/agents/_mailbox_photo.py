"""The photo attributes both mailbox-photo agents stage: Exchange Online (``EXO``) and Exchange Server (``EXS``).

Why one place: the metaverse rules, the console and the thumbnail flow read the same five
attributes from either agent (the picture, its SHA-256, the server's version tag, its size, when
its bytes last changed); defining them twice let the two drift apart.

Both also keep the same per-mailbox state (``UserState``), one agent-state key per object, which
the engine commits with the page holding the object's entry (import contract v2), and the
in-flight limit their service's limiter measured (``RunLimit``, under ``LIMIT_KEY``).
"""

from __future__ import annotations

import datetime as _dt
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from connector.sdk import (
    Attribute,
    AttributeAccess,
    AttributeType,
    Count,
    ImportItem,
    ImportRun,
    StateUpdate,
    StopRunError,
)
from connector.throttling import AdaptiveLimiter, LimitKeeper, LimitMemory

__all__ = ["LIMIT_KEY", "RunLimit", "UserState", "photo_attributes", "photo_values", "refused_v1_watermark"]

log = logging.getLogger("mvsync.agent")

#: The agent-state key of the limit the service's limiter last measured (``connector.throttling.LimitMemory``);
#: ``~`` keeps it apart from the per-object keys (user ids, SMTP addresses).
LIMIT_KEY = "~limit"

_IMPORT_ONLY = AttributeAccess.IMPORT_ONLY


def photo_attributes(
    prefix: str, *, photo: str, etag: str, photo_access: AttributeAccess = _IMPORT_ONLY, rendered: bool = False
) -> tuple[Attribute, ...]:
    """``<prefix>Photo``, ``…Checksum``, ``…ETag``, ``…Size`` and ``…LastChecked``, described.

    ``rendered``: the service stores its own encoding of a photo written to it (``rendered_by_target``).
    """
    return (
        Attribute(
            name=f"{prefix}Photo",
            type=AttributeType.BINARY,
            access=photo_access,
            description=photo,
            rendered_by_target=rendered,
        ),
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


#: How far ahead of this host's clock a recorded check may be before it counts as written by a clock
#: that was ahead (hosts sharing a PostgreSQL store differ by a little; Kerberos allows 5 minutes).
CLOCK_SLACK_S = 300.0


@dataclass(slots=True)
class UserState:
    """What we know about one user's photo. ``etag`` None means "no photo" (when checksum is None too)."""

    id: str
    attrs: dict[str, Any]
    etag: str | None = None
    checksum: str | None = None
    size: int | None = None
    #: The connector space holds the user's object (false after an import error on a new user).
    in_cs: bool = False
    checked_at: float = 0.0
    verified_at: float | None = None
    error: str | None = None
    error_at: float | None = None

    def update(self) -> StateUpdate:
        return StateUpdate(self.id, {k: v for k, v in asdict(self).items() if k != "id"})

    def recheck_due(self, cut_ok: float, cut_err: float, now: float) -> bool:
        """Whether the photo's re-check window has passed: its last check before ``cut_ok``, or its
        last failure before ``cut_err``, or either recorded after ``now``.

        Why the last: a time ahead of now was written while this host's clock was ahead (a VM
        restored from a snapshot, a bad NTP source, a BIOS clock). Compared as it is, it kept the
        photo from being re-checked until the clock caught up, as long as it had been ahead, and
        photo changes never show in a delta listing: they went unseen all that time.
        """
        when = (self.error_at or 0.0) if self.error is not None else self.checked_at
        return when < (cut_err if self.error is not None else cut_ok) or when > now + CLOCK_SLACK_S

    def checked(self, when: float) -> StateUpdate:
        """A probe found nothing new: only the probe time moves, and an earlier error is over."""
        self.checked_at, self.error, self.error_at = when, None, None
        return self.update()

    def failed(self, error: str, when: float) -> StateUpdate:
        """The last probe failed: re-checked after the error window, not the photo window."""
        self.error, self.error_at = error, when
        return self.update()

    @classmethod
    def load(cls, user_id: str, value: Any) -> UserState | None:
        if not isinstance(value, dict):
            return None
        try:
            return cls(user_id, **value)
        except TypeError:  # written by another version: probe the user again
            return None


def refused_v1_watermark(state_file: str) -> StopRunError:
    """The error for a watermark written when the agent kept its state in a file of its own."""
    msg = (
        f"this agent's photo state moved from its own file ({state_file}) into the store in this version of "
        "mvsync; run one full import of the agent, then delta imports continue"
    )
    return StopRunError(msg)


class RunLimit:
    """One import run's use of the limit an earlier run measured: recalled at the start, kept on change.

    Why: a scheduler starts each run in a new process, whose limiter would otherwise start cold and
    overshoot the service's limit once, costing every thread a Retry-After pause.
    """

    def __init__(self, limiter: AdaptiveLimiter, run: ImportRun, *, memory_hours: float) -> None:
        self._keeper = LimitKeeper(limiter)
        self._run = run
        self._max_age_s = memory_hours * 3600

    def recall(self) -> list[ImportItem]:
        """Start the limiter at the remembered limit if it still applies (counted as ``limit_recalled``).

        A memory still fresh is written back unchanged: a full import forgets the keys it does not
        write, and this run may not measure the limit again (it is not renewed either way).
        """
        stored = LimitMemory.loads(self._run.state.get_many([LIMIT_KEY]).get(LIMIT_KEY))
        items: list[ImportItem] = []
        if stored is not None and stored.fresh(self._max_age_s):
            items.append(StateUpdate(LIMIT_KEY, stored.dumps()))
        memory = self._keeper.recall(stored, max_age_s=self._max_age_s)
        if memory is not None:
            minutes = (time.time() - memory.measured_at) / 60
            log.info(
                "%s starts at %d in flight, as a run measured %.0f minutes ago", memory.limiter, memory.wall, minutes
            )
            items.append(Count("limit_recalled"))
        return items

    def update(self) -> list[StateUpdate]:
        """What the limiter measured since the last call, once, to commit with the caller's items.

        A limit the answers proved wrong (a probe held above it) is forgotten: the next run starts cold.
        """
        if self._max_age_s <= 0:  # limit_memory_hours = 0: nothing is kept
            return []
        changed, value = self._keeper.changed()
        return [StateUpdate(LIMIT_KEY, value)] if changed else []
