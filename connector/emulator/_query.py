"""OData ``$filter`` for users: a small parser that also reports which operators need advanced queries.

Supported: ``eq ne gt ge lt le in``, ``startswith()``/``endswith()``, ``and``/``or``/``not``,
parentheses, string/bool/null/number literals. String comparisons are case-insensitive, as in Entra.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["ADVANCED_OPERATORS", "FILTERABLE", "Filter", "FilterError", "parse_filter"]

FILTERABLE = frozenset(
    {
        "id",
        "userPrincipalName",
        "mail",
        "mailNickname",
        "displayName",
        "givenName",
        "surname",
        "accountEnabled",
        "jobTitle",
        "department",
        "employeeId",
        "userType",
        "companyName",
        "usageLocation",
        "createdDateTime",
        "officeLocation",
        "preferredLanguage",
        "mobilePhone",
    }
)
#: Operators that need ``ConsistencyLevel: eventual`` and ``$count=true`` (aad-advanced-queries.md).
ADVANCED_OPERATORS = frozenset({"ne", "not", "endswith"})

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<num>-?\d+(?:\.\d+)?)|(?P<name>[A-Za-z_][\w.]*)|"
    r"(?P<punct>[(),]))"
)

Predicate = Callable[[dict[str, Any]], bool]


class FilterError(ValueError):
    """A syntax error or an unsupported property; ``property`` is set for the latter."""

    def __init__(self, message: str, prop: str | None = None) -> None:
        super().__init__(message)
        self.property = prop


@dataclass
class Filter:
    predicate: Predicate
    operators: set[str]

    @property
    def advanced(self) -> set[str]:
        return self.operators & ADVANCED_OPERATORS


def _norm(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def _compare(op: str, left: Any, right: Any) -> bool:
    left, right = _norm(left), _norm(right)
    if op == "eq":
        return bool(left == right)
    if op == "ne":
        return bool(left != right)
    if left is None or right is None:
        return False
    try:
        return bool({"gt": left > right, "ge": left >= right, "lt": left < right, "le": left <= right}[op])
    except TypeError:
        return False


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, Any, int]] = []
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            m = _TOKEN.match(text, pos)
            if not m:
                raise FilterError(f"Invalid filter clause: Syntax error at position {pos} in '{text}'.")
            kind = m.lastgroup or ""
            raw = m.group(kind)
            value: Any = raw
            if kind == "str":
                value = raw[1:-1].replace("''", "'")
            elif kind == "num":
                value = float(raw) if "." in raw else int(raw)
            self.tokens.append((kind, value, m.start(kind)))
            pos = m.end()
        self.i = 0
        self.operators: set[str] = set()

    def peek(self) -> tuple[str, Any, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, Any, int]:
        token = self.peek()
        if token is None:
            raise FilterError(f"Invalid filter clause: Syntax error at position {len(self.text)} in '{self.text}'.")
        self.i += 1
        return token

    def expect(self, punct: str) -> None:
        kind, value, pos = self.take()
        if kind != "punct" or value != punct:
            raise FilterError(f"Invalid filter clause: Syntax error at position {pos} in '{self.text}'.")

    def keyword(self, word: str) -> bool:
        token = self.peek()
        if token and token[0] == "name" and str(token[1]).lower() == word:
            self.i += 1
            return True
        return False

    def parse(self) -> Predicate:
        pred = self.or_expr()
        if self.peek() is not None:
            raise FilterError(
                f"Invalid filter clause: Syntax error at position {self.peek()[2]} "  # type: ignore[index]
                f"in '{self.text}'."
            )
        return pred

    def or_expr(self) -> Predicate:
        terms = [self.and_expr()]
        while self.keyword("or"):
            terms.append(self.and_expr())
        return terms[0] if len(terms) == 1 else (lambda u: any(t(u) for t in terms))

    def and_expr(self) -> Predicate:
        terms = [self.unary()]
        while self.keyword("and"):
            terms.append(self.unary())
        return terms[0] if len(terms) == 1 else (lambda u: all(t(u) for t in terms))

    def unary(self) -> Predicate:
        if self.keyword("not"):
            self.operators.add("not")
            inner = self.unary()
            return lambda u: not inner(u)
        token = self.peek()
        if token and token[0] == "punct" and token[1] == "(":
            self.take()
            inner = self.or_expr()
            self.expect(")")
            return inner
        return self.comparison()

    def prop(self) -> str:
        kind, value, pos = self.take()
        if kind != "name":
            raise FilterError(f"Invalid filter clause: Syntax error at position {pos} in '{self.text}'.")
        if value not in FILTERABLE:
            raise FilterError(
                f"Unsupported or invalid query filter clause specified for property '{value}' of resource 'User'.",
                prop=str(value),
            )
        return str(value)

    def literal(self) -> Any:
        kind, value, pos = self.take()
        if kind in ("str", "num"):
            return value
        if kind == "name" and str(value).lower() in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[str(value).lower()]
        raise FilterError(f"Invalid filter clause: Syntax error at position {pos} in '{self.text}'.")

    def comparison(self) -> Predicate:
        token = self.peek()
        if token and token[0] == "name" and str(token[1]).lower() in ("startswith", "endswith"):
            func = str(self.take()[1]).lower()
            self.operators.add(func)
            self.expect("(")
            name = self.prop()
            self.expect(",")
            text = str(self.literal()).lower()
            self.expect(")")
            if func == "startswith":
                return lambda u: isinstance(u.get(name), str) and u[name].lower().startswith(text)
            return lambda u: isinstance(u.get(name), str) and u[name].lower().endswith(text)
        name = self.prop()
        kind, op, pos = self.take()
        op = str(op).lower()
        if kind != "name" or op not in ("eq", "ne", "gt", "ge", "lt", "le", "in"):
            raise FilterError(f"Invalid filter clause: Syntax error at position {pos} in '{self.text}'.")
        self.operators.add(op)
        if op == "in":
            self.expect("(")
            values = [_norm(self.literal())]
            while (t := self.peek()) and t[0] == "punct" and t[1] == ",":
                self.take()
                values.append(_norm(self.literal()))
            self.expect(")")
            return lambda u: _norm(u.get(name)) in values
        value = self.literal()
        return lambda u: _compare(op, u.get(name), value)


def parse_filter(text: str) -> Filter:
    parser = _Parser(text)
    predicate = parser.parse()
    return Filter(predicate, parser.operators)
