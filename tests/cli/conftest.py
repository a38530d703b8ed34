"""Fixtures the CLI tests share."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.engine.memory import DIRECTORIES, directory


@pytest.fixture
def mem() -> Iterator[dict[str, Any]]:
    """An in-memory directory for agents of type ``tests.engine.memory:MemoryConnector`` (the CLI
    runs in this process); its name replaces ``DIRECTORY`` in ``with_directory``'s configuration."""
    name = f"cli-{uuid.uuid4().hex[:8]}"
    yield directory(name)
    DIRECTORIES.pop(name, None)
