"""Per-agent state the engine keeps for an import: the step record and the connector's own key-value state.

Why here: the engine and the agents never write SQL; this small repository is what they see of
two tables. ``agent_state`` holds one row per agent (the delta watermark, the schema, the
checkpoint of an interrupted full import); ``agent_data`` holds the connector's key-value state
(import contract v2's ``StateUpdate``), written in the caller's transaction so that it commits
with the import page it belongs to.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from sqlalchemy import Connection, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite

from connector.store._json import dumps, loads
from connector.store._sql import SqlStore
from connector.store.tables import agent_data, agent_state

__all__ = ["AgentStateReader", "AgentStateRepository"]

#: Keys per statement when reading by key (well below SQLite's bound-parameter limit).
_CHUNK = 500


class AgentStateRepository:
    """One agent's rows in ``agent_state`` and ``agent_data``. Every method runs in ``conn``'s transaction."""

    def __init__(self, agent: str) -> None:
        self.agent = agent

    # -- agent_state: the step record -------------------------------------------------------------
    def save(self, conn: Connection, **values: Any) -> None:
        """Set columns of the agent's ``agent_state`` row (``watermark``, ``schema_json``,
        ``import_checkpoint``, ``updated_at``), creating it on first use."""
        found = conn.execute(select(agent_state.c.agent).where(agent_state.c.agent == self.agent)).first()
        if found:
            conn.execute(update(agent_state).where(agent_state.c.agent == self.agent).values(**values))
        else:
            conn.execute(agent_state.insert().values(agent=self.agent, **values))

    def watermark(self, conn: Connection) -> str | None:
        return conn.execute(select(agent_state.c.watermark).where(agent_state.c.agent == self.agent)).scalar()

    def checkpoint(self, conn: Connection) -> str | None:
        column = agent_state.c.import_checkpoint
        return conn.execute(select(column).where(agent_state.c.agent == self.agent)).scalar()

    # -- agent_data: the connector's key-value state ---------------------------------------------
    def put(self, conn: Connection, values: Mapping[str, Any], step_id: int) -> None:
        """Set keys (a None value deletes the key), stamped with the import step that wrote them."""
        gone = [key for key, value in values.items() if value is None]
        rows = [
            {"agent": self.agent, "key": key, "value": dumps(value), "step_id": step_id}
            for key, value in values.items()
            if value is not None
        ]
        for i in range(0, len(gone), _CHUNK):
            conn.execute(
                delete(agent_data).where(agent_data.c.agent == self.agent, agent_data.c.key.in_(gone[i : i + _CHUNK]))
            )
        if rows:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            statement = dialect.insert(agent_data)
            conn.execute(
                statement.on_conflict_do_update(
                    index_elements=[agent_data.c.agent, agent_data.c.key],
                    set_={"value": statement.excluded.value, "step_id": statement.excluded.step_id},
                ),
                rows,
            )

    def get_many(self, conn: Connection, keys: Iterable[str]) -> dict[str, Any]:
        wanted = list(dict.fromkeys(keys))
        found: dict[str, Any] = {}
        for i in range(0, len(wanted), _CHUNK):
            rows = conn.execute(
                select(agent_data.c.key, agent_data.c.value).where(
                    agent_data.c.agent == self.agent, agent_data.c.key.in_(wanted[i : i + _CHUNK])
                )
            )
            found.update((key, loads(value, "agent_data", (self.agent, key), "value")) for key, value in rows)
        return found

    def scan_after(self, conn: Connection, after: str, limit: int) -> list[tuple[str, Any]]:
        """Up to ``limit`` keys after ``after``, in key order (keyset pages keep memory flat)."""
        rows = conn.execute(
            select(agent_data.c.key, agent_data.c.value)
            .where(agent_data.c.agent == self.agent, agent_data.c.key > after)
            .order_by(agent_data.c.key)
            .limit(limit)
        )
        return [(key, loads(value, "agent_data", (self.agent, key), "value")) for key, value in rows]

    def adopt(self, conn: Connection, from_step: int, to_step: int) -> None:
        """Keys written by an interrupted full import count as written by the step resuming it."""
        conn.execute(
            update(agent_data)
            .where(agent_data.c.agent == self.agent, agent_data.c.step_id == from_step)
            .values(step_id=to_step)
        )

    def forget_unwritten(self, conn: Connection, step_id: int) -> int:
        """Delete the keys a completed full import did not write (objects it no longer saw)."""
        result = conn.execute(
            delete(agent_data).where(
                agent_data.c.agent == self.agent,
                (agent_data.c.step_id != step_id) | agent_data.c.step_id.is_(None),
            )
        )
        return int(result.rowcount or 0)


class AgentStateReader:
    """The connector's view of its committed state (``connector.sdk.StateReader``), read from the
    import's source thread, each call in its own short read transaction."""

    def __init__(self, store: SqlStore, agent: str, chunk: int = 1000) -> None:
        self._store = store
        self._repo = AgentStateRepository(agent)
        self._chunk = chunk

    def _read(self) -> contextlib.AbstractContextManager[Connection]:
        # A dry run has one connection for everything, used by the engine's thread too: a
        # transaction (a savepoint, under the store's lock) keeps the two threads apart.
        return self._store.transaction() if self._store.in_dry_run else self._store.read()

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        with self._read() as conn:
            return self._repo.get_many(conn, keys)

    def scan(self) -> Iterator[tuple[str, Any]]:
        after = ""
        while True:
            with self._read() as conn:
                rows = self._repo.scan_after(conn, after, self._chunk)
            if not rows:
                return
            yield from rows
            after = rows[-1][0]
