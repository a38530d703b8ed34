"""``exchange-server-photos``: the photos of on-premises Exchange mailboxes, over EWS.

In a hybrid organisation the HD photo of a mailbox still on Exchange Server lives in that mailbox,
and Graph cannot read it (the Exchange Online agent imports such a person with ``EXOMailboxLocation =
"on-premises"`` and no photo).
This agent reads it with EWS's ``GetUserPhoto`` (field-notes-2.md §1; see ``_client``), one object
per configured mailbox (see ``_settings`` for why a configured list).

Full import fetches every mailbox's photo; one interrupted (stopped, killed) resumes after the
mailboxes it committed (a ``Checkpoint`` each ``page_size`` mailboxes names how many, and a digest
of the list up to there: a list refreshed before that point starts the import over). Delta import
re-reads the mailbox list (addresses gone from it are deleted, new ones fetched) and re-checks a
photo only when its window passed: ``photo_recheck_hours`` after the last check,
``photo_error_recheck_hours`` after a failure (the Exchange Online agent's windows, after SharePoint
2013's ``UserPhotoExpiration`` and ``UserPhotoErrorExpiration``, field-notes-2.md §1.5). EWS has no
change feed for photos (§1.6), so a re-check is a conditional GET with the stored ETag: 304 costs no
body. Every failure is a per-object import error; only authentication, an EWS closed to the account
(a 403, or ``REFUSALS_TO_STOP`` mailboxes denied in a row, none read:
``PhotoClient._refused_everywhere``), every request refused with the same other status (a 400 from IIS to
a Kerberos ticket too large: ``PhotoClient._refused_request``), an outage, or an ews_url that
is no EWS or is older than Exchange 2013 (no GetUserPhoto, ``_versions``; asked before the first
mailbox, or, within ``endpoint_check_hours`` of a check that passed, before a "no photo" removes a
photo) stops the step.

The per-mailbox ETag and checksum live in the engine's store (import contract v2: ``StateUpdate``
items, committed with the page that holds the mailbox's entry; ``UserState`` is shared with the
Exchange Online agent), and the fetches run as deferred work on the engine's threads. The
requests go through the process-wide limiter of this EWS host and account
(``connector.throttling.shared_limiter``), whose ceiling is ``concurrency``, below EWSMaxConcurrency.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import requests

from connector.agents._mailbox_photo import (
    LIMIT_KEY,
    RunLimit,
    UserState,
    photo_attributes,
    photo_values,
    refused_v1_watermark,
)
from connector.agents.exchange_server._auth import make_auth, make_session
from connector.agents.exchange_server._client import Fetched, PhotoClient
from connector.agents.exchange_server._settings import ExchangeServerSettings
from connector.files import TextDecodeError, read_text, wait_until_unchanged
from connector.sdk import (
    Attribute,
    AttributeAccess,
    Capabilities,
    Checkpoint,
    CheckResult,
    ConfigurationError,
    Connector,
    ConnectorContext,
    ConnectorError,
    Count,
    CSEntryChange,
    Deferred,
    DeltaWatermark,
    HashedBytes,
    ImportItem,
    ImportRun,
    ObjectClass,
    ResumeRefusedError,
    Schema,
    StateUpdate,
    StopRunError,
    Worker,
)
from connector.throttling import AdaptiveLimiter, shared_limiter

__all__ = ["OBJECT_CLASS", "ExchangeServerPhotosConnector"]

OBJECT_CLASS = "EXSMailbox"
#: How long the mailbox list must stay unchanged before a run deletes what it leaves out, and how long a
#: run waits for that (see ``ExchangeServerPhotosConnector._settled``).
MAILBOX_FILE_QUIET_S = 2.0
MAILBOX_FILE_WAIT_S = 60.0
#: The agent state's key for the check before the first mailbox that passed (``endpoint_check_hours``).
ENDPOINT_KEY = "~endpoint"
#: The agent state's keys that are no mailbox.
_OWN_KEYS = frozenset({LIMIT_KEY, ENDPOINT_KEY})
#: Where versions before import contract v2 kept the per-mailbox state (named in the upgrade error).
_OLD_STATE_FILE = "ews-photo-state.sqlite3"

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


@dataclass(frozen=True, slots=True)
class _Task:
    email: str
    row: UserState | None
    #: Sent as If-None-Match: the connector space holds what it names (delta imports only).
    etag: str | None


def _due(row: UserState, cut_ok: float, cut_err: float, now: float) -> bool:
    if row.error is None and not row.in_cs:
        return True
    return row.recheck_due(cut_ok, cut_err, now)


class _PhotoWorker(Worker[_Task]):
    """One ``GetUserPhoto`` per task, on the engine's threads; the shared EWS limiter paces them."""

    def __init__(self, connector: ExchangeServerPhotosConnector, full: bool, limit: RunLimit) -> None:
        self.connector = connector
        self.full = full
        self.limit = limit
        self.concurrency = connector.settings.concurrency

    def run(self, tasks: list[Deferred[_Task]], cancel: threading.Event) -> list[list[ImportItem]]:
        client = self.connector.client
        client.follow(cancel)  # Ctrl-C stops a retry backoff or a throttling pause at once
        results = [self._outcome(d.task, self._fetch(client, d.task)) for d in tasks]
        results[0] += self.limit.update()  # a limit measured meanwhile: committed with the first task's items
        return results

    @staticmethod
    def _fetch(client: PhotoClient, task: _Task) -> Fetched:
        had_photo = task.row is not None and task.row.in_cs and task.row.checksum is not None
        return client.fetch(task.email, task.etag, had_photo=had_photo)

    def _outcome(self, task: _Task, got: Fetched) -> list[ImportItem]:
        email, row, now = task.email, task.row, time.time()
        counted: list[ImportItem] = [Count(got.kind)]
        if got.kind == "unchanged":
            return [(row or UserState(email, {"mail": email})).checked(now), *counted]
        if got.kind == "error":
            error = CSEntryChange.import_error(email, got.error, got.detail, object_class=OBJECT_CLASS)
            return [error, (row or UserState(email, {"mail": email})).failed(got.error, now), *counted]
        data = got.data if got.kind == "photo" else None
        checksum = hashlib.sha256(data).hexdigest() if data is not None else None
        known_here = row is not None and row.in_cs and row.error is None
        if not self.full and known_here and row is not None and row.checksum == checksum:
            row.etag, row.checked_at = got.etag, now  # a new ETag for the same picture: nothing to stage
            return [row.update(), *counted]
        size = len(data) if data is not None else None
        verified = row.verified_at if (row is not None and row.checksum == checksum and row.verified_at) else now
        state = UserState(email, {"mail": email}, got.etag, checksum, size, True, now, verified)
        values: dict[str, Any] = {"mail": email}
        if data is not None:
            counted.append(Count("photo_changes"))
            values.update(photo_values("EXS", HashedBytes(data, checksum), checksum, got.etag, verified))
        return [CSEntryChange.add(OBJECT_CLASS, email, values), state.update(), *counted]


