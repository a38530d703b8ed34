"""photo-folder on the bad days of an HR share: through the real CLI where a user meets them, else as the
engine drives the agent's import (``run_import``)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from connector.agents.photo_folder import _scan
from connector.sdk import ObjectModificationType, StopRunError
from tests.agents.photo_folder.helpers import by_anchor, cli_config, connector, run_import
from tests.cli._configs import invoke
from tests.imaging.images import encode, heic_like, photo


def test_a_file_size_limit_past_the_decoders_is_a_configuration_error_not_a_stopped_step(tmp_path: Path) -> None:
    """Found in the photo-folder bad-day pass: ``max_file_bytes = 3000000000`` (an administrator letting
    big scans in) was accepted, doctor passed, and the import stopped at the first photo as
    stopped-connector-exception (exit 4) with a traceback in the log: ``InvalidSpecError: max_input_bytes:
    3000000000 is outside 1..2147483648``, a name the configuration does not have. It is now refused with
    the configuration (exit 2), naming the setting and its bound, before any step runs."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "ann.jpg").write_bytes(photo(1, size=64))
    config = cli_config(tmp_path, folder, max_file_bytes=3_000_000_000)
    code, out, err = invoke("run", "full", "-c", str(config))
    assert code == 2, (out, err)
    assert "agents.hr.settings.max_file_bytes" in err and "2147483648" in err, err
    assert "Traceback" not in out + err and "max_input_bytes" not in err
    code, out, _ = invoke("doctor", "-c", str(config), "--json")
    findings = json.loads(out)["findings"]
    assert any(f["severity"] == "error" and "max_file_bytes" in f["message"] for f in findings), findings

    config = cli_config(tmp_path, folder, max_file_bytes=2_147_483_648)  # the bound itself is a good value
    assert invoke("run", "full", "-c", str(config))[0] == 0


