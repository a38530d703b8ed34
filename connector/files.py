"""Files the same way on Linux and Windows: text as Windows tools write it; writes atomic and (for
secrets) for the owner only.

Why one module: the token cache, its key, the demo's secret files and the run-lock holder records
all need "readers see the old or the new content, never a mix" and, for secrets, "nobody but the
account that runs mvsync can read it". The POSIX tools for that (``fchmod``, mode ``0600``, an
``fsync`` of the directory) do nothing or fail on Windows, where the equivalent is an ACL that
grants the current account alone; keeping both behind these functions keeps POSIX-only calls out
of the rest of the package (``mypy --platform win32`` and the POSIX-removed test lane check that).

Reading text is here for the same reason: Windows tools write text in several encodings. Windows
PowerShell 5.1's ``>`` and ``Out-File`` write UTF-16 LE with a byte-order mark, ``Set-Content
-Encoding utf8`` writes UTF-8 *with* a BOM, Notepad may write UTF-16 BE. Every text file an admin
hands mvsync (the configuration, a metaverse schema, a mailbox list, a secret) is decoded by
:func:`decode_text`, so they all accept the same encodings and fail with the same advice.
"""

from __future__ import annotations

import codecs
import contextlib
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path, PurePath, PureWindowsPath
from typing import Any, TypeVar

from connector.sdk import wait_event

__all__ = [
    "TEXT_ENCODINGS",
    "CallTimedOut",
    "OwnerOnlyError",
    "TextDecodeError",
    "atomic_write",
    "bounded",
    "decode_text",
    "fsync_dir",
    "make_private_dir",
    "network_location",
    "processes_with_open",
    "read_only_mount",
    "read_text",
    "restrict_to_owner",
    "windows_name_problem",
    "windows_path_too_long",
    "write_private_file",
]

_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
#: What :func:`decode_text` accepts, as advice in its errors.
TEXT_ENCODINGS = "UTF-8 (with or without a BOM) or UTF-16 with a BOM"


class OwnerOnlyError(OSError):
    """A file or folder could not be limited to the current account (the message says which and why)."""


class CallTimedOut(Exception):
    """A call :func:`bounded` stopped waiting for (its thread is left to end by itself)."""


_T = TypeVar("_T")


def bounded(call: Callable[[], _T], timeout_s: float, name: str) -> _T:
    """``call()``, waited for at most ``timeout_s`` seconds, else ``CallTimedOut``; its errors raised here.

    Why: a read on a hard-mounted network share whose server stopped answering blocks in the kernel
    until the server comes back, and no signal or Python call ends it: the run hung with it, for
    ever, without a word. The call runs in a thread of its own (``name``) so the wait can end; that
    thread stays blocked until the share answers and then ends, unheard (a daemon: it never holds
    the process at exit). One thread per call, gone when the call returns: none is kept or pooled.
    """
    done = threading.Event()
    outcome: list[tuple[bool, Any]] = []

    def run() -> None:
        try:
            outcome.append((True, call()))
        except BaseException as exc:  # handed to the caller, who decides
            outcome.append((False, exc))
        finally:
            done.set()

    threading.Thread(target=run, name=name, daemon=True).start()
    if not wait_event(done, timeout_s):
        raise CallTimedOut(name)
    ok, value = outcome[0]
    if not ok:
        raise value
    result: _T = value
    return result


class TextDecodeError(ValueError):
    """Bytes that are not text in an encoding :func:`decode_text` accepts; the message quotes no content."""


