"""The emulator held to Microsoft's own clients: msgraph-sdk, azure-identity and msal over real HTTPS.

Every Exchange Online figure the project reports comes from the emulator, so these tests drive it
the way a customer's code would drive Graph and Entra ID: ``GraphServiceClient`` (async, httpx) with
its default middleware (retry handler included), ``ClientSecretCredential``, MSAL's refresh-token
flow and PyJWT validating an id token against the published ``jwks_uri``. Nothing here talks to the
emulator with hand-written HTTP except where a client would (discovery documents).

The sources for each behaviour are in the docstrings of ``connector/emulator/_graph.py`` and
``connector/emulator/_identity.py``.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import httpx
import jwt
import msal
import pytest
import requests
from azure.identity import ClientSecretCredential
from kiota_abstractions.base_request_configuration import RequestConfiguration
from kiota_authentication_azure.azure_identity_authentication_provider import AzureIdentityAuthenticationProvider
from msgraph import GraphRequestAdapter, GraphServiceClient
from msgraph.generated.models.o_data_errors.o_data_error import ODataError
from msgraph.generated.users.users_request_builder import UsersRequestBuilder
from msgraph_core import GraphClientFactory
from msgraph_core.requests.batch_request_content import BatchRequestContent
from msgraph_core.requests.batch_request_item import BatchRequestItem
from PIL import Image

from connector.emulator import EmulatorConfig, GraphEmulator
from tests.harness.emulator import emulator_http

GRAPH_DEFAULT = "https://graph.microsoft.com/.default"
T = TypeVar("T")


def _jpeg(side: int = 300, color: str = "teal") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (side, side), color).save(out, "JPEG")
    return out.getvalue()


def _credential(emu: GraphEmulator) -> ClientSecretCredential:
    """azure-identity pointed at the emulator's authority (host only, as for a sovereign cloud)."""
    info = emu.info
    host = str(info["authority"]).rsplit("/", 1)[0]
    return ClientSecretCredential(
        info["tenant_id"],
        info["client_id"],
        info["client_secret"],
        authority=host,
        disable_instance_discovery=True,
        connection_verify=info["ca_cert"],
    )


