"""The ``photo-folder`` agent: a folder of ``<account>[ <anything>].<ext>`` photos as a connected directory.

Import reads the folder (full, or delta against the watermark: only new and changed files are
read); export writes metaverse photos into ``export_path`` as ``<account> 648x648.jpg``, a backup
that this agent can import again. Everything that is wrong with one file (duplicates for one
account, links, broken images, odd names) is a per-object error, never a stopped run.
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import os
import unicodedata
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar, TypeVar

from connector.agents.photo_folder._names import BackupNames
from connector.agents.photo_folder._scan import (
    PhotoFile,
    ReadError,
    display,
    read_photo,
    scan_folder,
)
from connector.agents.photo_folder._settings import PhotoFolderSettings
from connector.agents.photo_folder._watermark import AccountState, FileState, FolderState, Limits
from connector.files import (
    CallTimedOut,
    atomic_write,
    bounded,
    network_location,
    windows_name_problem,
    windows_path_too_long,
)
from connector.imaging import (
    EXCHANGE_PHOTO_MAX_BYTES,
    EmptyImageError,
    ImageError,
    InputLimits,
    PhotoSpec,
    is_photo_name,
    normalize,
    probe,
    unread_image_name,
    verify,
)
from connector.sdk import (
    Attribute,
    AttributeAccess,
    AttributeModificationType,
    AttributeType,
    Capabilities,
    CheckResult,
    ConfigurationError,
    Connector,
    CSEntryChange,
    DeltaWatermark,
    ExportResult,
    HashedBytes,
    ImportItem,
    ImportMode,
    ImportRun,
    ObjectClass,
    ObjectModificationType,
    Schema,
    ScopeViolationError,
    StateReader,
    StateUpdate,
    StopRunError,
    Values,
)

__all__ = ["OBJECT_CLASS", "PhotoFolderConnector"]

OBJECT_CLASS = "photoFile"
ANCHOR = "accountName"
PHOTO = "photo"
#: A full disk or an exhausted quota (Windows' ERROR_DISK_FULL arrives as ENOSPC too).
_DISK_FULL = frozenset(code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None)) if code is not None)

_SCHEMA = Schema.of(
    ObjectClass(
        name=OBJECT_CLASS,
        anchor=ANCHOR,
        attributes=(
            Attribute(name=ANCHOR, description="The file name up to the first space."),
            Attribute(name=PHOTO, type=AttributeType.BINARY, description="The file's bytes, unchanged."),
            Attribute(name="photoChecksum", access=AttributeAccess.IMPORT_ONLY, description="sha256, hex."),
            Attribute(name="path", access=AttributeAccess.IMPORT_ONLY, description="Relative to the folder."),
            Attribute(name="modified", type=AttributeType.DATETIME, access=AttributeAccess.IMPORT_ONLY),
        ),
    )
)

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class _Error:
    anchor: str
    name: str
    detail: str


@dataclass(frozen=True, slots=True)
class _Read:
    """A file to read: emitted as an add/replace unless its content turns out unchanged."""

    file: PhotoFile
    previous: AccountState | None


@dataclass(frozen=True, slots=True)
class _Delete:
    """The account's object under ``anchor`` goes. ``renamed``: the account key, when ``anchor`` is the old
    spelling of an account whose file was renamed in case; it goes only if the new file was read."""

    anchor: str
    renamed: str | None = None


_Item = _Error | _Read | _Delete


@dataclass(slots=True)
class _Plan:
    """One import step: the work items (in anchor order) and the watermark being built."""

    items: list[_Item]
    state: FolderState
    delta: bool
    #: The spelling of each account the engine held before this import (account key -> anchor).
    held: dict[str, str]


class PhotoFolderConnector(Connector[PhotoFolderSettings]):
    """Photos in a folder, one file per account."""

    settings_model: ClassVar[type[PhotoFolderSettings]] = PhotoFolderSettings
    capabilities: ClassVar[Capabilities] = Capabilities(full_import=True, delta_import=True, export=True)
    description: ClassVar[str] = "A folder of photo files named after accounts (bulk import, backup export)."

    #: Its schema is the same for every configuration: ``mvsync schema`` reads no setting.
    schema_settings: ClassVar[tuple[str, ...] | None] = ()

    @classmethod
    def schema_for(cls, settings: Mapping[str, Any]) -> Schema:
        return _SCHEMA

    def get_schema(self) -> Schema:
        return _SCHEMA

    def check(self) -> CheckResult:
        folder = self.settings.path
        if not folder.is_dir():
            return CheckResult(False, f"path: {folder} is not a folder")
        if not os.access(folder, os.R_OK | os.X_OK):
            return CheckResult(False, f"path: {folder} is not readable")
        export = self.settings.export_path
        if export is not None and not (export.is_dir() and os.access(export, os.W_OK | os.X_OK)):
            return CheckResult(False, f"export_path: {export} is not a writable folder")
        return _contents_check(folder, recursive=self.settings.recursive)

    # -- import ------------------------------------------------------------------------------
    def import_changes(self, run: ImportRun) -> Iterator[ImportItem]:
        """Import contract v2: the planned accounts in anchor order, then the folder state as watermark.

        The watermark is the whole folder state (small: names, sizes, times and hashes). The agent's
        state holds one key, the spelling of each account the engine is left holding (``_ANCHORS``),
        for full imports, which are given no watermark (see ``_held_spellings``).
        """
        plan = self._make_plan(run.mode, run.watermark, run.state)
        for item in plan.items:
            entry = self._run(item, plan)
            if entry is not None:
                yield entry
        anchors = {key: account.anchor for key, account in sorted(plan.state.accounts.items())}
        if not plan.delta or anchors != plan.held:  # (a full import forgets the state keys it does not write)
            yield StateUpdate(_ANCHORS, anchors)
        yield DeltaWatermark(plan.state.dumps())  # complete only after the last entry

    def _limits(self) -> Limits:
        """The settings a file's import error may depend on besides its bytes (see ``FolderState.limits``)."""
        return self.settings.max_file_bytes, self.settings.max_pixels, self.settings.verify_images

    def _bounded(self, call: Callable[[], _T], what: str) -> _T:
        """``call()`` (a listing or a read of ``what``), stopping the import if it takes past
        ``read_timeout_s``: see :func:`connector.files.bounded` for why, and :func:`_hung` for what it says."""
        try:
            return bounded(call, self.settings.read_timeout_s, f"mvsync photo-folder read: {what}")
        except CallTimedOut:
            raise _hung(self.settings.path, what, self.settings.read_timeout_s) from None

    def _folder(self) -> Path:
        folder = self.settings.path
        if not self._bounded(folder.is_dir, str(folder)):
            msg = f"{folder} is not a folder (or cannot be read)"
            raise ConfigurationError(msg, key="path")
        return folder

    def _make_plan(self, mode: ImportMode, watermark: str | None, state: StateReader) -> _Plan:
        folder = self._folder()
        real = os.path.realpath(folder)
        delta = mode == ImportMode.DELTA and watermark is not None
        old = (
            FolderState.loads(watermark, folder=real, recursive=self.settings.recursive)
            if delta and watermark is not None
            else FolderState(real, self.settings.recursive, accounts=_held_spellings(state), limits=self._limits())
        )
        try:
            files = self._bounded(
                lambda: scan_folder(
                    folder, recursive=self.settings.recursive, max_file_bytes=self.settings.max_file_bytes
                ),
                f"the listing of {folder}",
            )
        except OSError as exc:
            raise _unlisted(folder, exc) from None
        if delta and not files and old.accounts:
            raise _emptied(folder, len(old.accounts), self.context.agent)
        emptied = _emptied_sub_folders(folder, old, files) if delta and self.settings.recursive else {}
        if emptied:
            raise _sub_folders_emptied(folder, emptied)
        groups: dict[str, list[PhotoFile]] = {}
        for file in files:
            groups.setdefault(file.key, []).append(file)

        new = FolderState(real, self.settings.recursive, limits=self._limits())
        items: list[tuple[str, _Item]] = []
        for key, files_named in groups.items():
            group = _unread_formats_set_aside(files_named)
            previous = old.accounts.get(key)
            item = self._plan_account(group, previous, old, new)
            if item is not None:
                items.append((key, item))
            if isinstance(item, _Error) and previous is None:
                items.extend((key, other) for other in _under_other_spellings(item, group))
            if isinstance(item, _Read) and previous is not None and previous.anchor != item.file.account:
                items.append((key, _Delete(previous.anchor, renamed=key)))  # renamed in case only: a new anchor
            if previous is not None and key not in new.accounts and not isinstance(item, _Read):
                new.accounts[key] = previous  # an error keeps the object the engine already holds
            elif previous is None and not delta and isinstance(item, _Error) and len(group) == 1:
                new.accounts[key] = _held_unread(group[0])
        if delta:
            items.extend((key, _Delete(gone.anchor)) for key, gone in old.accounts.items() if key not in groups)
        items.sort(key=lambda pair: (pair[0], isinstance(pair[1], _Delete)))
        held = {key: account.anchor for key, account in old.accounts.items()}
        return _Plan([item for _, item in items], new, delta, held)

    def _plan_account(
        self, group: list[PhotoFile], previous: AccountState | None, old: FolderState, new: FolderState
    ) -> _Item | None:
        """Decide, from names and stat data only, what one account needs. Records carried-over state.

        Errors go to the anchor the engine already holds for the account, if any, so they attach to
        that object instead of creating a new, differently cased one.
        """
        anchor = previous.anchor if previous is not None else group[0].account
        if len(group) > 1:
            for file in group:
                new.files[file.relpath] = FileState(file.mtime_ns, file.size, stamp=file.stamp)
            names = ", ".join(_shown_apart(f.relpath) for f in group)
            detail = f"{len(group)} files are named for account {display(group[0].account)!r}: {names}; keep one"
            return _Error(anchor, "duplicate-account", detail)
        file = group[0]
        if file.problem:
            new.files[file.relpath] = FileState(file.mtime_ns, file.size, error=file.problem, stamp=file.stamp)
            return _Error(anchor, *file.problem)
        before = old.files.get(file.relpath)
        if before is None or _changed(before, file):
            return _Read(file, previous)
        before = replace(before, stamp=file.stamp)  # the same (or first kept, from an older watermark)
        if before.error is not None and old.limits != new.limits:
            return _Read(file, previous)  # judged under other limits (one raised since): judged again
        if before.error is not None:  # unchanged broken file: report again without reading it
            new.files[file.relpath] = before
            return _Error(anchor, *before.error)
        if previous is None or previous != AccountState(file.account, file.relpath, before.sha256 or ""):
            return _Read(file, previous)
        new.files[file.relpath] = before  # unchanged: not even opened
        new.accounts[file.key] = previous
        return None

    def _run(self, item: _Item, plan: _Plan) -> CSEntryChange | None:
        if isinstance(item, _Delete):
            return _delete(item, plan)
        if isinstance(item, _Error):
            return CSEntryChange.import_error(item.anchor, item.name, item.detail, object_class=OBJECT_CLASS)
        file, previous = item.file, item.previous
        try:
            data, mtime_ns, size = self._bounded(
                lambda: read_photo(self.settings.path, file, self.settings.max_file_bytes), display(file.relpath)
            )
            if self.settings.verify_images:
                verify(data, InputLimits(self.settings.max_file_bytes, self.settings.max_pixels))
            elif not data:  # never a photo, and free to tell (a copy not yet written, a failed export)
                raise EmptyImageError("the file is empty (0 bytes)")
        except (ReadError, ImageError) as exc:
            detail = f"{display(file.relpath)}: {exc.detail}" if isinstance(exc, ImageError) else exc.detail
            if not (isinstance(exc, ReadError) and exc.transient):  # a transient failure is not remembered:
                # the next import reads the file again (a fixed permission changes neither size nor time)
                plan.state.files[file.relpath] = FileState(
                    file.mtime_ns, file.size, error=(exc.name, detail), stamp=file.stamp
                )
            if previous is not None:
                plan.state.accounts[file.key] = previous
            elif not plan.delta:
                plan.state.accounts[file.key] = _held_unread(file)
            anchor = previous.anchor if previous is not None else file.account
            return CSEntryChange.import_error(anchor, exc.name, detail, object_class=OBJECT_CLASS)
        checksum = hashlib.sha256(data).hexdigest()
        plan.state.files[file.relpath] = FileState(mtime_ns, size, checksum, stamp=file.stamp)
        current = AccountState(file.account, file.relpath, checksum)
        plan.state.accounts[file.key] = current
        if plan.delta and previous == current:
            return None  # touched, not changed: nothing to tell the engine
        attributes: dict[str, Values] = {
            ANCHOR: file.account,
            PHOTO: HashedBytes(data, checksum),  # hashed once: the store addresses the blob by it
            "photoChecksum": checksum,
            "path": file.relpath,
            "modified": dt.datetime.fromtimestamp(mtime_ns / 1e9, tz=dt.UTC),
        }
        # the DN is the file's path in the folder: what an error about the photo names as its source
        if previous is None:
            return CSEntryChange.add(OBJECT_CLASS, file.account, attributes, dn=file.relpath)
        return CSEntryChange.replace(OBJECT_CLASS, file.account, attributes, dn=file.relpath)

    # -- export ------------------------------------------------------------------------------
    def export(self, changes: Sequence[CSEntryChange]) -> list[ExportResult]:
        """Write (or remove) ``<account> <size>x<size>.jpg`` in ``export_path``, one result per change."""
        target = self.settings.export_path
        if target is None:
            msg = "export needs a folder to write to; set export_path"
            raise ConfigurationError(msg, key="export_path")
        self._check_scope(changes)  # before any write: a scope violation must not half-apply a batch
        if not self.context.dry_run:
            try:
                target.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # a file in the way, no right to create it, a share not mounted
                reason = exc.strerror or exc
                msg = f"cannot create the export folder {target} ({reason}): check export_path and what is in its way"
                raise ConfigurationError(msg, key="export_path") from None
        try:
            names = BackupNames(target)
        except OSError as exc:  # a file in its place, no right to list it
            msg = f"cannot list the export folder {target} ({exc.strerror or exc}): check export_path and its rights"
            raise ConfigurationError(msg, key="export_path") from None
        results: list[ExportResult] = []
        for change in changes:
            try:
                results.append(self._export_one(names, change))
            except StopRunError as exc:  # a full disk: the photos written before it are recorded as exported
                exc.results = results
                raise
        return results

    def _check_scope(self, changes: Sequence[CSEntryChange]) -> None:
        scopes = self.context.export_attributes
        if not scopes:
            return  # no flows were described to us: the schema alone limits exports to the photo
        allowed = next((v for k, v in scopes.items() if k.lower() == OBJECT_CLASS.lower()), frozenset())
        for change in changes:
            touched = (
                {PHOTO}
                if change.modification == ObjectModificationType.DELETE
                else set(change.changed_attribute_names())
            )
            outside = sorted(touched - allowed - {ANCHOR})
            if outside:
                msg = (
                    f"export of {change.anchor!r} would modify {', '.join(outside)}, which no export flow of "
                    f"{OBJECT_CLASS} names (allowed: {', '.join(sorted(allowed)) or 'nothing'})"
                )
                raise ScopeViolationError(msg)

    def _export_one(self, names: BackupNames, change: CSEntryChange) -> ExportResult:
        ident = change.identifier
        if change.object_class and change.object_class.lower() != OBJECT_CLASS.lower():
            return ExportResult.failed(ident, "invalid-objecttype", f"only {OBJECT_CLASS} objects are exported")
        size = self.settings.export_size
        name = f"{change.anchor} {size}x{size}.jpg"
        problem = _file_name_problem(change.anchor, name)
        if problem:
            return ExportResult.failed(ident, "invalid-anchor", f"{display(change.anchor)!r} {problem}")
        path = names.folder / name
        touched, photo, extra = _photo_of(change)
        if extra:
            return ExportResult.failed(ident, "attribute-not-exportable", f"cannot export {', '.join(extra)}")
        if not touched:  # an update that does not name the photo leaves the backup as it is
            return ExportResult.success(ident)
        held = names.clash(name)
        if held is not None and photo is not None:
            return ExportResult.retry(ident, "file-name-clash", _clash_text(names.folder, held, change.anchor))
        try:
            if held is None:  # (a delete leaves the file of another spelling: on Windows it is the same file)
                self._write_or_remove(names, name, photo)
        except ImageError as exc:
            return ExportResult.failed(ident, "invalid-image", f"{exc.name}: {exc.detail}")
        except PermissionError as exc:
            return ExportResult.failed(ident, "permission-issue", f"{path}: {exc.strerror}")
        except OSError as exc:
            if exc.errno in _DISK_FULL:  # no fault of this person: every write after it would fail the same way
                msg = (
                    f"the export folder {names.folder} is out of space ({exc.strerror}): free space there and run "
                    "the export again; the photos written so far are kept, the rest stay pending"
                )
                raise StopRunError(msg) from None
            return ExportResult.retry(ident, "cd-error", f"{path}: {exc.strerror or exc}")
        return ExportResult.success(ident)

    def _write_or_remove(self, names: BackupNames, name: str, photo: bytes | None) -> None:
        """Write the backup ``name`` of ``photo``, or remove it (None); nothing on disk in a dry run."""
        if photo is None:
            if not self.context.dry_run:
                (names.folder / name).unlink(missing_ok=True)
                names.removed(name)
            return
        data = self._backup_bytes(photo)
        if not self.context.dry_run:
            atomic_write(names.folder / name, data)
            names.wrote(name)

    def _backup_bytes(self, photo: bytes) -> bytes:
        """The photo as is when it already is a square JPEG within the export size, else normalized.

        Keeping conforming photos byte for byte makes the backup lossless for Exchange's 648x648.
        """
        size = self.settings.export_size
        limits = InputLimits(self.settings.max_file_bytes, self.settings.max_pixels)
        info = probe(photo, limits)
        if info.format == "JPEG" and info.width == info.height <= size:
            verify(photo, limits)
            return photo
        spec = PhotoSpec(size=size, max_bytes=EXCHANGE_PHOTO_MAX_BYTES, max_quality=92, limits=limits)
        return normalize(photo, spec).data


