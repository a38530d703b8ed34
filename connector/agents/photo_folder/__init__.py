"""The ``photo-folder`` agent: bulk-import photos named by account from a folder; back them up to one."""

from __future__ import annotations

from connector.agents.photo_folder._connector import OBJECT_CLASS, PhotoFolderConnector
from connector.agents.photo_folder._settings import PhotoFolderSettings

__all__ = ["OBJECT_CLASS", "PhotoFolderConnector", "PhotoFolderSettings"]
