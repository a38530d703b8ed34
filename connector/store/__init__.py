"""The store: SQLite (embedded default) or PostgreSQL through SQLAlchemy Core."""

from connector.store import tables
from connector.store._fast import dumps, loads, run_many
from connector.store._faults import (
    RESTORE_HINT,
    StoreBusyError,
    StoreCorruptError,
    StoreError,
    StoreMissingError,
    StoreReadOnlyError,
)
from connector.store._locks import LockHeldError, LockManager
from connector.store._migrations import (
    DISCONNECTED_PREDICATE,
    ERROR_PREDICATE,
    SCHEMA_VERSION,
    StoreVersionError,
    current_version,
    photo_predicate,
)
from connector.store._people import Person, import_failures, people
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
    "DISCONNECTED_PREDICATE",
    "ERROR_PREDICATE",
    "RESTORE_HINT",
    "SCHEMA_VERSION",
    "LockHeldError",
    "LockManager",
    "Person",
    "SqlStore",
    "StoreBusyError",
    "StoreCorruptError",
    "StoreError",
    "StoreMissingError",
    "StoreReadOnlyError",
    "StoreVersionError",
    "blob_ref",
    "current_version",
    "decode_value",
    "dumps",
    "encode_value",
    "import_failures",
    "is_blob_ref",
    "loads",
    "normalize_values",
    "parse_blob_ref",
    "people",
    "photo_predicate",
    "run_many",
    "tables",
]
