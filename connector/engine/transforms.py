"""Named transforms for attribute flows, and the engine-side runner that caches their results.

A flow names a transform as ``name`` or ``name(key=value, ...)``, e.g.
``thumbnail(size=96, max_bytes=10240)``. Names resolve through the ``mvsync.transforms``
entry-point group (third parties add their own) or a ``package.module:factory`` reference.
Results for binary inputs are cached by (transform, input checksum) in the store, so a photo is
resized once, not on every synchronization, and the same input always maps to the same output
(which is what lets export confirmation work for transformed values).
"""

from __future__ import annotations

import ast
import hashlib
import logging
import re
from collections.abc import Callable
from typing import Any

from connector.registry import TRANSFORM_GROUP, load_object
from connector.sdk import ConfigurationError, TransformError, TransformFunction, Value
from connector.store import (
    DamagedDocumentError,
    SqlStore,
    StoreConnection,
    TransformCache,
    decode_value,
    dumps,
    encode_value,
    is_blob_ref,
    loads,
    parse_blob_ref,
)

__all__ = [
    "TransformRunner",
    "lower_transform",
    "parse_transform_spec",
    "sha256_transform",
    "trim_transform",
    "upper_transform",
]

log = logging.getLogger("mvsync.engine")

_SPEC = re.compile(r"^\s*([A-Za-z_][\w.\-]*(?::[\w.]+)?)\s*(?:\((.*)\))?\s*$", re.S)


