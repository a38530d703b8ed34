"""GraphEmulator: wires tenant, identity, Graph and the admin API onto one HTTPS server thread.

All state lives on the server's event loop. The Python admin API marshals each call onto that loop,
so a test can change a photo or revoke tokens in the middle of a run without locks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import shutil
import ssl
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from connector.emulator._config import EmulatorConfig, FaultSpec
from connector.emulator._faults import FaultInjector, FaultProfile, parse_faults
from connector.emulator._graph import GraphService
from connector.emulator._http import HttpServer, Request, Response, stop_server_thread
from connector.emulator._identity import App, Identity, shared_certificate
from connector.emulator._races import RemovalRace
from connector.emulator._stats import Stats
from connector.emulator._tenant import Tenant, User
from connector.emulator._throttle import Throttle, parse_throttle
from connector.emulator._tls import server_tls

__all__ = ["Admin", "GraphEmulator"]

log = logging.getLogger(__name__)
T = TypeVar("T")


def _directory_units(config: EmulatorConfig) -> int | None:
    """Identity RU budget per 10 s: S (<50 users) 3,500, M (50-500) 5,000, L 8,000 (throttling-limits.md)."""
    if config.directory_ru_per_10s != 0:
        return config.directory_ru_per_10s
    return 3500 if config.users < 50 else (5000 if config.users <= 500 else 8000)


class Admin:
    """Test hooks (Python). Every method is safe to call from any thread while the emulator runs."""

    def __init__(self, emulator: GraphEmulator) -> None:
        self._emu = emulator

    def _call(self, fn: Callable[[], T]) -> T:
        return self._emu._call(fn)

    def _user(self, key: str) -> User:
        user = self._emu.tenant.find(key)
        if user is None:
            raise KeyError(f"no such user: {key!r}")
        return user

    # users
    def users(self, include_deleted: bool = False) -> list[dict[str, Any]]:
        """All users with their mailbox kind and photo facts (a copy)."""

        def run() -> list[dict[str, Any]]:
            tenant = self._emu.tenant
            return [
                tenant.users[i].admin() for i in tenant.sorted_ids if include_deleted or not tenant.users[i].deleted
            ]

        return self._call(run)

    def get_user(self, id_or_upn: str) -> dict[str, Any]:
        return self._call(lambda: self._user(id_or_upn).admin())

    def add_user(self, **fields: Any) -> dict[str, Any]:
        """Add a user: givenName, surname, mailbox ("cloud"/"on-premises"/"none"), photo (bytes), any Graph
        property (userPrincipalName, mailNickname, accountEnabled, ...). Missing ones are generated."""
        return self._call(lambda: self._emu.tenant.add_user(fields).admin())

    def update_user(self, id_or_upn: str, **fields: Any) -> dict[str, Any]:
        def run() -> dict[str, Any]:
            user = self._user(id_or_upn)
            self._emu.tenant.update_user(user, fields)
            return user.admin()

        return self._call(run)

    def delete_user(self, id_or_upn: str, permanent: bool = False) -> None:
        self._call(lambda: self._emu.tenant.delete_user(self._user(id_or_upn), permanent))

    # photos
    def set_photo(self, id_or_upn: str, data: bytes) -> dict[str, Any]:
        """Store ``data`` as the user's photo, as is (no re-encode), with a new ETag."""

        def run() -> dict[str, Any]:
            user = self._user(id_or_upn)
            self._emu.tenant.set_photo(user, data, reencode=False)
            return user.admin()

        return self._call(run)

    def delete_photo(self, id_or_upn: str) -> bool:
        return self._call(lambda: self._emu.tenant.delete_photo(self._user(id_or_upn)))

    def get_photo(self, id_or_upn: str, size: int | None = None) -> bytes | None:
        """The exact bytes Graph serves for ``/photo/$value`` (or ``/photos/{size}x{size}/$value``)."""

        def run() -> bytes | None:
            user = self._user(id_or_upn)
            photo = user.photo
            return None if photo is None else self._emu.graph.photo_bytes_blocking(user, photo, size)

        return self._call(run)

    # tokens
    def revoke_refresh_tokens(self, id_or_upn: str | None = None) -> int:
        """Revoke refresh tokens (all, or one user's): the next refresh gets invalid_grant AADSTS50173."""

        def run() -> int:
            uid = self._user(id_or_upn).id if id_or_upn else None
            return self._emu.identity.revoke_refresh_tokens(uid)

        return self._call(run)

    def expire_refresh_tokens(self) -> int:
        """Expire all refresh tokens now: the next refresh gets invalid_grant AADSTS700082 (or 70008)."""
        return self._call(self._emu.identity.expire_refresh_tokens)

    def set_access_token_lifetime(self, seconds: int) -> None:
        """Lifetime of access tokens issued from now on (MSAL refreshes below 300 s left)."""

        def run() -> None:
            self._emu.identity.access_token_lifetime_s = int(seconds)

        self._call(run)

    def expire_access_tokens(self) -> None:
        """Every access token issued so far is now expired (Graph answers 401)."""
        self._call(self._emu.identity.expire_access_tokens)

    def issue_refresh_token(self, id_or_upn: str | None = None) -> str:
        """A new consented delegated refresh token for a user (default: the tenant's first user)."""

        def run() -> str:
            user = self._user(id_or_upn) if id_or_upn else self._emu.tenant.default_user
            app = self._emu.app
            return self._emu.identity.issue_refresh_token(app.client_id, user.id, tuple(sorted(app.delegated_scopes)))

        return self._call(run)

    def issue_app_token(self) -> str:
        """An app-only access token without a round trip (benchmarks)."""

        def run() -> str:
            app = self._emu.app
            return self._emu.identity.issue_access_token(app.client_id, None, sorted(app.roles))[0]

        return self._call(run)

    def set_app_roles(self, roles: list[str]) -> None:
        """Application permissions granted to the app (e.g. drop ProfilePhoto.ReadWrite.All to test 403)."""

        def run() -> None:
            self._emu.app.roles = set(roles)

        self._call(run)

    def set_photo_update_settings(self, settings: dict[str, Any] | None) -> None:
        """The tenant's photo policy (``{"source": "onPremises"}``), or None as if deleted."""

        def run() -> None:
            current = self._emu.tenant.photo_update_settings or {"source": "cloud", "allowedRoles": []}
            self._emu.tenant.photo_update_settings = None if settings is None else {**current, **settings}

        self._call(run)

    def set_delegated_scopes(self, scopes: list[str]) -> None:
        def run() -> None:
            self._emu.app.delegated_scopes = set(scopes)

        self._call(run)

    def approve_device_code(self, user_code: str, id_or_upn: str | None = None, approve: bool = True) -> None:
        def run() -> None:
            uid = self._user(id_or_upn).id if id_or_upn else None
            self._emu.identity.decide_device_code(user_code, uid, approve)

        self._call(run)

    def remove_at_photo_read(self, id_or_upn: str, timeout_s: float = 30.0) -> None:
        """Delete the user the moment the agent reads its photo, within the users/delta round that
        listed it (``connector.emulator._races``): later pages of the round wait for that read, the read
        is answered as the user was, and its answer is held back until a page listed the user
        ``@removed``. Each wait ends after ``timeout_s``."""

        def run() -> None:
            self._emu.graph.removal_race = RemovalRace(self._user(id_or_upn).id, timeout_s)

        self._call(run)

    def expire_delta_tokens(self) -> None:
        """A synchronization reset: delta tokens issued so far get 410 resyncRequired with a Location header."""

        def run() -> None:
            self._emu.graph.delta_floor = self._emu.tenant.version + 1
            self._emu.tenant.version += 1

        self._call(run)

    # throttling and faults
    def set_faults(self, profile: FaultSpec) -> dict[str, Any]:
        """Switch fault profile (name, dict, JSON text or None) mid-run."""
        parsed = parse_faults(profile)

        def run() -> dict[str, Any]:
            self._emu.faults.profile = parsed
            return parsed.to_dict()

        return self._call(run)

    def set_limits(
        self,
        *,
        app_rate_per_s: float | None = None,
        app_concurrency: int | None = None,
        mailbox_concurrency: int | None = 4,
        mailbox_requests_per_10min: int | None = 10_000,
    ) -> None:
        def run() -> None:
            throttle = self._emu.throttle
            throttle.set_limits(app_rate_per_s=app_rate_per_s, app_concurrency=app_concurrency)
            throttle.mailbox_concurrency = mailbox_concurrency
            throttle.mailbox_per_10min = mailbox_requests_per_10min

        self._call(run)

    def set_throttle(self, model: str | dict[str, Any] | None) -> dict[str, Any]:
        """Switch the throttling model (a name from THROTTLE_MODELS, JSON text or a dict) mid-run."""
        limits = parse_throttle(model)

        def run() -> dict[str, Any]:
            config = self._emu.config
            for name, value in limits.items():
                setattr(config, name, value)
            self._emu.throttle.apply(limits, _directory_units(config))
            return limits

        return self._call(run)

    def set_latency(self, latency_ms: float) -> None:
        def run() -> None:
            self._emu.graph.latency_s = latency_ms / 1000.0

        self._call(run)

    def stats(self) -> dict[str, Any]:
        """Counters: requests, graph_requests, photo_requests, throttled, by_status, faults, ..."""
        return self._call(self._emu.stats.snapshot)

    def reset_stats(self) -> None:
        self._call(self._emu.stats.reset)


