"""``postgres_server`` / ``postgres_url`` / ``postgres_db``: a real PostgreSQL for store and engine tests.

The server itself is started by ``tests.harness.postgres_server`` (free of pytest, because ``mvsync
bench sync --postgres`` starts it the same way from a source checkout). One throwaway cluster serves
the whole session (``initdb`` + start take about two seconds); each test that writes gets its own
database from ``postgres_db`` (creating one takes ~0.1 s), so tests never see each other's rows or
advisory locks. ``MVSYNC_TEST_POSTGRES_URL`` points the suite at an existing server instead (the
role must be allowed to create databases).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import require_or_skip
from tests.harness.postgres_server import PostgresServer, PostgresUnavailable, start_postgres


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A running server; skips (or fails under MVSYNC_REQUIRE_SERVERS=1) where none can run."""
    try:
        server = start_postgres()
    except PostgresUnavailable as exc:
        require_or_skip(f"PostgreSQL unavailable: {exc}")
        raise  # unreachable: require_or_skip always raises
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of one database shared by the session (for read-mostly tests)."""
    return postgres_server.create_database()


@pytest.fixture
def postgres_db(postgres_server: PostgresServer) -> Iterator[Callable[[], str]]:
    """A factory of fresh databases for one test (each dropped when the test ends)."""
    created: list[str] = []

    def make() -> str:
        url = postgres_server.create_database()
        created.append(url)
        return url

    yield make
    for url in created:
        with contextlib.suppress(Exception):
            postgres_server.drop_database(url)


STORE_BACKENDS = ("sqlite", "postgresql")


@pytest.fixture(params=STORE_BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh, empty store URL on each backend: a SQLite file, or a new PostgreSQL database.

    Tests (and fixtures such as the engine's ``world``) that take it run once per backend; the
    PostgreSQL run skips, or fails in CI, where no server can run.
    """
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('store') / 'store.db'}"
    make: Callable[[], str] = request.getfixturevalue("postgres_db")
    return make()
