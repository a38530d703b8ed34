"""Connector schema: object classes and attributes, validated with pydantic.

A schema is what Schema.ps1 returned for a Granfeldt PSMA: one object class per object type, each
with exactly one anchor. ``parse_psma_schema`` reads PSMA's ``[Anchor-|ImportOnly-|ExportOnly-]name|type[]``
shorthand so people can bring their Schema.ps1 property lists across unchanged.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable, Mapping
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "Attribute",
    "AttributeAccess",
    "AttributeType",
    "ObjectClass",
    "Schema",
    "parse_psma_attribute",
    "parse_psma_schema",
]


class AttributeType(StrEnum):
    """Value types an attribute can hold (PSMA's types plus ``datetime``)."""

    STRING = "string"
    INTEGER = "integer"
    BOOLEAN = "boolean"
    BINARY = "binary"
    REFERENCE = "reference"
    DATETIME = "datetime"


class AttributeAccess(StrEnum):
    """Flow direction the connected directory allows (PSMA's ImportOnly-/ExportOnly- prefixes)."""

    IMPORT_EXPORT = "import-export"
    IMPORT_ONLY = "import-only"
    EXPORT_ONLY = "export-only"


_PY_TYPES: dict[AttributeType, tuple[type, ...]] = {
    AttributeType.STRING: (str,),
    AttributeType.INTEGER: (int,),
    AttributeType.BOOLEAN: (bool,),
    AttributeType.BINARY: (bytes, bytearray, memoryview),
    AttributeType.REFERENCE: (str,),
    AttributeType.DATETIME: (_dt.datetime, str),
}


class Attribute(BaseModel):
    """One attribute of an object class."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z_][A-Za-z0-9_.\-]*$")
    type: AttributeType = AttributeType.STRING
    multivalued: bool = False
    access: AttributeAccess = AttributeAccess.IMPORT_EXPORT
    description: str = ""
    #: The connected system keeps its own rendering of a value written to it (Graph re-encodes an
    #: uploaded photo as JPEG), so the import after an export shows another value that is still the
    #: export's. The engine then remembers which rendering stands for which exported value, and the
    #: export flow does not write the same value again every cycle (see ``connector.engine._import``).
    rendered_by_target: bool = False

    @property
    def importable(self) -> bool:
        return self.access != AttributeAccess.EXPORT_ONLY

    @property
    def exportable(self) -> bool:
        return self.access != AttributeAccess.IMPORT_ONLY

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` (one value, not a list) has this attribute's Python type."""
        if self.type == AttributeType.INTEGER and isinstance(value, bool):
            return False
        return isinstance(value, _PY_TYPES[self.type])


class ObjectClass(BaseModel):
    """An object type with exactly one anchor attribute."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    anchor: str
    attributes: tuple[Attribute, ...]

    @model_validator(mode="after")
    def _check(self) -> ObjectClass:
        names = [a.name for a in self.attributes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            msg = f"object class {self.name!r}: attribute(s) declared twice: {', '.join(dupes)}"
            raise ValueError(msg)
        anchor = next((a for a in self.attributes if a.name == self.anchor), None)
        if anchor is None:
            msg = f"object class {self.name!r}: anchor {self.anchor!r} is not one of its attributes"
            raise ValueError(msg)
        if anchor.multivalued:
            msg = f"object class {self.name!r}: anchor {self.anchor!r} must be single-valued"
            raise ValueError(msg)
        if anchor.type == AttributeType.BINARY:
            msg = f"object class {self.name!r}: anchor {self.anchor!r} cannot be binary"
            raise ValueError(msg)
        return self

    def attribute(self, name: str) -> Attribute | None:
        """The attribute called ``name`` (exact case), or None."""
        return self._by_name().get(name)

    def _by_name(self) -> dict[str, Attribute]:
        cache: dict[str, Attribute] | None = self.__dict__.get("_index")
        if cache is None:
            cache = {a.name: a for a in self.attributes}
            object.__setattr__(self, "_index", cache)  # frozen model: cache outside validation
        return cache


class Schema(BaseModel):
    """The object classes one connector imports and exports."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    object_classes: tuple[ObjectClass, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> Schema:
        names = [c.name for c in self.object_classes]
        if len(set(names)) != len(names):
            msg = f"object class declared twice in schema: {names}"
            raise ValueError(msg)
        return self

    def object_class(self, name: str) -> ObjectClass | None:
        """The object class called ``name`` (case-insensitive, like PSMA), or None."""
        lowered = name.lower()
        return next((c for c in self.object_classes if c.name.lower() == lowered), None)

    @classmethod
    def of(cls, *object_classes: ObjectClass) -> Schema:
        return cls(object_classes=tuple(object_classes))


_PSMA_PREFIXES = {
    "anchor-": None,
    "importonly-": AttributeAccess.IMPORT_ONLY,
    "exportonly-": AttributeAccess.EXPORT_ONLY,
}


def parse_psma_attribute(spec: str) -> tuple[Attribute, bool]:
    """Parse one PSMA property name such as ``Anchor-id|string`` or ``proxyAddresses|string[]``.

    Returns the attribute and whether it was marked ``Anchor-``. Unknown types fall back to string,
    exactly as PSMA does; ``datetime`` is accepted as our extension.
    """
    name, _, type_part = spec.partition("|")
    name = name.strip()
    access = AttributeAccess.IMPORT_EXPORT
    is_anchor = False
    lowered = name.lower()
    for prefix, prefix_access in _PSMA_PREFIXES.items():
        if lowered.startswith(prefix):
            name = name[len(prefix) :]
            if prefix_access is None:
                is_anchor = True
            else:
                access = prefix_access
            break
    type_part = type_part.strip().lower() or "string"
    multivalued = type_part.endswith("[]")
    if multivalued:
        type_part = type_part[:-2]
    try:
        attr_type = AttributeType(type_part)
    except ValueError:
        attr_type = AttributeType.STRING
    return Attribute(name=name, type=attr_type, multivalued=multivalued, access=access), is_anchor


def parse_psma_schema(types: Mapping[str, Iterable[str]]) -> Schema:
    """Build a Schema from PSMA-style property lists, one list per object type.

    ``{"user": ["Anchor-id|string", "displayName|string", "photo|binary"]}``. As in PSMA, exactly
    one ``Anchor-`` attribute per type is required; ``objectClass|string`` entries are accepted and
    dropped because the object class is the mapping key.
    """
    classes = []
    for type_name, specs in types.items():
        attributes: list[Attribute] = []
        anchors: list[str] = []
        for spec in specs:
            attribute, is_anchor = parse_psma_attribute(spec)
            if attribute.name.lower() == "objectclass":
                continue
            attributes.append(attribute)
            if is_anchor:
                anchors.append(attribute.name)
        if len(anchors) != 1:
            msg = f"object type {type_name!r}: exactly one Anchor- attribute is required, found {len(anchors)}"
            raise ValueError(msg)
        classes.append(ObjectClass(name=type_name, anchor=anchors[0], attributes=tuple(attributes)))
    return Schema(object_classes=tuple(classes))
