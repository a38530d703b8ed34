"""``exchange-online-photos``: mailbox users and their photos from Microsoft Graph.

Full import walks ``users/delta`` from scratch. That initial delta round *is* a complete listing
of the users (with the selected properties), and it ends with a delta link taken at the same
moment, so the next delta import misses nothing that changed while the full import ran (a
``/users`` listing followed by a separate delta walk would leave a gap). Mailbox users are those
with ``mail``; the others are skipped. Every mailbox user's photo metadata is probed and the photo
downloaded (see ``_photos``), in ``$batch`` requests of up to 20.

Delta import first follows the delta link (user adds, changes, deletes), then probes the photo
metadata of users whose re-check window expired, because photo changes never appear in
``users/delta``; a photo is downloaded only when its ETag is new or changed (or it is picked for
rolling re-verification, which compares checksums). The per-user state that needs (ETag, checksum,
last probe, last error) lives in a file under the agent's data folder; see ``_state`` for why and
for how it stays consistent with the engine's watermark.

``EXOPhotoLastChecked`` is when the connector last fetched photo bytes that differed from what it
held (UTC): re-downloads of the same picture keep it, so an unchanged tenant imports as a no-op.

A full import resumes (see ``connector.engine._import``): each page carries a checkpoint naming
the ``users/delta`` page from which listing must start again so that every user listed before it
has already been handed to the engine, plus the photo state's generation, which the resumed run
keeps (so the users imported before the interruption are not forgotten at its end). Users of later
pages that were already committed are probed again, at most ``max_ahead`` of them. A checkpoint
that Graph no longer honours (an expired skip token) makes the engine start over.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import queue
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import quote, urlsplit

import requests

from connector import metrics
from connector.agents._mailbox_photo import photo_attributes, photo_values
from connector.agents.exchange_online._auth import GraphAuth, make_session
from connector.agents.exchange_online._graph import GraphClient, GraphResponse, RetryableError
from connector.agents.exchange_online._hybrid import location_attribute, mailbox_location_values, same_mailbox_location
from connector.agents.exchange_online._photo_policy import doctor_checks as photo_policy_checks
from connector.agents.exchange_online._photo_policy import guard_photo_export
from connector.agents.exchange_online._photos import PhotoOutcome, PhotoTask, is_no_photo
from connector.agents.exchange_online._pipeline import Fatal, Pipeline, SourceDone
from connector.agents.exchange_online._settings import ExchangeOnlineSettings
from connector.agents.exchange_online._state import (
    IN_CS_NO,
    IN_CS_YES,
    STATE_FILE_NAME,
    PhotoState,
    UserState,
    Watermark,
)
from connector.sdk import (
    Attribute,
    AttributeAccess,
    AttributeChange,
    AttributeModificationType,
    AttributeType,
    Capabilities,
    CheckResult,
    Connector,
    ConnectorContext,
    ConnectorError,
    CSEntryChange,
    ExportResult,
    ImportMode,
    ImportPage,
    ImportRequest,
    ObjectClass,
    ObjectModificationType,
    ResumeRefusedError,
    Schema,
    ScopeViolationError,
    ServerDownError,
    StopRunError,
)

__all__ = ["OBJECT_CLASS", "ExchangeOnlinePhotosConnector"]

log = logging.getLogger("mvsync.agent.exchange_online")

OBJECT_CLASS = "EXOUser"
#: Directory properties we import (Graph names = connector-space names), tracked by users/delta.
#: Photo metrics per import outcome (``mvsync_photos_total{outcome=...}``).
_IMPORT_OUTCOMES = {
    "photo": "downloaded",
    "none": "no-photo",
    "unchanged": "unchanged",
    "error": "import-error",
    "gone": "user-gone",
}
DIRECTORY_ATTRIBUTES = ("userPrincipalName", "mail", "mailNickname", "displayName", "accountEnabled")
_SELECT = ",".join(("id", *DIRECTORY_ATTRIBUTES))
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
            # the photo is exportable (a folder -> Exchange Online flow may write it)
            *photo_attributes(
                "EXO",
                photo="photo at photo_size (JPEG)",
                etag="@odata.mediaEtag, unquoted",
                photo_access=AttributeAccess.IMPORT_EXPORT,
            ),
            location_attribute(),
        ),
    )
)


@dataclass(slots=True)
class _UserSeen:
    user: dict[str, Any]
    page: int = 0


@dataclass(slots=True)
class _Listed:
    """A ``users/delta`` page is about to be emitted: its index, its URL and the next page's."""

    page: int
    url: str
    next_url: str | None


