"""``mvsync bench emulator``: photo requests per second the emulator serves over keep-alive HTTPS.

The server runs in this process with latency and throttling off; the load comes from a separate
client process (``python -m connector.bench.emulator --client``), so client and server do not share
a GIL. The client is a lean asyncio loop over raw TLS streams, C keep-alive connections, so what is
measured is the emulator and not a heavy HTTP library.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import sys
import time
from collections import Counter
from typing import Any

from connector.emulator import EmulatorConfig, GraphEmulator, model_assumptions

__all__ = ["run"]


def run(
    seconds: float = 5.0,
    concurrency: int = 16,
    users: int = 1000,
    photo_ratio: float = 0.5,
    size: str | None = None,
) -> dict[str, Any]:
    """Start an emulator, drive it from a client process, return the measured rates."""
    config = EmulatorConfig(
        users=users,
        photo_ratio=photo_ratio,
        seed=1,
        latency_ms=0.0,
        app_rate_per_s=None,
        app_concurrency=None,
        mailbox_concurrency=None,
        mailbox_requests_per_10min=None,
        directory_ru_per_10s=None,
    )
    with GraphEmulator(config) as emu:
        templates = emu.tenant.templates
        used = {u.photo.template for u in emu.tenant.live_users() if u.photo and u.photo.template is not None}
        for index in sorted(used):  # render up front: measure serving, not Pillow
            templates.original(index)
        info = emu.info
        suffix = f"/photos/{size}/$value" if size else "/photo/$value"
        paths = [f"/v1.0/users/{u['id']}{suffix}" for u in emu.admin.users()]
        job = {
            "port": info["port"],
            "ca_cert": info["ca_cert"],
            "token": emu.admin.issue_app_token(),
            "paths": paths,
            "seconds": seconds,
            "concurrency": concurrency,
        }
        emu.admin.reset_stats()
        proc = subprocess.run(
            [sys.executable, "-m", "connector.bench.emulator", "--client"],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=seconds + 60,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"benchmark client failed: {proc.stderr.strip()[-2000:]}")
        client = json.loads(proc.stdout)
        server = emu.admin.stats()
    elapsed = client["elapsed_s"]
    return {
        "benchmark": "emulator",
        "photo_requests_per_s": round(client["responses"] / elapsed, 1),
        "photo_bytes_per_s": round(client["bytes"] / elapsed),
        "responses": client["responses"],
        "by_status": client["by_status"],
        "errors": client["errors"],
        "elapsed_s": round(elapsed, 3),
        "concurrency": concurrency,
        "users": users,
        "photo_ratio": photo_ratio,
        "path": suffix,
        "server_photo_requests": server["photo_requests"],
        "transport": "HTTPS/1.1 keep-alive, separate client process",
        "emulator_assumptions": model_assumptions(config.latency_ms, config.batch_parallelism),
    }


# --- client process --------------------------------------------------------------------------------
async def _worker(
    job: dict[str, Any],
    ctx: ssl.SSLContext,
    offset: int,
    stop_at: float,
    by_status: Counter[str],
    totals: Counter[str],
) -> None:
    port, token, paths = job["port"], job["token"], job["paths"]
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1", limit=1 << 20
    )
    head_tpl = f" HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {token}\r\nAccept: */*\r\n\r\n"
    index = offset
    try:
        while time.monotonic() < stop_at:
            writer.write(("GET " + paths[index % len(paths)] + head_tpl).encode())
            index += job["concurrency"]
            head = await reader.readuntil(b"\r\n\r\n")
            status = head[9:12].decode()
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            by_status[status] += 1
            totals["bytes"] += length
    except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError) as exc:
        totals[f"error:{type(exc).__name__}"] += 1
    finally:
        writer.close()


async def _client(job: dict[str, Any]) -> dict[str, Any]:
    ctx = ssl.create_default_context(cafile=job["ca_cert"])
    by_status: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    start = time.monotonic()
    stop_at = start + float(job["seconds"])
    await asyncio.gather(*(_worker(job, ctx, i, stop_at, by_status, totals) for i in range(job["concurrency"])))
    elapsed = time.monotonic() - start
    errors = {k: v for k, v in totals.items() if k.startswith("error:")}
    return {
        "responses": sum(by_status.values()),
        "bytes": totals["bytes"],
        "by_status": dict(by_status),
        "errors": errors,
        "elapsed_s": elapsed,
    }


def _client_main() -> None:
    job = json.loads(sys.stdin.read())
    sys.stdout.write(json.dumps(asyncio.run(_client(job))) + "\n")


if __name__ == "__main__":
    if "--client" in sys.argv:
        _client_main()
