"""Agent settings as the console may show them: secrets never, everything else as configured.

A setting is hidden when its connector declares it ``SecretStr`` (the same rule the configuration
loader uses to insist on ``{ env = .. }`` references) or when its name looks like a credential, so
a third-party connector that forgot ``SecretStr`` still does not leak through the console. Every
other text is shown as a log line would be (``connector.logging.redact``): a password written into a
URL (``https://DOMAIN%5Csvc:pw@mail.contoso.com/EWS/...``, ``?password=``) is a secret too, whatever
the setting's name.
"""

from __future__ import annotations

import re
from typing import Any

from connector.config import AgentConfig, secret_fields
from connector.logging import redact
from connector.registry import load_connector
from connector.sdk import ConfigurationError

__all__ = ["HIDDEN", "masked_settings"]

HIDDEN = "\u2022\u2022\u2022\u2022\u2022\u2022 (hidden)"
_SECRET_NAME = re.compile(r"secret|passw|token|credential|private|api_?key|(^|_)key($|_)|cookie|auth", re.IGNORECASE)


def _declared_secrets(agent: AgentConfig) -> set[str]:
    try:
        return secret_fields(load_connector(agent.type).settings_model)
    except (ConfigurationError, ImportError):
        return set()


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
    declared = _declared_secrets(agent)
    return [
        (name, str(_mask(value, name in declared or bool(_SECRET_NAME.search(name)))))
        for name, value in sorted(agent.settings.items())
    ]