@dataclass(frozen=True, slots=True)
class _Resume:
    """What a full import's checkpoint holds (JSON): where listing restarts, and the run's generation."""

    link: str
    gen: int
    store: str

    def dumps(self) -> str:
        return json.dumps({"v": 1, "link": self.link, "gen": self.gen, "store": self.store})

    @classmethod
    def loads(cls, text: str) -> _Resume | None:
        try:
            data = json.loads(text)
            return cls(str(data["link"]), int(data["gen"]), str(data["store"]))
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(slots=True)
class _Removed:
    user_id: str


@dataclass(slots=True)
class _Due:
    row: UserState
    reverify: bool


@dataclass(slots=True)
class _Ctx:
    attrs: dict[str, Any]
    row: UserState | None


def _dir_attrs(user: dict[str, Any]) -> dict[str, Any]:
    return {name: user[name] for name in DIRECTORY_ATTRIBUTES if user.get(name) is not None}


def _reverify_bucket(user_id: str, buckets: int) -> int:
    return int(hashlib.sha256(user_id.encode()).hexdigest()[:8], 16) % buckets


class _Run:
    """One import step's moving parts (pipeline, stages, state), owned by the engine's thread."""

    def __init__(
        self,
        conn: ExchangeOnlinePhotosConnector,
        mode: ImportMode,
        watermark: Watermark | None,
        resume: _Resume | None = None,
    ) -> None:
        self.conn = conn
        self.settings = conn.settings
        self.state = conn.state
        self.full = mode == ImportMode.FULL
        self.gen = self.state.resume_run(resume.gen) if resume else self.state.begin_run(watermark)
        self.started = time.time()
        self.pipeline = Pipeline(conn.graph, max_ahead=conn.max_ahead)
        self.seen: set[str] = set()
        self.open_chains = 0
        self.source_done = False
        self.source_result: Any = None
        self.stages: list[Callable[[Callable[[Any], None]], Any]] = []
        self.delta_link: str | None = None
        self.finished = False
        self.fatal: BaseException | None = None
        self.carry: list[CSEntryChange] = []
        self.counters = conn.counters
        # listing pages not yet wholly handed to the engine (for the checkpoint): page -> users pending
        self.pages: dict[int, _Listed] = {}
        self.pending: Counter[int] = Counter()
        self.page_of: dict[str, int] = {}
        self._scheduled: str | None = None
        if self.full:
            first = resume.link if resume else "users/delta?$select=" + _SELECT
            self.stages = [lambda emit: self.conn.walk_delta(first, emit, resumed=resume is not None)]
        else:
            assert watermark is not None
            link = watermark.delta_link
            self.stages = [lambda emit: self.conn.walk_delta(link, emit), self._scan_due]
        self._next_stage()

    # -- stages ---------------------------------------------------------------------------------
    def _next_stage(self) -> None:
        stage = self.stages.pop(0)
        self.source_done = False
        self.pipeline.run_source(stage, "listing" if self.stages else "final")

    def _stage_finished(self) -> None:
        if self.source_result is not None:
            self.delta_link = str(self.source_result)
        self.state.commit()  # the next stage reads the file through its own connection
        if self.stages:
            self._next_stage()
            return
        if self.full:
            self.counters["state_forgotten"] += self.state.forget_unseen()
        self.finished = True

    def _scan_due(self, emit: Callable[[Any], None]) -> None:
        """Stage 2 of a delta: users whose photo re-check (or error re-check) window has passed."""
        s = self.settings
        now = time.time()
        cut_ok = min(self.started, now - s.photo_recheck_hours * 3600)
        cut_err = min(self.started, now - s.photo_error_recheck_hours * 3600)
        buckets = max(1, round(1 / s.reverify_fraction)) if s.reverify_fraction > 0 else 0
        for row in self.state.scan():
            if row.id in self.seen:
                continue
            reverify = (
                bool(buckets) and row.checksum is not None and _reverify_bucket(row.id, buckets) == self.gen % buckets
            )
            late = (row.error_at or 0.0) < cut_err if row.error is not None else row.checked_at < cut_ok
            if reverify or late or not row.trusted:
                emit(_Due(row, reverify))

    # -- events ---------------------------------------------------------------------------------
    def _schedule(self, user_id: str, attrs: dict[str, Any], row: UserState | None, baseline: Any) -> None:
        self._scheduled = user_id
        self.open_chains += 1
        self.counters["probes"] += 1
        self.pipeline.submit(PhotoTask(user_id, "probe", baseline=baseline, context=_Ctx(attrs, row)))

    def handle(self, event: Any) -> list[CSEntryChange]:
        self._scheduled = None
        if isinstance(event, PhotoOutcome):
            self.open_chains -= 1
            self.pipeline.release()
            out = self._on_outcome(event)
            if not out:  # nothing to commit for this user (gone, unchanged): its page need not wait
                self._done_with(event.task.user_id)
        elif isinstance(event, _UserSeen):
            out = self._on_user(event.user)
            user_id = str(event.user["id"])
            if out or self.open_chain_for(user_id):
                self.pending[event.page] += 1
                self.page_of.setdefault(user_id, event.page)
        elif isinstance(event, _Listed):
            self.pages[event.page] = event
            out = []
        elif isinstance(event, _Removed):
            self.pipeline.release()
            self.seen.add(event.user_id)
            out = [] if self.full else self._remove(event.user_id)
        elif isinstance(event, _Due):
            out = self._on_due(event)
        elif isinstance(event, SourceDone):
            self.source_done = True
            self.source_result = event.result
            out = []
        elif isinstance(event, Fatal):
            self.fatal = event.error
            out = []
        else:  # pragma: no cover - a programming error
            raise TypeError(f"unexpected pipeline event {event!r}")
        if self.source_done and self.open_chains == 0 and not self.finished and self.fatal is None:
            self._stage_finished()
        return out

    def _remove(self, user_id: str) -> list[CSEntryChange]:
        self.state.delete(user_id)
        self.counters["deletes"] += 1
        return [CSEntryChange.delete(OBJECT_CLASS, user_id)]

    def _on_user(self, user: dict[str, Any]) -> list[CSEntryChange]:
        user_id = str(user["id"])
        attrs = _dir_attrs(user)
        if user_id in self.seen:  # a replay within one round
            self.pipeline.release()
            return []
        self.seen.add(user_id)
        row = self.state.get(user_id)
        if not attrs.get("mail"):  # not (or no longer) a mailbox user
            self.pipeline.release()
            return [] if self.full or row is None else self._remove(user_id)
        self.counters["users"] += 1
        if self.full or row is None or not row.trusted or row.in_cs != IN_CS_YES:
            self._schedule(user_id, attrs, row, None)
            return []
        self.pipeline.release()
        if attrs == row.attrs:
            return []
        changes = [
            AttributeChange.replace(name, attrs[name]) if name in attrs else AttributeChange.delete(name)
            for name in DIRECTORY_ATTRIBUTES
            if attrs.get(name) != row.attrs.get(name)
        ]
        row.attrs, row.gen = attrs, self.gen
        self.state.put(row)
        self.counters["directory_updates"] += 1
        return [CSEntryChange.update(OBJECT_CLASS, user_id, changes)]

    def _on_due(self, due: _Due) -> list[CSEntryChange]:
        row = due.row
        known = row.trusted and row.in_cs == IN_CS_YES and not due.reverify
        baseline = (row.checksum is not None, row.etag) if known else None
        if due.reverify:
            self.counters["reverified"] += 1
        self._schedule(row.id, row.attrs, row, baseline)
        return []

    def _on_outcome(self, outcome: PhotoOutcome) -> list[CSEntryChange]:
        ctx: _Ctx = outcome.task.context
        row, attrs = ctx.row, ctx.attrs
        user_id = outcome.task.user_id
        now = time.time()
        kind = outcome.kind
        metrics.photo(_IMPORT_OUTCOMES[kind])
        if kind == "unchanged":
            self.counters["unchanged"] += 1
            self.state.checked(user_id, now)
            return []
        if kind == "gone":  # deleted between listing and probe: the next delta reports it too
            self.state.delete(user_id)
            return [] if self.full or row is None else [CSEntryChange.delete(OBJECT_CLASS, user_id)]
        if kind == "error":
            self.counters["errors"] += 1
            failed = row or UserState(user_id, attrs, in_cs=IN_CS_NO, gen=self.gen)
            failed.attrs, failed.error, failed.error_at = attrs, outcome.error, now
            if self.full:
                failed.gen = self.gen  # seen by this full import: keep it
            self.state.put(failed)
            error = CSEntryChange.import_error(
                user_id, outcome.error, outcome.detail, object_class=OBJECT_CLASS, attributes=attrs
            )
            return [error]
        photo = kind == "photo"
        if photo:
            self.counters["photo_downloads"] += 1
        checksum = outcome.checksum or None
        same_bytes = row is not None and row.checksum == checksum and same_mailbox_location(row.etag, outcome.etag)
        if (
            not self.full
            and row is not None
            and row.trusted
            and row.in_cs == IN_CS_YES
            and same_bytes
            and attrs == row.attrs
        ):
            # a new ETag for the same picture, or a re-verification that matched: nothing to stage
            row.etag, row.checked_at, row.error, row.error_at = outcome.etag, now, None, None
            self.state.put(row)
            self.counters["verified_same"] += 1
            return []
        verified = row.verified_at if (same_bytes and row is not None and row.verified_at) else now
        size = len(outcome.data) if outcome.data is not None else None
        self.state.put(
            UserState(
                user_id,
                attrs,
                outcome.etag,  # a photo's version, the on-premises marker (_hybrid), or None
                checksum,
                size,
                IN_CS_YES,
                now,
                verified,
                None,
                None,
                self.gen,
            )
        )
        if not self.full:
            self.counters["photo_changes"] += 1
        values: dict[str, Any] = {"id": user_id, **attrs, **mailbox_location_values(outcome.etag, self.counters)}
        if photo and outcome.data is not None:
            values.update(photo_values("EXO", outcome.data, checksum, outcome.etag, verified or now))
        return [CSEntryChange.add(OBJECT_CLASS, user_id, values)]

    def open_chain_for(self, user_id: str) -> bool:
        """Whether a photo chain was just scheduled for ``user_id`` (its entry comes later)."""
        return self._scheduled == user_id

    def handed_over(self, entries: list[CSEntryChange]) -> None:
        """``entries`` go to the engine now: their users no longer hold their listing page back."""
        for entry in entries:
            self._done_with(str(entry.anchor))

    def _done_with(self, user_id: str) -> None:
        page = self.page_of.pop(user_id, None)
        if page is not None:
            self.pending[page] -= 1
            if self.pending[page] <= 0:
                del self.pending[page]

    def checkpoint(self) -> str | None:
        """Where a resumed full import restarts listing: the first page with users not yet handed over.

        None when nothing can be said yet (no page listed) or outside full imports.
        """
        if not self.full or not self.pages:
            return None
        waiting = min(self.pending) if self.pending else None
        if waiting is not None:
            link = self.pages[waiting].url
        else:  # every listed user is handed over: restart at the page after the last one listed
            last = self.pages[max(self.pages)]
            if last.next_url is None:
                return None
            link = last.next_url
        return _Resume(link, self.gen, self.state.store_id).dumps()

    # -- paging ---------------------------------------------------------------------------------
    def next_events(self, want: int) -> list[CSEntryChange]:
        """Block until ``want`` entries are ready, the run finished, or a fatal error arrived."""
        entries = self.carry[:want]
        self.carry = self.carry[want:]
        results = self.pipeline.results
        while len(entries) < want and not self.finished and self.fatal is None:
            try:
                event = results.get(timeout=1.0)
            except queue.Empty:
                continue
            entries.extend(self.handle(event))
        # Keep the workers fed while the engine writes this page: schedule what is already listed.
        # Stop at one page of finished entries: each handled outcome frees a pipeline permit, so
        # draining without a bound would let a fast tenant pile photos up here faster than the
        # store takes them, and memory would grow with the tenant.
        while self.fatal is None and len(self.carry) < want:
            try:
                event = results.get_nowait()
            except queue.Empty:
                break
            self.carry.extend(self.handle(event))
        if len(entries) > want:
            self.carry[:0] = entries[want:]
            del entries[want:]
        self.handed_over(entries)
        return entries

    @property
    def done(self) -> bool:
        return self.finished and not self.carry

    def stop(self) -> None:
        self.pipeline.stop()


