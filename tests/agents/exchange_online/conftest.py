"""Fixtures for the Exchange Online agent: an emulated tenant and connectors wired to it."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from connector.agents.exchange_online import ExchangeOnlinePhotosConnector, ExchangeOnlineSettings
from connector.emulator import exo_agent_settings
from connector.engine import Page, import_in_memory
from connector.sdk import AttributeChange, ConnectorContext, CSEntryChange, ImportMode

REAUTH = "mvsync auth login exo -c /etc/mvsync/mvsync.toml"


@pytest.fixture
def cache_key(monkeypatch: pytest.MonkeyPatch) -> str:
    key = Fernet.generate_key().decode()
    monkeypatch.setenv("MVSYNC_TOKEN_CACHE_KEY", key)
    return key


@pytest.fixture
def make_emulator() -> Iterator[Callable[..., Any]]:
    from connector.emulator import EmulatorConfig, GraphEmulator

    started: list[Any] = []

    def make(**options: Any) -> Any:
        options.setdefault("users", 40)
        options.setdefault("seed", 7)
        emu = GraphEmulator(EmulatorConfig(**options))
        emu.start()
        started.append(emu)
        return emu

    yield make
    for emu in started:
        emu.stop()


def settings_for(emu: Any, **overrides: Any) -> ExchangeOnlineSettings:
    """Settings pointing at the emulator; the refresh token passes like a resolved ``{env=..}`` ref."""
    info = emu.info
    values: dict[str, Any] = exo_agent_settings(
        info, refresh_token=info["refresh_token"], backoff_initial_s=0.05, concurrency=16
    )
    values.update(overrides)
    return ExchangeOnlineSettings.model_validate(values)


def make_connector(emu: Any, data_dir: Path, **overrides: Any) -> ExchangeOnlinePhotosConnector:
    context = ConnectorContext(
        agent="exo",
        data_dir=data_dir,
        reauthorize_command=REAUTH,
        export_attributes={"EXOUser": frozenset({"EXOPhoto"})},
    )
    return ExchangeOnlinePhotosConnector(settings_for(emu, **overrides), context)


#: The agent state of each data folder (the engine keeps it in its store; these tests need none).
STATES: dict[Path, dict[str, Any]] = {}


#: The ``Count`` items of each connector's imports (the engine records them in run history).
COUNTS: dict[ExchangeOnlinePhotosConnector, Counter[str]] = {}


def agent_state(connector: ExchangeOnlinePhotosConnector) -> dict[str, Any]:
    return STATES.setdefault(connector.context.data_dir, {})


def counts(connector: ExchangeOnlinePhotosConnector) -> Counter[str]:
    """What ``connector``'s imports counted (``Count`` items), summed over its runs."""
    return COUNTS.setdefault(connector, Counter())


def run_import(
    connector: ExchangeOnlinePhotosConnector,
    mode: ImportMode,
    watermark: str | None = None,
    page_size: int = 25,
    on_page: Callable[[int, Page], None] | None = None,
    resume_from: str | None = None,
) -> tuple[list[CSEntryChange], str | None]:
    """Run one import the way the engine does (``import_in_memory``, the state kept per data folder)."""
    return import_in_memory(
        connector,
        mode,
        agent_state(connector),
        watermark=watermark,
        page_size=page_size,
        on_page=on_page,
        resume_from=resume_from,
        counters=counts(connector),
    )


def imported(
    conn: ExchangeOnlinePhotosConnector, mode: ImportMode = ImportMode.FULL, **options: Any
) -> tuple[list[CSEntryChange], str | None]:
    """Open ``conn``, run one import the way the engine does (``run_import`` options), close it."""
    conn.open()
    try:
        return run_import(conn, mode, **options)
    finally:
        conn.close()


def full_import(emu: Any, data_dir: Path, **overrides: Any) -> tuple[list[CSEntryChange], str | None]:
    """Open a connector on the emulator, run one full import the way the engine does, close it."""
    return imported(make_connector(emu, data_dir, **overrides))


def delete_user_at_photo_probe(monkeypatch: pytest.MonkeyPatch, emu: Any, user_id: str) -> list[tuple[int, str]]:
    """Delete ``user_id`` in the tenant the moment the agent sends that user's photo probe.

    The race "listed, then deleted before the probe" made deterministic: the deletion happens on
    the batch that carries the probe, before it reaches the emulator. Returns the (status, error
    code) the probe got, filled in as the agent runs.
    """
    from connector.agents.exchange_online._graph import GraphClient

    send = GraphClient.batch
    answers: list[tuple[int, str]] = []

    def deleting(client: GraphClient, items: Any, **options: Any) -> Any:
        probes = [i for i, item in enumerate(items) if item.url == f"/users/{user_id}/photo"]
        if probes and not answers:
            emu.admin.delete_user(user_id)
        responses = send(client, items, **options)
        answers.extend((responses[i].status, responses[i].error_code) for i in probes)
        return responses

    monkeypatch.setattr(GraphClient, "batch", deleting)
    return answers


def photo_changes(emu: Any, count: int) -> list[CSEntryChange]:
    """Photo exports (``tests/data/astronaut.jpg``) for the first ``count`` cloud mailboxes, identifiers "0", "1" ..."""
    users = [u["id"] for u in emu.admin.users() if u.get("mail") and u.get("mailbox") == "cloud"][:count]
    jpeg = (Path(__file__).parents[2] / "data" / "astronaut.jpg").read_bytes()
    changes = []
    for number, user in enumerate(users):
        change = CSEntryChange.update("EXOUser", user, [AttributeChange.replace("EXOPhoto", jpeg)])
        change.identifier = str(number)
        changes.append(change)
    return changes


def revoke_sign_in_at_upload(monkeypatch: pytest.MonkeyPatch, emu: Any, upload: int) -> list[str]:
    """An admin revokes the agent's sessions the moment it sends its ``upload``-th photo PUT (1-based).

    "Consent withdrawn mid-export" made deterministic: the refresh tokens are revoked and the access
    token in use dies with them (as Entra's continuous access evaluation does) just before that
    request reaches the emulator, which then answers it 401 and refuses the refresh. Returns the
    users whose PUT was sent, in order, filled in as the agent runs.
    """
    from connector.agents.exchange_online._graph import GraphClient

    send = GraphClient.request
    sent: list[str] = []
    lock = threading.Lock()

    def revoking(client: GraphClient, method: str, url: str, **options: Any) -> Any:
        if method == "PUT" and url.endswith("/photo/$value"):
            with lock:
                sent.append(url.split("/")[1])
                if len(sent) == upload:
                    emu.admin.revoke_refresh_tokens()
                    emu.admin.expire_access_tokens()
        return send(client, method, url, **options)

    monkeypatch.setattr(GraphClient, "request", revoking)
    return sent