def test_raising_a_limit_lets_the_next_delta_import_read_the_photos_it_refused(tmp_path: Path) -> None:
    """Found in the photo-folder bad-day pass: photos over the limits (HR's 50 MB scan, a 9000x9000
    export; small limits here) were refused (file-too-large, image-too-many-pixels), the administrator
    raised max_file_bytes and max_pixels, and every delta import went on repeating the old errors, naming
    the old limits, from the watermark (an unchanged broken file is not read again), until a full import.
    The watermark now keeps the limits its errors were judged by; under other limits the files are read
    again."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "ann.jpg").write_bytes(photo(1, size=64))
    (folder / "bob.jpg").write_bytes(photo(2, size=300))  # about 20 KB
    (folder / "cid.png").write_bytes(encode(Image.new("RGB", (1200, 1000), (90, 90, 90)), "PNG"))
    tight = cli_config(tmp_path, folder, max_file_bytes=15_000, max_pixels=1_000_000)
    code, out, err = invoke("run", "full", "-c", str(tight))
    assert code == 3 and "over max_file_bytes=15,000" in out and "over the limit of 1,000,000" in out, (out, err)

    raised = cli_config(tmp_path, folder)  # the defaults: 20 MB, 50 million pixels
    code, out, err = invoke("run", "delta", "-c", str(raised), "--json")
    assert code == 0, (out, err)
    [step] = json.loads(out)["steps"]
    assert step["counters"].get("adds") == 2, step
    code, out, _ = invoke("cs", "search", "hr", "-c", str(raised), "--json")
    assert sorted(o["anchor"] for o in json.loads(out)) == ["ann", "bob", "cid"]
    code, out, _ = invoke("run", "delta", "-c", str(raised), "--json")  # and then quiet, reading nothing again
    assert code == 0 and json.loads(out)["steps"][0]["counters"] == {"pages": 1}, out


@pytest.mark.parametrize("space", ["\u00a0", "\u3000", "\u202f"], ids=["no-break", "ideographic", "narrow-no-break"])
def test_a_name_whose_space_is_not_ascii_is_the_account_up_to_it(tmp_path: Path, space: str) -> None:
    """Found in the photo-folder bad-day pass: 'jdoe<no-break space>2024.jpg' (a name pasted from a web page or
    Word, or typed with an IME's full-width space) looks like 'jdoe 2024.jpg', yet was an invalid-file-name
    error saying the name 'has control characters or invalid bytes ... another code page', and jdoe had no
    photo. Any space character now ends the account name (export already refused an anchor with any
    white space, as the account name ending there); control characters (a tab, a newline) are still errors."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / f"jdoe{space}2024.jpg").write_bytes(photo(1, size=64))
    (folder / "tab\there.jpg").write_bytes(photo(2, size=64))
    found = by_anchor(run_import(connector(tmp_path, folder))[0])
    assert sorted(found) == ["jdoe", "tab\\x09here"]
    assert found["jdoe"].error is None and found["jdoe"].attributes["path"] == f"jdoe{space}2024.jpg"
    error = found["tab\\x09here"].error
    assert error is not None and error.name == "invalid-file-name"


def test_a_jpeg_saved_as_jfif_is_read_as_the_jpeg_it_is(tmp_path: Path) -> None:
    """Found in the photo-folder bad-day pass: Windows saves a JPEG from a browser as '.jfif' (and some tools
    write '.jpe'); HR's 'ann.jfif' was skipped in silence, and ann had no photo with nothing said."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "ann.jfif").write_bytes(photo(1, size=64))
    (folder / "bob.JPE").write_bytes(photo(2, size=64))
    found = by_anchor(run_import(connector(tmp_path, folder))[0])
    assert sorted(found) == ["ann", "bob"] and all(entry.error is None for entry in found.values())


def test_a_photo_in_a_format_not_read_is_the_persons_error_not_skipped_in_silence(tmp_path: Path) -> None:
    """Found in the photo-folder bad-day pass: a file named for a person in an image format the agent does not
    read ('jdoe.heic' from an iPhone) was skipped in silence: nobody was told, and when HR replaced jdoe.jpg by
    it, the delta import deleted jdoe's photo (its file was gone). It is now that person's error, saying to
    convert it, and the photo the engine holds is kept. Beside a photo the agent reads (the original kept next
    to its JPEG copy) it is left alone, as any other file; files that are no image (notes.txt) are too."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "jdoe.jpg").write_bytes(photo(1, size=64))
    (folder / "ann.jpg").write_bytes(photo(2, size=64))
    (folder / "ann.HEIC").write_bytes(heic_like())  # the original beside its copy
    (folder / "bob.avif").write_bytes(b"\x00\x00\x00\x1cftypavif" + b"\x00" * 32)
    (folder / "notes.txt").write_text("who is who", encoding="utf-8")
    entries, watermark, _ = run_import(connector(tmp_path, folder))
    found = by_anchor(entries)
    assert sorted(found) == ["ann", "bob", "jdoe"]
    assert found["ann"].error is None and found["ann"].attributes["path"] == "ann.jpg"
    bob = found["bob"].error
    assert bob is not None and bob.name == "unsupported-image-format", bob
    assert bob.detail.startswith("bob.avif: AVIF") and "convert the photo to JPEG" in bob.detail, bob.detail

    (folder / "jdoe.jpg").unlink()  # HR replaces the photo by the phone's original
    (folder / "jdoe.heic").write_bytes(heic_like())
    delta = by_anchor(run_import(connector(tmp_path, folder), watermark=watermark)[0])
    assert sorted(delta) == ["bob", "jdoe"]  # bob's error again; nothing for ann
    jdoe = delta["jdoe"]
    assert jdoe.modification != ObjectModificationType.DELETE and jdoe.error is not None, jdoe
    assert jdoe.error.name == "unsupported-image-format" and "jdoe.heic: HEIC" in jdoe.error.detail


def test_a_file_over_the_size_limit_says_what_to_do(tmp_path: Path) -> None:
    """Found in the photo-folder bad-day pass: HR's 50 MB scan was refused with 'big.jpg is 52,432,919 bytes,
    over max_file_bytes=20,971,520' only: neither what HR can do (save it smaller) nor what the administrator
    can (raise the setting) was said."""
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "big.jpg").write_bytes(photo(1, size=64))
    [entry] = run_import(connector(tmp_path, folder, max_file_bytes=1000))[0]
    assert entry.error is not None and entry.error.name == "file-too-large"
    assert entry.error.detail.startswith("big.jpg is "), entry.error.detail
    assert entry.error.detail.endswith(
        "over max_file_bytes=1,000: save the photo at a smaller size (a directory keeps 648x648 at most), "
        "or raise max_file_bytes"
    ), entry.error.detail


