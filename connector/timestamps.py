"""Times as mvsync shows them: never a wall-clock time without its offset.

Why: a local time without an offset is ambiguous for an hour each autumn (the clocks go back) and
wrong for anyone reading it from another time zone (an engineer abroad, a log shipped to a central
server). People read the machine's local time with its UTC offset; scripts get ISO 8601 in UTC.
"""

from __future__ import annotations

import datetime as _dt

__all__ = ["local_time", "utc_iso"]


def local_time(epoch: float) -> str:
    """``2026-12-06 09:45:12+01:00``: this machine's local time of ``epoch``, with its UTC offset then."""
    return _dt.datetime.fromtimestamp(epoch).astimezone().isoformat(sep=" ", timespec="seconds")


def utc_iso(epoch: float | None) -> str | None:
    """``2026-12-06T08:45:12.345+00:00``: ``epoch`` in ISO 8601, UTC (as mvsync's JSON logs write
    times); None for None (an end that was never recorded)."""
    if epoch is None:
        return None
    return _dt.datetime.fromtimestamp(epoch, _dt.UTC).isoformat(timespec="milliseconds")
