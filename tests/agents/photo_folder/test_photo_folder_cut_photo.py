"""photo-folder, through the real CLI: a photo replaced by a copy cut short that still ends with the
JPEG end-of-image marker is a per-object error naming the file, and the person keeps the old photo."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.agents.photo_folder.test_photo_folder_case_clashes import _photos, _run, config
from tests.imaging.images import cut_then_closed, photo

__all__ = ["config"]  # the fixture, shared with the case-clash tests


@pytest.mark.parametrize("profile", ["delta", "full"])
def test_a_photo_replaced_by_a_copy_cut_short_and_closed_keeps_the_old_photo(
    config: Path, tmp_path: Path, profile: str
) -> None:
    """Found in a bad-day pass: HR's copy of ``jdoe.jpg`` was cut in the middle of its scan data and closed
    with an end-of-image marker. It decoded without an error (libjpeg only warns; Pillow does not say),
    so it was imported and synchronized as jdoe's new photo, gray from where the copy stopped."""
    folder = tmp_path / "photos"
    (folder / "jdoe.jpg").write_bytes(photo(1, size=256))
    (folder / "ann.jpg").write_bytes(photo(2, size=256))
    assert _run(config, "full")[0] == 0
    before = _photos(config)

    (folder / "jdoe.jpg").write_bytes(cut_then_closed(photo(3, size=256)))
    code, (imported, synced) = _run(config, profile)
    assert code == 3
    [error] = imported["object_errors"]
    assert error["anchor"] == "jdoe" and error["error_name"] == "truncated-image", error
    assert error["detail"].startswith("jdoe.jpg: ") and "ends early" in error["detail"], error
    assert "Copy or save the photo again" in error["detail"], error
    assert synced["counters"].get("mv_deletes", 0) == 0, synced
    assert _photos(config) == before
