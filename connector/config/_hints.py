"""How configuration errors point at what to fix: a key as TOML writes it, and the name a typo resembles.

Why a module of its own: both the loader (unknown keys) and the models (a step naming an unknown
agent) say these, and the models cannot import the loader, which imports them.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

__all__ = ["did_you_mean", "toml_key"]


def toml_key(prefix: str, loc: Iterable[Any]) -> str:
    """``prefix`` and a pydantic location as a TOML key: ``[0]`` for array items, quotes where TOML needs them."""
    key = prefix
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
            continue
        name = str(part)
        bare = name and all(c.isascii() and (c.isalnum() or c in "_-") for c in name)
        name = name if bare else '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        key = f"{key}.{name}" if key else name
    return key


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``": did you mean 'x'?"`` for the known name ``name`` most resembles, or ``""`` for none.

    Case is ignored in the comparison (``delta cycle`` for ``Delta Cycle``), as a typo's usual
    companion, while the suggestion keeps the known name's own spelling.
    """
    by_folded = {k.casefold(): k for k in known}
    close = difflib.get_close_matches(name.casefold(), list(by_folded), n=1, cutoff=0.6)
    return f": did you mean {by_folded[close[0]]!r}?" if close else ""
