"""A throwaway PostgreSQL server on loopback, for tests and benchmarks.

Why a real server: the store's promises on PostgreSQL (placeholders, advisory locks released when a
process dies, savepoints in dry runs, binary values) only mean something against the real thing, and
Debian's ``postgresql`` package gives us one that starts in about a second from an empty directory.

What :func:`start_postgres` does, each step only when needed:

1. find Debian's binaries (``/usr/lib/postgresql/<version>/bin``), installing the ``postgresql``
   package with apt when allowed (root only; a ``policy-rc.d`` answering 101 keeps the package
   scripts from starting the system cluster, which we never touch);
2. ``initdb`` a new cluster in a temporary directory (as the ``postgres`` user when we are root,
   because PostgreSQL refuses to run as root), with SCRAM password authentication and a random
   password, so other users of a shared machine cannot use the server;
3. start it with ``pg_ctl``, listening on ``127.0.0.1`` only, on a free port, its Unix socket
   inside the data directory;
4. hand out databases (:meth:`PostgresServer.create_database`) as SQLAlchemy URLs
   (``postgresql+psycopg://...``).

When ``MVSYNC_TEST_POSTGRES_URL`` names an existing server (a URL of any database on it, for a role
allowed to create databases), nothing is installed or started: databases are created there.

Where PostgreSQL cannot run, :class:`PostgresUnavailable` says why; test fixtures turn it into a
skip, or into a failure when servers are required (``MVSYNC_REQUIRE_SERVERS=1``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "ENV_URL",
    "PostgresServer",
    "PostgresUnavailable",
    "find_bin_dir",
    "postgres_server",
    "start_postgres",
    "start_standby",
]

#: An existing server to use instead of starting one (``postgresql+psycopg://user:pw@host:port/db``).
ENV_URL = "MVSYNC_TEST_POSTGRES_URL"
_BIN_GLOB = "/usr/lib/postgresql/*/bin"
_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
#: Throwaway clusters trade durability for speed; the benchmark asks for a durable one.
_FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


class PostgresUnavailable(Exception):
    """PostgreSQL cannot run here (the message says why)."""


def find_bin_dir() -> Path | None:
    """The newest Debian PostgreSQL ``bin`` directory holding ``initdb`` and ``pg_ctl``, if any."""

    def version(path: str) -> tuple[int, ...]:
        name = Path(path).parent.name
        return tuple(int(p) for p in name.split(".") if p.isdigit())

    for candidate in sorted(glob.glob(_BIN_GLOB), key=version, reverse=True):
        path = Path(candidate)
        if (path / "initdb").is_file() and (path / "pg_ctl").is_file():
            return path
    return None


def _install() -> None:
    """``apt-get install postgresql`` without letting it start the system cluster."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        msg = "PostgreSQL is not installed (/usr/lib/postgresql/*/bin) and we are not root with apt to install it"
        raise PostgresUnavailable(msg)
    policy = Path("/usr/sbin/policy-rc.d")
    added = False
    if not policy.exists():
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
        added = True
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=False, timeout=600)
        done = subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=1200,
        )
    finally:
        if added:
            policy.unlink(missing_ok=True)
    if done.returncode != 0:
        msg = f"apt-get install postgresql failed: {done.stderr.strip()[-500:]}"
        raise PostgresUnavailable(msg)


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


@dataclass
class PostgresServer:
    """A reachable PostgreSQL server; :meth:`stop` shuts it down only if this process started it."""

    host: str
    port: int
    user: str
    password: str
    admin_database: str = "postgres"
    data_dir: Path | None = None
    bin_dir: Path | None = None
    run_as: str | None = None
    _databases: set[str] = field(default_factory=set)

    @property
    def owned(self) -> bool:
        """True when this process started the server (and will stop it)."""
        return self.data_dir is not None

    def url(self, database: str | None = None) -> str:
        """SQLAlchemy URL of ``database`` (default: the administrative database)."""
        from sqlalchemy.engine import URL

        return URL.create(
            "postgresql+psycopg",
            username=self.user,
            password=self.password,
            host=self.host,
            port=self.port,
            database=database or self.admin_database,
        ).render_as_string(hide_password=False)

    def _admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=self.admin_database,
            autocommit=True,
            connect_timeout=10,
        ) as conn:
            conn.execute(sql.encode())

    def create_database(self, name: str | None = None) -> str:
        """Create an empty database (a fresh random name by default) and return its URL."""
        name = name or f"mvsync_{uuid.uuid4().hex[:12]}"
        if not _DB_NAME.match(name):
            msg = f"database name {name!r}: use lower-case letters, digits and _"
            raise ValueError(msg)
        self._admin(f'CREATE DATABASE "{name}"')
        self._databases.add(name)
        return self.url(name)

    def drop_database(self, name_or_url: str) -> None:
        """Drop a database created by :meth:`create_database` (disconnecting leftover sessions)."""
        name = name_or_url.rsplit("/", 1)[-1].split("?", 1)[0] if "/" in name_or_url else name_or_url
        if not _DB_NAME.match(name):
            msg = f"database name {name!r}: not one of ours"
            raise ValueError(msg)
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._databases.discard(name)

    def stop(self) -> None:
        """Drop our databases on a borrowed server; stop and delete a server we started."""
        if not self.owned:
            for name in list(self._databases):
                with contextlib.suppress(Exception):
                    self.drop_database(name)
            return
        assert self.data_dir is not None and self.bin_dir is not None
        cluster = self.data_dir / "cluster"
        if (cluster / "postmaster.pid").exists():
            _run(
                [str(self.bin_dir / "pg_ctl"), "stop", "-D", str(cluster), "-m", "fast", "-w", "-t", "30"],
                self.run_as,
                check=False,
            )
        shutil.rmtree(self.data_dir, ignore_errors=True)
        self.data_dir = None


def _run(
    cmd: list[str], run_as: str | None, *, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL tool, as ``run_as`` when given (we are root then), with ``env`` added to the
    environment (runuser passes it on): a password there stays out of the command line and of errors."""
    if run_as is not None:
        cmd = ["runuser", "-u", run_as, "--", *cmd]
    environ = {**os.environ, **env} if env else None
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=120, cwd="/", env=environ)
    if check and done.returncode != 0:
        msg = f"{' '.join(cmd)} failed: {(done.stderr or done.stdout)[-800:]}"
        raise PostgresUnavailable(msg)
    return done


def _from_env(url: str) -> PostgresServer:
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        msg = f"{ENV_URL} is not a PostgreSQL URL"
        raise PostgresUnavailable(msg)
    return PostgresServer(
        host=parsed.host or "127.0.0.1",
        port=parsed.port or 5432,
        user=parsed.username or "postgres",
        password=parsed.password or "",  # type: ignore[arg-type]
        admin_database=parsed.database or "postgres",
    )


def start_postgres(
    *, install: bool = True, durable: bool = False, host: str = "127.0.0.1", settings: tuple[str, ...] = ()
) -> PostgresServer:
    """A running server: the one ``MVSYNC_TEST_POSTGRES_URL`` names, or a new throwaway cluster.

    ``durable`` keeps PostgreSQL's default fsync behaviour (benchmarks); tests turn it off.
    ``settings`` (``name=value``) go after the harness's own, so they win: a test's server of its own
    with a setting no shared server may have (``max_connections=4``). A server the environment names
    has its own settings (see :attr:`PostgresServer.owned`).
    """
    env_url = os.environ.get(ENV_URL)
    if env_url:
        return _from_env(env_url)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        msg = "psycopg is not installed (pip install 'mvsync[postgres]')"
        raise PostgresUnavailable(msg) from None
    bin_dir = find_bin_dir()
    if bin_dir is None and install:
        _install()
        bin_dir = find_bin_dir()
    if bin_dir is None:
        msg = "PostgreSQL binaries not found under /usr/lib/postgresql/*/bin"
        raise PostgresUnavailable(msg)

    run_as: str | None = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            msg = "running as root but there is no 'postgres' user to run the server as"
            raise PostgresUnavailable(msg) from None
        run_as = owner.pw_name
    data_dir = Path(tempfile.mkdtemp(prefix="mvsync-pg-"))
    server = PostgresServer(
        host=host,
        port=0,
        user="mvsync",
        password=secrets.token_urlsafe(18),
        data_dir=data_dir,
        bin_dir=bin_dir,
        run_as=run_as,
    )
    try:
        if run_as is not None:
            os.chown(data_dir, owner.pw_uid, owner.pw_gid)
        pwfile = data_dir / "pwfile"
        pwfile.write_text(server.password + "\n")
        pwfile.chmod(0o600)
        if run_as is not None:
            os.chown(pwfile, owner.pw_uid, owner.pw_gid)
        cluster = data_dir / "cluster"
        _run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(cluster),
                "-U",
                server.user,
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
            run_as,
        )
        pwfile.unlink()
        if host not in ("127.0.0.1", "localhost"):  # initdb's pg_hba.conf admits loopback only
            with (cluster / "pg_hba.conf").open("a") as hba:
                hba.write(f"host all all {host}/32 scram-sha-256\n")
        given = [f"listen_addresses={host}", f"unix_socket_directories={data_dir}", "max_connections=200"]
        if not durable:
            given += _FAST_SETTINGS
        _start_cluster(server, [*given, *settings])
    except BaseException:
        server.stop()
        raise
    return server


