"""photo-folder export: metaverse photos backed up as '<account> 648x648.jpg', one result per change."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

import connector.agents.photo_folder._connector as connector_module
from connector.agents.photo_folder import PhotoFolderConnector, PhotoFolderSettings
from connector.sdk import (
    AttributeChange,
    ConfigurationError,
    ConnectorContext,
    CSEntryChange,
    ExportStatus,
    ScopeViolationError,
    StopRunError,
)
from tests.agents.photo_folder.helpers import by_anchor, run_import
from tests.imaging.images import encode, photo

SCOPE = {"photoFile": frozenset({"photo"})}


def _agent(
    tmp_path: Path,
    *,
    scope: dict[str, frozenset[str]] | None = None,
    dry_run: bool = False,
    export: bool = True,
) -> PhotoFolderConnector:
    context = ConnectorContext(
        agent="backup",
        data_dir=tmp_path / "data",
        dry_run=dry_run,
        export_attributes=SCOPE if scope is None else scope,
    )
    settings = PhotoFolderSettings(path=tmp_path, export_path=tmp_path / "backup" if export else None)
    return PhotoFolderConnector(settings, context)


def _change(change: CSEntryChange, identifier: str) -> CSEntryChange:
    change.identifier = identifier
    return change


def test_writes_exchange_photos_as_is_and_normalizes_others(tmp_path: Path) -> None:
    exchange = photo(1)  # a 648x648 JPEG, as Exchange serves it
    big_png = encode(Image.open(io.BytesIO(photo(2, size=1000))), "PNG")
    changes = [
        _change(CSEntryChange.add("photoFile", "jdoe", {"accountName": "jdoe", "photo": exchange}), "1"),
        _change(CSEntryChange.replace("photoFile", "asmith", {"photo": big_png}), "2"),
    ]
    results = _agent(tmp_path).export(changes)
    assert [(r.identifier, r.status) for r in results] == [
        ("1", ExportStatus.SUCCESS),
        ("2", ExportStatus.SUCCESS),
    ]
    backup = tmp_path / "backup"
    assert (backup / "jdoe 648x648.jpg").read_bytes() == exchange  # lossless backup
    converted = Image.open(backup / "asmith 648x648.jpg")
    assert converted.format == "JPEG" and converted.size == (648, 648)
    assert sorted(p.name for p in backup.iterdir()) == [
        "asmith 648x648.jpg",
        "jdoe 648x648.jpg",
    ]  # no temp files


def test_updates_and_deletes_remove_or_replace(tmp_path: Path) -> None:
    agent = _agent(tmp_path)
    agent.export([_change(CSEntryChange.add("photoFile", "jdoe", {"photo": photo(1)}), "a")])
    target = tmp_path / "backup" / "jdoe 648x648.jpg"
    new = photo(3)
    results = agent.export(
        [_change(CSEntryChange.update("photoFile", "jdoe", [AttributeChange.replace("photo", new)]), "b")]
    )
    assert results[0].status == ExportStatus.SUCCESS and target.read_bytes() == new
    # an update that does not name the photo (only the account name) leaves the backup alone
    scoped = _agent(tmp_path, scope={"photoFile": frozenset({"photo", "accountName"})})
    untouched = scoped.export(
        [_change(CSEntryChange.update("photoFile", "jdoe", [AttributeChange.replace("accountName", "jdoe")]), "u")]
    )
    assert untouched[0].status == ExportStatus.SUCCESS and target.read_bytes() == new
    agent.export([_change(CSEntryChange.update("photoFile", "jdoe", [AttributeChange.delete("photo")]), "c")])
    assert not target.exists()
    agent.export([_change(CSEntryChange.add("photoFile", "jdoe", {"photo": new}), "d")])
    results = agent.export(
        [
            _change(CSEntryChange.delete("photoFile", "jdoe"), "e"),
            _change(CSEntryChange.delete("photoFile", "never-there"), "f"),
        ]
    )
    assert [r.status for r in results] == [ExportStatus.SUCCESS, ExportStatus.SUCCESS]
    assert not target.exists()


@pytest.mark.parametrize(
    ("anchor", "problem"),
    [
        ("../escape", "path separator"),
        ("a/b", "path separator"),
        (".hidden", "dot"),
        ("two words", "white space"),
        ("", "empty"),
        ("ctl\x07", "control"),
    ],
)
def test_unsafe_anchors_fail_per_object(tmp_path: Path, anchor: str, problem: str) -> None:
    changes = [
        _change(CSEntryChange.add("photoFile", anchor, {"photo": photo(1)}), "bad"),
        _change(CSEntryChange.add("photoFile", "ok", {"photo": photo(1)}), "good"),
    ]
    bad, good = _agent(tmp_path).export(changes)
    assert bad.status == ExportStatus.FAILED and bad.error_name == "invalid-anchor" and problem in bad.error_detail
    assert good.status == ExportStatus.SUCCESS
    assert [p.name for p in (tmp_path / "backup").iterdir()] == ["ok 648x648.jpg"]
    assert not (tmp_path / "escape 648x648.jpg").exists()


@pytest.mark.parametrize(
    ("anchor", "problem"),
    [
        ("a:b", "':'"),  # NTFS: writes the stream "b 648x648.jpg" of a file "a", the backup nowhere to be seen
        ("who?", "'?'"),
        ("a*", "'*'"),
        ('say"hi"', "'\"'"),
        ("a<b>", "'<'"),
        ("a|b", "'|'"),
        ("CON.old", "'CON'"),  # "CON.old 648x648.jpg" is the console device: the write would go nowhere
        ("nul.tar", "'NUL'"),
        ("Com1.x", "'COM1'"),
        ("lpt\u00b9.x", "'LPT\u00b9'"),
    ],
)
def test_anchors_windows_cannot_name_fail_per_object_on_every_system(tmp_path: Path, anchor: str, problem: str) -> None:
    """Found: the export took any anchor without a separator or control character, so on Windows a ':'
    wrote the photo into an alternate data stream, '?' or '*' failed the write as retryable at every
    export, and a reserved device name (``CON.old``) wrote it to a device. Refused on Linux too: a
    backup folder must stay one that Windows (a share, a restore) can hold."""
    changes = [
        _change(CSEntryChange.add("photoFile", anchor, {"photo": photo(1)}), "bad"),
        _change(CSEntryChange.add("photoFile", "ok", {"photo": photo(1)}), "good"),
    ]
    bad, good = _agent(tmp_path).export(changes)
    assert (bad.status, bad.error_name) == (ExportStatus.FAILED, "invalid-anchor")
    assert problem in bad.error_detail and "Windows" in bad.error_detail
    assert good.status == ExportStatus.SUCCESS
    assert [p.name for p in (tmp_path / "backup").iterdir()] == ["ok 648x648.jpg"]


def test_names_windows_accepts_are_exported(tmp_path: Path) -> None:
    """Only what Windows refuses is refused: a device name with more after it, dots and Unicode are fine."""
    anchors = ["CON", "nul-2", "COM10", "j.doe", "José", "o'neil", "a#b"]
    changes = [_change(CSEntryChange.add("photoFile", a, {"photo": photo(1)}), a) for a in anchors]
    results = _agent(tmp_path).export(changes)
    assert [r.status for r in results] == [ExportStatus.SUCCESS] * len(anchors)


def test_bad_photo_fails_per_object(tmp_path: Path) -> None:
    (result,) = _agent(tmp_path).export([_change(CSEntryChange.add("photoFile", "jdoe", {"photo": b"junk"}), "x")])
    assert result.status == ExportStatus.FAILED and result.error_name == "invalid-image"
    assert "not-an-image" in result.error_detail


def test_scope_guard_stops_before_writing(tmp_path: Path) -> None:
    changes = [
        _change(CSEntryChange.add("photoFile", "jdoe", {"photo": photo(1)}), "1"),
        _change(CSEntryChange.update("photoFile", "asmith", [AttributeChange.replace("path", "x.jpg")]), "2"),
    ]
    with pytest.raises(ScopeViolationError, match="path"):
        _agent(tmp_path).export(changes)
    assert not (tmp_path / "backup" / "jdoe 648x648.jpg").exists()
    with pytest.raises(ScopeViolationError, match="allowed: nothing"):
        _agent(tmp_path, scope={"user": frozenset({"photo"})}).export(changes[:1])


def test_unscoped_context_still_refuses_import_only_attributes(tmp_path: Path) -> None:
    change = _change(CSEntryChange.add("photoFile", "jdoe", {"photo": photo(1), "photoChecksum": "abc"}), "1")
    (result,) = _agent(tmp_path, scope={}).export([change])
    assert result.status == ExportStatus.FAILED and result.error_name == "attribute-not-exportable"


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    results = _agent(tmp_path, dry_run=True).export(
        [_change(CSEntryChange.add("photoFile", "jdoe", {"photo": photo(1)}), "1")]
    )
    assert results[0].status == ExportStatus.SUCCESS
    assert not (tmp_path / "backup").exists()


def test_export_needs_an_export_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="export_path"):
        _agent(tmp_path, export=False).export([])


def test_an_export_folder_that_cannot_be_created_is_a_configuration_error(tmp_path: Path) -> None:
    (tmp_path / "backup").write_bytes(b"a file where the folder should be")
    with pytest.raises(ConfigurationError, match=r"^export_path: cannot create the export folder .*backup"):
        _agent(tmp_path).export([_change(CSEntryChange.add("photoFile", "jdoe", {"photo": photo(1)}), "1")])


@pytest.mark.parametrize("code", sorted(connector_module._DISK_FULL))
def test_a_full_disk_stops_the_export_instead_of_failing_every_person(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    # the disk fills after two photos (ENOSPC, or EDQUOT for a quota): the third and later would fail alike
    written: list[Path] = []

    def write(path: Path, data: bytes) -> None:
        if len(written) == 2:
            raise OSError(code, os.strerror(code), str(path))
        path.write_bytes(data)
        written.append(path)

    monkeypatch.setattr(connector_module, "atomic_write", write)
    changes = [_change(CSEntryChange.add("photoFile", f"user{i}", {"photo": photo(i)}), str(i)) for i in range(5)]
    with pytest.raises(StopRunError, match=r"the export folder .*backup is out of space \(") as caught:
        _agent(tmp_path).export(changes)
    assert "the photos written so far are kept, the rest stay pending" in str(caught.value)
    assert [p.name for p in written] == ["user0 648x648.jpg", "user1 648x648.jpg"]
    # handed to the engine with the stop: recorded as exported, so the next export does not write them again
    assert [(r.identifier, r.status) for r in caught.value.results] == [("0", "success"), ("1", "success")]


def test_backup_imports_back_as_the_same_accounts(tmp_path: Path) -> None:
    _agent(tmp_path).export(
        [
            _change(CSEntryChange.add("photoFile", account, {"photo": photo(i)}), str(i))
            for i, account in enumerate(["jdoe", "Zoë", "asmith"])
        ]
    )
    reader = PhotoFolderConnector(
        PhotoFolderSettings(path=tmp_path / "backup"), ConnectorContext(agent="r", data_dir=tmp_path)
    )
    found = by_anchor(run_import(reader)[0])
    assert sorted(found) == ["Zoë", "asmith", "jdoe"]
    assert found["jdoe"].attributes["photo"] == photo(0)


def test_two_accounts_differing_only_in_case_never_share_one_backup_file(tmp_path: Path) -> None:
    """Found: 'JDoe' and 'jdoe' were written as 'JDoe 648x648.jpg' and 'jdoe 648x648.jpg': two files on
    Linux, one on Windows (NTFS names are case-insensitive), where the second photo overwrote the first.
    The second now waits (retry) and says why; the first is written."""
    changes = [
        _change(CSEntryChange.add("photoFile", "JDoe", {"photo": photo(1)}), "1"),
        _change(CSEntryChange.add("photoFile", "jdoe", {"photo": photo(2)}), "2"),
    ]
    first, second = _agent(tmp_path).export(changes)
    assert first.status == ExportStatus.SUCCESS
    assert (second.status, second.error_name) == (ExportStatus.RETRY, "file-name-clash")
    assert "'JDoe 648x648.jpg'" in second.error_detail and "only in case" in second.error_detail
    assert [p.name for p in (tmp_path / "backup").iterdir()] == ["JDoe 648x648.jpg"]


def test_an_account_renamed_in_case_keeps_its_backup_on_windows_too(tmp_path: Path) -> None:
    """Found: 'jdoe' renamed 'JDoe' exported the new name's photo, then deleted the old name's file: on
    Windows one file, so the backup just written was deleted and recorded as exported. The new name now
    waits for the old file to go (the same batch deletes it), and the next export writes it."""
    agent = _agent(tmp_path)
    agent.export([_change(CSEntryChange.add("photoFile", "jdoe", {"photo": photo(1)}), "a")])
    rename = [
        _change(CSEntryChange.add("photoFile", "JDoe", {"photo": photo(2)}), "b"),
        _change(CSEntryChange.delete("photoFile", "jdoe"), "c"),
    ]
    added, deleted = agent.export(rename)
    assert (added.status, deleted.status) == (ExportStatus.RETRY, ExportStatus.SUCCESS)
    assert list((tmp_path / "backup").iterdir()) == []
    (again,) = agent.export(rename[:1])
    assert again.status == ExportStatus.SUCCESS
    assert (tmp_path / "backup" / "JDoe 648x648.jpg").read_bytes() == photo(2)


def test_deleting_an_account_leaves_the_backup_of_one_differing_only_in_case(tmp_path: Path) -> None:
    """On Windows, removing 'jdoe 648x648.jpg' removes 'JDoe 648x648.jpg': only a file of the very name goes."""
    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / "JDoe 648x648.jpg").write_bytes(photo(1))
    (result,) = _agent(tmp_path).export([_change(CSEntryChange.delete("photoFile", "jdoe"), "d")])
    assert result.status == ExportStatus.SUCCESS
    assert [p.name for p in backup.iterdir()] == ["JDoe 648x648.jpg"]


def test_a_folder_holding_both_spellings_still_has_each_removed_by_its_own_name(tmp_path: Path) -> None:
    """A backup folder written on Linux before this check may hold both spellings: each delete removes its own."""
    backup = tmp_path / "backup"
    backup.mkdir()
    for name in ("JDoe 648x648.jpg", "jdoe 648x648.jpg"):
        (backup / name).write_bytes(photo(1))
    deletes = [_change(CSEntryChange.delete("photoFile", anchor), anchor) for anchor in ("jdoe", "JDoe")]
    assert [r.status for r in _agent(tmp_path).export(deletes)] == [ExportStatus.SUCCESS] * 2
    assert list(backup.iterdir()) == []
