"""The tenant's photo policy: who masters user photos, the cloud or on-premises AD.

Why: since 2024 a tenant can declare that photos come from on-premises
(``GET /beta/admin/people/photoUpdateSettings``, ``source = onPremises``; Microsoft Learn,
profilephoto-configure-settings). Then cloud photo updates by admins and users are off, and Entra
Connect carries AD's ``thumbnailPhoto`` up. An export flow that writes photos *to* Exchange
Online works against that decision: at best its writes are refused, at worst the two directions
overwrite each other. So before the first photo write of an export step, the agent reads the
policy and, per ``on_premises_photo_policy``, refuses the step (the default) or logs a warning.

Reading needs PeopleSettings.Read.All. Without it (403), or where the beta endpoint is missing,
the policy is "unknown": the export proceeds and the doctor says what to grant. A tenant whose
settings were deleted (404) has the default, cloud.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from connector.agents.exchange_online._settings import ExchangeOnlineSettings
from connector.sdk import ConnectorError, StopRunError

__all__ = ["PhotoPolicy", "doctor_checks", "guard_photo_export", "policy_url", "read_policy"]

_PATH = "admin/people/photoUpdateSettings"


@dataclass(frozen=True)
class PhotoPolicy:
    """``source``: ``cloud``, ``onPremises``, or None when it could not be read (``detail`` says why)."""

    source: str | None
    allowed_roles: tuple[str, ...] = ()
    detail: str = ""

    @property
    def on_premises(self) -> bool:
        return self.source == "onPremises"

    def describe(self) -> str:
        if self.source is None:
            return f"photo policy unknown: {self.detail}"
        roles = ", ".join(self.allowed_roles) or "none listed"
        return f"photo policy source = {self.source} (allowedRoles: {roles}){' ' + self.detail if self.detail else ''}"


def policy_url(settings: ExchangeOnlineSettings) -> str:
    """The beta URL next to the configured v1.0 one (the setting is not in v1.0)."""
    base = settings.graph_url.rstrip("/")
    if base.endswith("/v1.0"):
        base = base[: -len("/v1.0")]
    return f"{base}/beta/{_PATH}"


def read_policy(graph: Any, settings: ExchangeOnlineSettings) -> PhotoPolicy:
    """One GET through the agent's Graph client (its retries, throttling and token)."""
    try:
        resp = graph.get_json(policy_url(settings))
    except (ConnectorError, OSError) as exc:
        return PhotoPolicy(None, detail=f"the request failed: {exc}")
    body = resp.json_body if isinstance(resp.json_body, dict) else {}
    if resp.ok:
        roles = tuple(str(r) for r in body.get("allowedRoles") or ())
        return PhotoPolicy(str(body.get("source") or "cloud"), roles)
    if resp.status == 404:
        return PhotoPolicy("cloud", detail="(no photoUpdateSettings in the tenant: the default)")
    if resp.status in (401, 403):
        return PhotoPolicy(
            None, detail=f"{resp.describe()}; grant the app PeopleSettings.Read.All (admin consent) to read it"
        )
    return PhotoPolicy(None, detail=resp.describe())


def guard_photo_export(graph: Any, settings: ExchangeOnlineSettings, agent: str, logger: logging.Logger) -> None:
    """Refuse (StopRunError) or warn before photos are written when the tenant masters them on-premises."""
    if settings.on_premises_photo_policy == "ignore":
        return
    policy = read_policy(graph, settings)
    if policy.source is None:
        logger.warning("agent %s: %s; exporting photos anyway", agent, policy.describe())
        return
    if not policy.on_premises:
        return
    what = (
        f"the tenant masters user photos on-premises (photoUpdateSettings source = onPremises), yet agent "
        f"{agent} has an export flow that writes photos to Exchange Online"
    )
    if settings.on_premises_photo_policy == "warn":
        logger.warning("%s; writing them anyway (on_premises_photo_policy = 'warn')", what)
        return
    msg = (
        f"{what}: nothing was written. Write photos to AD thumbnailPhoto instead (Entra Connect carries them "
        "up), or set on_premises_photo_policy = 'warn' if the cloud writes are intended"
    )
    raise StopRunError(msg, status="stopped-photo-policy")


def doctor_checks(graph: Any, settings: ExchangeOnlineSettings, writes_photos: bool) -> list[tuple[str, str, str]]:
    """``mvsync doctor``: the policy, and whether it conflicts with this agent's export flows."""
    policy = read_policy(graph, settings)
    if policy.source is None:
        return [("photo-policy", "warning", policy.describe())]
    if policy.on_premises and writes_photos and settings.on_premises_photo_policy == "refuse":
        detail = "an export flow writes photos here, so export steps will stop (on_premises_photo_policy = 'refuse')"
        return [("photo-policy", "error", f"{policy.describe()}; {detail}")]
    if policy.on_premises and writes_photos:
        return [("photo-policy", "warning", f"{policy.describe()}; an export flow writes photos here anyway")]
    return [("photo-policy", "ok", policy.describe())]
