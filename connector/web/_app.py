"""The console's FastAPI application: server-rendered pages over a read-only view of the store.

Routes are plain (not ``async``) functions: every one of them reads the database, and Starlette
runs plain routes in its thread pool, so a slow query never stalls the event loop.
"""

from __future__ import annotations

import functools
import hashlib
import re
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException

from connector.config import MvsyncConfig
from connector.store import SqlStore
from connector.web._photos import jpeg_preview, sniff_image_type
from connector.web._queries import Console, status_class
from connector.web._security import AccessPolicy
from connector.web._settings_view import masked_settings

__all__ = ["create_app"]

_HERE = Path(__file__).parent
_SHA256 = re.compile(r"[0-9a-f]{64}")
#: Photos are content-addressed: a URL's bytes never change, so browsers may keep them for a year.
PHOTO_CACHE = "private, max-age=31536000, immutable"


class _Css:
    """The stylesheet, read once, with an ETag of its content."""

    def __init__(self) -> None:
        self.body = (_HERE / "static" / "ui.css").read_bytes()
        self.etag = f'"{hashlib.sha256(self.body).hexdigest()[:32]}"'


def create_app(config: MvsyncConfig, *, store: SqlStore | None = None, policy: AccessPolicy | None = None) -> FastAPI:
    """The console for ``config``'s store. ``policy`` defaults to loopback-only without credentials."""
    store = store or SqlStore(config.store_url(), create=False)  # a read-only console never creates a store
    console = Console(config, store)
    access = policy or AccessPolicy()
    app = FastAPI(title="mvsync", docs_url=None, redoc_url=None, openapi_url=None)
    app.middleware("http")(access.middleware)
    templates = Jinja2Templates(directory=str(_HERE / "templates"))
    templates.env.globals["status_class"] = status_class
    templates.env.filters["thousands"] = lambda n: f"{n:,}"
    css = _Css()

    def page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        context.setdefault("nav", name.split(".")[0])
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    @app.exception_handler(StarletteHTTPException)
    def _not_found(request: Request, exc: StarletteHTTPException) -> Response:
        if request.url.path.startswith(("/photo/", "/static/")):
            return Response(str(exc.detail), status_code=exc.status_code, media_type="text/plain")
        return page(request, "error.html", exc.status_code, message=exc.detail, nav="")

    @app.get("/", response_class=HTMLResponse)
    def operations(request: Request, before: Annotated[int | None, Query()] = None) -> HTMLResponse:
        with store.read() as conn:
            runs, next_before = console.runs(conn, before)
        return page(request, "operations.html", runs=runs, next_before=next_before)

    @app.get("/runs/{run_id}", response_class=HTMLResponse)
    def run(request: Request, run_id: int) -> HTMLResponse:
        with store.read() as conn:
            view = console.run(conn, run_id)
        if view is None:
            raise HTTPException(404, f"no run {run_id}")
        return page(request, "run.html", run=view, nav="operations")

    @app.get("/steps/{step_id}", response_class=HTMLResponse)
    def step(request: Request, step_id: int, after: Annotated[int | None, Query()] = None) -> HTMLResponse:
        with store.read() as conn:
            found = console.step(conn, step_id, after)
        if found is None:
            raise HTTPException(404, f"no step {step_id}")
        view, errors, by_name, next_after = found
        return page(
            request, "step.html", step=view, errors=errors, by_name=by_name, next_after=next_after, nav="operations"
        )

    @app.get("/search", response_class=HTMLResponse)
    def search(
        request: Request,
        q: Annotated[str, Query(max_length=200)] = "",
        after: Annotated[int | None, Query()] = None,
        before: Annotated[int | None, Query()] = None,
    ) -> HTMLResponse:
        with store.read() as conn:
            result = console.search(conn, q, after, before)
        return page(request, "search.html", result=result)

    @app.get("/persons/{mv_id}", response_class=HTMLResponse)
    def person(request: Request, mv_id: int) -> HTMLResponse:
        with store.read() as conn:
            doc = console.person(conn, mv_id)
        if doc is None:
            raise HTTPException(404, f"no person {mv_id}")
        return page(request, "person.html", person=doc, nav="search")

    @app.get("/pending", response_class=HTMLResponse)
    def pending_agents(request: Request) -> HTMLResponse:
        with store.read() as conn:
            counts = console.pending_counts(conn)
        agents = [(a, console.source_label(a), n) for a, n in sorted(counts.items(), key=lambda x: x[0])]
        return page(request, "pending_agents.html", agents=agents, nav="pending")

    @app.get("/pending/{agent}", response_class=HTMLResponse)
    def pending(request: Request, agent: str, after: Annotated[int, Query()] = -1) -> HTMLResponse:
        if agent not in config.agents:
            raise HTTPException(404, f"no agent {agent!r} in the configuration")
        with store.read() as conn:
            rows, next_after, infos = console.pending(conn, agent, after)
            total = console.pending_counts(conn).get(agent, 0)
            thresholds = console.thresholds(conn, agent)
        return page(
            request,
            "pending.html",
            agent=agent,
            source=console.source_label(agent),
            rows=rows,
            infos=infos,
            total=total,
            next_after=next_after,
            thresholds=thresholds,
            first=after < 0,
            nav="pending",
        )

    @app.get("/coverage", response_class=HTMLResponse)
    def coverage(request: Request) -> HTMLResponse:
        with store.read() as conn:
            agents, kinds, persons = console.coverage(conn)
            last_run = console.last_run_errors(conn)
        return page(request, "coverage.html", agents=agents, kinds=kinds, persons=persons, last_run=last_run)

    @functools.cache
    def agents_shown() -> list[tuple[str, str, Any, list[tuple[str, str]]]]:
        # the configuration is immutable; finding each connector's secret fields loads its class
        return [
            (name, console.source_label(name), cfg, masked_settings(cfg)) for name, cfg in sorted(config.agents.items())
        ]

    @app.get("/agents", response_class=HTMLResponse)
    def agents(request: Request) -> HTMLResponse:
        return page(request, "agents.html", agents=agents_shown(), profiles=config.run_profiles)

    @app.get("/photo/{sha256}")
    def photo(request: Request, sha256: str) -> Response:
        """A stored photo by its checksum; anything that is not a JPEG, PNG or GIF is not served."""
        if not _SHA256.fullmatch(sha256):
            raise HTTPException(404, "not a sha256")
        etag = f'"{sha256}"'
        cache = {"ETag": etag, "Cache-Control": PHOTO_CACHE}
        if etag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
            return Response(status_code=304, headers=cache)
        data = store.get_blob(sha256)
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

    @app.get("/static/ui.css")
    def stylesheet(request: Request) -> Response:
        headers = {"ETag": css.etag, "Cache-Control": "public, max-age=3600"}
        if request.headers.get("if-none-match") == css.etag:
            return Response(status_code=304, headers=headers)
        return Response(css.body, media_type="text/css", headers=headers)

    @app.get("/favicon.ico")
    def favicon() -> Response:
        return Response(status_code=204)

    return app
