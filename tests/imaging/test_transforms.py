"""The ``thumbnail`` and ``hd_photo`` flow transforms: the factory contract of connector.sdk."""

from __future__ import annotations

import io
from importlib.metadata import entry_points

import pytest
from PIL import Image

from connector.imaging.transforms import hd_photo_transform, thumbnail_transform
from connector.sdk import ConfigurationError, TransformError
from tests.imaging.images import encode, photo


def _size(data: object) -> tuple[int, int]:
    assert isinstance(data, bytes)
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    return image.size


def test_thumbnail_defaults() -> None:
    apply = thumbnail_transform()
    out = apply(photo(1))
    assert _size(out) == (96, 96)
    assert isinstance(out, bytes) and len(out) <= 10_240


def test_thumbnail_with_config_params() -> None:
    out = thumbnail_transform(size=48, max_bytes=10240)(photo(2))
    assert _size(out) == (48, 48)
    assert thumbnail_transform(size="48", max_bytes="10 KB")(photo(2)) == out
    assert thumbnail_transform(size=48, max_bytes="10KB")(photo(2)) == out


def test_none_passes_through() -> None:
    assert thumbnail_transform()(None) is None
    assert hd_photo_transform()(None) is None


def test_deterministic() -> None:
    apply = thumbnail_transform(size=96, max_bytes=10240)
    source = photo(3)
    assert apply(source) == apply(source) == thumbnail_transform(size=96, max_bytes=10240)(source)


def test_bad_image_is_a_transform_error() -> None:
    with pytest.raises(TransformError) as caught:
        thumbnail_transform()(b"this is not a photo")
    assert caught.value.name == "invalid-image"
    assert caught.value.detail.startswith("not-an-image:")
    with pytest.raises(TransformError, match="empty-image"):
        thumbnail_transform()(b"")


def test_non_binary_value_is_a_transform_error() -> None:
    with pytest.raises(TransformError) as caught:
        thumbnail_transform()("jdoe.jpg")
    assert caught.value.name == "invalid-attribute-value"


@pytest.mark.parametrize(
    ("params", "key"),
    [
        ({"size": 0}, "size"),
        ({"max_bytes": 200_000}, "max_bytes"),
        ({"max_bytes": "lots"}, "max_bytes"),
        ({"sise": 96}, "sise"),
        ({"crop": "top"}, "crop"),
    ],
)
def test_bad_params_are_configuration_errors(params: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        thumbnail_transform(**params)
    assert caught.value.key == key


def test_ad_limit_is_the_ceiling() -> None:
    assert _size(thumbnail_transform(max_bytes=102_400)(photo(4))) == (96, 96)
    with pytest.raises(ConfigurationError, match="102,400"):
        thumbnail_transform(max_bytes=102_401)


def test_hd_photo() -> None:
    big = encode(Image.open(io.BytesIO(photo(5, size=1000))), "PNG")
    out = hd_photo_transform(size=648)(big)
    assert _size(out) == (648, 648)
    assert isinstance(out, bytes) and len(out) < 4_000_000
    assert hd_photo_transform()(big) == out
    with pytest.raises(ConfigurationError):
        hd_photo_transform(max_bytes="5 MB")


def test_registered_as_entry_points() -> None:
    group = {ep.name: ep for ep in entry_points(group="mvsync.transforms")}
    assert group["thumbnail"].load() is thumbnail_transform
    assert group["hd_photo"].load() is hd_photo_transform


def test_meets_spec_accepts_only_what_normalize_makes() -> None:
    """What a destination may send without encoding again: normalize's own output, not a photo that
    carries metadata (EXIF: rotation, location), is too large, not square or not a JPEG."""
    import io

    from PIL import Image

    from connector.imaging import PhotoSpec, meets_spec, normalize

    spec = PhotoSpec(size=96, max_bytes=10_240)
    with Image.effect_noise((200, 120), 60).convert("RGB") as source:  # noise: a JPEG well over 1 KB
        buffer = io.BytesIO()
        source.save(buffer, "JPEG")
        wide = buffer.getvalue()
        buffer = io.BytesIO()
        source.save(buffer, "PNG")
        png = buffer.getvalue()
    made = normalize(wide, spec).data
    assert meets_spec(made, spec)
    assert not meets_spec(made, PhotoSpec(size=64, max_bytes=10_240))  # larger than that size
    assert len(made) > 1025
    assert not meets_spec(made, PhotoSpec(size=96, max_bytes=len(made) - 1))  # more bytes than allowed
    assert not meets_spec(wide, spec)  # not square
    assert not meets_spec(png, spec)
    with Image.open(io.BytesIO(made)) as square:
        exif = Image.Exif()
        exif[0x0112] = 6  # Orientation: rotate 90 when shown
        buffer = io.BytesIO()
        square.save(buffer, "JPEG", exif=exif)
    assert not meets_spec(buffer.getvalue(), spec)
    assert not meets_spec(b"not an image", spec)
