"""``exchange-online-photos``: mailbox users and their photos from Microsoft Graph.

Full import walks ``users/delta`` from scratch. That initial delta round *is* a complete listing
of the users (with the selected properties), and it ends with a delta link taken at the same
moment, so the next delta import misses nothing that changed while the full import ran (a
``/users`` listing followed by a separate delta walk would leave a gap). Mailbox users are those
with ``mail``; the others are skipped and counted as ``skipped_without_mail`` (why, and what that
misses: ``_import._is_mailbox_user``). Every mailbox user's photo metadata is probed and the photo
downloaded (see ``_photos``), in ``$batch`` requests of up to 20.

Delta import first follows the delta link (user adds, changes, deletes), then probes the photo
metadata of users whose re-check window expired, because photo changes never appear in
``users/delta``; a photo is downloaded only when its ETag is new or changed (or it is picked for
rolling re-verification, which compares checksums).

The import follows contract v2 (``connector.sdk``'s ``import_changes``): the stream (``_import``)
yields the listing's decisions and hands photo requests to the engine as deferred work; the engine
runs them on its threads, pages and commits the entries, and keeps the per-user photo state (ETag,
checksum, last probe, last error) in its store, committed with the page each user's entry is in.

``EXOPhotoLastChecked`` is when the connector last fetched photo bytes that differed from what it
held (UTC): re-downloads of the same picture keep it, so an unchanged tenant imports as a no-op.

A full import resumes: before each ``users/delta`` page the stream yields a checkpoint naming it,
which the engine commits once every user listed before it is committed. Users of later pages that
were already committed are probed again. A checkpoint that Graph no longer honours (an expired
skip token) makes the engine start over.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Generator, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import requests

from connector.agents._mailbox_photo import photo_attributes
from connector.agents.exchange_online._auth import GraphAuth, make_session
from connector.agents.exchange_online._graph import GraphClient, GraphResponse, RetryableError
from connector.agents.exchange_online._hybrid import location_attribute, mailbox_on_premises
from connector.agents.exchange_online._import import (
    FIRST_LINK,
    OBJECT_CLASS,
    PHOTO_CONTENT_TYPE,
    Importer,
    Listed,
    SyncReset,
    Watermark,
)
from connector.agents.exchange_online._photo_policy import doctor_checks as photo_policy_checks
from connector.agents.exchange_online._photo_policy import guard_photo_export
from connector.agents.exchange_online._photos import NO_MAILBOX_CODE, is_no_photo
from connector.agents.exchange_online._settings import ExchangeOnlineSettings
from connector.net import on_host, setting_key
from connector.sdk import (
    Attribute,
    AttributeAccess,
    AttributeModificationType,
    AttributeType,
    Capabilities,
    CheckResult,
    ConfigurationError,
    Connector,
    ConnectorContext,
    ConnectorError,
    CSEntryChange,
    ExportResult,
    ExportStatus,
    ImportItem,
    ImportRun,
    ObjectClass,
    ObjectModificationType,
    ResumeRefusedError,
    Schema,
    ScopeViolationError,
    ServerDownError,
    StopRunError,
    Underway,
    carry_export_results,
    wait_all,
    wait_until,
)

__all__ = ["OBJECT_CLASS", "ExchangeOnlinePhotosConnector"]

log = logging.getLogger("mvsync.agent.exchange_online")

PHOTO_ATTRIBUTES = ("EXOPhoto", "EXOPhotoChecksum", "EXOPhotoETag", "EXOPhotoSize", "EXOPhotoLastChecked")
_EXPIRED_DELTA_CODES = frozenset({"syncStateNotFound", "resyncRequired", "syncStateInvalid"})

_IMPORT_ONLY = AttributeAccess.IMPORT_ONLY
SCHEMA = Schema.of(
    ObjectClass(
        name=OBJECT_CLASS,
        anchor="id",
        attributes=(
            Attribute(name="id", access=_IMPORT_ONLY, description="Entra object id"),
            Attribute(name="userPrincipalName", access=_IMPORT_ONLY),
            Attribute(name="mail", access=_IMPORT_ONLY),
            Attribute(name="mailNickname", access=_IMPORT_ONLY),
            Attribute(name="displayName", access=_IMPORT_ONLY),
            Attribute(name="accountEnabled", type=AttributeType.BOOLEAN, access=_IMPORT_ONLY),
            # the photo is exportable (a folder -> Exchange Online flow may write it); Exchange keeps its
            # own JPEG encoding of an upload, so the photo read back is not the bytes written
            *photo_attributes(
                "EXO",
                photo="photo at photo_size as Graph serves it: JPEG, or a PNG/GIF stored as such (EXOPhotoContentType)",
                etag="@odata.mediaEtag, unquoted",
                photo_access=AttributeAccess.IMPORT_EXPORT,
                rendered=True,
            ),
            Attribute(
                name=PHOTO_CONTENT_TYPE,
                access=_IMPORT_ONLY,
                description=(
                    "EXOPhoto's format as its bytes show it (image/jpeg, image/png, image/gif); the thumbnail "
                    "and hd_photo transforms write JPEG whatever it is"
                ),
            ),
            location_attribute(),
        ),
    )
)


class ExchangeOnlinePhotosConnector(Connector[ExchangeOnlineSettings]):
    """Exchange Online mailbox users and photos over Microsoft Graph (the PowerShell MA's successor)."""

    settings_model = ExchangeOnlineSettings
    capabilities: ClassVar[Capabilities] = Capabilities(
        full_import=True,
        delta_import=True,
        export=True,
        deletes_objects=False,  # it changes photos of existing users (see _export_one)
        max_page_size=5000,
        max_batch_size=500,
    )
    description = "Exchange Online mailbox users and their photos, over Microsoft Graph"

    def __init__(self, settings: ExchangeOnlineSettings, context: ConnectorContext) -> None:
        super().__init__(settings, context)
        self._auth: GraphAuth | None = None
        self._graph: GraphClient | None = None
        self._photo_policy_read = False  # once per step, before the first photo write (_photo_policy)

    # -- lifecycle ------------------------------------------------------------------------------
    def _session(self) -> requests.Session:
        return make_session(self.settings, self.context.agent)

    @property
    def auth(self) -> GraphAuth:
        if self._auth is None:
            self._auth = self._new_auth(signing_in=False)
        return self._auth

    def sign_in_auth(self) -> GraphAuth:
        """The ``GraphAuth`` of `mvsync auth login`: a token cache that cannot be decrypted is set aside
        for the new sign-in to replace, not refused (the refusal names this very command)."""
        self._auth = self._new_auth(signing_in=True)
        return self._auth

    def _new_auth(self, *, signing_in: bool) -> GraphAuth:
        context = self.context
        return GraphAuth(
            self.settings,
            context.data_dir,
            context.reauthorize_command,
            session_factory=self._session,
            signing_in=signing_in,
            agent=context.agent,
        )

    @property
    def graph(self) -> GraphClient:
        if self._graph is None:
            self._graph = GraphClient(self.settings, self.auth, session_factory=self._session)
        return self._graph

    def open(self) -> None:
        self.context.make_data_dir()
        self.auth.token()  # fail fast (stopped-authentication) before any work starts

    def close(self) -> None:
        if self._graph is not None:
            self.context.logger.info("graph: %s", self._graph.stats.as_dict())
            self._graph.close()
        if self._auth is not None:
            self._auth.token_cache.persist_if_changed()

    def check(self) -> CheckResult:
        try:
            resp = self.graph.get_json("users?$top=1&$select=id")
        except (ConnectorError, RetryableError) as exc:
            return CheckResult(False, str(exc))
        return CheckResult(resp.ok, "Graph reachable, token valid" if resp.ok else resp.describe())

    def doctor_checks(self) -> list[tuple[str, str, str]]:
        """``mvsync doctor``: the tenant's photo policy against this agent's export flows."""
        writes = "EXOPhoto" in self.context.export_attributes.get(OBJECT_CLASS, frozenset())
        return photo_policy_checks(self.graph, self.settings, writes)

    #: Its schema is the same for every configuration: ``mvsync schema`` reads no setting.
    schema_settings: ClassVar[tuple[str, ...] | None] = ()

    @classmethod
    def schema_for(cls, settings: Mapping[str, Any]) -> Schema:
        return SCHEMA

    def get_schema(self) -> Schema:
        return SCHEMA

    @property
    def metrics(self) -> dict[str, Any]:
        """The Graph client's figures of the current (or last) step, for the benchmark and tests.

        The import's own counters (users, probes, downloads...) go to run history as ``Count`` items.
        """
        graph = self._graph.stats.as_dict() if self._graph is not None else {}
        return {
            **graph,
            "retry_budget_spent": self._graph.budget.spent if self._graph else 0,
            "throttled_waits": self._graph.throttled_waits if self._graph else 0,
            "limiter": self._graph.limiter.stats.as_dict() if self._graph else {},
        }

    # -- import ---------------------------------------------------------------------------------
    def walk_delta(self, url: str, *, resumed: bool = False, page_size: int = 999) -> Generator[Listed, None, str]:
        """Follow ``users/delta`` pages from ``url``; each page as it comes, the delta link at the end.

        ``resumed``: ``url`` comes from a checkpoint; if Graph no longer honours it, the engine is told
        to start over (``ResumeRefusedError``) instead of the step failing.
        """
        headers = {"Prefer": f"odata.maxpagesize={min(999, max(100, page_size))}"}
        first = True
        while True:
            resp = self.graph.get_json(url, headers=headers)
            if not resp.ok or not isinstance(resp.json_body, dict):
                if resumed and first and resp.status in (400, 404, 410):
                    raise ResumeRefusedError(f"Graph no longer accepts the saved users/delta page ({resp.describe()})")
                raise self._listing_error(resp, url if first and not resumed else None)
            first = False
            listed = Listed(url)
            latest: dict[str, dict[str, Any]] = {}  # a replay within the page: its last entry is the user's state
            junk = 0
            for user in resp.json_body.get("value", []):
                if not isinstance(user, dict) or not isinstance(user.get("id"), str) or not user["id"]:
                    junk += 1
                else:
                    latest.pop(user["id"], None)
                    latest[user["id"]] = user
            for user_id, user in latest.items():
                if "@removed" in user:
                    listed.removed.append(user_id)
                else:
                    listed.users.append(user)
            if junk:
                log.warning("users/delta page held %d entries that are not users with an id; skipped", junk)
            yield listed
            next_link = resp.json_body.get("@odata.nextLink")
            if next_link:
                url = str(next_link)
                continue
            delta_link = resp.json_body.get("@odata.deltaLink")
            if not delta_link:
                raise StopRunError("users/delta ended without @odata.deltaLink")
            return str(delta_link)

    def _listing_error(self, resp: GraphResponse, sent: str | None = None) -> StopRunError | ConfigurationError:
        """What the step stops with when the user listing failed. ``sent``: the first page's URL (under
        ``graph_url``), when this was it: a 404 there means no Graph API at ``graph_url`` (a mistyped
        version, ``/beta2``), which only the setting fixes; "HTTP 404" alone did not say where to look."""
        if resp.status == 404 and sent is not None:
            where = self.graph.url(sent).split("?")[0]
            return ConfigurationError(
                f"Graph answered the user listing at {where} with {resp.describe()}: there is no Graph API at "
                f"{self.settings.graph_url}; check it (Microsoft Graph's is https://graph.microsoft.com/v1.0)",
                key=setting_key(self.context.agent, "graph_url"),
            )
        if resp.oversized:  # the listing cannot skip a page: no user's error, and no refusal either
            return StopRunError(
                f"Graph answered the user listing with {resp.describe()}, far more than a page of users (about "
                "0.5 MB for 999); nothing was changed. Check any proxy in front of Graph, then run the step again"
            )
        if resp.status == 410 or resp.error_code in _EXPIRED_DELTA_CODES:
            return SyncReset(self._resync_message(resp), resp.describe(), self.context.agent)
        if resp.status >= 500 or resp.status == 429:
            return ServerDownError(f"Graph did not answer the user listing after retries: {resp.describe()}")
        return StopRunError(f"Graph refused the user listing: {resp.describe()}")

    def _resync_message(self, resp: GraphResponse) -> str:
        """Why a users/delta link Graph no longer takes stops the step, instead of the agent starting anew.

        Learn, delta-query-overview, "Synchronization reset": "Delta query can return a response code of
        410 (gone) and a Location header containing a request URL with an empty $deltaToken (same as the
        initial query). This is an indication that the application must restart with a full
        synchronization of the target tenant." (and "Token duration": a directory object's delta link
        lasts seven days, then "a 40X-series error with error codes such as syncStateNotFound").

        The Location is not followed: it starts a new initial round, which lists the users that exist
        now and none removed meanwhile ("Resources that have been created and deleted prior to the
        initial delta query won't be returned"), so a delta step that followed it would keep every user
        deleted since the last import. A full import is that full synchronization: the engine deletes
        what it did not list.
        """
        agent = self.context.agent
        if resp.status == 410:
            why = "Graph asks for a full synchronization of the users (a synchronization reset"
            why += ", with a new initial round at its Location header)" if resp.headers.get("location") else ")"
            after = ""
        else:
            why = "the link expired (Graph keeps one for seven days)"
            after = "; to keep the link alive, run a delta import of it more often than weekly"
        return (
            f"the users/delta link is no longer valid ({resp.describe()}): {why}. A delta step does not start "
            "a new round, which would list only the users that exist now and miss every user deleted since the "
            f"last import; nothing was changed. Run a full import of agent {agent!r}, and delta imports go on "
            f"from it{after}"
        )

    def import_changes(self, run: ImportRun) -> Iterator[ImportItem]:
        """Import contract v2: the listing's decisions, with photo requests as deferred work (``_import``)."""
        return Importer(self, run).changes()

    def delta_start(self, watermark: str | None) -> str:
        """The ``users/delta`` link a delta import follows (the watermark's, on the configured host)."""
        previous = Watermark.loads(watermark)
        if previous is None:
            raise StopRunError("no usable delta state for this agent (no watermark); run a full import")
        if not self.on_graph_host(previous.delta_link):
            log.warning(
                "the saved users/delta link points at %s, not at graph_url %s: it is discarded and this "
                "delta starts a new round (users deleted meanwhile show up at the next full import)",
                urlsplit(previous.delta_link).netloc,
                urlsplit(self.settings.graph_url).netloc,
            )
            return FIRST_LINK
        return previous.delta_link

    def on_graph_host(self, link: str) -> bool:
        """Whether a saved link (absolute, from Graph) belongs to the configured ``graph_url``."""
        return not link.startswith("https://") or on_host(link, self.settings.graph_url)

    # -- export ---------------------------------------------------------------------------------
    def export(self, changes: Sequence[CSEntryChange]) -> list[ExportResult]:
        """PUT (normalized JPEG) or DELETE each user's photo; one result per change, in order."""
        allowed = self.context.export_attributes.get(OBJECT_CLASS, frozenset())
        for change in changes:
            outside = set(change.changed_attribute_names()) - set(allowed) - {"id"}
            if change.modification in (ObjectModificationType.UPDATE, ObjectModificationType.REPLACE) and outside:
                msg = (
                    f"export of {change.anchor!r} would change {', '.join(sorted(outside))}, outside the "
                    f"attributes the export flows of agent {self.context.agent!r} name"
                )
                raise ScopeViolationError(msg)
        if not self._photo_policy_read and not self.context.dry_run:
            self._photo_policy_read = True
            guard_photo_export(self.graph, self.settings, self.context.agent, self.context.logger)
        workers = max(1, min(8, self.settings.concurrency))
        batch = _ExportBatch()
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="exo-export")
        futures: list[Future[None]] = []
        try:  # handing over too: an interruption can come in while a worker thread starts
            for index, change in enumerate(changes):
                futures.append(pool.submit(self._export_in_batch, index, change, batch))
            wait_all(futures)  # not ``future.result()``: on Windows that wait ignores Ctrl-C (``wait_all``)
            for future in futures:
                future.result()  # a worker's unexpected error, raised here
        except KeyboardInterrupt as exc:  # Ctrl-C or a stop signal, in the thread that waits here
            self._say_finishing(batch)
            carry_export_results(exc, _finish_interrupted(batch))
            raise
        finally:  # every change is answered, or the interruption's wait is over (or was itself interrupted)
            pool.shutdown(wait=False, cancel_futures=True)
        results = batch.answered()
        if batch.stop is not None:
            batch.stop.results = results  # the photos written before the stop: the engine records them
            raise batch.stop
        return results

    def _say_finishing(self, batch: _ExportBatch) -> None:
        """Why an interrupted export does not end at once: the writes under way are waited for."""
        running = batch.underway.count
        if running:
            self.context.logger.warning(
                "interrupted: waiting for %d photo write%s under way (at most %.0f s) so that %s recorded; "
                "interrupt again to stop at once (the next export may then write %s again)",
                running,
                "s" if running != 1 else "",
                self.settings.timeout_s,
                "they are" if running != 1 else "it is",
                "them" if running != 1 else "it",
            )

    def _export_in_batch(self, index: int, change: CSEntryChange, batch: _ExportBatch) -> None:
        """The ``index``-th change's result (``_export_change``), recorded in ``batch`` by the worker.

        Why the worker records it, not the waiting thread from the future: an interruption can come
        in after ``submit`` handed a change over and before its future was kept (while the worker
        thread starts), and that change's PUT was then neither waited for nor recorded.
        """
        with batch.underway.one():
            result = self._export_change(change, batch)
            with batch.lock:
                batch.results[index] = result

    def _export_change(self, change: CSEntryChange, batch: _ExportBatch) -> ExportResult | None:
        """``_export_one``, unless the batch already met Graph down (a retry: the change stays pending)
        or a stop of the step (None: not tried, so not written twice nor counted as an error).

        Why the stop is kept rather than raised at once: the other workers may have written photos by
        then, and a stop without their results left them pending, to be written again next export.
        """
        ident = change.identifier or change.anchor
        if batch.stop is not None or batch.interrupted.is_set():
            return None
        if batch.down is not None:
            return ExportResult.retry(ident, "cd-server-down", batch.down)
        try:
            return self._export_one(change, batch.interrupted)
        except ServerDownError as exc:  # one verdict per batch: the later changes do not each wait for it
            batch.down = batch.down or str(exc)
            return ExportResult.retry(ident, "cd-server-down", str(exc))
        except StopRunError as exc:  # a revoked sign-in, throttled too long: no change is tried after it
            batch.stop = batch.stop or exc
            return None

    def _export_one(self, change: CSEntryChange, cancel: threading.Event) -> ExportResult:
        """PUT or DELETE one user's photo; ``cancel`` (an interruption) ends its retries and waits."""
        ident = change.identifier or change.anchor
        if change.modification in (ObjectModificationType.ADD, ObjectModificationType.DELETE):
            return ExportResult.failed(
                ident,
                "export-not-supported",
                "this agent changes photos of existing users; it never creates or deletes users",
            )
        try:
            photo = _exported_photo(change)
        except ValueError as exc:
            return ExportResult.failed(ident, "constraint-violation", str(exc))
        if photo is _UNTOUCHED:
            return ExportResult.success(ident)
        if self.context.dry_run:
            return ExportResult.success(ident)
        user = quote(change.anchor, safe="@")
        try:
            if photo is None:
                resp = self.graph.request("DELETE", f"users/{user}/photo/$value", cancel=cancel)
                if resp.ok or is_no_photo(resp):
                    return ExportResult.success(ident)
            else:
                assert isinstance(photo, bytes)
                try:
                    data = _normalize_upload(photo)
                except ValueError as exc:
                    return ExportResult.failed(ident, "invalid-photo", str(exc))
                resp = self.graph.request("PUT", f"users/{user}/photo/$value", headers=_JPEG, body=data, cancel=cancel)
                if resp.ok:
                    return ExportResult.success(ident)
        except RetryableError as exc:
            return ExportResult.retry(ident, "cd-error", _then(str(exc), _SENT_AGAIN))
        if resp.status == 403 and resp.error_code == _TOKEN_LACKS_PERMISSION:  # every change would meet it
            raise self.auth.permission_missing("ProfilePhoto.ReadWrite.All", "photo exports", resp.describe())
        return _export_failure(ident, resp, self.context.agent)