class ExchangeServerPhotosConnector(Connector[ExchangeServerSettings]):
    """Photos of on-premises Exchange mailboxes (hybrid organisations), over EWS."""

    settings_model = ExchangeServerSettings
    capabilities: ClassVar[Capabilities] = Capabilities(full_import=True, delta_import=True, max_page_size=5000)
    description = "Photos of on-premises Exchange Server mailboxes, over EWS (GetUserPhoto)"

    def __init__(self, settings: ExchangeServerSettings, context: ConnectorContext) -> None:
        super().__init__(settings, context)
        self._client: PhotoClient | None = None
        self._cancel = threading.Event()
        self._http_counters: dict[str, int] = {}

    # -- lifecycle ------------------------------------------------------------------------------
    @property
    def limiter(self) -> AdaptiveLimiter:
        """One limiter per EWS host and account, shared by every agent in the process that uses them."""
        who = self.settings.username or self.settings.client_id or "negotiate"
        return shared_limiter(f"ews:{self.settings.origin}:{who.lower()}", ceiling=self.settings.concurrency)

    @property
    def client(self) -> PhotoClient:
        if self._client is None:
            self._cancel.clear()
            # connection-based schemes keep per-handshake state: one auth object per thread's session;
            # an OAuth token is shared by all of them
            agent = self.context.agent
            shared = make_auth(self.settings, agent) if self.settings.auth == "oauth" else None

            def session() -> requests.Session:
                return make_session(self.settings, shared or make_auth(self.settings, agent), agent)

            self._client = PhotoClient(self.settings, session, self.limiter, self._cancel)
        return self._client

    def open(self) -> None:
        self.context.make_data_dir()

    def close(self) -> None:
        self._cancel.set()
        if self._client is not None:
            self._http_counters = dict(self._client.counters)
            self.context.logger.info("ews: %s", self._http_counters)
            self._client.close()
            self._client = None

    def check(self) -> CheckResult:
        try:
            listed = self.mailbox_list()
            if not listed:
                return CheckResult(False, "the mailbox list is empty")
            self.client.check_endpoint(listed[0], answer_needed=True)
            got = self.client.fetch(listed[0], None)
        except ConnectorError as exc:
            return CheckResult(False, str(exc))
        ok = got.kind != "error"
        return CheckResult(ok, f"EWS answered for {listed[0]}: {got.kind}" + (f" ({got.detail})" if not ok else ""))

    #: Its schema is the same for every configuration: ``mvsync schema`` reads no setting.
    schema_settings: ClassVar[tuple[str, ...] | None] = ()

    @classmethod
    def schema_for(cls, settings: Mapping[str, Any]) -> Schema:
        return SCHEMA

    def get_schema(self) -> Schema:
        return SCHEMA

    @property
    def metrics(self) -> dict[str, Any]:
        """The EWS client's figures of the current (or last) step, for the benchmark and tests.

        The import's own counters (mailboxes, photos, errors...) go to run history as ``Count`` items.
        """
        ews = self._client.counters if self._client is not None else self._http_counters
        return {**ews, "limiter": self.limiter.stats.as_dict()}

    # -- mailboxes ------------------------------------------------------------------------------
    def mailbox_list(self) -> list[str]:
        """The configured addresses, lower case, deduplicated, in order (the file re-read each time)."""
        out: dict[str, None] = {}
        _add_addresses(out, self.settings.mailboxes, "mailboxes")
        path = self.settings.mailbox_file
        if path is not None:
            try:
                lines = read_text(path).splitlines()
            except OSError as exc:
                reason = exc.strerror or exc
                msg = f"cannot read the mailbox list {path}: {reason}; fix the path or the file's permissions"
                raise ConfigurationError(msg, key="mailbox_file") from None
            except TextDecodeError as exc:
                raise ConfigurationError(f"cannot read the mailbox list {path}: {exc}", key="mailbox_file") from None
            _add_addresses(out, lines, "mailbox_file", path)
        return list(out)

    # -- import ---------------------------------------------------------------------------------
    def import_changes(self, run: ImportRun) -> Iterator[ImportItem]:
        """Import contract v2: every listed mailbox whose photo is due, fetched as deferred work."""
        if not run.full and not run.watermark:
            raise StopRunError("no usable delta state for this agent (no watermark); run a full import")
        if not run.full and _watermark_version(run.watermark) < 2:
            raise refused_v1_watermark(_OLD_STATE_FILE)
        known = {key: UserState.load(key, value) for key, value in run.state.scan() if key not in _OWN_KEYS}
        listed = self._settled(self.mailbox_list(), known, run.stopping)
        done = _resumed_past(run.resume_from, listed) if run.full else 0  # before the first yield
        limit = RunLimit(self.limiter, run, memory_hours=self.settings.limit_memory_hours)
        yield from limit.recall()
        worker = _PhotoWorker(self, run.full, limit)
        yield Count("mailboxes", len(listed))
        now = time.time()
        s = self.settings
        cuts = (now - s.photo_recheck_hours * 3600, now - s.photo_error_recheck_hours * 3600, now)
        due = [email for email in listed[done:] if run.full or (row := known.get(email)) is None or _due(row, *cuts)]
        checked = self._endpoint_checked(run)
        if checked is not None:  # written back: a full import forgets the keys it does not write
            yield StateUpdate(ENDPOINT_KEY, checked)
        if due:
            self.client.plan(len(due), _read_before(listed, known))
            if checked is not None:
                self.client.defer_check(due[0])
            else:
                self.client.check_endpoint(due[0])
                if s.endpoint_check_hours > 0:
                    yield StateUpdate(ENDPOINT_KEY, {"ews_url": s.ews_url, "at": time.time()})
            if self.client.mixed:
                self.context.logger.warning(
                    "%s answered as a server older than Exchange 2013 to %d of its version checks, and as a newer "
                    'one too: a load balancer sends requests to both; every "no photo" is asked again in SOAP, a photo '
                    "request the older server refuses is asked again on a new connection, and one it keeps answering "
                    "is that mailbox's error, its photo kept",
                    self.settings.where,
                    self.client.counters["older_server_answers"],
                )
        for index, email in enumerate(due, done):
            if run.full and index > done and index % max(1, run.page_size) == 0:
                yield Checkpoint(_checkpoint(listed, index))
            row = known.get(email)
            trusted = not run.full and row is not None and row.in_cs and row.error is None
            yield Deferred(worker, _Task(email, row, row.etag if trusted and row is not None else None))
        if not run.full:
            if not listed and known:
                raise self._empty_list(len(known))
            for email in sorted(set(known) - set(listed)):
                yield CSEntryChange.delete(OBJECT_CLASS, email)
                yield StateUpdate(email, None)
                yield Count("deletes")
        yield DeltaWatermark(json.dumps({"v": 2}))

    def _endpoint_checked(self, run: ImportRun) -> dict[str, Any] | None:
        """The check an earlier step made of this ews_url, if it still holds (``endpoint_check_hours``)."""
        stored = run.state.get_many([ENDPOINT_KEY]).get(ENDPOINT_KEY)
        if not isinstance(stored, dict) or stored.get("ews_url") != self.settings.ews_url:
            return None
        at = stored.get("at")
        age = time.time() - at if isinstance(at, (int, float)) else -1.0
        return stored if 0 <= age < self.settings.endpoint_check_hours * 3600 else None

    def _settled(self, listed: list[str], known: Collection[str], stopping: threading.Event) -> list[str]:
        """The mailbox list read again once its file has stopped changing, when it leaves out mailboxes
        imported before (else as it is: a run that deletes nobody never waits).

        A list still being written (the scheduled ``Get-Mailbox ... | Out-File`` running late) reads
        short, and every mailbox it leaves out would be deleted: its photo taken out of the metaverse
        and, at the next export, cleared from thumbnailPhoto.
        """
        path = self.settings.mailbox_file
        if path is None or not set(known) - set(listed):
            return listed
        if not wait_until_unchanged(path, quiet_s=MAILBOX_FILE_QUIET_S, wait_s=MAILBOX_FILE_WAIT_S, stopping=stopping):
            if stopping.is_set():  # Ctrl-C or a stop signal during the wait: the step stops, deleting nothing
                raise StopRunError(f"stopped while the mailbox list {path} was still changing; nothing was deleted")
            msg = (
                f"the mailbox list {path} kept changing for {MAILBOX_FILE_WAIT_S:g} s (is the task that writes it "
                "still running?); nothing was deleted. Run again once it has finished; have it write another file "
                "and rename it over the list, so that no run reads the list half written"
            )
            raise StopRunError(msg)
        return self.mailbox_list()

    def _empty_list(self, known: int) -> StopRunError:
        """A delta import's empty mailbox list: the engine's empty-import guard, which sees only full
        imports (this agent's deltas delete what left the list). An empty file is what a scheduled
        ``Get-Mailbox ... > mailboxes.txt`` leaves when it cannot reach Exchange; deleting every
        mailbox would take their photos out of the metaverse and clear thumbnailPhoto at the next export."""
        where = self.settings.mailbox_file or "mailboxes"
        msg = (
            f"the mailbox list {where} is empty, but {known} mailboxes were imported before; nothing was deleted. "
            "Check the task that writes it (Get-Mailbox). If no on-premises mailbox is left, run a full import "
            "with allow_empty_full_import = true on its step (or --allow-empty-import)"
        )
        return StopRunError(msg, status="stopped-empty-import")


