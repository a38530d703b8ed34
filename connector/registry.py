"""Finding connector and transform implementations by name.

Connectors register under the entry-point group ``mvsync.connectors`` (the built-in ones too, so
they exercise the same path as third-party packages); transforms under ``mvsync.transforms``.
Configuration may also name an implementation directly as ``package.module:Class``, which suits
local, unpackaged connectors (PSMA's "point at a script" workflow).
"""

from __future__ import annotations

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
    "load_connector",
    "load_object",
]

CONNECTOR_GROUP = "mvsync.connectors"
TRANSFORM_GROUP = "mvsync.transforms"


@dataclass(frozen=True)
class ConnectorInfo:
    name: str
    target: str
    distribution: str
    version: str


def _entry_points(group: str) -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=group)}


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
    cls = load_object(reference, CONNECTOR_GROUP)
    if not (isinstance(cls, type) and issubclass(cls, Connector)):
        msg = f"{reference!r} does not name a connector.sdk.Connector subclass"
        raise ConfigurationError(msg)
    return cls