class Clients:
    """One event loop per test and the SDK clients made on it, closed on it at the end.

    The SDK's httpx client keeps its connections on the loop it first used, so everything is closed
    on that loop. Left to the garbage collector, an unclosed socket's ResourceWarning is formatted by
    pytest's unraisable hook, whose traceback code calls ``ast.parse`` re-entrantly and trips
    CPython 3.11's AST recursion check (python/cpython#106905): a SystemError at the end of the run.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._http: list[httpx.AsyncClient | httpx.AsyncHTTPTransport] = []
        self._credentials: list[ClientSecretCredential] = []

    def run(self, call: Awaitable[T]) -> T:
        async def wrapped() -> T:
            return await call

        return self.loop.run_until_complete(wrapped())

    def graph(self, emu: GraphEmulator, credential: ClientSecretCredential | None = None) -> GraphServiceClient:
        """GraphServiceClient on the emulator's base URL, trusting its CA, with the SDK's default middleware."""
        if credential is None:
            credential = _credential(emu)
            self._credentials.append(credential)
        auth = AzureIdentityAuthenticationProvider(credential, scopes=[GRAPH_DEFAULT])
        trust = ssl.create_default_context(cafile=str(emu.info["ca_cert"]))
        # Our own transport, closed by us: the SDK wraps the client's transport in its middleware
        # pipeline, and closing the client does not reach the connections underneath.
        transport = httpx.AsyncHTTPTransport(verify=trust)
        http = GraphClientFactory.create_with_default_middleware(client=httpx.AsyncClient(transport=transport))
        self._http += [http, transport]
        adapter = GraphRequestAdapter(auth, client=http)
        adapter.base_url = str(emu.info["graph_url"])
        return GraphServiceClient(request_adapter=adapter)

    def close(self) -> None:
        for http in self._http:
            self.run(http.aclose())
        for credential in self._credentials:
            credential.close()
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


@pytest.fixture
def clients() -> Iterator[Clients]:
    made = Clients()
    yield made
    made.close()


@pytest.fixture
def run(clients: Clients) -> Callable[[Awaitable[Any]], Any]:
    return clients.run


Run = Callable[[Awaitable[Any]], Any]


@pytest.fixture(scope="module")
def tenant() -> Iterator[GraphEmulator]:
    """One tenant for the read-only tests (module scope keeps the module fast)."""
    with GraphEmulator(EmulatorConfig(users=45, photo_ratio=0.6, seed=17)) as emu:
        yield emu


@pytest.fixture(scope="module")
def credential(tenant: GraphEmulator) -> Iterator[ClientSecretCredential]:
    with _credential(tenant) as made:
        yield made


@pytest.fixture
def sdk(tenant: GraphEmulator, credential: ClientSecretCredential, clients: Clients) -> GraphServiceClient:
    return clients.graph(tenant, credential)


def _user(emu: GraphEmulator, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    return next(u for u in emu.admin.users() if predicate(u))


def _graph_error(run: Run, call: Awaitable[Any]) -> ODataError:
    with pytest.raises(ODataError) as caught:
        run(call)
    return caught.value


# --- users ---------------------------------------------------------------------------------------


def test_users_select_top_and_next_link_paging(run: Run, tenant: GraphEmulator, sdk: GraphServiceClient) -> None:
    query = UsersRequestBuilder.UsersRequestBuilderGetQueryParameters(select=["id", "displayName"], top=10)

    async def all_pages() -> list[Any]:
        page = await sdk.users.get(RequestConfiguration(query_parameters=query))
        assert page is not None and page.value is not None
        users, pages = list(page.value), 1
        while page.odata_next_link:
            assert "$select=id,displayName" in page.odata_next_link and "$top=10" in page.odata_next_link
            page = await sdk.users.with_url(page.odata_next_link).get()
            assert page is not None and page.value is not None
            users += page.value
            pages += 1
        assert pages == 5  # 45 users, 10 a page
        return users

    users = run(all_pages())
    assert sorted(u.id for u in users) == sorted(u["id"] for u in tenant.admin.users())
    assert all(u.display_name and u.user_principal_name is None for u in users)  # only what $select asked


def test_users_delta_round_and_delta_link(
    clients: Clients, graph_emulator_factory: Callable[..., GraphEmulator]
) -> None:
    run = clients.run
    emu = graph_emulator_factory(users=12, seed=5)
    sdk = clients.graph(emu)
    first = run(sdk.users.delta.get())  # GET /users/delta()
    assert first is not None and first.value is not None and first.odata_delta_link
    assert {u.id for u in first.value} == {u["id"] for u in emu.admin.users()}
    assert "/users/delta?$deltatoken=" in first.odata_delta_link
    changed, removed = emu.admin.users()[:2]
    emu.admin.update_user(changed["id"], displayName="Renamed By Delta")
    emu.admin.delete_user(removed["id"])
    second = run(sdk.users.delta.with_url(first.odata_delta_link).get())
    assert second is not None and second.value is not None and second.odata_delta_link
    got = {u.id: u for u in second.value}
    assert set(got) == {changed["id"], removed["id"]}
    assert got[changed["id"]].display_name == "Renamed By Delta"
    assert got[removed["id"]].additional_data["@removed"] == {"reason": "changed"}  # soft delete


def test_unknown_user(run: Run, tenant: GraphEmulator, sdk: GraphServiceClient) -> None:
    ghost = "00000000-0000-0000-0000-00000000dead"
    for call in (sdk.users.by_user_id(ghost).get(), sdk.users.by_user_id(ghost).photo.content.get()):
        error = _graph_error(run, call)
        assert error.response_status_code == 404
        assert error.error is not None and error.error.code == "Request_ResourceNotFound"


# --- photos --------------------------------------------------------------------------------------


def test_photo_metadata_sizes_and_bytes(run: Run, tenant: GraphEmulator, sdk: GraphServiceClient) -> None:
    user = _user(tenant, lambda u: u["hasPhoto"] and u["mailbox"] == "cloud" and u["photo"]["width"] >= 96)
    photos = sdk.users.by_user_id(user["id"])
    meta = run(photos.photo.get())
    assert meta is not None and (meta.width, meta.height) == (user["photo"]["width"], user["photo"]["height"])
    assert meta.additional_data["@odata.mediaEtag"].startswith('"')
    listed = run(photos.photos.get())
    assert listed is not None and listed.value is not None
    sizes = [p.id for p in listed.value]
    assert sizes[0] == "48x48" and "96x96" in sizes
    assert run(photos.photo.content.get()) == tenant.admin.get_photo(user["id"])
    small = run(photos.photos.by_profile_photo_id("96x96").content.get())
    assert small == tenant.admin.get_photo(user["id"], size=96)
    assert Image.open(io.BytesIO(small)).size == (96, 96)


def test_user_without_photo(run: Run, tenant: GraphEmulator, sdk: GraphServiceClient) -> None:
    user = _user(tenant, lambda u: not u["hasPhoto"] and u["mailbox"] == "cloud")
    for call in (sdk.users.by_user_id(user["id"]).photo.get(), sdk.users.by_user_id(user["id"]).photo.content.get()):
        error = _graph_error(run, call)
        assert error.response_status_code == 404 and error.error is not None
        assert error.error.code == "ImageNotFound"


def test_hybrid_user(run: Run, tenant: GraphEmulator, sdk: GraphServiceClient) -> None:
    user = _user(tenant, lambda u: u["mailbox"] == "on-premises")
    error = _graph_error(run, sdk.users.by_user_id(user["id"]).photo.content.get())
    assert error.response_status_code == 404 and error.error is not None
    assert error.error.code == "MailboxNotHostedInExchangeOnline"


def test_photo_upload_and_delete(clients: Clients, graph_emulator_factory: Callable[..., GraphEmulator]) -> None:
    run = clients.run
    emu = graph_emulator_factory(users=6, photo_ratio=1.0, seed=9)
    user = _user(emu, lambda u: u["mailbox"] == "cloud")
    photo = clients.graph(emu).users.by_user_id(user["id"])
    before = run(photo.photo.get())
    assert before is not None
    run(photo.photo.content.put(_jpeg(300)))  # the SDK sends application/octet-stream
    after = run(photo.photo.get())
    assert after is not None and (after.width, after.height) == (300, 300)
    assert after.additional_data["@odata.mediaEtag"] != before.additional_data["@odata.mediaEtag"]
    run(photo.photo.content.delete())
    error = _graph_error(run, photo.photo.get())
    assert error.response_status_code == 404 and error.error is not None and error.error.code == "ImageNotFound"


# --- $batch and throttling -----------------------------------------------------------------------


def test_batch_built_with_batch_request_content(run: Run, tenant: GraphEmulator, sdk: GraphServiceClient) -> None:
    """Items made from the SDK's request builders carry relative URLs; Graph and the emulator take them."""
    users = [u for u in tenant.admin.users() if u["hasPhoto"] and u["mailbox"] == "cloud"][:3]
    no_photo = _user(tenant, lambda u: not u["hasPhoto"] and u["mailbox"] == "cloud")
    items = {}
    for index, user in enumerate(users):
        info = sdk.users.by_user_id(user["id"]).photo.content.to_get_request_information()
        items[f"p{index}"] = BatchRequestItem(info, id=f"p{index}")
    meta = sdk.users.by_user_id(no_photo["id"]).photo.to_get_request_information()
    items["none"] = BatchRequestItem(meta, id="none")
    assert all(item.url.startswith("/users/") for item in items.values())
    result = run(sdk.batch.post(BatchRequestContent(items)))
    assert result is not None and result.responses is not None
    for index, user in enumerate(users):
        answer = result.responses[f"p{index}"]
        assert answer.status == 200 and answer.headers["Content-Type"].startswith("image/")
        assert answer.body == tenant.admin.get_photo(user["id"])  # base64 in the envelope, bytes here
    assert result.responses["none"].status == 404


