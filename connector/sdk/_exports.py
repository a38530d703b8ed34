"""Export results: exactly one per change handed to ``Connector.export``."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["ExportResult", "ExportStatus"]


class ExportStatus(StrEnum):
    """``SUCCESS``; ``RETRY`` (transient: the target was busy or down); ``FAILED`` (the change itself was
    refused: constraint, permission, missing object). Either way the change stays pending with its error
    and is sent again at the next export, as in MIM; the step counts the two apart (``export_retryable``
    / ``export_errors``)."""

    SUCCESS = "success"
    RETRY = "retry"
    FAILED = "failed"


@dataclass(slots=True)
class ExportResult:
    """The outcome of one exported change, matched by ``identifier`` (the change's identifier).

    ``error_name`` follows MIM's export error names (``cd-missing-object``, ``permission-issue``,
    ``constraint-violation``, ``cd-error`` ...). ``anchor`` is a server-generated anchor after an add
    (the engine re-anchors the connector-space object). Values the server computes on its own are
    not reported here: the confirming import reads them like any other change.
    """

    identifier: str
    status: ExportStatus = ExportStatus.SUCCESS
    error_name: str = ""
    error_detail: str = ""
    anchor: str | None = None

    @classmethod
    def success(cls, identifier: str, *, anchor: str | None = None) -> ExportResult:
        return cls(identifier, ExportStatus.SUCCESS, anchor=anchor)

    @classmethod
    def retry(cls, identifier: str, error_name: str, detail: str) -> ExportResult:
        return cls(identifier, ExportStatus.RETRY, error_name, detail)

    @classmethod
    def failed(cls, identifier: str, error_name: str, detail: str) -> ExportResult:
        return cls(identifier, ExportStatus.FAILED, error_name, detail)