@dataclass(slots=True)
class _ExportBatch:
    """What the workers of one export batch learned that concerns every change of it, and its results."""

    #: Graph's outage, once a request has met it (``ServerDownError``'s text)
    down: str | None = None
    #: the error that stops the step (an authentication stop, throttled too long)
    stop: StopRunError | None = None
    #: set on Ctrl-C or a stop signal: no change is started, requests under way give up their retries
    interrupted: threading.Event = field(default_factory=threading.Event)
    #: each change's result by its place in the batch (None: not tried), as its worker recorded it
    results: dict[int, ExportResult | None] = field(default_factory=dict)
    #: changes a worker has started and not yet recorded: what an interruption waits for
    underway: Underway = field(default_factory=Underway)
    #: guards ``results``
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answered(self) -> list[ExportResult]:
        """The results recorded so far, in the batch's order (changes not tried left out)."""
        with self.lock:
            return [r for _, r in sorted(self.results.items(), key=lambda item: item[0]) if r is not None]


def _finish_interrupted(batch: _ExportBatch) -> list[ExportResult]:
    """After an interruption: start no more changes, let those under way end, and return their results.

    Why wait for them: a PUT already sent may have been applied by Graph; returned with the
    interruption, its result is recorded instead of the change being written again next export.
    Each request is bounded (``timeout_s``, and its retries end at once), so the wait is too. A
    worker that takes a change after this returns without sending it (``interrupted``). A retry is
    left out: cut short by the interruption, the change stays pending as it was, no error.
    """
    batch.interrupted.set()
    wait_until(batch.underway.idle)
    return [result for result in batch.answered() if result.status != ExportStatus.RETRY]


