"""Agent settings as the console may show them: secrets never, everything else as configured.

A setting is hidden when its connector declares it ``SecretStr`` (the same rule the configuration
loader uses to insist on ``{ env = .. }`` references) or when its name looks like a credential, so
a third-party connector that forgot ``SecretStr`` still does not leak through the console. Every
other text is shown as a log line would be (``connector.logging.redact``): a password written into a
URL (``https://DOMAIN%5Csvc:pw@mail.contoso.com/EWS/...``, ``?password=``) is a secret too, whatever
the setting's name. A setting whose value is one of the words its connector declares as the only
ones allowed (a ``Literal``: ``auth_mode = "app"``, ``auth = "ntlm"``) is shown whatever its name:
a fixed word is no secret, and which way an agent signs in is what an operator comes to check.
"""

from __future__ import annotations

import re
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel

from connector.config import AgentConfig, secret_fields
from connector.logging import redact
from connector.registry import load_connector
from connector.sdk import ConfigurationError

__all__ = ["HIDDEN", "masked_settings"]

HIDDEN = "\u2022\u2022\u2022\u2022\u2022\u2022 (hidden)"
#: Words of a setting's name that say it holds a credential; ``pass`` and ``pw`` only as a whole word of the
#: name (``pfx_pass``, not ``compass``), as ``key``.
_SECRET_NAME = re.compile(
    r"secret|passw|passphrase|pwd|bindpw|token|credential|private|api_?key|cookie|auth|(^|_)(key|pass|pw)($|_)",
    re.IGNORECASE,
)


def _choices(model: type[BaseModel]) -> dict[str, frozenset[Any]]:
    """Setting (name and alias) -> the only values its ``Literal`` type allows."""
    found: dict[str, frozenset[Any]] = {}
    for name, field in model.model_fields.items():
        kinds = [field.annotation, *get_args(field.annotation)]  # Literal[...], or Literal[...] | None
        words = frozenset(w for kind in kinds if get_origin(kind) is Literal for w in get_args(kind))
        if words:
            found.update({key: words for key in (name, field.alias) if key})
    return found


def _declared(agent: AgentConfig) -> tuple[set[str], dict[str, frozenset[Any]]]:
    """The connector's secret settings, and its settings of fixed words (see :func:`_choices`)."""
    try:
        model = load_connector(agent.type).settings_model
    except (ConfigurationError, ImportError):
        return set(), {}
    return secret_fields(model), _choices(model)


def _hidden(name: str, value: Any, secrets: set[str], choices: dict[str, frozenset[Any]]) -> bool:
    if name in secrets:
        return True
    if isinstance(value, str) and value in choices.get(name, ()):
        return False
    return bool(_SECRET_NAME.search(name))


def _mask(value: Any, secret: bool) -> Any:
    if secret:
        return HIDDEN
    if isinstance(value, dict):
        if len(value) == 1 and next(iter(value)) in ("env", "file"):
            kind, target = next(iter(value.items()))
            return f'{{ {kind} = "{target}" }}'
        return {k: _mask(v, bool(_SECRET_NAME.search(str(k)))) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v, False) for v in value]
    if isinstance(value, str):
        return redact(value)
    return value


def masked_settings(agent: AgentConfig) -> list[tuple[str, str]]:
    """``(name, shown value)`` of every setting, secrets replaced by ``HIDDEN``."""
    secrets, choices = _declared(agent)
    return [
        (name, str(_mask(value, _hidden(name, value, secrets, choices))))
        for name, value in sorted(agent.settings.items())
    ]