class _AttributesRefused:
    """A listed file whose attributes the server refuses (``lstat``: EACCES), as a cifs mount does for a file
    whose ACL denies the service account; the rest of the entry is the real one."""

    def __init__(self, entry: os.DirEntry[str]) -> None:
        self._entry = entry
        self.name = entry.name
        self.path = entry.path

    def __getattr__(self, name: str) -> Any:
        return getattr(self._entry, name)

    def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
        raise PermissionError(errno.EACCES, "Permission denied", self.path)


def _refuse_attributes_of(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """The listing of the photo folder gives ``name`` as a file whose attributes cannot be read (injected: no
    local file system refuses one file's ``lstat``)."""
    real_scandir = os.scandir

    def listing(path: Any) -> Any:
        entries = [_AttributesRefused(e) if e.name == name else e for e in real_scandir(path)]
        return contextlib.nullcontext(iter(entries))

    monkeypatch.setattr(_scan.os, "scandir", listing)


def test_a_file_whose_attributes_are_refused_is_that_persons_error_not_a_stopped_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in the photo-folder bad-day pass: one HR file whose ACL denies the service account (on a cifs
    mount, its ``lstat`` fails with EACCES) stopped every import of the folder: 'cannot list
    .../bob.jpg: Permission denied; nothing was marked deleted', and nobody's photo was read until the
    ACL was fixed. It is now bob's error, as a file that cannot be opened is; the others are read, bob's
    photo is kept, and once the ACL is fixed the next delta reads the file again."""
    folder = tmp_path / "photos"
    folder.mkdir()
    for seed, name in enumerate(("ann", "bob", "cid")):
        (folder / f"{name}.jpg").write_bytes(photo(seed, size=64))
    _, watermark, _ = run_import(connector(tmp_path, folder))
    (folder / "ann.jpg").write_bytes(photo(7, size=64))  # a change the next import must not miss

    with monkeypatch.context() as fault:
        _refuse_attributes_of(fault, "bob.jpg")
        full = by_anchor(run_import(connector(tmp_path, folder))[0])
        delta, watermark2, _ = run_import(connector(tmp_path, folder), watermark=watermark)
    assert sorted(full) == ["ann", "bob", "cid"] and full["ann"].error is None
    for entries in (full, by_anchor(delta)):
        error = entries["bob"].error
        assert error is not None and error.name == "file-unreadable", entries["bob"]
        assert error.detail == "bob.jpg: Permission denied", error.detail
    assert [(e.anchor, e.modification) for e in delta if e.error is None] == [("ann", ObjectModificationType.REPLACE)]

    assert run_import(connector(tmp_path, folder), watermark=watermark2)[0] == []  # fixed: read, unchanged


def test_a_nas_recycle_bin_and_thumbnail_cache_are_not_read_as_photos(tmp_path: Path) -> None:
    """Found in the photo-folder bad-day pass: a recursive import of a Synology or QNAP share read its recycle
    bin ('#recycle', '@Recycle') and thumbnail cache ('@eaDir') as HR's folders: a photo HR deleted (moved to
    '#recycle') was still imported, so the person kept it everywhere, and the NAS's thumbnails of every
    photo became a bogus account ('SYNOPHOTO_THUMB_XL', a duplicate-account error). Such folders, like
    Windows' '$RECYCLE.BIN', are now skipped, as hidden folders are."""
    folder = tmp_path / "photos"
    (folder / "site-a").mkdir(parents=True)
    (folder / "site-a" / "ann.jpg").write_bytes(photo(1, size=64))
    (folder / "site-a" / "jdoe.jpg").write_bytes(photo(2, size=64))
    for cache in ("site-a/@eaDir/ann.jpg", "site-a/@eaDir/jdoe.jpg"):
        (folder / cache).mkdir(parents=True)
        (folder / cache / "SYNOPHOTO_THUMB_XL.jpg").write_bytes(photo(3, size=32))
    (folder / "@Recycle").mkdir()
    (folder / "@Recycle" / "old.jpg").write_bytes(photo(4, size=32))
    (folder / "$RECYCLE.BIN").mkdir()
    (folder / "$RECYCLE.BIN" / "gone.jpg").write_bytes(photo(5, size=32))
    entries, watermark, _ = run_import(connector(tmp_path, folder, recursive=True))
    assert sorted(e.anchor for e in entries) == ["ann", "jdoe"] and all(e.error is None for e in entries)

    (folder / "#recycle" / "site-a").mkdir(parents=True)  # HR deletes jdoe's photo: the NAS keeps it here
    (folder / "site-a" / "jdoe.jpg").rename(folder / "#recycle" / "site-a" / "jdoe.jpg")
    delta = run_import(connector(tmp_path, folder, recursive=True), watermark=watermark)[0]
    assert [(e.anchor, e.modification) for e in delta] == [("jdoe", ObjectModificationType.DELETE)]