_UNTOUCHED = object()
_JPEG = {"Content-Type": "image/jpeg"}
_ON_PREMISES_EXPORT = (
    "Graph cannot write the photo of a mailbox on Exchange Server (hybrid): set it there (Set-UserPhoto); "
    "the change is tried again at every export until the mailbox moves to Exchange Online"
)
_TRIED_AGAIN = "the change is tried again at every export"
_SENT_AGAIN = "Graph failed this time: the change stays pending and is sent again at the next export"
_GONE = (
    "The user no longer exists in Entra ID (deleted since agent {agent!r} last imported it): its next import "
    "removes the user, and this change with it"
)
_NO_MAILBOX = (
    "Graph answers this for a user without an Exchange Online mailbox (not licensed for Exchange, or a mail "
    "user): there is no mailbox photo to write. Give the user a mailbox, or keep the user out of the export "
    f"flow; {_TRIED_AGAIN}"
)
_REFUSED_FOR_USER = (
    "Graph refused the write for this user: check that the signed-in account (or the app) may change this "
    f"user's photo; {_TRIED_AGAIN}"
)
#: Graph's 403 for a token without the permission (photos: ProfilePhoto.ReadWrite.All), whoever the user
_TOKEN_LACKS_PERMISSION = "ErrorInsufficientPermissionsInAccessToken"


