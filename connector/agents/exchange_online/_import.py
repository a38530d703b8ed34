"""The import's knowledge: whom to list, whose photo to probe, what to download, what to stage.

The machinery (threads, queues, back-pressure, pages, checkpoints, state storage) is the engine's
(import contract v2, ``connector.sdk._stream``). Here:

* ``Importer.changes`` is the stream: ``users/delta`` pages, each preceded (full imports) by a
  ``Checkpoint`` naming that page, so a resumed full import lists again from the first page whose
  users were not all committed; per user either nothing, a directory-only update, or a photo probe
  handed to the engine as ``Deferred`` work; the removals of the users whose last word in the round
  was ``@removed`` once the round is listed (``_close_round``); on delta imports, then the users
  whose photo re-check window passed (read from the agent state); last the ``DeltaWatermark``.
* ``PhotoWorker.run`` sends one ``$batch`` of probes and downloads, sized by the shared adaptive
  limiter, and turns each answer into a follow-up request (probe -> download, a throttled item
  after its ``Retry-After``) or the user's entry and its ``StateUpdate``.

Per user the state (``UserState``, one agent-state key per user id) holds the directory attributes,
the photo's ETag, checksum and size, whether the connector space holds the object, and when it was
last probed, verified and failed. The engine commits it with the page that holds the user's entry,
so it never claims more than the connector space has: no generation or trust bookkeeping needed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from connector import metrics
from connector.agents._mailbox_photo import RunLimit, UserState, photo_values, refused_v1_watermark
from connector.agents.exchange_online._graph import (
    BATCH_PARALLELISM,
    GraphClient,
    GraphResponse,
    RetryableError,
    is_pushback,
)
from connector.agents.exchange_online._hybrid import mailbox_location_values, same_mailbox_location
from connector.agents.exchange_online._photos import PhotoOutcome, PhotoTask, read_response, task_request
from connector.agents.exchange_online._settings import ExchangeOnlineSettings
from connector.net import RECHECKED
from connector.sdk import (
    AttributeChange,
    Checkpoint,
    Count,
    CSEntryChange,
    Deferred,
    DeltaWatermark,
    ImportItem,
    ImportRun,
    ResumeRefusedError,
    ServerDownError,
    StateUpdate,
    Stop,
    StopRunError,
    Worker,
)


class GraphSource(Protocol):
    """What the importer needs of its connector: Graph, the settings and the users/delta listing.

    (A protocol rather than the connector class, which builds the importer: no import cycle.)
    """

    settings: ExchangeOnlineSettings

    @property
    def graph(self) -> GraphClient: ...

    def walk_delta(self, url: str, *, resumed: bool = False, page_size: int = 999) -> Generator[Listed, None, str]: ...

    def delta_start(self, watermark: str | None) -> str: ...

    def on_graph_host(self, link: str) -> bool: ...


__all__ = [
    "DIRECTORY_ATTRIBUTES",
    "OBJECT_CLASS",
    "PHOTO_CONTENT_TYPE",
    "Importer",
    "Listed",
    "Resume",
    "SyncReset",
    "Watermark",
    "not_a_mailbox_user",
]

log = logging.getLogger("mvsync.agent.exchange_online")

OBJECT_CLASS = "EXOUser"
#: The photo's format as its bytes show it (``_photos._format_of``): Graph serves PNG and GIF as stored.
PHOTO_CONTENT_TYPE = "EXOPhotoContentType"
#: Directory properties we import (Graph names = connector-space names), tracked by users/delta.
DIRECTORY_ATTRIBUTES = ("userPrincipalName", "mail", "mailNickname", "displayName", "accountEnabled")
SELECT = ",".join(("id", *DIRECTORY_ATTRIBUTES))
FIRST_LINK = "users/delta?$select=" + SELECT
#: Photo metrics per import outcome (``mvsync_photos_total{outcome=...}``).
_IMPORT_OUTCOMES = {
    "photo": "downloaded",
    "none": "no-photo",
    "unchanged": "unchanged",
    "error": "import-error",
    "gone": "user-gone",
}
#: The agent-state key counting import runs (picks the rolling re-verification bucket).
_RUN_KEY = "~runs"
#: What the userPrincipalName of a B2B guest holds (``not_a_mailbox_user``).
_EXTERNAL = "#EXT#"


class SyncReset(StopRunError):
    """Graph no longer takes a ``users/delta`` link (410 ``resyncRequired``, ``syncStateNotFound``).

    Its message is the one a delta import stops with; a full import lists the round anew instead
    (``Importer._listed_anew``). ``detail`` is Graph's answer, described; ``agent`` the agent's name.
    """

    def __init__(self, message: str, detail: str, agent: str) -> None:
        super().__init__(message)
        self.detail, self.agent = detail, agent


@dataclass(frozen=True, slots=True)
class Watermark:
    """What a delta import starts from: the ``users/delta`` link (version 2: the state is in the store)."""

    delta_link: str

    def dumps(self) -> str:
        return json.dumps({"v": 2, "delta": self.delta_link})

    @classmethod
    def loads(cls, text: str | None) -> Watermark | None:
        """The watermark, or None when there is none; a version-1 watermark is refused by name."""
        if not text:
            return None
        try:
            data = json.loads(text)
            version, link = int(data.get("v", 1)), str(data["delta"])
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        if version < 2:
            raise refused_v1_watermark("photo-state.sqlite3")
        return cls(link)


@dataclass(frozen=True, slots=True)
class Resume:
    """A full import's checkpoint (JSON): the ``users/delta`` page where listing starts again."""

    link: str

    def dumps(self) -> str:
        return json.dumps({"v": 2, "link": self.link})

    @classmethod
    def loads(cls, text: str) -> Resume | None:
        try:
            return cls(str(json.loads(text)["link"]))
        except (ValueError, KeyError, TypeError):
            return None


