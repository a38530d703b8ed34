"""The requests authentication for EWS: NTLM, Negotiate/Kerberos, Basic over TLS, or OAuth.

Which library for which (field-notes-2.md §1.7 and §1.9; exchangelib's transport wires the same
ones): NTLM through requests-ntlm (pyspnego; channel binding to the TLS certificate is sent, so
Extended Protection on the EWS virtual directory is satisfied); Negotiate through requests-gssapi
(the Kerberos ticket cache, ``kinit`` or a keytab) or, on Windows, requests-negotiate-sspi (the
service's own logon, no password anywhere); OAuth through MSAL's client-credentials flow, for
hybrid modern authentication (Exchange 2019 CU13 and later per a Microsoft Q&A answer; the audience
is the EWS host). Secrets are read from the settings' ``SecretStr`` only when a request needs them
and never appear in messages.

Kerberos holds no secret of mvsync's at all: the ticket comes from a credential cache that ``kinit
-k`` (or k5start, SSSD) keeps filled from a keytab, named by ``ccache`` or ``KRB5CCNAME``. The
service principal is ``HTTP/<host>``, the host of ``ews_url`` unless ``kerberos_host`` names the one
the SPN spells (a load-balanced namespace, or a URL by address). Every Kerberos failure is turned
into a step error naming the EWS host and the remedy (:func:`kerberos_error`, :func:`refused`).
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sys
import threading
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.auth import AuthBase, HTTPBasicAuth

from connector import __version__
from connector.agents.exchange_server._settings import ExchangeServerSettings
from connector.net import (
    ca_bundle_key,
    entra_refusal,
    unreachable_authority,
    unusable_authority,
    verifying_session,
)
from connector.sdk import AuthenticationError, ConfigurationError, ConnectorError, ServerDownError

__all__ = ["USER_AGENT", "kerberos_error", "make_auth", "make_session", "refusal", "refused", "spn"]

#: Who the agent says it is. EWS identifies applications by their user agent ("Controlling client
#: application access to EWS in Exchange"), so an EWS application access policy can let exactly this
#: agent through (an EwsAllowList entry ``mvsync/*``); requests' own ``python-requests/2.x`` names
#: every Python client, and changes with each upgrade.
USER_AGENT = f"mvsync/{__version__} (exchange-server-photos)"


def make_session(settings: ExchangeServerSettings, auth: AuthBase, agent: str = "") -> requests.Session:
    """A session verifying TLS (with the system's trust store, or against ``ca_bundle`` alone when
    given, see ``connector.net.verifying_session``), for one thread. ``agent``: its name, for where
    ``ca_bundle`` is set."""
    session = verifying_session(settings.ca_bundle, timeout_s=settings.timeout_s, setting=ca_bundle_key(agent))
    session.auth = auth
    session.headers["User-Agent"] = USER_AGENT
    return session


def make_auth(settings: ExchangeServerSettings, agent: str = "") -> AuthBase:
    secret = settings.password.get_secret_value() if settings.password is not None else ""
    if settings.auth == "ntlm":
        return _checked_ntlm()(settings, secret)  # type: ignore[no-any-return]
    if settings.auth == "basic":
        return HTTPBasicAuth(settings.username or "", secret)
    if settings.auth == "negotiate":
        return _negotiate(settings)
    return OAuthBearer(settings, agent)


@functools.cache
def _checked_ntlm() -> Any:
    """requests-ntlm's ``HttpNtlmAuth``, made to say what an NTLM negotiation answered without a challenge means.

    requests-ntlm answers a 401 that offers Negotiate with NTLM inside it. Where the EWS virtual directory
    takes Kerberos only (IIS's providers ``Negotiate:Kerberos``, or NTLM refused by the domain's "Network
    security: Restrict NTLM" policy), that gets no NTLM challenge back, and requests-ntlm raised
    PermissionError ("Server did not respond with NTLM challenge token"), or KeyError when the answer had
    no WWW-Authenticate at all: a traceback and ``stopped-connector-exception`` that did not say to use
    Kerberos. No password was sent: only the negotiation's first message.
    """
    from requests_ntlm import HttpNtlmAuth

    class CheckedNtlmAuth(HttpNtlmAuth):  # type: ignore[misc]
        def __init__(self, settings: ExchangeServerSettings, secret: str) -> None:
            super().__init__(settings.username, secret)
            self.where = settings.where

        def retry_using_http_NTLM_auth(self, field: str, header: str, response: requests.Response, *args: Any) -> Any:
            try:
                return super().retry_using_http_NTLM_auth(field, header, response, *args)
            except (PermissionError, KeyError):
                offered = response.headers.get(field) or "nothing"
                raise AuthenticationError(
                    f"{self.where} did not answer the NTLM negotiation with a challenge (auth = 'ntlm'; it offers "
                    f"{offered}): most likely its Windows authentication takes Kerberos only (the Negotiate "
                    "provider without NTLM, or NTLM refused by the domain's policy, Network security: Restrict "
                    "NTLM). Set auth = 'negotiate' (Kerberos, with a ticket of the service account: see the README's "
                    "Exchange Server section), or allow NTLM for the EWS virtual directory"
                ) from None

    return CheckedNtlmAuth


def _negotiate(settings: ExchangeServerSettings) -> AuthBase:
    hint = "auth = 'negotiate' needs the kerberos extra: pip install 'mvsync[kerberos]'"
    try:
        if sys.platform == "win32":
            from requests_negotiate_sspi import HttpNegotiateAuth

            # SSPI: the logon session of the account mvsync runs as (a gMSA); no cache, no keytab
            return HttpNegotiateAuth(host=settings.kerberos_host)  # type: ignore[no-any-return]
        import gssapi  # noqa: F401  (the kerberos extra: both or neither)
        import requests_gssapi
    except ImportError as exc:
        raise ConfigurationError(f"{hint} ({exc.name} is not installed)", key="auth") from None
    creds, target = _kerberos_ready(settings)
    return _spnego_auth()(  # type: ignore[no-any-return]
        # IIS answers the authenticated request with its mutual-authentication token, and then keeps
        # the connection authenticated (later answers carry none): "optional" checks it where sent
        mutual_authentication=requests_gssapi.OPTIONAL,
        target_name=target,
        creds=creds,
        # the ticket is bound to this TLS channel (RFC 5929), which Extended Protection requires
        channel_bindings="tls-server-end-point",
        sanitize_mutual_error_response=False,
    )


@functools.cache
def _spnego_auth() -> Any:
    """requests-gssapi's ``HTTPSPNEGOAuth``, made to refuse a mutual-authentication token that does not verify.

    python-gssapi defers a failed step that produced an error token (SPNEGO's "reject") and raises
    only on the next use of the context, while requests-gssapi's ``authenticate_server`` looks at
    the step alone: a forged or broken token from the server passed as verified (shown by
    tests/agents/exchange_server/test_exchange_server_kerberos.py). Asking whether the context is
    complete surfaces the deferred error. The library's own tracebacks (``log.exception``) are
    turned into one-line records: a failure here ends as a step error that says what to do.
    """
    import requests_gssapi
    from gssapi.raw.misc import GSSError

    logging.getLogger("requests_gssapi.gssapi_").addFilter(_no_traceback)  # its module logger

    class MutualCheckedAuth(requests_gssapi.HTTPSPNEGOAuth):  # type: ignore[misc]
        def authenticate_server(self, response: requests.Response) -> bool:
            if not super().authenticate_server(response):
                return False
            try:
                return bool(self.context[urlsplit(response.url).hostname].complete)
            except GSSError:
                return False

    return MutualCheckedAuth


def _no_traceback(record: logging.LogRecord) -> bool:
    record.exc_info, record.exc_text = None, None
    return True


def spn(settings: ExchangeServerSettings) -> str:
    """``HTTP/<host>``: the service principal EWS answers Kerberos for (the URL's host unless ``kerberos_host``)."""
    return f"HTTP/{settings.kerberos_host or urlsplit(settings.ews_url).hostname}"


def _kerberos_ready(settings: ExchangeServerSettings) -> tuple[Any, Any]:
    """The client's credentials and the EWS service name, after proving a ticket for it can be had.

    requests-gssapi swallows GSSAPI failures (it logs them with a traceback and hands back the
    401), which would end the step as "EWS refused the account" with the real cause lost. So the
    ticket-granting ticket is read and a service ticket obtained here, once per session, and a
    failure becomes an error that names the host and what to do (:func:`kerberos_error`).
    """
    import gssapi
    from gssapi.raw.misc import GSSError

    name = gssapi.Name(spn(settings).replace("/", "@", 1), gssapi.NameType.hostbased_service)
    try:
        store: dict[bytes | str, bytes | str] | None = {"ccache": settings.ccache} if settings.ccache else None
        creds = gssapi.Credentials(usage="initiate", store=store)
        gssapi.SecurityContext(name=name, creds=creds, usage="initiate").step()  # fetches the service ticket
    except GSSError as exc:
        raise kerberos_error(exc, settings) from None
    return creds, name


def kerberos_error(exc: BaseException, settings: ExchangeServerSettings) -> ConnectorError:
    """A GSSAPI failure on the way to EWS as an error that names the host and says what to do."""
    text = str(exc)
    detail = text.rsplit("Minor (", 1)[-1].split("): ", 1)[-1] if "Minor (" in text else text
    where, principal = settings.where, spn(settings)
    cache = settings.ccache or os.environ.get("KRB5CCNAME") or "the default credential cache"
    lowered = detail.lower()
    if "server not found in kerberos database" in lowered:
        return AuthenticationError(
            f"the KDC knows no service principal {principal} for {where} ({detail}): set kerberos_host to "
            "the name in the EWS virtual directory's SPN, or register it on the account the EWS application pool "
            f"runs as (the alternate service account behind a load balancer): `setspn -S {principal} <account>`"
        )
    if "cannot contact any kdc" in lowered or "cannot find kdc" in lowered or "cannot resolve" in lowered:
        config = os.environ.get("KRB5_CONFIG", "/etc/krb5.conf")
        return ServerDownError(
            f"no KDC answered while getting a ticket for {principal} ({where}; {detail}): check the "
            f"realm's kdc entries in {config} (KRB5_CONFIG) and that port 88 of the domain controllers is reachable"
        )
    if "clock skew" in lowered:
        return AuthenticationError(
            f"Kerberos to {where} failed ({detail}): this host's clock and the KDC's differ by more than "
            "5 minutes; synchronise the time with the domain (chrony, systemd-timesyncd)"
        )
    if "credential" in lowered or "expired" in lowered or "no kerberos" in lowered:
        return AuthenticationError(
            f"no usable Kerberos ticket for {where} in {cache} ({detail}): get one as the account mvsync "
            "runs as (`kinit -k -t <keytab> <principal>`, or keep it fresh with k5start or SSSD), or point the "
            "ccache setting (or KRB5CCNAME) at a credential cache that holds one"
        )
    return AuthenticationError(f"Kerberos to {where} ({principal}) failed: {detail}")


#: The WWW-Authenticate scheme(s) each ``auth`` setting can answer (requests-ntlm also answers Negotiate,
#: with NTLM inside it), and the settings to suggest for each scheme a server offers.
_SCHEMES = {"ntlm": ("ntlm", "negotiate"), "negotiate": ("negotiate",), "basic": ("basic",), "oauth": ("bearer",)}
_SUGGEST = {"ntlm": "'ntlm'", "negotiate": "'negotiate' for Kerberos", "basic": "'basic'", "bearer": "'oauth'"}
_OFFER = re.compile(r"(?:^|,)\s*(negotiate|ntlm|basic|bearer)\b", re.IGNORECASE)


def refusal(settings: ExchangeServerSettings, challenge: str | None = None) -> ConnectorError:
    """What EWS's 401 means: with Kerberos, first whether a ticket can still be had, else :func:`refused`.

    A ticket that expired mid-run (k5start stopped renewing it) or a credential cache emptied
    (``kdestroy``) leaves requests-gssapi with nothing to send on a new connection: EWS's 401 then
    says nothing about the SPN, which :func:`refused` would send the administrator to check.
    """
    if settings.auth == "negotiate" and sys.platform != "win32":  # SSPI uses the logon session: no cache
        try:
            _kerberos_ready(settings)
        except ConnectorError as exc:
            return exc
    return refused(settings, challenge)


def refused(settings: ExchangeServerSettings, challenge: str | None = None) -> AuthenticationError:
    """EWS answered 401 to a request that carried credentials: what was refused and what to check.

    ``challenge`` is the 401's WWW-Authenticate: when it offers no scheme that ``auth`` can answer,
    that is what is wrong, not the account or its password, and the message says so rather than
    send an administrator to reset a password that works.
    """
    s = settings
    unoffered = _unoffered(s, challenge)
    if unoffered is not None:
        return unoffered
    if s.auth == "negotiate":
        return AuthenticationError(
            f"{s.where} refused the Kerberos ticket for {spn(s)} (HTTP 401): the SPN must belong to the "
            "account EWS runs as (or the alternate service account of a load-balanced namespace), so that EWS "
            "can read the ticket; check `setspn -Q " + spn(s) + "` and that the EWS virtual directory offers "
            "Windows authentication with the Negotiate provider"
        )
    if s.auth == "oauth":
        # Entra ID issued the token (else OAuthBearer had said so): EWS does not accept what it grants
        return AuthenticationError(
            f"{s.where} refused the token Entra ID issued to client {s.client_id} for "
            f"{s.oauth_scope or s.origin + '/.default'} (HTTP 401, auth = 'oauth'); give the app Exchange's "
            "full_access_as_app application permission with admin consent, make oauth_scope name the EWS host "
            "as Exchange knows it (https://<external host>/.default), and check that OAuth is enabled on the "
            "EWS virtual directory (hybrid modern authentication)"
        )
    return AuthenticationError(
        f"{s.where} refused {s.username} (HTTP 401, auth = '{s.auth}'); check the account (a wrong or expired "
        f"password, or the account locked out or disabled: Get-ADUser {_ad_identity(s.username or '')} -Properties "
        "LockedOut,Enabled,PasswordExpired), its password reference and the EWS virtual directory's "
        "authentication methods. Each step sends a refused password once (one failed logon toward the domain's "
        "lockout threshold), then stops"
    )


def _ad_identity(username: str) -> str:
    """How Get-ADUser finds ``username``: ``svc`` for ``DOMAIN\\svc``; a filter for ``svc@domain`` (a UPN's
    first part need not be the account's sAMAccountName)."""
    if "@" in username:
        return f"-Filter \"UserPrincipalName -eq '{username}'\""
    return username.rpartition("\\")[2]


def _unoffered(settings: ExchangeServerSettings, challenge: str | None) -> AuthenticationError | None:
    """The error for a 401 whose WWW-Authenticate offers only schemes other than ``auth``'s, else None."""
    offered = list(dict.fromkeys(m.lower() for m in _OFFER.findall(challenge or "")))
    if not offered or set(offered) & set(_SCHEMES[settings.auth]):
        return None
    names = {"ntlm": "NTLM", "negotiate": "Negotiate", "basic": "Basic", "bearer": "Bearer"}
    wanted = names[_SCHEMES[settings.auth][0]]
    first, *others = [_SUGGEST[scheme] for scheme in offered]
    suggest = first + (f" (or {', '.join(others)})" if others else "")
    return AuthenticationError(
        f"{settings.where} does not offer {wanted} authentication (auth = '{settings.auth}'): it offers "
        f"{', '.join(names[scheme] for scheme in offered)} (WWW-Authenticate). Set auth = {suggest}, or enable "
        f"{wanted} authentication on the EWS virtual directory (Set-WebServicesVirtualDirectory)"
    )


#: What to change when Entra ID refuses the token request, by its OAuth error (``{scope}``: the scope
#: asked for); "" for the rest.
_TOKEN_ADVICE = {
    "invalid_resource": (
        "Entra ID knows no resource {scope} names in this tenant: set oauth_scope to "
        "https://<EWS external host>/.default with the host hybrid modern authentication registered (the "
        "on-premises EWS URLs are service principal names of Office 365 Exchange Online in Entra ID)"
    ),
    "invalid_client": (
        "check client_secret (the secret's value, not its ID; renew it under Certificates & secrets if it "
        "expired) and client_id"
    ),
    "unauthorized_client": "check client_id and tenant_id: the app must be registered in this tenant",
    "": "check the app registration's client secret and the EWS application permission (full_access_as_app)",
}


class OAuthBearer(AuthBase):
    """``Authorization: Bearer`` with an app-only token from MSAL (cached in memory by MSAL)."""

    def __init__(self, settings: ExchangeServerSettings, agent: str = "") -> None:
        self.settings = settings
        self.agent = agent
        self._app: Any = None
        self._lock = threading.Lock()

    def _token(self) -> str:
        s = self.settings
        authority = s.authority or f"https://login.microsoftonline.com/{s.tenant_id}"
        with self._lock:
            try:
                app = self._application(authority)
                result = app.acquire_token_for_client(scopes=[s.oauth_scope or f"{s.origin}/.default"])
            except requests.RequestException as exc:
                # the sign-in endpoint's failure, not the Exchange server's, though raised inside its request
                raise unreachable_authority(authority, exc) from None
        token = result.get("access_token") if isinstance(result, dict) else None
        if not token:
            raise self._refused(result if isinstance(result, dict) else {"error": "no token"})
        return str(token)

    def _refused(self, result: dict[str, Any]) -> AuthenticationError:
        """Entra ID's refusal of the token request: its reason (AADSTS code and first line), and
        what to change for it (a resource it does not know is the scope, not the secret)."""
        s = self.settings
        scope = s.oauth_scope or f"{s.origin}/.default"
        advice = _TOKEN_ADVICE.get(str(result.get("error")), _TOKEN_ADVICE[""]).format(scope=scope)
        return AuthenticationError(
            f"Entra ID refused a token for {s.where} (client {s.client_id}) for {scope}: {entra_refusal(result)}; "
            + advice
        )

    def _application(self, authority: str) -> Any:
        """MSAL's app, made once (it reads the authority's discovery document then): an authority, or
        a tenant, that MSAL cannot use is a configuration error naming it (ValueError from MSAL)."""
        import msal

        s = self.settings
        if self._app is None:
            assert s.client_secret is not None
            http = verifying_session(s.ca_bundle, timeout_s=s.timeout_s, setting=ca_bundle_key(self.agent))
            try:
                self._app = msal.ConfidentialClientApplication(
                    s.client_id,
                    client_credential=s.client_secret.get_secret_value(),
                    authority=authority,
                    instance_discovery=s.instance_discovery,
                    http_client=http,  # with timeout_s: MSAL sets no timeout
                )
            except ValueError as exc:
                raise unusable_authority(authority, exc, "authority" if s.authority else "tenant_id") from None
        return self._app

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token()}"
        return request