#: The agent-state key of the spellings the engine holds (account key -> anchor).
_ANCHORS = "anchors"


def _held_spellings(state: StateReader) -> dict[str, AccountState]:
    """The accounts the last import left the engine holding, for a full import (no path, content not read).

    Anchors keep the case of the file first imported (``jdoe``), account keys do not. A full import,
    which is given no watermark, sent an error about ``JDoe.jpg`` (still being copied over the renamed
    ``jdoe.jpg``) under ``JDoe``: the held ``jdoe`` was unseen, and deleted with its photo. Known
    here, errors attach to the held spelling, as in a delta; every file is still read.
    """
    value = state.get_many([_ANCHORS]).get(_ANCHORS)
    if not isinstance(value, dict):
        return {}
    return {str(key): AccountState(str(anchor), "", _NOT_READ) for key, anchor in value.items()}


#: The checksum of an account whose file a full import could not read (see ``_held_unread``).
_NOT_READ = "not-read"


def _held_unread(file: PhotoFile) -> AccountState:
    """The watermark's entry for an account whose only file a full import could not use.

    A full import has no watermark to say whether the engine holds the account; the error keeps the
    object if it does. Left out of the watermark, the next delta would know nothing of it: a file
    removed then would send no delete, and the old photo would stay until the next full import. So
    it is recorded as held, with content not read (a checksum no file has): the delta deletes it when
    the file goes (a delete of an object the engine does not hold changes nothing) and reads the
    file when it can.
    """
    return AccountState(file.account, file.relpath, _NOT_READ)