def _exported_photo(change: CSEntryChange) -> Any:
    """The photo an UPDATE/REPLACE asks for: bytes, None (remove it), or _UNTOUCHED."""
    if change.modification == ObjectModificationType.REPLACE:
        value = change.attributes.get("EXOPhoto")
    else:
        ours = [c for c in change.changes if c.name == "EXOPhoto"]
        if not ours:
            return _UNTOUCHED
        last = ours[-1]
        value = None if last.modification == AttributeModificationType.DELETE or not last.values else last.values[-1]
    if isinstance(value, list):
        if len(value) > 1:
            raise ValueError("EXOPhoto is single-valued")
        value = value[0] if value else None
    if value is not None and not isinstance(value, bytes | bytearray | memoryview):
        raise ValueError(f"EXOPhoto must be binary, got {type(value).__name__}")
    return bytes(value) if value is not None else None


def _normalize_upload(data: bytes) -> bytes:
    """A JPEG of at most 648x648 and under 4 MB, as Exchange Online accepts (connector.imaging).
    One that already is (the ``hd_photo`` transform's output) is sent as is: one encode per photo."""
    from connector.imaging import (
        EXCHANGE_PHOTO_MAX_BYTES,
        EXCHANGE_PHOTO_SIZE,
        ImageError,
        PhotoSpec,
        meets_spec,
        normalize,
    )

    spec = PhotoSpec(size=EXCHANGE_PHOTO_SIZE, max_bytes=EXCHANGE_PHOTO_MAX_BYTES)
    if meets_spec(data, spec):
        return data
    try:
        return normalize(data, spec).data
    except ImageError as exc:
        raise ValueError(str(exc)) from None


