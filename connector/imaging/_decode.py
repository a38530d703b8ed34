"""Reading untrusted image bytes safely: limits first, an allow-list of decoders, typed errors.

Everything Pillow can raise or warn about while parsing hostile input is turned into an
``ImageError`` subclass or a note here, in one place, so callers never see a traceback or a hang
for one bad photo. Decoding uses JPEG draft mode (DCT scaling) whenever the caller needs fewer
pixels than the file holds: it removes most of the resize cost and about a third of the decode
cost of a 648 -> 96 thumbnail.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image, ImageCms, UnidentifiedImageError

from connector.imaging._errors import (
    CorruptImageError,
    EmptyImageError,
    ImageError,
    InputTooLargeError,
    NotAnImageError,
    TooManyPixelsError,
    TruncatedImageError,
    UnsupportedImageError,
)
from connector.imaging._formats import ACCEPTED_FORMATS_TEXT, ALLOWED_FORMATS, not_supported_text, sniff_format
from connector.imaging._spec import SMALLER_PHOTO_HINT, InputLimits

__all__ = ["Decoded", "ImageInfo", "decode", "open_image", "probe", "verify"]

# Pillow decodes only ALLOWED_FORMATS (connector/imaging/_formats.py: the one list of accepted
# formats); everything else (EPS runs Ghostscript, PSD, ICO, PCX, ...) is refused.
Image.init()  # register every plugin once, so ``formats=`` can name TIFF and WebP

_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_EXIF_ORIENTATION = 0x0112

_UNSUPPORTED_MAGIC = (
    (b"8BPS", "Photoshop (PSD)"),
    (b"%PDF", "PDF"),
    (b"%!PS", "PostScript/EPS"),
    (b"\xc5\xd0\xd3\xc6", "EPS"),
    (b"\xff\x0a", "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", "JPEG XL"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x02\x00", "CUR"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"gimp xcf", "GIMP XCF"),
)
#: JPEG's end-of-image marker, and what :func:`_check_scan_complete` puts before it: bytes with no
#: 0xFF (no marker), which a scan that ended early decodes as its missing data.
_JPEG_EOI = b"\xff\xd9"
_SCAN_PROBE = b"\x5a" * 256
_HEIF_BRANDS = {b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1", b"avif", b"avis"}


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What the source file declared, before any conversion (width and height as stored)."""

    format: str
    width: int
    height: int
    mode: str
    animated: bool = False


@dataclass(slots=True)
class Decoded:
    """An upright 8-bit image (``RGB`` or ``L``) plus how it relates to the source.

    ``scale`` is decoded pixels per upright source pixel: 1/2, 1/4 or 1/8 after draft mode (the
    decoded size is rounded up, so the last row and column may cover fewer source pixels).
    """

    image: Image.Image
    info: ImageInfo
    upright_size: tuple[int, int]
    scale: float
    notes: list[str]


def probe(data: bytes | bytearray | memoryview, limits: InputLimits | None = None) -> ImageInfo:
    """Identify an image from its header only (no pixel decoding): format, size, mode.

    Cheap enough to call on every file of a folder; raises the same typed errors as ``decode``
    for empty, oversized, unsupported and unrecognisable input and for pixel bombs.
    """
    return open_image(data, limits or InputLimits())[1]


def open_image(data: bytes | bytearray | memoryview, limits: InputLimits) -> tuple[Image.Image, ImageInfo]:
    """The opened image (header read, pixels not decoded) and its ``ImageInfo``; typed errors as ``probe``."""
    with _guard([]):
        return _open(_as_bytes(data, limits), limits)


def verify(data: bytes | bytearray | memoryview, limits: InputLimits | None = None) -> ImageInfo:
    """Decode the whole file at the smallest draft scale: catches truncation and corruption cheaply."""
    return decode(data, limits or InputLimits(), min_side=1).info


