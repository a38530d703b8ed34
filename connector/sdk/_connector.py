"""The connector contract: a few explicit methods, the way PSMA had a few scripts.

A connector (a management agent's code) declares ``settings_model`` and ``capabilities`` and
implements ``get_schema`` and ``import_changes`` (import contract v2, see ``_stream``: a generator
of changes, state updates, checkpoints and deferred work) or, in the older page-pull shape,
``import_page``; ``export`` is optional. The engine owns all state
(connector space, watermarks, pending exports): a connector never writes the store, and the engine
never talks to a connected directory except through these methods.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from connector.sdk._changes import CSEntryChange
from connector.sdk._errors import ConfigurationError
from connector.sdk._exports import ExportResult
from connector.sdk._imports import ImportPage, ImportRequest
from connector.sdk._schema import Schema
from connector.sdk._stream import ImportItem, ImportRun

__all__ = [
    "MUST_EXIST",
    "Capabilities",
    "CheckResult",
    "Connector",
    "ConnectorContext",
    "ConnectorSettings",
]


#: ``json_schema_extra`` of a ``Path`` setting the connector only reads (a photo folder, a list of
#: mailboxes): ``Field(..., json_schema_extra=MUST_EXIST)``. A run checks that it exists before its
#: first step, and ``mvsync doctor`` reports it; an unmarked path may be an output still to be created.
MUST_EXIST: dict[str, Any] = {"must_exist": True}


class ConnectorSettings(BaseModel):
    """Base for a connector's settings. Unknown keys are errors (they are usually typos).

    Declare secrets as ``pydantic.SecretStr``: the configuration loader then accepts them only as
    ``{ env = "NAME" }`` or ``{ file = "/path" }`` references, never as literals.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    def unused_settings(self) -> dict[str, str]:
        """The settings given that this configuration does not read, each with why (a key file when the
        key comes from elsewhere). Why: the checks before a run and ``mvsync doctor`` check the files
        settings name (``connector.engine.setting_paths``), and a file nothing reads must not stop a run
        or be reported missing with the command that makes it. None, unless a connector says so.
        """
        return {}


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What the connector can do (MIM's MA capabilities, reduced to what the engine reads).

    The engine refuses a step the connector cannot run (``stopped-configuration``, naming the agent)
    instead of letting it fail half-way: a full-import step needs ``full_import``, a delta-import
    step ``delta_import``, an export step ``export``.
    """

    full_import: bool = True
    delta_import: bool = False
    export: bool = False
    #: Whether its export deletes objects: an agent that cannot is refused ``deprovision = "delete"``,
    #: which would stage a delete it refuses for every person deprovisioned.
    deletes_objects: bool = True
    #: Largest page (entries per committed import page) or export batch the connector accepts.
    max_page_size: int = 10_000
    max_batch_size: int = 9_999


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What ``Connector.check`` found: reachable (``ok``) or not, and what to say (``mvsync doctor``).

    ``warning``: reachable, but something the operator should look at before the next run (an empty
    photo folder where a share may not be mounted); doctor reports it as a warning, not an error.
    """

    ok: bool
    detail: str = ""
    warning: bool = False


@dataclass(slots=True)
class ConnectorContext:
    """What the engine tells a connector about the run it takes part in.

    ``export_attributes`` lists, per object class, the attributes some export flow names: a
    connector must refuse to modify anything else (the scope guard). ``reauthorize_command`` is the
    exact command a user runs to fix an authentication stop, for error messages.
    """

    agent: str
    data_dir: Path
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("mvsync.agent"))
    config_file: Path | None = None
    dry_run: bool = False
    export_attributes: dict[str, frozenset[str]] = field(default_factory=dict)
    reauthorize_command: str = ""

    def make_data_dir(self) -> Path:
        """Create the agent's own folder (``data_dir``/AGENT) if needed, and return it.

        Why not ``mkdir`` in each connector: a file in its way, a read-only share or a folder of another
        account raised an OSError traceback; this names the folder and what to check, under ``data_dir``.
        """
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            msg = (
                f"cannot create the agent's folder {self.data_dir} ({exc.strerror or exc}): check data_dir, "
                "what is in the way, and that the account running mvsync may write there"
            )
            raise ConfigurationError(msg, key="data_dir") from None
        return self.data_dir


