"""The normalization pipeline on ordinary and odd images: size, bytes, colour, orientation, metadata."""

from __future__ import annotations

import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms

from connector.imaging import (
    CropMode,
    ImageDoesNotFitError,
    InputLimits,
    PhotoSpec,
    normalize,
)
from connector.imaging._decode import decode
from tests.imaging.images import BLUE, GREEN, RED, animated_gif, close, encode, halves, photo, pixel


def _open(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "JPEG"
    return image


def test_default_is_an_ad_thumbnail() -> None:
    result = normalize(photo(1))
    image = _open(result.data)
    assert image.size == (96, 96) == (result.width, result.height)
    assert image.mode == "RGB"
    assert len(result.data) <= 10_240
    assert result.crop == CropMode.CENTER
    assert result.quality == 90
    assert result.source.format == "JPEG" and (result.source.width, result.source.height) == (648, 648)


def test_metadata_is_stripped() -> None:
    exif = Image.Exif()
    exif[0x010F] = "Camera maker"  # Make
    exif[0x0112] = 1
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    source = encode(
        Image.open(io.BytesIO(photo(2))),
        "JPEG",
        exif=exif,
        icc_profile=srgb,
        comment=b"secret",
        dpi=(300, 300),
    )
    image = _open(normalize(source).data)
    assert "exif" not in image.info and "icc_profile" not in image.info and "comment" not in image.info
    assert len(image.getexif()) == 0


def test_same_input_same_bytes() -> None:
    source = photo(3)
    outputs = {normalize(source, PhotoSpec()).data for _ in range(3)}
    assert len(outputs) == 1
    face = PhotoSpec(crop=CropMode.FACE)
    assert normalize(source, face).data == normalize(source, face).data


def test_draft_mode_decodes_a_quarter_of_the_pixels() -> None:
    decoded = decode(photo(4), InputLimits(), min_side=96)
    assert decoded.image.size == (162, 162)
    assert decoded.scale == 0.25
    assert decode(photo(4), InputLimits(), min_side=400).image.size == (648, 648)


@pytest.mark.parametrize("max_bytes", [1200, 1800, 2500])
def test_max_bytes_is_respected_by_lowering_quality(max_bytes: int) -> None:
    noisy = photo(5, noise=60, quality=95)
    result = normalize(noisy, PhotoSpec(max_bytes=max_bytes, min_quality=5))
    assert len(result.data) <= max_bytes
    assert result.quality < 90
    # the search keeps the best quality that fits: the next quality up does not fit
    higher = PhotoSpec(max_bytes=4_000_000, min_quality=result.quality + 1, max_quality=result.quality + 1)
    assert len(normalize(noisy, higher).data) > max_bytes


def test_cannot_fit_is_a_typed_error() -> None:
    with pytest.raises(ImageDoesNotFitError, match="max_bytes=1,024"):
        normalize(photo(7, noise=80, quality=95), PhotoSpec(size=256, max_bytes=1024, min_quality=90))


def test_never_upscales_unless_asked() -> None:
    small = encode(Image.new("RGB", (50, 40), GREEN), "PNG")
    result = normalize(small)
    assert (result.width, result.height) == (40, 40) == _open(result.data).size
    assert any("not upscaled" in note for note in result.notes)
    upscaled = normalize(small, PhotoSpec(upscale=True))
    assert _open(upscaled.data).size == (96, 96)


def test_centre_crop_of_a_wide_image() -> None:
    image = Image.new("RGB", (300, 100), RED)
    image.paste(GREEN, (100, 0, 200, 100))
    image.paste(BLUE, (200, 0, 300, 100))
    result = normalize(encode(image, "PNG"))
    data = result.data
    assert close(pixel(data, (3, 48)), GREEN) and close(pixel(data, (92, 48)), GREEN)


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_orientation_is_applied(orientation: int) -> None:
    # Stored landscape: left red, right blue. Shown upright, 6 (rotate CW) puts red on top, 8 on the
    # bottom; 3 (180 degrees) swaps left and right.
    stored = halves((800, 400), RED, BLUE, vertical=True)
    exif = Image.Exif()
    exif[0x0112] = orientation
    result = normalize(encode(stored, "JPEG", exif=exif, quality=95))
    top, bottom, left, right = (pixel(result.data, xy) for xy in ((48, 5), (48, 90), (5, 48), (90, 48)))
    if orientation == 6:
        assert close(top, RED) and close(bottom, BLUE)
    elif orientation == 8:
        assert close(top, BLUE) and close(bottom, RED)
    else:
        assert close(left, BLUE) and close(right, RED)


def test_cmyk_jpeg() -> None:
    cmyk = Image.new("CMYK", (200, 200), (0, 255, 255, 0))  # pure red in CMYK
    result = normalize(encode(cmyk, "JPEG", quality=95))
    assert result.source.mode == "CMYK"
    assert close(pixel(result.data), (255, 0, 0), 50)


def test_palette_png() -> None:
    palette = Image.new("RGB", (150, 150), BLUE).convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    result = normalize(encode(palette, "PNG"))
    assert result.source.mode == "P"
    assert close(pixel(result.data), BLUE)


def test_palette_transparency_is_flattened_on_white() -> None:
    image = Image.new("P", (120, 120), 0)
    image.putpalette([*RED, *BLUE] + [0] * 762)
    image.paste(1, (0, 0, 60, 120))
    result = normalize(encode(image, "PNG", transparency=1))
    assert close(pixel(result.data, (10, 48)), (255, 255, 255), 10)
    assert close(pixel(result.data, (85, 48)), RED)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_is_flattened_on_white(mode: str) -> None:
    image = Image.new("RGBA", (200, 200), (0, 0, 0, 0))
    image.paste((0, 0, 0, 255), (100, 0, 200, 200))
    source = encode(image.convert(mode), "PNG")
    result = normalize(source)
    assert close(pixel(result.data, (10, 48)), (255, 255, 255), 10)
    assert close(pixel(result.data, (85, 48)), (0, 0, 0), 10)
    assert any("white" in note for note in result.notes)


def test_sixteen_bit_greyscale() -> None:
    image = Image.new("I;16", (128, 128), 40000)
    result = normalize(encode(image, "PNG"))
    assert result.source.mode.startswith("I")
    value = pixel(result.data)
    assert close(value, (156, 156, 156), 4)


def test_greyscale_jpeg_becomes_rgb() -> None:
    grey = Image.new("L", (300, 300), 90)
    result = normalize(encode(grey, "JPEG"))
    image = _open(result.data)
    assert image.mode == "RGB"
    assert close(pixel(result.data), (90, 90, 90), 3)


def test_bilevel_and_float_images() -> None:
    assert normalize(encode(Image.new("1", (100, 100), 1), "PNG")).width == 96
    floating = Image.new("F", (100, 100), 0.5)
    floating.paste(1.0, (0, 0, 50, 100))
    assert normalize(encode(floating, "TIFF")).width == 96


def test_animated_gif_uses_first_frame() -> None:
    result = normalize(animated_gif([RED, BLUE, GREEN]))
    assert result.source.animated
    assert close(pixel(result.data), RED)
    assert any("first frame" in note for note in result.notes)


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "TIFF", "WEBP"])
def test_other_supported_formats(fmt: str) -> None:
    result = normalize(encode(Image.new("RGB", (200, 160), GREEN), fmt))
    assert result.source.format == fmt and result.width == 96
    assert close(pixel(result.data), GREEN)