@dataclass(slots=True)
class _Probe:
    """What travels with a photo request to its outcome."""

    attrs: dict[str, Any]
    row: UserState | None


def _dir_attrs(user: dict[str, Any]) -> dict[str, Any]:
    return {name: user[name] for name in DIRECTORY_ATTRIBUTES if user.get(name) is not None}


def not_a_mailbox_user(attrs: dict[str, Any]) -> str:
    """Why the listing skips a user as no mailbox user (the run-history counter), or "" for a mailbox user.

    A guest, ``#EXT#`` in its userPrincipalName, has ``mail`` (its own address elsewhere) and no mailbox
    here (Learn, "Properties of a Microsoft Entra B2B collaboration user": the UPN of an invited user
    holds ``#EXT#``; Exchange Online keeps a mail user for it): probing its photo is a request for
    nothing, or a per-user error where Graph refuses photo reads without a mailbox. The UPN, already
    listed, tells it; ``userType`` would too, but it can be set to Member for a guest, and selecting
    it would change every user's tracked attributes.
    """
    if _EXTERNAL in str(attrs.get("userPrincipalName") or "").upper():
        return "skipped_guests"
    return "" if _is_mailbox_user(attrs) else "skipped_without_mail"


def _is_mailbox_user(attrs: dict[str, Any]) -> bool:
    """Whether the listing takes a user for a mailbox user: it has ``mail``. Users without are skipped.

    The listing cannot ask Exchange. Whether a user has a mailbox shows in ``mailboxSettings``, which
    Graph returns only for one user at a time (not in a collection, so not in ``users/delta``) and only
    with MailboxSettings.Read, a permission this read-only photo agent does not ask for (Learn,
    "mailboxSettings resource type"; "user resource type": "Returned only on $select", single user).
    ``mail`` is what the listing has: "The SMTP address for the user" (Learn, user resource), which
    Exchange Online stamps with the primary SMTP address of the mailboxes it creates for cloud users.
    Probing every user instead costs one photo request per account that has no mailbox (service and
    shared-device accounts, often a large share of a tenant) on every full import, and the photo
    endpoint answers for them too (Entra ID keeps photos of users without a mailbox), so it would not
    tell mailboxes apart either.

    What it misses, on purpose and visibly: ``mail`` can be empty for a user who has a mailbox. In a
    synchronized tenant Entra ID takes ``mail`` from on-premises AD, and a licensed user whose AD
    ``mail`` is empty gets an Exchange Online mailbox while Entra's ``mail`` stays empty ("you can
    provision objects initially with different values for mail and primarySMTPaddress, including having
    one of them being null": Microsoft Q&A 873307, accepted answer). Such users are counted in run
    history as ``skipped_without_mail``; the remedy is at the source: set their AD ``mail`` (Entra
    Connect then carries it up) and the next import reads their photos.
    """
    return bool(attrs.get("mail"))


