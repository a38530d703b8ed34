"""Photo files on disk: which names count as photos.

Shared by ``mvsync photo convert`` and the ``photo-folder`` agent, which both read folders of
photos; both write with ``connector.files.atomic_write``, whose hidden temporaries these names skip.
"""

from __future__ import annotations

from connector.imaging._formats import PHOTO_EXTENSIONS, has_photo_extension, unread_image_format

__all__ = ["PHOTO_EXTENSIONS", "is_photo_name", "unread_image_name"]


def is_photo_name(name: str) -> bool:
    """A visible file whose extension is an accepted photo format's, in any case (``JDOE.JPG``)."""
    return not name.startswith(".") and has_photo_extension(name)


def unread_image_name(name: str) -> str | None:
    """The format's label when ``name`` is a visible file in an image format that is not read (``jdoe.heic``)."""
    return None if name.startswith(".") else unread_image_format(name)