def decode_text(data: bytes) -> str:
    """``data`` as text: UTF-8, or the encoding its byte-order mark names (UTF-8, UTF-16 LE or BE).

    The BOM is dropped, so a file saved by Notepad or PowerShell reads like any other. Raises
    :class:`TextDecodeError` saying which byte is wrong and how to save the file; the message never
    contains the text (it may be a secret).
    """
    encoding, body = "utf-8", data
    for bom, name in _BOMS:
        if data.startswith(bom):
            encoding, body = name, data[len(bom) :]
            break
    try:
        text = body.decode(encoding)
    except UnicodeDecodeError as exc:
        line = body[: exc.start].count("\n".encode(encoding)) + 1  # an editor shows lines, not offsets
        where = f"line {line} (byte {exc.start + len(data) - len(body)})"
        raise TextDecodeError(f"{where} is not valid {encoding}; save the file as {TEXT_ENCODINGS}") from None
    if "\x00" in text:  # UTF-16 without a BOM decodes as UTF-8 with a NUL after every ASCII letter
        raise TextDecodeError(f"it contains NUL characters (UTF-16 without a BOM?); save it as {TEXT_ENCODINGS}")
    return text


def read_text(path: Path) -> str:
    """The text of ``path`` (see :func:`decode_text`); ``OSError`` and :class:`TextDecodeError` as they come."""
    return decode_text(path.read_bytes())


def _wait(seconds: float, stopping: threading.Event) -> bool:
    return wait_event(stopping, seconds)


#: How :func:`wait_until_unchanged` waits: True when ``stopping`` was set meanwhile (a name tests can
#: replace: the clock is not theirs to hold).
_sleep: Callable[[float, threading.Event], bool] = _wait


def wait_until_unchanged(
    path: Path, *, quiet_s: float = 2.0, wait_s: float = 60.0, stopping: threading.Event | None = None
) -> bool:
    """Wait until ``path`` has kept its size and modification time for ``quiet_s``; False if it still
    changed after ``wait_s``, or once ``stopping`` is set (the step stops: Ctrl-C ends the wait at once).

    Why: a file another program is still writing (a scheduled ``Get-Mailbox | Out-File`` running late)
    reads short, and a list read short says that what it leaves out is gone. Two looks ``quiet_s``
    apart compare the file with itself, never the file's time with this machine's clock (a share's
    clock may be off by minutes). A file missing for a moment (replaced by a rename) counts as a change.
    """
    stopping = stopping if stopping is not None else threading.Event()
    waited = 0.0
    before = _signature(path)
    while True:
        if _sleep(quiet_s, stopping):
            return False
        waited += quiet_s
        after = _signature(path)
        if after is not None and after == before:
            return True
        if waited >= wait_s:
            return False
        before = after


