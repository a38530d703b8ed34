"""The store: SQLite (embedded default) or PostgreSQL through SQLAlchemy Core.

Code outside this package reads and writes through the repositories (``ConnectorSpace``,
``Metaverse``, ``RunHistory``, ``TransformCache``, ``Blobs``, and ``StoreAudit`` for ``doctor``;
whole blobs through ``SqlStore.put_blobs``/``get_blobs``), each built on the connection of one
transaction (``StoreConnection``, from ``SqlStore.transaction()``/``read()``) and returning typed
rows: it never imports ``tables`` or SQLAlchemy, nor writes SQL. Encoded values are read with the
one decoder, ``decode_value``/``plain_value``. Batched writes are ``BatchInsert``/``BatchUpdate``.
"""

from connector.store import tables
from connector.store._agent_state import AgentStateReader, AgentStateRepository
from connector.store._audit import DanglingLink, DuplicateLink, OrphanExport, StoreAudit
from connector.store._batch import BatchInsert, BatchUpdate
from connector.store._blobs import Blobs
from connector.store._bulk import bulk_insert
from connector.store._connector_space import (
    ConnectorRow,
    ConnectorSpace,
    CsObject,
    CsSearch,
    ExportState,
    ImportRow,
    PendingExportRow,
    SourceObject,
    SyncRow,
)
from connector.store._faults import (
    RESTORE_HINT,
    DamagedDocumentError,
    LockHeldError,
    StoreBusyError,
    StoreCorruptError,
    StoreError,
    StoreMissingError,
    StoreReadOnlyError,
    StoreUnreachableError,
    damaged,
    empty_store,
)
from connector.store._history import ClearedRuns, ErrorRecord, ErrorRow, RunHistory, RunRow, StepRow
from connector.store._json import dumps, loads, loads_object
from connector.store._locks import LockManager
from connector.store._metaverse import Metaverse, MetaverseRow, MvObject
from connector.store._migrations import SCHEMA_VERSION, StoreVersionError, current_version
from connector.store._people import Person, import_failures, people
from connector.store._restore import CheckedBackup, Restored, check_backup, restore_store, sqlite_store_path
from connector.store._sql import BUSY_TIMEOUT_S, ROW_ID_MAX, SqlStore, StoreConnection
from connector.store._transform_cache import TransformCache
from connector.store._values import (
    BLOB_PREFIX,
    BlobRef,
    blob_ref,
    blob_refs,
    decode_value,
    encode_value,
    is_blob_ref,
    normalize_values,
    parse_blob_ref,
    plain_value,
    undecodable,
)

__all__ = [
    "BLOB_PREFIX",
    "BUSY_TIMEOUT_S",
    "RESTORE_HINT",
    "ROW_ID_MAX",
    "SCHEMA_VERSION",
    "AgentStateReader",
    "AgentStateRepository",
    "BatchInsert",
    "BatchUpdate",
    "BlobRef",
    "Blobs",
    "CheckedBackup",
    "ClearedRuns",
    "ConnectorRow",
    "ConnectorSpace",
    "CsObject",
    "CsSearch",
    "DamagedDocumentError",
    "DanglingLink",
    "DuplicateLink",
    "ErrorRecord",
    "ErrorRow",
    "ExportState",
    "ImportRow",
    "LockHeldError",
    "LockManager",
    "Metaverse",
    "MetaverseRow",
    "MvObject",
    "OrphanExport",
    "PendingExportRow",
    "Person",
    "Restored",
    "RunHistory",
    "RunRow",
    "SourceObject",
    "SqlStore",
    "StepRow",
    "StoreAudit",
    "StoreBusyError",
    "StoreConnection",
    "StoreCorruptError",
    "StoreError",
    "StoreMissingError",
    "StoreReadOnlyError",
    "StoreUnreachableError",
    "StoreVersionError",
    "SyncRow",
    "TransformCache",
    "blob_ref",
    "blob_refs",
    "bulk_insert",
    "check_backup",
    "current_version",
    "damaged",
    "decode_value",
    "dumps",
    "empty_store",
    "encode_value",
    "import_failures",
    "is_blob_ref",
    "loads",
    "loads_object",
    "normalize_values",
    "parse_blob_ref",
    "people",
    "plain_value",
    "restore_store",
    "sqlite_store_path",
    "tables",
    "undecodable",
]
