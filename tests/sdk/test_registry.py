"""Connector names: installed entry points, the ``module:Class`` form, and a program's own registrations."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from connector import registry
from connector.bench import generated
from connector.registry import available_connectors, connector_name, load_connector, register_connector
from connector.sdk import ConfigurationError


@pytest.fixture
def clean_registry() -> Iterator[None]:
    """Registrations are process-wide: leave none behind for other tests."""
    saved = dict(registry._REGISTERED)
    yield
    registry._REGISTERED.clear()
    registry._REGISTERED.update(saved)


@pytest.mark.usefixtures("clean_registry")
def test_the_benchmarks_register_their_synthetic_agent_for_their_own_process() -> None:
    registry._REGISTERED.pop(generated.NAME, None)
    with pytest.raises(ConfigurationError, match="unknown name 'generated'"):
        load_connector(generated.NAME)
    generated.register()
    assert load_connector(generated.NAME) is generated.GeneratedConnector
    # a registration is the program's, not the installation's: `mvsync connectors list` does not show it
    assert generated.NAME not in {c.name for c in available_connectors()}
    # the reference form works in any process without registration
    assert load_connector(generated.REFERENCE) is generated.GeneratedConnector


@pytest.mark.usefixtures("clean_registry")
def test_a_registration_cannot_shadow_an_installed_connector() -> None:
    with pytest.raises(ConfigurationError, match="'photo-folder' is already an installed entry point"):
        register_connector("photo-folder", generated.GeneratedConnector)


def test_connector_name_maps_a_reference_to_its_entry_point() -> None:
    assert connector_name("connector.demo:DirectorySnapshotConnector") == "active-directory-snapshot"
    assert connector_name("active-directory") == "active-directory"
    assert connector_name("tests.engine.memory:MemoryConnector") == "tests.engine.memory:MemoryConnector"
