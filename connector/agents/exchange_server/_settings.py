"""Settings of the ``exchange-server-photos`` agent.

Which mailboxes: a configured list (``mailboxes``, and/or ``mailbox_file`` with one address a line,
re-read on every import). Not the AD agent's users with ``msExchRecipientTypeDetails`` / ``homeMDB``:
in today's connector contract a connector never reads another agent's connector space (the engine
owns all state, ``connector.sdk._connector``), and querying AD a second time here would duplicate
the AD agent. The file is what ``Get-Mailbox -RecipientTypeDetails UserMailbox -ResultSize
Unlimited | ForEach-Object PrimarySmtpAddress`` prints, so a site refreshes it on the Exchange side
with one scheduled line. Once the engine can hand an agent the addresses it should read (issue #18),
the AD agent's on-premises mailbox users can feed it instead.

Secrets (the password, the OAuth client secret) are ``SecretStr``: the configuration loader accepts
them only as ``{ env = ".." }`` / ``{ file = ".." }`` references. TLS is always verified (with this
machine's trust store, or against ``ca_bundle`` alone when given); Basic authentication is refused on anything but ``https://``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from connector.net import authority_tenant_conflict, https_url
from connector.sdk import MUST_EXIST, ConnectorSettings

__all__ = ["EWS_DEFAULT_MAX_CONCURRENCY", "EWS_SIZE_CODES", "ExchangeServerSettings"]

_TLS_WHY = "EWS credentials never travel unencrypted"

#: SizeRequested codes (Exchange 2013+; field-notes-2.md §1.1).
EWS_SIZE_CODES = tuple(f"HR{s}x{s}" for s in (48, 64, 96, 120, 240, 360, 432, 504, 648))
_AUTH_METHODS = ("ntlm", "negotiate", "basic", "oauth")
_KERBEROS = "Kerberos is auth = 'negotiate' (SPNEGO, the Negotiate that IIS offers)"
#: Other names of the methods, and what to write instead.
_AUTH_NAMES = {
    "kerberos": _KERBEROS,
    "gssapi": _KERBEROS,
    "spnego": _KERBEROS,
    "sspi": _KERBEROS,
    "windows": "Windows authentication is auth = 'negotiate' (Kerberos) or 'ntlm'",
    "integrated": "Windows authentication is auth = 'negotiate' (Kerberos) or 'ntlm'",
    "modern": "hybrid modern authentication is auth = 'oauth'",
    "bearer": "hybrid modern authentication is auth = 'oauth'",
}
#: EWSMaxConcurrency's default since Exchange 2013 (field-notes-2.md §1.8).
EWS_DEFAULT_MAX_CONCURRENCY = 27


class ExchangeServerSettings(ConnectorSettings):
    """Where EWS is, how to authenticate, which mailboxes, and how politely to ask."""

    # -- where ---------------------------------------------------------------------------------
    #: ``https://mail.contoso.com/EWS/Exchange.asmx`` (a bare ``https://host`` gets that path).
    ews_url: str = Field(min_length=1)
    #: CA bundle for the server's certificate (an internal CA). Verification is never switched off.
    ca_bundle: Path | None = None

    # -- how we authenticate -------------------------------------------------------------------
    #: ``ntlm`` (on-premises default), ``negotiate`` (Kerberos: the ticket cache, or SSPI's logon
    #: session on Windows; ``pip install 'mvsync[kerberos]'``), ``basic`` (only where a site still
    #: allows it), ``oauth`` (hybrid modern authentication: an Entra app's client credentials).
    auth: Literal["ntlm", "negotiate", "basic", "oauth"] = "ntlm"
    #: negotiate: the host part of EWS's service principal ``HTTP/<host>`` when it is not the URL's host
    #: (a load-balanced namespace whose SPN sits on an alternate service account, or a URL by address).
    kerberos_host: str | None = None
    #: negotiate: the credential cache holding the ticket (``FILE:/var/lib/mvsync/krb5cc``, kept filled
    #: by ``kinit -k`` or k5start); default: ``KRB5CCNAME``, else the system's default cache.
    ccache: str | None = None
    #: ``DOMAIN\\user`` or ``user@domain`` (ntlm, basic).
    username: str | None = None
    password: SecretStr | None = None
    #: Hybrid modern authentication (auth = "oauth").
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    #: Default ``https://login.microsoftonline.com/<tenant_id>``.
    authority: str | None = None
    #: Default ``https://<EWS host>/.default`` (the token audience is the EWS external host name).
    oauth_scope: str | None = None
    #: MSAL instance discovery calls login.microsoftonline.com; off for private clouds and emulators.
    instance_discovery: bool = True

    # -- which mailboxes -----------------------------------------------------------------------
    mailboxes: tuple[str, ...] = ()
    #: One SMTP address a line; blank lines and ``#`` comments are ignored. Re-read on every import.
    mailbox_file: Path | None = Field(None, json_schema_extra=MUST_EXIST)

    # -- what we fetch -------------------------------------------------------------------------
    photo_size: str = "HR648x648"
    #: Exchange answers with the AD ``thumbnailPhoto`` when a mailbox holds no photo. That picture
    #: usually came from this very sync (the AD export), so by default it counts as "no photo";
    #: ``true`` takes it as the mailbox's photo.
    accept_ad_thumbnail: bool = False

    # -- manners -------------------------------------------------------------------------------
    #: EWSMaxConcurrency of the service account's throttling policy (27 unless an admin changed it).
    ews_max_concurrency: int = Field(EWS_DEFAULT_MAX_CONCURRENCY, ge=2, le=1000)
    #: Most requests in flight. The adaptive limiter starts low and grows to this ceiling, which must
    #: stay below ``ews_max_concurrency``: Outlook and other clients of the account count there too.
    concurrency: int = Field(16, ge=1)
    #: Attempts for one photo on failures (5xx without ErrorServerBusy, resets); throttling is waited
    #: out without spending them, up to ``max_throttled_retries`` (each after the wait EWS asked for,
    #: else after the back-off below).
    max_attempts: int = Field(3, ge=1, le=20)
    max_throttled_retries: int = Field(30, ge=1)
    #: Stop the step (``stopped-throttled``, keeping what was imported) when EWS has answered nothing
    #: but push-back for this long: ErrorServerBusy, 429 from a rate-limiting proxy in front of it, or
    #: 503 from IIS, which is also what a stopped EWS application pool answers to everything.
    max_throttled_wait_minutes: float = Field(30.0, gt=0)
    backoff_initial_s: float = Field(0.5, gt=0)
    backoff_max_s: float = Field(30.0, gt=0)
    timeout_s: float = Field(60.0, gt=0)
    #: How long the in-flight limit a run measured is trusted by later runs (as the Exchange Online
    #: agent's: kept in the agent state, renewed only by a run that measures it again; 0 = never).
    limit_memory_hours: float = Field(24.0, ge=0)
    #: How long the check before the first mailbox (ews_url is EWS, on Exchange 2013 or later), once
    #: passed, holds for later steps (kept in the agent state; 0 = every step checks): within it a step
    #: sends its photo requests alone. A "no photo" that would remove a photo still runs the check first.
    endpoint_check_hours: float = Field(24.0, ge=0)

    # -- delta (as the Exchange Online agent; SharePoint 2013's UserPhotoExpiration and -ErrorExpiration)
    photo_recheck_hours: float = Field(24.0, ge=0)
    photo_error_recheck_hours: float = Field(1.0, ge=0)

    @field_validator("auth", mode="before")
    @classmethod
    def _auth(cls, value: object) -> object:
        """``auth`` in any case, and the names an administrator knows the methods by (Kerberos, Windows
        authentication, modern authentication) answered with the value that means them: "Input should be
        'ntlm', 'negotiate', 'basic' or 'oauth'" did not say that Kerberos is 'negotiate'."""
        if not isinstance(value, str):
            return value
        said = value.strip().lower()
        if (meant := _AUTH_NAMES.get(said)) is not None:
            raise ValueError(f"'{value}' is not one of 'ntlm', 'negotiate', 'basic', 'oauth': {meant}")
        return said if said in _AUTH_METHODS else value

    @field_validator("ews_url")
    @classmethod
    def _ews_url(cls, value: str) -> str:
        parts = https_url(value, _TLS_WHY)
        path = parts.path.rstrip("/")
        return f"https://{parts.netloc}{path or '/EWS/Exchange.asmx'}"

    @field_validator("authority")
    @classmethod
    def _authority(cls, value: str | None) -> str | None:
        """Checked here because MSAL refuses a bad one only at the first request, with a ValueError
        from a worker thread: a traceback and stopped-connector-exception instead of exit 2."""
        if value is None:
            return None
        parts = https_url(value, _TLS_WHY)
        if not parts.path.strip("/"):
            msg = "must name the tenant in its path (https://login.microsoftonline.com/<tenant id>)"
            raise ValueError(msg)
        return value.rstrip("/")

    @field_validator("photo_size")
    @classmethod
    def _size(cls, value: str) -> str:
        for code in EWS_SIZE_CODES:
            if code.lower() == value.lower():
                return code
        msg = f"must be one of {', '.join(EWS_SIZE_CODES)}"
        raise ValueError(msg)

    @model_validator(mode="after")
    def _consistent(self) -> ExchangeServerSettings:
        if self.concurrency >= self.ews_max_concurrency:
            msg = (
                f"concurrency ({self.concurrency}) must stay below ews_max_concurrency ({self.ews_max_concurrency}), "
                "the account's EWSMaxConcurrency, which other clients of the account share"
            )
            raise ValueError(msg)
        if self.auth in ("ntlm", "basic") and (not self.username or self.password is None):
            msg = f"auth '{self.auth}' needs username and password"
            raise ValueError(msg)
        if self.auth != "negotiate" and (self.kerberos_host or self.ccache):
            msg = f"kerberos_host and ccache apply to auth 'negotiate' only, not '{self.auth}'"
            raise ValueError(msg)
        if self.auth == "oauth" and not (self.tenant_id and self.client_id and self.client_secret):
            msg = "auth 'oauth' needs tenant_id, client_id and client_secret"
            raise ValueError(msg)
        if not self.mailboxes and self.mailbox_file is None:
            msg = "give mailboxes or mailbox_file: the on-premises mailboxes whose photos to read"
            raise ValueError(msg)
        return self

    @model_validator(mode="after")
    def _one_tenant(self) -> ExchangeServerSettings:
        if conflict := authority_tenant_conflict(self.authority, self.tenant_id):
            raise ValueError(conflict)
        return self

    @property
    def origin(self) -> str:
        parts = urlsplit(self.ews_url)
        return f"https://{parts.netloc}"

    @property
    def where(self) -> str:
        """How every message names this server: ``EWS at https://mail.contoso.com``, the scheme, host and
        port of ews_url as configured (what the administrator finds in the configuration, and the same
        in a stop, a refusal and a per-object error)."""
        return f"EWS at {self.origin}"
