"""The ``active-directory`` agent: Active Directory users over ldap3 (LDAPS or StartTLS).

Import reads users under the configured base DNs (simple-paged full import; DirSync or uSNChanged
delta import with tombstones); export writes attributes of existing users, chiefly
``thumbnailPhoto``, without ever writing a value that is already there, or writes an LDIF change
file instead. See the module docstrings of ``_import``, ``_export`` and ``_connection`` for why it
works the way it does.
"""

from connector.agents.active_directory._connector import ActiveDirectoryConnector
from connector.agents.active_directory._export import ExportStats, classify_result
from connector.agents.active_directory._import import Watermark
from connector.agents.active_directory._schema import PHOTO_MAX_BYTES
from connector.agents.active_directory._settings import ActiveDirectorySettings

__all__ = [
    "PHOTO_MAX_BYTES",
    "ActiveDirectoryConnector",
    "ActiveDirectorySettings",
    "ExportStats",
    "Watermark",
    "classify_result",
]
