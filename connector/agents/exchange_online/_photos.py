"""Photo requests and how to read Graph's answers: photo, "no photo", or a per-user error.

Every documented way of saying "this user has no photo" means exactly that, never an error:
404 ``ImageNotFound`` (both exception texts), ``ErrorEntityNotFound``, ``ErrorItemNotFound``,
``GetUserPhoto``, and the legacy 200 with a 1x1 GIF (metadata ``id`` "1x1", empty mediaEtag).
Except on a download: the metadata said a photo is there, so a 404 means it changed in between
(``_download_missed``), and the metadata is asked again.

One flow for full and delta imports: first the photo *metadata* (``GET /users/{id}/photo``: a
small JSON with ``@odata.mediaEtag`` and the largest size), then, only when needed, the bytes at
the configured size or, when the original is smaller (Graph then has no such size and would say
404 like "no photo"), at the largest HD size that exists. This costs one request per user without
a photo and two per user with one, never downloads an unbounded original, and gives every photo a
comparable ETag for the next delta's probe: the metadata's ``@odata.mediaEtag``, never the bytes'
``ETag`` header (a different value in Graph).

A photo URL for a user that no longer exists answers 404 ``Request_ResourceNotFound``: the user is
gone (deleted since the listing), which is not "no photo" and must not clear a photo downstream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from connector.agents.exchange_online._graph import RETRYABLE_STATUS, BatchItem, GraphResponse
from connector.agents.exchange_online._hybrid import MAILBOX_NOT_FOUND_CODES, ON_PREMISES_ETAG, mailbox_on_premises
from connector.agents.exchange_online._settings import HD_PHOTO_SIZES
from connector.sdk import HashedBytes

__all__ = [
    "NO_MAILBOX_CODE",
    "NO_PHOTO_CODES",
    "PhotoOutcome",
    "PhotoTask",
    "is_no_photo",
    "normalize_etag",
    "pick_size",
    "read_response",
    "task_request",
]

#: Graph's ``error.code`` (with 400) on a photo URL of a user without an Exchange Online mailbox
NO_MAILBOX_CODE = "AuthenticationError"

#: ``error.code`` values meaning "no photo" (compared case-insensitively).
NO_PHOTO_CODES = frozenset({"imagenotfound", "errorentitynotfound", "erroritemnotfound", "getuserphoto"})

OutcomeKind = Literal["photo", "none", "unchanged", "error", "gone"]


@dataclass(slots=True)
class PhotoTask:
    """One request for one user; ``context`` travels untouched to the outcome.

    ``baseline`` is what we already hold, ``(has_photo, etag)``, when a matching probe means
    "unchanged"; None makes the task download whatever is there (full import, re-verification).
    """

    user_id: str
    kind: Literal["probe", "get"] = "probe"
    size: str | None = None
    etag: str | None = None
    baseline: tuple[bool, str | None] | None = None
    context: Any = None
    attempt: int = 1
    #: ``time.monotonic()`` of the first failed attempt (5xx, no answer); None while none failed
    failing_since: float | None = None
    #: the metadata was asked again after a download found no photo (see ``_download_missed``)
    looked_again: bool = False


@dataclass(slots=True)
class PhotoOutcome:
    task: PhotoTask
    kind: OutcomeKind
    #: the photo, hashed once, as it is staged (see ``_taken``)
    data: HashedBytes | None = None
    etag: str | None = None
    error: str = ""
    detail: str = ""
    checksum: str = field(default="")
    #: the picture's format as its bytes show it (``image/png``...): see ``_format_of``
    content_type: str | None = None

    def __post_init__(self) -> None:
        if self.data is not None and not self.checksum:
            self.checksum = self.data.sha256


def normalize_etag(value: object) -> str | None:
    """``W/"abc"`` and ``"abc"`` are the same version; empty means none (the legacy no-photo)."""
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text[:2] in ("W/", "w/"):
        text = text[2:]
    text = text.strip('"').strip()
    return text or None


def pick_size(configured: str, width: int, height: int) -> str | None:
    """The largest HD size not above ``configured`` that exists for a ``width`` x ``height`` original.

    None when the original is below the smallest HD size: then ``/photo/$value`` is the original,
    which is tiny by definition.
    """
    limit = min(int(configured.split("x")[0]), width, height)
    fitting = [s for s in HD_PHOTO_SIZES if int(s.split("x")[0]) <= limit]
    return fitting[-1] if fitting else None


def task_request(task: PhotoTask) -> BatchItem:
    user = task.user_id
    if task.kind == "probe":
        return BatchItem("GET", f"/users/{user}/photo")
    if task.size is None:
        return BatchItem("GET", f"/users/{user}/photo/$value")
    return BatchItem("GET", f"/users/{user}/photos/{task.size}/$value")


def is_no_photo(resp: GraphResponse) -> bool:
    return resp.status == 404 and (resp.error_code.lower() in NO_PHOTO_CODES or not resp.error_code)


def _legacy_metadata(body: dict[str, Any]) -> bool:
    return (
        str(body.get("id", "")).lower() == "1x1"
        or normalize_etag(body.get("@odata.mediaEtag")) is None
        or int(body.get("width") or 0) <= 1
    )


def _legacy_gif(resp: GraphResponse) -> bool:
    """The legacy no-photo body: a 1x1 GIF (GIF header: width and height at bytes 6..9)."""
    data = resp.body
    if not data.startswith((b"GIF87a", b"GIF89a")) or len(data) < 10:
        return False
    return int.from_bytes(data[6:8], "little") <= 1 and int.from_bytes(data[8:10], "little") <= 1


def _no_picture(resp: GraphResponse) -> str:
    """Why a downloaded body is no whole picture (empty, cut short, a proxy's page), or "" when it is one.

    Why check: a 200 says nothing about the photo when its body is broken (the Exchange Server agent
    reads GetUserPhoto the same way); staged, it replaced the user's picture with unusable bytes
    downstream. The image library decodes it at its smallest scale (cheap), within its input limits,
    which also refuses a body far larger than any photo Graph serves. Imported here, not at the
    top: the image library is only needed once a photo arrives.
    """
    from connector.imaging import ImageError, TruncatedImageError, verify

    if not resp.body:
        return "an empty body"
    try:
        verify(resp.body)
    except TruncatedImageError as exc:  # the photo Exchange Online holds, not a file copied ("copy it again")
        return exc.advised(_SET_AGAIN).detail
    except ImageError as exc:
        return exc.detail
    return ""


#: What to do about a photo Graph returns cut short: it is the one Exchange Online holds.
_SET_AGAIN = (
    "Graph returned the photo cut short, as Exchange Online holds it: ask the person to upload it again (Outlook, "
    "Teams), or set it again (Set-UserPhoto, or Graph's PUT /users/{id}/photo/$value)"
)


def _taken(resp: GraphResponse) -> HashedBytes:
    """The answer's photo as it is staged (``HashedBytes``, hashed here once), taken out of the answer.

    Why taken, not shared: wrapping copies the bytes (see ``HashedBytes``), and the answer outlives
    this call (the worker's loop holds it while the user's entry is made, and until the next answer).
    With its body left empty the plain bytes go as soon as they are copied: each photo is held once.
    """
    data = HashedBytes(resp.body)
    resp.body = b""
    return data


def _format_of(data: bytes) -> str | None:
    """The content type the picture's own bytes show (``_no_picture`` found it whole), None if unknown.

    Why the bytes and not Graph's ``Content-Type`` or ``@odata.mediaContentType``: Graph serves a photo
    in the format it was stored in (a PNG or GIF set through Entra ID or older tools comes back as
    such at its own size), and what is staged is these bytes; a header is only what a server or proxy
    says of them. The ``thumbnail`` and ``hd_photo`` transforms write JPEG whatever this is.
    """
    from connector.imaging import sniff_format

    found = sniff_format(data[:16])
    return found.content_type if found is not None else None


def _error_name(resp: GraphResponse) -> str:
    """MIM-style per-object error names for what Graph can say about one user's photo."""
    code = resp.error_code
    if code.lower() in MAILBOX_NOT_FOUND_CODES:
        return "mailbox-not-found"
    if resp.status == 400 and code == NO_MAILBOX_CODE:
        return "no-exchange-mailbox"
    if resp.status == 403:
        return "permission-issue"
    if resp.status == 429:
        return "graph-throttled"
    if resp.status in RETRYABLE_STATUS:
        return "graph-unavailable"
    return f"graph-http-{resp.status}"


def _held_no_photo(task: PhotoTask) -> bool:
    """Whether the connector space already holds "no photo" for the user, with the mailbox in Exchange Online."""
    return task.baseline == (False, None)


def on_premises_outcome(task: PhotoTask) -> PhotoOutcome:
    """A mailbox Graph says is on-premises (``_hybrid``): no photo here, versioned by the on-premises marker."""
    if task.baseline == (False, ON_PREMISES_ETAG):
        return PhotoOutcome(task, "unchanged", etag=ON_PREMISES_ETAG)
    return PhotoOutcome(task, "none", etag=ON_PREMISES_ETAG)


def _too_large(task: PhotoTask, resp: GraphResponse) -> PhotoOutcome:
    """An answer over its cap (``GraphResponse.oversized``), left unread: the user's error, which keeps
    what the connector space holds. A photo's is ``image-input-too-large``, as a photo folder's or
    EWS's over the input limit; metadata that large is no answer of Graph's at all."""
    from connector.imaging import InputTooLargeError

    what = "photo" if task.kind == "get" else "photo metadata"
    detail = (
        f"the {what} of user {task.user_id} came as {resp.describe()}, more than Graph sends for a {what}; the "
        "photo imported before is kept and the next import reads it again. If it recurs, check any proxy in front "
        "of Graph"
    )
    error = InputTooLargeError.name if task.kind == "get" else "graph-malformed-response"
    return PhotoOutcome(task, "error", error=error, detail=detail)


def _download_missed(task: PhotoTask, resp: GraphResponse) -> PhotoTask | PhotoOutcome:
    """A download answered "no photo" although the metadata just said there is one.

    Why this is not "no photo": the photo changed between the two requests. Removed, it is gone
    indeed; replaced by a smaller one, the size the metadata offered no longer exists and Graph
    answers that size's download with the same 404 ``ImageNotFound``. Read as "no photo", the
    import cleared a photo the user has. So the metadata is asked again (once): it tells which.
    A second miss (the photo keeps changing) is a per-user error, which keeps what the connector
    space holds; the next import reads the photo again.
    """
    if not task.looked_again:
        return PhotoTask(task.user_id, "probe", baseline=task.baseline, context=task.context, looked_again=True)
    detail = (
        f"the photo changed while it was read (the download answered {resp.describe()} twice after the metadata "
        "named a photo); what the connector space holds is kept and the next import reads the photo again"
    )
    return PhotoOutcome(task, "error", error="photo-changed-during-read", detail=detail)


def read_response(task: PhotoTask, resp: GraphResponse, configured_size: str) -> PhotoTask | PhotoOutcome:
    """What ``resp`` means for ``task``: a follow-up request (probe -> get) or a final outcome.

    Retryable statuses are the caller's business (it owns the retry budget); here they are final.
    """
    if resp.oversized:
        return _too_large(task, resp)
    if resp.status == 404 and resp.error_code == "Request_ResourceNotFound":
        return PhotoOutcome(task, "gone")
    if is_no_photo(resp):
        if task.kind == "get":
            return _download_missed(task, resp)
        return PhotoOutcome(task, "unchanged" if _held_no_photo(task) else "none")
    if mailbox_on_premises(resp):
        return on_premises_outcome(task)
    if not resp.ok:
        return PhotoOutcome(task, "error", error=_error_name(resp), detail=resp.describe())
    if task.kind == "probe":
        if not isinstance(resp.json_body, dict):
            # A 200 whose metadata is not a JSON object (damaged in transit, a proxy's error page)
            # says nothing about the photo: "no photo" here would clear it downstream.
            return PhotoOutcome(
                task, "error", error="graph-malformed-response", detail="photo metadata is not a JSON object"
            )
        body = resp.json_body
        if _legacy_metadata(body):
            return PhotoOutcome(task, "unchanged" if _held_no_photo(task) else "none")
        etag = normalize_etag(body.get("@odata.mediaEtag"))
        if task.baseline is not None and task.baseline == (True, etag):
            return PhotoOutcome(task, "unchanged", etag=etag)
        width, height = int(body.get("width") or 0), int(body.get("height") or 0)
        size = pick_size(configured_size, width, height)
        return PhotoTask(task.user_id, "get", size, etag, task.baseline, task.context, looked_again=task.looked_again)
    if _legacy_gif(resp):
        return PhotoOutcome(task, "none")
    problem = _no_picture(resp)
    if not problem:
        # The version is the metadata's mediaEtag, the value the next probe compares against. The bytes'
        # ETag header is another value altogether in Graph (W/"<64 hex>", new on every upload; see
        # connector/emulator/_graph.py), so falling back to it would never match and force a download.
        content_type = _format_of(resp.body)
        return PhotoOutcome(task, "photo", data=_taken(resp), etag=task.etag, content_type=content_type)
    detail = (
        f"the photo download answered HTTP 200 with {len(resp.body):,} bytes of "
        f"{resp.headers.get('content-type') or 'no content type'} that are no usable picture ({problem}); any "
        "photo imported before is kept and the next import reads it again. If it is a web page, a proxy in "
        "front of Graph answered instead"
    )
    return PhotoOutcome(task, "error", error="graph-malformed-response", detail=detail)
