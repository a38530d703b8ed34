"""Errors a connector raises, and what the engine makes of them.

The tree, most general first::

    ConnectorError                      any failure a connector reports on purpose
    ├── ConfigurationError              settings are wrong; names the key (and the file when known): the
    │                                   setting's own name, which the engine names as the configuration
    │                                   file has it (agents.NAME.settings.KEY) when raised during a step
    ├── StopRunError                    the whole step must stop; carries a MIM-style status
    │   ├── AuthenticationError         -> stopped-authentication (names the command that re-authorizes)
    │   ├── ServerDownError             -> stopped-server-down
    │   └── ScopeViolationError         -> stopped-scope-violation (an export left its configured scope)
    ├── ResumeRefusedError              a full import cannot resume from the checkpoint it was given
    └── EntryError                      one object failed; the run goes on (an import or export error)

Per-object problems should normally be *returned* (``CSEntryChange.import_error`` on import, an
``ExportResult`` with a status on export) rather than raised; ``EntryError`` exists for helpers
deep in a connector that find it easier to raise, and the engine converts it per object.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from connector.sdk._exports import ExportResult

__all__ = [
    "AuthenticationError",
    "ConfigurationError",
    "ConnectorError",
    "EntryError",
    "ResumeRefusedError",
    "ScopeViolationError",
    "ServerDownError",
    "StopRunError",
    "carry_export_results",
    "export_results",
]


class ConnectorError(Exception):
    """Base class of every error a connector raises deliberately."""


class ConfigurationError(ConnectorError):
    """A setting is missing or wrong. The message names the key, and the file when known."""

    def __init__(self, message: str, *, key: str | None = None, file: str | None = None) -> None:
        super().__init__(_located(message, key, file))
        self.detail = message
        self.key = key
        self.file = file

    def located(self, key: str, file: str | None) -> ConfigurationError:
        """This error naming ``key`` and ``file`` instead (what else it carries kept: an export's
        ``results``). Why: a connector names its setting as its settings model has it (``ca_file``);
        the engine knows where that is in the configuration (``agents.ad.settings.ca_file`` in which file)."""
        moved = copy.copy(self)
        moved.args = (_located(self.detail, key, file),)
        moved.key, moved.file = key, file
        return moved


def _located(message: str, key: str | None, file: str | None) -> str:
    """``FILE: KEY: message``, with what is known of the two."""
    where = ": ".join(part for part in (file, key) if part)
    return f"{where}: {message}" if where else message


class StopRunError(ConnectorError):
    """Stops the current run step. ``status`` is the MIM-style step status recorded in history.

    Raised from ``export`` part-way through a batch, it carries in ``results`` what the batch did
    before the stop (the objects already written, at least): the engine records those, so that the
    next export does not write them again, and leaves the batch's other changes pending.
    """

    status: str = "stopped-connector-error"
    #: Class default too, for subclasses whose ``__init__`` does not pass it on.
    results: Sequence[ExportResult] = ()

    def __init__(self, message: str, *, status: str | None = None, results: Sequence[ExportResult] = ()) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status
        self.results = results


class AuthenticationError(StopRunError):
    """Credentials were refused or expired; the message must say how to re-authorize."""

    status = "stopped-authentication"


class ServerDownError(StopRunError):
    """The connected directory cannot be reached after retries."""

    status = "stopped-server-down"


class ScopeViolationError(StopRunError):
    """An export would touch an object or attribute outside the configured scope."""

    status = "stopped-scope-violation"


class ResumeRefusedError(ConnectorError):
    """The checkpoint handed to a full import's first page is no longer usable; the engine starts over."""


class EntryError(ConnectorError):
    """One object failed. ``name`` is a MIM-style error name such as ``cd-missing-object``."""

    def __init__(self, name: str, detail: str, *, retryable: bool = False) -> None:
        super().__init__(f"{name}: {detail}")
        self.name = name
        self.detail = detail
        self.retryable = retryable


#: The attribute by which an interruption raised out of ``Connector.export`` carries its batch's results.
_EXPORT_RESULTS_ATTR = "mvsync_export_results"


def carry_export_results(exc: BaseException, results: Sequence[ExportResult]) -> None:
    """Let ``exc``, raised out of ``Connector.export`` part-way through a batch, carry what the batch did.

    ``StopRunError.results`` does this for a stop. An interruption (Ctrl-C, a stop signal) must go on
    as the exception it is (the CLI reads its signal for the exit code), so the results travel on it
    as an attribute: without them the objects written before it stay pending and are written again.
    """
    if isinstance(exc, StopRunError):
        exc.results = results
    else:
        setattr(exc, _EXPORT_RESULTS_ATTR, tuple(results))


def export_results(exc: BaseException) -> Sequence[ExportResult]:
    """What the batch that ``exc`` stopped had done before it (see :func:`carry_export_results`)."""
    if isinstance(exc, StopRunError):
        return exc.results
    carried = getattr(exc, _EXPORT_RESULTS_ATTR, ())
    return carried if isinstance(carried, tuple) else ()
