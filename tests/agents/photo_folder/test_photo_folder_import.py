"""photo-folder import: full, delta (only changed files read), deletes, per-object errors, odd names."""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import unicodedata
from importlib.metadata import entry_points
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from PIL import Image

from connector.agents.photo_folder import PhotoFolderConnector, _connector, _scan
from connector.sdk import ObjectModificationType, StopRunError
from tests.agents.photo_folder.helpers import by_anchor, connector, run_import
from tests.imaging.images import cut_then_closed, photo

ADD, REPLACE, DELETE = (
    ObjectModificationType.ADD,
    ObjectModificationType.REPLACE,
    ObjectModificationType.DELETE,
)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "photos"
    path.mkdir()
    (path / "jdoe.jpg").write_bytes(photo(1, size=120))
    (path / "asmith 2024 badge.PNG").write_bytes(photo(2, size=120))
    (path / unicodedata.normalize("NFD", "José.jpeg")).write_bytes(photo(3, size=120))  # as copied from macOS
    (path / "readme.txt").write_text("not a photo")
    (path / ".DS_Store").write_bytes(b"\x00\x01")
    (path / "._jdoe.jpg").write_bytes(b"AppleDouble")  # hidden: skipped, not an error
    return path


def _read_counter(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    opened: list[str] = []
    real = _scan.read_photo

    def counting(root, file, limit):  # type: ignore[no-untyped-def]
        opened.append(file.relpath)
        return real(root, file, limit)

    monkeypatch.setattr(_connector, "read_photo", counting)
    return opened


def test_registered_entry_point() -> None:
    group = {ep.name: ep for ep in entry_points(group="mvsync.connectors")}
    assert group["photo-folder"].load() is PhotoFolderConnector


def test_schema() -> None:
    oc = PhotoFolderConnector.get_schema(None)  # type: ignore[arg-type]
    photo_file = oc.object_class("photoFile")
    assert photo_file is not None and photo_file.anchor == "accountName"
    assert {a.name for a in photo_file.attributes} == {
        "accountName",
        "photo",
        "photoChecksum",
        "path",
        "modified",
    }


def test_full_import(tmp_path: Path, folder: Path) -> None:
    agent = connector(tmp_path, folder)
    entries, _, _ = run_import(agent)
    found = by_anchor(entries)
    assert sorted(found) == ["José", "asmith", "jdoe"]  # NFC, whatever the file system gave
    jdoe = found["jdoe"]
    assert jdoe.modification == ADD and jdoe.object_class == "photoFile" and jdoe.error is None
    data = (folder / "jdoe.jpg").read_bytes()
    assert jdoe.attributes["photo"] == data
    assert jdoe.attributes["photoChecksum"] == hashlib.sha256(data).hexdigest()
    assert jdoe.attributes["path"] == "jdoe.jpg"
    modified = jdoe.attributes["modified"]
    assert isinstance(modified, dt.datetime) and modified.tzinfo is not None
    assert abs(modified.timestamp() - (folder / "jdoe.jpg").stat().st_mtime) < 1e-3
    assert found["asmith"].attributes["path"] == "asmith 2024 badge.PNG"
    schema = agent.get_schema().object_class("photoFile")
    assert schema is not None
    for entry in entries:
        for name, value in entry.attributes.items():
            attribute = schema.attribute(name)
            assert attribute is not None and attribute.accepts(value)


def test_pages_respect_page_size(tmp_path: Path) -> None:
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(7):
        (folder / f"user{i}.png").write_bytes(photo(i, size=32))
    entries, _, pages = run_import(connector(tmp_path, folder), page_size=3)
    assert len(entries) == 7 and pages == 3
    assert [e.anchor for e in entries] == sorted(e.anchor for e in entries)


def test_delta_without_changes_reads_nothing(tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, watermark, _ = run_import(connector(tmp_path, folder))
    opened = _read_counter(monkeypatch)
    entries, again, _ = run_import(connector(tmp_path, folder), watermark=watermark)
    assert entries == [] and opened == []
    assert again == watermark


def test_delta_changes_adds_deletes_and_touches(tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, watermark, _ = run_import(connector(tmp_path, folder))
    (folder / "jdoe.jpg").write_bytes(photo(10, size=120))  # changed content
    os.utime(folder / "asmith 2024 badge.PNG", ns=(1, 1_000_000_000))  # touched only
    (folder / "new.gif").write_bytes(photo(11, size=64))
    os.remove(folder / unicodedata.normalize("NFD", "José.jpeg"))
    opened = _read_counter(monkeypatch)
    entries, watermark2, _ = run_import(connector(tmp_path, folder), watermark=watermark)
    found = by_anchor(entries)
    assert sorted(opened) == ["asmith 2024 badge.PNG", "jdoe.jpg", "new.gif"]
    assert found["jdoe"].modification == REPLACE
    assert found["jdoe"].attributes["photo"] == (folder / "jdoe.jpg").read_bytes()
    assert found["new"].modification == ADD
    assert found["José"].modification == DELETE
    assert "asmith" not in found  # same checksum: nothing to tell the engine
    # and the next delta is quiet again
    opened.clear()
    assert run_import(connector(tmp_path, folder), watermark=watermark2)[0] == []
    assert opened == []


def test_a_file_replaced_by_one_of_the_same_size_and_time_is_read_again(tmp_path: Path, folder: Path) -> None:
    """Found in a bad-day pass: a delta import told files apart by size and modification time only, so
    a photo replaced by another of the same size with the same time (a copy tool that keeps the
    source's timestamps, a restore; BMP and uncompressed TIFF photos of one size are all the same
    length) was not read, and the person kept the old photo until the next full import. The file's
    identity (inode / file index) and change time now count too."""
    target = folder / "kim.bmp"
    target.write_bytes(_bmp((200, 30, 30)))
    _, watermark, _ = run_import(connector(tmp_path, folder))
    old = target.stat()
    replacement = folder / "kim.bmp.partial"  # not a photo name: the scan does not see it
    replacement.write_bytes(_bmp((30, 30, 200)))  # another photo, the same length
    os.utime(replacement, ns=(old.st_atime_ns, old.st_mtime_ns))
    os.replace(replacement, target)
    assert (target.stat().st_size, target.stat().st_mtime_ns) == (old.st_size, old.st_mtime_ns)

    entries, watermark2, _ = run_import(connector(tmp_path, folder), watermark=watermark)
    assert [(e.anchor, e.modification) for e in entries] == [("kim", REPLACE)]
    assert entries[0].attributes["photo"] == _bmp((30, 30, 200))
    assert run_import(connector(tmp_path, folder), watermark=watermark2)[0] == []  # and then quiet again


def _bmp(color: tuple[int, int, int]) -> bytes:
    """An uncompressed 64x64 photo: its length depends on its size only."""
    out = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(out, "BMP")
    return out.getvalue()


def test_a_watermark_written_before_file_identities_were_kept_still_serves_a_delta(
    tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watermark of an earlier version (no identity per file) is read as before, without reading any
    unchanged file again, and the next one has the identities."""
    _, watermark, _ = run_import(connector(tmp_path, folder))
    older = json.loads(watermark)
    older["files"] = {path: state[:4] for path, state in older["files"].items()}
    opened = _read_counter(monkeypatch)
    entries, again, _ = run_import(connector(tmp_path, folder), watermark=json.dumps(older))
    assert entries == [] and opened == []
    assert again == watermark


def test_rename_within_an_account_is_a_replace(tmp_path: Path, folder: Path) -> None:
    _, watermark, _ = run_import(connector(tmp_path, folder))
    os.rename(folder / "jdoe.jpg", folder / "jdoe 2025.jpg")
    entries, _, _ = run_import(connector(tmp_path, folder), watermark=watermark)
    assert [(e.anchor, e.modification, e.attributes.get("path")) for e in entries] == [
        ("jdoe", REPLACE, "jdoe 2025.jpg")
    ]


def test_two_files_for_one_account_is_an_error_naming_both(tmp_path: Path, folder: Path) -> None:
    _, watermark, _ = run_import(connector(tmp_path, folder))
    (folder / "JDOE new.png").write_bytes(photo(12, size=64))
    # a full import cannot tell which spelling the engine holds: the error goes to each (see
    # test_photo_folder_case_clashes.py); a delta knows it from the watermark
    for entries, anchors in (
        (run_import(connector(tmp_path, folder))[0], ["JDOE", "jdoe"]),
        (run_import(connector(tmp_path, folder), watermark=watermark)[0], ["jdoe"]),
    ):
        errors = [e for e in entries if e.error is not None]
        assert sorted(e.anchor for e in errors) == anchors
        for error in errors:
            assert error.error is not None and error.error.name == "duplicate-account"
            assert "'JDOE new.png'" in error.error.detail and "'jdoe.jpg'" in error.error.detail
    # in a delta the error attaches to the object the engine holds, and nothing is deleted
    delta = run_import(connector(tmp_path, folder), watermark=watermark)[0]
    assert [(e.anchor, e.modification) for e in delta if e.error is None] == []
    assert delta[0].anchor == "jdoe"
    # resolving the clash brings the account back (a replace with the remaining file)
    _, watermark2, _ = run_import(connector(tmp_path, folder), watermark=watermark)
    os.remove(folder / "JDOE new.png")
    entries, _, _ = run_import(connector(tmp_path, folder), watermark=watermark2)
    assert entries == []  # the remaining file is what the engine already has


def test_two_names_that_differ_only_in_unicode_form_are_shown_apart(tmp_path: Path, folder: Path) -> None:
    """Found in a bad-day pass: 'José.jpg' (typed) beside the same name copied from macOS (NFD) gave
    "2 files are named for account 'José': 'José.jpeg', 'José.jpg'; keep one" with two names that
    look the same, so which file is which could not be read from the message."""
    (folder / "José.jpg").write_bytes(photo(13, size=64))  # NFC, beside the fixture's NFD 'José.jpeg'
    [error] = [e.error for e in run_import(connector(tmp_path, folder))[0] if e.error is not None]
    assert error.name == "duplicate-account"
    assert error.detail.endswith(", 'José.jpg'; keep one")  # the composed name as it is
    assert "('Jose\\u0301.jpeg': decomposed Unicode, as macOS writes names)" in error.detail, error.detail


def test_symlinks_are_refused(tmp_path: Path, folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    secret = tmp_path / "outside.jpg"
    secret.write_bytes(photo(13, size=64))
    os.symlink(secret, folder / "mallory.jpg")
    os.symlink(folder / "jdoe.jpg", folder / "alias.jpg")
    outside_dir = tmp_path / "elsewhere"
    outside_dir.mkdir()
    (outside_dir / "eve.jpg").write_bytes(photo(14, size=64))
    os.symlink(outside_dir, folder / "linked-folder")
    entries, _, _ = run_import(connector(tmp_path, folder, recursive=True))
    found = by_anchor(entries)
    for anchor in ("mallory", "alias"):
        error = found[anchor].error
        assert error is not None and error.name == "symlink-refused"
        assert "photo" not in found[anchor].attributes
    assert "eve" not in found  # linked folders are not entered, and the log says so (it was silent)
    [said] = [r.getMessage() for r in caplog.records if "linked-folder" in r.getMessage()]
    assert "is a symbolic link to a folder (or a junction); links are not followed, so the photos in it" in said
    assert found["jdoe"].error is None


class _Junction:
    """What ``os.scandir`` gives on Windows for a junction: a folder, not a link, tagged as a mount point."""

    name = "site-b"

    def is_symlink(self) -> bool:
        return False

    def is_dir(self, *, follow_symlinks: bool = True) -> bool:
        return True

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        info = os.stat(".")
        return cast(
            os.stat_result, SimpleNamespace(st_mode=info.st_mode, st_reparse_tag=_scan.IO_REPARSE_TAG_MOUNT_POINT)
        )


def test_a_windows_junction_is_a_linked_folder_not_entered() -> None:
    """Found in the photo-folder pass (from the code: Linux has no junctions): Python before 3.12 reports a
    junction as a plain folder, so a recursive import entered it; one pointing at a parent folder
    recursed until paths grew too long and stopped the step. It is now a linked folder: said, not entered."""
    assert _scan._is_linked_folder(cast(os.DirEntry[str], _Junction()))
    with os.scandir(Path(__file__).parent) as entries:  # plain folders and files here: none is linked
        assert not any(_scan._is_linked_folder(entry) for entry in entries)


def test_file_swapped_for_a_link_after_the_scan_is_refused(
    tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = connector(tmp_path, folder)
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(photo(15, size=64))
    real_scan = _scan.scan_folder

    def scan_then_swap(*args, **kwargs):  # type: ignore[no-untyped-def]
        files = real_scan(*args, **kwargs)
        os.remove(folder / "jdoe.jpg")
        os.symlink(secret, folder / "jdoe.jpg")
        return files

    monkeypatch.setattr(_connector, "scan_folder", scan_then_swap)
    entries, _, _ = run_import(agent)
    error = by_anchor(entries)["jdoe"].error
    assert error is not None and error.name in ("symlink-refused", "path-outside-folder")


@pytest.mark.parametrize(
    ("name", "content", "error_name"),
    [
        ("broken.jpg", b"this is text, not a photo", "not-an-image"),
        ("empty.png", b"", "empty-image"),
        ("cut.jpg", photo(16)[:5000], "truncated-image"),
        ("closed.jpg", cut_then_closed(photo(16)), "truncated-image"),
        (
            "heic.jpg",
            b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64,
            "unsupported-image-format",
        ),
    ],
)
def test_bad_files_are_per_object_errors(
    tmp_path: Path, folder: Path, name: str, content: bytes, error_name: str
) -> None:
    (folder / name).write_bytes(content)
    entries, watermark, _ = run_import(connector(tmp_path, folder))
    found = by_anchor(entries)
    anchor = name.split(".")[0]
    error = found[anchor].error
    assert error is not None and error.name == error_name and name in error.detail
    assert {"jdoe", "asmith", "José"} <= {a for a, e in found.items() if e.error is None}
    # an unchanged broken file is reported again on delta, without being read again
    again = by_anchor(run_import(connector(tmp_path, folder), watermark=watermark)[0])
    assert list(again) == [anchor] and again[anchor].error == error


def test_an_empty_file_is_no_photo_even_when_images_are_not_verified(tmp_path: Path, folder: Path) -> None:
    """Found in the photo-folder pass: with ``verify_images = false`` a 0-byte file (a copy not yet
    written) was imported as a photo, b'', for the export flows to write. Telling costs nothing."""
    (folder / "ecopy.jpg").write_bytes(b"")
    found = by_anchor(run_import(connector(tmp_path, folder, verify_images=False))[0])
    error = found["ecopy"].error
    assert error is not None and error.name == "empty-image" and "ecopy.jpg" in error.detail, error
    assert found["jdoe"].error is None  # the others are read as before, undecoded


def test_a_file_removed_while_the_folder_is_listed_is_left_out_not_a_stopped_import(
    tmp_path: Path, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in a bad-day pass: HR removing one photo between the listing and its ``lstat`` stopped the
    whole import with "cannot list <folder>: No such file or directory", though the folder was fine.
    The removal is made for real on the file system at that moment (inside the listing)."""
    real_scandir = os.scandir

    def listing_then_removal(path: Any) -> Any:
        entries = list(real_scandir(path))
        os.remove(folder / "jdoe.jpg")  # listed, then gone before its lstat
        return contextlib.nullcontext(iter(entries))

    monkeypatch.setattr(_scan.os, "scandir", listing_then_removal)
    entries, _, _ = run_import(connector(tmp_path, folder))
    assert sorted(by_anchor(entries)) == ["José", "asmith"]


def test_file_too_large(tmp_path: Path, folder: Path) -> None:
    entries, _, _ = run_import(connector(tmp_path, folder, max_file_bytes=1000))
    assert {e.error.name for e in entries if e.error} == {"file-too-large"}
    assert len(entries) == 3


def test_odd_file_names(tmp_path: Path, folder: Path) -> None:
    (folder / "bad\x01name.jpg").write_bytes(photo(17, size=32))
    (folder / " leading-space.jpg").write_bytes(photo(18, size=32))
    (folder / "Zoë Smith.jpg").write_bytes(photo(19, size=32))
    (folder / "..jpg").write_bytes(photo(20, size=32))  # hidden (starts with a dot)
    os.close(os.open(os.path.join(os.fsencode(folder), b"caf\xe9.jpg"), os.O_CREAT | os.O_WRONLY))
    entries, watermark, _ = run_import(connector(tmp_path, folder))
    found = by_anchor(entries)
    assert found["Zoë"].error is None
    assert found["bad\\x01name"].error is not None
    assert found["bad\\x01name"].error.name == "invalid-file-name"
    assert found["caf\\xe9"].error is not None and found["caf\\xe9"].error.name == "invalid-file-name"
    leading = [e for e in entries if e.error and "does not start with an account" in e.error.detail]
    assert len(leading) == 1
    # each says what to do (found in a bad-day pass: they named the file only)
    assert leading[0].error is not None and leading[0].error.detail.endswith(
        "; name it '<account>[ anything].jpg', the account first (sAMAccountName)"
    )
    latin1 = found["caf\\xe9"].error.detail
    assert latin1.startswith("caf\\xe9.jpg: the file name has control characters or invalid bytes; rename it"), latin1
    assert "another code page (Latin-1, say)" in latin1
    assert all("\x01" not in e.anchor for e in entries)
    assert watermark.isascii()  # odd names are escaped in the watermark too
    assert run_import(connector(tmp_path, folder), watermark=watermark)[0] == [
        e for e in entries if e.error is not None
    ]


def test_recursive(tmp_path: Path, folder: Path) -> None:
    (folder / "sub").mkdir()
    (folder / "sub" / "bjones.jpg").write_bytes(photo(21, size=32))
    (folder / ".hidden").mkdir()
    (folder / ".hidden" / "ghost.jpg").write_bytes(photo(22, size=32))
    flat = by_anchor(run_import(connector(tmp_path, folder))[0])
    deep = by_anchor(run_import(connector(tmp_path, folder, recursive=True))[0])
    assert "bjones" not in flat
    assert deep["bjones"].attributes["path"] == "sub/bjones.jpg"
    assert "ghost" not in deep


def test_watermark_of_another_folder_or_garbage_stops(tmp_path: Path, folder: Path) -> None:
    _, watermark, _ = run_import(connector(tmp_path, folder))
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(StopRunError, match="full import"):
        run_import(connector(tmp_path, other), watermark=watermark)
    with pytest.raises(StopRunError, match="full import"):
        run_import(connector(tmp_path, folder, recursive=True), watermark=watermark)
    with pytest.raises(StopRunError, match="cannot be read"):
        run_import(connector(tmp_path, folder), watermark="{not json")


def test_check(tmp_path: Path, folder: Path) -> None:
    assert connector(tmp_path, folder).check().ok
    assert not connector(tmp_path, tmp_path / "missing").check().ok
