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

A read that *failed* (Graph down, a 5xx after the retries, resets, throttled too long) is not
"unknown" in that sense: the answer exists, Graph did not give it this time. Under ``refuse`` the
step stops before any photo is written (``stopped-server-down``, or the stop the client raised:
``stopped-throttled``, ``stopped-authentication``) and the exports stay pending for the next run;
proceeding would overwrite, during any outage of the beta endpoint, photos the tenant masters on-premises.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from connector.agents.exchange_online._graph import RetryableError
from connector.agents.exchange_online._settings import ExchangeOnlineSettings
from connector.sdk import ConnectorError, ServerDownError, StopRunError

__all__ = ["PhotoPolicy", "doctor_checks", "guard_photo_export", "policy_url", "read_policy"]

_PATH = "admin/people/photoUpdateSettings"


@dataclass(frozen=True)
class PhotoPolicy:
    """``source``: ``cloud``, ``onPremises``, or None when it could not be read (``detail`` says why).

    ``outage``: the step status to stop with when the read *failed* (see the module's docstring), None
    when Graph answered (a 403 is an answer: the policy is not shown to this app, asking again won't help).
    """

    source: str | None
    allowed_roles: tuple[str, ...] = ()
    detail: str = ""
    outage: str | None = None
    url: str = ""

    @property
    def on_premises(self) -> bool:
        return self.source == "onPremises"

    def describe(self) -> str:
        if self.outage is not None:
            return f"could not read the tenant's photo policy ({self.url}): {self.detail}"
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
    url = policy_url(settings)
    try:
        resp = graph.get_json(url)
    except StopRunError as exc:  # Graph down, throttled too long, a revoked sign-in: the client's verdict
        return PhotoPolicy(None, detail=str(exc), outage=exc.status, url=url)
    except (ConnectorError, RetryableError, OSError) as exc:  # a connection failure that outlasted the retries
        return PhotoPolicy(None, detail=str(exc), outage=ServerDownError.status, url=url)
    body = resp.json_body if isinstance(resp.json_body, dict) else {}
    if resp.ok:
        roles = tuple(str(r) for r in body.get("allowedRoles") or ())
        return PhotoPolicy(str(body.get("source") or "cloud"), roles, url=url)
    if resp.status == 404:
        return PhotoPolicy("cloud", detail="(no photoUpdateSettings in the tenant: the default)", url=url)
    if resp.status in (401, 403):
        return PhotoPolicy(
            None, detail=f"{resp.describe()}; grant the app PeopleSettings.Read.All (admin consent) to read it", url=url
        )
    if resp.status >= 500 or resp.status == 429:  # retries used up on an answer that says "not now"
        return PhotoPolicy(None, detail=resp.describe(), outage=ServerDownError.status, url=url)
    return PhotoPolicy(None, detail=resp.describe(), url=url)


def guard_photo_export(graph: Any, settings: ExchangeOnlineSettings, agent: str, logger: logging.Logger) -> None:
    """Refuse (StopRunError) or warn before photos are written when the tenant masters them on-premises."""
    if settings.on_premises_photo_policy == "ignore":
        return
    policy = read_policy(graph, settings)
    if policy.outage is not None:
        _outage(policy, policy.outage, settings, agent, logger)
        return
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


def _outage(
    policy: PhotoPolicy, status: str, settings: ExchangeOnlineSettings, agent: str, logger: logging.Logger
) -> None:
    """A read that failed: stop before the first write (``refuse``), or say so and write (``warn``)."""
    if settings.on_premises_photo_policy == "warn":
        logger.warning(
            "agent %s: %s; writing photos anyway (on_premises_photo_policy = 'warn')", agent, policy.describe()
        )
        return
    msg = (
        f"agent {agent}: {policy.describe().rstrip('.')}. Nothing was written: whether the tenant masters "
        "photos on-premises is not known, and on_premises_photo_policy = 'refuse' writes none until it is. The "
        "photo exports stay pending: run the step again later, or set on_premises_photo_policy = 'warn' to "
        "write them when the policy cannot be read"
    )
    raise StopRunError(msg, status=status)


def doctor_checks(graph: Any, settings: ExchangeOnlineSettings, writes_photos: bool) -> list[tuple[str, str, str]]:
    """``mvsync doctor``: the policy, and whether it conflicts with this agent's export flows."""
    if not writes_photos or settings.on_premises_photo_policy == "ignore":
        # only an export step that writes photos reads the policy: an import-only agent was told to grant
        # PeopleSettings.Read.All, a permission it never uses (found by QA)
        why = (
            "no export flow of this agent writes photos" if not writes_photos else "on_premises_photo_policy = 'ignore'"
        )
        return [("photo-policy", "ok", f"not read: {why}, so the agent needs no PeopleSettings.Read.All")]
    policy = read_policy(graph, settings)
    if policy.outage is not None and settings.on_premises_photo_policy == "refuse":
        detail = "export steps stop until it can be read (on_premises_photo_policy = 'refuse')"
        return [("photo-policy", "warning", f"{policy.describe()}; {detail}")]
    if policy.source is None:
        return [("photo-policy", "warning", policy.describe())]
    if policy.on_premises and settings.on_premises_photo_policy == "refuse":
        detail = "an export flow writes photos here, so export steps will stop (on_premises_photo_policy = 'refuse')"
        return [("photo-policy", "error", f"{policy.describe()}; {detail}")]
    if policy.on_premises:
        return [("photo-policy", "warning", f"{policy.describe()}; an export flow writes photos here anyway")]
    return [("photo-policy", "ok", policy.describe())]