def _reverify_bucket(user_id: str, buckets: int) -> int:
    return int(hashlib.sha256(user_id.encode()).hexdigest()[:8], 16) % buckets


@dataclass(slots=True)
class Listed:
    """One ``users/delta`` page: where it came from, its users and the ids it reports removed."""

    url: str
    users: list[dict[str, Any]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


class Importer:
    """One import step of the agent: the stream the engine consumes, and the worker it runs."""

    def __init__(self, connector: GraphSource, run: ImportRun) -> None:
        self.connector = connector
        self.settings = connector.settings
        self.run = run
        self.full = run.full
        self.started = time.time()
        #: every user the round listed, and where the answer to its photo is (``_Stage``). One map whose
        #: values are shared constants, keyed by the id's number (``_RoundUsers``): it holds every user of
        #: the tenant until the round is listed (a set of the listed users beside a dict of one object per
        #: user asked cost about 145 bytes a user besides the id: 80 MB more on a 700,000-user tenant)
        self.users = _RoundUsers()
        #: users this round listed ``@removed`` (and not listed again since): see ``_close_round``
        self.removed: set[str] = set()
        #: users the round listed ``@removed`` whose photo answer was still on its way when the round was
        #: listed: that answer carries the removal (``_settled``, ``landed``)
        self.removal_due: set[str] = set()
        #: the ``users/delta`` round is still being listed (a user's last word may still come)
        self.listing = True
        #: Graph reset synchronization once in this full import, which listed the round anew
        self.reset_seen = False
        self.lock = threading.Lock()
        self.worker = PhotoWorker(self)
        self.landing = _Landing(self)
        self.run_number = 0
        self.limit = RunLimit(connector.graph.limiter, run, memory_hours=self.settings.limit_memory_hours)

    # -- the stream -------------------------------------------------------------------------------
    def changes(self) -> Iterator[ImportItem]:
        try:
            yield from self._changes()
        except RetryableError as exc:  # connection trouble outlasted the retries
            raise ServerDownError(f"Graph unreachable: {exc}") from None

    def _changes(self) -> Iterator[ImportItem]:
        yield from self.limit.recall()
        if self.full:
            resume = self._resume(self.run.resume_from)
            first = resume.link if resume is not None else FIRST_LINK
            link = yield from self._list(first, resumed=resume is not None)
        else:
            first = self.connector.delta_start(self.run.watermark)
            link = yield from self._list(first, resumed=False)
            yield from self._due()
        yield DeltaWatermark(Watermark(link).dumps())

    def _resume(self, checkpoint: str | None) -> Resume | None:
        if checkpoint is None:
            return None
        resume = Resume.loads(checkpoint)
        if resume is None:
            raise ResumeRefusedError("the checkpoint is not one this agent wrote")
        if not self.connector.on_graph_host(resume.link):
            raise ResumeRefusedError("graph_url changed since the interrupted import")
        return resume

    def _list(self, url: str, *, resumed: bool) -> Generator[ImportItem, None, str]:
        """Every ``users/delta`` page from ``url``; returns the delta link at the end."""
        runs = self.run.state.get_many([_RUN_KEY]).get(_RUN_KEY, 0)
        self.run_number = (runs if isinstance(runs, int) else 0) + 1
        yield StateUpdate(_RUN_KEY, self.run_number)
        # listing pages of as many users as the engine runs ahead (max_ahead): a resumed import
        # re-probes at most about that many users
        pages = self._walk(url, resumed=resumed)
        while True:
            try:
                listed = next(pages)
            except StopIteration as done:
                yield from self._close_round()
                return str(done.value)
            except SyncReset as reset:
                pages = self._listed_anew(reset)
                continue
            if self.full:
                yield Checkpoint(Resume(listed.url).dumps())
            ids = [str(u["id"]) for u in listed.users] + listed.removed
            known = self.run.state.get_many(ids)
            for user_id in listed.removed:
                self.users.setdefault(user_id, "listed")
                self.removed.add(user_id)
            for user in listed.users:
                user_id = str(user["id"])
                self._relisted(user_id)
                yield from self._on_user(user_id, _dir_attrs(user), UserState.load(user_id, known.get(user_id)))

    def _walk(self, url: str, *, resumed: bool) -> Generator[Listed, None, str]:
        return self.connector.walk_delta(url, resumed=resumed, page_size=max(200, 2 * self.run.page_size))

    def _listed_anew(self, reset: SyncReset) -> Generator[Listed, None, str]:
        """A full import's round again from the initial query, after Graph reset synchronization.

        Why: Learn, delta-query-overview, "Synchronization reset": a 410 "is an indication that the
        application must restart with a full synchronization", and a full import is one. Before, the
        step stopped midway, saying a delta step does not start a new round, and asked for the full
        import it was. The users staged so far stay staged and are not asked again (``users``); one
        deleted meanwhile, which the new round does not list, stays until the next full import. A
        delta import stops instead (``SyncReset``'s message says why). Once only: a second reset in
        the same step stops it, asking to run the import again.
        """
        if not self.full:  # the step's error as such, whatever type carried it here
            raise StopRunError(str(reset)) from None
        if self.reset_seen:
            raise StopRunError(
                f"Graph reset the synchronization of the users again while this full import listed them anew "
                f"({reset.detail}); the users staged so far are kept. Run the full import of agent "
                f"{reset.agent!r} again"
            ) from None
        self.reset_seen = True
        log.warning("Graph reset the synchronization of the users (%s): the full import lists them anew", reset.detail)
        return self._walk(FIRST_LINK, resumed=False)

    def _relisted(self, user_id: str) -> None:
        """The round lists ``user_id`` present after listing it ``@removed``: the later word counts.

        Why it is no replay to skip: in a round the most recent change comes last, so a user
        soft-deleted and restored meanwhile is listed removed, then present. Nothing was staged for the
        removal (removals wait for the end of the round, ``_close_round``), so the user is handled as
        listed now, unless the round already sent for its photo: that answer stands for the user.
        """
        if user_id not in self.removed:
            return
        self.removed.discard(user_id)
        with self.lock:
            if self.users.get(user_id) == "listed":
                del self.users[user_id]

    def _close_round(self) -> Iterator[ImportItem]:
        """The round is listed: stage the removals of the users whose last word was ``@removed``.

        Why at the end, not as listed: the engine takes one entry per user and step besides deletes,
        and a user removed, then listed again, was deleted and then refused as a duplicate (a user who
        exists left deleted). And a user listed present, then removed, whose photo answer is still on
        its way, would be staged again after its deletion; that answer now carries the removal instead
        (``_settled``), or the landing marker behind it does (``landed``).
        """
        removals: list[str] = []
        with self.lock:
            self.listing = False
            for user_id in sorted(self.removed):
                stage = self.users.get(user_id, "listed")
                if stage == "listed":
                    if not self.full:  # a full import stages nobody removed; the engine deletes the rest
                        removals.append(user_id)
                elif stage == "landed":
                    removals.append(user_id)
                elif stage != "gone":
                    self.removal_due.add(user_id)
        for user_id in removals:
            yield from self._removal(user_id)

    def _removal(self, user_id: str) -> list[ImportItem]:
        return [CSEntryChange.delete(OBJECT_CLASS, user_id), StateUpdate(user_id, None), Count("deletes")]

    def _on_user(self, user_id: str, attrs: dict[str, Any], row: UserState | None) -> Iterator[ImportItem]:
        if user_id in self.users:  # a replay within one round
            return
        self.users[user_id] = "listed"
        skipped = not_a_mailbox_user(attrs)
        if skipped:  # skipped, and counted
            yield Count(skipped)
            if not self.full and row is not None:
                yield from self._removal(user_id)
            return
        yield Count("users")
        if self.full or row is None or not row.in_cs:
            yield from self._probe(user_id, attrs, row, None)
            return
        if attrs == row.attrs:
            return
        changes = [
            AttributeChange.replace(name, attrs[name]) if name in attrs else AttributeChange.delete(name)
            for name in DIRECTORY_ATTRIBUTES
            if attrs.get(name) != row.attrs.get(name)
        ]
        row.attrs = attrs
        yield CSEntryChange.update(OBJECT_CLASS, user_id, changes)
        yield row.update()
        yield Count("directory_updates")

    def _due(self) -> Iterator[ImportItem]:
        """Delta, after the listing: users whose photo re-check (or error re-check) window has passed."""
        s = self.settings
        now = time.time()
        cut_ok = min(self.started, now - s.photo_recheck_hours * 3600)
        cut_err = min(self.started, now - s.photo_error_recheck_hours * 3600)
        buckets = max(1, round(1 / s.reverify_fraction)) if s.reverify_fraction > 0 else 0
        for key, value in self.run.state.scan():
            row = UserState.load(key, value)
            if row is None or key in self.users:
                continue
            skipped = not_a_mailbox_user(row.attrs)
            if skipped:  # staged by a version that did not skip it: the listing's rule, as a full import's
                yield from [Count(skipped), *self._removal(row.id)]
                continue
            reverify = (
                bool(buckets)
                and row.checksum is not None
                and _reverify_bucket(row.id, buckets) == self.run_number % buckets
            )
            late = row.recheck_due(cut_ok, cut_err, now)
            if not (reverify or late):
                continue
            if reverify:
                yield Count("reverified")
            known = row.in_cs and not reverify
            yield from self._probe(row.id, row.attrs, row, (row.checksum is not None, row.etag) if known else None)

    def _probe(
        self, user_id: str, attrs: dict[str, Any], row: UserState | None, baseline: tuple[bool, str | None] | None
    ) -> Iterator[ImportItem]:
        yield Count("probes")
        if self.listing:  # the round may still name the user again: see _settled
            with self.lock:
                self.users[user_id] = "asked"
        task = PhotoTask(user_id, "probe", baseline=baseline, context=_Probe(attrs, row))
        yield Deferred(self.worker, task, key=user_id)

    # -- outcomes (on the engine's worker threads) -----------------------------------------------
    def outcome(self, outcome: PhotoOutcome) -> list[ImportItem]:
        """What a user's photo answer stages, as the round's last word about the user allows."""
        return self._settled(outcome.task.user_id, outcome.kind == "gone", self._outcome(outcome))

    def _settled(self, user_id: str, gone: bool, items: list[ImportItem]) -> list[ImportItem]:
        """``items`` of a photo answer, or the user's removal when the round listed the user ``@removed``
        after sending for the photo.

        Why: the answer and the removal travel to the engine apart (this is a worker thread), so either
        could come last, and the removal must. Once the round is listed, the last word is known here.
        While it is being listed, the items go with a landing marker behind them (``_Landing``): it
        runs once the engine has the items, and stages the removal if one came meanwhile.
        """
        with self.lock:
            if self.users.get(user_id, "listed") == "listed":  # a re-check after the listing
                return items
            if user_id in self.removal_due:
                self.users[user_id] = "gone"
                return self._removal(user_id) if not self.full else [StateUpdate(user_id, None)]
            if gone:
                self.users[user_id] = "gone"
                return items
            if not self.listing:
                self.users[user_id] = "landed"
                return items
            self.users[user_id] = "sent"
        return [*items, Deferred(self.landing, user_id)]

    def landed(self, user_id: str) -> list[ImportItem]:
        """The engine has the items of the user's photo answer; a removal listed since goes after them."""
        with self.lock:
            if user_id not in self.removal_due:
                self.users[user_id] = "landed"
                return []
            self.users[user_id] = "gone"
        return self._removal(user_id)

    def _outcome(self, outcome: PhotoOutcome) -> list[ImportItem]:
        probe: _Probe = outcome.task.context
        row, attrs, user_id = probe.row, probe.attrs, outcome.task.user_id
        now = time.time()
        metrics.photo(_IMPORT_OUTCOMES[outcome.kind])
        if outcome.kind == "unchanged":
            return self._unchanged(row, user_id, attrs, now)
        if outcome.kind == "gone":  # deleted between listing and probe: the next delta reports it too
            gone: list[ImportItem] = [StateUpdate(user_id, None)]
            return gone if self.full or row is None else [CSEntryChange.delete(OBJECT_CLASS, user_id), *gone]
        if outcome.kind == "error":
            failed = row or UserState(user_id, attrs)
            failed.attrs = attrs
            error = CSEntryChange.import_error(
                user_id, outcome.error, outcome.detail, object_class=OBJECT_CLASS, attributes=attrs
            )
            return [error, failed.failed(outcome.error, now), Count("errors")]
        return self._fetched(outcome, row, attrs, now)

    def _unchanged(self, row: UserState | None, user_id: str, attrs: dict[str, Any], now: float) -> list[ImportItem]:
        return [(row or UserState(user_id, attrs)).checked(now), Count("unchanged")]

    def _fetched(
        self, outcome: PhotoOutcome, row: UserState | None, attrs: dict[str, Any], now: float
    ) -> list[ImportItem]:
        user_id = outcome.task.user_id
        photo = outcome.kind == "photo"
        counts: list[ImportItem] = [Count("photo_downloads")] if photo else []
        checksum = outcome.checksum or None
        same_bytes = row is not None and row.checksum == checksum and same_mailbox_location(row.etag, outcome.etag)
        if not self.full and row is not None and row.in_cs and same_bytes and attrs == row.attrs:
            # a new ETag for the same picture, or a re-verification that matched: nothing to stage
            row.etag, row.checked_at, row.error, row.error_at = outcome.etag, now, None, None
            return [row.update(), Count("verified_same"), *counts]
        verified = row.verified_at if (same_bytes and row is not None and row.verified_at) else now
        size = len(outcome.data) if outcome.data is not None else None
        etag = outcome.etag  # a photo's version, the on-premises marker (_hybrid), or None
        state = UserState(user_id, attrs, etag, checksum, size, True, now, verified)
        if not self.full:
            counts.append(Count("photo_changes"))
        location = mailbox_location_values(outcome.etag)
        if location:
            counts.append(Count("mailbox_on_premises"))
        values: dict[str, Any] = {"id": user_id, **attrs, **location}
        if photo and outcome.data is not None and checksum is not None:
            # staged as it came (HashedBytes, hashed once, in _photos._taken): a copy would hold it twice
            values.update(photo_values("EXO", outcome.data, checksum, outcome.etag, verified or now))
            if outcome.content_type is not None:
                values[PHOTO_CONTENT_TYPE] = outcome.content_type
        return [CSEntryChange.add(OBJECT_CLASS, user_id, values), state.update(), *counts]


#: Where a listed user stands in the round: ``listed`` (no photo sent for: skipped, unchanged, or listed
#: ``@removed``), ``asked`` (the listing sent for its photo, no answer yet), ``sent`` (the answer's items
#: are on their way to the engine, a landing marker behind them), ``landed`` (the engine has them),
#: ``gone`` (the user's removal is staged, or the answer was "no such user"). Whether the round's last
#: word about the user is ``@removed`` is ``Importer.removed`` and, once the round is listed,
#: ``Importer.removal_due``.
_Stage = Literal["listed", "asked", "sent", "landed", "gone"]


class _RoundUsers:
    """Where each user the round listed stands (``_Stage``), by user id; a dict's operations.

    Why not a dict of the ids: it holds every user of the tenant for the whole round, and a Graph user
    id is a GUID in its 36-character text form (Learn, "user resource type": ``id``, "The unique
    identifier for the user"), which as a str costs 85 bytes, an entry about 123 with its slot: 6.2 MB
    for 50,000 users. Its 128-bit number costs 44 (an entry about 96, 4.8 MB). ASSUMPTION, for the saving
    only: Graph writes the GUIDs in lower case, as its answers in Learn show. An id not written
    exactly that way keeps its text, so two different ids are never one key (a number never equals
    a str).
    """

    __slots__ = ("_stages",)

    def __init__(self) -> None:
        self._stages: dict[int | str, _Stage] = {}

    def __contains__(self, user_id: str) -> bool:
        return _compact_id(user_id) in self._stages

    def __len__(self) -> int:
        return len(self._stages)

    def __setitem__(self, user_id: str, stage: _Stage) -> None:
        self._stages[_compact_id(user_id)] = stage

    def __delitem__(self, user_id: str) -> None:
        del self._stages[_compact_id(user_id)]

    def get(self, user_id: str, default: _Stage | None = None) -> _Stage | None:
        return self._stages.get(_compact_id(user_id), default)

    def setdefault(self, user_id: str, stage: _Stage) -> _Stage:
        return self._stages.setdefault(_compact_id(user_id), stage)


def _compact_id(user_id: str) -> int | str:
    """``user_id``'s number when it is a GUID in lower-case 8-4-4-4-12 form (and only then: the number
    written back that way must give the same text), else the id itself."""
    if len(user_id) != 36 or user_id[8] != "-":
        return user_id
    try:
        number = int(user_id.replace("-", ""), 16)
    except ValueError:
        return user_id
    digits = f"{number:032x}"
    canonical = f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"
    return number if canonical == user_id else user_id


class _Landing(Worker[str]):
    """Runs once the engine has a photo answer's items (a follow-up of that answer): see ``Importer.landed``.

    Why a task, not a flag set with the answer: the engine takes a worker's results after its ``run``
    returns, so a removal staged from the listing meanwhile could still reach it first. A follow-up
    task starts only once the engine took the items before it.
    """

    batch_size = 500
    concurrency = 1

    def __init__(self, importer: Importer) -> None:
        self.importer = importer

    def run(self, tasks: list[Deferred[str]], cancel: threading.Event) -> list[list[ImportItem]]:
        return [self.importer.landed(deferred.task) for deferred in tasks]


class PhotoWorker(Worker[PhotoTask]):
    """Sends photo requests in ``$batch``es, as many at a time as the shared limiter grants."""

    def __init__(self, importer: Importer) -> None:
        settings = importer.settings
        self.importer = importer
        self.batch_size = settings.batch_size
        # one more than the ceiling needs in whole batches, for the smaller batch that fills the rest
        self.concurrency = settings.concurrency // BATCH_PARALLELISM + 1
        self.per_key = settings.per_mailbox_concurrency
        #: The tasks waiting when the engine last asked ``take_size``; None until the stream has ended.
        self._waiting: int | None = None

    def take_size(self, waiting: int) -> int:
        self._waiting = waiting  # one int's store, read by ``run`` without the engine's lock
        return self._fit(waiting)

    def _fit(self, waiting: int) -> int:
        """The fewest rounds for what is waiting: Graph runs a batch four items at a time, and the
        limit allows ``limit / 4`` batches at once; so ``waiting`` tasks need ``waiting / limit``
        rounds, and each batch takes four items per round (a full batch while plenty wait)."""
        limit = max(BATCH_PARALLELISM, self.importer.connector.graph.limiter.limit)
        rounds = -(-waiting // limit)
        return min(self.batch_size, rounds * BATCH_PARALLELISM)

    def run(self, tasks: list[Deferred[PhotoTask]], cancel: threading.Event) -> list[list[ImportItem]]:
        client = self.importer.connector.graph
        # four units for a batch: Graph runs four items of a batch at a time
        wanted = min(len(tasks), BATCH_PARALLELISM)
        taken_early = self._waiting is None  # begun while the stream still ran: a full batch (``take_size``)
        ticket = client.limiter.acquire(wanted, at_least=1, cancel=cancel)
        send = tasks if ticket.weight >= wanted else tasks[: ticket.weight]
        if client.limiter.rate_bound and client.limiter.limit < client.limiter.ceiling:
            # against a rate, one round per batch: a bucket run dry refuses every item still queued in
            # a batch, so twenty items on four units would cost twenty refusals, not four. (Not once the
            # limit is back at the ceiling: the client's own bound binds then, not the rate, and one-round
            # batches only cost five times the requests: the default model's 2,000 requests/s, met once at
            # 0 ms, made the 50,000-user import take 87 s instead of 38.)
            send = send[: ticket.weight]
        if taken_early and self._waiting is not None:
            # The stream ended while this thread waited for the limiter (a few threads more than the
            # limit's batches wait so, each holding a full batch): sent whole, its twenty items ran five
            # rounds after the rest had finished. Sized for what is left now; the rest is queued again
            # (a no-change delta of 2,000 users ended 4 % sooner).
            send = send[: self._fit(self._waiting + len(tasks))]
        later: list[list[ImportItem]] = [[task] for task in tasks[len(send) :]]  # no room: queued again
        try:
            responses = client.batch([task_request(d.task) for d in send], ticket=ticket, cancel=cancel)
        except RetryableError as exc:  # connection trouble outlasted the retries
            failed = GraphResponse(503, {}, b"", {"error": {"code": "ConnectionError", "message": str(exc)}})
            responses = [failed for _ in send]
        results: list[list[ImportItem]] = []
        down = False  # an item met Graph down: the step stops
        # each answer let go once judged: its photo is then held once (in the entry), not twice (the
        # answer's bytes beside the entry's) until the whole batch is judged
        if len(responses) != len(send):
            msg = f"Graph client returned {len(responses)} answers for {len(send)} requests"
            raise RuntimeError(msg)
        answers = deque(responses)
        del responses
        for deferred in send:
            resp = answers.popleft()
            if down and _failed(resp):
                results.append([deferred])  # not judged: the step stops, the next run asks again
                continue
            results.append(self._settle(deferred, resp, cancel))
            down = down or any(isinstance(item, Stop) for item in results[-1])
        results += later
        results[0] += self.importer.limit.update()  # committed with the first task's items
        return results

    def _settle(self, deferred: Deferred[PhotoTask], resp: GraphResponse, cancel: threading.Event) -> list[ImportItem]:
        """One item's answer: its outcome, the task again (a retry, the next request), or a ``Stop``
        when the item met Graph down (the batch's other items are still committed)."""
        client = self.importer.connector.graph
        task = deferred.task
        failed = _failed(resp)
        if failed and task.failing_since is None:
            task.failing_since = time.monotonic()
        wait = client.item_retry(task.attempt, resp) if not resp.ok and resp.status != 404 else None
        if wait is not None:
            if not is_pushback(resp.status, resp.retry_after):
                task.attempt += 1  # throttling is not an attempt: only failures count toward max_attempts
            return [replace(deferred, not_before=time.monotonic() + wait)]
        if failed and task.failing_since is not None and client.confirmed_down(cancel):
            # not this user's trouble: a photo read that had worked fails too
            return [Stop(client.down(f"answered with {resp.describe()}", task.attempt, task.failing_since, RECHECKED))]
        following = read_response(task, resp, self.importer.settings.photo_size)
        if isinstance(following, PhotoTask):
            return [replace(deferred, task=following, not_before=0.0)]
        return self.importer.outcome(following)


def _failed(resp: GraphResponse) -> bool:
    """A 5xx that is no push-back: a failure, which may be Graph's (see ``GraphClient.confirmed_down``)."""
    return resp.status >= 500 and not is_pushback(resp.status, resp.retry_after)
