"""Shared helpers for the emulator tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from connector.emulator import GraphEmulator
from tests.harness.emulator import app_headers, emulator_http


@dataclass
class Api:
    """A Graph client for tests: base URL, trusted session, app token."""

    emu: GraphEmulator
    http: requests.Session
    headers: dict[str, str]

    @property
    def graph(self) -> str:
        return str(self.emu.info["graph_url"])

    def get(self, path: str, **kw: Any) -> requests.Response:
        headers = {**self.headers, **kw.pop("headers", {})}
        url = path if path.startswith("https://") else self.graph + path
        return self.http.get(url, headers=headers, timeout=10, **kw)

    def request(self, method: str, path: str, **kw: Any) -> requests.Response:
        headers = {**self.headers, **kw.pop("headers", {})}
        return self.http.request(method, self.graph + path, headers=headers, timeout=10, **kw)

    def batch(self, requests_: list[dict[str, Any]]) -> requests.Response:
        return self.request("POST", "/$batch", json={"requests": requests_})

    def user(self, predicate: Any) -> dict[str, Any]:
        return next(u for u in self.emu.admin.users() if predicate(u))


def make_api(emu: GraphEmulator) -> Api:
    return Api(emu, emulator_http(emu), app_headers(emu))


@pytest.fixture
def api(graph_emulator: GraphEmulator) -> Iterator[Api]:
    client = make_api(graph_emulator)
    yield client
    client.http.close()


@pytest.fixture
def session_api(graph_emulator_session: GraphEmulator) -> Iterator[Api]:
    client = make_api(graph_emulator_session)
    yield client
    client.http.close()