def _start_cluster(server: PostgresServer, given: list[str]) -> None:
    """Start the cluster in ``server``'s data directory with the settings ``given``, on a free port (set in
    ``server``), trying another port when the one found was taken meanwhile."""
    assert server.data_dir is not None and server.bin_dir is not None
    data_dir, log_file = server.data_dir, server.data_dir / "server.log"
    for attempt in range(5):
        server.port = _free_port(server.host)
        options = " ".join(f"-c {s}" for s in [*given, f"port={server.port}"])
        start = ["start", "-D", str(data_dir / "cluster"), "-l", str(log_file), "-o", options, "-w", "-t", "60"]
        done = _run(
            [str(server.bin_dir / "pg_ctl"), *start],
            server.run_as,
            check=False,
        )
        if done.returncode == 0:
            return
        log = log_file.read_text(errors="replace") if log_file.exists() else ""
        if "could not bind" not in log or attempt == 4:
            msg = f"pg_ctl start failed: {(done.stderr or done.stdout).strip()[-400:]} {log[-800:]}"
            raise PostgresUnavailable(msg)


def start_standby(primary: PostgresServer) -> PostgresServer:
    """A hot standby of ``primary`` (a server :func:`start_postgres` started), streaming from it: what a read
    replica is, or what a DNS name points at after a failover went the wrong way.

    ``pg_basebackup -R`` copies the cluster and writes ``standby.signal`` with the connection to the
    primary (``-c fast``: a checkpoint now, not one spread over minutes); the standby takes the primary's
    settings, since a hot standby refuses to start with fewer connections than its primary allows.
    """
    if not primary.owned:
        msg = "a standby needs the harness's own PostgreSQL (MVSYNC_TEST_POSTGRES_URL is set)"
        raise PostgresUnavailable(msg)
    assert primary.bin_dir is not None
    data_dir = Path(tempfile.mkdtemp(prefix="mvsync-pg-standby-"))
    standby = PostgresServer(
        host=primary.host,
        port=0,
        user=primary.user,
        password=primary.password,
        data_dir=data_dir,
        bin_dir=primary.bin_dir,
        run_as=primary.run_as,
    )
    try:
        if primary.run_as is not None:
            owner = pwd.getpwnam(primary.run_as)
            os.chown(data_dir, owner.pw_uid, owner.pw_gid)
        backup = [str(primary.bin_dir / "pg_basebackup"), "-h", primary.host, "-p", str(primary.port)]
        backup += ["-U", primary.user, "-D", str(data_dir / "cluster"), "-R", "-X", "stream", "-c", "fast"]
        _run([*backup, "--no-sync"], primary.run_as, env={"PGPASSWORD": primary.password})
        given = [f"listen_addresses={primary.host}", f"unix_socket_directories={data_dir}", "max_connections=200"]
        _start_cluster(standby, [*given, *_FAST_SETTINGS])
    except BaseException:
        standby.stop()
        raise
    return standby


@contextlib.contextmanager
def postgres_server(*, install: bool = True, durable: bool = False) -> Iterator[PostgresServer]:
    """A server for the duration of the ``with`` (stopped and deleted afterwards if we started it)."""
    server = start_postgres(install=install, durable=durable)
    try:
        yield server
    finally:
        server.stop()
