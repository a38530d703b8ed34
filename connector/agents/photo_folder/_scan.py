"""Listing a photo folder and reading its files without ever leaving it.

The scan looks at names and ``lstat`` only; files are read later, and only when needed (new or
changed since the watermark). Symbolic links are never followed: a link could point anywhere on
the machine (``/etc/shadow`` named ``jdoe.jpg``), so a linked photo is an import error, and a
linked folder is skipped. Reads re-check, with ``lstat`` before and after the open, the identity of
the opened file (device and inode) and the resolved path, that the file is still a regular file
inside the folder, since it may have been swapped since the scan. That works the same on Windows,
which has no ``O_NOFOLLOW``.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import unicodedata
from dataclasses import dataclass
from pathlib import Path

from connector.files import windows_path_too_long
from connector.imaging import (
    SMALLER_PHOTO_HINT,
    UnsupportedImageError,
    is_photo_name,
    not_supported_text,
    unread_image_name,
)

log = logging.getLogger("mvsync.agents.photo_folder")

__all__ = ["PhotoFile", "ReadError", "account_key", "display", "read_photo", "scan_folder"]


@dataclass(frozen=True, slots=True)
class PhotoFile:
    """One photo-named entry of the folder. ``problem`` is set when the scan already refuses it."""

    relpath: str
    account: str
    mtime_ns: int
    size: int
    problem: tuple[str, str] | None = None
    #: The file's identity and change time (inode or file index, ``st_ctime_ns``): see ``FileState.stamp``.
    stamp: tuple[int, int] | None = None

    @property
    def key(self) -> str:
        return account_key(self.account)


class ReadError(Exception):
    """A file that cannot be read as a photo; ``name`` is the import error name.

    ``transient``: the failure says nothing about the file's bytes (access denied, a file locked by
    another program, an I/O error of a share, a file gone mid-import), so fixing it changes neither
    its size nor its time: the next import must try the file again, not repeat the error.
    """

    def __init__(self, name: str, detail: str, *, transient: bool = False) -> None:
        super().__init__(f"{name}: {detail}")
        self.name = name
        self.detail = detail
        self.transient = transient


def account_key(account: str) -> str:
    """Accounts are case-insensitive (as sAMAccountName is): ``JDoe.jpg`` and ``jdoe 2.png`` clash."""
    return account.lower()


def display(text: str) -> str:
    """``text`` with control characters and undecodable bytes escaped, safe to show and to store."""
    out = []
    for char in text:
        code = ord(char)
        if 0xDC80 <= code <= 0xDCFF:  # a byte that was not valid UTF-8 (os.fsdecode surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif not char.isprintable() and char != " ":
            out.append(f"\\u{code:04x}" if code > 0xFF else f"\\x{code:02x}")
        else:
            out.append(char)
    return "".join(out)


def parse_account(name: str) -> tuple[str, str | None]:
    """``"JDoe 2024 badge.JPG"`` -> (``"JDoe"``, None); a name that cannot be an account gives a reason.

    The account is the file name up to the first space (or the extension), in Unicode NFC form,
    so a name copied from macOS (NFD) gives the same account as one typed on Windows. Any space
    character ends it: a no-break space pasted from a web page, an IME's full-width one look the same.
    """
    stem = os.path.splitext(name)[0]
    account = unicodedata.normalize("NFC", _up_to_a_space(stem))
    extension = os.path.splitext(name)[1]
    if display(account) != account:
        return display(account) or display(name), (
            "the file name has control characters or invalid bytes; rename it to the account name "
            f"('<account>[ anything]{display(extension)}'). Bytes shown as \\xNN often mean a name written in "
            "another code page (Latin-1, say) than the share's UTF-8"
        )
    if not account:
        return display(name), (
            f"the file name does not start with an account name; name it '<account>[ anything]{display(extension)}', "
            "the account first (sAMAccountName)"
        )
    return account, None


def _up_to_a_space(stem: str) -> str:
    """``stem`` up to its first space character (Unicode's space separators; a tab or a newline is a
    control character, which makes the name an error instead)."""
    return next((stem[:i] for i, char in enumerate(stem) if unicodedata.category(char) == "Zs"), stem)


def scan_folder(root: Path, *, recursive: bool, max_file_bytes: int) -> list[PhotoFile]:
    """Every photo-named entry under ``root`` (sorted by path), with scan-time problems marked."""
    found: list[PhotoFile] = []
    pending = [""]
    while pending:
        relative_dir = pending.pop()
        with os.scandir(root / relative_dir if relative_dir else root) as entries:
            for entry in entries:
                relpath = f"{relative_dir}/{entry.name}" if relative_dir else entry.name
                if recursive and _is_linked_folder(entry):
                    _say_linked_folder(root, relpath)
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if recursive and not _not_hr_folder(entry.name):
                        pending.append(relpath)
                    continue
                unread = unread_image_name(entry.name)
                if not (is_photo_name(entry.name) or unread):
                    continue
                try:
                    found.append(_classify(entry, relpath, max_file_bytes, unread))
                except FileNotFoundError:  # removed since the listing: it is not there, like a file never added
                    continue
                except PermissionError as exc:  # this file's ACL, not the folder's: this person's error
                    found.append(_attributes_refused(entry.name, relpath, exc))
    return sorted(found, key=lambda f: f.relpath)


#: Folders a file server keeps in a share beside HR's (lower case): recycle bins, whose photos HR deleted,
#: and thumbnail caches, whose files are named after the photos they were made from. Read as HR's, a
#: deleted photo would live on and the thumbnails would be a bogus account. Synology: ``#recycle``,
#: ``@eaDir``, ``#snapshot``; QNAP: ``@Recycle``, ``@Recently-Snapshot``; Windows: ``$RECYCLE.BIN``,
#: ``System Volume Information``. Samba's own recycle bin (``.recycle``) is hidden already.
_SERVER_FOLDERS = frozenset(
    {
        "#recycle",
        "#snapshot",
        "@eadir",
        "@recycle",
        "@recently-snapshot",
        "$recycle.bin",
        "system volume information",
    }
)


def _not_hr_folder(name: str) -> bool:
    """A sub-folder a recursive import does not enter: hidden, or one the file server keeps (see above)."""
    return name.startswith(".") or name.lower() in _SERVER_FOLDERS


#: Windows reparse points that lead elsewhere (winnt.h; Python's ``stat`` has them on Windows only):
#: IO_REPARSE_TAG_MOUNT_POINT (a junction) and IO_REPARSE_TAG_SYMLINK.
IO_REPARSE_TAG_MOUNT_POINT = 0xA0000003
_LINK_TAGS = frozenset({IO_REPARSE_TAG_MOUNT_POINT, 0xA000000C})


def _is_linked_folder(entry: os.DirEntry[str]) -> bool:
    """A symbolic link to a folder, or a Windows junction, which Python (before 3.12) reports as a plain
    folder, not a link. Entered, either can lead out of ``path`` (its photos refused one by one as
    outside the folder) or back into it (a junction to a parent recursed until paths grew too long)."""
    if entry.is_symlink():
        return entry.is_dir()
    if not entry.is_dir(follow_symlinks=False):
        return False
    return getattr(entry.stat(follow_symlinks=False), "st_reparse_tag", 0) in _LINK_TAGS  # (0 off Windows)


def _say_linked_folder(root: Path, relpath: str) -> None:
    """A recursive import does not enter a linked folder (it could lead out of ``path``): say so, or
    its photos would be missing without a word (a link made to share an HR export, say)."""
    log.warning(
        "photo folder %s: %s is a symbolic link to a folder (or a junction); links are not followed, so the "
        "photos in it are not read (move them into the folder, or add an agent for the folder it links to)",
        root,
        display(relpath),
    )


def _classify(entry: os.DirEntry[str], relpath: str, max_file_bytes: int, unread: str | None) -> PhotoFile:
    """``entry`` with the problem its name and ``lstat`` already show, if any; ``unread``: the label of the
    image format its extension names when that format is not read (HEIC ...)."""
    info = entry.stat(follow_symlinks=False)
    account, name_problem = parse_account(entry.name)
    shown = display(relpath)
    problem: tuple[str, str] | None = None
    if name_problem:
        problem = ("invalid-file-name", f"{shown}: {name_problem}")
    elif stat.S_ISLNK(info.st_mode):
        problem = (
            "symlink-refused",
            f"{shown} is a symbolic link; links are not followed (copy the photo in)",
        )
    elif not stat.S_ISREG(info.st_mode):
        problem = ("not-a-regular-file", f"{shown} is not a regular file")
    elif unread:
        problem = (UnsupportedImageError.name, f"{shown}: {not_supported_text(unread)}")
    elif info.st_size > max_file_bytes:
        problem = ("file-too-large", _too_large(f"{shown} is {info.st_size:,} bytes,", max_file_bytes))
    return PhotoFile(relpath, account, info.st_mtime_ns, info.st_size, problem, _stamp(info))


def _too_large(what: str, max_file_bytes: int) -> str:
    """A file over ``max_file_bytes``: what HR can do about it, and what the administrator can."""
    return f"{what} over max_file_bytes={max_file_bytes:,}: {SMALLER_PHOTO_HINT}, or raise max_file_bytes"


def _attributes_refused(name: str, relpath: str, exc: PermissionError) -> PhotoFile:
    """A listed file whose attributes the server refuses (on a share, an ACL that denies the service account
    this one file): the person's error, as for a file that cannot be opened, while the folder's other photos
    are read. Its size and time are unknown (0): once readable, the next delta reads it again."""
    account, name_problem = parse_account(name)
    shown = display(relpath)
    problem = ("invalid-file-name", f"{shown}: {name_problem}") if name_problem else _unreadable(shown, exc)
    return PhotoFile(relpath, account, 0, 0, problem)


def _stamp(info: os.stat_result) -> tuple[int, int]:
    """What tells a file replaced by one of the same size and time apart: its inode and change time.

    POSIX: a new file has another inode, a rewrite in place another change time. Windows lists no
    file index (``st_ino`` is 0 from a directory listing; asking for it would open every file, on a
    share a round trip each) and its ``st_ctime`` is the creation time: a file written anew has
    another one, except where the file system's tunnelling keeps it (a name re-created within 15 s).
    """
    return (info.st_ino, info.st_ctime_ns)


def read_photo(root: Path, photo: PhotoFile, max_file_bytes: int) -> tuple[bytes, int, int]:
    """The bytes, mtime_ns and size of ``photo``, refusing links, non-files and escapes from ``root``."""
    path = root / photo.relpath
    shown = display(photo.relpath)
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, os.path.realpath(path)]) != real_root:
        raise ReadError("path-outside-folder", f"{shown} resolves outside the folder {display(str(root))}")
    try:
        before = os.lstat(path)
        if stat.S_ISLNK(before.st_mode):
            raise ReadError("symlink-refused", f"{shown} became a symbolic link; links are not followed")
        if not stat.S_ISREG(before.st_mode):
            raise ReadError("not-a-regular-file", f"{shown} is not a regular file")
        fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        raise _open_error(exc, shown, path) from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        _same_file_or_refuse(path, before, info, shown)
        try:
            data = handle.read(max_file_bytes + 1)
        except OSError as exc:  # a share dropped under the read (EIO, ESTALE), a lock taken meanwhile
            raise _open_error(exc, shown, path) from None
    if len(data) > max_file_bytes:
        raise ReadError("file-too-large", _too_large(f"{shown} is", max_file_bytes))
    return data, info.st_mtime_ns, info.st_size


#: Read-only, binary; where the platform has them, no following a final link, no blocking on a FIFO
#: and no inheriting by children. Windows has none of the three: the ``lstat`` checks around the
#: open in :func:`read_photo` are what refuse a link there (and also on POSIX, a second time).
_READ_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_BINARY", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


def _open_error(exc: OSError, shown: str, path: Path) -> ReadError:
    if exc.errno == errno.ELOOP:
        return ReadError("symlink-refused", f"{shown} became a symbolic link; links are not followed")
    too_long = windows_path_too_long(path) if exc.errno == errno.ENOENT else ""
    if too_long:  # listed, but past MAX_PATH: there, not gone; enabling long paths changes nothing of the file
        return ReadError("path-too-long", f"{shown}: {too_long}", transient=True)
    if exc.errno == errno.ENOENT:
        return ReadError("file-vanished", f"{shown} was removed during the import", transient=True)
    return ReadError(*_unreadable(shown, exc), transient=True)


def _unreadable(shown: str, exc: OSError) -> tuple[str, str]:
    """The error of a file the account mvsync runs as may not read (or that the share fails to give)."""
    return "file-unreadable", f"{shown}: {exc.strerror}"


def _same_file_or_refuse(path: Path, before: os.stat_result, opened: os.stat_result, shown: str) -> None:
    """Refuse a file swapped for a link (or another file) between the ``lstat`` and the open.

    What was opened must be the very file ``lstat`` saw (same device and inode / file index), still
    a regular file, and the name must still not be a link *after* the open: a link put in place
    before the open makes the open reach another file (a different inode), one put in place after
    it shows in the second ``lstat``. Either way the bytes read are not trusted.
    """
    if not stat.S_ISREG(opened.st_mode):
        raise ReadError("not-a-regular-file", f"{shown} is not a regular file")
    try:
        after = os.lstat(path)
    except OSError as exc:
        raise _open_error(exc, shown, path) from None
    same = (before.st_dev, before.st_ino) == (opened.st_dev, opened.st_ino) == (after.st_dev, after.st_ino)
    if stat.S_ISLNK(after.st_mode) or not same:
        raise ReadError("symlink-refused", f"{shown} was replaced during the import; links are not followed")