def test_batch_item_with_an_absolute_url_fails_as_in_graph(
    run: Run, tenant: GraphEmulator, sdk: GraphServiceClient
) -> None:
    """An item whose RequestInformation holds a full URL (a nextLink) keeps it: Graph refuses that item.

    msgraph-sdk-python#1015 / msgraph-sdk-python-core#1116: BatchRequestItem does not strip the base
    URL; the emulator answers that one item with 400, as Graph does, and serves the rest of the batch.
    """
    user = _user(tenant, lambda u: u["hasPhoto"] and u["mailbox"] == "cloud")
    absolute = sdk.users.with_url(f"{tenant.info['graph_url']}/users?$top=1").to_get_request_information()
    relative = sdk.users.by_user_id(user["id"]).photo.to_get_request_information()
    items = {"abs": BatchRequestItem(absolute, id="abs"), "rel": BatchRequestItem(relative, id="rel")}
    assert items["abs"].url.startswith("https://")
    result = run(sdk.batch.post(BatchRequestContent(items)))
    assert result is not None and result.responses is not None
    assert result.responses["abs"].status == 400 and result.responses["rel"].status == 200


def test_429_is_honoured_by_the_sdk_retry_handler(
    clients: Clients, graph_emulator_factory: Callable[..., GraphEmulator]
) -> None:
    run = clients.run
    emu = graph_emulator_factory(users=4, seed=2, app_rate_per_s=1)  # one request a second, 1 s burst
    sdk = clients.graph(emu)
    first, second = (u["id"] for u in emu.admin.users()[:2])

    async def back_to_back() -> tuple[Any, Any, float]:
        one = await sdk.users.by_user_id(first).get()
        started = time.monotonic()
        two = await sdk.users.by_user_id(second).get()  # 429 Retry-After: 1, then retried
        return one, two, time.monotonic() - started

    one, two, waited = run(back_to_back())
    assert (one.id, two.id) == (first, second)
    stats = emu.admin.stats()
    assert stats["by_status"]["429"] >= 1 and stats["by_status"]["200"] == 2
    assert waited >= 0.9  # the retry handler waited for Retry-After before trying again


