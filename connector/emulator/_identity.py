"""Microsoft identity platform (Entra ID v1 and v2.0 endpoints) as MSAL and azure-identity see it.

OIDC discovery (v2.0 and v1), the signing keys, the token endpoint (refresh_token,
client_credentials with a secret or a certificate assertion, device code) and the device
authorization endpoint, with error bodies in Entra's format (``AADSTSnnnn: ...\\r\\nTrace ID: ...``).

Where each behaviour comes from:

* Discovery: ``/{tenant}/v2.0/.well-known/openid-configuration`` (Learn "OpenID Connect on the
  Microsoft identity platform", "Find your app's OpenID configuration document URI") and the v1
  document ``/{tenant}/.well-known/openid-configuration`` (same page; issuer
  ``https://sts.windows.net/{tid}/``). Both name a ``jwks_uri`` that serves the signing keys as a JWK
  set with ``kid``, ``x5t``, ``n``, ``e`` and ``x5c`` (Learn "Access tokens", "Validate tokens":
  "the signing keys are at the jwks_uri"); v2.0 at ``/{tenant}/discovery/v2.0/keys``, v1 at
  ``/{tenant}/discovery/keys``.
* ID tokens are RS256 JWTs whose header ``kid`` names a key of that set, as
  ``id_token_signing_alg_values_supported: ["RS256"]`` promises (Learn "ID tokens"), so a client can
  validate them against ``jwks_uri`` (the conformance tests do, with ``cryptography``).
* Access tokens for Graph are signed with a per-emulator HMAC key that is not published: Graph
  tokens are not for clients to validate (Learn "Access tokens": "don't attempt to validate or
  read tokens for any API you don't own"); the emulator's Graph checks them without a token table.
* Access-token lifetime: "a random value ranging between 60-90 minutes (75 minutes on average)"
  (Learn "Configurable token lifetimes", "Access tokens" / "Token lifetime"): each token gets
  ``access_token_lifetime_s`` times a seeded random factor in [1, 1 + spread] (3,600-5,400 s by
  default). A client that declares the CAE capability (``xms_cc`` ``cp1`` in the ``claims`` parameter:
  MSAL ``client_capabilities=["CP1"]``, azure-identity ``enable_cae=True``) gets a long-lived token,
  "up to 28 hours" (Learn "Continuous access evaluation"); the emulator draws 20-28 h (the lower
  bound is an assumption).
* Refresh tokens are opaque and kept in a table so they can be revoked, expired and rotated: "Refresh
  tokens replace themselves with a fresh token upon every use" and the old one stays valid
  (Learn "Refresh tokens").
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import secrets
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import parse_qsl

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from connector.emulator._http import Request, Response

__all__ = ["GRAPH_APP_ID", "GRAPH_RESOURCE", "AccessClaims", "App", "ClientCertificate", "Identity"]

GRAPH_RESOURCE = "https://graph.microsoft.com"
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
OIDC_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})
KNOWN_PERMISSIONS = frozenset(
    p.lower()
    for p in (
        "User.Read",
        "User.ReadBasic.All",
        "User.Read.All",
        "User.ReadWrite",
        "User.ReadWrite.All",
        "ProfilePhoto.Read.All",
        "ProfilePhoto.ReadWrite.All",
        "Directory.Read.All",
        "Directory.ReadWrite.All",
        "Mail.Read",
        "Group.Read.All",
        "GroupMember.Read.All",
        "PeopleSettings.Read.All",
        "PeopleSettings.ReadWrite.All",
        ".default",
    )
)
DEVICE_CODE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _json_b64(obj: dict[str, Any]) -> str:
    return b64url(json.dumps(obj, separators=(",", ":")).encode())


@dataclass(frozen=True)
class ClientCertificate:
    """An app's certificate credential (what MSAL's ``client_credential={"private_key": ...}`` uses)."""

    cert_pem: bytes
    key_pem: bytes
    sha1_thumbprint: str  # hex, as the Azure portal shows it
    sha256_thumbprint: str
    public_key: rsa.RSAPublicKey

    @classmethod
    def generate(cls, common_name: str) -> ClientCertificate:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = datetime.now(UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now.replace(year=now.year + 2))
            .sign(key, hashes.SHA256())
        )
        der = cert.public_bytes(serialization.Encoding.DER)
        return cls(
            cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
            hashlib.sha1(der).hexdigest().upper(),
            hashlib.sha256(der).hexdigest().upper(),
            key.public_key(),
        )


_CERT_CACHE: dict[str, ClientCertificate] = {}


def shared_certificate(role: str = "app") -> ClientCertificate:
    """RSA key generation costs ~0.1 s; one certificate per role and process is enough.

    ``"app"`` is the emulated app's client credential, ``"signing"`` the tenant's token-signing key.
    """
    if role not in _CERT_CACHE:
        _CERT_CACHE[role] = ClientCertificate.generate(f"mvsync emulator {role}")
    return _CERT_CACHE[role]


class SigningKey:
    """The RS256 key ID tokens are signed with, and the JWK set ``jwks_uri`` serves for it."""

    def __init__(self, cert: ClientCertificate) -> None:
        key = serialization.load_pem_private_key(cert.key_pem, password=None)
        assert isinstance(key, rsa.RSAPrivateKey)
        self._key = key
        der = x509.load_pem_x509_certificate(cert.cert_pem).public_bytes(serialization.Encoding.DER)
        numbers = cert.public_key.public_numbers()
        self.kid = b64url(bytes.fromhex(cert.sha1_thumbprint))
        self.jwk = {
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.kid,
            "n": b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
            "e": b64url(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
            "x5c": [base64.b64encode(der).decode()],
        }

    def sign(self, claims: dict[str, Any]) -> str:
        signed = f"{_json_b64({'typ': 'JWT', 'alg': 'RS256', 'kid': self.kid})}.{_json_b64(claims)}"
        signature = self._key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
        return f"{signed}.{b64url(signature)}"


@dataclass
class App:
    client_id: str
    secret: str
    certificate: ClientCertificate
    roles: set[str]
    delegated_scopes: set[str]
    display_name: str = "mvsync"
    #: "Allow public client flows": refresh and device code work without a client credential.
    allow_public_client: bool = True


@dataclass
class RefreshToken:
    user_id: str
    client_id: str
    scopes: tuple[str, ...]  # Graph permission names
    issued_at: float
    expires_at: float
    revoked: bool = False


@dataclass
class DeviceCode:
    device_code: str
    user_code: str
    client_id: str
    scope: str
    expires_at: float
    state: Literal["pending", "approved", "declined", "redeemed"] = "pending"
    user_id: str | None = None


@dataclass(frozen=True)
class AccessClaims:
    """What Graph needs from a validated access token."""

    client_id: str
    user_id: str | None  # None for app-only tokens
    permissions: frozenset[str]  # lower-case roles (app) or scp (delegated)
    expires_at: float


@dataclass
class _TokenError(Exception):
    status: int
    error: str
    code: int
    description: str
    suberror: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


def aad_error_body(
    error: str, code: int, description: str, correlation_id: str | None = None, suberror: str | None = None
) -> dict[str, Any]:
    """Entra's token-endpoint error envelope, with its literal ``\\r\\n`` separators."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    trace = str(uuid.uuid4())
    correlation = correlation_id or str(uuid.uuid4())
    body: dict[str, Any] = {
        "error": error,
        "error_description": f"AADSTS{code}: {description}\r\nTrace ID: {trace}\r\n"
        f"Correlation ID: {correlation}\r\nTimestamp: {stamp}",
        "error_codes": [code],
        "timestamp": stamp,
        "trace_id": trace,
        "correlation_id": correlation,
        "error_uri": f"https://login.microsoftonline.com/error?code={code}",
    }
    if suberror:
        body["suberror"] = suberror
    return body


