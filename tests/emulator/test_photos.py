"""Profile photo routes: metadata, bytes, sizes, upload, delete, and every documented error shape."""

from __future__ import annotations

import io
from collections.abc import Callable

import pytest
from PIL import Image

from connector.emulator import HD_SIZES, GraphEmulator
from tests.emulator.conftest import Api, make_api

FAST_PROFILE = "Exception of type 'Microsoft.Fast.Profile.Core.Exception.ImageNotFoundException' was thrown."


def _image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _jpeg(size: int = 300, color: str = "red", fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), color).save(out, fmt)
    return out.getvalue()


def test_metadata_value_and_sizes(session_api: Api) -> None:
    users = [u for u in session_api.emu.admin.users() if u["hasPhoto"] and u["mailbox"] == "cloud"]
    checked_large = checked_png = False
    for user in users[:40]:
        width, height = user["photo"]["width"], user["photo"]["height"]
        meta = session_api.get(f"/users/{user['id']}/photo")
        assert meta.status_code == 200
        body = meta.json()
        assert body["@odata.context"].endswith(f"/$metadata#users('{user['id']}')/photo/$entity")
        assert (body["width"], body["height"]) == (width, height)
        assert body["@odata.mediaEtag"].startswith('"') and body["@odata.mediaEtag"].endswith('"')
        value = session_api.get(f"/users/{user['userPrincipalName']}/photo/$value")
        assert value.status_code == 200
        assert value.headers["Content-Type"] == body["@odata.mediaContentType"]
        assert value.headers["ETag"].startswith('W/"')
        image = _image(value.content)
        assert image.size == (width, height)
        listing = session_api.get(f"/users/{user['id']}/photos").json()["value"]
        sizes = [e["id"] for e in listing]
        expected = [f"{s}x{s}" for s in HD_SIZES if s <= min(width, height)]
        assert sizes[: len(expected)] == expected
        assert all(e["@odata.mediaEtag"] == body["@odata.mediaEtag"] for e in listing)
        if expected:
            small = session_api.get(f"/users/{user['id']}/photos/{expected[0].upper()}/$value")
            assert small.headers["Content-Type"] == "image/jpeg"
            assert _image(small.content).size == (48, 48)
        if min(width, height) < 648:
            assert session_api.get(f"/users/{user['id']}/photos/648x648/$value").status_code == 404
        checked_large |= width >= 1200
        checked_png |= value.headers["Content-Type"] == "image/png"
    assert checked_large and checked_png


def test_bytes_are_per_user(session_api: Api) -> None:
    users = [u for u in session_api.emu.admin.users() if u["hasPhoto"] and u["mailbox"] == "cloud"][:30]
    blobs = {session_api.get(f"/users/{u['id']}/photo/$value").content for u in users}
    assert len(blobs) == len(users)
    assert (
        session_api.emu.admin.get_photo(users[0]["id"])
        == session_api.get(f"/users/{users[0]['id']}/photo/$value").content
    )


def test_no_photo_unknown_user_and_onprem(session_api: Api) -> None:
    no_photo = session_api.user(lambda u: not u["hasPhoto"] and u["mailbox"] == "cloud")
    for suffix in ("/photo", "/photo/$value", "/photos", "/photos/48x48/$value"):
        resp = session_api.get(f"/users/{no_photo['id']}{suffix}")
        assert resp.status_code == 404
        assert resp.json()["error"]["code"] == "ImageNotFound"
        assert resp.json()["error"]["message"] == FAST_PROFILE
    unknown = session_api.get("/users/ghost@contoso.example/photo/$value")  # the user is gone, not photo-less
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "Request_ResourceNotFound"
    assert unknown.json()["error"]["message"].startswith("Resource 'ghost@contoso.example' does not exist")
    onprem = session_api.user(lambda u: u["mailbox"] == "on-premises")
    resp = session_api.get(f"/users/{onprem['id']}/photo/$value")
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "MailboxNotHostedInExchangeOnline"
    nobox = session_api.user(lambda u: u["mailbox"] == "none" and u["hasPhoto"])
    assert session_api.get(f"/users/{nobox['id']}/photo/$value").status_code == 200  # Entra-stored photo


