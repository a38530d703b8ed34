"""``exchange-server-photos``: the photos of on-premises Exchange mailboxes, over EWS.

In a hybrid organisation the HD photo of a mailbox still on Exchange Server lives in that mailbox,
and Graph cannot read it (the Exchange Online agent imports such a person with ``EXOMailboxLocation =
"on-premises"`` and no photo).
This agent reads it with EWS's ``GetUserPhoto`` (field-notes-2.md §1; see ``_client``), one object
per configured mailbox (see ``_settings`` for why a configured list).

Full import fetches every mailbox's photo. Delta import re-reads the mailbox list (addresses gone
from it are deleted, new ones fetched) and re-checks a photo only when its window passed:
``photo_recheck_hours`` after the last check, ``photo_error_recheck_hours`` after a failure (the
Exchange Online agent's windows, after SharePoint 2013's ``UserPhotoExpiration`` and
``UserPhotoErrorExpiration``, field-notes-2.md §1.5). EWS has no change feed for photos (§1.6), so
a re-check is a conditional GET with the stored ETag: 304 costs no body. Every failure is a
per-object import error; only authentication stops the step.

The per-mailbox ETag and checksum live in the agent's state file, kept consistent with the engine's
watermark the way the Exchange Online agent keeps its own (``exchange_online._state``: generations,
distrust of rows newer than the watermark); that file and its rules are reused as they are. The
requests go through the process-wide limiter of this EWS host and account
(``connector.throttling.shared_limiter``), whose ceiling is ``concurrency``, below EWSMaxConcurrency.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

import requests

from connector.agents._mailbox_photo import photo_attributes, photo_values
from connector.agents.exchange_online._state import IN_CS_NO, IN_CS_YES, PhotoState, UserState, Watermark
from connector.agents.exchange_server._auth import make_auth, make_session
from connector.agents.exchange_server._client import Fetched, PhotoClient
from connector.agents.exchange_server._settings import ExchangeServerSettings
from connector.sdk import (
    Attribute,
    AttributeAccess,
    Capabilities,
    CheckResult,
    ConfigurationError,
    Connector,
    ConnectorContext,
    ConnectorError,
    CSEntryChange,
    ImportMode,
    ImportPage,
    ImportRequest,
    ObjectClass,
    Schema,
    StopRunError,
)
from connector.throttling import AdaptiveLimiter, shared_limiter

__all__ = ["OBJECT_CLASS", "STATE_FILE_NAME", "ExchangeServerPhotosConnector"]

OBJECT_CLASS = "EXSMailbox"
STATE_FILE_NAME = "ews-photo-state.sqlite3"

_IMPORT_ONLY = AttributeAccess.IMPORT_ONLY
SCHEMA = Schema.of(
    ObjectClass(
        name=OBJECT_CLASS,
        anchor="mail",
        attributes=(
            Attribute(name="mail", access=_IMPORT_ONLY, description="primary SMTP address, lower case"),
            *photo_attributes("EXS", photo="JPEG", etag="the ETag EWS sent"),
        ),
    )
)


@dataclass(slots=True)
class _Task:
    email: str
    row: UserState | None
    future: Future[Fetched] | None = None


class _Run:
    """One import step: the work list, the requests in flight, and the state they update."""

    def __init__(self, conn: ExchangeServerPhotosConnector, mode: ImportMode, previous: Watermark | None) -> None:
        self.conn = conn
        self.state = conn.state
        self.full = mode == ImportMode.FULL
        self.gen = self.state.begin_run(previous)
        self.pending: deque[_Task] = deque()
        self.in_flight: deque[_Task] = deque()
        self.carry: list[CSEntryChange] = []
        self.counters = conn.counters
        listed = conn.mailbox_list()
        now = time.time()
        s = conn.settings
        cut_ok, cut_err = now - s.photo_recheck_hours * 3600, now - s.photo_error_recheck_hours * 3600
        for email in listed:
            row = self.state.get(email)
            if self.full or row is None or _due(row, cut_ok, cut_err):
                self.pending.append(_Task(email, row))
        if not self.full:
            gone = {row.id for row in self.state.scan()} - set(listed)
            for email in sorted(gone):
                self.state.delete(email)
                self.counters["deletes"] += 1
                self.carry.append(CSEntryChange.delete(OBJECT_CLASS, email))
        self.counters["mailboxes"] += len(listed)

    def next_entries(self, want: int) -> list[CSEntryChange]:
        """Keep up to two pages of requests in flight; return up to ``want`` finished entries."""
        entries, self.carry = self.carry[:want], self.carry[want:]
        while len(entries) < want and (self.pending or self.in_flight):
            self._submit(2 * want)
            task = self.in_flight.popleft()
            assert task.future is not None
            entries.extend(self._outcome(task, task.future.result()))
        self._submit(2 * want)  # keep EWS busy while the engine writes this page
        return entries

    def _submit(self, limit: int) -> None:
        while self.pending and len(self.in_flight) < limit:
            task = self.pending.popleft()
            row = task.row
            etag = row.etag if row is not None and _trusted_etag(row, self.full) else None
            task.future = self.conn.pool.submit(self.conn.client.fetch, task.email, etag)
            self.in_flight.append(task)

    @property
    def done(self) -> bool:
        return not (self.pending or self.in_flight or self.carry)

    def _outcome(self, task: _Task, got: Fetched) -> list[CSEntryChange]:
        email, row, now = task.email, task.row, time.time()
        self.counters[got.kind] += 1
        if got.kind == "unchanged":
            self.state.checked(email, now)
            return []
        if got.kind == "error":
            failed = row or UserState(email, {"mail": email}, in_cs=IN_CS_NO)
            failed.error, failed.error_at, failed.gen = got.error, now, self.gen
            self.state.put(failed)
            return [CSEntryChange.import_error(email, got.error, got.detail, object_class=OBJECT_CLASS)]
        data = got.data if got.kind == "photo" else None
        checksum = hashlib.sha256(data).hexdigest() if data is not None else None
        known = row is not None and row.trusted and row.in_cs == IN_CS_YES and row.error is None
        if not self.full and known and row is not None and row.checksum == checksum:
            row.etag, row.checked_at = got.etag, now  # a new ETag for the same picture: nothing to stage
            self.state.put(row)
            return []
        size = len(data) if data is not None else None
        verified = row.verified_at if (row is not None and row.checksum == checksum and row.verified_at) else now
        self.state.put(
            UserState(email, {"mail": email}, got.etag, checksum, size, IN_CS_YES, now, verified, None, None, self.gen)
        )
        values: dict[str, Any] = {"mail": email}
        if data is not None:
            self.counters["photo_changes"] += 1
            values.update(photo_values("EXS", data, checksum, got.etag, verified))
        return [CSEntryChange.add(OBJECT_CLASS, email, values)]


def _due(row: UserState, cut_ok: float, cut_err: float) -> bool:
    if not row.trusted:
        return True
    if row.error is not None:
        return (row.error_at or 0.0) < cut_err
    return row.in_cs != IN_CS_YES or row.checked_at < cut_ok


def _trusted_etag(row: UserState, full: bool) -> bool:
    """Whether a conditional GET may skip the body: the connector space holds what the ETag names."""
    return not full and row.trusted and row.in_cs == IN_CS_YES and row.error is None


class ExchangeServerPhotosConnector(Connector[ExchangeServerSettings]):
    """Photos of on-premises Exchange mailboxes (hybrid organisations), over EWS."""

    settings_model = ExchangeServerSettings
    capabilities: ClassVar[Capabilities] = Capabilities(full_import=True, delta_import=True, max_page_size=5000)
    description = "Photos of on-premises Exchange Server mailboxes, over EWS (GetUserPhoto)"

    def __init__(self, settings: ExchangeServerSettings, context: ConnectorContext) -> None:
        super().__init__(settings, context)
        self._state: PhotoState | None = None
        self._client: PhotoClient | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._run: _Run | None = None
        self._cancel = threading.Event()
        self._http_counters: dict[str, int] = {}
        self.counters: dict[str, int] = dict.fromkeys(
            ("mailboxes", "photo", "none", "unchanged", "error", "deletes", "photo_changes"), 0
        )

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def limiter(self) -> AdaptiveLimiter:
        """One limiter per EWS host and account, shared by every agent in the process that uses them."""
        who = self.settings.username or self.settings.client_id or "negotiate"
        return shared_limiter(f"ews:{self.settings.origin}:{who.lower()}", ceiling=self.settings.concurrency)

    @property
    def state(self) -> PhotoState:
        if self._state is None:
            self._state = PhotoState(self.context.data_dir / STATE_FILE_NAME)
        return self._state

    @property
    def client(self) -> PhotoClient:
        if self._client is None:
            self._cancel.clear()
            # connection-based schemes keep per-handshake state: one auth object per thread's session;
            # an OAuth token is shared by all of them
            shared = make_auth(self.settings) if self.settings.auth == "oauth" else None

            def session() -> requests.Session:
                return make_session(self.settings, shared or make_auth(self.settings))

            self._client = PhotoClient(self.settings, session, self.limiter, self._cancel)
        return self._client

    @property
    def pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.settings.concurrency, thread_name_prefix="ews-photo")
        return self._pool

    def open(self) -> None:
        self.context.data_dir.mkdir(parents=True, exist_ok=True)

    def close(self) -> None:
        self._cancel.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._run = None
        if self._client is not None:
            self._http_counters = dict(self._client.counters)
            self.context.logger.info("ews: %s; import: %s", self._http_counters, self.counters)
            self._client.close()
            self._client = None
        if self._state is not None:
            self._state.close()
            self._state = None

    def check(self) -> CheckResult:
        try:
            listed = self.mailbox_list()
            if not listed:
                return CheckResult(False, "the mailbox list is empty")
            got = self.client.fetch(listed[0], None)
        except ConnectorError as exc:
            return CheckResult(False, str(exc))
        ok = got.kind != "error"
        return CheckResult(ok, f"EWS answered for {listed[0]}: {got.kind}" + (f" ({got.detail})" if not ok else ""))

    def get_schema(self) -> Schema:
        return SCHEMA

    @property
    def metrics(self) -> dict[str, Any]:
        """Counters of the current (or last) step, for run history and the benchmark."""
        ews = self._client.counters if self._client is not None else self._http_counters
        return {**self.counters, **ews, "limiter": self.limiter.stats.as_dict()}

    # -- mailboxes ------------------------------------------------------------------------------
    def mailbox_list(self) -> list[str]:
        """The configured addresses, lower case, deduplicated, in order (the file re-read each time)."""
        lines = list(self.settings.mailboxes)
        path = self.settings.mailbox_file
        if path is not None:
            try:
                lines += path.read_text(encoding="utf-8-sig").splitlines()
            except OSError as exc:
                reason = exc.strerror or exc
                msg = f"cannot read the mailbox list {path}: {reason}; fix the path or the file's permissions"
                raise ConfigurationError(msg, key="mailbox_file") from None
        out: dict[str, None] = {}
        for number, line in enumerate(lines, 1):
            address = line.split("#", 1)[0].strip().lower()
            if not address:
                continue
            if "@" not in address or " " in address:
                where = f"{path}, line {number}" if path is not None else "mailboxes"
                raise ConfigurationError(f"{address!r} is not an SMTP address ({where})", key="mailboxes")
            out[address] = None
        return list(out)

    # -- import ---------------------------------------------------------------------------------
    def import_page(self, request: ImportRequest) -> ImportPage:
        if self._run is None or request.page_token is None:
            self._run = self._start(request)
        run = self._run
        entries = run.next_entries(request.page_size)
        self.state.commit()
        if not run.done:
            return ImportPage(entries, more_to_import=True, page_token=str(request.page_number))
        if run.full:
            self.state.forget_unseen()
        self.state.commit()
        watermark = Watermark("", run.gen, self.state.store_id).dumps()
        self._run = None
        return ImportPage(entries, more_to_import=False, watermark=watermark)

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
        return _Run(self, request.mode, previous)
