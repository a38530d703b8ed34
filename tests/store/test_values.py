"""The one decoder of encoded store values: every reader (engine, CLI, console, doctor) goes through it."""

from __future__ import annotations

import datetime as dt

from connector.store import BlobRef, blob_refs, decode_value, encode_value, plain_value


def _encoded() -> tuple[dict[str, bytes], dict[str, object]]:
    blobs: dict[str, bytes] = {}
    values = {
        "photo": encode_value(b"\xff\xd8jpeg", blobs.__setitem__),
        "when": encode_value(dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC), blobs.__setitem__),
        "hostile": encode_value("\x00d:not a date", blobs.__setitem__),
        "many": encode_value([b"one", b"two"], blobs.__setitem__),
        "plain": encode_value("Ada", blobs.__setitem__),
    }
    return blobs, values


def test_without_a_loader_binaries_decode_to_references_and_nothing_is_loaded() -> None:
    blobs, values = _encoded()
    ref = decode_value(values["photo"])
    assert ref == BlobRef(next(k for k, v in blobs.items() if v == b"\xff\xd8jpeg"), 6)
    assert decode_value(values["photo"], blobs.__getitem__) == b"\xff\xd8jpeg"
    assert all(isinstance(r, BlobRef) for r in decode_value(values["many"]))
    assert decode_value(values["hostile"]) == "\x00d:not a date"  # a tagged-looking string stays a string
    assert decode_value(values["when"]) == dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def test_plain_value_is_json_ready() -> None:
    _blobs, values = _encoded()
    photo = plain_value(values["photo"])
    assert set(photo) == {"sha256", "bytes"} and photo["bytes"] == 6
    assert plain_value(values["when"]) == "2026-01-02T03:04:05+00:00"
    assert [p["bytes"] for p in plain_value(values["many"])] == [3, 3]
    assert plain_value(values["plain"]) == "Ada"
    assert plain_value(values["hostile"]) == "\x00d:not a date"


def test_blob_refs_walks_documents_and_tolerates_a_damaged_size() -> None:
    blobs, values = _encoded()
    document = {"a": values, "b": [values["photo"], {"c": "\x00b:" + "f" * 64 + ":oops"}]}
    found = list(blob_refs(document))
    assert {r.sha256 for r in found} == set(blobs) | {"f" * 64}
    assert BlobRef("f" * 64, -1) in found