@pytest.mark.parametrize(
    ("variant", "code", "message"),
    [
        ("ErrorItemNotFound", "ErrorItemNotFound", "The photo wasn't found."),
        ("ErrorEntityNotFound", "ErrorEntityNotFound", FAST_PROFILE),
        (
            "ImageNotFoundPeople",
            "ImageNotFound",
            "Exception of type 'Microsoft.People.Image.Common.Exceptions.ImageNotFoundException' was thrown.",
        ),
    ],
)
def test_no_photo_variants(
    graph_emulator_factory: Callable[..., GraphEmulator], variant: str, code: str, message: str
) -> None:
    api = make_api(graph_emulator_factory(photo_ratio=0.0, no_photo_variant=variant))
    user = api.emu.admin.users()[0]
    error = api.get(f"/users/{user['id']}/photo/$value").json()["error"]
    assert (error["code"], error["message"]) == (code, message)


def test_deleted_user_photo_is_resource_not_found(api: Api) -> None:
    user = api.user(lambda u: u["mailbox"] == "cloud" and u["hasPhoto"])
    api.emu.admin.delete_user(user["id"])
    for suffix in ("/photo", "/photo/$value", "/photos/48x48/$value"):
        error = api.get(f"/users/{user['id']}{suffix}").json()["error"]
        assert error["code"] == "Request_ResourceNotFound" and user["id"] in error["message"]
    batch = api.batch([{"id": "1", "method": "GET", "url": f"/users/{user['id']}/photo"}]).json()
    assert batch["responses"][0]["status"] == 404
    assert batch["responses"][0]["body"]["error"]["code"] == "Request_ResourceNotFound"


def test_unknown_user_photo_as_image_not_found(graph_emulator_factory: Callable[..., GraphEmulator]) -> None:
    """The other reading of the sources (module docstring of connector/emulator/_graph.py) stays available."""
    api = make_api(graph_emulator_factory(users=5, unknown_user_photo="ImageNotFound"))
    user = api.emu.admin.users()[0]
    api.emu.admin.delete_user(user["id"])
    for url in ("/users/ghost@contoso.example/photo", f"/users/{user['id']}/photo/$value"):
        assert api.get(url).json()["error"]["code"] == "ImageNotFound"


def test_legacy_1x1_and_no_mailbox_error(graph_emulator_factory: Callable[..., GraphEmulator]) -> None:
    api = make_api(
        graph_emulator_factory(users=60, photo_ratio=0.0, no_photo_variant="legacy-1x1", no_mailbox_photo="error")
    )
    user = api.emu.admin.users()[0]
    meta = api.get(f"/users/{user['id']}/photo").json()
    assert (meta["id"], meta["@odata.mediaContentType"], meta["@odata.mediaEtag"]) == ("1x1", "image/gif", "")
    assert api.get(f"/users/{user['id']}/photo/$value").status_code == 404
    nobox = api.user(lambda u: u["mailbox"] == "none")
    resp = api.get(f"/users/{nobox['id']}/photo/$value")
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "AuthenticationError"


def test_upload_reencodes_and_changes_etag(api: Api) -> None:
    user = api.user(lambda u: u["mailbox"] == "cloud" and u["hasPhoto"])
    before = api.get(f"/users/{user['id']}/photo/$value").headers["ETag"]
    png = _jpeg(700, "blue", "PNG")
    put = api.request("PUT", f"/users/{user['id']}/photo/$value", data=png, headers={"Content-Type": "image/png"})
    assert put.status_code == 200 and put.content == b""
    after = api.get(f"/users/{user['id']}/photo/$value")
    assert after.headers["Content-Type"] == "image/jpeg" and after.content != png
    assert _image(after.content).size == (700, 700)
    assert after.headers["ETag"] != before
    again = api.request("PATCH", f"/users/{user['id']}/photo/$value", data=png, headers={"Content-Type": "image/png"})
    assert again.status_code == 200
    assert api.get(f"/users/{user['id']}/photo/$value").headers["ETag"] != after.headers["ETag"]  # same bytes
    sizes = [e["id"] for e in api.get(f"/users/{user['id']}/photos").json()["value"]]
    assert sizes[-2:] == ["648x648", "700x700"]  # HD sizes, then the original