def test_a_sub_folder_removed_while_it_is_listed_says_so_not_to_grant_access(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in the photo-folder bad-day pass: HR renaming a site's sub-folder while a recursive import listed
    the folder stopped the step with 'cannot list .../site-b: No such file or directory; nothing was marked
    deleted. Give the account mvsync runs as read access to it', sending the administrator to permissions
    that are fine. The step still stops (the photos in the folder were not seen: read as gone, they would be
    deleted), and now says the sub-folder was removed or renamed during the import and to run it again.
    The renaming is made for real, when the listing reaches the top folder."""
    folder = tmp_path / "photos"
    (folder / "site-b").mkdir(parents=True)
    (folder / "site-b" / "bob.jpg").write_bytes(photo(1, size=64))
    (folder / "ann.jpg").write_bytes(photo(2, size=64))
    _, watermark, _ = run_import(connector(tmp_path, folder, recursive=True))
    real_scandir = os.scandir

    def listing_then_rename(path: Any) -> Any:
        entries = list(real_scandir(path))
        if Path(path) == folder and (folder / "site-b").exists():
            (folder / "site-b").rename(folder / "Site B")  # listed under its old name, renamed before entered
        return contextlib.nullcontext(iter(entries))

    monkeypatch.setattr(_scan.os, "scandir", listing_then_rename)
    with pytest.raises(StopRunError) as stopped:
        run_import(connector(tmp_path, folder, recursive=True), watermark=watermark)
    said = str(stopped.value)
    assert said.startswith(f"{folder / 'site-b'} was removed or renamed while the import listed it"), said
    assert "nothing was marked deleted" in said and "Run the import again" in said and "read access" not in said


def test_doctor_warns_of_a_folder_whose_photos_are_all_in_sub_folders_it_does_not_read(tmp_path: Path) -> None:
    """Found in the photo-folder bad-day pass: HR moved every photo into a '2025' sub-folder; with recursive =
    false the import found none and stopped as empty, while doctor had called the folder 'readable' (a
    sub-folder counted as content). Doctor now warns that the folder holds no photos of its own and that
    its sub-folders are not read; with recursive = true the folder is fine."""
    folder = tmp_path / "photos"
    (folder / "2025").mkdir(parents=True)
    (folder / "2025" / "jdoe.jpg").write_bytes(photo(1, size=64))

    def reachable(config: Path) -> tuple[str, str]:
        out = invoke("doctor", "-c", str(config), "--json")[1]
        [found] = [f for f in json.loads(out)["findings"] if f["check"] == "agents.hr.reachable"]
        return found["severity"], found["message"]

    severity, message = reachable(cli_config(tmp_path, folder))
    assert severity == "warning", message
    assert message == (
        f"{folder} is readable but holds no photos of its own, only sub-folders, which are not read "
        "(recursive = false): move the photos up, or set recursive = true"
    )
    assert reachable(cli_config(tmp_path, folder, recursive=True)) == ("ok", f"{folder} is readable")
