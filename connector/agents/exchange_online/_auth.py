"""Getting Graph access tokens with MSAL: delegated refresh token (the classic MA way) or app-only.

Delegated: an admin consents once (``mvsync auth login`` runs the device-code flow, or imports an
existing refresh.token); from then on ``acquire_token_silent`` refreshes the access token whenever
it is close to expiry or Graph says it has expired, and MSAL rotates the refresh token inside the
cache, which we persist (encrypted, atomically) right after every MSAL call.

An ``invalid_grant`` (expired, revoked, consent withdrawn, MFA now required ...) cannot be fixed by
retrying: it becomes ``AuthenticationError`` (step status ``stopped-authentication``) whose message
names the exact command that re-authorizes. The authority failing instead (a 5xx, Entra ID's
``temporarily_unavailable``, a proxy's page where a token answer belongs) is no fault of the sign-in:
the step stops as ``stopped-server-down``, saying to run it again later (``_authority_failed``).
Token values never appear in messages or logs.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msal
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from msal.exceptions import MsalServiceError

from connector.agents.exchange_online._settings import ExchangeOnlineSettings
from connector.agents.exchange_online._tokencache import (
    CACHE_FILE_NAME,
    EncryptedTokenCache,
    ProcessTokenCache,
    key_setting,
    load_key,
)
from connector.net import (
    ca_bundle_key,
    entra_refusal,
    setting_key,
    unreachable_authority,
    unusable_authority,
    verifying_session,
)
from connector.sdk import AuthenticationError, ConfigurationError, ConnectorError

__all__ = ["AccessToken", "AuthStatus", "GraphAuth", "make_session"]

log = logging.getLogger("mvsync.agent.exchange_online.auth")

APP_SCOPES = ("https://graph.microsoft.com/.default",)
#: Refresh a little before the server's expiry so a request never leaves with a dying token.
_EXPIRY_SKEW_S = 60.0


def make_session(settings: ExchangeOnlineSettings, agent: str = "") -> requests.Session:
    """A requests session that trusts the system's trust store, or ``ca_bundle`` alone, and never
    waits longer than ``timeout_s`` for an answer (see ``connector.net.verifying_session``): MSAL
    sends on it with no timeout of its own. ``agent``: its name, for where ``ca_bundle`` is set."""
    return verifying_session(settings.ca_bundle, timeout_s=settings.timeout_s, setting=ca_bundle_key(agent))


@dataclass(frozen=True, slots=True)
class AccessToken:
    value: str
    expires_at: float

    def __repr__(self) -> str:  # never print the token itself
        return f"AccessToken(expires_at={self.expires_at:.0f})"


@dataclass(frozen=True, slots=True)
class AuthStatus:
    mode: str
    #: None in app mode: its tokens live in the process only (``ProcessTokenCache``).
    cache_file: Path | None
    cache_exists: bool
    accounts: tuple[str, ...]
    token_ok: bool
    detail: str
    #: The status a run's step would stop with for the same failure (``stopped-server-down`` for an
    #: authority out of reach, ``stopped-authentication`` for a refused sign-in); ``success`` when ok.
    status: str = "success"


#: OAuth's error for a busy authority, "Retry the request" (Learn, v2-oauth2-auth-code-flow, "Error codes
#: for token endpoint errors"): the sign-in is fine, so signing in again is no remedy.
_BUSY = "temporarily_unavailable"
#: What to do when the authority failed, in a run (or doctor, auth status) and in a sign-in
_RUN_LATER = "run the step again later"
_SIGN_IN_LATER = "sign in again later"


class GraphAuth:
    """Thread-safe source of Graph access tokens for one agent."""

    def __init__(
        self,
        settings: ExchangeOnlineSettings,
        data_dir: Path,
        reauthorize_command: str,
        *,
        session_factory: Callable[[], requests.Session] | None = None,
        signing_in: bool = False,
        agent: str = "",
    ) -> None:
        """``signing_in``: for `mvsync auth login`, which replaces a token cache it cannot decrypt.
        ``agent``: its name, so that a setting found wrong during a step is named where it is set
        (``agents.exo.settings.client_certificate``), as the checks before a run name it."""
        self.settings = settings
        self.agent = agent
        self.reauthorize_command = reauthorize_command or "mvsync auth login <agent>"
        self.cache_path = data_dir / CACHE_FILE_NAME
        self.token_cache: EncryptedTokenCache | ProcessTokenCache
        if settings.auth_mode == "delegated":  # the refresh token must outlive the process
            key = load_key(settings.token_cache_key_env, settings.token_cache_key_file, prefix=self._key(""))
            remedy = f"sign in again, which replaces it: {self.reauthorize_command}"
            used = self._key(key_setting(settings.token_cache_key_env, settings.token_cache_key_file))
            self.token_cache = EncryptedTokenCache(
                self.cache_path, key, remedy=remedy, replacing=signing_in, key_setting=used
            )
        else:
            self.token_cache = ProcessTokenCache()
        self._session_factory = session_factory or (lambda: make_session(settings))
        self._lock = threading.Lock()
        self._token: AccessToken | None = None
        self._app: msal.ClientApplication | None = None
        self._last_answer = "nothing"
        self.refresh_count = 0

    def _key(self, name: str) -> str:
        """Where the agent's setting ``name`` is set, as messages name it (``setting_key``)."""
        return setting_key(self.agent, name)

    # -- the MSAL application -------------------------------------------------------------------
    @property
    def delegated(self) -> bool:
        return self.settings.auth_mode == "delegated"

    @property
    def without_cache(self) -> str | None:
        """Why this agent keeps no token cache (app mode: ``ProcessTokenCache``), or None. Why: ``mvsync
        doctor`` checks a token cache where there is one, and in app mode its check would only repeat the
        credential's (under the name of a cache that does not exist), which ``reachable`` checks."""
        if self.delegated:
            return None
        return "auth_mode is 'app': no token cache is kept (each process gets its token with the credential)"

    def _must_sign_in(self) -> None:
        """A sign-in (`mvsync auth login`) is for delegated mode; in app mode the credential is all there is."""
        if not self.delegated:
            msg = "auth_mode is 'app': there is nothing to sign in (client credentials are used)"
            raise ConfigurationError(msg, key=self._key("auth_mode"))

    def _credential(self) -> Any:
        s = self.settings
        if s.client_secret is not None:
            return s.client_secret.get_secret_value()
        if s.client_certificate is not None:
            return _certificate_credential(s.client_certificate, s.client_certificate_password, self._key(""))
        return None

    def app(self) -> msal.ClientApplication:
        """The MSAL app (built once: it holds MSAL's HTTP throttle cache and discovery)."""
        if self._app is None:
            s = self.settings
            http = self._session_factory()
            http.hooks["response"].append(self._note_answer)
            logging.getLogger("msal.oauth2cli.oauth2").addFilter(_without_token_page)  # once: the same object
            common: dict[str, Any] = {
                "authority": s.resolved_authority,
                "token_cache": self.token_cache.cache,
                "http_client": http,
                "http_cache": {},
            }
            if not s.instance_discovery:
                common["instance_discovery"] = False
            credential = self._credential()
            try:
                if credential is None:
                    self._app = msal.PublicClientApplication(s.client_id, **common)
                else:
                    self._app = msal.ConfidentialClientApplication(s.client_id, client_credential=credential, **common)
            except ValueError as exc:  # bad authority URL, failed OIDC discovery
                raise unusable_authority(s.resolved_authority, exc, self._key("authority")) from None
            except requests.RequestException as exc:
                raise self._unreachable(exc) from None
            except MsalServiceError:  # its discovery document answered 5xx
                raise self._authority_failed(None) from None
        return self._app

    def _unreachable(self, exc: requests.RequestException) -> AuthenticationError:
        return unreachable_authority(self.settings.resolved_authority, exc)

    @contextlib.contextmanager
    def _asking_authority(self, then: str) -> Iterator[None]:
        """Around an MSAL call to the authority: its failures to get a token answer become the stops
        that name the authority (``_unreachable``, ``_authority_failed``, ``then`` saying what to do),
        not MSAL's exceptions and a traceback."""
        try:
            yield
        except requests.RequestException as exc:
            raise self._unreachable(exc) from None
        except (MsalServiceError, ValueError):  # see _authority_failed
            raise self._authority_failed(None, then) from None

    def _note_answer(self, response: requests.Response, *_: Any, **__: Any) -> None:
        """Keep the status and content type of the authority's latest answer (never its body, which
        may hold tokens): MSAL's own errors for a failed answer do not say what came back."""
        kind = response.headers.get("content-type") or "no content type"
        self._last_answer = f"HTTP {response.status_code} ({kind})"

    def _authority_failed(self, result: dict[str, Any] | None, then: str = _RUN_LATER) -> AuthenticationError:
        """The authority answered, but with no token and no verdict on the sign-in: a 5xx (MSAL raises
        ``MsalServiceError``), an answer that is not OAuth's JSON (MSAL's ``ValueError``: a proxy's or
        gateway's page), or OAuth's ``temporarily_unavailable`` (``result``).

        Why not ``_stop``: that says to sign in again, which fixes none of these, while the sign-in in
        the cache is still good; the step stops as an outage does (``stopped-server-down``), nothing lost.
        """
        how = entra_refusal(result) if result is not None else "no token answer"
        return AuthenticationError(
            f"the authority {self.settings.resolved_authority} answered {self._last_answer} with {how}: it "
            f"failed or is busy, and the sign-in is kept. Nothing is lost: {then}; if it lasts, check "
            "Microsoft 365 service health and any proxy between this host and the authority",
            status="stopped-server-down",
        )

    def _refused(self, result: dict[str, Any]) -> AuthenticationError:
        """The authority's error answer: busy (try later), or a verdict on the sign-in (``_stop``)."""
        if result.get("error") == _BUSY:
            return self._authority_failed(result)
        return self._stop(entra_refusal(result))

    @property
    def scopes(self) -> list[str]:
        return list(APP_SCOPES if not self.delegated else self.settings.scopes)

    def _persist(self) -> None:
        if self.token_cache.persist_if_changed():
            log.debug("token cache written to %s", self.cache_path)

    def _stop(self, why: str) -> AuthenticationError:
        if not self.delegated:  # nobody signs in (`mvsync auth login` refuses app mode): the credential is at fault
            key = "client_certificate" if self.settings.client_certificate is not None else "client_secret"
            return AuthenticationError(
                f"Exchange Online authentication failed: {why}. auth_mode is 'app': check {key} against the "
                "credentials and application permissions of the app registration in Entra ID"
            )
        return AuthenticationError(
            f"Exchange Online authentication failed: {why}. Re-authorize with: {self.reauthorize_command}"
        )

    def permission_missing(self, permission: str, needed_by: str, refusal: str) -> AuthenticationError:
        """Graph says the access token lacks ``permission`` (``refusal``, its answer): no object can fix
        that, so the step stops, saying how this auth mode gets the permission into the token."""
        why = f"the access token does not carry {permission}, which {needed_by} need (Graph: {refusal})"
        if not self.delegated:
            return AuthenticationError(
                f"Exchange Online authentication failed: {why}. auth_mode is 'app': add the application "
                f"permission {permission} to the app registration in Entra ID and grant admin consent for it"
            )
        return AuthenticationError(
            f"Exchange Online authentication failed: {why}. Add https://graph.microsoft.com/{permission} to "
            f"scopes in the agent's settings, grant admin consent for it in Entra ID, and sign in again: "
            f"{self.reauthorize_command}"
        )

    # -- tokens ---------------------------------------------------------------------------------
    def _account(self) -> dict[str, Any] | None:
        accounts = self.app().get_accounts(username=self.settings.username)
        return accounts[0] if accounts else None

    def _acquire(self, *, force: bool) -> AccessToken:
        app = self.app()
        if not self.delegated:
            assert isinstance(app, msal.ConfidentialClientApplication)
            result = app.acquire_token_for_client(self.scopes)
        else:
            result = self._acquire_delegated(app, force=force)
        self._persist()
        if not result:
            raise self._stop("the token cache holds no usable token")
        if "access_token" not in result:
            raise self._refused(result)
        self.refresh_count += 1
        expires_in = float(result.get("expires_in", 300))
        skew = min(_EXPIRY_SKEW_S, expires_in / 10)
        return AccessToken(str(result["access_token"]), time.monotonic() + expires_in - skew)

    def _acquire_delegated(self, app: msal.ClientApplication, *, force: bool) -> dict[str, Any] | None:
        """A delegated token: from the signed-in account's refresh token (seeded on a first run).

        ``force`` redeems the refresh token even when the cache holds a valid access token.
        """
        account = self._account()
        if account is None and self.settings.refresh_token is not None:
            # first run: seed the cache from the configured refresh token (classic refresh.token)
            seeded = app.acquire_token_by_refresh_token(
                self.settings.refresh_token.get_secret_value(), scopes=self.scopes
            )
            self._persist()
            if "access_token" not in seeded:
                raise self._refused(seeded)
            account = self._account()
            force = False  # the refresh token was just redeemed
        if account is None:
            raise self._stop(f"no signed-in account in the token cache {self.cache_path}")
        result = app.acquire_token_silent_with_error(self.scopes, account, force_refresh=force)
        return dict(result) if result else None

    def token(self) -> str:
        """A valid access token; refreshes (and persists a rotated refresh token) when needed."""
        current = self._token
        if current is not None and time.monotonic() < current.expires_at:
            return current.value
        with self._lock:
            current = self._token
            if current is None or time.monotonic() >= current.expires_at:
                # MSAL itself serves a cached AT until 5 minutes before expiry; our own clock covers
                # short-lived tokens and lets concurrent workers share one refresh. The first token of
                # a process (a run, doctor, auth status) redeems the refresh token: an access token
                # left in the cache would hide a revoked or expired sign-in for up to 90 minutes, and
                # the run would stop in the middle of its writes instead of before the first one.
                with self._asking_authority(_RUN_LATER):
                    self._token = current = self._acquire(force=current is not None or self.delegated)
            return current.value

    def invalidate(self, rejected: str) -> None:
        """Graph answered 401 for ``rejected``: the next ``token()`` fetches a new one (once)."""
        with self._lock:
            if self._token is not None and self._token.value == rejected:
                self._token = AccessToken(self._token.value, 0.0)

    # -- sign-in (``mvsync auth login``) --------------------------------------------------------
    def login_with_refresh_token(self, refresh_token: str) -> str:
        """Import an existing refresh token: redeem it once and keep the (rotated) result."""
        self._must_sign_in()
        app = self.app()
        return self._sign_in(
            lambda: app.acquire_token_by_refresh_token(refresh_token.strip(), scopes=self.scopes),
            "the refresh token was refused",
        )

    def login_device_code(self, prompt: Callable[[str], None], *, timeout_s: float | None = None) -> str:
        """Run the device-code flow; ``prompt`` shows the user the code and URL."""
        self._must_sign_in()
        app = self.app()
        if not isinstance(app, msal.PublicClientApplication):
            msg = "the device-code flow needs a public client (no client_secret); use --refresh-token-file"
            raise ConfigurationError(msg, key=self._key("client_secret"))
        with self._asking_authority(_SIGN_IN_LATER):
            flow = app.initiate_device_flow(scopes=self.scopes)
        if "user_code" not in flow:
            raise ConnectorError(f"the device-code flow could not start: {entra_refusal(flow)}")
        prompt(str(flow.get("message") or f"Open {flow['verification_uri']} and enter {flow['user_code']}"))
        if timeout_s is not None:
            flow["expires_at"] = min(float(flow.get("expires_at", time.time() + timeout_s)), time.time() + timeout_s)
        return self._sign_in(lambda: app.acquire_token_by_device_flow(flow), "sign-in did not complete")

    def _sign_in(self, redeem: Callable[[], dict[str, Any]], refused: str) -> str:
        """A new sign-in by ``redeem`` (an MSAL call) into an emptied cache, written only once it
        worked: a refused token, an abandoned device code or an unreachable authority keeps the
        sign-in the cache held (emptying the file first left the next scheduled run signed out)."""
        kept = self.token_cache.clear()
        with self._asking_authority(_SIGN_IN_LATER):
            try:
                result = redeem()
                if "access_token" not in result:
                    msg = f"{refused}: {entra_refusal(result)}; the token cache {self.cache_path} was left as it was"
                    raise ConnectorError(msg)
            except BaseException:
                self.token_cache.restore(kept)
                raise
        self._persist()
        return _username(result)

    def status(self) -> AuthStatus:
        """What ``mvsync auth status`` shows: the cache, its accounts, and whether a token comes."""
        cache = self.cache_path if self.delegated else None
        exists = cache is not None and cache.exists()
        try:
            accounts = tuple(str(a.get("username", "?")) for a in self.app().get_accounts()) if self.delegated else ()
            self.token()
            return AuthStatus(self.settings.auth_mode, cache, exists, accounts, True, "ok")
        except ConnectorError as exc:
            status = str(getattr(exc, "status", "stopped-authentication"))
            return AuthStatus(self.settings.auth_mode, cache, exists, (), False, str(exc), status)


