"""A page that waits on the store waits a bounded time: past it, the console answers 503 and moves on.

Why: the store's timeouts bound connecting, not a query. A PostgreSQL server that stops answering
on a connection the pool already holds (a hung server, a VM paused, a network that drops packets
without a reset) leaves psycopg waiting for the reply with no end, and with it the browser's page.
Starlette's thread pool made it worse: its workers are not daemon threads, so Ctrl-C (or SIGTERM)
then never ended ``mvsync ui`` either, since the process waited for that worker at exit.

So each page runs on a daemon thread of its own, and the request waits for it at most
:func:`page_deadline`. A thread left behind holds one pooled connection until the server answers or
drops it (the pool bounds how many), and does not keep the process from exiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from connector.store import BUSY_TIMEOUT_S, SqlStore, StoreError

__all__ = ["bounded", "page_deadline"]

#: How much longer than the store's own bounded waits a page may take.
MARGIN_S = 15.0


def page_deadline(store: SqlStore) -> float:
    """How long a page may wait for ``store``: past the store's own bounded waits, a table or file
    lock (``BUSY_TIMEOUT_S``) and a PostgreSQL connection attempt (its ``connect_timeout``), so that
    those end first, with the messages that name them ("busy: another session holds a lock ...").

    Every page reads one page of rows or one indexed aggregate (``mvsync bench ui``: a few ms with
    100,000 persons), so the deadline is only ever reached by a store that does not answer.
    """
    return max(BUSY_TIMEOUT_S, store.connect_timeout_s or 0.0) + MARGIN_S


P = ParamSpec("P")
R = TypeVar("R")


def _settle(done: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if done.done():  # the request gave up on it already
        return
    if error is not None:
        done.set_exception(error)
    else:
        done.set_result(result)


async def _on_daemon_thread(work: Callable[[], R], seconds: float, where: str) -> R:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[R] = loop.create_future()

    def run() -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = work()
        except BaseException as exc:  # handed to the request, which raises it where Starlette handles it
            error = exc
        with contextlib.suppress(RuntimeError):  # the console stopped meanwhile: nobody waits any more
            loop.call_soon_threadsafe(_settle, done, result, error)

    threading.Thread(target=run, name="mvsync-console-page", daemon=True).start()
    try:
        return await asyncio.wait_for(asyncio.shield(done), seconds)
    except TimeoutError:
        msg = (
            f"the store {where} has not answered within {seconds:g} s (a hung or overloaded server, or a network "
            "that drops its packets); check that it runs (for PostgreSQL: pg_isready -h HOST -p PORT)"
        )
        raise StoreError(msg) from None


def bounded(
    page: Callable[P, R], seconds: float, where: str, before: Callable[[], None] | None = None
) -> Callable[P, Awaitable[R]]:
    """``page`` as a coroutine that runs it on a daemon thread and waits at most ``seconds`` for it;
    ``before`` runs first on that thread (a check of the store that may raise :class:`StoreError`).

    ``functools.wraps`` keeps the page's signature, which FastAPI reads for its parameters.
    """

    def checked(*args: P.args, **kwargs: P.kwargs) -> R:
        if before is not None:
            before()
        return page(*args, **kwargs)

    @functools.wraps(page)
    async def run(*args: P.args, **kwargs: P.kwargs) -> R:
        return await _on_daemon_thread(functools.partial(checked, *args, **kwargs), seconds, where)

    return run
