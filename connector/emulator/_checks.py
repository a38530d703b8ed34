"""Settings given as JSON on the command line or the admin API (throttling limits, fault rates), checked."""

from __future__ import annotations

import json
from typing import Any

from pydantic import TypeAdapter, ValidationError

__all__ = ["checked", "json_object"]


def checked(adapter: TypeAdapter[Any], what: str, value: object) -> Any:
    """``value`` as ``adapter`` takes it, or a ValueError naming ``what``, the value and the rule it breaks.

    Why: a limit of ``"x"`` or ``0`` that got through would fail the emulator on its first request,
    far from the option that caused it; the command line says ``ValueError`` texts in one line.
    """
    try:
        return adapter.validate_python(value)
    except ValidationError as exc:
        reason = exc.errors()[0]["msg"]  # one value, one error (an Optional's first branch)
        raise ValueError(f"{what} cannot be {value!r}: {reason}") from None


def json_object(text: str, what: str, of: str) -> dict[str, Any]:
    """``text`` parsed as a JSON object (``what``: "throttling model"; ``of``: "limits"), or a ValueError."""
    try:
        parsed = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{what} is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict):
        raise ValueError(f"a {what} in JSON must be an object of {of}")
    return parsed