def _without_token_page(record: logging.LogRecord) -> bool:
    """Drop MSAL's record of a token answer that is not JSON: it holds the whole body (a page, or
    anything) and a traceback, and ``GraphAuth._authority_failed`` says what happened in one line."""
    return not record.getMessage().startswith("Token response is not in json format")


def _username(result: dict[str, Any]) -> str:
    claims = result.get("id_token_claims") or {}
    return str(claims.get("preferred_username") or claims.get("oid") or "signed in")


def _certificate_credential(path: Path, password: Any, prefix: str = "") -> dict[str, str]:
    """MSAL's certificate credential from one PEM holding the key and the certificate. ``prefix``:
    where the agent's settings are (``agents.exo.settings.``), for the keys messages name."""
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read {path}: {exc.strerror}", key=f"{prefix}client_certificate") from None
    key = _private_key(pem, path, password.get_secret_value().encode() if password is not None else None, prefix)
    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        msg = f"{path} holds no PEM certificate: put the app's certificate in that file, next to its private key"
        raise ConfigurationError(msg, key=f"{prefix}client_certificate") from None
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "private_key": key_pem,
        "thumbprint": hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
        "public_certificate": cert.public_bytes(serialization.Encoding.PEM).decode(),
    }


def _private_key(pem: bytes, path: Path, password: bytes | None, prefix: str = "") -> Any:
    """The private key in ``pem``; each way it can be unusable is named with its fix.

    Why not one message: "must hold a PEM private key and certificate (TypeError)" was all an admin
    got for a key encrypted without client_certificate_password, a wrong password, or a password
    for a key that has none; each needs a different fix, and the file itself was fine.
    """
    if b"PRIVATE KEY-----" not in pem:
        msg = f"{path} holds no PEM private key: put the certificate's private key in that file, next to it"
        raise ConfigurationError(msg, key=f"{prefix}client_certificate")
    try:
        return serialization.load_pem_private_key(pem, password=password)
    except TypeError:  # the password and the key disagree on whether it is encrypted
        if password is None:
            msg = (
                f"the private key in {path} is encrypted: set client_certificate_password "
                "({ env = .. } or { file = .. })"
            )
        else:
            msg = f"the private key in {path} is not encrypted: remove client_certificate_password"
        raise ConfigurationError(msg, key=f"{prefix}client_certificate_password") from None
    except ValueError:
        if password is not None and _encrypted(pem):
            msg = f"client_certificate_password does not decrypt the private key in {path}"
            raise ConfigurationError(msg, key=f"{prefix}client_certificate_password") from None
        raise ConfigurationError(f"{path}: the private key cannot be read", key=f"{prefix}client_certificate") from None


def _encrypted(pem: bytes) -> bool:
    """Whether the PEM key is encrypted (PKCS#8 ``ENCRYPTED PRIVATE KEY``, or OpenSSL's legacy ``Proc-Type``)."""
    return b"ENCRYPTED PRIVATE KEY-----" in pem or b"Proc-Type: 4,ENCRYPTED" in pem