def decode(data: bytes | bytearray | memoryview, limits: InputLimits, *, min_side: int) -> Decoded:
    """Decode ``data`` upright (EXIF orientation applied) to 8-bit ``RGB`` or ``L``.

    ``min_side`` is how many pixels the shorter upright side needs: JPEG decoding is scaled down
    (1/2, 1/4, 1/8) as far as that allows. Alpha is flattened on white, palettes expanded, CMYK and
    tagged colour spaces converted to sRGB, 16-bit and float samples reduced to 8 bits; animated
    images give their first frame.
    """
    notes: list[str] = []
    raw = _as_bytes(data, limits)
    with _guard(notes):
        im, info = _open(raw, limits)
        if info.animated:
            notes.append("animated image: used the first frame")
            im.seek(0)
        reduction = _draft(im, min_side)
        im.load()
        _check_scan_complete(raw, im, reduction)
        orientation = _orientation(im)
        image = _to_8bit(im, notes)
    if orientation in _TRANSPOSE:
        image = image.transpose(_TRANSPOSE[orientation])
    upright = (info.height, info.width) if orientation in (5, 6, 7, 8) else (info.width, info.height)
    return Decoded(image, info, upright, 1 / reduction, notes)


def _as_bytes(data: bytes | bytearray | memoryview, limits: InputLimits) -> bytes:
    if not isinstance(data, bytes | bytearray | memoryview):
        msg = f"expected image bytes, got {type(data).__name__}"
        raise NotAnImageError(msg)
    if len(data) == 0:
        raise EmptyImageError("the file is empty (0 bytes)")
    if len(data) > limits.max_input_bytes:
        msg = f"{len(data):,} bytes is over the input limit of {limits.max_input_bytes:,} bytes"
        raise InputTooLargeError(msg)
    return bytes(data)


def _open(data: bytes, limits: InputLimits) -> tuple[Image.Image, ImageInfo]:
    try:
        im = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError:
        raise _unidentified(data) from None
    except Image.DecompressionBombError as exc:  # past Pillow's own bound, above any max_pixels
        raise _too_many_pixels(f"the image declares {_declared_pixels(exc)} pixels", limits) from None
    width, height = im.size
    if width <= 0 or height <= 0:
        msg = f"the image declares an empty size {width}x{height}"
        raise CorruptImageError(msg)
    if width * height > limits.max_pixels:
        raise _too_many_pixels(f"{width}x{height} is {width * height:,} pixels", limits)
    fmt = im.format or "?"
    # is_animated seeks to the second frame only: cheap, unlike n_frames on a long GIF.
    animated = bool(getattr(im, "is_animated", False))
    return im, ImageInfo(fmt, width, height, im.mode, animated)


def _too_many_pixels(what: str, limits: InputLimits) -> TooManyPixelsError:
    """A pixel bomb, or only a photo far larger than any directory keeps: the limit and what to do."""
    return TooManyPixelsError(f"{what}, over the limit of {limits.max_pixels:,}: {SMALLER_PHOTO_HINT}")


def _declared_pixels(exc: Image.DecompressionBombError) -> str:
    """The pixel count in Pillow's message ("Image size (400000000 pixels) exceeds limit of ..."), written
    as this package writes numbers; Pillow's own limit is left out, as no setting has it."""
    found = re.search(r"\((\d+) pixels\)", str(exc))
    return f"{int(found.group(1)):,}" if found else "more"


def _unidentified(data: bytes) -> ImageError:
    head = data[:32]
    if len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS:
        kind = "AVIF" if head[8:12] in (b"avif", b"avis") else "HEIC/HEIF"
        return UnsupportedImageError(not_supported_text(kind))
    for magic, name in _UNSUPPORTED_MAGIC:
        if head.startswith(magic):
            return UnsupportedImageError(f"{name} files are not supported; convert the photo to JPEG or PNG")
    stripped = head.lstrip()
    if stripped.startswith((b"<svg", b"<?xml")):
        return UnsupportedImageError("SVG/XML files are not supported; convert the photo to JPEG or PNG")
    known = sniff_format(head)
    if known is not None:
        return TruncatedImageError(f"the file starts like a {known.label} but is truncated or corrupt")
    return NotAnImageError(f"the data is not a recognised image ({ACCEPTED_FORMATS_TEXT})")


