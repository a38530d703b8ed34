"""Changes to connector-space objects (MIM's CSEntryChange), flowing in on import and out on export.

PSMA could only send whole objects (or a delete). Here a change is one of:

* ``ADD`` / ``REPLACE``: the whole object; attributes absent from ``attributes`` do not exist.
* ``UPDATE``: attribute-level changes (``AttributeChange``) against what the engine already holds.
* ``DELETE``: the object is gone.

On import, a change may instead carry an ``error`` (PSMA's ``[ErrorName]``/``[ErrorDetail]``): the
engine records it against the object and the run goes on.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeAlias

__all__ = [
    "AttributeChange",
    "AttributeModificationType",
    "CSEntryChange",
    "HashedBytes",
    "ImportEntryError",
    "ObjectModificationType",
    "Value",
    "Values",
    "person_display",
]


class HashedBytes(bytes):
    """Binary value that carries its SHA-256 (hex), so the engine does not hash it a second time.

    A connector that already hashed a photo (to compare it, or to stage its checksum attribute)
    hands the bytes over in this form; the store addresses blobs by that very hash.

    Making one copies ``data``: CPython gives a subclass of ``bytes`` a buffer of its own, never
    another object's. So a connector wraps a photo where its bytes are first whole, hashes it here
    (``sha256`` left out), and lets the plain bytes go at once: otherwise each photo is held twice,
    on every worker thread, until they go. The engine and the store keep this object itself, no copy.
    """

    sha256: str

    def __new__(cls, data: bytes, sha256: str | None = None) -> HashedBytes:
        made = super().__new__(cls, data)
        made.sha256 = sha256 if sha256 is not None else hashlib.sha256(made).hexdigest()
        return made

    def __reduce__(self) -> tuple[Any, ...]:
        return (HashedBytes, (bytes(self), self.sha256))


Value: TypeAlias = str | int | bool | bytes | _dt.datetime
"""One attribute value as a connector sees it."""

Values: TypeAlias = Value | list[Value]
"""A single value, or a list for multi-valued attributes."""


class ObjectModificationType(StrEnum):
    ADD = "add"
    UPDATE = "update"
    REPLACE = "replace"
    DELETE = "delete"


class AttributeModificationType(StrEnum):
    """What an ``AttributeChange`` does to one attribute.

    ``ADD`` adds values (multi-valued attributes; for single-valued it sets the value),
    ``REPLACE`` sets the attribute to exactly ``values`` (no values clears it),
    ``DELETE`` removes the listed values, or the whole attribute when ``values`` is empty.
    """

    ADD = "add"
    REPLACE = "replace"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class AttributeChange:
    name: str
    modification: AttributeModificationType
    values: tuple[Value, ...] = ()

    @classmethod
    def replace(cls, name: str, *values: Value) -> AttributeChange:
        return cls(name, AttributeModificationType.REPLACE, tuple(values))

    @classmethod
    def add(cls, name: str, *values: Value) -> AttributeChange:
        return cls(name, AttributeModificationType.ADD, tuple(values))

    @classmethod
    def delete(cls, name: str, *values: Value) -> AttributeChange:
        return cls(name, AttributeModificationType.DELETE, tuple(values))


@dataclass(frozen=True, slots=True)
class ImportEntryError:
    """A per-object import error (PSMA ``[ErrorName]`` / ``[ErrorDetail]``)."""

    name: str
    detail: str = "No error details provided"
    #: Who the object is (``person_display`` of what the connector read), so the error names a person.
    display: str | None = None


@dataclass(slots=True)
class CSEntryChange:
    """One change to one connector-space object.

    ``identifier`` is set by the engine on exports (the connector-space object id) so that each
    ``ExportResult`` can be matched to its change; importers leave it empty.
    ``previous`` (exports only) holds the engine's current view (the hologram) of the changed
    attributes that are not binary, for connectors that must express a change against the old value
    (an LDAP delete of one value of a multi-valued attribute). It is not a no-op check: the engine
    stages only changes that differ from the hologram and from an unconfirmed earlier write, and a
    photo's old bytes are not loaded at all.
    """

    object_class: str
    anchor: str
    modification: ObjectModificationType
    attributes: dict[str, Values] = field(default_factory=dict)
    changes: list[AttributeChange] = field(default_factory=list)
    dn: str | None = None
    error: ImportEntryError | None = None
    identifier: str = ""
    previous: dict[str, Values] = field(default_factory=dict)

    # -- constructors, named after what a connector author means ------------------------------
    @classmethod
    def add(
        cls, object_class: str, anchor: str, attributes: Mapping[str, Values | None], *, dn: str | None = None
    ) -> CSEntryChange:
        """A whole object that is new (or, on import, is sent whole: treated like PSMA's Add)."""
        return cls(object_class, str(anchor), ObjectModificationType.ADD, _drop_nulls(attributes), dn=dn)

    @classmethod
    def replace(
        cls, object_class: str, anchor: str, attributes: Mapping[str, Values | None], *, dn: str | None = None
    ) -> CSEntryChange:
        """A whole object replacing what the engine holds; absent attributes are cleared."""
        return cls(object_class, str(anchor), ObjectModificationType.REPLACE, _drop_nulls(attributes), dn=dn)

    @classmethod
    def update(
        cls, object_class: str, anchor: str, changes: Iterable[AttributeChange], *, dn: str | None = None
    ) -> CSEntryChange:
        """Attribute-level changes to an existing object."""
        return cls(object_class, str(anchor), ObjectModificationType.UPDATE, changes=list(changes), dn=dn)

    @classmethod
    def delete(cls, object_class: str, anchor: str, *, dn: str | None = None) -> CSEntryChange:
        return cls(object_class, str(anchor), ObjectModificationType.DELETE, dn=dn)

    @classmethod
    def import_error(
        cls,
        anchor: str,
        name: str,
        detail: str = "No error details provided",
        *,
        object_class: str = "",
        attributes: Mapping[str, Any] | None = None,
    ) -> CSEntryChange:
        """An object that could not be read; recorded per object, the run goes on.

        Pass the ``attributes`` that could be read (display name, UPN, account name ...): the
        error then names the person (``person_display``), not only an anchor such as a GUID.
        """
        error = ImportEntryError(name, detail, person_display(attributes or {}))
        return cls(object_class, str(anchor), ObjectModificationType.ADD, error=error)

    def changed_attribute_names(self) -> list[str]:
        """Names this change touches (PSMA's ``[ChangedAttributeNames]``)."""
        if self.modification == ObjectModificationType.UPDATE:
            return list(dict.fromkeys(c.name for c in self.changes))
        return list(self.attributes)


#: Attributes that name a person, best first, and those that identify one (UPN, account, mail).
NAME_ATTRIBUTES = ("displayName", "cn", "name")
ID_ATTRIBUTES = ("userPrincipalName", "sAMAccountName", "accountName", "mailNickname", "mail")


def _first_text(attributes: Mapping[str, Any], names: tuple[str, ...]) -> str | None:
    for name in names:
        value = attributes.get(name)
        if isinstance(value, list | tuple):
            value = value[0] if value else None
        if isinstance(value, str) and value and not value.startswith("\x00b:"):
            return value.removeprefix("\x00s:")
    return None


def person_display(attributes: Mapping[str, Any]) -> str | None:
    """How an operator recognizes an object: ``"Ada Lovelace (ada@contoso.com)"``, or either part.

    Why: per-object errors named by a Graph object id or a GUID cannot be traced to a person at
    03:00; the display name with the UPN or account name can.
    """
    name = _first_text(attributes, NAME_ATTRIBUTES)
    ident = _first_text(attributes, ID_ATTRIBUTES)
    if name and ident and ident != name:
        return f"{name} ({ident})"
    return name or ident


def _drop_nulls(attributes: Mapping[str, Any]) -> dict[str, Values]:
    # PSMA skips null values; an empty list is "no values" too.
    return {k: v for k, v in attributes.items() if v is not None and not (isinstance(v, list) and not v)}
