"""A synthetic connector that produces ``count`` deterministic people (benchmarks, smoke tests).

It is not an installed entry point: a production installation has no use for an agent type that
invents people. The benchmarks register it for their own process (``register``) under ``generated``;
other configurations name it by reference, ``connector.bench.generated:GeneratedConnector``.

Every value derives from the seed and the object number, so two runs with the same settings import
the same data, and ``revision`` changes a chosen fraction of objects to simulate churn.
"""

from __future__ import annotations

import functools
import hashlib
import io
import struct
from typing import Any, ClassVar

from pydantic import Field

from connector.registry import register_connector
from connector.sdk import (
    Attribute,
    AttributeType,
    Capabilities,
    Connector,
    ConnectorSettings,
    CSEntryChange,
    ExportResult,
    ImportPage,
    ImportRequest,
    ObjectClass,
    Schema,
)

__all__ = ["NAME", "REFERENCE", "GeneratedConnector", "GeneratedSettings", "photo", "register"]

#: The agent ``type`` the benchmarks' configurations use once ``register`` ran.
NAME = "generated"
#: The same connector by reference, which works in any process (tests, hand-written configurations).
REFERENCE = "connector.bench.generated:GeneratedConnector"


class GeneratedSettings(ConnectorSettings):
    count: int = Field(1000, ge=0, le=10_000_000)
    seed: int = 1
    object_class: str = "person"
    #: Bytes of the synthetic ``photo`` value, a JPEG of at least about 200 bytes (see ``photo``; 0: no photo).
    photo_bytes: int = Field(64, ge=0, le=1_000_000)
    #: Objects whose number is divisible by ``change_every`` get values marked with ``revision``.
    revision: int = 0
    change_every: int = Field(100, ge=1)
    #: Goes before every account name (``u0000042``): runs that share one directory must not share names.
    account_prefix: str = Field("", max_length=12)


class GeneratedConnector(Connector[GeneratedSettings]):
    """Imports synthetic people; exports succeed without going anywhere (counted in ``exported``)."""

    settings_model: ClassVar[type[ConnectorSettings]] = GeneratedSettings
    capabilities = Capabilities(full_import=True, delta_import=False, export=True)
    description = "synthetic people for benchmarks and smoke tests"

    def __init__(self, settings: GeneratedSettings, context: Any) -> None:
        super().__init__(settings, context)
        self.exported = 0

    def get_schema(self) -> Schema:
        attrs = [
            Attribute(name="accountName"),
            Attribute(name="displayName"),
            Attribute(name="mail"),
            Attribute(name="userPrincipalName"),
            Attribute(name="employeeID"),
            Attribute(name="photo", type=AttributeType.BINARY),
            Attribute(name="photoChecksum"),
            Attribute(name="thumbnailChecksum"),
        ]
        return Schema.of(ObjectClass(name=self.settings.object_class, anchor="accountName", attributes=tuple(attrs)))

    def _entry(self, n: int) -> CSEntryChange:
        s = self.settings
        rev = s.revision if s.revision and n % s.change_every == 0 else 0
        account = f"{s.account_prefix}u{n:07d}"
        attrs: dict[str, Any] = {
            "accountName": account,
            "displayName": f"User {n}" + (f" r{rev}" if rev else ""),
            "mail": f"{account}@example.test",
            "userPrincipalName": f"{account}@example.test",
            "employeeID": str(100000 + n),
        }
        if s.photo_bytes:
            attrs["photo"] = photo(s.seed, n, rev, s.photo_bytes)
            attrs["photoChecksum"] = hashlib.sha256(attrs["photo"]).hexdigest()
        return CSEntryChange.add(s.object_class, account, attrs)

    def import_page(self, request: ImportRequest) -> ImportPage:
        start = int(request.page_token or 0)
        end = min(start + request.page_size, self.settings.count)
        more = end < self.settings.count
        return ImportPage([self._entry(n) for n in range(start, end)], more, str(end) if more else None)

    def export(self, changes: Any) -> list[ExportResult]:
        self.exported += len(changes)
        return [ExportResult.success(c.identifier) for c in changes]


#: The most bytes one JPEG segment carries: its two-byte length counts itself.
_SEGMENT_BODY_MAX = 65_533


def photo(seed: int, n: int, revision: int, size: int) -> bytes:
    """Person ``n``'s photo: a real JPEG, since agents check that a photo is an image (the AD agent refuses
    to write one that is none), of ``size`` bytes (at least about 200, the smallest this makes).

    Rendering each person's image would cost more than the step a benchmark times, so everybody shares one
    small image, and comment segments (which decoders skip) carry bytes of ``seed``, ``n`` and ``revision``:
    every person's photo and every revision of it differ, and the comments fill the photo to ``size``.
    """
    image = _small_jpeg(seed)
    block = hashlib.sha256(f"{seed}:{n}:{revision}".encode()).digest()
    room = max(size - len(image), len(block) + 4)
    count = -(-room // (_SEGMENT_BODY_MAX + 4))
    body = room - 4 * count
    lengths = [body // count + (i < body % count) for i in range(count)]
    comments = b"".join(b"\xff\xfe" + struct.pack(">H", k + 2) + (block * (k // len(block) + 1))[:k] for k in lengths)
    # after the JFIF header (APP0), which the standard puts first
    at = 4 + int.from_bytes(image[4:6], "big") if image[2:4] == b"\xff\xe0" else 2
    return image[:at] + comments + image[at:]


@functools.cache
def _small_jpeg(seed: int) -> bytes:
    """An 8x8 JPEG of one grey that ``seed`` picks, the smallest image Pillow writes (about 160 bytes): the
    benchmarks' small photos stay small (the sync benchmark asks for 64 bytes)."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("L", (8, 8), 64 + seed % 128).save(out, "JPEG", optimize=True)
    return out.getvalue()


def register() -> None:
    """Register the synthetic connector as ``generated`` in this process (the benchmarks' agent type)."""
    register_connector(NAME, GeneratedConnector)
