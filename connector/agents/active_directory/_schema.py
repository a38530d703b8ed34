"""The agent's schema: one object class, ``user``, anchored on ``objectGUID``.

``objectGUID`` is the anchor because it is the only identifier that survives renames and moves
(a DN does not; ``sAMAccountName`` can be changed by an administrator). It is carried in the
canonical text form AD tools show, so anchors are readable in logs and the store.
"""

from __future__ import annotations

from collections.abc import Iterable

from connector.sdk import Attribute, AttributeAccess, AttributeType, ObjectClass, Schema, parse_psma_attribute

__all__ = ["ANCHOR", "OBJECT_CLASS", "PHOTO", "PHOTO_MAX_BYTES", "build_schema"]

OBJECT_CLASS = "user"
ANCHOR = "objectGUID"
PHOTO = "thumbnailPhoto"
#: thumbnailPhoto's rangeUpper in the AD schema; larger values are refused before sending.
PHOTO_MAX_BYTES = 102_400

_S, _B, _I, _D = AttributeType.STRING, AttributeType.BINARY, AttributeType.INTEGER, AttributeType.DATETIME
_RO = AttributeAccess.IMPORT_ONLY

_BASE_ATTRIBUTES = (
    Attribute(name=ANCHOR, type=_S, access=_RO, description="anchor: the object's GUID in text form"),
    Attribute(name="sAMAccountName", type=_S),
    Attribute(name="userPrincipalName", type=_S),
    Attribute(name="mail", type=_S),
    Attribute(name="displayName", type=_S),
    Attribute(name="distinguishedName", type=_S, access=_RO),
    Attribute(name=PHOTO, type=_B, description=f"JPEG, at most {PHOTO_MAX_BYTES} bytes"),
    Attribute(name="uSNChanged", type=_I, access=_RO),
    Attribute(name="whenChanged", type=_D, access=_RO),
)


def build_schema(extra_attributes: Iterable[str]) -> Schema:
    """The ``user`` class with the standard attributes plus the configured extra ones."""
    attributes = list(_BASE_ATTRIBUTES)
    known = {a.name.lower() for a in attributes}
    for spec in extra_attributes:
        attribute, _anchor = parse_psma_attribute(spec)
        if attribute.name.lower() not in known:  # naming a standard one again is harmless
            known.add(attribute.name.lower())
            attributes.append(attribute)
    return Schema.of(ObjectClass(name=OBJECT_CLASS, anchor=ANCHOR, attributes=tuple(attributes)))
