"""Finding the face to crop around, with OpenCV's Haar cascade when the ``[face]`` extra is installed.

OpenCV is optional (about 160 MB with numpy), so its absence is a normal state, reported through
``FaceFinder.unavailable_reason`` and turned into a centre crop with a note by the caller. It must
stay on 4.x: opencv-python 5 ships no Haar cascades and has no ``CascadeClassifier``.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageOps

__all__ = ["FaceBox", "FaceFinder", "face_finder"]

_CASCADE = "haarcascade_frontalface_default.xml"
#: Faces are searched on a copy this size at most: Haar's cost grows with the pixel count, and a
#: portrait's face is still 50+ pixels wide at this scale.
_DETECT_SIDE = 400
_UNAVAILABLE = "face detection is not available"
_INSTALL_HINT = "install the face extra: pip install 'mvsync[face]' (opencv-python-headless>=4.8,<5)"


@dataclass(frozen=True, slots=True)
class FaceBox:
    """A face rectangle in the pixel coordinates of the image it was found in."""

    left: float
    top: float
    width: float
    height: float

    def scaled(self, factor: float) -> FaceBox:
        return FaceBox(self.left * factor, self.top * factor, self.width * factor, self.height * factor)


class FaceFinder:
    """Loads the cascade once; ``find`` is safe to call from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cv2: Any = None
        self._np: Any = None
        self._cascade: Any = None
        self.unavailable_reason = ""
        try:
            import cv2
            import numpy
        except ImportError:
            self.unavailable_reason = f"{_UNAVAILABLE}: OpenCV is not installed; {_INSTALL_HINT}"
            return
        classifier = getattr(cv2, "CascadeClassifier", None)
        folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
        if classifier is None or not folder:
            version = cv2.__version__
            self.unavailable_reason = f"{_UNAVAILABLE}: OpenCV {version} lacks Haar cascades; {_INSTALL_HINT}"
            return
        cascade = classifier(str(folder) + _CASCADE)
        if cascade.empty():
            self.unavailable_reason = f"{_UNAVAILABLE}: cannot load {_CASCADE}; {_INSTALL_HINT}"
            return
        self._cv2, self._np, self._cascade = cv2, numpy, cascade

    @property
    def available(self) -> bool:
        return self._cascade is not None

    def find(self, image: Image.Image) -> FaceBox | None:
        """The largest frontal face in ``image``, or None (also when OpenCV is unavailable)."""
        if self._cascade is None:
            return None
        grey = image.convert("L")
        factor = min(1.0, _DETECT_SIDE / max(grey.size))
        if factor < 1.0:
            small = (max(1, round(grey.width * factor)), max(1, round(grey.height * factor)))
            grey = grey.resize(small, Image.Resampling.BILINEAR)
        grey = ImageOps.equalize(grey)  # Haar features are contrast-sensitive; dim photos need this
        pixels = self._np.asarray(grey)
        smallest = max(20, min(grey.size) // 10)
        with self._lock:  # CascadeClassifier keeps per-call scratch state: not thread-safe
            found = self._cascade.detectMultiScale(
                pixels, scaleFactor=1.1, minNeighbors=5, minSize=(smallest, smallest)
            )
        boxes = [tuple(int(v) for v in box) for box in found]
        if not boxes:
            return None
        # Largest face first; ties broken by position so the result never depends on OpenCV's order.
        left, top, width, height = min(boxes, key=lambda b: (-b[2] * b[3], b[1], b[0]))
        return FaceBox(left, top, width, height).scaled(1 / factor)


@functools.cache
def face_finder() -> FaceFinder:
    """The process-wide finder (loading the 1 MB cascade takes tens of milliseconds)."""
    return FaceFinder()
