"""Synthetic profile photos: real JPEG/PNG bytes rendered with Pillow, lazily and shared.

Rendering a 2,000 px original costs ~0.1 s, so the tenant renders a small pool of templates on first
use and gives every user its own bytes by splicing a marker into the file (a JPEG COM segment or a
PNG tEXt chunk): pixels are shared, bytes, hashes and ETags are per user. Sized variants follow
Exchange: only the HD sizes at or below the original exist, re-encoded as JPEG.
"""

from __future__ import annotations

import io
import random
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from statistics import NormalDist

from PIL import Image, ImageDraw

__all__ = ["HD_SIZES", "PhotoTemplates", "TemplateSpec", "available_sizes", "reencode_jpeg", "splice_marker"]

#: Exchange Online HD photo sizes (profilephoto-get.md).
HD_SIZES = (48, 64, 96, 120, 240, 360, 432, 504, 648)


@dataclass(frozen=True)
class TemplateSpec:
    width: int
    height: int
    fmt: str  # "JPEG" | "PNG"
    quality: int
    seed: int

    @property
    def content_type(self) -> str:
        return "image/png" if self.fmt == "PNG" else "image/jpeg"


def available_sizes(width: int, height: int) -> list[int]:
    """HD sizes at or below the original ("all but the 648x648 size" for a 504 px upload)."""
    return [s for s in HD_SIZES if s <= min(width, height)]


def splice_marker(data: bytes, marker: bytes) -> bytes:
    """Bytes of the same image carrying ``marker`` (JPEG COM segment or PNG tEXt chunk)."""
    if data[:2] == b"\xff\xd8":
        return data[:2] + b"\xff\xfe" + struct.pack(">H", len(marker) + 2) + marker + data[2:]
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        body = b"tEXt" + b"Comment\x00" + marker
        chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
        return data[:33] + chunk + data[33:]  # after the signature and IHDR
    return data


def _square(image: Image.Image, size: int) -> Image.Image:
    w, h = image.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    cropped = image.crop((left, top, left + side, top + side))
    if side > 2 * size:
        cropped.draft("RGB", (size, size))
    return cropped.resize((size, size), Image.Resampling.LANCZOS)


def reencode_jpeg(data: bytes, size: int | None = None, quality: int = 90) -> tuple[bytes, int, int]:
    """Decode any image and save it as a metadata-free JPEG (what Exchange does on upload)."""
    with Image.open(io.BytesIO(data)) as source:
        if size is not None and source.format == "JPEG":
            source.draft("RGB", (size, size))
        image = source.convert("RGB")
    if size is not None:
        image = _square(image, size)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=quality, optimize=False)
    return out.getvalue(), image.width, image.height