def _changed(before: FileState, file: PhotoFile) -> bool:
    """Whether ``file`` may differ from what the last import saw at its path, so that it must be read.

    Size and time alone miss a photo replaced by another of the same size with the same time (a copy
    tool that keeps the source's timestamps, a restore; same-sized BMPs): the identity and change time
    of the file (``stamp``) tell it. A change that is not one of content (a permission fixed) costs
    one read, and the checksum then finds nothing to send.
    """
    if (before.mtime_ns, before.size) != (file.mtime_ns, file.size):
        return True
    return before.stamp is not None and before.stamp != file.stamp


def _delete(item: _Delete, plan: _Plan) -> CSEntryChange | None:
    """The delete of ``item``, unless it is the old spelling of a renamed file that could not be read.

    That delete is planned before the read (from names alone) and runs after it. When the read failed,
    the error attached to the old spelling and its state was carried over: sent anyway, the delete
    would remove the photo the engine holds because of a file the import could not read.
    """
    held = plan.state.accounts.get(item.renamed) if item.renamed is not None else None
    if held is not None and held.anchor == item.anchor:
        return None
    return CSEntryChange.delete(OBJECT_CLASS, item.anchor)


def _unread_formats_set_aside(group: list[PhotoFile]) -> list[PhotoFile]:
    """``group`` without its files in image formats that are not read (HEIC ...) when it holds another file:
    a phone's original kept beside its JPEG copy is no second photo of the person. Alone, such a file is
    the person's error (convert it), which also keeps the photo the engine holds."""
    readable = [file for file in group if unread_image_name(PurePosixPath(file.relpath).name) is None]
    return readable or group


