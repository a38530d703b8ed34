"""photo-folder, through the real CLI: a file whose name differs from the imported one in case only
must not delete the photo the engine already holds when that file cannot be imported.

Accounts are case-insensitive (``jdoe.jpg`` and ``JDoe.jpg`` are one account), anchors are not: the
connector space holds the spelling of the file first imported, and an import error attaches to an
object only under that spelling."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.cli._configs import invoke
from tests.imaging.images import photo


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """An HR folder agent that projects people with their photo; ``cycle`` imports and synchronizes."""
    folder = tmp_path / "photos"
    folder.mkdir()
    path = tmp_path / "mvsync.toml"
    path.write_text(
        f"""
[store]
url = "sqlite:///{(tmp_path / "mvsync.db").as_posix()}"
[metaverse]
schema = "person"
[agents.hr]
type = "photo-folder"
settings = {{ path = "{folder.as_posix()}" }}
projection = [{{ object_class = "photoFile" }}]
import_flow = [
  {{ object_class = "photoFile", cs = "accountName", mv = "accountName" }},
  {{ object_class = "photoFile", cs = "photo", mv = "photo" }},
]
[run_profiles.full]
steps = [{{ type = "full-import", agent = "hr" }}, {{ type = "full-sync", agent = "hr" }}]
[run_profiles.delta]
steps = [{{ type = "delta-import", agent = "hr" }}, {{ type = "delta-sync", agent = "hr" }}]
""",
        encoding="utf-8",
    )
    return path


def _run(config: Path, profile: str) -> tuple[int, list[dict[str, Any]]]:
    """Exit code and the steps of one run of ``profile``."""
    code, out, err = invoke("run", profile, "-c", str(config), "--json")
    assert code in (0, 3), (out, err)
    steps: list[dict[str, Any]] = json.loads(out)["steps"]
    return code, steps


def _photos(config: Path) -> dict[str, int]:
    """Metaverse people with a photo: account name -> photo size (the photo's own bytes, as imported)."""
    code, out, err = invoke("mv", "search", "-c", str(config), "--json")
    assert code == 0, err
    people: list[dict[str, Any]] = json.loads(out)
    shown: dict[str, int] = {}
    for person in people:
        code, out, err = invoke("mv", "show", str(person["id"]), "-c", str(config), "--json")
        assert code == 0, err
        attributes = json.loads(out)["attributes"]
        if attributes.get("photo"):
            shown[attributes["accountName"]["value"]] = len(str(attributes["photo"]["value"]))
    return shown


def test_a_second_file_for_an_account_in_another_case_keeps_the_photo_in_a_full_import(
    config: Path, tmp_path: Path
) -> None:
    """Found in a bad-day pass: HR dropped ``JDoe.jpg`` beside ``jdoe.jpg``. A full import reported the
    clash (duplicate-account) under ``JDoe``, the spelling that sorts first, so the object the engine
    held, ``jdoe``, was not seen: it was deleted, and the sync deleted the person's metaverse object
    with its photo (``mv_deletes=1``). The error now goes to the spelling the engine holds (from the
    agent's state; without it, to every spelling among the files: test_photo_folder_import.py), so the
    object is kept, with its photo, until the clash is resolved."""
    folder = tmp_path / "photos"
    (folder / "jdoe.jpg").write_bytes(photo(1, size=64))
    (folder / "ann.jpg").write_bytes(photo(2, size=64))
    assert _run(config, "full")[0] == 0
    before = _photos(config)
    assert set(before) == {"ann", "jdoe"}

    (folder / "JDoe.jpg").write_bytes(photo(3, size=64))
    code, (imported, synced) = _run(config, "full")
    assert code == 3
    assert imported["counters"].get("deletes", 0) == 0, imported
    assert synced["counters"].get("mv_deletes", 0) == 0, synced
    clashes = [e for e in imported["object_errors"] if e["error_name"] == "duplicate-account"]
    assert "jdoe" in {e["anchor"] for e in clashes}  # the spelling the engine holds
    assert all("'JDoe.jpg', 'jdoe.jpg'; keep one" in e["detail"] for e in clashes)
    assert _photos(config) == before

    (folder / "jdoe.jpg").unlink()  # resolved: the new file is the account's photo from now on
    code, _ = _run(config, "full")
    assert code == 0
    assert set(_photos(config)) == {"ann", "JDoe"}


def _imported_then_renamed(config: Path, folder: Path, content: bytes) -> dict[str, int]:
    """``jdoe.jpg`` and ``ann.jpg`` imported in full, then ``jdoe.jpg`` renamed ``JDoe.jpg`` and given
    ``content``; returns the photos held before the rename."""
    (folder / "jdoe.jpg").write_bytes(photo(1, size=64))
    (folder / "ann.jpg").write_bytes(photo(2, size=64))
    assert _run(config, "full")[0] == 0
    before = _photos(config)
    (folder / "jdoe.jpg").rename(folder / "JDoe.jpg")
    (folder / "JDoe.jpg").write_bytes(content)
    return before


@pytest.mark.parametrize("content", [b"", b"<html>Access denied</html>"], ids=["empty", "not-an-image"])
def test_a_file_renamed_in_case_that_cannot_be_imported_keeps_the_photo_in_a_delta(
    config: Path, tmp_path: Path, content: bytes
) -> None:
    """Found in a bad-day pass: ``jdoe.jpg`` replaced by ``JDoe.jpg`` that cannot be imported (a file
    still being copied, not an image). A delta import planned the delete of the old spelling before
    reading the new file, and sent it though the read failed: the error under ``jdoe``, then a delete
    of ``jdoe`` (``deletes=1``; the sync deleted the person's photo). The old spelling is now deleted
    only once the new file was read; until then the error attaches to it, and the photo stays."""
    folder = tmp_path / "photos"
    before = _imported_then_renamed(config, folder, content)
    code, (imported, synced) = _run(config, "delta")
    assert code == 3
    assert imported["counters"].get("deletes", 0) == 0, imported
    assert synced["counters"].get("mv_deletes", 0) == 0, synced
    [error] = imported["object_errors"]
    assert error["anchor"] == "jdoe" and error["detail"].startswith("JDoe.jpg: "), error
    assert _photos(config) == before

    (folder / "JDoe.jpg").write_bytes(photo(3, size=64))  # the copy completes
    code, (imported, synced) = _run(config, "delta")
    assert code == 0
    assert imported["counters"].get("deletes") == 1 and imported["counters"].get("adds") == 1, imported
    assert set(_photos(config)) == {"ann", "JDoe"}


def test_a_file_renamed_in_case_that_cannot_be_imported_keeps_the_photo_in_a_full_import(
    config: Path, tmp_path: Path
) -> None:
    """Found in a bad-day pass: as in a delta (above), ``jdoe.jpg`` replaced by ``JDoe.jpg`` that cannot
    be imported, but in a full import, which has no watermark to say the engine holds ``jdoe``: the
    error went to ``JDoe``, ``jdoe`` was unseen, and the full import deleted it (``deletes=1``, the
    sync ``mv_deletes=1``). The agent now keeps the spellings it left the engine holding in its state
    (one key), so a full import's errors attach to the held spelling too."""
    folder = tmp_path / "photos"
    before = _imported_then_renamed(config, folder, b"")  # still being copied
    code, (imported, synced) = _run(config, "full")
    assert code == 3
    assert imported["counters"].get("deletes", 0) == 0, imported
    assert synced["counters"].get("mv_deletes", 0) == 0, synced
    [error] = imported["object_errors"]
    assert error["anchor"] == "jdoe" and error["error_name"] == "empty-image", error
    assert _photos(config) == before

    (folder / "JDoe.jpg").write_bytes(photo(3, size=64))  # the copy completes
    assert _run(config, "full")[0] == 0
    assert set(_photos(config)) == {"ann", "JDoe"}
