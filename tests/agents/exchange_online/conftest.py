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
from connector.sdk import AttributeChange, AuthenticationError, ConnectorContext, CSEntryChange, ImportMode

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


def delta_after_full(
    connector: ExchangeOnlinePhotosConnector, between: Callable[[], Any]
) -> tuple[list[CSEntryChange], Any]:
    """A full import, then ``between()`` (the tenant changes, a race armed), then a delta from its
    watermark: the delta's entries and what ``between`` returned. The connector is opened and closed."""
    connector.open()
    try:
        _, watermark = run_import(connector, ImportMode.FULL)
        armed = between()
        delta, _ = run_import(connector, ImportMode.DELTA, watermark)
    finally:
        connector.close()
    return delta, armed


def imported(
    conn: ExchangeOnlinePhotosConnector, mode: ImportMode = ImportMode.FULL, **options: Any
) -> tuple[list[CSEntryChange], str | None]:
    """Open ``conn``, run one import the way the engine does (``run_import`` options), close it."""
    conn.open()
    try:
        return run_import(conn, mode, **options)
    finally:
        conn.close()


def authority_outage_at_open(conn: Any) -> str:
    """The message of the stop that opening ``conn`` must end with: the authority's outage."""
    try:
        with pytest.raises(AuthenticationError) as caught:
            conn.open()
    finally:
        conn.close()
    assert caught.value.status == "stopped-server-down"
    return str(caught.value)


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


def at_photo_upload(monkeypatch: pytest.MonkeyPatch, upload: int, action: Callable[[], object]) -> list[str]:
    """Run ``action`` the moment the agent sends its ``upload``-th photo PUT (1-based), just before that
    request goes to Graph: an event mid-export (a revocation, Ctrl-C) made deterministic.

    Returns the users whose PUT was sent, in order, filled in as the agent runs.
    """
    from connector.agents.exchange_online._graph import GraphClient

    send = GraphClient.request
    sent: list[str] = []
    lock = threading.Lock()

    def watched(client: GraphClient, method: str, url: str, **options: Any) -> Any:
        if method == "PUT" and url.endswith("/photo/$value"):
            with lock:
                sent.append(url.split("/")[1])
                if len(sent) == upload:
                    action()
        return send(client, method, url, **options)

    monkeypatch.setattr(GraphClient, "request", watched)
    return sent


def revoke_sign_in(emu: Any) -> None:
    """An admin revokes the agent's sessions, and the access token in use dies with them (as Entra's
    continuous access evaluation makes it): the next request is answered 401 and the refresh refused."""
    emu.admin.revoke_refresh_tokens()
    emu.admin.expire_access_tokens()


def folder_to_exchange_online(emu: Any, root: Path, people: int, **exo: Any) -> tuple[Path, list[str]]:
    """``root/mvsync.toml``: HR folder photos of ``people`` cloud mailboxes without a photo, flowing to
    their Exchange Online photo (the sample's optional export flow). Profiles: ``stage`` (imports and
    syncs; the exports are then pending) and ``export``. ``exo`` adds agent settings.

    Returns the file and the people's ids. The refresh token is in an owner-only file, as a site keeps it.
    """
    from PIL import Image

    from connector.demo import dump_toml, write_secret

    token = write_secret(root / "secrets" / "refresh-token", emu.info["refresh_token"])
    users = [u for u in emu.admin.users() if u.get("mailbox") == "cloud" and not u["hasPhoto"]][:people]
    assert len(users) == people, "the tenant has too few cloud mailboxes without a photo"
    (root / "hr").mkdir(parents=True)
    for shade, user in enumerate(users):
        Image.new("RGB", (700, 700), (40 + shade * 9 % 200, 90, 160)).save(root / "hr" / f"{user['mailNickname']}.jpg")
    settings = exo_agent_settings(emu.info, refresh_token={"file": str(token)}, backoff_initial_s=0.05, **exo)
    config = {
        "data_dir": "data",
        "store": {"url": "sqlite:///store.db"},
        "metaverse": {"schema": "person"},
        "agents": {
            "exo": {
                "type": "exchange-online-photos",
                "settings": settings,
                "projection": [{"object_class": "EXOUser", "metaverse_type": "person"}],
                "import_flow": [{"object_class": "EXOUser", "cs": "mailNickname", "mv": "accountName"}],
                "export_flow": [
                    {"object_class": "EXOUser", "mv": "photo", "cs": "EXOPhoto", "transform": "hd_photo(size=648)"}
                ],
            },
            "hr": {
                "type": "photo-folder",
                "settings": {"path": "hr"},
                "join": [{"object_class": "photoFile", "match": [{"cs": "accountName", "mv": "accountName"}]}],
                "import_flow": [{"object_class": "photoFile", "cs": "photo", "mv": "photo"}],
            },
        },
        "run_profiles": {
            "stage": {
                "steps": [
                    {"type": "full-import", "agent": "exo"},
                    {"type": "full-import", "agent": "hr"},
                    {"type": "full-sync", "agent": "exo"},
                    {"type": "full-sync", "agent": "hr"},
                ]
            },
            "export": {"steps": [{"type": "export", "agent": "exo"}]},
        },
    }
    path = root / "mvsync.toml"
    path.write_text(dump_toml(config), encoding="utf-8")
    return path, [u["id"] for u in users]