def _under_other_spellings(error: _Error, group: list[PhotoFile]) -> list[_Error]:
    """``error`` again under each other spelling of the account among ``group``'s files.

    Without the last import's state (a full import) the agent cannot know which spelling the engine
    holds the account under (``jdoe`` from ``jdoe.jpg``, before ``JDoe.jpg`` was dropped beside it).
    An error told only under the first spelling leaves the held object unseen, and a full import
    deletes what it does not see: the person's photo, for a clash the agent reported. Told under
    every spelling, the held object is kept as it is until the files are sorted out.
    """
    spellings = dict.fromkeys(file.account for file in group)
    return [_Error(spelling, error.name, error.detail) for spelling in spellings if spelling != error.anchor]


def _shown_apart(relpath: str) -> str:
    """A file name as a duplicate-account error shows it, so that two names that look alike can be told apart.

    ``José.jpg`` typed on Windows and the same name copied from macOS (decomposed: ``e`` and a
    combining accent) look identical, yet are two files; the decomposed one is shown escaped.
    """
    shown = repr(display(relpath))
    if unicodedata.normalize("NFC", relpath) == relpath:
        return shown
    escaped = display(relpath).encode("ascii", "backslashreplace").decode("ascii")
    return f"{shown} ('{escaped}': decomposed Unicode, as macOS writes names)"


