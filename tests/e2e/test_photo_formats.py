"""A photo Graph serves as PNG or GIF, end to end: staged as it is and said so, a JPEG thumbnail in AD.

Graph serves a photo in the format it was stored in (``@odata.mediaContentType``, Learn "profilePhoto
resource"); photos set outside Exchange (Entra ID, older tools) can be PNG or GIF. The sample's rules,
the Graph emulator over HTTPS and the demo's LDIF directory stand-in, whose snapshot is the directory
after each export (the ``thumbnail`` transform that writes AD ``thumbnailPhoto`` is the same for both).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from connector.config import load_config
from connector.demo import DEMO_SCOPES, prepare_scenario, read_ldif
from connector.emulator import EmulatorConfig, GraphEmulator
from connector.engine import Engine
from connector.store._connector_space import ConnectorSpace

pytestmark = pytest.mark.slow


@pytest.fixture
def tenant() -> Iterator[GraphEmulator]:
    with GraphEmulator(EmulatorConfig(users=12, photo_ratio=0.5, seed=23, delegated_scopes=DEMO_SCOPES)) as emu:
        yield emu


def _transparent_png() -> bytes:
    """A 96x96 PNG (an HD size, so Graph serves the stored picture) whose corners are transparent."""
    image = Image.new("RGBA", (96, 96), (0, 0, 0, 0))
    image.paste((200, 30, 30, 255), (24, 24, 72, 72))
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def _gif() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (96, 96), (30, 160, 60)).save(out, "GIF")
    return out.getvalue()


def test_png_and_gif_photos_are_staged_as_they_are_and_reach_ad_as_jpeg(tenant: GraphEmulator, tmp_path: Path) -> None:
    """Before: the PNG and the GIF were staged in ``EXOPhoto``, which the agent's schema called JPEG, and
    nothing in the connector space said otherwise. Now ``EXOPhotoContentType`` says what the bytes are,
    the metaverse keeps the picture as served, and AD's ``thumbnailPhoto`` is a 96x96 JPEG (transparent
    corners flattened on white, not black)."""
    cloud = [u for u in tenant.admin.users() if u["mailbox"] == "cloud" and u["mail"]]
    png_user, gif_user, jpeg_user = cloud[1], cloud[2], next(u for u in cloud[3:] if u["hasPhoto"])
    served = {png_user["id"]: _transparent_png(), gif_user["id"]: _gif()}
    for user_id, data in served.items():
        tenant.admin.set_photo(user_id, data)
    users = tenant.admin.users()
    scenario = prepare_scenario(tmp_path, tenant.info, users, fallbacks=0)
    engine = Engine(load_config(scenario.config_path))
    try:
        result = engine.run_profile("Full Cycle")
        assert result.status == "success", result.as_dict()
        with engine.store.read() as conn:
            held = {o.anchor: json.loads(o.hologram or "{}") for o in ConnectorSpace(conn).objects("exo")}
    finally:
        engine.close()
    assert held[png_user["id"]]["EXOPhotoContentType"] == "image/png"
    assert held[gif_user["id"]]["EXOPhotoContentType"] == "image/gif"
    assert held[jpeg_user["id"]]["EXOPhotoContentType"] == "image/jpeg"
    assert scenario.snapshot is not None
    thumbnails = {str(e["sAMAccountName"]): e.get("thumbnailPhoto") for e in read_ldif(scenario.snapshot)}
    for user in (png_user, gif_user, jpeg_user):
        image = Image.open(io.BytesIO(thumbnails[user["mailNickname"]] or b""))
        assert (image.format, image.size) == ("JPEG", (96, 96)), user["mailNickname"]
    corner = Image.open(io.BytesIO(thumbnails[png_user["mailNickname"]] or b"")).convert("RGB").getpixel((2, 2))
    assert isinstance(corner, tuple) and min(corner) > 230, corner  # white, not the transparent pixels' black