@contextmanager
def _guard(notes: list[str]) -> Iterator[None]:
    """Map every failure of a decoder on hostile input to a typed error; keep warnings as notes.

    Pillow warns (corrupt EXIF, palette transparency, large images) through ``warnings``; those are
    facts about one photo, so they become notes on its result instead of process-wide output.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        except ImageError:
            raise
        except Image.DecompressionBombError as exc:
            raise TooManyPixelsError(str(exc)) from None
        except (OSError, EOFError) as exc:
            text = str(exc)
            if "truncat" in text.lower() or isinstance(exc, EOFError):
                raise TruncatedImageError(f"the image data ends early ({text})") from None
            raise CorruptImageError(f"the decoder rejected the image ({text})") from None
        except MemoryError:
            raise TooManyPixelsError("not enough memory to decode the image") from None
        except Exception as exc:  # decoders raise ValueError, SyntaxError, struct.error ... on bad data
            raise CorruptImageError(f"the decoder rejected the image ({type(exc).__name__}: {exc})") from None
    for warning in caught:
        note = f"decoder warning: {warning.message}"
        if note not in notes:
            notes.append(note)


def _draft(im: Image.Image, min_side: int) -> int:
    """Ask the JPEG decoder for the largest DCT reduction keeping ``min_side`` pixels; returns it."""
    if im.format not in ("JPEG", "MPO"):
        return 1
    width, height = im.size
    shorter = min(width, height)
    for reduction in (8, 4, 2):
        if shorter // reduction >= min_side:
            # draft() divides by this request and rounds down, which lands exactly on ``reduction``.
            im.draft(im.mode, (width // reduction, height // reduction))
            return reduction
    return 1


def _check_scan_complete(raw: bytes, im: Image.Image, reduction: int) -> None:
    """Raise ``TruncatedImageError`` for a JPEG whose last scan stops before the end of the image.

    Why: a copy cut short and then closed with the end-of-image marker (copy tools and upload handlers
    that close what they wrote) decodes without an error: libjpeg only warns that its data ended
    (JWRN_HIT_MARKER), which Pillow does not pass on, and decodes the rest as gray. A complete scan
    ends before the marker, so bytes put in front of the marker change no pixel; a scan cut short reads
    them as its missing data, and the pixels change. The second decode is paid only when it can tell:
    for a baseline JPEG, when the image ends in that exact gray (what libjpeg leaves where data was
    missing); for a progressive one always, at full size (a cut refinement scan shows in detail only).
    """
    if im.format != "JPEG" or not raw.endswith(_JPEG_EOI):
        return
    progressive = bool(im.info.get("progressive") or im.info.get("progression"))
    if not progressive and not _ends_in_gray(im):
        return
    scale = 1 if progressive else reduction
    pixels = im.tobytes() if scale == reduction else _jpeg_pixels(raw, scale)
    if _jpeg_pixels(raw[: -len(_JPEG_EOI)] + _SCAN_PROBE + _JPEG_EOI, scale) != pixels:
        raise TruncatedImageError("the image data ends early (its JPEG data stops before the end of the image)")


def _ends_in_gray(im: Image.Image) -> bool:
    """True when the last pixel is the mid gray libjpeg decodes where data is missing (any other mode
    than RGB or L: always, as its gray is not known here)."""
    if im.mode not in ("RGB", "L"):
        return True
    last = im.getpixel((im.width - 1, im.height - 1))
    return last in (128, (128, 128, 128))


def _jpeg_pixels(data: bytes, reduction: int) -> bytes:
    """The pixels of JPEG ``data`` decoded at ``reduction`` (as :func:`_draft` asks for it)."""
    im = Image.open(io.BytesIO(data), formats=["JPEG"])
    if reduction > 1:
        im.draft(im.mode, (im.width // reduction, im.height // reduction))
    im.load()
    return im.tobytes()


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # unreadable EXIF: the image itself is fine, treat it as upright
        return 1
    return value if isinstance(value, int) else 1


def _to_8bit(im: Image.Image, notes: list[str]) -> Image.Image:
    """Reduce any decoded mode to ``RGB`` or ``L`` (kept as L until after resizing: it is cheaper)."""
    mode = im.mode
    icc = im.info.get("icc_profile")
    if mode in ("RGB", "L"):
        return _to_srgb(im, icc, notes) if icc and mode == "RGB" else im
    if mode == "CMYK":
        return _to_srgb(im, icc, notes) if icc else im.convert("RGB")
    if mode == "1":
        return im.convert("L")
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _wide_to_l(im)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info)
    if has_alpha:
        rgba = im.convert("RGBA")
        flat = Image.new("RGB", rgba.size, (255, 255, 255))
        flat.paste(rgba, mask=rgba.getchannel("A"))
        notes.append("transparent areas were flattened on white")
        return flat
    if mode == "P":
        return im.convert("RGB")
    try:
        return im.convert("RGB")
    except ValueError:
        msg = f"pixel mode {mode} cannot be converted to RGB"
        raise UnsupportedImageError(msg) from None


def _wide_to_l(im: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float samples to 8 bits.

    16-bit data keeps its meaning (v / 256), so a dark 16-bit photo stays dark; ``I`` images that
    only hold 0..255 are 8-bit data in a wide container; float images are stretched to their range.
    """
    wide = im if im.mode in ("I", "F") else im.convert("I")
    low, high = (float(v) for v in _extrema(wide))
    if wide.mode == "F":
        span = high - low or 1.0
        return wide.point(lambda v: (v - low) * (255.0 / span)).convert("L")
    factor = 1 / 256 if im.mode.startswith("I;16") or high > 255 else 1.0
    return wide.point(lambda v: v * factor).convert("L")


