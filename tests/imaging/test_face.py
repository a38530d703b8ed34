"""Face crop: a positive test on a real portrait, and the centre-crop fallback that says so."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from PIL import Image

from connector.imaging import CropMode, FaceFinder, PhotoSpec, normalize
from connector.imaging import _normalize as normalize_module
from tests.conftest import require_or_skip
from tests.imaging.images import close, encode, photo, pixel

ASTRONAUT = Path(__file__).parent.parent / "data" / "astronaut.jpg"  # see tests/data/PROVENANCE.md


def _require_opencv() -> None:
    if not FaceFinder().available:
        require_or_skip("OpenCV with Haar cascades is not installed (the [face] extra)")


def test_finds_the_astronauts_face_and_crops_around_it() -> None:
    _require_opencv()
    source = ASTRONAUT.read_bytes()
    result = normalize(source, PhotoSpec(crop=CropMode.FACE, margin=40))
    assert result.crop == CropMode.FACE and not result.fallback
    assert result.face is not None
    # The face sits left of centre and high in the 256x256 picture (found at about 87,32 51x51).
    face = result.face
    assert 70 <= face.left <= 105 and 15 <= face.top <= 50 and 40 <= face.width <= 70
    assert (result.width, result.height) == (96, 96)
    centre = normalize(source, PhotoSpec(crop=CropMode.CENTER))
    assert centre.data != result.data


def test_face_crop_frames_the_face() -> None:
    _require_opencv()
    big = Image.open(ASTRONAUT).resize((768, 768), Image.Resampling.LANCZOS)  # room for a tight crop
    result = normalize(encode(big, "PNG"), PhotoSpec(size=96, crop=CropMode.FACE, margin=20))
    assert result.face is not None
    # Looking for the face again in the thumbnail finds it large and near the centre.
    again = FaceFinder().find(Image.open(io.BytesIO(result.data)).resize((384, 384)))
    assert again is not None
    centre_x, centre_y = again.left + again.width / 2, again.top + again.height / 2
    assert abs(centre_x - 192) < 60 and abs(centre_y - 192) < 90
    assert again.width > 384 * 0.4


def test_face_crop_is_deterministic() -> None:
    _require_opencv()
    spec = PhotoSpec(crop=CropMode.FACE)
    assert normalize(ASTRONAUT.read_bytes(), spec).data == normalize(ASTRONAUT.read_bytes(), spec).data


def test_no_face_falls_back_to_centre_and_says_so() -> None:
    _require_opencv()
    result = normalize(photo(11), PhotoSpec(crop=CropMode.FACE))
    assert result.crop == CropMode.CENTER
    assert result.fallback == "no face found; used a centre crop"
    assert result.fallback in result.notes
    centre = normalize(photo(11))
    assert (result.width, result.height) == (centre.width, centre.height)
    assert close(pixel(result.data, (10, 10)), pixel(centre.data, (10, 10)), 12)  # the same framing


def test_without_opencv_falls_back_and_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cv2", None)  # makes ``import cv2`` fail
    finder = FaceFinder()
    assert not finder.available
    assert "mvsync[face]" in finder.unavailable_reason and "<5" in finder.unavailable_reason
    monkeypatch.setattr(normalize_module, "face_finder", lambda: finder)
    result = normalize(ASTRONAUT.read_bytes(), PhotoSpec(crop=CropMode.FACE))
    assert result.crop == CropMode.CENTER and result.face is None
    assert "OpenCV is not installed" in result.fallback
    assert result.width == 96


def test_opencv_without_cascades_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    class NoCascades:  # what opencv-python 5 looks like: no CascadeClassifier
        __version__ = "5.0.0"

    monkeypatch.setitem(sys.modules, "cv2", NoCascades())
    finder = FaceFinder()
    assert not finder.available and "5.0.0" in finder.unavailable_reason
    assert finder.find(Image.new("RGB", (50, 50))) is None