def _add_addresses(out: dict[str, None], lines: Iterable[str], key: str, path: Path | None = None) -> None:
    """Add the addresses of ``lines`` (the ``mailboxes`` setting, or the lines of ``path``) to ``out``.

    A line that is no address stops the step (a list read wrong must not delete the mailboxes it lost),
    so it is named where it is, as written: the setting's entry or the file's line, counted apart.
    """
    for number, line in enumerate(lines, 1):
        written = line.split("#", 1)[0].strip()
        if not written:
            continue
        if "@" not in written or " " in written:
            where = f"{path}, line {number}" if path is not None else f"mailboxes, entry {number}"
            msg = (
                f"{written!r} is not an SMTP address ({where}); the list holds one address a line (# starts a "
                "comment). A header such as PrimarySmtpAddress comes from Select-Object or Format-Table: write the "
                "addresses alone, e.g. Get-Mailbox -ResultSize Unlimited | % PrimarySmtpAddress"
            )
            raise ConfigurationError(msg, key=key)
        out[written.lower()] = None


def _read_before(listed: list[str], known: Mapping[str, UserState | None]) -> str | None:
    """A listed mailbox whose last check read it (no error): what tells the account refused from a few
    mailboxes refused on their own, when fewer than ``REFUSALS_TO_STOP`` are due (``PhotoClient.plan``)."""
    return next((email for email in listed if (row := known.get(email)) and row.in_cs and row.error is None), None)


