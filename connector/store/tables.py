"""Store tables (SQLAlchemy Core). JSON documents are kept as text: the same on SQLite and PostgreSQL,
and the engine parses them with the C json module, which is faster than driver-level JSON types.

Every change to these definitions needs a migration in ``_migrations.py``.
"""

from __future__ import annotations

import re

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect

metadata = MetaData()


class NulSafeString(TypeDecorator[str]):
    """A string column that may hold NUL characters (encoded values such as ``"\\x00b:<sha>:<size>"``).

    SQLite stores NUL as is; PostgreSQL text cannot hold it at all, so there the value is escaped
    reversibly (``\\`` -> ``\\\\``, NUL -> ``\\0``). Only bound parameters and results of SQLAlchemy
    statements pass through here: a batch statement (``_batch``) must not write such a column.
    """

    impl = String
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None or dialect.name != "postgresql":
            return value
        return value.replace("\\", "\\\\").replace("\x00", "\\0")

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        if value is None or dialect.name != "postgresql" or "\\" not in value:
            return value
        return _UNESCAPE.sub(lambda m: "\x00" if m.group(1) == "0" else m.group(1), value)


_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)

# Integer primary keys that autoincrement on SQLite (INTEGER PRIMARY KEY) and PostgreSQL (BIGSERIAL).
_Id = BigInteger().with_variant(Integer(), "sqlite")

store_meta = Table(
    "store_meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

blob = Table(
    "blob",
    metadata,
    Column("sha256", String(64), primary_key=True),
    Column("size", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
)

agent_state = Table(
    "agent_state",
    metadata,
    Column("agent", String(200), primary_key=True),
    Column("watermark", Text),
    Column("schema_json", Text),
    Column("updated_at", Float),
    #: JSON: where an interrupted full import can resume (migration 3; see engine._import).
    Column("import_checkpoint", Text),
)

#: An agent's own key-value state (ETags, checksums, last probes; migration 5): written by the engine
#: with the import page it belongs to, read back by the connector (``connector.sdk.ImportRun.state``).
#: ``step_id``: the import step that last wrote the key (a full import forgets keys it did not write).
agent_data = Table(
    "agent_data",
    metadata,
    Column("agent", String(200), primary_key=True),
    Column("key", String(400), primary_key=True),
    Column("value", Text, nullable=False),
    Column("step_id", Integer),
)

cs_object = Table(
    "cs_object",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("agent", String(200), nullable=False),
    Column("object_class", String(200), nullable=False),
    Column("anchor", String(1024), nullable=False),
    Column("dn", Text),
    # the last imported (synchronized) state: {attribute: encoded value}; NULL while only a pending add
    Column("hologram", Text),
    # pending import: 'add' | 'update' | 'delete' (NULL: none) and the state it brings
    Column("pending_type", String(16)),
    Column("pending", Text),
    Column("mv_id", _Id),
    Column("joined_at", Float),
    # id of the last full-import step that saw the object (objects not seen become pending deletes)
    Column("seen_step", _Id),
    # pending export: 'add' | 'update' | 'delete' and {attribute: encoded value or null (clear)}
    Column("export_type", String(16)),
    Column("export_changes", Text),
    # exported but not yet confirmed by an import: {attribute: encoded value}
    Column("unconfirmed", Text),
    # what the connected system shows for an exported value it keeps in its own rendering (an attribute
    # ``rendered_by_target``): {attribute: [digest of the value exported, digest of the value shown]}
    Column("renderings", Text),
    Column("export_error", Text),
    Column("import_error", Text),
    Column("sync_error", Text),
    Column("updated_at", Float),
    UniqueConstraint("agent", "anchor", name="uq_cs_agent_anchor"),
)
Index("ix_cs_agent_id", cs_object.c.agent, cs_object.c.id)
# partial indexes: only objects with something pending are indexed, so clearing a pending import
# or export (the common case in a synchronization) removes an entry instead of rewriting one
_pending = cs_object.c.pending_type.is_not(None)
_export = cs_object.c.export_type.is_not(None)
Index("ix_cs_pending", cs_object.c.agent, cs_object.c.id, sqlite_where=_pending, postgresql_where=_pending)
Index("ix_cs_export", cs_object.c.agent, cs_object.c.id, sqlite_where=_export, postgresql_where=_export)
Index("ix_cs_mv", cs_object.c.mv_id)

mv_object = Table(
    "mv_object",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=False),
    Column("object_type", String(200), nullable=False),
    # final attribute values {attribute: encoded value}
    Column("attributes", Text, nullable=False),
    # every agent's contribution {attribute: {agent: encoded value}}, for ranked precedence
    Column("contributions", Text, nullable=False),
    # {attribute: [agent, rule]} of the contribution that won
    Column("lineage", Text, nullable=False),
    Column("display_name", Text),
    # lower-cased name, mail, UPN and account name, for search
    Column("search_text", Text),
    Column("created_at", Float),
    Column("updated_at", Float),
)
Index("ix_mv_display", mv_object.c.display_name)

run_history = Table(
    "run_history",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("profile", String(200), nullable=False),
    Column("status", String(64), nullable=False),
    Column("dry_run", Boolean, nullable=False, default=False),
    Column("started_at", Float, nullable=False),
    Column("ended_at", Float),
    Column("host", String(255)),
    Column("pid", Integer),
    # why a run ended before its first step (a configuration error, a store fault); migration 3
    Column("message", Text),
)

run_step = Table(
    "run_step",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("run_id", _Id, ForeignKey("run_history.id"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("agent", String(200), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("status", String(64), nullable=False),
    Column("started_at", Float, nullable=False),
    Column("ended_at", Float),
    Column("counters", Text, nullable=False, default="{}"),
    Column("message", Text),
)
Index("ix_step_run", run_step.c.run_id)

run_error = Table(
    "run_error",
    metadata,
    Column("id", _Id, primary_key=True, autoincrement=True),
    Column("step_id", _Id, ForeignKey("run_step.id"), nullable=False),
    Column("cs_id", _Id),
    Column("anchor", String(1024)),
    Column("object_class", String(200)),
    Column("stage", String(16), nullable=False),
    Column("error_name", String(200), nullable=False),
    Column("detail", Text),
    Column("severity", String(16), nullable=False, default="error"),
    # who the object is: display name with UPN or account name, when the error was recorded; migration 3
    Column("display", Text),
)
Index("ix_error_step", run_error.c.step_id)

transform_cache = Table(
    "transform_cache",
    metadata,
    Column("transform", String(500), primary_key=True),
    Column("input", NulSafeString(200), primary_key=True),
    Column("output", Text),
)