# --- identity ------------------------------------------------------------------------------------


def test_client_secret_credential_tokens_live_60_to_90_minutes(tenant: GraphEmulator) -> None:
    lifetimes = set()
    for _ in range(3):
        with _credential(tenant) as credential:  # a fresh credential: no token cache between rounds
            token = credential.get_token(GRAPH_DEFAULT)
        lifetimes.add(round(token.expires_on - time.time()))
    assert all(3590 <= s <= 5400 for s in lifetimes) and len(lifetimes) > 1  # varied per token
    with _credential(tenant) as credential:
        cae = credential.get_token(GRAPH_DEFAULT, enable_cae=True)  # declares the xms_cc cp1 capability
    assert 20 * 3600 - 10 <= cae.expires_on - time.time() <= 28 * 3600


@pytest.fixture
def http(tenant: GraphEmulator) -> Iterator[requests.Session]:
    with emulator_http(tenant) as session:
        yield session


@pytest.fixture
def msal_app(tenant: GraphEmulator, http: requests.Session) -> msal.ConfidentialClientApplication:
    info = tenant.info
    return msal.ConfidentialClientApplication(
        info["client_id"],
        client_credential=info["client_secret"],
        authority=info["authority"],
        http_client=http,
        instance_discovery=False,
    )


def test_refresh_token_with_msal_rotates(tenant: GraphEmulator, msal_app: msal.ConfidentialClientApplication) -> None:
    old = str(tenant.info["refresh_token"])
    first = msal_app.acquire_token_by_refresh_token(old, scopes=["https://graph.microsoft.com/User.Read.All"])
    assert "access_token" in first, first.get("error_description")
    assert first["refresh_token"] != old and 3600 <= first["expires_in"] <= 5400
    again = msal_app.acquire_token_by_refresh_token(old, scopes=["https://graph.microsoft.com/User.Read.All"])
    assert "access_token" in again  # Entra keeps the used refresh token valid
    assert first["id_token_claims"]["tid"] == tenant.info["tenant_id"]


def test_id_token_validates_against_jwks_uri(
    tenant: GraphEmulator, http: requests.Session, msal_app: msal.ConfidentialClientApplication
) -> None:
    result = msal_app.acquire_token_by_refresh_token(
        str(tenant.info["refresh_token"]), scopes=["https://graph.microsoft.com/User.Read.All"]
    )
    id_token = result["id_token"]
    v2 = http.get(f"{tenant.info['authority']}/v2.0/.well-known/openid-configuration", timeout=10).json()
    v1 = http.get(f"{tenant.info['authority']}/.well-known/openid-configuration", timeout=10).json()
    assert v2["id_token_signing_alg_values_supported"] == ["RS256"] and v1["issuer"].startswith("https://sts.")
    trust = ssl.create_default_context(cafile=str(tenant.info["ca_cert"]))
    key = jwt.PyJWKClient(v2["jwks_uri"], ssl_context=trust).get_signing_key_from_jwt(id_token)
    expected = {"algorithms": ["RS256"], "audience": tenant.info["client_id"], "issuer": v2["issuer"]}
    claims = jwt.decode(id_token, key.key, **expected)
    assert claims["tid"] == tenant.info["tenant_id"] and claims["oid"]
    assert key.key_id in {k["kid"] for k in http.get(v1["jwks_uri"], timeout=10).json()["keys"]}
    header, _, signature = id_token.split(".")
    forged = base64.urlsafe_b64encode(json.dumps({**claims, "oid": "someone-else"}).encode()).rstrip(b"=")
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(f"{header}.{forged.decode()}.{signature}", key.key, **expected)
