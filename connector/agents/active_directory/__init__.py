"""The ``active-directory`` agent: Active Directory users over ldap3 (LDAPS or StartTLS).

Import reads users under the configured base DNs (simple-paged full import; DirSync or uSNChanged
delta import with tombstones); export writes attributes of existing users, chiefly
``thumbnailPhoto``, without ever writing a value that is already there, or writes an LDIF change
file instead. See the module docstrings of ``_import``, ``_export`` and ``_connection`` for why it
works the way it does.
"""

from connector.agents.active_directory._connector import ActiveDirectoryConnector
from connector.agents.active_directory._export import ExportStats, Operation, classify_result, plan_change
from connector.agents.active_directory._import import Watermark
from connector.agents.active_directory._ldif import LdifWriter, ldif_line, modify_record
from connector.agents.active_directory._schema import ANCHOR, OBJECT_CLASS, PHOTO_MAX_BYTES, build_schema
from connector.agents.active_directory._settings import ActiveDirectorySettings

__all__ = [
    # what a directory stand-in reuses (the demo's LDIF snapshot): the schema, the export planner
    # (scope guard, no-op check, size limit) and the LDIF writer, so it behaves as this agent does
    "ANCHOR",
    "OBJECT_CLASS",
    "PHOTO_MAX_BYTES",
    "ActiveDirectoryConnector",
    "ActiveDirectorySettings",
    "ExportStats",
    "LdifWriter",
    "Operation",
    "Watermark",
    "build_schema",
    "classify_result",
    "ldif_line",
    "modify_record",
    "plan_change",
]
