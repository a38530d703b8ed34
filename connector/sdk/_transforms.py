"""Named value transforms used by attribute flows (``thumbnail(size=96, max_bytes=10240)``).

A transform is registered under the entry-point group ``mvsync.transforms`` as a *factory*: the
engine calls it once per flow with the keyword parameters written in the configuration and gets
back a function from one value to one value. Transforms must be deterministic (the same input gives
the same output) because the engine caches their results by input checksum, and must raise
``TransformError`` for bad input so the engine can record a per-object error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeAlias

from connector.sdk._changes import Value

__all__ = ["TransformError", "TransformFactory", "TransformFunction"]

TransformFunction: TypeAlias = Callable[[Value | None], Value | None]


class TransformFactory(Protocol):
    def __call__(self, **params: Any) -> TransformFunction: ...


class TransformError(Exception):
    """A value could not be transformed; ``name`` is the per-object error name to record."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"{name}: {detail}")
        self.name = name
        self.detail = detail
