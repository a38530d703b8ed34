"""A custom connector's mistakes in the page-pull contract (``import_page``) stop its step with a
message that names the mistake, never a hang or an ``AttributeError`` from deep in the engine.

Found by writing a deliberately wrong PSMA-style connector: one that always says there is more to
import but returns nothing and no page token ran for ever (a scheduled run that never ends holds the
agent's lock, and every later run stops as locked); one that returned a string as an entry ended
with "AttributeError: 'str' object has no attribute 'anchor'".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest

from connector.config import config_from_dict
from connector.engine import Engine
from connector.sdk import (
    Attribute,
    Capabilities,
    Connector,
    ConnectorSettings,
    CSEntryChange,
    ImportPage,
    ImportRequest,
    ObjectClass,
    Schema,
)


class MistakeSettings(ConnectorSettings):
    mistake: str


class MistakenConnector(Connector[MistakeSettings]):
    """Returns the page its ``mistake`` setting names; ``requests`` counts the pages asked for."""

    settings_model: ClassVar[type[ConnectorSettings]] = MistakeSettings
    capabilities = Capabilities(full_import=True, delta_import=False, export=False)
    requests: ClassVar[list[int]] = []

    def get_schema(self) -> Schema:
        return Schema.of(ObjectClass(name="user", anchor="id", attributes=(Attribute(name="id"),)))

    def import_page(self, request: ImportRequest) -> ImportPage:
        self.requests.append(request.page_number)
        mistake = self.settings.mistake
        if mistake == "more-for-ever":
            return ImportPage([], more_to_import=True)
        if mistake == "same-token":
            return ImportPage([], more_to_import=True, page_token="page-2")
        if mistake == "filtered":  # a long stretch left out by its own filter, then the last page
            done = request.page_number >= 30
            return ImportPage([CSEntryChange.add("user", "u1", {})] if done else [], more_to_import=not done)
        if mistake == "not-an-entry":
            return ImportPage(["u1"], more_to_import=False)  # type: ignore[list-item]
        return "no page"  # type: ignore[return-value]


def run(tmp_path: Path, mistake: str) -> Any:
    config = config_from_dict(
        {
            "store": {"url": f"sqlite:///{tmp_path / 'store.db'}"},
            "agents": {"c": {"type": f"{__name__}:MistakenConnector", "settings": {"mistake": mistake}}},
            "run_profiles": {"imp": {"steps": [{"type": "full-import", "agent": "c"}]}},
        },
        base_dir=tmp_path,
    )
    MistakenConnector.requests.clear()
    engine = Engine(config)
    try:
        return engine.run_profile("imp").steps[0]
    finally:
        engine.close()


def test_more_to_import_for_ever_without_a_page_token_stops_as_a_paging_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("connector.engine._import.EMPTY_PAGES_MAX", 25)
    step = run(tmp_path, "more-for-ever")
    assert step.status == "stopped-connector-error"
    assert "25 empty pages in a row with more to import and no page token (paging loop)" in step.message
    assert len(MistakenConnector.requests) == 25


def test_a_long_stretch_of_empty_pages_below_the_limit_is_not_a_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("connector.engine._import.EMPTY_PAGES_MAX", 30)
    step = run(tmp_path, "filtered")
    assert step.status == "success" and step.counters["adds"] == 1


def test_the_same_page_token_twice_with_nothing_stops_as_before(tmp_path: Path) -> None:
    step = run(tmp_path, "same-token")
    assert step.status == "stopped-connector-error"
    assert "returned the same page token 'page-2' twice with no entries (paging loop)" in step.message


@pytest.mark.parametrize(
    ("mistake", "says"),
    [
        ("not-an-entry", "import_page returned str 'u1' as an entry, not a CSEntryChange (connector.sdk)"),
        ("no-page", "import_page returned str, not an ImportPage (connector.sdk)"),
    ],
)
def test_something_else_than_a_page_of_entries_is_named(tmp_path: Path, mistake: str, says: str) -> None:
    step = run(tmp_path, mistake)
    assert step.status == "stopped-connector-exception"
    assert says in step.message
