"""The photo pipeline: untrusted bytes in, a small square JPEG that meets a ``PhotoSpec`` out.

decode (draft-scaled, upright, 8-bit) -> square crop (centre or face) -> one LANCZOS resize ->
JPEG with the best quality that fits ``max_bytes``. The output carries no metadata (no EXIF, no
ICC, no comments) and is byte-for-byte the same for the same input and spec, which the engine
relies on to cache transform results and to confirm exported values.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

from PIL import Image

from connector.imaging._decode import ImageInfo, decode, open_image
from connector.imaging._errors import ImageDoesNotFitError, ImageError
from connector.imaging._face import FaceBox, face_finder
from connector.imaging._spec import CropMode, PhotoSpec

__all__ = ["NormalizedPhoto", "encode_jpeg", "meets_spec", "normalize"]

#: For face crops, decode at least this many times the output size before looking for the face,
#: so that the crop around a face that fills a third of the picture still has enough pixels.
_FACE_DECODE_FACTOR = 3
#: Portraits look balanced with the face a little above the centre of the frame.
_FACE_DROP = 0.1


@dataclass(frozen=True, slots=True)
class NormalizedPhoto:
    """A normalized JPEG and how it was made.

    ``crop`` is the crop actually used; after a face-crop fallback it is ``center`` and
    ``fallback`` says why (that reason is in ``notes`` too). ``face`` is the detected face in
    upright source pixels.
    """

    data: bytes
    width: int
    height: int
    quality: int
    crop: CropMode
    source: ImageInfo
    face: FaceBox | None = None
    notes: tuple[str, ...] = ()
    fallback: str = ""


def normalize(data: bytes | bytearray | memoryview, spec: PhotoSpec | None = None) -> NormalizedPhoto:
    """Turn image bytes into a JPEG meeting ``spec``; raises an ``ImageError`` subclass for bad input."""
    spec = spec or PhotoSpec()
    want_face = spec.crop == CropMode.FACE
    decoded = decode(data, spec.limits, min_side=spec.size * (_FACE_DECODE_FACTOR if want_face else 1))
    notes = decoded.notes
    face: FaceBox | None = None
    fallback = ""
    if want_face:
        finder = face_finder()
        found = finder.find(decoded.image)
        if found is not None:
            face = found.scaled(1 / decoded.scale)
        else:
            reason = "no face found" if finder.available else finder.unavailable_reason
            fallback = f"{reason}; used a centre crop"
            notes.append(fallback)
    # A face crop is widened rather than shrunk below the output size when the picture allows it.
    least = 0 if spec.upscale else spec.size
    left, top, side = _crop_square(decoded.upright_size, face, spec.margin, least)
    if side * decoded.scale < spec.size and decoded.scale < 1.0:
        # A small face crop needs more pixels than the draft decode kept: decode again at full need.
        decoded = decode(data, spec.limits, min_side=math.ceil(spec.size * min(decoded.upright_size) / side))
        notes = [*notes, *(n for n in decoded.notes if n not in notes)]
    out = spec.size
    crop_pixels = side * decoded.scale
    if crop_pixels < spec.size and not spec.upscale:
        out = max(1, math.floor(crop_pixels + 1e-6))
        notes.append(f"source is smaller than {spec.size}x{spec.size}: kept {out}x{out}, not upscaled")
    s, image = decoded.scale, decoded.image
    box = (left * s, top * s, min((left + side) * s, image.width), min((top + side) * s, image.height))
    # After draft decoding the remaining reduction is under 2x, where bicubic matches LANCZOS to
    # 49+ dB (indistinguishable) at 60 % of the cost; larger reductions keep LANCZOS.
    reduction = (box[2] - box[0]) / out
    resample = Image.Resampling.BICUBIC if reduction <= 2.0 else Image.Resampling.LANCZOS
    image = image.resize((out, out), resample, box=box, reducing_gap=3.0)
    if image.mode != "RGB":
        image = image.convert("RGB")
    jpeg, quality = encode_jpeg(image, spec)
    return NormalizedPhoto(
        data=jpeg,
        width=out,
        height=out,
        quality=quality,
        crop=CropMode.FACE if face is not None else CropMode.CENTER,
        source=decoded.info,
        face=face,
        notes=tuple(notes),
        fallback=fallback,
    )


def meets_spec(data: bytes | bytearray | memoryview, spec: PhotoSpec) -> bool:
    """Whether ``data`` is already what ``normalize`` makes for ``spec``: a square JPEG of at most
    ``size`` pixels a side in ``max_bytes``, 8-bit RGB or grey, with no metadata (no EXIF, so no
    rotation and no location; no ICC profile, XMP or comment). Read from the header alone.

    A destination that must receive such a photo (Exchange Online's 648x648 in 4 MB) sends one that
    meets it as is: it usually comes from the ``hd_photo`` transform, and encoding it again would
    cost a second encode and lose quality for nothing.
    """
    if len(data) > spec.max_bytes:
        return False
    try:
        image, info = open_image(data, spec.limits)
    except ImageError:
        return False
    metadata = [marker for marker, _ in getattr(image, "applist", ()) if marker != "APP0"]  # APP0: JFIF header
    return (
        info.format == "JPEG"
        and info.width == info.height <= spec.size
        and info.mode in ("RGB", "L")
        and not metadata
        and not image.info.get("comment")
    )


def _crop_square(size: tuple[int, int], face: FaceBox | None, margin: int, least: int) -> tuple[float, float, float]:
    """(left, top, side) of the square to keep, in upright source pixels (at least ``least`` wide)."""
    width, height = size
    shorter = min(width, height)
    if face is None:
        return (width - shorter) / 2, (height - shorter) / 2, float(shorter)
    side = min(float(shorter), max(max(face.width, face.height) * (1 + 2 * margin / 100), float(least)))
    centre_x = face.left + face.width / 2
    centre_y = face.top + face.height / 2 + face.height * _FACE_DROP
    left = min(max(centre_x - side / 2, 0.0), width - side)
    top = min(max(centre_y - side / 2, 0.0), height - side)
    return left, top, side


def encode_jpeg(image: Image.Image, spec: PhotoSpec) -> tuple[bytes, int]:
    """The highest quality in ``spec``'s bounds whose JPEG fits ``max_bytes`` (and that quality).

    Tries ``max_quality`` first (almost always enough for 96x96 in 10 KB), then a binary search.
    Size is not strictly monotonic in quality, so the search returns a quality that fits, not
    necessarily the very highest one; it is deterministic either way.
    """
    data = _jpeg(image, spec.max_quality)
    if len(data) <= spec.max_bytes:
        return data, spec.max_quality
    best: tuple[bytes, int] | None = None
    low, high = spec.min_quality, spec.max_quality - 1
    while low <= high:
        quality = (low + high) // 2
        data = _jpeg(image, quality)
        if len(data) <= spec.max_bytes:
            best, low = (data, quality), quality + 1
        else:
            high = quality - 1
    if best is None:
        msg = (
            f"a {image.width}x{image.height} JPEG needs more than max_bytes={spec.max_bytes:,} bytes even at "
            f"quality {spec.min_quality}; raise max_bytes or lower min_quality"
        )
        raise ImageDoesNotFitError(msg)
    return best


def _jpeg(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    # Explicit settings, so output bytes do not depend on Pillow's defaults. No metadata: Pillow would
    # copy a source comment from image.info, so an empty one is passed; exif and ICC are never passed.
    image.save(buffer, "JPEG", quality=quality, optimize=True, progressive=False, subsampling=2, comment=b"")
    return buffer.getvalue()
