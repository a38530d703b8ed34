"""The console's FastAPI application: server-rendered pages over a read-only view of the store.

Routes are plain (not ``async``) functions: every one of them reads the database, so each runs on a
thread of its own and never stalls the event loop, and the request waits for it a bounded time
(``_deadline``): a store that stops answering is a 503 page, not a page that never loads.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
from collections.abc import Callable
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from connector.config import MvsyncConfig
from connector.store import ROW_ID_MAX, SqlStore, StoreCorruptError, StoreError, StoreVersionError
from connector.web._deadline import bounded, page_deadline
from connector.web._photos import jpeg_preview, sniff_image_type
from connector.web._queries import Console, status_class
from connector.web._security import AccessPolicy, apply_security_headers
from connector.web._settings_view import masked_settings

__all__ = ["create_app"]

log = logging.getLogger("mvsync.web")

_HERE = Path(__file__).parent
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: Ids and cursors are database integers: larger numbers are no address of this console (a bigger one
#: in a URL was an OverflowError and a 500).
RowId = Annotated[int, PathParam(ge=0, le=ROW_ID_MAX)]
Cursor = Annotated[int | None, Query(ge=0, le=ROW_ID_MAX)]
#: HTTP requires HEAD wherever GET is answered (``curl -I``, uptime checks); uvicorn sends no body for it.
READ_METHODS = ["GET", "HEAD"]
#: Photos are content-addressed: a URL's bytes never change, so browsers may keep them for a year.
PHOTO_CACHE = "private, max-age=31536000, immutable"


class _Css:
    """The stylesheet, read once, with an ETag of its content."""

    def __init__(self) -> None:
        self.body = (_HERE / "static" / "ui.css").read_bytes()
        self.etag = f'"{hashlib.sha256(self.body).hexdigest()[:32]}"'


class _Pages:
    """The console's routes over one store: each method is one page (or a photo, the stylesheet)."""

    def __init__(self, config: MvsyncConfig, store: SqlStore) -> None:
        self.config = config
        self.store = store
        self.console = Console(config, store)
        self.templates = Jinja2Templates(directory=str(_HERE / "templates"))
        self.templates.env.globals["status_class"] = status_class
        self.templates.env.filters["thousands"] = lambda n: f"{n:,}"
        self.css = _Css()

    def html_routes(self) -> list[tuple[str, Callable[..., Response]]]:
        return [
            ("/", self.operations),
            ("/runs/{run_id}", self.run),
            ("/steps/{step_id}", self.step),
            ("/search", self.search),
            ("/persons/{mv_id}", self.person),
            ("/pending", self.pending_agents),
            ("/pending/{agent}", self.pending),
            ("/coverage", self.coverage),
            ("/agents", self.agents),
        ]

    def other_routes(self) -> list[tuple[str, Callable[..., Response], bool]]:
        """The routes that are not pages: (path, handler, whether it reads the store)."""
        return [
            ("/photo/{sha256}", self.photo, True),
            ("/static/ui.css", self.stylesheet, False),
            ("/favicon.ico", self.favicon, False),
        ]

    def page(self, request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("nav", name.split(".")[0])
        return self.templates.TemplateResponse(request, name, context, status_code=status_code)

    def error(self, request: Request, status: int, message: str, **context: Any) -> Response:
        """An error answer: plain text for a photo or the stylesheet (an ``<img>`` shows no page), else
        the error page with ``message`` (and the template's ``title`` and ``hint`` from ``context``)."""
        if request.url.path.startswith(("/photo/", "/static/")):
            return Response(message, status_code=status, media_type="text/plain")
        return self.page(request, "error.html", status, message=message, nav="", **context)

    def not_found(self, request: Request, exc: StarletteHTTPException) -> Response:
        """A 404 (or a 405 for a method no page takes): the error page titled by its status, keeping
        the exception's headers (a 405 must say what is ``Allow``ed, RFC 9110 15.5.6)."""
        response = self.error(request, exc.status_code, str(exc.detail), title=_status_title(exc.status_code))
        response.headers.update(exc.headers or {})
        return response

    def bad_address(self, request: Request, exc: RequestValidationError) -> Response:
        """A hand-edited URL (``/runs/abc``, a cursor out of range): a page that says so, not FastAPI's JSON."""
        problems = "; ".join(f"{' '.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in exc.errors())
        if request.url.path.startswith(("/photo/", "/static/")):
            return self.error(request, 400, problems)
        return self._not_an_address(request, problems)

    def _not_an_address(self, request: Request, problems: str, then: str = "") -> Response:
        """The 400 page of a URL no page of this console answers (hand-edited, or a value no page takes)."""
        return self.error(request, 400, f"Not an address of this console ({problems}){then}", title="Bad address")

    def store_unavailable(self, request: Request, exc: StoreError) -> Response:
        """The store cannot be read (a PostgreSQL restart, a damaged file): a page that says so, not a bare 500.

        A 503 for a store that may answer again; a 500 for damage (a truncated file, a document that is not
        JSON), which no reload mends: the page names the damage and ``mvsync doctor``.

        The console keeps running: the next request connects again, so a reload after the store is
        back shows the page. One log line per failed request, without a traceback: it is not a bug.
        """
        log.warning("%s %s: %s", request.method, request.url.path, exc)
        if isinstance(exc, StoreCorruptError):  # reloading will not help: the data this page shows is damaged
            hint = "Pages that do not show the damaged data still work; `mvsync doctor` lists all the damage."
            return self.error(request, 500, str(exc), hint=hint, title="Store damaged")
        hint = "The console keeps running; reload this page once the store answers again."
        return self.error(request, 503, str(exc), hint=hint, title="Store unavailable")

    def unexpected(self, request: Request, exc: Exception) -> Response:
        """Anything else (a row the console cannot read, a bug): the error page, not a bare 500.

        Why: Starlette answered a text/plain "Internal Server Error" from outside the access policy's
        middleware, so without the security headers, and said nothing of what to do. The page names
        the store, since a damaged row there is the likely cause, and ``mvsync doctor``, which checks
        it. The details stay in the console's output: Starlette raises ``exc`` again once this page
        is sent, and uvicorn logs it with its traceback (a bug's report needs it; the page does not).
        """
        version = self._version_problem()
        if version is not None:
            response = self.error(request, 503, str(version), title="Store of another mvsync version")
        else:
            hint = (
                f"The console's output (where mvsync ui runs) has the details. If the store {self.store.where} "
                "may be damaged, check it with `mvsync doctor`; otherwise report the error with those details."
            )
            message = f"This page could not be shown: {type(exc).__name__}"
            response = self.error(request, 500, message, hint=hint, title="Console error")
        apply_security_headers(response)  # sent from outside the middleware that adds them
        return response

    def _version_problem(self) -> StoreVersionError | None:
        """Why the store's schema is not this mvsync's, if it is not (else None).

        Why asked only when a page failed: the version is checked when the console starts, but a newer
        mvsync (the sync server, upgraded first) may upgrade the store under a running console, whose
        queries then fail as "no such column"; that names neither versions nor what to do. One read of
        ``store_meta``, made only after a page has failed.
        """
        try:
            self.store.upgrade(check_only=True)
        except StoreVersionError as problem:
            return problem
        except StoreError:  # the store cannot say: the page names the error it had
            return None
        return None

    # --------------------------------------------------------------------------- operations
    def operations(self, request: Request, before: Cursor = None) -> HTMLResponse:
        with self.store.read() as conn:
            runs, next_before = self.console.runs(conn, before)
            # a page past the oldest run (an old link, a hand-edited ?before=) is not an empty history:
            # it says "No older runs" and links to the newest, not "No runs yet" over a store that has them
            past_oldest = before is not None and not runs and bool(self.console.runs(conn, None, limit=1)[0])
        return self.page(request, "operations.html", runs=runs, next_before=next_before, past_oldest=past_oldest)

    def run(self, request: Request, run_id: RowId) -> HTMLResponse:
        with self.store.read() as conn:
            view = self.console.run(conn, run_id)
        if view is None:
            raise HTTPException(404, f"no run {run_id}")
        return self.page(request, "run.html", run=view, nav="operations")

    def step(self, request: Request, step_id: RowId, after: Cursor = None) -> HTMLResponse:
        with self.store.read() as conn:
            found = self.console.step(conn, step_id, after)
        if found is None:
            raise HTTPException(404, f"no step {step_id}")
        view, errors, by_name, next_after = found
        return self.page(
            request, "step.html", step=view, errors=errors, by_name=by_name, next_after=next_after, nav="operations"
        )

    # ------------------------------------------------------------------------------- persons
    def search(
        self,
        request: Request,
        q: Annotated[str, Query(max_length=200)] = "",
        after: Cursor = None,
        before: Cursor = None,
    ) -> Response:
        if "\x00" in q:
            # PostgreSQL refuses a NUL in a text parameter (a bare 500) and SQLite ended the needle at it
            # (everyone matched); no name, mail or account holds one
            return self._not_an_address(request, "q: the search text holds a NUL character, %00", "; search without it")
        with self.store.read() as conn:
            result = self.console.search(conn, q, after, before)
        return self.page(request, "search.html", result=result)

    def person(self, request: Request, mv_id: RowId) -> HTMLResponse:
        with self.store.read() as conn:
            doc = self.console.person(conn, mv_id)
        if doc is None:
            raise HTTPException(404, f"no person {mv_id}")
        return self.page(request, "person.html", person=doc, nav="search")

    # ------------------------------------------------------------------------ pending exports
    def pending_agents(self, request: Request) -> HTMLResponse:
        with self.store.read() as conn:
            counts = self.console.pending_counts(conn)
        agents = [(a, self.console.source_label(a), n) for a, n in sorted(counts.items(), key=lambda x: x[0])]
        return self.page(request, "pending_agents.html", agents=agents, nav="pending")

    def pending(
        self, request: Request, agent: str, after: Annotated[int, Query(ge=-1, le=ROW_ID_MAX)] = -1
    ) -> HTMLResponse:
        with self.store.read() as conn:
            # an agent taken out of the configuration keeps its connector space, and the list of agents
            # links its pending exports: they are shown (a 404 only for a name neither knows)
            total = self.console.pending_counts(conn).get(agent)
            if total is None:
                raise HTTPException(404, f"no agent {agent!r} in the configuration or with pending exports")
            rows, next_after, infos = self.console.pending(conn, agent, after)
            thresholds = self.console.thresholds(conn, agent)
        return self.page(
            request,
            "pending.html",
            agent=agent,
            source=self.console.source_label(agent),
            rows=rows,
            infos=infos,
            total=total,
            next_after=next_after,
            thresholds=thresholds,
            first=after < 0,
            configured=agent in self.config.agents,
            nav="pending",
        )

    # ------------------------------------------------------------------------ coverage, agents
    def coverage(self, request: Request) -> HTMLResponse:
        with self.store.read() as conn:
            agents, kinds, persons = self.console.coverage(conn)
            last_run = self.console.last_run_errors(conn)
        return self.page(request, "coverage.html", agents=agents, kinds=kinds, persons=persons, last_run=last_run)

    @functools.cached_property
    def _agents_shown(self) -> list[tuple[str, str, Any, list[tuple[str, str]]]]:
        # the configuration is immutable; finding each connector's secret fields loads its class
        return [
            (name, self.console.source_label(name), cfg, masked_settings(cfg))
            for name, cfg in sorted(self.config.agents.items())
        ]

    def agents(self, request: Request) -> HTMLResponse:
        return self.page(request, "agents.html", agents=self._agents_shown, profiles=self.config.run_profiles)

    # -------------------------------------------------------------------------- photos, assets
    def photo(self, request: Request, sha256: str) -> Response:
        """A stored photo by its checksum; anything that is not a JPEG, PNG or GIF is not served."""
        if not _SHA256.fullmatch(sha256):
            raise HTTPException(404, "not a sha256")
        etag = f'"{sha256}"'
        cache = {"ETag": etag, "Cache-Control": PHOTO_CACHE}
        if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
            return Response(status_code=304, headers=cache)
        data = self.store.get_blob(sha256)
        if data is None:
            raise HTTPException(404, "no such photo")
        content_type = sniff_image_type(data[:16])
        if content_type is None and sniff_image_type(data[:16], previewed=True) is not None:
            preview = jpeg_preview(data)  # BMP, TIFF, WebP from a folder: shown as a JPEG
            if preview is not None:
                return Response(preview, media_type="image/jpeg", headers=cache)
        if content_type is None:
            raise HTTPException(404, "not an image")
        return Response(data, media_type=content_type, headers=cache)

    def stylesheet(self, request: Request) -> Response:
        headers = {"ETag": self.css.etag, "Cache-Control": "public, max-age=3600"}
        if request.headers.get("if-none-match") == self.css.etag:
            return Response(status_code=304, headers=headers)
        return Response(self.css.body, media_type="text/css", headers=headers)

    def favicon(self) -> Response:
        return Response(status_code=204)


#: How the console names itself to ``mvsync store restore`` (which refuses while it has the store open).
CONSOLE_READER = "the console (mvsync ui)"


def create_app(
    config: MvsyncConfig,
    *,
    store: SqlStore | None = None,
    policy: AccessPolicy | None = None,
    page_deadline_s: float | None = None,
) -> FastAPI:
    """The console for ``config``'s store. ``policy`` defaults to loopback-only without credentials;
    a page waits at most ``page_deadline_s`` for the store (default :func:`page_deadline`), then it
    is a 503 page."""
    store = store or SqlStore(
        config.store_url(), create=False, reader=CONSOLE_READER
    )  # a read-only console never creates a store
    deadline = page_deadline(store) if page_deadline_s is None else page_deadline_s
    pages = _Pages(config, store)
    app = FastAPI(title="mvsync", docs_url=None, redoc_url=None, openapi_url=None)
    app.middleware("http")((policy or AccessPolicy()).middleware)
    app.add_exception_handler(StarletteHTTPException, pages.not_found)  # type: ignore[arg-type]
    app.add_exception_handler(StoreError, pages.store_unavailable)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, pages.bad_address)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, pages.unexpected)
    # every read first checks that store.url's file is still the one the pool has open (a 503 if not)
    same_file = functools.partial(store.check_same_file, "the console (`mvsync ui`)")
    for path, html in pages.html_routes():
        page = bounded(html, deadline, store.where, same_file)
        app.add_api_route(path, page, methods=READ_METHODS, response_class=HTMLResponse)
    for path, other, reads in pages.other_routes():
        app.add_api_route(
            path, bounded(other, deadline, store.where, same_file if reads else None), methods=READ_METHODS
        )
    return app


def _status_title(status: int) -> str:
    """``Not Found``, ``Method Not Allowed``: the reason phrase HTTP gives the status."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"