def image_dimensions(data: bytes) -> tuple[int, int, str]:
    """Width, height and content type; raises ValueError for bytes that are not an image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            fmt = image.format
            w, h = image.size
    except Exception as exc:  # Pillow raises many types for garbage
        raise ValueError(f"not an image: {exc}") from None
    content_type = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif"}.get(fmt or "", "image/jpeg")
    return w, h, content_type


def _noise(rng: random.Random, size: tuple[int, int], sigma: float) -> Image.Image:
    """Gaussian grey noise drawn from ``rng``.

    Not ``Image.effect_noise``: that draws from the C library's ``rand()``, so two renders of one
    spec differed, and a photo served twice (a retry, a second emulator) changed its bytes.
    """
    dist = NormalDist(128, sigma)
    table = [max(0, min(255, round(dist.inv_cdf((u + 0.5) / 256)))) for u in range(256)]
    return Image.frombytes("L", size, rng.randbytes(size[0] * size[1])).point(table)


def _render(spec: TemplateSpec) -> bytes:
    rng = random.Random(spec.seed)
    w, h = spec.width, spec.height
    # Background: a colourised gradient, then a head-and-shoulders silhouette.
    top = tuple(rng.randrange(40, 230) for _ in range(3))
    bottom = tuple(rng.randrange(10, 200) for _ in range(3))
    grad = Image.linear_gradient("L").resize((w, h))
    image = Image.merge(
        "RGB",
        [grad.point(lambda v, a=a, b=b: a + (b - a) * v // 255) for a, b in zip(top, bottom, strict=True)],
    )
    draw = ImageDraw.Draw(image)
    skin = (rng.randrange(120, 250), rng.randrange(90, 200), rng.randrange(60, 170))
    cloth = tuple(rng.randrange(0, 255) for _ in range(3))
    cx, unit = w // 2 + rng.randrange(-w // 12, w // 12 + 1), min(w, h)
    draw.ellipse((cx - unit * 0.42, h * 0.72, cx + unit * 0.42, h * 1.4), fill=cloth)
    draw.ellipse((cx - unit * 0.2, h * 0.2, cx + unit * 0.2, h * 0.2 + unit * 0.5), fill=skin)
    for _ in range(rng.randrange(3, 8)):
        x, y, r = rng.randrange(w), rng.randrange(h), rng.randrange(unit // 30 + 1, unit // 8 + 2)
        draw.ellipse((x - r, y - r, x + r, y + r), fill=tuple(rng.randrange(255) for _ in range(3)))
    if spec.fmt == "JPEG":
        # Low-resolution noise, scaled up: texture like a camera's, at a realistic file size.
        noise = _noise(rng, (max(1, w // 3), max(1, h // 3)), rng.uniform(12, 30)).resize((w, h))
        image = Image.blend(image, Image.merge("RGB", [noise] * 3), 0.12)
    out = io.BytesIO()
    if spec.fmt == "PNG":
        image.save(out, "PNG", optimize=False, compress_level=6)
    else:
        image.save(out, "JPEG", quality=spec.quality)
    return out.getvalue()


# Rendered bytes are a pure function of the spec, so emulators in one process share them.
_ORIGINALS: dict[TemplateSpec, bytes] = {}
_VARIANTS: dict[tuple[TemplateSpec, int], bytes] = {}


class PhotoTemplates:
    """A deterministic pool of rendered originals and their sized JPEG variants (cached)."""

    def __init__(self, seed: int, count: int) -> None:
        rng = random.Random(f"photos:{seed}")
        self.specs = [self._spec(rng) for _ in range(max(1, count))]

    @staticmethod
    def _spec(rng: random.Random) -> TemplateSpec:
        kind = rng.random()
        if kind < 0.18:  # large camera originals
            side = rng.randrange(1200, 2001)
            w, h = (side, side) if rng.random() < 0.5 else (side, side * 4 // 3)
            spec = (w, h, "JPEG", rng.choice((82, 88, 92)))
        elif kind < 0.55:  # the usual HD 648
            spec = (648, 648, "JPEG", rng.choice((85, 90)))
        elif kind < 0.75:  # smaller uploads
            side = rng.choice((96, 120, 240, 360, 432, 504))
            spec = (side, side, "JPEG", 85)
        elif kind < 0.9:  # PNG avatars
            side = rng.choice((240, 360, 648, 800))
            spec = (side, side, "PNG", 0)
        else:  # landscape crops
            spec = (800, 600, "JPEG", 85)
        return TemplateSpec(spec[0], spec[1], str(spec[2]), int(spec[3]), rng.getrandbits(32))

    def cached_original(self, index: int) -> bytes | None:
        return _ORIGINALS.get(self.specs[index])

    def cached_variant(self, index: int, size: int) -> bytes | None:
        return _VARIANTS.get((self.specs[index], size))

    def original(self, index: int) -> bytes:
        """Render on first use (thread-safe enough: a race renders the same bytes twice)."""
        spec = self.specs[index]
        data = _ORIGINALS.get(spec)
        if data is None:
            data = _ORIGINALS[spec] = _render(spec)
        return data

    def warm(self, sizes: Iterable[int]) -> int:
        """Render every original and its ``sizes`` variants now; return how many images were made.

        Graph serves stored photos; this pool renders on first use, several seconds of CPU on the
        machine the client under test shares. A benchmark warms the pool before it measures.
        """
        wanted = sorted(set(sizes))
        made = 0
        for index, spec in enumerate(self.specs):
            for size in (s for s in wanted if s in available_sizes(spec.width, spec.height)):
                made += (spec, size) not in _VARIANTS
                self.variant(index, size)
        return made

    def variant(self, index: int, size: int) -> bytes:
        key = (self.specs[index], size)
        data = _VARIANTS.get(key)
        if data is None:
            data = _VARIANTS[key] = reencode_jpeg(self.original(index), size)[0]
        return data
