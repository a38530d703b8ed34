"""Settings of the ``exchange-online-photos`` agent.

Secrets (client secret, certificate password, a seed refresh token) are ``SecretStr`` so the
configuration loader accepts them only as ``{ env = ".." }`` / ``{ file = ".." }`` references.
Every knob that changes how hard we lean on Graph has a conservative, documented default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from connector.agents.exchange_online._tokencache import key_setting
from connector.net import authority_tenant_conflict, https_url
from connector.sdk import ConnectorSettings

__all__ = ["HD_PHOTO_SIZES", "ExchangeOnlineSettings"]

#: The HD sizes Exchange Online serves (profilephoto-get). Anything else would be an unbounded original.
HD_PHOTO_SIZES = ("48x48", "64x64", "96x96", "120x120", "240x240", "360x360", "432x432", "504x504", "648x648")

GRAPH_DEFAULT = "https://graph.microsoft.com/v1.0"


class ExchangeOnlineSettings(ConnectorSettings):
    """How to reach Graph, how to authenticate, and how politely to fetch photos."""

    # -- where ---------------------------------------------------------------------------------
    tenant_id: str = Field(min_length=1)
    client_id: str = Field(min_length=1)
    #: Full authority URL; default ``https://login.microsoftonline.com/<tenant_id>``.
    authority: str | None = None
    graph_url: str = GRAPH_DEFAULT
    #: MSAL instance discovery calls login.microsoftonline.com; switch off for private clouds/emulators.
    instance_discovery: bool = True
    #: CA bundle to trust for the authority and Graph, alone (a private CA, e.g. the emulator's);
    #: without it, this machine's trust store (``connector.net.verifying_session``).
    ca_bundle: Path | None = None

    # -- how we authenticate -------------------------------------------------------------------
    #: ``delegated``: an admin consents once (``mvsync auth login``), the stored refresh token then
    #: runs unattended, like the classic MA. ``app``: client credentials (secret or certificate).
    auth_mode: Literal["delegated", "app"] = "delegated"
    #: Confidential client secret (app mode, or a web-app registration in delegated mode).
    client_secret: SecretStr | None = None
    #: PEM file holding the certificate and its private key (app mode alternative to a secret).
    client_certificate: Path | None = None
    client_certificate_password: SecretStr | None = None
    #: Seeds the token cache when it holds no account yet (e.g. the classic MA's refresh.token).
    refresh_token: SecretStr | None = None
    #: Delegated scopes; app mode always uses ``https://graph.microsoft.com/.default``.
    scopes: tuple[str, ...] = (
        "https://graph.microsoft.com/User.Read.All",
        "https://graph.microsoft.com/ProfilePhoto.ReadWrite.All",
    )
    #: Which cached account to use when the cache holds several (default: the only one).
    username: str | None = None
    #: Environment variable holding the Fernet key that encrypts the token cache at rest.
    token_cache_key_env: str = "MVSYNC_TOKEN_CACHE_KEY"
    #: Or a file holding that key (created with mode 0600 by ``mvsync auth login`` when missing), used
    #: while that variable is not set: a variable set wins (``unused_settings``).
    token_cache_key_file: Path | None = Field(None, json_schema_extra={"made_by": "mvsync auth login {agent}"})

    # -- what we fetch -------------------------------------------------------------------------
    #: The HD size downloaded. A photo whose original is smaller comes at the largest HD size it has
    #: (the metadata probe says which), never as an unbounded original.
    photo_size: str = "648x648"

    # -- manners -------------------------------------------------------------------------------
    #: The most requests in flight toward Graph, counting ``$batch`` items the way Graph does (4 per
    #: batch). A ceiling, not a guess: the client starts low and finds the tenant's real limit itself
    #: (connector.throttling), so this only caps how far it may go.
    concurrency: int = Field(64, ge=1, le=400)
    batch_size: int = Field(20, ge=1, le=20)
    #: Never more than this many requests for one mailbox at once (Outlook allows 4).
    per_mailbox_concurrency: int = Field(1, ge=1, le=4)
    max_attempts: int = Field(6, ge=1, le=20)
    #: Retries of *failures* (5xx, resets, truncated bodies) allowed in one run step before they
    #: stick as per-object errors. Throttling (429, 503 with Retry-After) never spends it.
    retry_budget: int = Field(2000, ge=0)
    #: Stop the step (``stopped-throttled``, keeping what was imported) when Graph has answered
    #: nothing but throttling for this long. A full import stopped so resumes on its next run.
    max_throttled_wait_minutes: float = Field(30.0, gt=0)
    backoff_initial_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(30.0, gt=0)
    #: The longest Retry-After we honour as-is; longer waits are capped (and still count).
    retry_after_max_s: float = Field(120.0, gt=0)
    timeout_s: float = Field(60.0, gt=0)
    #: How long the in-flight limit a run measured is trusted by later runs (kept in the agent's
    #: state): a scheduled run starts at it instead of overshooting it and pausing for Retry-After.
    #: Only a run that measures the limit again renews it; 0 forgets it at once.
    limit_memory_hours: float = Field(24.0, ge=0)
    #: Send ``x-ms-throttle-priority: low`` (a background sync should be shed first).
    low_priority: bool = True

    # -- delta ---------------------------------------------------------------------------------
    #: Probe a user's photo metadata (ETag) at most this often (SharePoint's UserPhotoExpiration).
    photo_recheck_hours: float = Field(24.0, ge=0)
    #: Retry users whose photo read failed after this long (SharePoint's UserPhotoErrorExpiration).
    photo_error_recheck_hours: float = Field(1.0, ge=0)
    #: Share of photo holders re-downloaded and checksum-compared per delta run (0 = off; 1/30
    #: re-verifies everybody about monthly with daily runs), a safety net under the ETag.
    reverify_fraction: float = Field(0.0, ge=0, le=1)

    # -- export --------------------------------------------------------------------------------
    #: When the tenant masters photos on-premises (photoUpdateSettings ``source = onPremises``):
    #: ``refuse`` stops an export step before it writes a photo, ``warn`` logs and writes,
    #: ``ignore`` does not read the policy (see ``_photo_policy``; reading needs PeopleSettings.Read.All).
    on_premises_photo_policy: Literal["refuse", "warn", "ignore"] = "refuse"

    @field_validator("photo_size")
    @classmethod
    def _size(cls, value: str) -> str:
        lowered = value.lower()
        if lowered not in HD_PHOTO_SIZES:
            msg = f"must be one of {', '.join(HD_PHOTO_SIZES)} (never the unbounded original)"
            raise ValueError(msg)
        return lowered

    @field_validator("graph_url", "authority")
    @classmethod
    def _https(cls, value: str | None) -> str | None:
        if value is not None:
            https_url(value)
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _credentials(self) -> ExchangeOnlineSettings:
        if self.auth_mode == "app" and self.client_secret is None and self.client_certificate is None:
            msg = "auth_mode 'app' needs client_secret or client_certificate"
            raise ValueError(msg)
        if self.client_secret is not None and self.client_certificate is not None:
            msg = "give client_secret or client_certificate, not both"
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _one_tenant(self) -> ExchangeOnlineSettings:
        if conflict := authority_tenant_conflict(self.authority, self.tenant_id):
            raise ValueError(conflict)
        return self

    def unused_settings(self) -> dict[str, str]:
        """``token_cache_key_file`` when its key is not read: app mode keeps no token cache, and the
        variable ``token_cache_key_env`` names wins over the file when it is set (``key_setting``)."""
        if self.token_cache_key_file is None:
            return {}
        if self.auth_mode == "app":
            return {"token_cache_key_file": "auth_mode is 'app': no token cache is kept, so no key is read"}
        if key_setting(self.token_cache_key_env, self.token_cache_key_file) == "token_cache_key_env":
            why = f"the environment variable {self.token_cache_key_env} (token_cache_key_env) is set: its key is used"
            return {"token_cache_key_file": why}
        return {}

    @property
    def resolved_authority(self) -> str:
        return self.authority or f"https://login.microsoftonline.com/{self.tenant_id}"
