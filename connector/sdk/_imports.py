"""Paged import, equivalent to PSMA's Import.ps1 contract.

PSMA passes ``$OperationType``, ``$PageSize``, ``$ImportPageNumber``, ``$global:PageToken`` and
``$global:RunStepCustomData`` (the watermark, blanked on full imports) and reads back objects,
``$global:MoreToImport``, the page token and the new watermark. ``ImportRequest`` and ``ImportPage``
carry exactly that. The engine saves the watermark only when the step closes normally.

A full import of a big directory can also *resume* (MIM cannot): a connector that can start again
from a point returns a ``checkpoint`` with each page, an opaque text that must still mean something
to a new process after a crash or a reboot. The engine stores it in the same transaction as the
page's entries, so it never names a page that was not committed, and hands the last one back as
``ImportRequest.resume_from`` on the first page of the next full import of that agent. A connector
that can no longer resume from it (the token expired, the source was rebuilt) raises
``ResumeRefusedError`` on that first page, and the engine starts over.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from connector.sdk._changes import CSEntryChange

__all__ = ["ImportMode", "ImportPage", "ImportRequest", "paginate_list"]


class ImportMode(StrEnum):
    FULL = "full"
    DELTA = "delta"


@dataclass(frozen=True, slots=True)
class ImportRequest:
    """One call for one page. ``watermark`` is always None on a full import."""

    mode: ImportMode
    page_size: int = 500
    page_number: int = 1
    page_token: str | None = None
    watermark: str | None = None
    #: On the first page of a full import resuming an interrupted one: its last committed checkpoint.
    resume_from: str | None = None


@dataclass(slots=True)
class ImportPage:
    """What one page returns. ``watermark`` is the value to hand to the next delta import."""

    entries: list[CSEntryChange]
    more_to_import: bool = False
    page_token: str | None = None
    watermark: str | None = None
    #: Full imports: where to resume once this page (and every earlier one) is committed; None if
    #: the connector cannot resume from here. Opaque to the engine; must survive a process restart.
    checkpoint: str | None = None


_T = TypeVar("_T")


def paginate_list(
    items: Sequence[_T],
    request: ImportRequest,
    to_entry: Callable[[_T], CSEntryChange],
    *,
    watermark: str | None = None,
) -> ImportPage:
    """Serve an in-memory sequence page by page, the page token being the next offset.

    Handy for connectors whose source is small enough to list at once (a folder, a file).
    """
    start = int(request.page_token or 0)
    end = min(start + request.page_size, len(items))
    more = end < len(items)
    return ImportPage(
        entries=[to_entry(item) for item in items[start:end]],
        more_to_import=more,
        page_token=str(end) if more else None,
        watermark=watermark,
    )
