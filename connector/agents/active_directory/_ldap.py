"""Pure LDAP helpers: DNs, filters, GUIDs and attribute values. No network here, so all of it is
unit-tested without a server.

Filters are the one place user input meets LDAP syntax: every literal that goes into a filter
passes through ldap3's ``escape_filter_chars`` (text) or ``escape_bytes`` (binary), so a value such
as ``Smith (Sales)*`` matches that text instead of changing the filter.
"""

from __future__ import annotations

import datetime as _dt
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence

from ldap3.core.exceptions import LDAPInvalidDnError, LDAPInvalidFilterError
from ldap3.operation.search import parse_filter
from ldap3.utils.conv import escape_bytes, escape_filter_chars
from ldap3.utils.dn import escape_rdn, parse_dn

from connector.sdk import AttributeType, Value

__all__ = [
    "and_filter",
    "decode_values",
    "dn_in_scope",
    "dn_within",
    "encode_values",
    "equality_filter",
    "filter_attributes",
    "guid_bytes",
    "guid_filter",
    "guid_text",
    "normalize_dn",
    "validate_filter",
]

_ATTRIBUTE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]*$|^\d+(\.\d+)+$")


# ------------------------------------------------------------------------------------- DNs
#: An RFC 4514 escape in a DN's attribute value: a backslash and two hex digits (one byte of the value's
#: UTF-8), or a backslash and the character itself.
_DN_ESCAPE = re.compile(r"\\([0-9A-Fa-f]{2}|.)", re.DOTALL)


def _unescaped(value: str) -> str:
    """An attribute value of a DN as the characters it stands for, its escapes undone."""
    raw = bytearray()
    position = 0
    for escape in _DN_ESCAPE.finditer(value):
        raw += value[position : escape.start()].encode("utf-8")
        code = escape.group(1)
        raw += bytes.fromhex(code) if len(code) == 2 else code.encode("utf-8")
        position = escape.end()
    raw += value[position:].encode("utf-8")
    return raw.decode("utf-8", "surrogateescape")


def normalize_dn(dn: str) -> str:
    """A comparable form of ``dn``: case, spacing around separators and the way a character is escaped
    do not matter in AD.

    Why the escapes: RFC 4514 lets a value's character be escaped as a backslash and itself or as its
    hex code (``OU=R\\+D``, ``OU=R\\2BD``), and the DC reads the same object under either, while it
    spells DNs back one way; a base DN written the other way held nobody the export would write.
    Each value is spelled again with the same escapes (ldap3's ``escape_rdn``), so the form is unique.
    """
    try:
        parts = parse_dn(dn, escape=False, strip=True)
    except LDAPInvalidDnError as exc:
        msg = f"not a valid DN: {dn!r} ({exc})"
        raise ValueError(msg) from None
    return "".join(f"{attr.lower()}={_canonical(value)}{separator}" for attr, value, separator in parts)


def _canonical(value: str) -> str:
    """One spelling of a DN's attribute value: lower case, escaped as ldap3's ``escape_rdn`` does."""
    text = _unescaped(value).lower()
    return escape_rdn(text) if text else ""


def dn_within(dn: str, base: str) -> bool:
    """Whether ``dn`` is ``base`` or lies below it; both in :func:`normalize_dn`'s form (in which a value's
    commas and equals signs are escaped, so the text's end matches at a separator only)."""
    return dn == base or dn.endswith("," + base)


def dn_in_scope(dn: str, normalized_bases: Iterable[str]) -> bool:
    """Whether ``dn`` is one of the bases or lies below one (the export scope guard's test)."""
    try:
        candidate = normalize_dn(dn)
    except ValueError:
        return False
    return any(dn_within(candidate, base) for base in normalized_bases)


# ------------------------------------------------------------------------------------- filters
def validate_filter(search_filter: str) -> str:
    """Return the filter, stripped, if it is a syntactically valid parenthesised LDAP filter."""
    text = search_filter.strip()
    if not (text.startswith("(") and text.endswith(")")):
        msg = f"an LDAP filter must be enclosed in parentheses: {search_filter!r}"
        raise ValueError(msg)
    try:
        parse_filter(text, None, auto_escape=False, auto_encode=False, validator=None, check_names=False)
    except (LDAPInvalidFilterError, IndexError, ValueError) as exc:
        msg = f"invalid LDAP filter {search_filter!r}: {exc}"
        raise ValueError(msg) from None
    return text