def _hung(folder: Path, what: str, timeout_s: float) -> StopRunError:
    """Why the import stops when a listing or a read of the folder does not come back in time.

    Read on, every later file would hang the same way; stopped, nothing is marked deleted.
    """
    share = network_location(folder)
    on = f" on {share}" if share else ""
    msg = (
        f"{what}{on} did not come back within {timeout_s:g} s (read_timeout_s): the file server or the network "
        "to it is not answering (a share mounted hard waits for it for ever); nothing was marked deleted. Check "
        "the server and the network, and run the import again"
    )
    return StopRunError(msg)


def _unlisted(folder: Path, exc: OSError) -> StopRunError:
    """Why the import stops when the folder, or one of its sub-folders, cannot be listed, and what to do.

    Read as it is, a folder whose listing failed lacks the photos it holds: every one would be
    deleted. So the step stops before any entry, and says that nothing was deleted; a folder gone since it
    was listed (a sub-folder renamed meanwhile) is said to be so, not sent to its permissions.
    """
    where = exc.filename or folder
    too_long = windows_path_too_long(where, listing=True) if isinstance(exc, FileNotFoundError) else ""
    if too_long:  # listed, but past Windows' MAX_PATH: neither gone nor a permission to fix
        return StopRunError(f"cannot list {where}: {too_long}; nothing was marked deleted")
    if isinstance(exc, FileNotFoundError):  # listed, then gone before it was entered: no permission to fix
        msg = (
            f"{where} was removed or renamed while the import listed it; nothing was marked deleted. Run the "
            "import again once the folders are in place (a share must stay mounted meanwhile)"
        )
        return StopRunError(msg)
    msg = (
        f"cannot list {where}: {exc.strerror or exc}; nothing was marked deleted. Give the account mvsync runs as "
        "read access to it (on a share, check that it is reachable); for a sub-folder, you can also move its "
        "photos out of it, or set recursive = false"
    )
    return StopRunError(msg)