def _prefix_digest(listed: list[str], count: int) -> str:
    return hashlib.sha256("\n".join(listed[:count]).encode()).hexdigest()


def _checkpoint(listed: list[str], done: int) -> str:
    """Where a full import resumes: after the first ``done`` mailboxes of the list, which the digest
    names, so that a list refreshed meanwhile (a mailbox added or removed before that point) is seen."""
    return json.dumps({"v": 1, "done": done, "listed": _prefix_digest(listed, done)})


def _resumed_past(checkpoint: str | None, listed: list[str]) -> int:
    """How many mailboxes of ``listed`` an interrupted full import committed (0 when not resuming);
    ``ResumeRefusedError`` (the engine starts over) when the list no longer begins with them."""
    if checkpoint is None:
        return 0
    try:
        point = json.loads(checkpoint)
        done, digest = int(point["done"]), str(point["listed"])
    except (ValueError, TypeError, KeyError):
        raise ResumeRefusedError("the checkpoint is not one this agent wrote") from None
    if not 0 < done <= len(listed) or _prefix_digest(listed, done) != digest:
        raise ResumeRefusedError("the mailbox list changed before the point where the interrupted import stopped")
    return done


def _watermark_version(text: str | None) -> int:
    try:
        return int(json.loads(text or "{}").get("v", 1))
    except (ValueError, TypeError, AttributeError):
        return 1
