"""Run inside a new network namespace (``unshare -n``): a store host that vanishes mid-run.

Why a namespace: a host that disappears without a reset (a VM gone, a failover, a firewall that
starts dropping packets) leaves the data a client sent unacknowledged, which no relay on loopback
can imitate (its kernel acknowledges everything). Here PostgreSQL listens on an address of the
namespace's own loopback; removing that address makes the server unreachable while both processes
live on, so the client's next query sits unacknowledged, exactly as across a real network.

Prints one JSON object: the seconds the store took to give up and the fault it raised.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

from tests.harness.postgres_server import PostgresServer, start_postgres

ADDRESS = "10.9.9.1"
#: The TCP user timeout the child runs the store with (mvsync's 70 s would make a slow test).
USER_TIMEOUT_MS = 3000
#: How long the child waits for the store to give up before it reports a hang (and stops its server,
#: which a parent's kill would leave running).
WATCHDOG_S = 150.0


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


def _hung(server: PostgresServer) -> None:
    """The store never gave up: say so, and stop the server before leaving."""
    print(json.dumps({"seconds": None, "error": None, "hung_s": WATCHDOG_S}), flush=True)
    _ip("addr", "add", f"{ADDRESS}/32", "dev", "lo")
    server.stop()
    os._exit(0)


def main() -> None:
    os.environ.pop("MVSYNC_TEST_POSTGRES_URL", None)  # an outside server is not reachable from here
    _ip("link", "set", "lo", "up")
    _ip("addr", "add", f"{ADDRESS}/32", "dev", "lo")
    from sqlalchemy import text

    import connector.store._sql as sql_store
    from connector.store import SqlStore, StoreError

    sql_store.PG_TCP_USER_TIMEOUT_MS = USER_TIMEOUT_MS  # mvsync's own default, only shorter
    server = start_postgres(host=ADDRESS, install=False)
    try:
        store = SqlStore(server.create_database())
        with store.transaction() as conn:
            conn.execute(text("SELECT 1"))
        _ip("addr", "del", f"{ADDRESS}/32", "dev", "lo")  # the host is gone, without a word
        started = time.monotonic()
        watchdog = threading.Timer(WATCHDOG_S, _hung, args=(server,))
        watchdog.daemon = True
        watchdog.start()
        try:
            with store.transaction() as conn:
                conn.execute(text("SELECT 2"))
            fault: dict[str, object] = {"error": None}
        except StoreError as exc:
            fault = {"error": str(exc), "exit_code": exc.exit_code}
        print(json.dumps({"seconds": round(time.monotonic() - started, 2), **fault}), flush=True)
    finally:
        subprocess.run(["ip", "addr", "add", f"{ADDRESS}/32", "dev", "lo"], capture_output=True, check=False)
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