def _extrema(im: Image.Image) -> tuple[float, float]:
    low, high = im.getextrema()
    assert isinstance(low, int | float) and isinstance(high, int | float)
    return low, high


_SRGB = ImageCms.createProfile("sRGB")
#: Per (profile checksum, mode): the transform to sRGB, or None when none is needed or possible,
#: and the note to record when the profile could not be used.
_transforms: dict[tuple[str, str], tuple[ImageCms.ImageCmsTransform | None, str | None]] = {}


def _to_srgb(im: Image.Image, icc: bytes, notes: list[str]) -> Image.Image:
    """Convert through the embedded ICC profile, since output carries no profile (metadata stripped).

    Without this, Adobe RGB and CMYK photos would come out washed out or with wrong colours.
    Transforms are cached per profile: building one costs far more than applying it.
    """
    key = (hashlib.sha256(icc).hexdigest(), im.mode)
    cached = _transforms.get(key)
    if cached is None:
        cached = _build_transform(icc, im.mode)
        if len(_transforms) >= 32:
            _transforms.clear()
        _transforms[key] = cached
    transform, note = cached
    if note:
        notes.append(note)
    if transform is None:
        return im if im.mode == "RGB" else im.convert("RGB")
    return ImageCms.applyTransform(im, transform) or im


def _build_transform(icc: bytes, mode: str) -> tuple[ImageCms.ImageCmsTransform | None, str | None]:
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if mode == "RGB" and "srgb" in ImageCms.getProfileDescription(source).lower():
            return None, None  # already sRGB
        return ImageCms.buildTransform(source, _SRGB, mode, "RGB"), None
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return None, "ignored an unreadable ICC colour profile"
