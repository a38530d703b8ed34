"""The configuration file's shape (``mvsync.toml``), validated with pydantic.

The vocabulary is MIM's: agents (management agents) with projection, join, import-flow and
export-flow rules; a metaverse with ranked import precedence; run profiles made of steps.
"""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from connector.config._hints import did_you_mean, toml_key

__all__ = [
    "AgentConfig",
    "DeletionThreshold",
    "Deprovision",
    "ExportFlow",
    "ImportFlow",
    "JoinCondition",
    "JoinRule",
    "MetaverseConfig",
    "MvsyncConfig",
    "ProjectionRule",
    "RunProfileConfig",
    "RunStepConfig",
    "RunStepKind",
    "StoreConfig",
    "beside_config",
]


def beside_config(base_dir: Path, value: str) -> Path:
    """A path the configuration names: ``~`` is the home folder, and a relative path is relative to
    the configuration's folder, never to wherever mvsync was started (Task Scheduler starts it in
    System32, cron in the home folder)."""
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else base_dir / path


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class RunStepKind(StrEnum):
    """MIM run-step types (the combined import-and-sync types were deprecated in FIM 2010 R2)."""

    FULL_IMPORT = "full-import"
    DELTA_IMPORT = "delta-import"
    FULL_SYNC = "full-sync"
    DELTA_SYNC = "delta-sync"
    EXPORT = "export"


class Deprovision(StrEnum):
    """What happens to an agent's connector when its metaverse object is deleted."""

    DISCONNECT = "disconnect"
    DELETE = "delete"


class StoreConfig(_Strict):
    #: SQLAlchemy URL. ``sqlite:///relative.db`` is relative to the configuration file's folder.
    url: str = "sqlite:///mvsync.db"
    #: How often a run checks every page of a SQLite store (``quick_check``) before its first step:
    #: hours since the last clean check (0: every run). The check reads the whole file, photos too.
    page_check_hours: float = Field(default=24.0, ge=0)


class JoinCondition(_Strict):
    cs: str
    mv: str
    ignore_case: bool = False


class JoinRule(_Strict):
    """All conditions must match (AND). Rules are tried in order; the first with candidates wins.

    Text is compared in Unicode NFC (and lower case with ``ignore_case``): see ``_JoinIndex.norm``.
    """

    object_class: str
    metaverse_type: str = "person"
    match: tuple[JoinCondition, ...] = Field(min_length=1)


class ProjectionRule(_Strict):
    object_class: str
    metaverse_type: str = "person"


class ImportFlow(_Strict):
    """Connector-space attribute -> metaverse attribute, optionally through a transform."""

    object_class: str
    cs: str
    mv: str
    transform: str | None = None


class ExportFlow(_Strict):
    """Metaverse attribute -> connector-space attribute.

    ``allow_null``: when the metaverse value is null the target is cleared (MIM's Allow Nulls);
    otherwise a null leaves the target alone.
    """

    object_class: str
    mv: str
    cs: str
    transform: str | None = None
    allow_null: bool = False


class AgentConfig(_Strict):
    """One management agent: its connector type, settings and sync rules."""

    type: str
    description: str = ""
    settings: dict[str, Any] = Field(default_factory=dict)
    projection: tuple[ProjectionRule, ...] = ()
    join: tuple[JoinRule, ...] = ()
    import_flow: tuple[ImportFlow, ...] = ()
    export_flow: tuple[ExportFlow, ...] = ()
    deprovision: Deprovision = Deprovision.DISCONNECT


class MetaverseConfig(_Strict):
    #: A shipped schema name (``person``) or a path to a TOML file with ``[object_types.*]``.
    schema_: str = Field("person", alias="schema")
    #: Ranked import precedence per metaverse attribute: agents, highest first. Attributes not
    #: listed rank agents in the order they are declared in ``[agents]``.
    precedence: dict[str, tuple[str, ...]] = Field(default_factory=dict)
    #: Delete a metaverse object when its last connector from one of these agents goes away; when
    #: empty, only when it has no connectors left at all.
    delete_when_disconnected_from: tuple[str, ...] = ()


class DeletionThreshold(_Strict):
    """Stop an export before it starts when it would delete or clear too much (all-or-nothing).

    Counted: object deletes plus clears of the listed ``attributes``. ``count`` and ``percent``
    (of the agent's connector-space objects) are independent limits; either trips the threshold.
    """

    count: int | None = Field(None, ge=0)
    percent: float | None = Field(None, ge=0, le=100)
    attributes: tuple[str, ...] = ()

    def exceeded(self, count: int, total: int) -> tuple[float, list[str]]:
        """``count`` removals among ``total`` objects: their percentage, and the limits they exceed,
        as messages name them (only those: naming both read as if a small count broke both)."""
        percent = 100.0 * count / total if total else 0.0
        over = (
            (f"count {self.count}", self.count is not None and count > self.count),
            (f"{self.percent}%", self.percent is not None and percent > self.percent),
        )
        return percent, [limit for limit, exceeds in over if exceeds]


