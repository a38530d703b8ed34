"""``mvsync bench thumbnails``: 648x648 JPEG photos -> 96x96 AD thumbnails of at most 10 KB.

Sources are generated (gradients, blurred shapes and sensor-like noise, JPEG quality 85-92, about
60-110 KB each, like real 648x648 Exchange photos) and held in memory, so the figure is the
imaging pipeline alone: decode (draft mode), crop, resize, JPEG quality search. The per-core rate
divides by this process's CPU time, not wall time, so other load on the machine does not skew it.
"""

from __future__ import annotations

import io
import platform
import random
import statistics
import time
from typing import Any

import PIL
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from connector.imaging import PhotoSpec, normalize

__all__ = ["run", "synthetic_photo"]


def synthetic_photo(seed: int, size: int = 648, *, noise: float = 4.0, quality: int | None = None) -> bytes:
    """A reproducible photo-like JPEG: blurred shapes on a gradient plus grey sensor noise.

    Drawn at a quarter of ``size`` and scaled up (real photos are smooth at that scale), which
    keeps generation fast. ``quality`` defaults to a seeded value in 85..92.
    """
    rng = random.Random(seed)
    small = max(8, size // 4)
    base = Image.linear_gradient("L").resize((small, small)).rotate(rng.uniform(0, 360))
    channels = []
    for _ in range(3):
        gain, offset = rng.uniform(0.3, 1.0), rng.randint(0, 80)
        channels.append(base.point(lambda v, g=gain, o=offset: int(v * g + o)))
    image = Image.merge("RGB", channels)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.randint(4, 10)):
        x, y = rng.randint(-small // 6, small), rng.randint(-small // 6, small)
        w, h = rng.randint(small // 10, small * 2 // 3), rng.randint(small // 10, small * 2 // 3)
        colour = (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255))
        draw.ellipse((x, y, x + w, y + h), fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.0)))
    image = image.resize((size, size), Image.Resampling.BICUBIC)
    if noise:
        # Pillow's effect_noise cannot be seeded; uniform bytes from rng keep the photo reproducible.
        grain = Image.frombytes("L", (size, size), rng.randbytes(size * size))
        grain = grain.point(lambda v: 128 + (v - 128) * noise / 64)
        image = ImageChops.add(image, grain.convert("RGB"), offset=-128)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality if quality is not None else rng.randint(85, 92))
    return buffer.getvalue()


def run(images: int = 200, passes: int = 5, size: int = 96, max_bytes: int = 10_240) -> dict[str, Any]:
    """Normalize ``images`` distinct sources ``passes`` times; figures are the fastest pass."""
    sources = [synthetic_photo(seed) for seed in range(images)]
    spec = PhotoSpec(size=size, max_bytes=max_bytes)
    for data in sources[:10]:  # warm-up: plugin imports, allocator, caches
        normalize(data, spec)
    cpu_times, wall_times = [], []
    outputs: list[int] = []
    qualities: list[int] = []
    for _ in range(passes):
        outputs, qualities = [], []
        wall, cpu = time.perf_counter(), time.process_time()
        for data in sources:
            result = normalize(data, spec)
            outputs.append(len(result.data))
            qualities.append(result.quality)
        cpu_times.append(time.process_time() - cpu)
        wall_times.append(time.perf_counter() - wall)
    # As timeit does: noise on a shared machine only ever adds time, so the fastest pass is the best
    # estimate of what the pipeline costs; the median pass is reported beside it.
    cpu_s, wall_s = min(cpu_times), min(wall_times)
    floor_s = min(_decode_only(sources) for _ in range(passes))
    source_sizes = sorted(len(s) for s in sources)
    return {
        "benchmark": "thumbnails",
        "images": images,
        "passes": passes,
        "source": {
            "width": 648,
            "height": 648,
            "format": "JPEG",
            "median_bytes": source_sizes[len(source_sizes) // 2],
            "min_bytes": source_sizes[0],
            "max_bytes": source_sizes[-1],
        },
        "output": {"size": size, "max_bytes": max_bytes},
        "images_per_s_per_core": round(images / cpu_s, 1),
        "median_pass_images_per_s_per_core": round(images / statistics.median(cpu_times), 1),
        "images_per_s_wall": round(images / wall_s, 1),
        "ms_per_image": round(cpu_s / images * 1000, 3),
        # The floor: entropy-decoding the JPEG at the same draft scale, nothing else. The pipeline
        # cannot beat it; the gap between the two is crop, resize, encode and checks.
        "decode_only_images_per_s_per_core": round(images / floor_s, 1),
        "max_output_bytes": max(outputs),
        "mean_output_bytes": round(statistics.fmean(outputs), 1),
        "min_quality_used": min(qualities),
        "all_within_max_bytes": max(outputs) <= max_bytes,
        "pillow": PIL.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }


def _decode_only(sources: list[bytes]) -> float:
    cpu = time.process_time()
    for data in sources:
        image = Image.open(io.BytesIO(data))
        image.draft("RGB", (image.width // 4, image.height // 4))
        image.load()
    return time.process_time() - cpu
