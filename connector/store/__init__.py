"""The store: SQLite (embedded default) or PostgreSQL through SQLAlchemy Core."""

from connector.store import tables
from connector.store._agent_state import AgentStateReader, AgentStateRepository
from connector.store._fast import dumps, loads, run_many
from connector.store._faults import (
    StoreBusyError,
    StoreCorruptError,
    StoreError,
    StoreMissingError,
    StoreReadOnlyError,
)
from connector.store._locks import LockHeldError, LockManager
from connector.store._migrations import SCHEMA_VERSION, StoreVersionError
from connector.store._sql import SqlStore
from connector.store._values import (
    BLOB_PREFIX,
    blob_ref,
    decode_value,
    encode_value,
    is_blob_ref,
    normalize_values,
    parse_blob_ref,
)

__all__ = [
    "BLOB_PREFIX",
    "SCHEMA_VERSION",
    "AgentStateReader",
    "AgentStateRepository",
    "LockHeldError",
    "LockManager",
    "SqlStore",
    "StoreBusyError",
    "StoreCorruptError",
    "StoreError",
    "StoreMissingError",
    "StoreReadOnlyError",
    "StoreVersionError",
    "blob_ref",
    "decode_value",
    "dumps",
    "encode_value",
    "is_blob_ref",
    "loads",
    "normalize_values",
    "parse_blob_ref",
    "run_many",
    "tables",
]