def _emptied(folder: Path, accounts: int, agent: str) -> StopRunError:
    """Why a delta import refuses a folder that lost every photo since the last import.

    An unmounted share leaves its mount point behind, an empty folder; read as it is, every photo
    would be deleted (and every thumbnail written from one cleared by the next export). A full
    import of an empty folder meets the engine's guard (``stopped-empty-import``); a delta's deletes
    come from this agent, one per file, and would pass it. The same status and way out, then.
    """
    msg = (
        f"the photo folder {folder} holds no photos now, but {accounts} account(s) had one at the last import: "
        "a share that is not mounted (its empty mount point), or a folder being replaced? Nothing was marked "
        "deleted. Mount the share (or restore the folder) and run again; if every photo was removed on purpose, "
        f'run a full import of this agent with --allow-empty-import (mvsync run "<profile>" --agent {agent} '
        "--allow-empty-import)"
    )
    return StopRunError(msg, status="stopped-empty-import")


def _emptied_sub_folders(folder: Path, old: FolderState, files: list[PhotoFile]) -> dict[str, int]:
    """Sub-folders that held photos at the last import and are now there but empty, with how many
    accounts each held: what a sub-folder that is a share's mount point looks like while the share is
    not mounted. (A sub-folder removed, or still holding other files, was emptied on purpose.)"""
    present = {file.relpath for file in files}
    emptied: dict[str, int] = {}
    for account in old.accounts.values():
        if account.path in present:
            continue
        for parent in reversed(PurePosixPath(account.path).parents[:-1]):  # from the top, "." left out
            where = folder.joinpath(*parent.parts)
            if not where.is_dir():
                break  # removed: on purpose
            if not any(where.iterdir()):
                emptied[parent.as_posix()] = emptied.get(parent.as_posix(), 0) + 1
                break
    return emptied