class ExchangeOnlinePhotosConnector(Connector[ExchangeOnlineSettings]):
    """Exchange Online mailbox users and photos over Microsoft Graph (the PowerShell MA's successor)."""

    settings_model = ExchangeOnlineSettings
    capabilities: ClassVar[Capabilities] = Capabilities(
        full_import=True, delta_import=True, export=True, max_page_size=5000, max_batch_size=500
    )
    description = "Exchange Online mailbox users and their photos, over Microsoft Graph"

    def __init__(self, settings: ExchangeOnlineSettings, context: ConnectorContext) -> None:
        super().__init__(settings, context)
        self._auth: GraphAuth | None = None
        self._graph: GraphClient | None = None
        self._state: PhotoState | None = None
        self._run: _Run | None = None
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "users",
                "probes",
                "photo_downloads",
                "unchanged",
                "errors",
                "deletes",
                "directory_updates",
                "photo_changes",
                "verified_same",
                "reverified",
                "state_forgotten",
                "mailbox_on_premises",
            ),
            0,
        )
        #: Listed users allowed between the lister and the engine (bounds memory; see _pipeline).
        self.max_ahead = 1000
        self._photo_policy_read = False  # once per step, before the first photo write (_photo_policy)

    # -- lifecycle ------------------------------------------------------------------------------
    def _session(self) -> requests.Session:
        return make_session(self.settings)

    @property
    def auth(self) -> GraphAuth:
        if self._auth is None:
            self._auth = GraphAuth(
                self.settings,
                self.context.data_dir,
                self.context.reauthorize_command,
                session_factory=self._session,
            )
        return self._auth

    @property
    def graph(self) -> GraphClient:
        if self._graph is None:
            self._graph = GraphClient(self.settings, self.auth, session_factory=self._session)
        return self._graph

    @property
    def state(self) -> PhotoState:
        if self._state is None:
            self._state = PhotoState(self.context.data_dir / STATE_FILE_NAME)
        return self._state

    def open(self) -> None:
        self.context.data_dir.mkdir(parents=True, exist_ok=True)
        self.auth.token()  # fail fast (stopped-authentication) before any work starts

    def close(self) -> None:
        if self._run is not None:
            self._run.stop()
            self._run = None
        if self._state is not None:
            self._state.close()
            self._state = None
        if self._graph is not None:
            self.context.logger.info("graph: %s; import: %s", self._graph.stats.as_dict(), self.counters)
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

    def get_schema(self) -> Schema:
        return SCHEMA

    @property
    def metrics(self) -> dict[str, Any]:
        """Counters of the current (or last) step, for run history and the benchmark."""
        graph = self._graph.stats.as_dict() if self._graph is not None else {}
        return {
            **self.counters,
            **graph,
            "retry_budget_spent": self._graph.budget.spent if self._graph else 0,
            "throttled_waits": self._graph.throttled_waits if self._graph else 0,
            "limiter": self._graph.limiter.stats.as_dict() if self._graph else {},
        }

    # -- import ---------------------------------------------------------------------------------
    def walk_delta(self, url: str, emit: Callable[[Any], None], *, resumed: bool = False) -> str:
        """Follow ``users/delta`` pages from ``url`` to the delta link (runs on the source thread).

        ``resumed``: ``url`` comes from a checkpoint; if Graph no longer honours it, the engine is told
        to start over (``ResumeRefusedError``) instead of the step failing.
        """
        headers = {"Prefer": f"odata.maxpagesize={min(999, max(100, self.max_ahead))}"}
        page = 0
        while True:
            resp = self.graph.get_json(url, headers=headers)
            if not resp.ok or not isinstance(resp.json_body, dict):
                if resumed and page == 0 and resp.status in (400, 404, 410):
                    raise ResumeRefusedError(f"Graph no longer accepts the saved users/delta page ({resp.describe()})")
                raise self._listing_error(resp)
            page += 1
            next_link = resp.json_body.get("@odata.nextLink")
            emit(_Listed(page, url, str(next_link) if next_link else None))
            junk = 0
            for user in resp.json_body.get("value", []):
                if not isinstance(user, dict) or not isinstance(user.get("id"), str) or not user["id"]:
                    junk += 1
                    continue
                if "@removed" in user:
                    emit(_Removed(str(user["id"])))
                else:
                    emit(_UserSeen(user, page))
            if junk:
                log.warning("users/delta page held %d entries that are not users with an id; skipped", junk)
            if next_link:
                url = str(next_link)
                continue
            delta_link = resp.json_body.get("@odata.deltaLink")
            if not delta_link:
                raise StopRunError("users/delta ended without @odata.deltaLink")
            return str(delta_link)

    def _listing_error(self, resp: GraphResponse) -> StopRunError:
        if resp.status == 410 or resp.error_code in _EXPIRED_DELTA_CODES:
            return StopRunError(f"the users/delta link is no longer valid ({resp.describe()}); run a full import")
        if resp.status >= 500 or resp.status == 429:
            return ServerDownError(f"Graph did not answer the user listing after retries: {resp.describe()}")
        return StopRunError(f"Graph refused the user listing: {resp.describe()}")

    def import_page(self, request: ImportRequest) -> ImportPage:
        if self._run is None or request.page_token is None:
            if self._run is not None:
                self._run.stop()
            self._run = self._start(request)
        run = self._run
        try:
            entries = run.next_events(request.page_size)
        except RetryableError as exc:
            raise ServerDownError(f"Graph unreachable: {exc}") from None
        if run.fatal is not None and not entries:
            error = run.fatal
            if isinstance(error, RetryableError):
                raise ServerDownError(f"Graph unreachable: {error}") from None
            raise error
        self.state.commit()
        done = run.done and run.fatal is None
        watermark = None
        if done:
            assert run.delta_link is not None
            watermark = Watermark(run.delta_link, run.gen, self.state.store_id).dumps()
        return ImportPage(
            entries,
            more_to_import=not done,
            page_token=str(request.page_number),
            watermark=watermark,
            checkpoint=None if done else run.checkpoint(),
        )

    def _start(self, request: ImportRequest) -> _Run:
        previous: Watermark | None = None
        if request.mode == ImportMode.DELTA:
            previous = Watermark.loads(request.watermark)
            if previous is None or not self.state.matches(previous):
                msg = (
                    "no usable delta state for this agent (no watermark, or the photo state file "
                    f"{self.context.data_dir / STATE_FILE_NAME} was replaced); run a full import"
                )
                raise StopRunError(msg)
            if not self._on_graph_host(previous.delta_link):
                log.warning(
                    "the saved users/delta link points at %s, not at graph_url %s: it is discarded and this "
                    "delta starts a new round (users deleted meanwhile show up at the next full import)",
                    urlsplit(previous.delta_link).netloc,
                    urlsplit(self.settings.graph_url).netloc,
                )
                previous = dataclasses.replace(previous, delta_link="users/delta?$select=" + _SELECT)
        self.max_ahead = min(4000, max(200, 2 * request.page_size))
        return _Run(self, request.mode, previous, self._resume(request.resume_from))

    def _on_graph_host(self, link: str) -> bool:
        """Whether a saved link (absolute, from Graph) belongs to the configured ``graph_url``."""
        return not link.startswith("https://") or urlsplit(link).netloc == urlsplit(self.settings.graph_url).netloc

    def _resume(self, checkpoint: str | None) -> _Resume | None:
        """The checkpoint of an interrupted full import, if this agent can still resume from it."""
        if checkpoint is None:
            return None
        resume = _Resume.loads(checkpoint)
        if resume is None:
            raise ResumeRefusedError("the checkpoint is not one this agent wrote")
        if resume.store != self.state.store_id or resume.gen > self.state.gen:
            raise ResumeRefusedError(f"the photo state file {self.context.data_dir / STATE_FILE_NAME} was replaced")
        if not self._on_graph_host(resume.link):
            raise ResumeRefusedError("graph_url changed since the interrupted import")
        return resume

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
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="exo-export") as pool:
            return list(pool.map(self._export_one, changes))

    def _export_one(self, change: CSEntryChange) -> ExportResult:
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
                resp = self.graph.request("DELETE", f"users/{user}/photo/$value")
                if resp.ok or is_no_photo(resp):
                    return ExportResult.success(ident)
            else:
                assert isinstance(photo, bytes)
                try:
                    data = _normalize_upload(photo)
                except ValueError as exc:
                    return ExportResult.failed(ident, "invalid-photo", str(exc))
                resp = self.graph.request(
                    "PUT", f"users/{user}/photo/$value", headers={"Content-Type": "image/jpeg"}, body=data
                )
                if resp.ok:
                    return ExportResult.success(ident)
        except RetryableError as exc:
            return ExportResult.retry(ident, "cd-error", str(exc))
        return _export_failure(ident, resp)


_UNTOUCHED = object()


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


def _export_failure(ident: str, resp: GraphResponse) -> ExportResult:
    detail = resp.describe()
    if resp.status == 404:
        return ExportResult.failed(ident, "cd-missing-object", detail)
    if resp.status in (401, 403):
        return ExportResult.failed(ident, "permission-issue", detail)
    if resp.status == 413:
        return ExportResult.failed(ident, "constraint-violation", detail)
    if resp.status == 429 or resp.status >= 500:
        return ExportResult.retry(ident, "cd-error", detail)
    return ExportResult.failed(ident, "cd-error", detail)