def _export_failure(ident: str, resp: GraphResponse, agent: str) -> ExportResult:
    """One user's photo write Graph did not take: MIM's error name, Graph's answer, and what happens next.

    Why each says what next: the change stays pending whatever the answer, and Graph's own text
    ("Resource '...' does not exist", "Error authenticating with resource") says neither why for
    this user nor what to do.
    """
    if mailbox_on_premises(resp):  # not a missing user (cd-missing-object says "deleted or moved")
        return ExportResult.failed(ident, "mailbox-on-premises", _then(resp, _ON_PREMISES_EXPORT))
    if resp.status == 404:
        return ExportResult.failed(ident, "cd-missing-object", _then(resp, _GONE.format(agent=agent)))
    if resp.status == 400 and resp.error_code == NO_MAILBOX_CODE:
        return ExportResult.failed(ident, "no-exchange-mailbox", _then(resp, _NO_MAILBOX))
    if resp.status in (401, 403):
        return ExportResult.failed(ident, "permission-issue", _then(resp, _REFUSED_FOR_USER))
    if resp.status == 413:
        return ExportResult.failed(ident, "constraint-violation", _then(resp, _TRIED_AGAIN))
    if resp.status == 429 or resp.status >= 500:
        return ExportResult.retry(ident, "cd-error", _then(resp, _SENT_AGAIN))
    return ExportResult.failed(ident, "cd-error", _then(resp, _TRIED_AGAIN))


def _then(resp: GraphResponse | str, advice: str) -> str:
    """Graph's answer (or a failure's text), then what happens next: one sentence each."""
    said = resp if isinstance(resp, str) else resp.describe()
    return f"{said.rstrip('.')}. {advice[0].upper()}{advice[1:]}"
