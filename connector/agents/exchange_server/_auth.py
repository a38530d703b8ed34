"""The requests authentication for EWS: NTLM, Negotiate/Kerberos, Basic over TLS, or OAuth.

Which library for which (field-notes-2.md §1.7 and §1.9; exchangelib's transport wires the same
ones): NTLM through requests-ntlm (pyspnego; channel binding to the TLS certificate is sent, so
Extended Protection on the EWS virtual directory is satisfied); Negotiate through requests-gssapi
(the Kerberos ticket cache, ``kinit`` or a keytab) or, on Windows, requests-negotiate-sspi (the
service's own logon, no password anywhere); OAuth through MSAL's client-credentials flow, for
hybrid modern authentication (Exchange 2019 CU13 and later per a Microsoft Q&A answer; the audience
is the EWS host). Secrets are read from the settings' ``SecretStr`` only when a request needs them
and never appear in messages.
"""

from __future__ import annotations

import sys
import threading
from typing import Any

import requests
from requests.auth import AuthBase, HTTPBasicAuth

from connector.agents.exchange_server._settings import ExchangeServerSettings
from connector.sdk import AuthenticationError, ConfigurationError

__all__ = ["make_auth", "make_session"]


def make_session(settings: ExchangeServerSettings, auth: AuthBase) -> requests.Session:
    """A session verifying TLS (against ``ca_bundle`` when given), for one thread.

    ``trust_env`` is off with a CA bundle: REQUESTS_CA_BUNDLE would silently override it
    (psf/requests#3829).
    """
    session = requests.Session()
    if settings.ca_bundle is not None:
        session.verify = str(settings.ca_bundle)
        session.trust_env = False
    session.auth = auth
    return session


def make_auth(settings: ExchangeServerSettings) -> AuthBase:
    secret = settings.password.get_secret_value() if settings.password is not None else ""
    if settings.auth == "ntlm":
        from requests_ntlm import HttpNtlmAuth

        return HttpNtlmAuth(settings.username, secret)  # type: ignore[no-any-return]
    if settings.auth == "basic":
        return HTTPBasicAuth(settings.username or "", secret)
    if settings.auth == "negotiate":
        return _negotiate()
    return OAuthBearer(settings)


def _negotiate() -> AuthBase:
    hint = "auth = 'negotiate' needs the kerberos extra: pip install 'mvsync[kerberos]'"
    try:
        if sys.platform == "win32":
            from requests_negotiate_sspi import HttpNegotiateAuth

            return HttpNegotiateAuth()  # type: ignore[no-any-return]
        import requests_gssapi

        return requests_gssapi.HTTPSPNEGOAuth(  # type: ignore[no-any-return]
            mutual_authentication=requests_gssapi.OPTIONAL
        )
    except ImportError as exc:
        raise ConfigurationError(f"{hint} ({exc.name} is not installed)", key="auth") from None


class OAuthBearer(AuthBase):
    """``Authorization: Bearer`` with an app-only token from MSAL (cached in memory by MSAL)."""

    def __init__(self, settings: ExchangeServerSettings) -> None:
        self.settings = settings
        self._app: Any = None
        self._lock = threading.Lock()

    def _token(self) -> str:
        import msal

        s = self.settings
        with self._lock:
            if self._app is None:
                assert s.client_secret is not None
                http = requests.Session()
                if s.ca_bundle is not None:  # (REQUESTS_CA_BUNDLE would override it otherwise)
                    http.verify, http.trust_env = str(s.ca_bundle), False
                self._app = msal.ConfidentialClientApplication(
                    s.client_id,
                    client_credential=s.client_secret.get_secret_value(),
                    authority=s.authority or f"https://login.microsoftonline.com/{s.tenant_id}",
                    instance_discovery=s.instance_discovery,
                    http_client=http,
                )
            result = self._app.acquire_token_for_client(scopes=[s.oauth_scope or f"{s.origin}/.default"])
        token = result.get("access_token") if isinstance(result, dict) else None
        if not token:
            error = result.get("error", "no token") if isinstance(result, dict) else "no token"
            msg = (
                f"Entra ID refused a token for EWS at {s.origin} (client {s.client_id}): {error}; check the app "
                "registration's client secret and the EWS application permission (full_access_as_app)"
            )
            raise AuthenticationError(msg)
        return str(token)

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self._token()}"
        return request