class RunStepConfig(_Strict):
    type: RunStepKind
    agent: str
    page_size: int = Field(500, ge=1, le=10_000)
    batch_size: int = Field(100, ge=1, le=9_999)
    #: Stop the step (``stopped-error-limit``) after this many per-object errors.
    error_limit: int = Field(5000, ge=1)
    deletion_threshold: DeletionThreshold | None = None
    #: Full imports returning zero objects into a non-empty connector space stop unless this is set.
    allow_empty_full_import: bool = False
    #: A full import resumes from the last committed page of an interrupted one (when its agent
    #: supports it); false starts every full import from the beginning.
    resume_interrupted: bool = True


class RunProfileConfig(_Strict):
    description: str = ""
    steps: tuple[RunStepConfig, ...] = Field(min_length=1)


class MvsyncConfig(_Strict):
    store: StoreConfig = StoreConfig()
    #: Where agents keep state files (token caches, LDIF output); relative to the config's folder.
    data_dir: str = "mvsync-data"
    metaverse: MetaverseConfig = Field(default_factory=lambda: MetaverseConfig(schema="person"))
    agents: dict[str, AgentConfig] = Field(default_factory=dict)
    run_profiles: dict[str, RunProfileConfig] = Field(default_factory=dict)

    #: Set by the loader: the file this came from (None for configurations built in code).
    path: Path | None = Field(None, exclude=True)
    base_dir: Path = Field(Path("."), exclude=True)

    @field_validator("agents")
    @classmethod
    def _agent_names(cls, agents: dict[str, AgentConfig]) -> dict[str, AgentConfig]:
        for name in agents:
            if not name.replace("-", "").replace("_", "").isalnum():
                msg = f"agent name {name!r} may contain only letters, digits, '-' and '_'"
                raise ValueError(msg)
        _refuse_case_twins(agents)
        return agents

    @model_validator(mode="after")
    def _references(self) -> MvsyncConfig:
        for profile_name, profile in self.run_profiles.items():
            for i, step in enumerate(profile.steps):
                if step.agent not in self.agents:
                    raise ValueError(
                        self._unknown_agent(("run_profiles", profile_name, "steps", i, "agent"), step.agent)
                    )
        for attribute, agents in self.metaverse.precedence.items():
            for agent in agents:
                if agent not in self.agents:
                    raise ValueError(self._unknown_agent(("metaverse", "precedence", attribute), agent))
        return self

    def _unknown_agent(self, loc: tuple[str | int, ...], agent: str) -> str:
        """A reference to an agent that is not configured, naming the key that makes it and the agent it
        resembles (the validator's error has no key of its own: it is about the whole file)."""
        known = ", ".join(self.agents) or "none"
        hint = did_you_mean(agent, self.agents)
        return f"{toml_key('', loc)}: unknown agent {agent!r}{hint} (configured agents: {known})"

    @property
    def resolved_data_dir(self) -> Path:
        return beside_config(self.base_dir, self.data_dir).resolve()

    def store_url(self) -> str:
        """The store URL with a relative SQLite path made relative to the configuration's folder.

        The folder's path goes into a URL, which SQLAlchemy reads up to its first ``?`` and then
        decodes (``%20`` is a space): written as it is, a folder named ``pct%20x`` or ``what?`` put
        the store somewhere else, without a word. So the relative part is read as SQLAlchemy reads
        a URL's path, and the folder's path is escaped where SQLAlchemy would misread it.
        """
        url = self.store.url
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith("sqlite:////") and ":memory:" not in url:
            relative, query = _split_query(url[len(prefix) :])
            return prefix + _url_path((self.base_dir / unquote(relative)).resolve()) + query
        return url


def _split_query(rest: str) -> tuple[str, str]:
    """A URL's path and its query (with its ``?``, or empty), split where SQLAlchemy splits them."""
    path, mark, query = rest.partition("?")
    return path, mark + query


def _url_path(path: Path) -> str:
    """``path`` as a database URL's path: ``%`` and ``?`` escaped, the only two SQLAlchemy reads otherwise."""
    return str(path).replace("%", "%25").replace("?", "%3F")


def _refuse_case_twins(agents: dict[str, AgentConfig]) -> None:
    """Refuse two agents whose names differ only in case (``hr`` and ``HR``).

    Why: an agent's name names its data folder (``data_dir/<agent>``: a token cache) and its run lock
    file, and Windows file names are case-insensitive, so on Windows both agents would share one
    folder and one lock: two tenants' token caches overwriting each other. Refused on every system,
    so that a configuration written on Linux does not break when it moves to a Windows server.
    """
    seen: dict[str, str] = {}
    for name in agents:
        twin = seen.setdefault(name.lower(), name)
        if twin != name:
            first, second = sorted((twin, name))
            msg = (
                f"the agent names {first!r} and {second!r} differ only in case; Windows would give them one "
                "data folder and one lock file: rename one of them"
            )
            raise ValueError(msg)