class GraphEmulator:
    """Microsoft Graph + Entra ID on ``https://127.0.0.1:PORT`` for tests, benchmarks and the demo."""

    def __init__(self, config: EmulatorConfig | None = None) -> None:
        self.config = config or EmulatorConfig()
        cfg = self.config
        seed_uuid = uuid.uuid5(uuid.NAMESPACE_URL, f"mvsync-emulator:{cfg.seed}")
        self.tenant_id = (cfg.tenant_id or str(seed_uuid)).lower()
        client_id = (cfg.client_id or str(uuid.uuid5(seed_uuid, "client"))).lower()
        self.app = App(
            client_id=client_id,
            secret=f"emu~{uuid.uuid5(seed_uuid, 'secret').hex}",
            certificate=shared_certificate(),
            roles=set(cfg.app_roles),
            delegated_scopes=set(cfg.delegated_scopes),
        )
        self.tenant = Tenant(
            tenant_id=self.tenant_id, domain=cfg.domain, seed=cfg.seed, photo_templates=cfg.photo_templates
        )
        self.tenant.generate(cfg.users, cfg.photo_ratio, cfg.naming, cfg.guest_ratio)
        self.stats = Stats()
        self.throttle = Throttle(
            app_rate_per_s=cfg.app_rate_per_s,
            app_concurrency=cfg.app_concurrency,
            mailbox_concurrency=cfg.mailbox_concurrency,
            mailbox_per_10min=cfg.mailbox_requests_per_10min,
            mailbox_upload_per_5min=cfg.mailbox_upload_bytes_per_5min,
            mailbox_scope=cfg.mailbox_concurrency_scope,
            directory_ru_per_10s=_directory_units(cfg),
        )
        self.faults = FaultInjector(parse_faults(cfg.faults), cfg.seed)
        self.admin = Admin(self)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: HttpServer | None = None
        self._tmp: Path | None = None
        self._info: dict[str, Any] | None = None
        self.identity: Identity
        self.graph: GraphService

    # --- lifecycle ---------------------------------------------------------------------------------
    def _tls(self) -> ssl.SSLContext:
        tls = server_tls("mvsync-emulator-", "mvsync emulator CA")
        self._tmp = tls.folder
        (self._tmp / "client-cert.pem").write_bytes(self.app.certificate.cert_pem)
        (self._tmp / "client-key.pem").write_bytes(self.app.certificate.key_pem)
        (self._tmp / "client-key.pem").chmod(0o600)
        return tls.context

    def start(self) -> GraphEmulator:
        """Listen on 127.0.0.1 and return once connections are accepted."""
        if self._thread is not None:
            raise RuntimeError("emulator already started")
        self.tenant.templates.warm(self.config.warm_sizes)
        context = self._tls()
        self._loop = asyncio.new_event_loop()
        self._loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(2, "emulator-render"))
        self._server = HttpServer(self._dispatch, context)
        self._thread = threading.Thread(target=self._loop.run_forever, name="graph-emulator", daemon=True)
        self._thread.start()
        try:
            port = self._run(self._server.start(self.config.port))
        except BaseException:
            self.stop()
            raise
        base = f"https://127.0.0.1:{port}"
        self.identity = Identity(
            tenant_id=self.tenant_id,
            domain=self.config.domain,
            base_url=base,
            app=self.app,
            seed=self.config.seed,
            access_token_lifetime_s=self.config.access_token_lifetime_s,
            refresh_token_lifetime_s=self.config.refresh_token_lifetime_s,
            access_token_lifetime_spread=self.config.access_token_lifetime_spread,
            strict_rotation=self.config.strict_rotation,
            expired_code=self.config.expired_refresh_token_code,
            device_interval_s=self.config.device_code_interval_s,
            device_auto_approve=self.config.device_code_auto_approve,
            default_user=lambda: self.tenant.default_user.id,
            user_lookup=self._user_props,
        )
        self.graph = GraphService(
            config=self.config,
            tenant=self.tenant,
            identity=self.identity,
            throttle=self.throttle,
            faults=self.faults,
            stats=self.stats,
            base_url=base,
        )
        assert self._tmp is not None
        self._info = {
            "authority": f"{base}/{self.tenant_id}",
            "graph_url": f"{base}/v1.0",
            "ca_cert": str(self._tmp / "ca.pem"),
            "tenant_id": self.tenant_id,
            "client_id": self.app.client_id,
            "client_secret": self.app.secret,
            "refresh_token": self.admin.issue_refresh_token(),
            "admin_url": f"{base}/_emulator",
            "token_url": f"{base}/{self.tenant_id}/oauth2/v2.0/token",
            "client_cert": str(self._tmp / "client-cert.pem"),
            "client_key": str(self._tmp / "client-key.pem"),
            "client_cert_thumbprint": self.app.certificate.sha1_thumbprint,
            "base_url": base,
            "port": port,
            "domain": self.config.domain,
            "user": self.tenant.default_user.props["userPrincipalName"],
        }
        return self

    def stop(self) -> None:
        """Close every connection and the server thread; idempotent."""
        stop_server_thread(self._loop, self._thread, self._server)
        self._loop = self._thread = self._server = None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    def __enter__(self) -> GraphEmulator:
        return self if self._thread is not None else self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def info(self) -> dict[str, Any]:
        """authority, graph_url, ca_cert, tenant_id, client_id, client_secret, refresh_token, admin_url..."""
        if self._info is None:
            raise RuntimeError("start() the emulator first")
        return dict(self._info)

    @property
    def fault_profile(self) -> FaultProfile:
        return self.faults.profile

    # --- loop plumbing -------------------------------------------------------------------------------
    def _run(self, coro: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    def _call(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the loop thread (directly if already there or not started)."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or threading.current_thread() is thread or not thread.is_alive():
            return fn()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            try:
                future.set_result(fn())
            except BaseException as exc:
                future.set_exception(exc)

        loop.call_soon_threadsafe(run)
        return future.result(30)

    def _user_props(self, user_id: str) -> dict[str, Any] | None:
        user = self.tenant.find(user_id)
        return user.props if user else None

    # --- dispatch ------------------------------------------------------------------------------------
    async def _dispatch(self, req: Request) -> Response:
        self.stats.count("requests")
        try:
            if req.path.startswith(("/v1.0/", "/beta/")) or req.path == "/v1.0":
                response = await self.graph.handle(req)
            elif req.path.startswith("/_emulator"):
                self.stats.count("admin_requests")
                response = await self._admin_http(req)
            else:
                self.stats.count("token_requests" if req.path.endswith("/token") else "identity_requests")
                response = self.identity.handle(req)
        except Exception:  # a bug must show as a 500, not a dropped connection
            log.exception("emulator: unhandled error for %s %s", req.method, req.path)
            response = Response(
                500,
                b'{"error":{"code":"InternalServerError","message":"emulator bug"}}',
                [("Content-Type", "application/json")],
            )
        if response.fault != "reset":
            self.stats.http_by_status[str(response.status)] += 1
        return response

    async def _admin_http(self, req: Request) -> Response:
        """The admin API over HTTP (loopback only, like the whole server): same operations as ``Admin``,
        routed by ``_ADMIN_ROUTES``."""
        parts = [p for p in req.path.split("/") if p][1:]
        try:
            body: Any = json.loads(req.body) if req.body and parts[-1:] != ["photo"] else {}
        except ValueError:
            return _admin_json(400, {"error": "body is not JSON"})
        user = parts[1] if parts[:1] == ["users"] and len(parts) > 1 else ""
        route = "/".join(["users", "{id}", *parts[2:]] if user else parts)
        handler = _ADMIN_ROUTES.get((req.method, route))
        if handler is None:
            return _admin_json(404, {"error": f"no admin route {req.method} /{'/'.join(parts)}"})
        try:
            result = handler(_AdminCall(self, req, user, body))
        except KeyError as exc:
            return _admin_json(404, {"error": str(exc)})
        except (ValueError, TypeError) as exc:
            return _admin_json(400, {"error": str(exc)})
        return _admin_json(200, {} if result is None else result)  # an operation with no result answers {}


@dataclass(frozen=True)
class _AdminCall:
    """One admin HTTP request: the emulator, the request, the user id of a ``users/{id}`` route, the JSON body."""

    emulator: GraphEmulator
    request: Request
    user: str
    body: Any

    @property
    def admin(self) -> Admin:
        return self.emulator.admin

    def flag(self, name: str) -> bool:
        return self.request.query.get(name) == "true"


def _set_faults(call: _AdminCall) -> Any:
    body = call.body
    return call.admin.set_faults(
        body.get("profile") if isinstance(body, dict) and "profile" in body else (body or None)
    )


def _set_token_lifetime(call: _AdminCall) -> dict[str, Any]:
    call.admin.set_access_token_lifetime(int(call.body["seconds"]))
    return {"seconds": int(call.body["seconds"])}


def _set_latency(call: _AdminCall) -> dict[str, Any]:
    call.admin.set_latency(float(call.body["latency_ms"]))
    return {"latency_ms": float(call.body["latency_ms"])}


def _approve_device(call: _AdminCall) -> None:
    body = call.body
    call.admin.approve_device_code(body["user_code"], body.get("user"), bool(body.get("approve", True)))


_AdminHandler = Callable[[_AdminCall], Any]

#: The admin API: (method, route) -> handler. ``{id}`` stands for the user id (or UPN) in the path.
_ADMIN_ROUTES: dict[tuple[str, str], _AdminHandler] = {
    ("GET", "info"): lambda c: c.emulator.info,
    ("GET", "stats"): lambda c: c.admin.stats(),
    ("POST", "stats/reset"): lambda c: c.admin.reset_stats(),
    ("GET", "users"): lambda c: c.admin.users(include_deleted=c.flag("deleted")),
    ("POST", "users"): lambda c: c.admin.add_user(**c.body),
    ("GET", "users/{id}"): lambda c: c.admin.get_user(c.user),
    ("PATCH", "users/{id}"): lambda c: c.admin.update_user(c.user, **c.body),
    ("DELETE", "users/{id}"): lambda c: c.admin.delete_user(c.user, permanent=c.flag("permanent")),
    ("PUT", "users/{id}/photo"): lambda c: c.admin.set_photo(c.user, c.request.body),
    ("DELETE", "users/{id}/photo"): lambda c: {"deleted": c.admin.delete_photo(c.user)},
    ("POST", "tokens/revoke"): lambda c: {"revoked": c.admin.revoke_refresh_tokens(c.body.get("user"))},
    ("POST", "tokens/expire-refresh"): lambda c: {"expired": c.admin.expire_refresh_tokens()},
    ("POST", "tokens/expire-access"): lambda c: c.admin.expire_access_tokens(),
    ("PUT", "tokens/lifetime"): _set_token_lifetime,
    ("POST", "tokens/lifetime"): _set_token_lifetime,
    ("POST", "tokens/refresh-token"): lambda c: {"refresh_token": c.admin.issue_refresh_token(c.body.get("user"))},
    ("POST", "device/approve"): _approve_device,
    ("PUT", "faults"): _set_faults,
    ("POST", "faults"): _set_faults,
    ("GET", "faults"): lambda c: c.emulator.faults.profile.to_dict(),
    ("PUT", "latency"): _set_latency,
    ("POST", "latency"): _set_latency,
    ("PUT", "photo-update-settings"): lambda c: c.admin.set_photo_update_settings(dict(c.body)),
    ("POST", "photo-update-settings"): lambda c: c.admin.set_photo_update_settings(dict(c.body)),
    ("DELETE", "photo-update-settings"): lambda c: c.admin.set_photo_update_settings(None),
    ("POST", "delta/expire"): lambda c: c.admin.expire_delta_tokens(),
}


def _admin_json(status: int, obj: Any) -> Response:
    return Response(status, json.dumps(obj, default=str).encode(), [("Content-Type", "application/json")])
