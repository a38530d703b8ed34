"""Emulator configuration: one frozen dataclass, so a test states the whole tenant in one line."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from connector.emulator._faults import FaultProfile

__all__ = ["NO_PHOTO_VARIANTS", "EmulatorConfig", "FaultSpec"]

#: How a tenant answers for a user without a photo (the spec's variants seen in the wild, §1.5).
NO_PHOTO_VARIANTS = (
    "ImageNotFound",
    "ImageNotFoundPeople",
    "ErrorEntityNotFound",
    "ErrorItemNotFound",
    "legacy-1x1",
)

FaultSpec = FaultProfile | str | dict[str, Any] | None


@dataclass
class EmulatorConfig:
    """Everything that shapes one emulated tenant. Defaults follow the documented service limits."""

    users: int = 200
    photo_ratio: float = 0.5
    #: Share of the users that are B2B guests (``#EXT#`` userPrincipalName, userType Guest, no mailbox).
    guest_ratio: float = 0.03
    seed: int = 1
    #: ASSUMPTION: added to every Graph call; Microsoft publishes no latency, so 0 measures the client.
    latency_ms: float = 0.0
    faults: FaultSpec = None
    port: int = 0
    access_token_lifetime_s: int = 3600
    #: Per-app Graph request rate (token bucket, 1 s burst); None switches the limit off.
    app_rate_per_s: float | None = 2000
    #: Per-app Graph requests in flight; None switches the limit off.
    app_concurrency: int | None = 50
    no_photo_variant: str = "ImageNotFound"
    # --- additions beyond the shared shape -------------------------------------------------
    #: Outlook (photo) limits: concurrent requests and requests per 10 minutes per mailbox.
    mailbox_concurrency: int | None = 4
    mailbox_requests_per_10min: int | None = 10_000
    #: Outlook upload limit: bytes of PUT/PATCH/POST bodies per app and mailbox per 5 minutes (150 MB).
    mailbox_upload_bytes_per_5min: int | None = 150 * 1024 * 1024
    #: "mailbox": the 4-concurrent limit is per app+mailbox (older docs); "app": per app (current docs).
    mailbox_concurrency_scope: Literal["mailbox", "app"] = "mailbox"
    #: Directory resource units per 10 s per app (S/M/L: 3,500/5,000/8,000); 0 = by size, None = off.
    directory_ru_per_10s: int | None = 0
    #: "integer" ("Retry-After: 3") or "decimal" ("Retry-After: 2.128") for throttling 429s.
    retry_after_format: Literal["integer", "decimal"] = "integer"
    #: Items of one $batch that Graph runs at the same time (Outlook: 4).
    batch_parallelism: int = 4
    #: Users without a mailbox: "entra" serves Entra-stored photos, "error" gives 400 AuthenticationError.
    no_mailbox_photo: Literal["entra", "error"] = "entra"
    refresh_token_lifetime_s: int = 90 * 86400
    #: Strict rotation: a used refresh token stops working (real Entra keeps it valid).
    strict_rotation: bool = False
    #: AADSTS code for an expired refresh token: 700082 (current) or 70008 (older).
    expired_refresh_token_code: Literal[700082, 70008] = 700082
    device_code_interval_s: int = 1
    #: Approve device codes at once as the default user (else use admin.approve_device_code()).
    device_code_auto_approve: bool = True
    tenant_id: str | None = None
    client_id: str | None = None
    domain: str = "contoso.example"
    #: "person": mailNickname = given.surname (sAMAccountName rules); "numbered": u00042.
    naming: Literal["person", "numbered"] = "person"
    app_roles: tuple[str, ...] = ("User.Read.All", "ProfilePhoto.ReadWrite.All")
    delegated_scopes: tuple[str, ...] = ("User.Read", "User.Read.All", "ProfilePhoto.ReadWrite.All")
    #: Distinct rendered photo images; users share pixels but every user's bytes are unique.
    photo_templates: int = 48
    #: HD sizes rendered for every template photo before the emulator serves (benchmarks): the pool
    #: renders on first use otherwise, seconds of CPU that Graph's stored photos never cost.
    warm_sizes: tuple[int, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)
    # --- held to Microsoft's clients (issue #17; sources in the _graph and _identity docstrings) ---
    #: A photo URL for a user that does not exist: Graph's "users/{id} does not resolve" answer
    #: (404 Request_ResourceNotFound), or "no photo" (404 ImageNotFound) as one Microsoft Q&A reads it.
    unknown_user_photo: Literal["Request_ResourceNotFound", "ImageNotFound"] = "Request_ResourceNotFound"
    #: Entra gives each access token a random lifetime of 60-90 min; ``access_token_lifetime_s`` is
    #: the shortest, and each token lives up to this factor longer (0 = exactly that lifetime).
    access_token_lifetime_spread: float = 0.5

    def __post_init__(self) -> None:
        if self.users < 0:
            raise ValueError("users must be >= 0")
        if not 0.0 <= self.photo_ratio <= 1.0:
            raise ValueError("photo_ratio must be between 0 and 1")
        if not 0.0 <= self.guest_ratio <= 0.5:
            raise ValueError("guest_ratio must be between 0 and 0.5")
        if self.no_photo_variant not in NO_PHOTO_VARIANTS:
            raise ValueError(f"no_photo_variant must be one of {', '.join(NO_PHOTO_VARIANTS)}")
        if self.batch_parallelism < 1:
            raise ValueError("batch_parallelism must be >= 1")
