"""A custom connector's mistakes in the page-pull contract (``import_page``) and in ``export`` stop
its step, or warn, with a message that names the mistake, never a hang or an ``AttributeError`` from
deep in the engine.

Found by writing a deliberately wrong PSMA-style connector: one that always says there is more to
import but returns nothing and no page token ran for ever (a scheduled run that never ends holds the
agent's lock, and every later run stops as locked); one that returned a string as an entry ended
with "AttributeError: 'str' object has no attribute 'anchor'"; an ``export`` that returned None, "TypeError:
'NoneType' object is not iterable"; one whose results carried the anchors, "no result for this change"
for every change, with nothing saying why.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import pytest

from connector.config import ConfigError, config_from_dict
from connector.engine import Engine
from connector.sdk import (
    Attribute,
    Capabilities,
    Connector,
    ConnectorSettings,
    CSEntryChange,
    ExportResult,
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
    capabilities = Capabilities(full_import=True, delta_import=False, export=True)
    requests: ClassVar[list[int]] = []

    def get_schema(self) -> Schema:
        names = ("id", "accountName", "displayName")
        return Schema.of(ObjectClass(name="user", anchor="id", attributes=tuple(Attribute(name=n) for n in names)))

    def export(self, changes: Sequence[CSEntryChange]) -> list[ExportResult]:
        if self.settings.mistake == "export-none":
            return None  # type: ignore[return-value]
        return [ExportResult.success(change.anchor) for change in changes]  # the anchor, not the identifier

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
        if mistake in ("source", "export-none", "export-anchors"):  # three people; the source names them
            names = (lambda i: {"displayName": f"Person {i}"}) if mistake == "source" else (lambda i: {})
            return ImportPage(
                [CSEntryChange.add("user", f"u{i}", {"accountName": f"a{i}", **names(i)}) for i in range(3)]
            )
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
    assert "the pages committed before are kept; report it to the connector's author" in step.message


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


def run_export(tmp_path: Path, mistake: str) -> Any:
    """``src`` projects three people with a display name; ``tgt`` (making ``mistake``) joins and exports it."""
    user = {"object_class": "user"}
    flows = [{**user, "cs": n, "mv": n} for n in ("accountName", "displayName")]
    config = config_from_dict(
        {
            "store": {"url": f"sqlite:///{tmp_path / 'store.db'}"},
            "agents": {
                "src": {
                    "type": f"{__name__}:MistakenConnector",
                    "settings": {"mistake": "source"},
                    "projection": [user],
                    "import_flow": flows,
                },
                "tgt": {
                    "type": f"{__name__}:MistakenConnector",
                    "settings": {"mistake": mistake},
                    "join": [{**user, "match": [{"cs": "accountName", "mv": "accountName"}]}],
                    "export_flow": [{**user, "mv": "displayName", "cs": "displayName"}],
                },
            },
            "run_profiles": {
                "cycle": {
                    "steps": [
                        {"type": "full-import", "agent": "src"},
                        {"type": "full-import", "agent": "tgt"},
                        {"type": "full-sync", "agent": "src"},
                        {"type": "full-sync", "agent": "tgt"},
                        {"type": "export", "agent": "tgt"},
                    ]
                }
            },
        },
        base_dir=tmp_path,
    )
    engine = Engine(config)
    try:
        return engine.run_profile("cycle").steps[-1]
    finally:
        engine.close()


def test_an_export_that_returns_no_list_is_named(tmp_path: Path) -> None:
    step = run_export(tmp_path, "export-none")
    assert step.status == "stopped-connector-exception"
    assert "export returned NoneType, not a list of ExportResult, one per change (connector.sdk)" in step.message


def test_export_results_that_answer_no_change_are_named_and_the_changes_stay_pending(tmp_path: Path) -> None:
    step = run_export(tmp_path, "export-anchors")
    assert step.status == "completed-export-errors" and step.counters["export_retryable"] == 3
    [stray] = [e for e in step.errors if e.error_name == "unknown-export-result"]
    assert stray.severity == "warning"
    assert "returned 3 results for no change of this batch ('u0', 'u1', 'u2')" in stray.detail
    assert "change.identifier" in stray.detail


def test_deprovision_delete_on_an_agent_that_cannot_delete_is_refused_before_any_step(tmp_path: Path) -> None:
    """Found in the AD export pass: ``deprovision = "delete"`` on the AD agent, which only updates
    existing users, staged a delete that every export refused (a per-object error for each person
    deprovisioned, exit 3 on every run). The configuration is now refused up front, naming the key."""
    config = config_from_dict(
        {
            "store": {"url": f"sqlite:///{(tmp_path / 'store.db').as_posix()}"},
            "metaverse": {"schema": "person", "delete_when_disconnected_from": ["hr"]},
            "agents": {
                "ad": {"type": "active-directory", "settings": {}, "deprovision": "delete"},
                "hr": {
                    "type": "tests.engine.memory:MemoryConnector",
                    "settings": {"directory": "x"},
                    "deprovision": "delete",
                },
            },
        },
        base_dir=tmp_path,
    )
    engine = Engine(config)
    try:
        with pytest.raises(ConfigError) as refused:
            engine.validate()
    finally:
        engine.close()
    [problem] = str(refused.value).splitlines()  # the memory agent deletes objects: it may
    assert 'agents.ad.deprovision = "delete", but the active-directory agent does not delete objects' in problem
    assert 'set deprovision = "disconnect"' in problem


def test_a_setting_a_connector_finds_wrong_during_a_step_is_named_as_the_configuration_has_it(
    tmp_path: Path,
) -> None:
    """Found (QA of the Exchange Server and AD agents): a connector names a setting as its settings model
    spells it ("ca_file: /etc/ssl/dc-ca.pem does not exist", the CA file gone at a reconnect), so a
    configuration of several agents left the operator to guess whose. The engine now names it
    ``agents.NAME.settings.KEY``, in the message history records and in the error the CLI prints
    (exit 2), keeping what else the error carries (an export's results)."""
    from connector.sdk import ConfigurationError
    from connector.store import RunHistory
    from tests.engine.conftest import World

    world = World(tmp_path)
    try:
        for i in range(3):
            world.ad["objects"][f"u{i}"] = {"accountName": f"u{i}", "displayName": f"User {i}"}

        def ca_file_gone(page: int) -> None:
            gone = ConfigurationError("/etc/ssl/dc-ca.pem does not exist: restore it", key="ca_file")
            gone.results = ["kept"]  # type: ignore[attr-defined]
            raise gone

        world.ad["during_import"] = ca_file_gone
        with pytest.raises(ConfigurationError) as caught:
            world.run("full-import")
        assert str(caught.value) == "agents.ad.settings.ca_file: /etc/ssl/dc-ca.pem does not exist: restore it"
        assert caught.value.key == "agents.ad.settings.ca_file" and caught.value.results == ["kept"]  # type: ignore[attr-defined]
        with world.engine.store.read() as conn:
            history = RunHistory(conn)
            step = history.steps_of([history.recent_runs(1)[0].id])[0]
        assert step.status == "stopped-configuration" and step.message == str(caught.value)
    finally:
        world.close()
