"""Microsoft Graph v1.0: users, delta, profile photos and ``$batch``, with Graph's error shapes.

One code path serves a plain request and a ``$batch`` item (``execute``), so throttling, latency,
permissions and error bodies cannot drift between the two.

What the emulator does and where that comes from (held to ``msgraph-sdk``, ``azure-identity`` and
``msal`` by ``tests/emulator/test_conformance.py``):

* ``users/delta``: served under the three names Graph has for the function: ``delta`` (the docs'
  form, Learn "user: delta"), ``delta()`` (what ``GraphServiceClient.users.delta.get()`` sends: the
  URL template of msgraph-sdk-python ``msgraph/generated/users/delta/delta_request_builder.py``) and
  the namespace-qualified ``microsoft.graph.delta()`` (OData v4 URL conventions, bound functions).
  Next and delta links use ``users/delta?$skiptoken=`` / ``?$deltatoken=`` as in Learn's examples.
* ``$batch`` item URLs: relative to the version, with or without a leading ``/`` (Learn "Combine
  multiple HTTP requests using JSON batching"). msgraph-core's ``BatchRequestItem`` sends
  ``RequestInformation.url`` as it is (msgraph-core 1.5.2, ``requests/batch_request_item.py``). For a
  request made by the SDK's request builders that URL is relative (``/users/{id}/photo/$value``)
  against graph.microsoft.com and against a custom base URL alike, because ``GraphServiceClient``
  stores its base under ``path_parameters["base_url"]`` while the templates read ``{+baseurl}``
  (msgraph-sdk 1.65.0, ``generated/base_graph_service_client.py``); the base is only added when the
  request itself is sent. The emulator takes those. A ``RequestInformation`` that holds a full URL
  (``with_url(nextLink)``, ``create_with_urllib_request``) stays absolute, and ``set_url`` leaves
  ``/v1.0/...`` (its regex only matches ``//v1.0/``): microsoftgraph/msgraph-sdk-python#1015 and
  microsoftgraph/msgraph-sdk-python-core#1116 (fix in PR #1118, open) report that Graph answers such
  items 400, and microsoft-graph-docs-contrib#8576 the same for absolute URLs. So the emulator fails
  *that item* with 400 BadRequest and serves the rest of the batch; accepting it would hide, until
  production, a request Graph refuses.
* Photo upload ``PUT /users/{id}/photo/$value``: Learn "Update profilePhoto" asks for
  ``Content-Type: image/jpeg``, yet the SDKs send ``application/octet-stream`` (msgraph-sdk-dotnet#237;
  msgraph-sdk-python 1.65.0 ``users/item/photo/value/content_request_builder.py``
  ``to_put_request_information``: ``set_stream_content(body, "application/octet-stream")``); the
  service decides by the bytes ("The file you chose isn't an image", microsoft-graph-docs-contrib#6395).
  So JPEG, PNG and
  ``application/octet-stream`` are taken and the bytes are validated; other declared types get 415
  (an emulator choice: no source shows what Graph says to, say, ``image/gif``).
* A photo URL for a user that does not exist (never did, or deleted): 404
  ``Request_ResourceNotFound`` by default, the answer Graph gives when the ``users/{id}`` segment
  does not resolve (microsoft-graph-docs#6059, #18714). The sources disagree for photo URLs: a
  Microsoft Q&A answer (learn.microsoft.com/answers/questions/2079017) says ``ImageNotFound`` also
  covers a user that does not exist, so ``EmulatorConfig.unknown_user_photo = "ImageNotFound"`` keeps
  that reading available.
* Photo versions: the metadata's ``@odata.mediaEtag`` is a short quoted hex (``"BA09D118"``, Learn
  "Get profilePhoto" example); the ``ETag`` header of the photo responses is a different, weak,
  64-hex value (``W/"f7ff..."``) that changes on every upload even of the same bytes
  (goodworkaround.com, 2026-01-24, "The problem of synchronizing pictures from HR to Entra ID").
  The two are not comparable, so a client compares mediaEtag with mediaEtag.
* Throttling: 429 with ``Retry-After`` (Learn "Microsoft Graph throttling guidance"), per item
  inside a batch (Learn "JSON batching"); the SDK's RetryHandler honours it (msgraph-core
  ``middleware`` / kiota-http ``RetryHandler``).

Assumptions, not Graph's documented behaviour (say so wherever a figure depends on them):

* Latency: ``EmulatorConfig.latency_ms`` (default 0 ms) is added to every call. Microsoft publishes
  no latency figure; 0 ms measures the client, not the service.
* ``$batch`` timing: the envelope adds no latency of its own and items run ``batch_parallelism`` at a
  time (4: the documented Outlook figure, Learn "throttling-limits", "Outlook service limits for JSON
  batching"); how long Graph takes for a batch is not documented.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import itertools
import json
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, unquote, urlencode

from connector.emulator._config import EmulatorConfig
from connector.emulator._faults import FaultInjector, gzip_photo, gzip_with_base64_photo
from connector.emulator._http import Request, Response
from connector.emulator._identity import AccessClaims, Identity, b64url, b64url_decode
from connector.emulator._listing import Listing, ListingCache, SortKey
from connector.emulator._photos import available_sizes, reencode_jpeg, splice_marker
from connector.emulator._query import FilterError, parse_filter
from connector.emulator._races import RemovalRace
from connector.emulator._stats import Stats
from connector.emulator._tenant import DEFAULT_PROPERTIES, USER_PROPERTIES, Photo, Tenant, User
from connector.emulator._throttle import Throttle, format_retry_after

__all__ = ["GraphService", "model_assumptions"]

JSON_CT = "application/json;odata.metadata=minimal;odata.streaming=true;IEEE754Compatible=false;charset=utf-8"
MAX_UPLOAD = 4 * 1024 * 1024
MAX_BATCH = 20
DELTA_TOKEN_MAX_AGE_S = 7 * 86400

_PHOTO_READ = frozenset(
    {
        "profilephoto.read.all",
        "profilephoto.readwrite.all",
        "user.readbasic.all",
        "user.read.all",
        "user.readwrite.all",
    }
)
_PHOTO_WRITE = frozenset({"profilephoto.readwrite.all", "user.readwrite.all"})
_SELF = frozenset({"user.read", "user.readwrite"})
_DIRECTORY_READ = frozenset(
    {
        "user.readbasic.all",
        "user.read.all",
        "user.readwrite.all",
        "directory.read.all",
        "directory.readwrite.all",
    }
)
_DELTA_READ = _DIRECTORY_READ - {"user.readbasic.all"}
_PEOPLE_SETTINGS_WRITE = frozenset({"peoplesettings.readwrite.all"})
_PEOPLE_SETTINGS_READ = _PEOPLE_SETTINGS_WRITE | {"peoplesettings.read.all"}
#: Declared types a photo upload may carry; the bytes decide (see the module docstring).
_UPLOAD_TYPES = frozenset({"image/jpeg", "image/jpg", "image/pjpeg", "image/png", "application/octet-stream"})
_NOT_IN_COLLECTION = frozenset({"aboutMe"})
_NO_PHOTO = {
    "ImageNotFound": (
        "ImageNotFound",
        "Exception of type 'Microsoft.Fast.Profile.Core.Exception.ImageNotFoundException' was thrown.",
    ),
    "ImageNotFoundPeople": (
        "ImageNotFound",
        "Exception of type 'Microsoft.People.Image.Common.Exceptions.ImageNotFoundException' was thrown.",
    ),
    "ErrorEntityNotFound": (
        "ErrorEntityNotFound",
        "Exception of type 'Microsoft.Fast.Profile.Core.Exception.ImageNotFoundException' was thrown.",
    ),
    "ErrorItemNotFound": ("ErrorItemNotFound", "The photo wasn't found."),
    "legacy-1x1": (
        "ImageNotFound",
        "Exception of type 'Microsoft.Fast.Profile.Core.Exception.ImageNotFoundException' was thrown.",
    ),
}
#: The body of a ``$batch`` item that got the fault profile's gzip photo, before its size (``_batch_item``).
_GZIP_PHOTO = "gzip-photo-of-bytes:"
#: The names Graph answers ``users/delta`` under (see the module docstring).
_DELTA_FORMS = frozenset({"delta", "delta()", "microsoft.graph.delta()"})
_DELTA_ID_FILTER = re.compile(r"^\s*id\s+eq\s+'([^']*)'\s*((?:\s+or\s+id\s+eq\s+'[^']*'\s*)*)$", re.IGNORECASE)


def model_assumptions(latency_ms: float, batch_parallelism: int) -> dict[str, str]:
    """The modelling choices Microsoft does not document, as a benchmark should print them.

    A figure measured against the emulator depends on these; they are not Graph's behaviour.
    """
    return {
        "latency": f"{latency_ms:g} ms added to every Graph call: an assumption (Microsoft publishes no latency)",
        "batch_timing": (
            f"a $batch adds no latency of its own and runs {batch_parallelism} items at a time: an assumption "
            "(Graph does not document a batch's timing; 4 is the documented Outlook batch parallelism)"
        ),
    }


class GraphError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: list[tuple[str, str]] | None = None,
        inner: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or []
        self.inner = inner or {}


@dataclass
class _Route:
    """A parsed Graph URL: what it touches decides which limits and permissions apply."""

    handler: Callable[[], Awaitable[Response]]
    mailbox: str | None = None  # Outlook (photo) routes
    resource_units: int = 0  # directory routes
    photo: bool = False


def _b64decode_any(text: str) -> bytes:
    """Standard or URL-safe base64, padded or not (Graph emits standard; accept both)."""
    cleaned = text.strip().replace("-", "+").replace("_", "/")
    return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4), validate=True)


class GraphService:
    """Graph routes for one emulator (event loop only)."""

    def __init__(
        self,
        *,
        config: EmulatorConfig,
        tenant: Tenant,
        identity: Identity,
        throttle: Throttle,
        faults: FaultInjector,
        stats: Stats,
        base_url: str,
    ) -> None:
        self.config = config
        self.tenant = tenant
        self.identity = identity
        self.throttle = throttle
        self.faults = faults
        self.stats = stats
        self.base_url = base_url
        self.graph_url = f"{base_url}/v1.0"
        self.latency_s = config.latency_ms / 1000.0
        self.delta_floor = 0  # delta tokens older than this tenant version need a resync
        #: ``GET /users`` listings kept between pages (``_listing``)
        self.listings = ListingCache()
        #: A removal made to race the agent's photo read (``Admin.remove_at_photo_read``), until it is done
        self.removal_race: RemovalRace | None = None

    # --- responses -------------------------------------------------------------------------------
    def _headers(self, req: Request, rid: str) -> list[tuple[str, str]]:
        return [
            ("request-id", rid),
            ("client-request-id", req.headers.get("client-request-id", rid)),
            ("Cache-Control", "no-cache"),
        ]

    def _json(
        self, req: Request, rid: str, status: int, obj: Any, extra: list[tuple[str, str]] | None = None
    ) -> Response:
        headers = [
            *self._headers(req, rid),
            ("Content-Type", JSON_CT),
            ("OData-Version", "4.0"),
            *(extra or []),
        ]
        return Response(status, json.dumps(obj, separators=(",", ":")).encode(), headers)

    def _error(self, req: Request, rid: str, err: GraphError) -> Response:
        inner = {
            "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S"),
            "request-id": rid,
            "client-request-id": req.headers.get("client-request-id", rid),
            **err.inner,
        }
        body = {"error": {"code": err.code, "message": err.message, "innerError": inner}}
        headers = [*self._headers(req, rid), ("Content-Type", "application/json"), *err.headers]
        return Response(err.status, json.dumps(body, separators=(",", ":")).encode(), headers)

    def _retry_after(self, seconds: float) -> str:
        return format_retry_after(seconds, self.config.retry_after_format == "decimal")

    def _fault_error(self, kind: str) -> GraphError:
        self.stats.count("faults_injected")
        self.stats.faults[kind] += 1
        retry = self.faults.retry_after()
        headers = [("Retry-After", retry)] if retry else []
        if kind == "429":
            return GraphError(
                429,
                "TooManyRequests",
                "Please retry again later.",
                headers,
                {"code": "429", "message": "Please retry after", "status": "429"},
            )
        if kind == "503":
            return GraphError(
                503,
                "serviceNotAvailable",
                "The service is temporarily unavailable. Please retry after a delay.",
                headers,
            )
        return GraphError(504, "UnknownError", "Gateway timeout.", [])

    # --- entry point -----------------------------------------------------------------------------
    async def handle(self, req: Request) -> Response:
        """A request on the wire: faults, auth, then one route or a whole ``$batch``."""
        rid = str(uuid.uuid4())
        self.stats.count("graph_http_requests")
        decision = self.faults.draw(req.method, req.target)
        if decision.kind in ("reset", "truncate"):
            self.stats.count("faults_injected")
            self.stats.faults[decision.kind] += 1
        if decision.kind == "reset":
            return Response(0, fault="reset")
        if decision.extra_latency_s:
            self.stats.faults["latency"] += 1
            await asyncio.sleep(decision.extra_latency_s)
        if decision.kind in ("429", "503", "504"):
            self.stats.count("graph_requests")
            response = self._error(req, rid, self._fault_error(decision.kind))
            self.stats.by_status[str(response.status)] += 1
            return response
        claims, why = self.identity.validate(_bearer(req))
        if claims is None:
            self.stats.count("graph_requests")
            self.stats.by_status["401"] += 1
            challenge = (
                f'Bearer realm="", authorization_uri="{self.base_url}/common/oauth2/authorize", '
                'client_id="00000003-0000-0000-c000-000000000000"'
            )
            return self._error(
                req,
                rid,
                GraphError(401, "InvalidAuthenticationToken", why, [("WWW-Authenticate", challenge)]),
            )
        if req.path.rstrip("/") == "/v1.0/$batch":
            response = await self._batch(req, rid, claims)
        else:
            response = await self.execute(req, rid, claims, in_batch=False)
        if decision.kind == "truncate":
            response.fault = "truncate"
        return response

    async def execute(self, req: Request, rid: str, claims: AccessClaims, *, in_batch: bool) -> Response:
        """One Graph call (plain or a batch item): admission, latency, handler."""
        self.stats.count("graph_requests")
        try:
            if in_batch:
                decision = self.faults.draw(req.method, req.target, in_batch=True)
                if decision.extra_latency_s:
                    self.stats.faults["latency"] += 1
                    await asyncio.sleep(decision.extra_latency_s)
                if decision.kind:
                    raise self._fault_error(decision.kind)
            route = self._route(req, rid, claims)
            if route.photo:
                self.stats.count("photo_requests")
            refusal = self.throttle.admit(claims.client_id, route.mailbox, route.resource_units)
            if refusal is None and route.mailbox is not None and req.method in ("PUT", "PATCH", "POST"):
                refusal = self.throttle.admit_upload(claims.client_id, route.mailbox, len(req.body or b""))
            if refusal is not None:
                self.stats.count("throttled")
                self.stats.throttled_by_scope[refusal.scope] += 1
                headers = [("Retry-After", self._retry_after(refusal.wait_s))]
                inner = (
                    {"code": "429", "message": "Please retry after", "status": "429"}
                    if refusal.code == "TooManyRequests"
                    else {}
                )
                if route.resource_units:
                    headers += [
                        (
                            "x-ms-throttle-scope",
                            f"{refusal.scope}/{claims.client_id}/{self.tenant.tenant_id}",
                        ),
                        ("x-ms-throttle-information", "ResourceUnitLimitExceeded"),
                    ]
                raise GraphError(429, refusal.code, refusal.message, headers, inner)
            entered = self.throttle.enter(claims.client_id, route.mailbox)
            try:
                if self.latency_s:
                    await asyncio.sleep(self.latency_s)
                response = await route.handler()
            finally:
                self.throttle.leave(entered)
            if route.resource_units:
                response.headers.append(("x-ms-resource-unit", str(route.resource_units)))
                used = self.throttle.ru_used(claims.client_id)
                if used is not None and used > 0.8:  # "returned only when ... more than 0.8 of its limit"
                    response.headers.append(("x-ms-throttle-limit-percentage", f"{used:.2f}"))
        except GraphError as err:
            response = self._error(req, rid, err)
        self.stats.by_status[str(response.status)] += 1
        return response

    # --- routing ---------------------------------------------------------------------------------
    def _route(self, req: Request, rid: str, claims: AccessClaims) -> _Route:
        segments = [s for s in req.path.split("/") if s][1:]  # drop "v1.0"
        if not segments:
            raise GraphError(400, "BadRequest", "Invalid request.")
        if segments[0] == "me":
            if claims.user_id is None:
                raise GraphError(400, "BadRequest", "/me request is only valid with delegated authentication flow.")
            segments = ["users", claims.user_id, *segments[1:]]
        if segments[0] == "admin" and req.path.startswith("/beta/"):
            return self._people_admin(req, rid, claims, segments[1:])
        if segments[0] != "users":
            raise GraphError(400, "BadRequest", f"Resource not found for the segment '{segments[0]}'.")
        method = req.method
        if len(segments) == 1 or segments[1] == "$count" or segments[1].lower() in _DELTA_FORMS:
            if method != "GET":
                raise GraphError(405, "Request_BadRequest", "Specified HTTP method is not allowed for the request uri.")
            kind = "list" if len(segments) == 1 else ("$count" if segments[1] == "$count" else "delta")
            allowed = _DELTA_READ if kind == "delta" else _DIRECTORY_READ
            self._require(
                claims,
                allowed,
                None,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            )
            handlers = {"list": self._list_users, "$count": self._count_users, "delta": self._delta}
            query = req.query
            units = max(
                1,
                2 - ("$select" in query) - (query.get("$top", "100").isdigit() and int(query.get("$top", "100")) < 20),
            )
            return _Route(lambda: handlers[kind](req, rid), resource_units=units)
        key = segments[1]
        rest = segments[2:]
        if not rest:
            if method != "GET":
                raise GraphError(405, "Request_BadRequest", "Specified HTTP method is not allowed for the request uri.")
            user = self.tenant.find(key)
            self._require(
                claims,
                _DIRECTORY_READ,
                user,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            )
            query = req.query
            return _Route(lambda: self._get_user(req, rid, key, user), resource_units=1 if "$select" in query else 2)
        if rest[0] not in ("photo", "photos"):
            raise GraphError(400, "BadRequest", f"Resource not found for the segment '{rest[0]}'.")
        user = self.tenant.find(key)
        write = method in ("PUT", "PATCH", "DELETE")
        self._require(
            claims,
            _PHOTO_WRITE if write else _PHOTO_READ,
            user,
            "ErrorInsufficientPermissionsInAccessToken",
            "Exception of type 'Microsoft.Fast.Profile.Core.Exception.ProfileAccessDeniedException' was thrown.",
        )
        mailbox = user.id if user else key.lower()
        race = self.removal_race
        if race is not None and user is not None and user.id == race.user_id and method == "GET":
            return _Route(
                lambda: race.photo_read(self.tenant, lambda: self._photo(req, rid, key, user, rest)),
                mailbox=mailbox,
                photo=True,
            )
        return _Route(lambda: self._photo(req, rid, key, user, rest), mailbox=mailbox, photo=True)

    def _people_admin(self, req: Request, rid: str, claims: AccessClaims, rest: list[str]) -> _Route:
        """``/beta/admin/people/photoUpdateSettings``: the tenant's photo policy (GET, PATCH, DELETE).

        Microsoft Learn, photoupdatesettings (beta): ``source`` is ``cloud`` or ``onPremises``
        (on-premises photos only: cloud updates by admins and users are off), ``allowedRoles`` the
        role template ids that may edit photos in the cloud; reading needs PeopleSettings.Read.All,
        writing PeopleSettings.ReadWrite.All.
        """
        if rest != ["people", "photoUpdateSettings"]:
            raise GraphError(400, "BadRequest", f"Resource not found for the segment '{'/'.join(rest)}'.")
        write = req.method in ("PATCH", "DELETE")
        if req.method not in ("GET", "PATCH", "DELETE"):
            raise GraphError(405, "Request_BadRequest", "Specified HTTP method is not allowed for the request uri.")
        allowed = _PEOPLE_SETTINGS_WRITE if write else _PEOPLE_SETTINGS_READ
        self._require(claims, allowed, None, "Authorization_RequestDenied", "Insufficient privileges.")

        async def handle() -> Response:
            tenant = self.tenant
            if req.method == "DELETE":
                tenant.photo_update_settings = None
                return Response(204, b"", self._headers(req, rid))
            if req.method == "PATCH":
                body = json.loads(req.body or b"{}")
                if body.get("source", "cloud") not in ("cloud", "onPremises"):
                    raise GraphError(400, "BadRequest", f"Invalid value for 'source': {body.get('source')!r}.")
                current = tenant.photo_update_settings or {"source": "cloud", "allowedRoles": []}
                tenant.photo_update_settings = {
                    **current,
                    **{k: body[k] for k in ("source", "allowedRoles") if k in body},
                }
            if tenant.photo_update_settings is None:
                raise GraphError(404, "ResourceNotFound", "photoUpdateSettings not found.")
            context = f"{self.base_url}/beta/$metadata#admin/people/photoUpdateSettings/$entity"
            entity = {"@odata.context": context, "id": tenant.tenant_id, **tenant.photo_update_settings}
            return self._json(req, rid, 200, entity)

        return _Route(handle, resource_units=1)

    @staticmethod
    def _require(claims: AccessClaims, allowed: frozenset[str], target: User | None, code: str, message: str) -> None:
        if claims.permissions & allowed:
            return
        if (
            claims.user_id is not None
            and target is not None
            and target.id == claims.user_id
            and claims.permissions & _SELF
        ):
            return
        raise GraphError(403, code, message)

    # --- users -----------------------------------------------------------------------------------
    @staticmethod
    def _select(query: dict[str, str], collection: bool) -> tuple[str, ...] | None:
        raw = query.get("$select")
        if raw is None:
            return None
        names = tuple(n.strip() for n in raw.split(",") if n.strip())
        for name in names:
            if name not in USER_PROPERTIES:
                raise GraphError(
                    400,
                    "Request_BadRequest",
                    f"Could not find a property named '{name}' on type 'microsoft.graph.user'.",
                )
            if collection and name in _NOT_IN_COLLECTION:
                raise GraphError(501, "NotImplemented", "This operation target is not yet supported.")
        return names

    def _context(self, select: tuple[str, ...] | None, suffix: str = "") -> str:
        return f"{self.graph_url}/$metadata#users{'(' + ','.join(select) + ')' if select else ''}{suffix}"

    async def _get_user(self, req: Request, rid: str, key: str, user: User | None) -> Response:
        select = self._select(req.query, collection=False)
        if user is None:
            raise _user_not_found(key)
        body = {"@odata.context": self._context(select, "/$entity"), **user.graph(select)}
        return self._json(req, rid, 200, body)

    def _filtered(self, req: Request) -> tuple[list[User], bool]:
        """Users matching ``$filter``/``$search`` and whether advanced-query mode is on."""
        query = req.query
        eventual = req.headers.get("consistencylevel", "").lower() == "eventual"
        advanced = eventual and query.get("$count", "").lower() == "true"
        users = self.tenant.live_users()
        if "$search" in query:
            if not eventual:
                raise GraphError(
                    400,
                    "Request_UnsupportedQuery",
                    "Request with $search query parameter only works through MSGraph with a special "
                    "request header: 'ConsistencyLevel: eventual'",
                )
            users = [u for u in users if _search_match(u, query["$search"])]
        if query.get("$filter"):
            try:
                flt = parse_filter(query["$filter"])
            except FilterError as exc:
                code = "Request_UnsupportedQuery" if exc.property else "BadRequest"
                raise GraphError(400, code, str(exc)) from None
            if flt.advanced and not advanced:
                op = sorted(flt.advanced)[0]
                raise GraphError(
                    400,
                    "Request_UnsupportedQuery",
                    f"Operator '{op}' is not supported because the required parameters might be "
                    "missing. Try adding $count=true query parameter and ConsistencyLevel:eventual "
                    "header. Refer to https://aka.ms/graph-docs/advanced-queries for more information",
                )
            users = [u for u in users if flt.predicate(u.props)]
        return users, advanced

    def _listing(self, req: Request, order_prop: str) -> tuple[Listing, bool]:
        """The users a listing query matches, sorted by ``order_prop`` then id, and whether it is advanced.

        Built once per query and tenant state (``ListingCache``): the key holds everything ``_filtered``
        decides by, so a cached listing answers only a query that was valid when it was built.
        """
        query = req.query
        eventual = req.headers.get("consistencylevel", "").lower() == "eventual"
        advanced = eventual and query.get("$count", "").lower() == "true"
        key = (query.get("$search"), query.get("$filter"), eventual, advanced, order_prop)

        def build() -> Listing:
            users, _ = self._filtered(req)
            self.stats.count("users_examined", len(self.tenant.sorted_ids))
            keyed = sorted(((str(u.props.get(order_prop) or "").lower(), u.id), u) for u in users)
            return Listing([k for k, _ in keyed], [u for _, u in keyed])

        return self.listings.get(self.tenant.edits, key, build), advanced

    async def _count_users(self, req: Request, rid: str) -> Response:
        if req.headers.get("consistencylevel", "").lower() != "eventual":
            raise GraphError(400, "Request_BadRequest", "$count is not currently supported.")
        users = self._listing(req, "id")[0].users
        headers = [*self._headers(req, rid), ("Content-Type", "text/plain")]
        return Response(200, str(len(users)).encode(), headers)

    async def _list_users(self, req: Request, rid: str) -> Response:
        query = req.query
        if "$skip" in query:
            raise GraphError(400, "Request_BadRequest", "'$skip' is not supported by the service.")
        top_text = query.get("$top", "100")
        if not top_text.isdigit() or not 1 <= int(top_text) <= 999:
            raise GraphError(
                400,
                "Request_UnsupportedQuery",
                f"Invalid page size specified: '{top_text}'. Must be between 1 and 999 inclusive.",
            )
        top = int(top_text)
        select = self._select(query, collection=True)
        order_prop, descending = "id", False
        if query.get("$orderby"):
            parts = query["$orderby"].split()
            if (
                parts[0] not in ("displayName", "userPrincipalName", "id")
                or len(parts) > 2
                or (len(parts) == 2 and parts[1].lower() not in ("asc", "desc"))
            ):
                raise GraphError(400, "Request_UnsupportedQuery", f"Order by '{query['$orderby']}' not supported.")
            order_prop, descending = parts[0], len(parts) == 2 and parts[1].lower() == "desc"
        listing, advanced = self._listing(req, order_prop)
        if query.get("$orderby") and query.get("$filter") and not advanced:
            raise GraphError(400, "Request_UnsupportedQuery", "Sorting not supported for current query.")
        after = _skiptoken_key(query["$skiptoken"]) if "$skiptoken" in query else None
        page, more = listing.page(after, top, descending)
        self.stats.count("users_examined", len(page))
        body: dict[str, Any] = {"@odata.context": self._context(select)}
        if advanced and "$skiptoken" not in query:
            body["@odata.count"] = len(listing.users)
        if more:
            token = b64url(json.dumps({"k": list(page[-1][0])}).encode())
            params = {k: v for k, v in query.items() if k != "$skiptoken"}
            params["$skiptoken"] = token
            body["@odata.nextLink"] = f"{self.graph_url}/users?{_encode(params)}"
        body["value"] = [u.graph(select) for _, u in page]
        return self._json(req, rid, 200, body)

    # --- delta -----------------------------------------------------------------------------------
    async def _delta(self, req: Request, rid: str) -> Response:
        query = req.query
        prefer = req.headers.get("prefer", "").lower()
        minimal = "return=minimal" in prefer
        size_match = re.search(r"odata\.maxpagesize=(\d+)", prefer)
        page_size = min(999, max(1, int(size_match.group(1)))) if size_match else 100
        applied = [
            p for p, on in (("return=minimal", minimal), (f"odata.maxpagesize={page_size}", bool(size_match))) if on
        ]
        extra = [("Preference-Applied", ", ".join(applied))] if applied else []
        now = time.time()
        if query.get("$deltatoken") or "$skiptoken" in query:  # an empty $deltatoken is the initial query
            raw = query.get("$deltatoken") or query.get("$skiptoken", "")
            if raw == "latest":
                state: dict[str, Any] = {"b": self.tenant.version, "t": now, "s": None, "f": None}
                return self._json(
                    req,
                    rid,
                    200,
                    {
                        "@odata.context": self._context(None),
                        "@odata.deltaLink": self._delta_link("$deltatoken", state),
                        "value": [],
                    },
                    extra,
                )
            try:
                state = json.loads(b64url_decode(raw))
                assert isinstance(state, dict)
            except (ValueError, AssertionError, binascii.Error):
                raise GraphError(400, "Request_BadRequest", "The delta token is not valid.") from None
            if now - float(state.get("t", 0)) > DELTA_TOKEN_MAX_AGE_S:
                # Learn, "Duration of change tracking tokens": a directory delta link older than 7 days
                raise GraphError(
                    400,
                    "syncStateNotFound",
                    "The sync state generation is not found. The delta token is expired and data must be "
                    "synchronized again.",
                )
            if int(state.get("b", 0)) < self.delta_floor:
                # Learn, delta-query-overview, "Synchronization reset": 410 with a Location header holding
                # the initial query (an empty $deltatoken)
                raise GraphError(
                    410,
                    "resyncRequired",
                    "The delta token is no longer valid. Start a new round without a delta token.",
                    [("Location", f"{self.graph_url}/users/delta?$deltatoken=")],
                )
            if "$deltatoken" in query:  # a new round of changes since state["b"]
                state = {**state, "p": "c", "e": self.tenant.version, "a": ""}
        else:
            select = self._select(query, collection=True)
            ids = _delta_ids(query.get("$filter"))
            state = {
                "p": "i",
                "b": self.tenant.version,
                "t": now,
                "s": list(select) if select else None,
                "f": ids,
                "a": "",
            }
        select = tuple(state["s"]) if state.get("s") else None
        tracked = select or DEFAULT_PROPERTIES
        wanted = set(state["f"]) if state.get("f") else None
        race = self.removal_race
        if race is not None and not race.done:
            await race.before_delta_page()
        replayed = self._replayed_removals(state, wanted)
        items = self._delta_items(state, wanted, tracked, minimal, page_size)
        body: dict[str, Any] = {"@odata.context": self._context(select)}
        if len(items) > page_size:
            items = items[:page_size]
            after = {"a": items[-1][0], "v": self.tenant.version}
            body["@odata.nextLink"] = self._delta_link("$skiptoken", {**state, **after})
        else:
            next_base = state["b"] if state["p"] == "i" else state["e"]
            body["@odata.deltaLink"] = self._delta_link(
                "$deltatoken", {"b": next_base, "t": now, "s": state.get("s"), "f": state.get("f")}
            )
        # replays first: a page may then hold a few more entries than maxpagesize asked for
        body["value"] = [props for _, props in (*replayed, *items)]
        if race is not None:
            race.served_delta_page(body["value"])
        return self._json(req, rid, 200, body, extra)

    def _delta_items(
        self, state: dict[str, Any], wanted: set[str] | None, tracked: tuple[str, ...], minimal: bool, page_size: int
    ) -> list[tuple[str, dict[str, Any]]]:
        """Up to ``page_size + 1`` entries after the last id listed (the extra one says more follow).

        A page visits only the ids it may list (``_delta_candidates``), from a bisect: it used to walk the
        tenant from its first id on every page, so an initial round of 100,000 users cost the square.
        """
        initial = state["p"] == "i"
        since = int(state["b"])
        removed = {} if initial else {uid: why for _, uid, why in self.tenant.tombstones_since(since)}
        items: list[tuple[str, dict[str, Any]]] = []
        examined = 0
        for uid in self._delta_candidates(state, wanted, removed):
            examined += 1
            user = self.tenant.users.get(uid)
            if uid in removed:
                items.append((uid, {"id": uid, "@removed": {"reason": removed[uid]}}))
            elif user is not None and not user.deleted:
                changed = [p for p in tracked if initial or user.versions.get(p, 0) > since]
                if changed:
                    props = (
                        {"id": uid, **{p: user.props.get(p) for p in changed}}
                        if minimal and not initial
                        else {k: v for k, v in user.graph(tracked).items() if v is not None}
                    )
                    items.append((uid, props))
            if len(items) > page_size:
                break
        self.stats.count("users_examined", examined)
        return items

    def _delta_candidates(
        self, state: dict[str, Any], wanted: set[str] | None, removed: dict[str, str]
    ) -> Iterator[str]:
        """The ids a delta page may list, ascending after ``state["a"]``.

        An initial round may list any user; a round of changes only those added, changed or deleted
        since its base version (the tenant's change log), so its pages cost the changes, not the tenant.
        """
        if state["p"] == "i":
            pool = sorted(wanted) if wanted is not None else self.tenant.sorted_ids
        else:
            changed = self.tenant.changed_since(int(state["b"])) | removed.keys()
            pool = sorted(changed & wanted if wanted is not None else changed)
        return itertools.islice(pool, bisect.bisect_right(pool, str(state["a"])), None)

    def _replayed_removals(self, state: dict[str, Any], wanted: set[str] | None) -> list[tuple[str, dict[str, Any]]]:
        """Users this round listed on an earlier page and deleted since that page was served, ``@removed``.

        Learn, delta-query-overview, *Replays*: an object can come again in a round, and the most recent
        change comes last; a client must be ready for it. Without this the emulator listed a user once
        per round whatever happened meanwhile, and an agent never met a removal after a presence.
        """
        if "v" not in state or not state.get("a"):
            return []
        since, listed_up_to = int(state["v"]), str(state["a"])
        return [
            (uid, {"id": uid, "@removed": {"reason": reason}})
            for _, uid, reason in self.tenant.tombstones_since(since)
            if uid <= listed_up_to and (wanted is None or uid in wanted)
        ]

    def _delta_link(self, name: str, state: dict[str, Any]) -> str:
        token = b64url(json.dumps(state, separators=(",", ":")).encode())
        return f"{self.graph_url}/users/delta?{name}={token}"

    # --- photos ----------------------------------------------------------------------------------
    def _no_photo(self) -> GraphError:
        code, message = _NO_PHOTO[self.config.no_photo_variant]
        return GraphError(404, code, message)

    def _unknown_user_photo(self, key: str) -> GraphError:
        """A photo URL whose user does not resolve (see the module docstring for the sources)."""
        if self.config.unknown_user_photo == "ImageNotFound":
            return self._no_photo()
        return _user_not_found(key)

    def _photo_entries(self, user: User, photo: Photo) -> list[dict[str, Any]]:
        entries = [
            {
                "@odata.mediaContentType": "image/jpeg",
                "@odata.mediaEtag": photo.media_etag,
                "id": f"{s}x{s}",
                "height": s,
                "width": s,
            }
            for s in available_sizes(photo.width, photo.height)
        ]
        if not (photo.width == photo.height and photo.width in available_sizes(photo.width, photo.height)):
            entries.append(
                {
                    "@odata.mediaContentType": photo.content_type,
                    "@odata.mediaEtag": photo.media_etag,
                    "id": f"{photo.width}x{photo.height}",
                    "height": photo.height,
                    "width": photo.width,
                }
            )
        else:
            entries[-1]["@odata.mediaContentType"] = photo.content_type
        return entries

    async def _photo(self, req: Request, rid: str, key: str, user: User | None, rest: list[str]) -> Response:
        method = req.method
        if user is None:
            raise self._unknown_user_photo(key)
        if user.mailbox == "on-premises":
            raise GraphError(
                404,
                "MailboxNotHostedInExchangeOnline",
                "Mailbox is hosted by an on-premise or non-Exchange server, which is not supported.",
            )
        if user.mailbox == "none" and self.config.no_mailbox_photo == "error":
            raise GraphError(400, "AuthenticationError", "Error authenticating with resource")
        if rest == ["photo", "$value"] and method in ("PUT", "PATCH"):
            return await self._upload(req, rid, user)
        if rest == ["photo", "$value"] and method == "DELETE":
            if user.photo is None:
                raise self._no_photo()
            self.tenant.delete_photo(user)
            return Response(200, b"", self._headers(req, rid))
        if method != "GET":
            raise GraphError(405, "ErrorInvalidRequest", "The OData request is not supported.")
        photo = user.photo
        if photo is None:
            if self.config.no_photo_variant == "legacy-1x1" and rest in (["photo"], ["photos"]):
                legacy: dict[str, Any] = {
                    "@odata.mediaContentType": "image/gif",
                    "@odata.mediaEtag": "",
                    "id": "1x1",
                    "width": 1,
                    "height": 1,
                }
                body = {"value": [legacy]} if rest == ["photos"] else legacy
                return self._json(req, rid, 200, {"@odata.context": self._photo_context(user, rest), **body})
            raise self._no_photo()
        entries: list[dict[str, Any]] = self._photo_entries(user, photo)
        if rest == ["photos"]:
            return self._json(req, rid, 200, {"@odata.context": self._photo_context(user, rest), "value": entries})
        if rest[0] == "photos" and len(rest) in (2, 3):
            found = [e for e in entries if e["id"] == rest[1].lower()]
            entry = found[0] if found else None
            if entry is None or (len(rest) == 3 and rest[2] != "$value"):
                raise self._no_photo()
        elif rest in (["photo"], ["photo", "$value"]):
            entry = entries[-1]
        else:
            raise GraphError(400, "BadRequest", f"Resource not found for the segment '{rest[-1]}'.")
        if rest[-1] != "$value":
            body = {"@odata.context": self._photo_context(user, rest), **entry}
            return self._json(req, rid, 200, body, [("ETag", photo.http_etag)])
        bomb = self.faults.gzip_photo(method, req.target)
        if bomb:  # the fault profile's gzip_photo_bytes: the whole of it would not fit in the memory of a test
            self.stats.faults["gzip_photo"] += 1
            headers = [*self._headers(req, rid), ("Content-Type", "image/jpeg"), ("Content-Encoding", "gzip")]
            return Response(200, gzip_photo(bomb), headers)
        size = None if entry is entries[-1] else int(entry["width"])
        data = await self._photo_bytes(user, photo, size)
        self.stats.count("photo_bytes", len(data))
        self.stats.count("photo_downloads")
        headers = [
            *self._headers(req, rid),
            ("Content-Type", str(entry["@odata.mediaContentType"])),
            ("ETag", photo.http_etag),
        ]
        return Response(200, data, headers)

    def _photo_context(self, user: User, rest: list[str]) -> str:
        suffix = "/photo/$entity" if rest[0] == "photo" else ("/photos" if len(rest) == 1 else "/photos/$entity")
        return f"{self.graph_url}/$metadata#users('{user.id}'){suffix}"

    def _photo_bytes_cached(self, user: User, photo: Photo, size: int | None) -> bytes | None:
        """The bytes if no rendering is needed (the hot path), else None."""
        if photo.data is not None:
            return photo.data if size is None else photo.variants.get(size)
        assert photo.template is not None
        templates = self.tenant.templates
        data = (
            templates.cached_original(photo.template)
            if size is None
            else templates.cached_variant(photo.template, size)
        )
        return None if data is None else splice_marker(data, self.tenant.marker(user))

    def photo_bytes_blocking(self, user: User, photo: Photo, size: int | None) -> bytes:
        """The bytes Graph serves, rendering or resizing if needed (CPU-bound: keep it off the loop)."""
        if photo.data is not None:
            if size is None:
                return photo.data
            data = photo.variants.get(size)
            if data is None:
                data = photo.variants[size] = reencode_jpeg(photo.data, size)[0]
            return data
        assert photo.template is not None
        templates = self.tenant.templates
        data = templates.original(photo.template) if size is None else templates.variant(photo.template, size)
        return splice_marker(data, self.tenant.marker(user))

    async def _photo_bytes(self, user: User, photo: Photo, size: int | None) -> bytes:
        data = self._photo_bytes_cached(user, photo, size)
        if data is None:
            data = await asyncio.get_running_loop().run_in_executor(None, self.photo_bytes_blocking, user, photo, size)
        return data

    async def _upload(self, req: Request, rid: str, user: User) -> Response:
        content_type = req.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in _UPLOAD_TYPES:
            raise GraphError(415, "ErrorInvalidRequest", f"Unsupported media type '{content_type}'.")
        if len(req.body) > MAX_UPLOAD:
            raise GraphError(
                413,
                "ErrorRequestEntityTooLarge",
                "The photo is larger than the 4 MB limit on the size of a request.",
            )
        if not req.body:
            raise GraphError(400, "ErrorInvalidRequest", "The request body is empty.")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, reencode_jpeg, req.body)  # validate off-loop
        except Exception:
            raise GraphError(
                400, "ErrorInvalidImage", "The file you chose isn't an image. Please choose a different file."
            ) from None
        self.tenant.set_photo(user, req.body, reencode=True)
        return Response(200, b"", self._headers(req, rid))

    # --- $batch ----------------------------------------------------------------------------------
    async def _batch(self, req: Request, rid: str, claims: AccessClaims) -> Response:
        self.stats.count("batch_requests")
        try:
            payload = json.loads(req.body)
            items = payload["requests"]
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            return self._error(req, rid, GraphError(400, "BadRequest", "Invalid batch payload format."))
        try:
            self._validate_batch(items)
        except GraphError as err:
            return self._error(req, rid, err)
        self.stats.count("batch_items", len(items))
        # ASSUMPTION (Graph does not document a batch's timing): no latency of its own; the client's
        # round trip overlaps the first items, so a batch of 20
        # takes about ceil(20 / batch_parallelism) item latencies (5 for Outlook), as a direct
        # request takes one. (Charging the envelope a latency too made a one-item batch twice as slow
        # as the request it wraps, and capped batched reads at 5/6 of the in-flight limit.)
        gate = asyncio.Semaphore(self.config.batch_parallelism)
        done = {str(i["id"]).lower(): asyncio.Event() for i in items}
        status: dict[str, int] = {}
        results: list[dict[str, Any]] = []

        async def run(item: dict[str, Any]) -> None:
            item_id = str(item["id"])
            deps = [str(d).lower() for d in item.get("dependsOn") or []]
            for dep in deps:
                await done[dep].wait()
            if any(status[d] >= 400 for d in deps):
                result: dict[str, Any] = {
                    "id": item_id,
                    "status": 424,
                    "headers": {"Content-Type": "application/json"},
                    "body": {
                        "error": {
                            "code": "FailedDependency",
                            "message": "Request failed due to a failed dependency.",
                        }
                    },
                }
                self.stats.by_status["424"] += 1
            else:
                async with gate:
                    result = await self._batch_item(req, item, claims)
            status[item_id.lower()] = int(result["status"])
            results.append(result)
            done[item_id.lower()].set()

        await asyncio.gather(*(run(item) for item in items))
        envelope = self._json(req, rid, 200, {"responses": results})
        return self._gzip_photo_envelope(envelope, results)

    def _gzip_photo_envelope(self, envelope: Response, results: list[dict[str, Any]]) -> Response:
        """The envelope gzip-encoded, its ``gzip_photo`` item's body the photo's base64, if an item
        got the fault profile's gzip photo (``_batch_item`` left a marker there); else as it is."""
        marked = [r for r in results if isinstance(r.get("body"), str) and r["body"].startswith(_GZIP_PHOTO)]
        if not marked:
            return envelope
        marker = str(marked[0]["body"])
        before, _, after = envelope.body.partition(marker.encode())
        body = gzip_with_base64_photo(before, int(marker.removeprefix(_GZIP_PHOTO)), after)
        return Response(200, body, [*envelope.headers, ("Content-Encoding", "gzip")])

    @staticmethod
    def _validate_batch(items: list[dict[str, Any]]) -> None:
        if len(items) > MAX_BATCH:
            raise GraphError(
                400,
                "BadRequest",
                f"The batch request contains {len(items)} requests; the limit is {MAX_BATCH}.",
            )
        seen: set[str] = set()
        for item in items:
            if not all(isinstance(item.get(k), str) and item.get(k) for k in ("id", "method", "url")):
                raise GraphError(
                    400, "BadRequest", "Invalid batch payload format: each request needs id, method and url."
                )
            key = item["id"].lower()
            if key in seen:
                raise GraphError(400, "BadRequest", f"Batch request contains duplicate request id '{item['id']}'.")
            seen.add(key)
            if "body" in item and not any(k.lower() == "content-type" for k in (item.get("headers") or {})):
                raise GraphError(
                    400,
                    "BadRequest",
                    f"Write request id : {item['id']} does not contain Content-Type header or body.",
                )
        ids = {i["id"].lower() for i in items}
        for item in items:
            deps = item.get("dependsOn") or []
            if not isinstance(deps, list) or any(
                str(d).lower() not in ids or str(d).lower() == item["id"].lower() for d in deps
            ):
                raise GraphError(400, "BadRequest", f"Request '{item['id']}' depends on an unknown request id.")
        # A dependency cycle would hang the batch; the service rejects it.
        graph = {i["id"].lower(): [str(d).lower() for d in i.get("dependsOn") or []] for i in items}
        state: dict[str, int] = {}

        def visit(node: str) -> None:
            if state.get(node) == 1:
                raise GraphError(400, "BadRequest", "The batch request contains a dependsOn cycle.")
            if state.get(node) == 2:
                return
            state[node] = 1
            for dep in graph[node]:
                visit(dep)
            state[node] = 2

        for node in graph:
            visit(node)

    async def _batch_item(self, outer: Request, item: dict[str, Any], claims: AccessClaims) -> dict[str, Any]:
        rid = str(uuid.uuid4())
        headers = {str(k).lower(): str(v) for k, v in (item.get("headers") or {}).items()}
        headers.setdefault("client-request-id", outer.headers.get("client-request-id", rid))
        url = item["url"]
        try:
            if "://" in url or url.lstrip("/").lower().startswith(("v1.0/", "beta/")):
                # What msgraph-core's BatchRequestItem sends today; Graph refuses it (module docstring).
                raise GraphError(
                    400, "BadRequest", "Invalid request URL: use a URL relative to the version, e.g. /users."
                )
            body = b""
            if "body" in item:
                raw = item["body"]
                if headers.get("content-type", "").lower().startswith("application/json") or not isinstance(raw, str):
                    body = json.dumps(raw).encode()
                else:
                    try:
                        body = _b64decode_any(raw)
                    except (binascii.Error, ValueError):
                        raise GraphError(400, "BadRequest", "The request body is not valid base64.") from None
            path, _, raw_query = url.lstrip("/").partition("?")
            inner = Request(
                item["method"].upper(),
                f"/v1.0/{path}" + (f"?{raw_query}" if raw_query else ""),
                "/v1.0/" + unquote(path),
                raw_query,
                headers,
                body,
            )
            response = await self.execute(inner, rid, claims, in_batch=True)
            bomb = self.faults.gzip_photo(inner.method, inner.target) if response.header("content-encoding") else 0
        except GraphError as err:
            self.stats.by_status[str(err.status)] += 1
            response, bomb = self._error(outer, rid, err), 0
        out_headers = {k: v for k, v in response.headers if k.lower() not in ("request-id", "client-request-id")}
        result: dict[str, Any] = {"id": item["id"], "status": response.status, "headers": out_headers}
        if bomb:  # the photo's base64 is written into the envelope as it is gzipped (_gzip_photo_envelope)
            result["body"] = f"{_GZIP_PHOTO}{bomb}"
        elif response.body:
            ctype = (response.header("content-type") or "").lower()
            if ctype.startswith("application/json"):
                result["body"] = json.loads(response.body)
            elif ctype.startswith("text/"):
                result["body"] = response.body.decode()
            else:  # binary in a JSON envelope: standard base64 (what .NET's FromBase64String accepts)
                result["body"] = base64.b64encode(response.body).decode()
        return result


def _user_not_found(key: str) -> GraphError:
    """Graph's answer when ``users/{key}`` does not resolve (microsoft-graph-docs#6059, #18714)."""
    return GraphError(
        404,
        "Request_ResourceNotFound",
        f"Resource '{key}' does not exist or one of its queried reference-property objects are not present.",
    )


def _bearer(req: Request) -> str:
    value = req.headers.get("authorization", "")
    return value[7:].strip() if value[:7].lower() == "bearer " else ""


def _encode(params: dict[str, str]) -> str:
    return urlencode(params, quote_via=quote, safe="$,()'*:")


def _search_match(user: User, search: str) -> bool:
    """``"displayName:ann" OR "mail:smith"``: tokenised prefix match, case-insensitive."""
    clauses = [c.strip().strip('"') for c in re.split(r"\s+OR\s+", search.strip())]
    for clause in clauses:
        prop, _, text = clause.partition(":")
        value = str(user.props.get(prop) or "").lower()
        if any(word.startswith(text.lower()) for word in re.split(r"[\s.@_-]+", value)) or value.startswith(
            text.lower()
        ):
            return True
    return False


def _skiptoken_key(token: str) -> SortKey:
    """The sort key a ``GET /users`` next link continues after; 400 for a token this emulator did not make."""
    try:
        key = json.loads(b64url_decode(token))["k"]
    except (ValueError, KeyError, TypeError):
        key = None
    if not (isinstance(key, list) and len(key) == 2 and all(isinstance(part, str) for part in key)):
        raise GraphError(400, "Request_BadRequest", "The specified page token value is not valid.")
    return key[0], key[1]


def _delta_ids(text: str | None) -> list[str] | None:
    """``$filter`` on users/delta supports only ``id eq '...'`` OR-ed, at most 50 ids."""
    if not text:
        return None
    if not _DELTA_ID_FILTER.match(text):
        raise GraphError(
            400,
            "Request_UnsupportedQuery",
            "Unsupported query: users/delta supports only $filter=id eq '{id}' (or-ed).",
        )
    ids = [i.lower() for i in re.findall(r"'([^']*)'", text)]
    if len(ids) > 50:
        raise GraphError(400, "Request_UnsupportedQuery", "At most 50 ids can be filtered in a delta query.")
    return ids