def _sub_folders_emptied(folder: Path, emptied: dict[str, int]) -> StopRunError:
    """Why a delta import refuses sub-folders that lost every photo since the last import (an
    unmounted share's empty mount point; see ``_emptied`` for the whole folder)."""
    listed = ", ".join(f"{display(name)!r} ({n} account(s))" for name, n in sorted(emptied.items()))
    msg = (
        f"sub-folder(s) of the photo folder {folder} are empty now but held photos at the last import: {listed}. "
        "A share that is not mounted (its empty mount point)? Nothing was marked deleted. Mount the share and run "
        "again; if its photos were removed on purpose, remove the empty sub-folder too"
    )
    return StopRunError(msg, status="stopped-empty-import")


def _photo_of(change: CSEntryChange) -> tuple[bool, bytes | None, list[str]]:
    """Whether a change names the photo, the photo it leaves (None: no photo), and any attributes it
    cannot export. A whole object (add, replace) and a delete always decide the photo; an update
    only when it has a change of the photo attribute."""
    if change.modification == ObjectModificationType.DELETE:
        return True, None, []
    if change.modification == ObjectModificationType.UPDATE:
        extra = sorted({c.name for c in change.changes} - {PHOTO, ANCHOR})
        touched, photo = False, None
        for attribute_change in change.changes:
            if attribute_change.name != PHOTO:
                continue
            clears = attribute_change.modification == AttributeModificationType.DELETE
            values = [v for v in attribute_change.values if isinstance(v, bytes)]
            touched, photo = True, (None if clears or not values else values[-1])
        return touched, photo, extra
    extra = sorted(set(change.attributes) - {PHOTO, ANCHOR})
    value = change.attributes.get(PHOTO)
    if isinstance(value, list):
        value = value[-1] if value else None
    return True, (value if isinstance(value, bytes) else None), extra


