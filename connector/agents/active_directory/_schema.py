"""The agent's schema: one object class, ``user``, anchored on ``objectGUID``.

``objectGUID`` is the anchor because it is the only identifier that survives renames and moves
(a DN does not; ``sAMAccountName`` can be changed by an administrator). It is carried in the
canonical text form AD tools show, so anchors are readable in logs and the store.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from connector.agents.active_directory._ldap import equality_filter, is_attribute_name
from connector.sdk import Attribute, AttributeAccess, AttributeType, ObjectClass, Schema, parse_psma_attribute

__all__ = ["ANCHOR", "OBJECT_CLASS", "PHOTO", "PHOTO_MAX_BYTES", "Search", "build_schema", "unknown_attributes"]

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


#: Searches ``(base, filter, attributes)`` and hands back the entries (an import's or an export's own search).
Search = Callable[[str, str, list[str]], Sequence[Mapping[str, Any]]]


def unknown_attributes(search: Search, schema_context: str, names: Iterable[str]) -> list[str] | None:
    """Those of ``names`` that are no attribute of the DC's schema (no lDAPDisplayName of the schema
    partition ``schema_context`` is theirs, options such as ``;binary`` aside; a name no attribute can have
    is none), in their order; None when it cannot tell: no schema partition known, or none found at all
    (the account may not read the schema: objectGUID, searched too, is always there).

    One search by lDAPDisplayName. Why ask: a DC ignores an attribute it does not know in a search's list
    (RFC 4511), and refuses every write of one (noSuchAttribute), one person at a time."""
    if not schema_context:
        return None
    # an OID names itself
    bases = {n: n.split(";", 1)[0] for n in dict.fromkeys(names) if not n[:1].isdigit()}
    if not bases:
        return []
    asked = [ANCHOR, *(b for b in dict.fromkeys(bases.values()) if is_attribute_name(b))]
    either = "".join(equality_filter("lDAPDisplayName", b) for b in dict.fromkeys(asked))
    found = search(schema_context, f"(&(objectClass=attributeSchema)(|{either}))", ["lDAPDisplayName"])
    known = {bytes(v).decode().lower() for e in found for v in e["raw_attributes"].get("lDAPDisplayName", [])}
    if not known:
        return None
    return [n for n, base in bases.items() if base.lower() not in known]
