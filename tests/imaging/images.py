"""Generators for the test image corpus: ordinary photos and every odd kind the pipeline must handle.

Images are generated, not committed, so each test says exactly what its input is.
"""

from __future__ import annotations

import io
import random
import struct
import zlib

from PIL import Image, ImageChops, ImageDraw, ImageFilter

RED = (220, 30, 30)
BLUE = (30, 30, 220)
GREEN = (30, 200, 30)


def encode(image: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def photo(seed: int = 0, size: int = 648, *, noise: float = 4.0, quality: int = 88) -> bytes:
    """A photo-like JPEG: blurred shapes on a gradient with sensor-like noise (about 70 KB at 648)."""
    rng = random.Random(seed)
    small = max(8, size // 4)
    base = Image.linear_gradient("L").resize((small, small)).rotate(rng.uniform(0, 360))
    image = Image.merge(
        "RGB",
        [base.point(lambda v, a=rng.uniform(0.3, 1), b=rng.randint(0, 80): int(v * a + b)) for _ in range(3)],
    )
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(4, 10)):
        x, y = rng.randint(-small // 6, small), rng.randint(-small // 6, small)
        draw.ellipse(
            (
                x,
                y,
                x + rng.randint(small // 10, small * 2 // 3),
                y + rng.randint(small // 10, small * 2 // 3),
            ),
            fill=(rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255)),
        )
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2))).resize(
        (size, size), Image.Resampling.BICUBIC
    )
    if noise:
        image = ImageChops.add(image, seeded_noise(rng, (size, size), noise).convert("RGB"), offset=-128)
    return encode(image, "JPEG", quality=quality)


def seeded_noise(rng: random.Random, size: tuple[int, int], amplitude: float) -> Image.Image:
    """Grey noise centred on 128, reproducible from ``rng`` (Pillow's effect_noise is not seedable)."""
    raw = Image.frombytes("L", size, rng.randbytes(size[0] * size[1]))
    return raw.point(lambda v: 128 + (v - 128) * amplitude / 64)


def halves(
    size: tuple[int, int], first: tuple[int, int, int], second: tuple[int, int, int], *, vertical: bool
) -> Image.Image:
    """Left/right (vertical=True) or top/bottom halves in two colours."""
    image = Image.new("RGB", size, first)
    width, height = size
    box = (width // 2, 0, width, height) if vertical else (0, height // 2, width, height)
    image.paste(second, box)
    return image


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels but holds almost no data: a pixel bomb."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def heic_like() -> bytes:
    """The start of an HEIC file (an ISO-BMFF ``ftyp`` box with the ``heic`` brand)."""
    return struct.pack(">I", 24) + b"ftypheic" + b"\x00\x00\x00\x00" + b"mif1heic" + b"\x00" * 64


def animated_gif(colours: list[tuple[int, int, int]], size: int = 120) -> bytes:
    frames = [Image.new("RGB", (size, size), colour) for colour in colours]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def pixel(data: bytes, xy: tuple[int, int] | None = None) -> tuple[int, ...]:
    """The RGB value at ``xy`` (default: centre) of an encoded image."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    if xy is None:
        xy = (image.width // 2, image.height // 2)
    value = image.getpixel(xy)
    assert isinstance(value, tuple)
    return value


def close(actual: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 40) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))
