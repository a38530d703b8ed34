"""Generators for the test image corpus: ordinary photos and every odd kind the pipeline must handle.

Images are generated, not committed, so each test says exactly what its input is.
"""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

from connector.bench.thumbnails import synthetic_photo

RED = (220, 30, 30)
BLUE = (30, 30, 220)
GREEN = (30, 200, 30)


def encode(image: Image.Image, fmt: str = "JPEG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def photo(seed: int = 0, size: int = 648, *, noise: float = 4.0, quality: int = 88) -> bytes:
    """A reproducible photo-like JPEG (the benchmark's generator): about 70-110 KB at 648x648."""
    return synthetic_photo(seed, size, noise=noise, quality=quality)


def cut_then_closed(data: bytes, fraction: float = 0.5) -> bytes:
    """A JPEG cut ``fraction`` of the way through its scan data, with the end-of-image marker put back:
    what a copy tool or an upload handler that closes what it wrote leaves of a copy cut short."""
    scan = data.rindex(b"\xff\xda")
    return data[: scan + int((len(data) - scan) * fraction)] + b"\xff\xd9"


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
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")
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
