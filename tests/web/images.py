"""Small real images (JPEG, PNG, GIF) for the console tests: browsers must be able to decode them."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw

__all__ = ["image_bytes"]


def image_bytes(seed: int, size: int = 96, fmt: str = "JPEG") -> bytes:
    """A distinct ``size``x``size`` image for ``seed`` (a coloured square with a diagonal)."""
    color = ((seed * 67) % 256, (seed * 131 + 40) % 256, (seed * 29 + 90) % 256)
    image = Image.new("RGB", (size, size), color)
    ImageDraw.Draw(image).line((0, 0, size, size), fill=(255, 255, 255), width=max(1, size // 12))
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()
