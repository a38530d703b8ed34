"""Finding connector and transform implementations by name.

Connectors register under the entry-point group ``mvsync.connectors`` (the built-in ones too, so
they exercise the same path as third-party packages); transforms under ``mvsync.transforms``.
Configuration may also name an implementation directly as ``package.module:Class``, which suits
local, unpackaged connectors (PSMA's "point at a script" workflow).

A program may also register a connector for its own process (``register_connector``): the benchmarks
do so for their synthetic agent, which must not be offered to every installation as an entry point.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from connector.sdk import ConfigurationError, Connector

__all__ = [
    "CONNECTOR_GROUP",
    "TRANSFORM_GROUP",
    "ConnectorInfo",
    "available_connectors",
    "connector_name",
    "load_connector",
    "load_object",
    "register_connector",
]

CONNECTOR_GROUP = "mvsync.connectors"
TRANSFORM_GROUP = "mvsync.transforms"


@dataclass(frozen=True)
class ConnectorInfo:
    name: str
    target: str
    distribution: str
    version: str


#: Connectors registered by the running program, by name (``register_connector``).
_REGISTERED: dict[str, type[Connector[Any]]] = {}


def _entry_points(group: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=group)}


def register_connector(name: str, cls: type[Connector[Any]]) -> None:
    """Make ``name`` an agent ``type`` in this process only, without an installed entry point.

    For connectors that belong to a program rather than to the installation (the benchmarks'
    synthetic agent): ``mvsync connectors list`` does not show them, and a configuration naming them
    works only where the program registered them. An installed entry point keeps its name.
    """
    if name in _entry_points(CONNECTOR_GROUP):
        msg = f"connector name {name!r} is already an installed entry point in {CONNECTOR_GROUP}"
        raise ConfigurationError(msg)
    _REGISTERED[name] = cls


@functools.cache
def connector_name(reference: str) -> str:
    """The registered name of an agent ``type``: ``package.module:Class`` of an installed connector
    becomes its entry-point name, so callers that key on names (the console's labels) see one name
    for one connector however the configuration spells it. Anything else is returned unchanged.
    Cached: the installed entry points do not change under a running process, and the console asks
    for every agent on every page."""
    for name, ep in _entry_points(CONNECTOR_GROUP).items():
        if ep.value == reference:
            return name
    return reference


def available_connectors() -> list[ConnectorInfo]:
    """Every registered connector, with the distribution that provides it."""
    infos = []
    for name, ep in sorted(_entry_points(CONNECTOR_GROUP).items()):
        dist = ep.dist
        infos.append(ConnectorInfo(name, ep.value, dist.name if dist else "?", dist.version if dist else "?"))
    return infos


def load_object(reference: str, group: str) -> Any:
    """Load ``reference``: an entry-point name in ``group``, or ``package.module:attribute``."""
    eps = _entry_points(group)
    if reference in eps:
        return eps[reference].load()
    if ":" in reference:
        module_name, _, attr = reference.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            msg = f"cannot import {module_name!r} for {reference!r}: {exc}"
            raise ConfigurationError(msg) from None
        try:
            obj = module
            for part in attr.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            msg = f"{module_name!r} has no attribute {attr!r}"
            raise ConfigurationError(msg) from None
        return obj
    known = ", ".join(sorted(eps)) or "none"
    msg = f"unknown name {reference!r} (registered in {group}: {known}; or use 'package.module:Name')"
    raise ConfigurationError(msg)


def load_connector(reference: str) -> type[Connector[Any]]:
    """The connector class for an agent ``type`` from the configuration."""
    cls = _REGISTERED.get(reference) or load_object(reference, CONNECTOR_GROUP)
    if not (isinstance(cls, type) and issubclass(cls, Connector)):
        msg = f"{reference!r} does not name a connector.sdk.Connector subclass"
        raise ConfigurationError(msg)
    return cls