def _json(status: int, obj: dict[str, Any], extra: list[tuple[str, str]] | None = None) -> Response:
    headers = [
        ("Content-Type", "application/json; charset=utf-8"),
        ("Cache-Control", "no-store, no-cache"),
        ("Pragma", "no-cache"),
        *(extra or []),
    ]
    return Response(status, json.dumps(obj, separators=(",", ":")).encode(), headers)


#: The cloud a discovery document describes (both versions end with these).
_CLOUD_FACTS = {
    "tenant_region_scope": "EU",
    "cloud_instance_name": "microsoftonline.com",
    "cloud_graph_host_name": "graph.windows.net",
    "msgraph_host": "graph.microsoft.com",
    "rbac_url": "https://pas.windows.net",
}


def _cae_capable(form: dict[str, str]) -> bool:
    """The client declared ``xms_cc: cp1`` (MSAL ``client_capabilities=["CP1"]``) in ``claims``."""
    try:
        claims = json.loads(form.get("claims") or "{}")
        values = claims.get("access_token", {}).get("xms_cc", {}).get("values", [])
    except (ValueError, AttributeError):
        return False
    return isinstance(values, list) and any(str(v).lower() == "cp1" for v in values)


class Identity:
    """Token issuing and validation for one tenant (runs on the emulator loop)."""

    def __init__(
        self,
        *,
        tenant_id: str,
        domain: str,
        base_url: str,
        app: App,
        seed: int,
        access_token_lifetime_s: int,
        refresh_token_lifetime_s: int,
        access_token_lifetime_spread: float = 0.5,
        strict_rotation: bool,
        expired_code: int,
        device_interval_s: int,
        device_auto_approve: bool,
        default_user: Any,
        user_lookup: Any,
    ) -> None:
        self.tenant_id = tenant_id
        self.domain = domain
        self.base_url = base_url
        self.apps = {app.client_id: app}
        self._lifetime_s = access_token_lifetime_s
        self.access_token_lifetime_spread = access_token_lifetime_spread
        self._lifetimes = random.Random(seed)  # seeded: the same run draws the same lifetimes
        self.signing = SigningKey(shared_certificate("signing"))
        self.refresh_token_lifetime_s = refresh_token_lifetime_s
        self.strict_rotation = strict_rotation
        self.expired_code = expired_code
        self.device_interval_s = device_interval_s
        self.device_auto_approve = device_auto_approve
        self._default_user = default_user  # () -> user id
        self._user_lookup = user_lookup  # (id) -> dict | None (live users only)
        self._key = hashlib.sha256(f"emulator-signing:{seed}:{secrets.token_hex(16)}".encode()).digest()
        self.refresh_tokens: dict[str, RefreshToken] = {}
        self.device_codes: dict[str, DeviceCode] = {}
        #: Access tokens issued before this instant are treated as expired (admin "expire now").
        self.not_before = 0.0
        self._claims_cache: dict[str, AccessClaims] = {}

    @property
    def access_token_lifetime_s(self) -> int:
        """The shortest access-token lifetime (each token gets up to ``1 + spread`` times it)."""
        return self._lifetime_s

    @access_token_lifetime_s.setter
    def access_token_lifetime_s(self, seconds: int) -> None:
        """An explicit lifetime (the admin API's) is exact: a test that sets 60 s means 60 s."""
        self._lifetime_s = int(seconds)
        self.access_token_lifetime_spread = 0.0

    # --- tenants and discovery -------------------------------------------------------------------
    def known_tenant(self, name: str) -> bool:
        return name.lower() in (self.tenant_id, self.domain.lower(), "common", "organizations")

    def _issuer_tenant(self, tenant: str) -> str:
        """The tenant an issuer names: the GUID, or the ``{tenantid}`` placeholder of multi-tenant documents."""
        return self.tenant_id if tenant.lower() not in ("common", "organizations") else "{tenantid}"

    def openid_configuration(self, tenant: str) -> dict[str, Any]:
        base = f"{self.base_url}/{tenant}"
        issuer_tenant = self._issuer_tenant(tenant)
        return {
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post",
                "private_key_jwt",
                "client_secret_basic",
            ],
            "jwks_uri": f"{base}/discovery/v2.0/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "issuer": f"{self.base_url}/{issuer_tenant}/v2.0",
            "request_uri_parameter_supported": False,
            "userinfo_endpoint": f"{self.base_url}/oidc/userinfo",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "claims_supported": [
                "sub",
                "iss",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "acr",
                "nonce",
                "preferred_username",
                "name",
                "tid",
                "ver",
                "at_hash",
                "c_hash",
                "email",
            ],
            "kerberos_endpoint": f"{base}/kerberos",
            **_CLOUD_FACTS,
        }

    def openid_configuration_v1(self, tenant: str) -> dict[str, Any]:
        """The v1 document: v1 endpoints and the ``sts.windows.net`` issuer."""
        base = f"{self.base_url}/{tenant}"
        issuer_tenant = self._issuer_tenant(tenant)
        return {
            "token_endpoint": f"{base}/oauth2/token",
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "jwks_uri": f"{base}/discovery/keys",
            "response_modes_supported": ["query", "fragment", "form_post"],
            "subject_types_supported": ["pairwise"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["code", "id_token", "code id_token", "token id_token", "token"],
            "scopes_supported": ["openid"],
            "issuer": f"https://sts.windows.net/{issuer_tenant}/",
            "microsoft_multi_refresh_token": True,
            "authorization_endpoint": f"{base}/oauth2/authorize",
            "device_authorization_endpoint": f"{base}/oauth2/devicecode",
            "http_logout_supported": True,
            "frontchannel_logout_supported": True,
            "end_session_endpoint": f"{base}/oauth2/logout",
            "claims_supported": [
                "sub",
                "iss",
                "cloud_instance_name",
                "cloud_instance_host_name",
                "cloud_graph_host_name",
                "msgraph_host",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "acr",
                "amr",
                "nonce",
                "email",
                "given_name",
                "family_name",
                "nickname",
            ],
            "check_session_iframe": f"{base}/oauth2/checksession",
            "userinfo_endpoint": f"{base}/openid/userinfo",
            "kerberos_endpoint": f"{base}/kerberos",
            **_CLOUD_FACTS,
        }

    def handle(self, req: Request) -> Response:
        parts = [p for p in req.path.split("/") if p]
        correlation = req.headers.get("client-request-id")
        if parts[:3] == ["common", "discovery", "instance"]:
            return self._instance_discovery()
        if not parts or not self.known_tenant(parts[0]):
            if len(parts) >= 2 and parts[1] in ("v2.0", "oauth2"):
                code = 90002
                msg = (
                    f"Tenant '{parts[0]}' not found. Check to make sure you have the correct tenant ID and "
                    "are signing into the correct cloud."
                )
                error = "invalid_tenant" if parts[1] == "v2.0" else "invalid_request"
                return _json(400, aad_error_body(error, code, msg, correlation))
            return _json(404, {"error": "not_found", "error_description": f"No route for {req.path}"})
        tenant, rest = parts[0], parts[1:]
        if req.method == "GET":
            if rest == ["v2.0", ".well-known", "openid-configuration"]:
                return _json(200, self.openid_configuration(tenant))
            if rest == [".well-known", "openid-configuration"]:
                return _json(200, self.openid_configuration_v1(tenant))
            if rest in (["discovery", "v2.0", "keys"], ["discovery", "keys"]):
                return _json(200, {"keys": [self.signing.jwk]})
        if rest == ["oauth2", "v2.0", "token"] and req.method == "POST":
            try:
                return self._token(tenant, req)
            except _TokenError as exc:
                body = aad_error_body(exc.error, exc.code, exc.description, correlation, exc.suberror)
                return _json(exc.status, body)
        if rest == ["oauth2", "v2.0", "devicecode"] and req.method == "POST":
            try:
                return self._device_authorization(req)
            except _TokenError as exc:
                return _json(exc.status, aad_error_body(exc.error, exc.code, exc.description, correlation))
        return _json(404, {"error": "not_found", "error_description": f"No route for {req.method} {req.path}"})

    def _instance_discovery(self) -> Response:
        host = self.base_url.split("://", 1)[1]
        return _json(
            200,
            {
                "tenant_discovery_endpoint": (
                    f"{self.base_url}/{self.tenant_id}/v2.0/.well-known/openid-configuration"
                ),
                "api-version": "1.1",
                "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
            },
        )

    # --- token endpoint ----------------------------------------------------------------------------
    def _token(self, tenant: str, req: Request) -> Response:
        form = dict(parse_qsl(req.body.decode("utf-8", "replace"), keep_blank_values=True))
        basic = req.headers.get("authorization", "")
        if basic.lower().startswith("basic "):
            cid, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
            form.setdefault("client_id", cid)
            form.setdefault("client_secret", secret)
        grant = form.get("grant_type", "")
        if not grant:
            raise _TokenError(
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'grant_type'.",
            )
        app = self._app(form.get("client_id", ""), tenant)
        if grant == "client_credentials":
            return self._client_credentials(app, form, tenant)
        if grant == "refresh_token":
            self._authenticate(app, form, tenant, public_ok=True)
            return self._refresh(app, form)
        if grant == DEVICE_CODE_GRANT:
            self._authenticate(app, form, tenant, public_ok=True)
            return self._device_token(app, form)
        raise _TokenError(
            400, "unsupported_grant_type", 70003, f"The app requested an unsupported grant type '{grant}'."
        )

    def _app(self, client_id: str, tenant: str) -> App:
        if not client_id:
            raise _TokenError(
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'client_id'.",
            )
        app = self.apps.get(client_id.lower())
        if app is None:
            raise _TokenError(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{tenant}'. This can happen if the application has not been installed by the "
                "administrator of the tenant or consented to by any user in the tenant. You may "
                "have sent your authentication request to the wrong tenant.",
            )
        return app

    def _authenticate(self, app: App, form: dict[str, str], tenant: str, *, public_ok: bool) -> None:
        """Check a client secret or certificate assertion; public-client flows may send neither."""
        if "client_secret" in form:
            if not hmac.compare_digest(form["client_secret"], app.secret):
                raise _TokenError(
                    401,
                    "invalid_client",
                    7000215,
                    "Invalid client secret provided. Ensure the secret being sent in the request "
                    "is the client secret value, not the client secret ID, for a secret added to "
                    f"app '{app.client_id}'.",
                )
            return
        if "client_assertion" in form:
            if form.get("client_assertion_type") != JWT_BEARER:
                raise _TokenError(
                    400, "invalid_request", 50027, f"Invalid client_assertion_type; expected '{JWT_BEARER}'."
                )
            self._check_assertion(app, form["client_assertion"], tenant)
            return
        if not (public_ok and app.allow_public_client):
            raise _TokenError(
                401,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
            )

    def _check_assertion(self, app: App, assertion: str, tenant: str) -> None:
        def fail(why: str) -> _TokenError:
            return _TokenError(401, "invalid_client", 700027, f"Client assertion failed signature validation. {why}")

        try:
            head_b64, payload_b64, sig_b64 = assertion.split(".")
            header = json.loads(b64url_decode(head_b64))
            claims = json.loads(b64url_decode(payload_b64))
            signature = b64url_decode(sig_b64)
        except ValueError:
            raise fail("The assertion is not a well-formed JWT.") from None
        cert = app.certificate
        thumb_256, thumb_1 = header.get("x5t#S256"), header.get("x5t")
        if thumb_256:
            known = b64url_decode(thumb_256).hex().upper() == cert.sha256_thumbprint
        else:
            known = bool(thumb_1) and b64url_decode(thumb_1).hex().upper() == cert.sha1_thumbprint
        if not known:
            raise _TokenError(
                401,
                "invalid_client",
                700027,
                f"Client assertion contains an invalid signature. [Reason - The key was not found., "
                f"Thumbprint of key used by client: '{thumb_256 or thumb_1}']",
            )
        signed = f"{head_b64}.{payload_b64}".encode()
        try:
            if header.get("alg") == "PS256":
                cert.public_key.verify(
                    signature, signed, padding.PSS(padding.MGF1(hashes.SHA256()), 32), hashes.SHA256()
                )
            elif header.get("alg") == "RS256":
                cert.public_key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
            else:
                raise fail(f"Unsupported algorithm {header.get('alg')!r}.")
        except InvalidSignature:
            raise fail("The signature does not match.") from None
        now = time.time()
        if claims.get("iss") != app.client_id or claims.get("sub") != app.client_id:
            raise _TokenError(401, "invalid_client", 700023, "Client assertion audience/issuer claim mismatch.")
        if not str(claims.get("aud", "")).startswith(f"{self.base_url}/"):
            raise _TokenError(401, "invalid_client", 700021, "Client assertion audience claim does not match.")
        if float(claims.get("exp", 0)) < now - 300:
            raise _TokenError(401, "invalid_client", 700024, "Client assertion is not within its valid time range.")

    def _client_credentials(self, app: App, form: dict[str, str], tenant: str) -> Response:
        self._authenticate(app, form, tenant, public_ok=False)
        scopes = form.get("scope", "").split()
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            shown = " ".join(scopes)
            raise _TokenError(
                400,
                "invalid_scope",
                1002012,
                f"The provided value for scope {shown} is not valid. Client credential flows must "
                "have a scope value with /.default suffixed to the resource identifier "
                "(application ID URI).",
            )
        resource = scopes[0][: -len("/.default")]
        if resource.rstrip("/") not in (GRAPH_RESOURCE, GRAPH_APP_ID):
            raise _TokenError(
                400,
                "invalid_resource",
                500011,
                f"The resource principal named {resource} was not found in the tenant named {self.tenant_id}.",
            )
        token, lifetime = self.issue_access_token(app.client_id, None, sorted(app.roles), cae=_cae_capable(form))
        return _json(
            200,
            {
                "token_type": "Bearer",
                "expires_in": lifetime,
                "ext_expires_in": lifetime,
                "access_token": token,
            },
        )

    def _resolve_scopes(self, app: App, scope: str, fallback: tuple[str, ...]) -> tuple[list[str], set[str]]:
        """Graph permission names granted for ``scope`` and the OIDC scopes asked for."""
        oidc: set[str] = set()
        wanted: list[str] = []
        for item in scope.split():
            if item.lower() in OIDC_SCOPES:
                oidc.add(item.lower())
                continue
            name = item
            for prefix in (GRAPH_RESOURCE + "/", GRAPH_APP_ID + "/"):
                if item.lower().startswith(prefix):
                    name = item[len(prefix) :]
                    break
            else:
                if "/" in item:
                    resource = item.rsplit("/", 1)[0]
                    raise _TokenError(
                        400,
                        "invalid_resource",
                        500011,
                        f"The resource principal named {resource} was not found in the tenant named {self.tenant_id}.",
                    )
            if name.lower() not in KNOWN_PERMISSIONS:
                raise _TokenError(
                    400,
                    "invalid_scope",
                    70011,
                    f"The provided value for the input parameter 'scope' is not valid. The scope {item} is not valid.",
                )
            wanted.append(name)
        consented = {s.lower(): s for s in app.delegated_scopes}
        if not wanted:
            return list(fallback), oidc
        granted: list[str] = []
        for name in wanted:
            if name == ".default":
                granted.extend(s for s in app.delegated_scopes if s not in granted)
            elif name.lower() in consented:
                if consented[name.lower()] not in granted:
                    granted.append(consented[name.lower()])
            else:
                raise _TokenError(
                    400,
                    "invalid_grant",
                    65001,
                    f"The user or administrator has not consented to use the application with ID "
                    f"'{app.client_id}' named '{app.display_name}'. Send an interactive "
                    "authorization request for this user and resource.",
                    suberror="consent_required",
                )
        return granted, oidc

    def _refresh(self, app: App, form: dict[str, str]) -> Response:
        presented = form.get("refresh_token", "")
        record = self.refresh_tokens.get(presented)
        if not presented:
            raise _TokenError(
                400,
                "invalid_request",
                900144,
                "The request body must contain the following parameter: 'refresh_token'.",
            )
        if record is None:
            raise _TokenError(400, "invalid_grant", 9002313, "Invalid request. Request is malformed or invalid.")
        if record.client_id != app.client_id:
            raise _TokenError(
                400,
                "invalid_grant",
                70000,
                "Provided grant is invalid or malformed. The refresh token was issued to a different client.",
            )
        if record.revoked:
            raise _TokenError(
                400,
                "invalid_grant",
                50173,
                "The provided grant has expired due to it being revoked, a fresh auth token is "
                "needed. The user might have changed or reset their password.",
                suberror="bad_token",
            )
        now = time.time()
        if record.expires_at <= now:
            issued = datetime.fromtimestamp(record.issued_at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            days = self.refresh_token_lifetime_s // 86400
            text = (
                "The refresh token has expired due to inactivity. The token was issued on "
                f"{issued} and was inactive for {days}.00:00:00."
            )
            raise _TokenError(400, "invalid_grant", self.expired_code, text, suberror="bad_token")
        user = self._user_lookup(record.user_id)
        if user is None or not user.get("accountEnabled", True):
            raise _TokenError(
                400,
                "invalid_grant",
                50057 if user else 50034,
                "The user account is disabled." if user else "The user account does not exist in the directory.",
            )
        granted, oidc = self._resolve_scopes(app, form.get("scope", ""), record.scopes)
        if self.strict_rotation:
            record.revoked = True
        return self._delegated_response(app, record.user_id, granted, oidc, form)

    def _delegated_response(
        self, app: App, user_id: str, granted: list[str], oidc: set[str], form: dict[str, str]
    ) -> Response:
        token, lifetime = self.issue_access_token(app.client_id, user_id, granted, cae=_cae_capable(form))
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": " ".join([f"{GRAPH_RESOURCE}/{s}" for s in granted] + sorted(oidc - {"offline_access"})),
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        }
        if "offline_access" in oidc:
            body["refresh_token"] = self.issue_refresh_token(app.client_id, user_id, tuple(granted))
        user = self._user_lookup(user_id) or {}
        if "openid" in oidc:
            body["id_token"] = self._id_token(app, user_id, user)
        if form.get("client_info") == "1":
            body["client_info"] = _json_b64({"uid": user_id, "utid": self.tenant_id})
        return _json(200, body)

    def _id_token(self, app: App, user_id: str, user: dict[str, Any]) -> str:
        now = int(time.time())
        claims = {
            "aud": app.client_id,
            "iss": f"{self.base_url}/{self.tenant_id}/v2.0",
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "name": user.get("displayName"),
            "oid": user_id,
            "preferred_username": user.get("userPrincipalName"),
            "sub": b64url(hashlib.sha256(f"{app.client_id}:{user_id}".encode()).digest()[:24]),
            "tid": self.tenant_id,
            "ver": "2.0",
            "uti": b64url(secrets.token_bytes(16)),
        }
        return self.signing.sign(claims)

    # --- device code -------------------------------------------------------------------------------
    def _device_authorization(self, req: Request) -> Response:
        form = dict(parse_qsl(req.body.decode("utf-8", "replace"), keep_blank_values=True))
        app = self._app(form.get("client_id", ""), "organizations")
        self._resolve_scopes(app, form.get("scope", ""), ())  # reject bad scopes up front
        user_code = "".join(secrets.choice("ABCDEFGHJKLMNPQRSTUVWXYZ23456789") for _ in range(9))
        device_code = "DAQABAAEAAAD" + secrets.token_urlsafe(96)
        record = DeviceCode(device_code, user_code, app.client_id, form.get("scope", ""), time.time() + 900)
        if self.device_auto_approve:
            record.state, record.user_id = "approved", self._default_user()
        self.device_codes[device_code] = record
        uri = f"{self.base_url}/devicelogin"
        return _json(
            200,
            {
                "user_code": user_code,
                "device_code": device_code,
                "verification_uri": uri,
                "expires_in": 900,
                "interval": self.device_interval_s,
                "message": f"To sign in, use a web browser to open the page {uri} and enter the code "
                f"{user_code} "
                "to authenticate.",
            },
        )

    def _device_token(self, app: App, form: dict[str, str]) -> Response:
        record = self.device_codes.get(form.get("device_code", ""))
        if record is None or record.client_id != app.client_id or record.state == "redeemed":
            raise _TokenError(
                400,
                "invalid_grant",
                70000,
                "The provided value for the input parameter 'device_code' is not valid.",
            )
        if record.expires_at <= time.time():
            raise _TokenError(400, "expired_token", 70019, "Verification code expired.")
        if record.state == "pending":
            raise _TokenError(
                400,
                "authorization_pending",
                70016,
                "OAuth 2.0 device flow error. Authorization is pending. Continue polling.",
            )
        if record.state == "declined":
            raise _TokenError(400, "authorization_declined", 70000, "The user declined the sign-in request.")
        record.state = "redeemed"
        granted, oidc = self._resolve_scopes(app, record.scope, ())
        assert record.user_id is not None
        return self._delegated_response(app, record.user_id, granted, oidc, form)

    def decide_device_code(self, user_code: str, user_id: str | None, approve: bool) -> None:
        for record in self.device_codes.values():
            if record.user_code == user_code.upper().replace("-", "") and record.state == "pending":
                record.state = "approved" if approve else "declined"
                record.user_id = user_id or self._default_user()
                return
        raise KeyError(f"no pending device code {user_code!r}")

    # --- issuing and validating --------------------------------------------------------------------
    def issue_refresh_token(self, client_id: str, user_id: str, scopes: tuple[str, ...]) -> str:
        token = "1.AXkA" + secrets.token_urlsafe(120)
        now = time.time()
        self.refresh_tokens[token] = RefreshToken(user_id, client_id, scopes, now, now + self.refresh_token_lifetime_s)
        return token

    def access_token_lifetime(self, *, cae: bool = False) -> int:
        """Seconds the next access token lives: Entra's random 60-90 min (module docstring)."""
        if cae:
            return self._lifetimes.randint(20 * 3600, 28 * 3600)
        return int(self._lifetime_s * self._lifetimes.uniform(1.0, 1.0 + max(0.0, self.access_token_lifetime_spread)))

    def issue_access_token(
        self, client_id: str, user_id: str | None, permissions: list[str], *, cae: bool = False
    ) -> tuple[str, int]:
        now = time.time()
        lifetime = self.access_token_lifetime(cae=cae)
        claims: dict[str, Any] = {
            "aud": GRAPH_RESOURCE,
            "iss": f"https://sts.windows.net/{self.tenant_id}/",
            "iat": int(now),
            "nbf": int(now),
            "exp": int(now) + lifetime,
            "exp_ms": now + lifetime,
            "iat_ms": now,
            "appid": client_id,
            "tid": self.tenant_id,
            "uti": b64url(secrets.token_bytes(16)),
            "ver": "1.0",
        }
        if user_id is None:
            claims["roles"] = permissions
            claims["idtyp"] = "app"
        else:
            claims["scp"] = " ".join(permissions)
            claims["oid"] = user_id
            claims["idtyp"] = "user"
        signed = f"{_json_b64({'typ': 'JWT', 'alg': 'HS256', 'kid': 'mvsync-emulator'})}.{_json_b64(claims)}"
        sig = b64url(hmac.new(self._key, signed.encode(), hashlib.sha256).digest())
        return f"{signed}.{sig}", lifetime

    def validate(self, token: str) -> tuple[AccessClaims | None, str]:
        """Claims, or None and the Graph error message for a missing, bad or expired token."""
        if not token:
            return None, "Access token is empty."
        claims = self._claims_cache.get(token)
        if claims is None:
            parts = token.split(".")
            if len(parts) != 3:
                return None, (
                    "IDX14100: JWT is not well formed, there are no dots (.).\nThe token needs to be in "
                    "JWS or JWE Compact Serialization Format. (JWS): 'EncodedHeader.EndcodedPayload."
                    "EncodedSignature'. (JWE): 'EncodedProtectedHeader.EncodedEncryptedKey.EncodedInitiali"
                    "zationVector.EncodedCiphertext.EncodedAuthenticationTag'."
                )
            expected = b64url(hmac.new(self._key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).digest())
            if not hmac.compare_digest(expected, parts[2]):
                return None, "Access token validation failure. Invalid audience."
            payload = json.loads(b64url_decode(parts[1]))
            if payload.get("iat_ms", 0) < self.not_before:
                return None, "Access token has expired or is not yet valid."
            perms = payload.get("roles") or payload.get("scp", "").split()
            claims = AccessClaims(
                payload["appid"],
                payload.get("oid"),
                frozenset(p.lower() for p in perms),
                float(payload["exp_ms"]),
            )
            if len(self._claims_cache) > 10_000:
                self._claims_cache.clear()
            self._claims_cache[token] = claims
        if claims.expires_at <= time.time():
            return None, "Access token has expired or is not yet valid."
        return claims, ""

    def expire_access_tokens(self) -> None:
        self.not_before = time.time()
        self._claims_cache.clear()

    def revoke_refresh_tokens(self, user_id: str | None = None) -> int:
        count = 0
        for record in self.refresh_tokens.values():
            if (user_id is None or record.user_id == user_id) and not record.revoked:
                record.revoked = True
                count += 1
        return count

    def expire_refresh_tokens(self) -> int:
        now = time.time()
        for record in self.refresh_tokens.values():
            record.expires_at = min(record.expires_at, now)
        return len(self.refresh_tokens)