def parse_transform_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``"thumbnail(size=96, max_bytes=10240)"`` -> ``("thumbnail", {"size": 96, "max_bytes": 10240})``.

    Arguments are Python literals (numbers, strings, booleans); bare words are taken as strings.
    """
    match = _SPEC.match(spec)
    if not match:
        msg = f"transform {spec!r} is not of the form name or name(key=value, ...)"
        raise ConfigurationError(msg)
    name, arg_text = match.group(1), (match.group(2) or "").strip()
    params: dict[str, Any] = {}
    if arg_text:
        try:
            call = ast.parse(f"f({arg_text})", mode="eval").body
        except SyntaxError:
            msg = f"transform {spec!r}: cannot parse the arguments"
            raise ConfigurationError(msg) from None
        assert isinstance(call, ast.Call)
        if call.args:
            msg = f"transform {spec!r}: arguments must be named (key=value)"
            raise ConfigurationError(msg)
        for kw in call.keywords:
            if kw.arg is None:
                msg = f"transform {spec!r}: ** arguments are not allowed"
                raise ConfigurationError(msg)
            if isinstance(kw.value, ast.Name):
                params[kw.arg] = kw.value.id
                continue
            try:
                params[kw.arg] = ast.literal_eval(kw.value)
            except ValueError:
                msg = f"transform {spec!r}: argument {kw.arg} must be a literal"
                raise ConfigurationError(msg) from None
    return name, params


# -- built-in transforms (factories, registered in pyproject under mvsync.transforms) ----------------
def sha256_transform() -> TransformFunction:
    """SHA-256 hex of a binary (or the UTF-8 of a string) value."""

    def apply(value: Value | None) -> Value | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = value.encode("utf-8")
        if not isinstance(value, bytes):
            raise TransformError("invalid-attribute-value", f"sha256 needs binary or text, got {type(value).__name__}")
        return hashlib.sha256(value).hexdigest()

    return apply


def _string_transform(name: str, op: Callable[[str], str]) -> TransformFunction:
    def apply(value: Value | None) -> Value | None:
        if value is None:
            return None
        if not isinstance(value, str):
            raise TransformError("invalid-attribute-value", f"{name} needs a string, got {type(value).__name__}")
        return op(value)

    return apply


def lower_transform() -> TransformFunction:
    return _string_transform("lower", str.lower)


def upper_transform() -> TransformFunction:
    return _string_transform("upper", str.upper)


def trim_transform() -> TransformFunction:
    return _string_transform("trim", str.strip)


class TransformRunner:
    """Applies configured transforms to *encoded* values, caching binary results in the store."""

    def __init__(self, store: SqlStore) -> None:
        self._store = store
        self._functions: dict[str, TransformFunction] = {}
        self._memo: dict[tuple[str, Any], Any] = {}
        self._new_rows: list[dict[str, Any]] = []
        self._blob_cache: dict[str, bytes] = {}
        self._known_misses: set[tuple[str, Any]] = set()
        #: Cache rows found damaged: misses whose rows the next flush replaces.
        self._damaged: set[tuple[str, str]] = set()

    def function(self, spec: str) -> TransformFunction:
        fn = self._functions.get(spec)
        if fn is None:
            name, params = parse_transform_spec(spec)
            factory = load_object(name, TRANSFORM_GROUP)
            try:
                fn = factory(**params)
            except TypeError as exc:
                msg = f"transform {spec!r}: {exc}"
                raise ConfigurationError(msg) from None
            self._functions[spec] = fn
        return fn

    def validate(self, spec: str) -> None:
        """Resolve a transform now so configuration mistakes surface before a run starts."""
        self.function(spec)

    def prefetch(self, conn: StoreConnection, pairs: list[tuple[str, Any]]) -> None:
        """Load cached results (and the input blobs of misses) for many values in a few queries."""
        wanted: dict[str, set[str]] = {}
        for spec, encoded in pairs:
            values = encoded if isinstance(encoded, list) else [encoded]
            if spec == "sha256":
                continue  # answered from the reference itself, see apply()
            for value in values:
                if is_blob_ref(value) and (spec, value) not in self._memo and (spec, value) not in self._known_misses:
                    wanted.setdefault(spec, set()).add(value)
        cache = TransformCache(conn)
        for spec, inputs in wanted.items():
            keys = list(inputs)
            for inp, out in cache.outputs(spec, keys):
                self._remember(spec, inp, out)
            misses = [k for k in keys if (spec, k) not in self._memo]
            self._known_misses.update((spec, k) for k in misses)
            self._blob_cache.update(self._store.get_blobs(conn, [parse_blob_ref(k)[0] for k in misses]))

    def _remember(self, spec: str, inp: str, out: str | bytes) -> None:
        """A cached result, unless its row is damaged: the cache only saves work, so a row whose bytes
        changed on the disk is a miss (computed again, its row replaced at the flush), not a stopped run."""
        try:
            self._memo[(spec, inp)] = loads(out, "transform_cache", (spec, inp), "output")
        except DamagedDocumentError as exc:
            log.warning("%s: the result is computed again and the row rewritten", exc.detail)
            self._damaged.add((spec, inp))

    def flush(self, conn: StoreConnection) -> None:
        """Write the results computed since the last flush into the cache table (caller's transaction)."""
        cache = TransformCache(conn)
        if self._damaged:
            cache.drop(self._damaged)
            self._damaged.clear()
        if self._new_rows:
            cache.add(self._new_rows)
            self._new_rows.clear()
        self._blob_cache.clear()
        self._known_misses.clear()

    def forget(self) -> None:
        """Drop what this runner remembers of results, once the run that computed them has ended.

        Why: a result is remembered when computed, but stored (the output blob, the cache row) only
        with the transaction that computed it. A dry run rolls that back; so does a failing step.
        An engine that ran a preview and then the run itself staged thumbnails whose bytes were
        never stored, and every export of them stopped on the missing blob. The store's cache table
        answers the next run, so nothing is computed twice for a result that was kept.
        """
        self._memo.clear()
        self._new_rows.clear()
        self._blob_cache.clear()
        self._known_misses.clear()
        self._damaged.clear()

    def apply(self, conn: StoreConnection, spec: str, encoded: Any, new_blobs: dict[str, bytes]) -> Any:
        """Transform an encoded value (or list); returns the encoded result.

        ``new_blobs`` collects binary outputs that the caller stores in the same transaction.
        Raises ``TransformError`` for values the transform rejects.
        """
        if encoded is None:
            return self._encode(self.function(spec)(None), new_blobs)
        if isinstance(encoded, list):
            results = [self.apply(conn, spec, v, new_blobs) for v in encoded]
            return sorted({r for r in results if r is not None}, key=str) or None
        key = (spec, encoded)
        if key in self._memo:
            return self._memo[key]
        if spec == "sha256" and is_blob_ref(encoded):
            # the store is content addressed: a binary value's reference already is its SHA-256
            return parse_blob_ref(encoded)[0]
        cacheable = is_blob_ref(encoded)
        if cacheable and not self._prefetched(conn, spec, encoded):
            return self._memo[key]
        value = decode_value(encoded, lambda sha: self._load_blob(conn, sha))
        result = self._encode(self.function(spec)(value), new_blobs)
        if cacheable:
            self._new_rows.append({"transform": spec, "input": encoded, "output": dumps(result)})
        if len(self._memo) > 50_000:
            self._memo.clear()
        self._memo[key] = result
        return result

    def _prefetched(self, conn: StoreConnection, spec: str, encoded: str) -> bool:
        """True when the value still has to be computed (not cached in memory or in the store)."""
        if (spec, encoded) not in self._memo and (spec, encoded) not in self._known_misses:
            self.prefetch(conn, [(spec, encoded)])
        return (spec, encoded) not in self._memo

    def _load_blob(self, conn: StoreConnection, sha: str) -> bytes:
        data = self._blob_cache.get(sha)
        if data is not None:
            return data
        data = self._store.get_blobs(conn, [sha]).get(sha)
        if data is None:
            raise TransformError("missing-blob", f"stored value {sha} is missing from the store (run mvsync doctor)")
        return data

    @staticmethod
    def _encode(value: Any, new_blobs: dict[str, bytes]) -> Any:
        return encode_value(value, new_blobs.__setitem__)