SettingsT = TypeVar("SettingsT", bound=ConnectorSettings)


class Connector(abc.ABC, Generic[SettingsT]):
    """Base class of every management agent's code.

    Lifecycle per run step: ``open()``, then one ``import_changes`` generator run to its end (or
    ``import_page`` calls until ``more_to_import`` is false), or ``export`` calls (one per batch),
    then ``close()`` (always, also after errors).
    """

    settings_model: ClassVar[type[ConnectorSettings]] = ConnectorSettings
    capabilities: ClassVar[Capabilities] = Capabilities()
    description: ClassVar[str] = ""
    #: The settings ``get_schema`` depends on, when not all of them: ``mvsync schema`` then validates
    #: only these and asks ``schema_for``, so that printing a schema needs none of the others (secrets,
    #: files, servers). None: the connector is built from all its settings first, as for a run.
    schema_settings: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, settings: SettingsT, context: ConnectorContext) -> None:
        self.settings = settings
        self.context = context

    def open(self) -> None:
        """Connect. Called once per run step before any import or export."""

    def close(self) -> None:
        """Release connections. Called once per run step, also after failures."""

    def check(self) -> CheckResult:
        """Cheap reachability and credential check for ``mvsync doctor``."""
        return CheckResult(True, "no check implemented")

    def step_note(self) -> str | None:
        """A line the run history keeps with a step that ended normally: which server served it, say.

        Called after the step's imports or exports, before ``close()``. Why: a connector that can reach
        one of several servers (domain controllers) decides which at run time, and an operator reading
        ``mvsync history show`` asks which one answered. The default says nothing.
        """
        return None

    @abc.abstractmethod
    def get_schema(self) -> Schema:
        """The object classes and attributes this connector handles."""

    @classmethod
    def schema_for(cls, settings: Mapping[str, Any]) -> Schema:
        """The schema from ``settings``: the values of ``schema_settings`` given, validated by their fields'
        types alone (a check the schema relies on belongs in the type, ``Annotated[.., AfterValidator(..)]``,
        not in a ``field_validator`` of the model). Only for a connector that declares ``schema_settings``."""
        msg = f"{cls.__name__} declares schema_settings but not schema_for"
        raise NotImplementedError(msg)

    def import_changes(self, run: ImportRun) -> Iterator[ImportItem]:
        """Import contract v2: yield changes and the rest (see ``connector.sdk._stream``).

        The engine pages, commits, runs ``Deferred`` work on its threads and keeps the state. Raise
        ``StopRunError`` only when the whole step must stop.
        """
        msg = f"{type(self).__name__} implements neither import_changes nor import_page"
        raise NotImplementedError(msg)

    def import_page(self, request: ImportRequest) -> ImportPage:
        """The page-pull contract (v1), still supported: return one page of changes.

        New connectors implement ``import_changes`` instead. Raise ``StopRunError`` only when the
        whole step must stop.
        """
        msg = f"{type(self).__name__} implements neither import_changes nor import_page"
        raise NotImplementedError(msg)

    @classmethod
    def streams_imports(cls) -> bool:
        """Whether this connector implements import contract v2 (``import_changes``)."""
        return cls.import_changes is not Connector.import_changes

    @classmethod
    def pages_imports(cls) -> bool:
        """Whether this connector implements the page-pull contract (``import_page``)."""
        return cls.import_page is not Connector.import_page

    def prepare_export(self, changes: Sequence[CSEntryChange]) -> None:
        """Look at every change an export step will send before its first batch is written.

        Called in chunks, in order, only by steps that write (not dry runs). The changes carry their
        object, DN and attribute names but no values (binary values are left empty): enough to
        check, say, write permissions up front. Raise ``StopRunError`` to stop the step before
        anything is written. The default does nothing (and the engine then skips the pass).
        """

    def export(self, changes: Sequence[CSEntryChange]) -> list[ExportResult]:
        """Apply a batch of changes; return exactly one result per change, matched by identifier.

        Stopped part-way (``StopRunError``, or Ctrl-C / a stop signal as ``KeyboardInterrupt``), hand
        the results of the changes done so far with it (``carry_export_results``): the engine records
        them, so that the next export does not write those objects again.
        """
        msg = f"{type(self).__name__} does not support export"
        raise NotImplementedError(msg)

    def __enter__(self) -> Connector[SettingsT]:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