def test_upload_errors(api: Api) -> None:
    user = api.user(lambda u: u["mailbox"] == "cloud")
    url = f"/users/{user['id']}/photo/$value"
    assert api.request("PUT", url, data=b"GIF89a", headers={"Content-Type": "image/gif"}).status_code == 415
    # what the SDKs send (application/octet-stream): the bytes decide, as in Graph
    assert (
        api.request("PUT", url, data=_jpeg(), headers={"Content-Type": "application/octet-stream"}).status_code == 200
    )
    octet_junk = api.request("PUT", url, data=b"not an image", headers={"Content-Type": "application/octet-stream"})
    assert octet_junk.status_code == 400 and octet_junk.json()["error"]["code"] == "ErrorInvalidImage"
    big = api.request("PUT", url, data=b"\xff" * (4 * 1024 * 1024 + 1), headers={"Content-Type": "image/jpeg"})
    assert big.status_code == 413
    junk = api.request("PUT", url, data=b"not an image", headers={"Content-Type": "image/jpeg"})
    assert junk.status_code == 400
    onprem = api.user(lambda u: u["mailbox"] == "on-premises")
    resp = api.request(
        "PUT", f"/users/{onprem['id']}/photo/$value", data=_jpeg(), headers={"Content-Type": "image/jpeg"}
    )
    assert resp.json()["error"]["code"] == "MailboxNotHostedInExchangeOnline"


def test_delete_photo(api: Api) -> None:
    user = api.user(lambda u: u["mailbox"] == "cloud" and u["hasPhoto"])
    resp = api.request("DELETE", f"/users/{user['id']}/photo/$value")
    assert resp.status_code == 200
    assert api.get(f"/users/{user['id']}/photo").json()["error"]["code"] == "ImageNotFound"
    assert api.request("DELETE", f"/users/{user['id']}/photo/$value").status_code == 404


def test_admin_photo_changes_are_visible_at_once(api: Api) -> None:
    user = api.user(lambda u: u["mailbox"] == "cloud" and not u["hasPhoto"])
    data = _jpeg(1500, "green")
    api.emu.admin.set_photo(user["userPrincipalName"], data)
    resp = api.get(f"/users/{user['id']}/photo/$value")
    assert resp.content == data  # admin uploads are stored as given
    assert _image(api.get(f"/users/{user['id']}/photos/96x96/$value").content).size == (96, 96)
    assert api.emu.admin.delete_photo(user["id"]) is True
    assert api.get(f"/users/{user['id']}/photo/$value").status_code == 404
    with pytest.raises(ValueError):
        api.emu.admin.set_photo(user["id"], b"junk")


def test_warming_renders_each_template_once_at_the_sizes_it_has() -> None:
    """A benchmark warms the pool so its clock never waits for rendering (Graph's photos are stored)."""
    from connector.emulator._photos import PhotoTemplates, available_sizes

    templates = PhotoTemplates(seed=99_001, count=6)
    expected = sum(648 in available_sizes(s.width, s.height) for s in templates.specs)
    assert templates.warm([648]) == expected
    assert templates.warm([648]) == 0  # cached: nothing left to render
    for index, spec in enumerate(templates.specs):
        if 648 in available_sizes(spec.width, spec.height):
            assert templates.cached_variant(index, 648) is not None


def test_cli_serve_rejects_bad_warm_sizes() -> None:
    import subprocess
    import sys

    cmd = [sys.executable, "-c", "from connector.cli import main; main()", "emulator", "serve", "--warm-sizes", "big"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "HD photo sizes" in proc.stderr and "not big" in proc.stderr
