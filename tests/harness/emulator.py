"""Fixtures for the Graph + Entra ID emulator (connector.emulator), served over real HTTPS on loopback.

* ``graph_emulator``: a fresh small tenant (20 users) per test; safe to mutate.
* ``graph_emulator_session``: one 200-user tenant for the session; do not mutate it.
* ``graph_emulator_factory``: ``factory(**EmulatorConfig fields)`` for tests that need other settings.

Helpers: ``emulator_http(emu)`` gives a requests.Session that trusts the emulator's CA (with
``trust_env=False``, because REQUESTS_CA_BUNDLE would override ``verify``), and ``app_headers(emu)``
gives ``Authorization`` headers with an app-only token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from connector.emulator import EmulatorConfig, GraphEmulator

__all__ = [
    "app_headers",
    "emulator_http",
    "graph_emulator",
    "graph_emulator_factory",
    "graph_emulator_session",
]


def emulator_http(emu: GraphEmulator) -> requests.Session:
    """A Session trusting only the emulator's throwaway CA (also usable as MSAL's http_client)."""
    session = requests.Session()
    session.verify = emu.info["ca_cert"]
    session.trust_env = False
    return session


def app_headers(emu: GraphEmulator) -> dict[str, str]:
    return {"Authorization": f"Bearer {emu.admin.issue_app_token()}"}


@pytest.fixture
def graph_emulator_factory() -> Iterator[Callable[..., GraphEmulator]]:
    started: list[GraphEmulator] = []

    def make(**fields: Any) -> GraphEmulator:
        fields.setdefault("users", 20)
        emu = GraphEmulator(EmulatorConfig(**fields)).start()
        started.append(emu)
        return emu

    yield make
    for emu in started:
        emu.stop()


@pytest.fixture
def graph_emulator() -> Iterator[GraphEmulator]:
    with GraphEmulator(EmulatorConfig(users=20, photo_ratio=0.6, seed=7)) as emu:
        yield emu


@pytest.fixture(scope="session")
def graph_emulator_session() -> Iterator[GraphEmulator]:
    with GraphEmulator(EmulatorConfig(users=200, photo_ratio=0.5, seed=1)) as emu:
        yield emu