def test_unreadable_icc_profile_is_ignored_with_a_note() -> None:
    source = encode(Image.new("RGB", (120, 120), RED), "JPEG", icc_profile=b"not really a profile" * 4)
    result = normalize(source)
    assert close(pixel(result.data), RED)
    assert any("ICC" in note for note in result.notes)


def test_exchange_photo() -> None:
    big = encode(Image.open(io.BytesIO(photo(8, size=1200))), "PNG")
    result = normalize(big, PhotoSpec(size=648, max_bytes=4_000_000))
    assert _open(result.data).size == (648, 648)
    assert len(result.data) < 4_000_000


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    width=st.integers(1, 400),
    height=st.integers(1, 400),
    mode=st.sampled_from(["RGB", "L", "RGBA", "P", "CMYK", "LA", "1"]),
    fmt=st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "TIFF"]),
    size=st.sampled_from([16, 48, 96, 120]),
)
def test_any_image_gives_a_square_jpeg_within_bounds(width: int, height: int, mode: str, fmt: str, size: int) -> None:
    image = Image.effect_noise((width, height), 50).convert(mode)
    try:
        source = encode(image, fmt)
    except (OSError, ValueError):  # this format cannot store this mode
        source = encode(image.convert("RGB"), fmt)
    spec = PhotoSpec(size=size, max_bytes=4096, min_quality=5)
    result = normalize(source, spec)
    out = _open(result.data)
    assert out.width == out.height <= size
    assert out.width == min(size, width, height)
    assert len(result.data) <= 4096
