"""The photo folder -> Exchange Online flow encodes each photo once: the ``hd_photo`` transform makes
the JPEG and the agent uploads those very bytes, without decoding and encoding them again."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from connector.imaging import EXCHANGE_PHOTO_MAX_BYTES, PhotoSpec, meets_spec
from connector.imaging import _normalize as normalize_module
from connector.imaging.transforms import hd_photo_transform
from connector.sdk import AttributeChange, CSEntryChange, ExportStatus
from tests.agents.exchange_online.conftest import make_connector

ASTRONAUT = Path(__file__).parents[2] / "data" / "astronaut.jpg"


@pytest.fixture
def encodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Every JPEG encode connector.imaging makes, as the quality it encoded at."""
    made: list[int] = []
    jpeg: Callable[[Image.Image, int], bytes] = normalize_module._jpeg

    def counting(image: Image.Image, quality: int) -> bytes:
        made.append(quality)
        return jpeg(image, quality)

    monkeypatch.setattr(normalize_module, "_jpeg", counting)
    return made


def _upload(emu: Any, tmp_path: Path, photo: bytes) -> bytes | None:
    """Export ``photo`` to a cloud mailbox through the agent; what the tenant then holds."""
    user = next(u for u in emu.admin.users() if u.get("mail") and u["mailbox"] == "cloud")
    change = CSEntryChange.update("EXOUser", user["id"], [AttributeChange.replace("EXOPhoto", photo)])
    change.identifier = "1"
    connector = make_connector(emu, tmp_path)
    connector.open()
    try:
        [result] = connector.export([change])
    finally:
        connector.close()
    assert result.status == ExportStatus.SUCCESS, result
    stored: bytes | None = emu.admin.get_photo(user["id"])
    return stored


@pytest.mark.usefixtures("cache_key")
def test_a_transformed_photo_is_encoded_once_and_uploaded_as_is(
    make_emulator: Any, tmp_path: Path, encodes: list[int]
) -> None:
    emu = make_emulator(users=10)
    transformed = hd_photo_transform(size=648)(ASTRONAUT.read_bytes())  # the export flow's transform
    assert isinstance(transformed, bytes)
    assert len(encodes) == 1

    stored = _upload(emu, tmp_path, transformed)  # (the tenant keeps its own re-encoded copy, as Exchange does)
    assert stored is not None
    assert len(encodes) == 1  # the agent did not encode it again


@pytest.mark.usefixtures("cache_key")
def test_a_raw_photo_is_still_made_to_fit_exchange_online(
    make_emulator: Any, tmp_path: Path, encodes: list[int]
) -> None:
    """A flow without the transform: the agent makes the JPEG Exchange Online accepts, once."""
    emu = make_emulator(users=10)
    spec = PhotoSpec(size=648, max_bytes=EXCHANGE_PHOTO_MAX_BYTES)
    with Image.open(ASTRONAUT) as source:
        buffer = io.BytesIO()  # as a camera writes it: larger than 648, not square, with EXIF
        exif = Image.Exif()
        exif[0x0112] = 1  # Orientation
        source.resize((900, 700)).save(buffer, "JPEG", quality=95, exif=exif)
    raw = buffer.getvalue()
    assert not meets_spec(raw, spec)
    encodes.clear()

    stored = _upload(emu, tmp_path, raw)
    assert stored is not None and stored != raw
    assert len(encodes) == 1 and encodes[0] == spec.max_quality  # one encode; it fitted at the first quality