def _clash_text(folder: Path, held: str, anchor: str) -> str:
    """Why the backup of ``anchor`` waits: ``held``, of a name differing only in case, is in the folder."""
    return (
        f"{folder} holds {held!r}, the backup of an account whose name differs from {display(anchor)!r} only in "
        "case; Windows keeps one file for both names, so this photo waits until that file is removed (for an "
        "account renamed in case, its old name's delete removes it and the next export writes this one)"
    )


def _file_name_problem(anchor: str, name: str) -> str:
    """Why ``anchor`` cannot name a backup file (``name``) that this agent would import as the same account,
    on this system or on Windows (:func:`connector.files.windows_name_problem`)."""
    if not anchor or anchor in (".", ".."):
        return "is empty or a path component"
    if any(c in anchor for c in "/\\\x00") or display(anchor) != anchor:
        return "contains a path separator or control characters"
    if anchor.startswith("."):
        return "starts with a dot (hidden files are not imported)"
    if any(c.isspace() for c in anchor):
        return "contains white space (the account name ends at the first space)"
    if len(anchor.encode("utf-8")) > 200:
        return "is too long for a file name"
    windows = windows_name_problem(name)
    return f"cannot name the backup file {name!r}: it {windows}" if windows else ""


def _contents_check(folder: Path, *, recursive: bool) -> CheckResult:
    """``mvsync doctor``'s word on what the folder holds: an empty one (no photo, no sub-folder) is what
    an unmounted share's mount point looks like, and the next import would stop as empty; so would one
    whose photos are all in sub-folders that a non-recursive import does not read."""
    try:
        with os.scandir(folder) as entries:
            kinds = {"photo" if is_photo_name(entry.name) else "folder" for entry in entries if _counts(entry)}
    except OSError as exc:
        return CheckResult(False, f"path: {folder} cannot be listed: {exc.strerror or exc}")
    if "photo" in kinds or (recursive and kinds):
        return CheckResult(True, f"{folder} is readable")
    if kinds:
        found = (
            f"{folder} is readable but holds no photos of its own, only sub-folders, which are not read "
            "(recursive = false): move the photos up, or set recursive = true"
        )
        return CheckResult(True, found, True)
    return CheckResult(True, f"{folder} is readable but holds no photos: if it is a share, is it mounted?", True)


def _counts(entry: os.DirEntry[str]) -> bool:
    """A photo, or a sub-folder (where photos may be): what tells a folder in use from an empty mount point."""
    return is_photo_name(entry.name) or entry.is_dir()
