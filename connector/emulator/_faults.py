"""Fault profiles: injected 429/503/504, extra latency, connection resets, truncated bodies, and
gzip-encoded oversized photos.

A decision depends only on (seed, method, URL, how many times that URL was tried), never on the
order in which concurrent requests arrive, so a run with the same seed sees the same faults and a
retry of a faulted URL gets a fresh draw.
"""

from __future__ import annotations

import hashlib
import re
import struct
import zlib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal, get_type_hints

from pydantic import ConfigDict, TypeAdapter

from connector.emulator._checks import checked, json_object

__all__ = [
    "PROFILES",
    "FaultDecision",
    "FaultInjector",
    "FaultProfile",
    "gzip_photo",
    "gzip_with_base64_photo",
    "parse_faults",
]

FaultKind = Literal["429", "503", "504", "reset", "truncate"]


@dataclass(frozen=True)
class FaultProfile:
    """Rates are probabilities per Graph request (0..1); a $batch item can get 429/503/504 only."""

    name: str = "custom"
    rate_429: float = 0.0
    rate_503: float = 0.0
    rate_504: float = 0.0
    rate_reset: float = 0.0
    rate_truncate: float = 0.0
    rate_latency: float = 0.0
    extra_latency_ms: float = 0.0
    #: Retry-After sent with injected 429/503 (seconds); None sends no header.
    retry_after_s: float | None = 1.0
    retry_after_decimal: bool = False
    #: A regular expression: faults hit only requests whose path (and query) it finds, a ``$batch``'s
    #: items one by one ("/photo": Graph's front door works, the mailboxes' photo service fails;
    #: "/users/ID/photo": one mailbox fails). None: every request.
    path_pattern: str | None = None
    #: Not a rate: every photo download (a ``GET .../$value``) that ``path_pattern`` finds (every one
    #: without a pattern) answers 200 with ``Content-Encoding: gzip`` and this many bytes once decoded,
    #: a JPEG's first bytes and then zeros, a thousandth of that on the wire: a gzip bomb, or any
    #: oversized answer from Graph or a proxy in between. In a ``$batch`` the whole envelope is
    #: gzip-encoded, the item's body being those bytes in base64. 0: off.
    gzip_photo_bytes: int = 0

    def __post_init__(self) -> None:
        if self.gzip_photo_bytes < 0:
            raise ValueError(f"fault profile {self.name!r}: gzip_photo_bytes must be >= 0")
        total = self.rate_429 + self.rate_503 + self.rate_504 + self.rate_reset + self.rate_truncate
        rates = (self.rate_429, self.rate_503, self.rate_504, self.rate_reset, self.rate_truncate)
        if min(rates) < 0 or total > 1.0 or not 0.0 <= self.rate_latency <= 1.0:
            raise ValueError(f"fault profile {self.name!r}: rates must be >= 0 and sum to at most 1")
        if self.path_pattern is not None:
            try:
                re.compile(self.path_pattern)
            except re.error as exc:
                raise ValueError(f"fault profile {self.name!r}: path_pattern is no regular expression: {exc}") from None

    @property
    def active(self) -> bool:
        return any(
            (
                self.rate_429,
                self.rate_503,
                self.rate_504,
                self.rate_reset,
                self.rate_truncate,
                self.rate_latency,
            )
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PROFILES: dict[str, FaultProfile] = {
    "none": FaultProfile(name="none"),
    "light": FaultProfile(name="light", rate_429=0.02, rate_503=0.005, rate_latency=0.05, extra_latency_ms=50),
    # The resilience mix of the issue: 10 % 429 with Retry-After, 2 % 503, 1 % resets, 1 % truncated bodies.
    "resilience": FaultProfile(
        name="resilience",
        rate_429=0.10,
        rate_503=0.02,
        rate_reset=0.01,
        rate_truncate=0.01,
        retry_after_s=1.0,
    ),
    "storm": FaultProfile(
        name="storm",
        rate_429=0.30,
        rate_503=0.05,
        rate_504=0.05,
        rate_reset=0.02,
        rate_truncate=0.02,
        rate_latency=0.2,
        extra_latency_ms=200,
        retry_after_s=2.128,
        retry_after_decimal=True,
    ),
}

# Short keys accepted in a JSON spec: {"429": 0.1, "503": 0.02, "reset": 0.01, "base": "light"}.
_ALIASES = {
    "429": "rate_429",
    "503": "rate_503",
    "504": "rate_504",
    "reset": "rate_reset",
    "truncate": "rate_truncate",
    "latency": "rate_latency",
    "latency_ms": "extra_latency_ms",
    "retry_after": "retry_after_s",
    "gzip_photo": "gzip_photo_bytes",
}


def parse_faults(spec: FaultProfile | str | dict[str, Any] | None) -> FaultProfile:
    """A profile from a name (``storm``), JSON text, a dict, or None (no faults)."""
    if spec is None:
        return PROFILES["none"]
    if isinstance(spec, FaultProfile):
        return spec
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("{"):
            return parse_faults(json_object(text, "fault profile", "settings"))
        if text not in PROFILES:
            raise ValueError(f"unknown fault profile {text!r}; known: {', '.join(PROFILES)} or a JSON object")
        return PROFILES[text]
    values = dict(spec)
    base_name = str(values.pop("base", "none"))
    base = PROFILES.get(base_name)
    if base is None:
        raise ValueError(f"unknown base fault profile {base_name!r}; known: {', '.join(PROFILES)}")
    changes: dict[str, Any] = {"name": str(values.pop("name", "custom"))}
    for key, value in values.items():
        name = _ALIASES.get(str(key), str(key))
        adapter = _SETTING_TYPES.get(name)
        if adapter is None:
            raise ValueError(f"unknown fault setting {key!r}; known: {', '.join([*_ALIASES, *_SETTING_TYPES])}")
        changes[name] = checked(adapter, f"fault setting {key!r}", value)
    return replace(base, **changes)


#: What each FaultProfile field takes, checked strictly: ``"429": "x"`` is an error naming the setting.
_SETTING_TYPES: Mapping[str, TypeAdapter[Any]] = {
    name: TypeAdapter(hint, config=ConfigDict(strict=True)) for name, hint in get_type_hints(FaultProfile).items()
}


@dataclass(frozen=True)
class FaultDecision:
    kind: FaultKind | None
    extra_latency_s: float


_NO_FAULT = FaultDecision(None, 0.0)


class FaultInjector:
    """Draws faults for one emulator; not thread-safe (runs on the server loop)."""

    def __init__(self, profile: FaultProfile, seed: int) -> None:
        self.profile = profile
        self._seed = seed
        self._attempts: dict[str, int] = {}

    def _uniform(self, key: str, salt: str) -> float:
        digest = hashlib.blake2b(f"{self._seed}|{salt}|{key}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64

    def draw(self, method: str, url: str, *, in_batch: bool = False) -> FaultDecision:
        """The fault (if any) for this attempt at ``method url``."""
        p = self.profile
        if not p.active or (p.path_pattern is not None and re.search(p.path_pattern, url) is None):
            return _NO_FAULT
        key = f"{method} {url}"
        attempt = self._attempts.get(key, 0)
        self._attempts[key] = attempt + 1
        key = f"{key}#{attempt}"
        u = self._uniform(key, "kind")
        kind: FaultKind | None = None
        edge = 0.0
        choices: tuple[tuple[FaultKind, float], ...] = (
            ("429", p.rate_429),
            ("503", p.rate_503),
            ("504", p.rate_504),
            ("reset", p.rate_reset),
            ("truncate", p.rate_truncate),
        )
        for name, rate in choices:
            edge += rate
            if u < edge:
                kind = name
                break
        if in_batch and kind in ("reset", "truncate"):
            kind = None  # a batch item cannot break the outer connection
        latency = p.extra_latency_ms / 1000.0 if self._uniform(key, "latency") < p.rate_latency else 0.0
        return FaultDecision(kind, latency)

    def gzip_photo(self, method: str, url: str) -> int:
        """The decoded size of the gzip-encoded photo ``method url`` answers (``gzip_photo_bytes``), 0
        for the real photo. Not drawn: the same URL gets it every time."""
        p = self.profile
        if not p.gzip_photo_bytes or method != "GET" or not url.partition("?")[0].endswith("/$value"):
            return 0
        return p.gzip_photo_bytes if p.path_pattern is None or re.search(p.path_pattern, url) else 0

    def retry_after(self) -> str | None:
        value = self.profile.retry_after_s
        if value is None:
            return None
        if self.profile.retry_after_decimal:
            return f"{value:.3f}"
        return str(max(1, round(value)))


#: The photo a gzip fault sends starts as a JPEG does (SOI and a marker's first byte), then zeros.
_JPEG_START = b"\xff\xd8\xff"
_MB = 1 << 20


def gzip_photo(decoded: int) -> bytes:
    """The gzip body of a ``decoded``-byte photo: ``_JPEG_START`` and then zeros."""
    return _gzip_repeated(_JPEG_START, bytes(_MB), decoded - len(_JPEG_START), b"")


def gzip_with_base64_photo(before: bytes, decoded: int, after: bytes) -> bytes:
    """The gzip body of ``before``, the base64 of ``gzip_photo``'s photo, and ``after`` (a ``$batch``
    envelope around one such item): ``/9j/`` encodes ``_JPEG_START``, and each ``A`` six zero bits."""
    zeros, odd = divmod(decoded - len(_JPEG_START), 3)
    padded = (b"", b"AA==", b"AAA=")[odd]  # the last one or two zero bytes
    return _gzip_repeated(before + b"/9j/", b"A" * _MB, zeros * 4, padded + after)


def _gzip_repeated(head: bytes, unit: bytes, length: int, tail: bytes) -> bytes:
    """The gzip of ``head``, ``length`` bytes of ``unit`` repeated, and ``tail``, made in milliseconds:
    ``unit`` is compressed once up to a full flush (which makes its blocks stand alone, byte-aligned)
    and the blocks repeated; a gzip of hundreds of MB would take seconds to compress."""
    start, block = zlib.compressobj(9, zlib.DEFLATED, -15), zlib.compressobj(9, zlib.DEFLATED, -15)
    whole, rest = divmod(length, len(unit))
    parts = [start.compress(head) + start.flush(zlib.Z_FULL_FLUSH)]
    repeated = block.compress(unit) + block.flush(zlib.Z_FULL_FLUSH)
    parts += [repeated] * whole
    end = zlib.compressobj(9, zlib.DEFLATED, -15)
    parts.append(end.compress(unit[:rest] + tail) + end.flush())
    crc = zlib.crc32(head)
    for _ in range(whole):
        crc = zlib.crc32(unit, crc)
    crc = zlib.crc32(unit[:rest] + tail, crc)
    size = len(head) + length + len(tail)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"  # gzip, deflate, no name, no time, unknown OS
    return header + b"".join(parts) + struct.pack("<II", crc, size & 0xFFFFFFFF)