def _signature(path: Path) -> tuple[int, int] | None:
    """What changes when a file is written: its size and modification time (None: not there now)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_size, stat.st_mtime_ns


#: File systems served over a network (Linux ``/proc/mounts`` names; psutil reports them as they are).
NETWORK_FILE_SYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre", "davfs", "ncpfs", "fuse.sshfs"}
)


def network_location(path: Path) -> str | None:
    """Where ``path`` lies on a network file system (a share, an NFS mount), said for a message; else None.

    Why: SQLite's write-ahead log keeps its index in shared memory that network file systems do not
    provide, and their byte-range locks are unreliable (sqlite.org: "WAL does not work over a network
    filesystem"), so a store on a share can be corrupted. On Windows: a UNC path (``\\\\server\\share``)
    or a drive letter mapped to one (``GetDriveTypeW``); elsewhere the mount that holds the path
    (psutil, from ``/proc/mounts``). Unknown means local: a check that cannot tell must not cry wolf.
    """
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):
        resolved = path
    if sys.platform == "win32":
        return _windows_network_drive(PureWindowsPath(str(path)), PureWindowsPath(str(resolved)))
    try:
        import psutil  # imported here: only SQLite stores ask (its Linux backend needs POSIX modules)

        partitions = psutil.disk_partitions(all=True)
    except (ImportError, OSError):
        return None
    return _network_mount(resolved, partitions)


def _windows_network_drive(*paths: PureWindowsPath) -> str | None:
    """A UNC share among ``paths`` (as given, and resolved: a mapped drive may resolve to one), or a
    drive letter Windows reports as ``DRIVE_REMOTE`` (4)."""
    for candidate in paths:
        if candidate.drive.startswith("\\\\"):
            return f"{candidate.drive} (a network share)"
    drive = paths[0].drive
    if sys.platform == "win32" and len(drive) == 2 and drive.endswith(":"):
        import ctypes

        if ctypes.windll.kernel32.GetDriveTypeW(drive + "\\") == 4:
            return f"{drive} (a drive mapped to a network share)"
    return None


def read_only_mount(path: Path) -> str | None:
    """The file system holding ``path`` when it is mounted read-only, said for a message; else None.

    Why: a folder that cannot be written because its volume is read-only (remounted so after disk
    errors, read-only media, a snapshot) looks like a folder this account has no rights on, and the
    advice for that (give the account write access) cannot help. psutil reads the mount options on
    Linux and Windows alike; unknown means writable: a check that cannot tell must not cry wolf.
    """
    try:
        import psutil  # imported here, as in network_location

        holder = _mount_of(path.resolve(), psutil.disk_partitions(all=True))
    except (ImportError, OSError, RuntimeError):
        return None
    if holder is None or "ro" not in holder.opts.split(","):
        return None
    return f"{holder.device} ({holder.fstype or 'a volume'}) on {holder.mountpoint}"


def _mount_of(path: PurePath, partitions: Iterable[Any]) -> Any | None:
    """The mount (psutil's ``sdiskpart``: device, mountpoint, fstype, opts) that holds ``path``: the
    longest mount point above it. Mount points compare in ``path``'s own flavour (a Windows drive
    ``Z:\\`` case-insensitively)."""
    holder = None
    for part in partitions:
        mount = type(path)(part.mountpoint)
        if (path == mount or mount in path.parents) and (
            holder is None or len(part.mountpoint) > len(holder.mountpoint)
        ):
            holder = part
    return holder


def _network_mount(path: PurePath, partitions: Iterable[Any]) -> str | None:
    """The network mount (psutil's ``sdiskpart``: device, mountpoint, fstype, opts) that holds ``path``."""
    holder = _mount_of(path, partitions)
    if holder is None:
        return None
    # (psutil also marks a Windows drive letter mapped to a share "remote" in its options)
    remote = holder.fstype.lower() in NETWORK_FILE_SYSTEMS or "remote" in holder.opts.split(",")
    return f"{holder.device} ({holder.fstype or 'network drive'}) on {holder.mountpoint}" if remote else None


#: Characters no Windows file name may hold (learn.microsoft.com, "Naming Files, Paths, and Namespaces"),
#: besides the control characters 0-31. ``:`` is not refused by the file system but names a stream:
#: ``a:b.jpg`` on NTFS writes the stream ``b.jpg`` of a file ``a``, and no folder listing shows it.
_WINDOWS_RESERVED_CHARS = '<>:"/\\|?*'
#: Device names that Windows resolves in any folder, in any case, also with an extension (``NUL.txt``);
#: ``COM`` and ``LPT`` with the superscript digits too (the same page).
_WINDOWS_DEVICE_NAMES = frozenset(
    {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"}
    | {f"{port}{digit}" for port in ("COM", "LPT") for digit in "123456789\u00b9\u00b2\u00b3"}
)


def processes_with_open(paths: Iterable[Path], *, most: int = 5) -> list[str]:
    """The other processes of this machine that have one of ``paths`` open, as "NAME (pid N, user U)".

    Why: SQLite never says who holds its database (a lock, a read kept open), and a message that
    names the process (an admin's sqlite3, a backup agent) says what to end. psutil reads it the
    same way on Linux and Windows; processes this account may not inspect are passed over, so the
    list may be short of the truth (another account's, another machine's process on a share).
    """
    import psutil

    wanted = {os.path.normcase(os.path.realpath(p)) for p in paths}
    found: list[str] = []
    for proc in psutil.process_iter(["pid", "name", "username"]):
        if proc.pid == os.getpid():
            continue
        try:
            opened = {os.path.normcase(f.path) for f in proc.open_files()}
        except (psutil.Error, OSError):
            continue
        if opened & wanted:
            found.append(f"{proc.info['name']} (pid {proc.pid}, user {proc.info['username'] or '?'})")
            if len(found) >= most:
                break
    return found


def windows_name_problem(name: str) -> str:
    """Why Windows cannot hold a file named ``name`` (one path component), or "" when it can.

    Why on every system: a name mvsync derives from data (a photo backup named by account) is written
    on Linux to a folder that a Windows server or a restore may read, and on Windows itself a bad name
    fails late and unclearly, or not at all: a ``:`` writes a hidden stream, a device name writes to
    the device. The rules are the documented ones: no reserved character, no control character, no
    trailing dot or space (Windows strips them, so the file gets another name), and no device name
    before the first dot (Windows also ignores spaces there).
    """
    bad = sorted({char for char in name if char in _WINDOWS_RESERVED_CHARS or ord(char) < 32})
    if bad:
        return f"has {', '.join(repr(char) for char in bad)}, which Windows does not allow in a file name"
    if name[-1:] in (".", " "):
        return "ends with a dot or a space, which Windows drops from a file name"
    device = name.partition(".")[0].rstrip(" ").upper()
    if device in _WINDOWS_DEVICE_NAMES:
        return f"starts with {device!r}, a device name Windows reserves (also with an extension)"
    return ""


#: Whether paths are Windows' (a name tests can replace: Windows' limits are worth saying everywhere,
#: but only Windows has them).
_WINDOWS = sys.platform == "win32"
#: Windows' MAX_PATH: the characters of a path, its terminating NUL included, that the file functions
#: take unless long paths are enabled (learn.microsoft.com, "Maximum Path Length Limitation").
WINDOWS_MAX_PATH = 260


def windows_path_too_long(path: Path | str, *, listing: bool = False) -> str:
    """Why Windows may not reach ``path`` (to be read or, with ``listing``, listed): its length; or "".

    Why: without "Enable Win32 long paths", Windows fails a path of MAX_PATH characters or more as if
    nothing were there (``FileNotFoundError``), while the listing of the folder above it shows the
    name; said as it comes, a photo reads as "removed during the import" and a sub-folder as "removed
    or renamed", at every import. A folder is listed as ``folder\\*``, two characters more. Empty off
    Windows, and for a path short enough (a missing one is then missing).
    """
    length = len(os.path.abspath(path))
    if not _WINDOWS or length + (2 if listing else 0) < WINDOWS_MAX_PATH:
        return ""
    return (
        f"its path is {length} characters, and Windows reaches no path of {WINDOWS_MAX_PATH} or more unless long "
        "paths are enabled: shorten the folder or file names, or turn on the Group Policy 'Enable Win32 long "
        "paths' on this server (Computer Configuration > Administrative Templates > System > Filesystem; "
        "registry: LongPathsEnabled = 1 under HKLM\\SYSTEM\\CurrentControlSet\\Control\\FileSystem)"
    )


def atomic_write(
    path: Path, data: bytes, *, private: bool = False, durable: bool = True, mode: int | None = None
) -> None:
    """Write ``data`` so readers see the old or the new file, never a mix (temp file, fsync, ``os.replace``).

    The temporary file is hidden (``.name.xxxx``) and in the same folder, so the rename stays on one
    file system and folder scans that skip hidden files (photo folders) never pick up a partial
    file, even after a crash. It is created 0600 on POSIX (photos and LDIF are personal data too).

    ``private`` limits the temporary file to the owner *before* the data goes in, so a secret is
    never readable by others, not even for a moment. ``durable`` flushes the data, and on POSIX the
    directory after the rename, so the new content survives a power cut (Windows cannot open a
    directory for that; NTFS journals the rename itself); records that only matter while a process
    lives (a lock's holder) skip it. ``mode`` is given to the temporary file before the rename, so a
    file another account must read (a metrics textfile) is readable from the moment it appears.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp: 0600 on POSIX
    try:
        with os.fdopen(fd, "wb") as fh:
            if private:
                restrict_to_owner(Path(tmp))
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        _replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(path.parent)


#: Windows' answers to a rename over a file another program has open without ``FILE_SHARE_DELETE``:
#: ERROR_ACCESS_DENIED and ERROR_SHARING_VIOLATION (``PermissionError`` with that ``winerror``).
_HELD_OPEN_WINERRORS = frozenset({5, 32})
#: The pauses between tries of such a rename (1.6 s in all): an antivirus scan of the file just
#: written, a backup agent or a metrics collector reading it holds it for milliseconds.
_HELD_OPEN_PAUSES_S = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)


def _replace(tmp: str, path: Path) -> None:
    """``os.replace(tmp, path)``, tried again while Windows says another program has ``path`` open.

    Why: POSIX renames over an open file; Windows refuses while any other process has it open (Python's
    own ``open`` included), so the write failed for a moment's hold: a token cache not saved stopped
    the run, a person's photo backup failed. A hold that outlasts the tries is said as such, under the
    target's name. Other errors (a real access denial on POSIX, a full disk) are raised at once.
    """
    for pause in (*_HELD_OPEN_PAUSES_S, None):
        try:
            os.replace(tmp, path)
            return
        except PermissionError as exc:
            if getattr(exc, "winerror", None) not in _HELD_OPEN_WINERRORS:
                raise
            if pause is None:
                waited = sum(_HELD_OPEN_PAUSES_S)
                why = (
                    f"{exc.strerror}: another program has it open (an antivirus scan, a backup, a metrics "
                    f"collector, a viewer?); tried again for {waited:.1f} s"
                )
                raise PermissionError(exc.errno, why, str(path)) from None
            time.sleep(pause)


def write_private_file(path: Path, data: bytes, *, exclusive: bool = False) -> None:
    """Create (or, unless ``exclusive``, replace) a secret file readable by its owner only.

    ``exclusive`` refuses to overwrite an existing file (``FileExistsError``), for keys that must
    never be replaced behind the back of the cache they protect: the file is created with
    ``O_EXCL`` and limited to the owner while still empty, before the secret goes in.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    if not exclusive:
        atomic_write(path, data, private=True)
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o600)
    with os.fdopen(fd, "wb") as fh:
        restrict_to_owner(path)
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) and limit it to the owner, so files created inside inherit that."""
    path.mkdir(parents=True, exist_ok=True)
    restrict_to_owner(path)


def restrict_to_owner(path: Path) -> None:
    """Limit ``path`` to the current account: mode 0600/0700 on POSIX, an owner-only ACL on Windows.

    On Windows ``chmod`` only toggles the read-only flag, so the ACL is replaced with ``icacls``
    (shipped with every Windows Server): inheritance removed, full control for the current account's
    SID alone, inherited by files created later when ``path`` is a folder. This is what keeps a
    secret under ``%ProgramData%`` (readable by all users by default) to the service account.
    """
    if sys.platform == "win32":
        _restrict_windows(path)
    else:
        path.chmod(0o700 if path.is_dir() else 0o600)


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` survive a power cut (POSIX; Windows cannot open a folder, and NTFS
    journals the rename itself)."""
    if sys.platform == "win32":
        return
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _restrict_windows(path: Path) -> None:
    grant = f"*{_current_sid()}:(OI)(CI)F" if path.is_dir() else f"*{_current_sid()}:F"
    _run_tool(["icacls", str(path), "/inheritance:r", "/grant:r", grant, "/q"], path)


def _current_sid() -> str:
    """The SID of the account running mvsync (a gMSA or service account under Task Scheduler)."""
    out = _run_tool(["whoami", "/user", "/fo", "csv", "/nh"], None)
    # one CSV line: "DOMAIN\account","S-1-5-21-..."
    sid = out.strip().rsplit(",", 1)[-1].strip().strip('"')
    if not sid.startswith("S-1-"):
        raise OwnerOnlyError(f"cannot tell the current account's SID from `whoami /user`: {out.strip()!r}")
    return sid


def _run_tool(argv: list[str], path: Path | None) -> str:
    target = f" on {path}" if path is not None else ""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OwnerOnlyError(f"cannot run {argv[0]}{target}: {exc}") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()
        msg = f"{argv[0]} failed{target} (exit {done.returncode}): {detail}; the file is not limited to its owner"
        raise OwnerOnlyError(msg)
    return done.stdout