_FILTER_ATTRIBUTE = re.compile(r"\(\s*([A-Za-z][A-Za-z0-9-]*|\d+(?:\.\d+)+)(?:;[^=~<>:]*)?(?::[^=]*)?[~<>]?=")


def filter_attributes(search_filter: str) -> list[str]:
    """Attribute names a filter tests (so a change-tracking read can ask for them too)."""
    return list(dict.fromkeys(m.group(1) for m in _FILTER_ATTRIBUTE.finditer(search_filter)))


def is_attribute_name(name: str) -> bool:
    """Whether ``name`` is an LDAP attribute name (a descriptor or an OID), so a filter may name it."""
    return bool(_ATTRIBUTE_NAME.match(name))


def equality_filter(attribute: str, value: str | bytes) -> str:
    """``(attribute=value)`` with the value escaped, so it is always taken literally."""
    if not is_attribute_name(attribute):
        msg = f"not an LDAP attribute name: {attribute!r}"
        raise ValueError(msg)
    escaped = escape_bytes(value) if isinstance(value, bytes) else escape_filter_chars(value)
    return f"({attribute}={escaped})"


def and_filter(*clauses: str) -> str:
    """AND of non-empty clauses (a single clause is returned as it is)."""
    parts = [c for c in clauses if c]
    if len(parts) == 1:
        return parts[0]
    return "(&" + "".join(parts) + ")"


def equals_filter(base_filter: str, equals: Mapping[str, str]) -> str:
    """The configured filter ANDed with escaped ``attribute=value`` pairs."""
    return and_filter(base_filter, *(equality_filter(k, v) for k, v in sorted(equals.items())))


# ------------------------------------------------------------------------------------- GUIDs
def guid_text(raw: bytes) -> str:
    """objectGUID as AD tools print it (``{...}`` without braces): little-endian first fields."""
    return str(uuid.UUID(bytes_le=bytes(raw)))


def guid_bytes(text: str) -> bytes:
    """The 16 bytes AD stores for a GUID in canonical text form; ValueError for anything else."""
    return uuid.UUID(text.strip("{}")).bytes_le


def guid_filter(anchors: Sequence[str]) -> str:
    """``(|(objectGUID=\\xx...)...)`` for anchors in text form (binary values escaped byte-wise)."""
    return "(|" + "".join(equality_filter("objectGUID", guid_bytes(a)) for a in anchors) + ")"


# ------------------------------------------------------------------------------------- values
def _generalized_time(raw: str) -> _dt.datetime:
    """AD's GeneralizedTime (``20240131120000.0Z``) as an aware UTC datetime."""
    main, _, rest = raw.partition(".")
    fraction = rest.rstrip("Zz")
    parsed = _dt.datetime.strptime(main.rstrip("Zz"), "%Y%m%d%H%M%S").replace(tzinfo=_dt.UTC)
    if fraction.isdigit() and int(fraction):
        parsed = parsed.replace(microsecond=int(fraction.ljust(6, "0")[:6]))
    return parsed


def decode_values(name: str, kind: AttributeType, raw: Sequence[bytes]) -> list[Value]:
    """Raw LDAP values of one attribute as Python values of the schema type."""
    if name.lower() == "objectguid":
        return [guid_text(v) for v in raw]
    if kind == AttributeType.BINARY:
        return [bytes(v) for v in raw]
    text = [bytes(v).decode("utf-8") for v in raw]
    if kind == AttributeType.INTEGER:
        return [int(t) for t in text]
    if kind == AttributeType.BOOLEAN:
        return [t.upper() == "TRUE" for t in text]
    if kind == AttributeType.DATETIME:
        return [_generalized_time(t) for t in text]
    return list(text)


def encode_values(values: Iterable[Value]) -> list[bytes | str]:
    """Python values as LDAP values: booleans and datetimes in AD's spelling, bytes kept as bytes."""
    out: list[bytes | str] = []
    for value in values:
        if isinstance(value, bool):
            out.append("TRUE" if value else "FALSE")
        elif isinstance(value, (bytes, bytearray, memoryview)):
            out.append(bytes(value))
        elif isinstance(value, _dt.datetime):
            utc = value.astimezone(_dt.UTC) if value.tzinfo else value
            out.append(utc.strftime("%Y%m%d%H%M%S.0Z"))
        else:
            out.append(str(value))
    return out
