"""Kill -9 a real ``mvsync run`` at chosen points, rerun it, and check that nothing was lost.

Used by ``tests/resilience/test_crashes.py`` and ``mvsync bench resilience`` (from a source checkout:
this is POSIX-only test machinery, SIGSTOP and SIGKILL, kept out of the installed package).

Why kill points are *events*, not timers: a kill after a random delay lands wherever two busy
shared cores happened to be; a kill at "the 7th store commit of the export phase" or "right after
the 3rd LDAP write" lands at the same place on every run with the same seed, so a failed trial can
be replayed. The killed process is the real CLI (``mvsync run PROFILE -c CONFIG``): a
``sitecustomize`` module put on its ``PYTHONPATH`` (:func:`write_shim`) calls
:func:`install_from_env`, which — only when ``MVSYNC_CRASH_PLAN`` is set — counts events:

``begin``       a store transaction starts (the previous unit of work is committed)
``commit``      a store transaction is about to commit (killing here loses that unit of work)
``http``        an HTTPS request (Graph or the token endpoint) is about to be sent
``ldap-write``  the DC has just applied an LDAP modify the store does not know about yet

each tagged with the phase the engine is in (``import``, ``sync``, ``export``, ``other``). At the
planned event the child records it and stops itself with SIGSTOP (freezing every thread at once,
so nothing runs on after the point); the parent then sends SIGKILL from outside: no cleanup
handler, ``finally`` or ``atexit`` runs. With ``MVSYNC_CRASH_PLAN=count`` nothing is killed and the
counts are written at exit; a reference run uses that to choose points that exist.

Some counts depend on timing (how many HTTP requests an import makes depends on how its photo
workers happen to batch), so a run may make fewer events than the reference did. A point therefore
also names the *entry* into its phase (the n-th step in that phase) in which the reference saw the
last event of its kind; a run that leaves that entry before the planned event is stopped there,
after its last event of that kind. Every trial is killed in the part of the run it planned for.

A trial (:class:`CrashLab`): a fresh directory OU (Samba) or LDIF snapshot, store and agent data;
"Full Cycle" killed at the trial's point; the same profile rerun as an operator would; then the
state is compared with an uninterrupted run (metaverse, directory photos), and one more
"Delta Cycle" must find nothing to do: no pending export, no export, no directory object written.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ENV_PLAN",
    "ENV_REPORT",
    "ENV_RESUME",
    "ENV_SIGNALS_ELSEWHERE",
    "KINDS",
    "PHASES",
    "CliRun",
    "CrashLab",
    "CrashPoint",
    "CrashSummary",
    "TrialResult",
    "WorldState",
    "cli_env",
    "install_from_env",
    "lab_emulator_config",
    "lab_tag",
    "mvsync_command",
    "paused_cli",
    "run_cli",
    "write_shim",
]

ENV_PLAN = "MVSYNC_CRASH_PLAN"
ENV_REPORT = "MVSYNC_CRASH_REPORT"
ENV_RESUME = "MVSYNC_CRASH_RESUME"
#: Set: the stopped thread blocks the stop signals first, so one sent during the stop lands on another thread.
ENV_SIGNALS_ELSEWHERE = "MVSYNC_CRASH_SIGNALS_ELSEWHERE"
#: The signals ``mvsync run`` stops on (Ctrl-C, and those connector.cli treats as Ctrl-C) that exist here.
_STOP_SIGNALS = {getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)}
PHASES = ("import", "sync", "export")
KINDS = ("begin", "commit", "http", "ldap-write")

#: Metaverse attributes that name one directory object (a new OU per trial gives new GUIDs).
_PER_DIRECTORY = frozenset({"adObjectGUID"})


@dataclass(frozen=True)
class CrashPoint:
    """Kill at the ``n``-th (1-based) event of ``kind`` counted while the engine is in ``phase``."""

    phase: str
    kind: str
    n: int
    #: the entry into ``phase`` (1-based) at whose end to stop if the n-th event has not come (0: none)
    entry: int = 0

    def spec(self) -> str:
        base = f"{self.phase}:{self.kind}:{self.n}"
        return f"{base}:{self.entry}" if self.entry else base

    @classmethod
    def parse(cls, spec: str) -> CrashPoint:
        phase, kind, n, *entry = spec.split(":")
        return cls(phase, kind, int(n), int(entry[0]) if entry else 0)


# ------------------------------------------------------------------------------------- child side
class _Hooks:
    """Event counters inside the child; ``fire`` stops the process at the planned event."""

    def __init__(self, plan: CrashPoint | None, report: Path) -> None:
        self.plan = plan
        self.report = report
        self.phase = "other"
        self.counts: Counter[str] = Counter()
        #: entries into each phase so far, and per phase:kind the entry of its last event
        self.entries: Counter[str] = Counter()
        self.last_entry: dict[str, int] = {}
        self._lock = threading.Lock()

    def fire(self, kind: str) -> None:
        with self._lock:
            key = f"{self.phase}:{kind}"
            self.counts[key] += 1
            self.last_entry[key] = self.entries[self.phase]
            hit = self.plan is not None and (self.plan.phase, self.plan.kind, self.plan.n) == (
                self.phase,
                kind,
                self.counts[key],
            )
            if hit:
                self._stop_here(key, late=False)

    def _stop_here(self, key: str, *, late: bool) -> None:
        self.report.write_text(json.dumps({"fired": key, "n": self.counts[key], "late": late, "pid": os.getpid()}))
        if os.environ.get(ENV_SIGNALS_ELSEWHERE):
            signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        # Freeze every thread now; the parent's SIGKILL follows. (The lock stays held: nothing
        # in this process may run on past the point.) A pause (ENV_RESUME) goes on at SIGCONT.
        os.kill(os.getpid(), signal.SIGSTOP)
        if os.environ.get(ENV_RESUME):
            return
        # Reached only when someone sends SIGCONT: wait for the SIGKILL, or for the Python handler of a
        # signal sent during the stop (SIGTERM) to raise here. In short sleeps: the kernel gives that
        # signal to whichever thread takes it first when they go on, and one taken by another thread does
        # not interrupt a sleep in this one; CPython runs the handler in the main thread only when it next
        # runs bytecode. One sleep of an hour could hang the SIGTERM test (once in CI) when this thread lost that race.
        deadline = time.monotonic() + 3600
        while time.monotonic() < deadline:
            time.sleep(0.05)

    def write_counts(self) -> None:
        self.report.write_text(json.dumps({"counts": dict(self.counts), "entries": self.last_entry}))

    @contextlib.contextmanager
    def in_phase(self, phase: str) -> Iterator[None]:
        previous, self.phase = self.phase, phase
        self.entries[phase] += 1
        entry = self.entries[phase]
        try:
            yield
        finally:
            self.phase = previous
            plan = self.plan
            if plan is not None and (plan.phase, plan.entry) == (phase, entry):
                with self._lock:  # the planned event did not come in time: stop after the last one
                    self._stop_here(f"{plan.phase}:{plan.kind}", late=True)


def install_from_env() -> None:
    """Install the counting hooks when ``MVSYNC_CRASH_PLAN`` is set (called by the shim)."""
    spec = os.environ.get(ENV_PLAN)
    report = os.environ.get(ENV_REPORT)
    if not spec or not report:
        return
    hooks = _Hooks(None if spec == "count" else CrashPoint.parse(spec), Path(report))
    if spec == "count":
        atexit.register(hooks.write_counts)

    from sqlalchemy import event
    from sqlalchemy.engine import Engine as SAEngine

    event.listen(SAEngine, "begin", lambda _conn: hooks.fire("begin"))
    event.listen(SAEngine, "commit", lambda _conn: hooks.fire("commit"))

    import requests.adapters

    send = requests.adapters.HTTPAdapter.send

    def counted_send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        hooks.fire("http")
        return send(self, request, *args, **kwargs)

    requests.adapters.HTTPAdapter.send = counted_send  # type: ignore[method-assign]

    import ldap3

    modify = ldap3.Connection.modify

    def counted_modify(self: Any, *args: Any, **kwargs: Any) -> Any:
        result = modify(self, *args, **kwargs)
        hooks.fire("ldap-write")
        return result

    ldap3.Connection.modify = counted_modify

    from connector.engine import _engine

    def phased(phase: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def run(*args: Any, **kwargs: Any) -> Any:
            with hooks.in_phase(phase):
                return fn(*args, **kwargs)

        return run

    _engine.run_import = phased("import", _engine.run_import)  # type: ignore[attr-defined]
    _engine.run_sync = phased("sync", _engine.run_sync)  # type: ignore[attr-defined]
    _engine.run_export = phased("export", _engine.run_export)  # type: ignore[attr-defined]


_SOURCE_ROOT = Path(__file__).resolve().parents[2]

_SHIM = """\
# Written by tests.harness.crash: crash-test hooks for mvsync child processes.
import os
if os.environ.get({plan!r}):
    from tests.harness.crash import install_from_env

    install_from_env()
"""


def write_shim(directory: Path) -> Path:
    """A folder holding the ``sitecustomize`` that installs the hooks; put it on PYTHONPATH."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sitecustomize.py").write_text(_SHIM.format(plan=ENV_PLAN), encoding="utf-8")
    return directory


# ------------------------------------------------------------------------------------ parent side
def mvsync_command() -> list[str]:
    """The installed ``mvsync`` console script of this interpreter (the real CLI)."""
    beside = Path(sys.executable).with_name("mvsync")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("mvsync")
    if found:
        return [found]
    return [sys.executable, "-c", "from connector.cli import main; main()"]


def mvsync_child(*args: str) -> subprocess.Popen[str]:
    """The real CLI started with ``args`` in a child process, its output captured as text."""
    return subprocess.Popen([*mvsync_command(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@dataclass
class CliRun:
    """One child run: killed at ``fired`` or exited with ``returncode``."""

    returncode: int | None
    killed: bool
    fired: str | None
    counts: dict[str, int]
    seconds: float
    stdout: str
    stderr: str
    #: per phase:kind, the entry into that phase of its last event (a ``count`` run's)
    entries: dict[str, int] = field(default_factory=dict)

    @property
    def result(self) -> dict[str, Any] | None:
        """The run's ``--json`` result, if it finished and printed one."""
        for line in reversed(self.stdout.splitlines()):
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict) and "steps" in doc:
                    return doc
        return None


def _await_child(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait until the child exits (False) or stops itself at the kill point (True); bounded."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status = os.waitpid(proc.pid, os.WNOHANG | os.WUNTRACED)
        if pid:
            if os.WIFSTOPPED(status):
                return True
            proc.returncode = os.waitstatus_to_exitcode(status)
            return False
        if time.monotonic() > deadline:
            os.kill(proc.pid, signal.SIGKILL)
            os.waitpid(proc.pid, 0)
            proc.returncode = -signal.SIGKILL
            msg = f"mvsync child {proc.pid} did not finish within {timeout:.0f}s (killed)"
            raise TimeoutError(msg)
        time.sleep(0.02)


def default_sigint() -> None:
    """A ``preexec_fn`` for a child that is to take Ctrl-C (SIGINT) as a terminal's user would.

    Why: a test session started in the background (nohup, a CI shell's ``&``) hands its children SIGINT
    ignored, as POSIX has background jobs, and Python then installs no Ctrl-C handler: the child ran on
    through the SIGINT a test sent it. Runs in the child before exec, when it has no threads."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def paused_cli(
    args: Sequence[str], env: dict[str, str], *, timeout: float = 300.0, sigint: bool = False
) -> Iterator[subprocess.Popen[bytes]]:
    """A real ``mvsync ARGS`` child, stopped at the crash point its ``env`` (:func:`cli_env`) plans;
    the caller signals it (SIGCONT lets a ``resume`` child go on) and reads its output. A child still
    running when the block ends is killed. ``sigint``: the child takes SIGINT (:func:`default_sigint`)."""
    proc = subprocess.Popen(
        [*mvsync_command(), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        preexec_fn=default_sigint if sigint else None,
    )
    try:
        assert _await_child(proc, timeout=timeout), f"mvsync {' '.join(args)} ended before its planned stop"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def cli_env(
    shim: Path,
    plan: CrashPoint | str | None,
    report: Path,
    env: dict[str, str] | None = None,
    *,
    resume: bool = False,
    signals_elsewhere: bool = False,
) -> dict[str, str]:
    """The environment of an ``mvsync`` child that stops itself at ``plan`` (SIGSTOP), ``report`` saying where.

    ``resume``: the stop is a pause, and the child goes on once the parent sends SIGCONT (to change
    something under it, such as the clock); otherwise it waits for the parent's SIGKILL.
    ``signals_elsewhere``: a stop signal (SIGINT, SIGTERM, SIGHUP) sent while it is stopped lands on
    another of its threads, not the one that stopped (which blocks them), as the kernel may choose.
    """
    child_env = dict(env if env is not None else os.environ)
    # the shim imports tests.harness.crash, so the source checkout goes on the path too
    paths = (str(shim), str(_SOURCE_ROOT), child_env.get("PYTHONPATH", ""))
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    for name in (ENV_PLAN, ENV_RESUME, ENV_SIGNALS_ELSEWHERE):
        child_env.pop(name, None)
    if plan is not None:
        child_env[ENV_PLAN] = plan.spec() if isinstance(plan, CrashPoint) else plan
        child_env[ENV_REPORT] = str(report)
    if resume:
        child_env[ENV_RESUME] = "1"
    if signals_elsewhere:
        child_env[ENV_SIGNALS_ELSEWHERE] = "1"
    return child_env


def run_cli(
    args: Sequence[str],
    *,
    workdir: Path,
    shim: Path,
    plan: CrashPoint | str | None = None,
    timeout: float = 300.0,
    env: dict[str, str] | None = None,
) -> CliRun:
    """Run ``mvsync ARGS`` in a child; with a ``plan``, kill -9 it at that point (or ``count``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    report = workdir / f"crash-report-{time.monotonic_ns()}.json"
    child_env = cli_env(shim, plan, report, env)
    out_path, err_path = workdir / "child.stdout", workdir / "child.stderr"
    started = time.monotonic()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [*mvsync_command(), *args], stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=child_env
        )
        stopped = _await_child(proc, timeout)
        if stopped:
            os.kill(proc.pid, signal.SIGKILL)  # kill -9, from outside
            os.waitpid(proc.pid, 0)
            proc.returncode = -signal.SIGKILL
    info: dict[str, Any] = {}
    if report.is_file():
        with contextlib.suppress(ValueError):
            info = json.loads(report.read_text())
        report.unlink()
    return CliRun(
        returncode=proc.returncode,
        killed=stopped,
        fired=info.get("fired"),
        counts=dict(info.get("counts", {})),
        seconds=time.monotonic() - started,
        stdout=out_path.read_text(errors="replace"),
        stderr=err_path.read_text(errors="replace"),
        entries=dict(info.get("entries", {})),
    )


# ------------------------------------------------------------------------------------- the world
@dataclass
class WorldState:
    """What must match an uninterrupted run: people in the metaverse and photos in the directory."""

    metaverse: dict[str, dict[str, Any]]
    directory: dict[str, str | None]
    usn: dict[str, int]
    pending_exports: int
    pending_imports: int

    def comparable(self) -> tuple[dict[str, dict[str, Any]], dict[str, str | None]]:
        return self.metaverse, self.directory


def _sha(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data else None


def metaverse_state(store_url: str) -> tuple[dict[str, dict[str, Any]], int, int]:
    """Metaverse people by account name (per-directory ids left out), pending exports and imports."""
    from sqlalchemy import func, select

    from connector.store import SqlStore, loads
    from connector.store.tables import cs_object, mv_object

    store = SqlStore(store_url)
    try:
        with store.read() as conn:
            people: dict[str, dict[str, Any]] = {}
            for row in conn.execute(select(mv_object.c.id, mv_object.c.attributes)):
                attrs = {
                    k: v
                    for k, v in loads(row.attributes, "mv_object", row.id, "attributes").items()
                    if k not in _PER_DIRECTORY
                }
                people[str(attrs.get("accountName") or attrs.get("userPrincipalName") or row.id)] = attrs
            exports = conn.execute(
                select(func.count()).select_from(cs_object).where(cs_object.c.export_type.is_not(None))
            ).scalar_one()
            imports = conn.execute(
                select(func.count()).select_from(cs_object).where(cs_object.c.pending_type.is_not(None))
            ).scalar_one()
    finally:
        store.close()
    return people, int(exports), int(imports)


@dataclass
class TrialResult:
    index: int
    point: str
    killed: bool
    fired: str | None
    killed_exit: int | None
    rerun_status: str
    converged: bool
    photos_lost: int
    writes_after_convergence: int
    pending_after_convergence: int
    noop_exports: int
    doctor: str
    seconds: float
    problems: list[str] = field(default_factory=list)


@dataclass
class CrashSummary:
    directory: str
    trials: list[TrialResult]
    reference_counts: dict[str, int]
    seconds: float

    def as_dict(self) -> dict[str, Any]:
        by_phase: Counter[str] = Counter(t.point.split(":")[0] for t in self.trials)
        return {
            "directory": self.directory,
            "trials": len(self.trials),
            "killed": sum(t.killed for t in self.trials),
            "converged": sum(t.converged for t in self.trials),
            "by_phase": dict(by_phase),
            "photos_lost": sum(t.photos_lost for t in self.trials),
            "writes_after_convergence": sum(t.writes_after_convergence for t in self.trials),
            "pending_after_convergence": sum(t.pending_after_convergence for t in self.trials),
            "doctor": sorted({t.doctor for t in self.trials}),
            "failures": [asdict(t) for t in self.trials if t.problems],
            "points": [t.point for t in self.trials],
            "seconds": round(self.seconds, 1),
        }


def lab_tag() -> str:
    """Per process: names a lab's OU, account prefix and tenant domain.

    A DC enforces unique ``sAMAccountName`` and ``userPrincipalName`` across the domain, and other
    test sessions (or a leftover OU of a killed one) may hold the same tenant's names.
    """
    return f"r{os.getpid() % 100000}"


def lab_emulator_config(users: int = 24, seed: int = 5, **fields: Any) -> Any:
    """The tenant crash trials and fault tests use: small, numbered users, a domain of its own."""
    from connector.demo import DEMO_SCOPES
    from connector.emulator import EmulatorConfig

    fields.setdefault("delegated_scopes", DEMO_SCOPES)
    fields.setdefault("domain", f"{lab_tag()}.resilience.example")
    return EmulatorConfig(users=users, photo_ratio=0.6, seed=seed, naming="numbered", **fields)


class CrashLab:
    """Builds identical worlds (tenant, directory, HR folder, store) and runs crash trials in them.

    ``ad`` is a ``tests.harness.samba_dc.ADSettings`` (a real DC: every world is the same OU,
    recreated) or None (the demo's LDIF snapshot stand-in). Account names get a per-process prefix
    so a shared DC never sees two test sessions create the same ``sAMAccountName``.
    """

    PROFILE = "Full Cycle"
    CHECK_PROFILE = "Delta Cycle"

    def __init__(self, root: Path, emulator: Any, *, ad: Any = None, ou: str | None = None) -> None:
        self.root = root
        self.emulator = emulator
        self.ad = ad
        self.tag = lab_tag()
        self.ou = ou or f"OU=mvsync-crash-{self.tag}"
        self.shim = write_shim(root / "shim")
        self.users = emulator.admin.users()

    @property
    def directory_kind(self) -> str:
        return "samba" if self.ad is not None else "ldif-snapshot"

    # -- worlds -------------------------------------------------------------------------------------
    def prepare(self, name: str) -> Any:
        """A fresh world under ``root/name``: directory users without photos, empty store."""
        from connector.demo import prepare_scenario

        world = self.root / name
        if world.exists():
            shutil.rmtree(world)
        world.mkdir(parents=True)
        return prepare_scenario(
            world,
            self.emulator.info,
            self.users,
            ad=self.ad,
            ad_ou=self.ou,
            fallbacks=2,
            account_prefix=f"{self.tag}-",
        )

    def cleanup(self) -> None:
        """Remove the OU from a real directory (worlds on disk go with ``root``)."""
        if self.ad is None:
            return
        from tests.harness.samba_dc import connect, delete_subtree

        conn = connect(self.ad)
        try:
            delete_subtree(conn, f"{self.ou},{self.ad.base_dn}")
        finally:
            conn.unbind()

    def run(self, scenario: Any, profile: str, plan: CrashPoint | str | None = None) -> CliRun:
        args = ["run", profile, "-c", str(scenario.config_path), "--json"]
        return run_cli(args, workdir=scenario.root / "runs", shim=self.shim, plan=plan)

    def directory(self, scenario: Any) -> tuple[dict[str, str | None], dict[str, int]]:
        """sAMAccountName -> sha256 of thumbnailPhoto, and -> uSNChanged."""
        photos: dict[str, str | None] = {}
        usns: dict[str, int] = {}
        if self.ad is None:
            from connector.demo import read_ldif

            for entry in read_ldif(scenario.snapshot):
                sam = str(entry["sAMAccountName"])
                photos[sam] = _sha(entry.get("thumbnailPhoto"))
                usns[sam] = int(entry.get("uSNChanged", 0))
            return photos, usns
        from ldap3 import SUBTREE

        from tests.harness.samba_dc import connect

        conn = connect(self.ad)
        try:
            conn.search(
                f"{self.ou},{self.ad.base_dn}",
                "(objectClass=user)",
                SUBTREE,
                attributes=["sAMAccountName", "thumbnailPhoto", "uSNChanged"],
            )
            for entry in conn.response:
                if entry.get("type") != "searchResEntry":
                    continue
                raw = entry["raw_attributes"]
                sam = raw["sAMAccountName"][0].decode()
                photos[sam] = _sha(raw["thumbnailPhoto"][0] if raw.get("thumbnailPhoto") else None)
                usns[sam] = int(raw["uSNChanged"][0])
        finally:
            conn.unbind()
        return photos, usns

    def state(self, scenario: Any) -> WorldState:
        from connector.config import load_config

        people, exports, imports = metaverse_state(load_config(scenario.config_path).store_url())
        photos, usns = self.directory(scenario)
        return WorldState(people, photos, usns, exports, imports)

    def noop_cycle(self, scenario: Any) -> tuple[int, str]:
        """One more scheduled cycle in-process: exports it made, and its status."""
        from connector.config import load_config
        from connector.engine import Engine

        engine = Engine(load_config(scenario.config_path))
        try:
            result = engine.run_profile(self.CHECK_PROFILE)
        finally:
            engine.close()
        sent = sum(
            int(s.counters.get(k, 0))
            for s in result.steps
            if s.kind == "export"
            for k in ("export_updates", "export_adds", "export_deletes")
        )
        return sent, result.status

    def doctor(self, scenario: Any) -> str:
        """``mvsync doctor`` on the converged world: passed / failed / not-available."""
        try:
            import connector.doctor  # noqa: F401
        except ModuleNotFoundError:
            return "not-available"
        done = run_cli(
            ["doctor", "-c", str(scenario.config_path), "--json"], workdir=scenario.root / "doctor", shim=self.shim
        )
        if done.returncode == 0:
            return "passed"
        return f"failed (exit {done.returncode}): {(done.stdout or done.stderr)[-600:]}"

    # -- trials -------------------------------------------------------------------------------------
    def reference(self) -> tuple[WorldState, dict[str, int], dict[str, int]]:
        """An uninterrupted "Full Cycle" (its events counted): the state every trial must reach."""
        scenario = self.prepare("reference")
        run = self.run(scenario, self.PROFILE, plan="count")
        if run.returncode not in (0, 3):
            msg = f"the reference run failed (exit {run.returncode}): {run.stderr[-2000:]}"
            raise RuntimeError(msg)
        return self.state(scenario), run.counts, run.entries

    @staticmethod
    def choose(index: int, seed: int, counts: dict[str, int], entries: dict[str, int] | None = None) -> CrashPoint:
        """The trial's kill point: phases in turn; kind and position drawn from the seed.

        ``entries`` (the reference's entry of each kind's last event) makes the point certain to be
        reached: a run that makes fewer events of that kind than the reference (HTTP requests
        depend on how the photo workers happen to batch) stops after its last one instead.
        """
        rng = random.Random(f"mvsync-crash:{seed}:{index}")
        phase = PHASES[index % len(PHASES)]
        kinds = sorted(k.split(":", 1)[1] for k, n in counts.items() if k.startswith(f"{phase}:") and n > 0)
        if not kinds:
            return CrashPoint(phase, "begin", 1)
        kind = rng.choice(kinds)
        key = f"{phase}:{kind}"
        return CrashPoint(phase, kind, rng.randint(1, counts[key]), (entries or {}).get(key, 0))

    def trial(self, index: int, point: CrashPoint, reference: WorldState) -> TrialResult:
        started = time.monotonic()
        scenario = self.prepare(f"trial-{index:03d}")
        killed = self.run(scenario, self.PROFILE, plan=point)
        rerun = self.run(scenario, self.PROFILE)
        doc = rerun.result or {}
        state = self.state(scenario)
        problems: list[str] = []
        if rerun.returncode not in (0, 3):
            problems.append(f"rerun exit {rerun.returncode}: {rerun.stderr[-1000:]}")
        converged = state.comparable() == reference.comparable()
        if not converged:
            problems.extend(_differences(reference, state))
        lost = sum(
            1 for sam, sha in reference.directory.items() if sha is not None and state.directory.get(sam) != sha
        ) + sum(
            1
            for name, attrs in reference.metaverse.items()
            if attrs.get("photoChecksum")
            and state.metaverse.get(name, {}).get("photoChecksum") != attrs["photoChecksum"]
        )
        sent, status = self.noop_cycle(scenario)
        after = self.state(scenario)
        rewritten = sum(1 for sam, usn in after.usn.items() if state.usn.get(sam) != usn)
        if sent or rewritten or after.pending_exports:
            problems.append(
                f"no-op cycle ({status}): {sent} exports, {rewritten} objects written, "
                f"{after.pending_exports} pending exports"
            )
        return TrialResult(
            index=index,
            point=point.spec(),
            killed=killed.killed,
            fired=killed.fired,
            killed_exit=killed.returncode,
            rerun_status=str(doc.get("status", f"exit {rerun.returncode}")),
            converged=converged,
            photos_lost=lost,
            writes_after_convergence=rewritten + sent,
            pending_after_convergence=after.pending_exports,
            noop_exports=sent,
            doctor=self.doctor(scenario),
            seconds=round(time.monotonic() - started, 2),
            problems=problems,
        )

    def run_trials(self, trials: int, seed: int, *, say: Callable[[str], None] | None = None) -> CrashSummary:
        started = time.monotonic()
        reference, counts, entries = self.reference()
        results = []
        for index in range(trials):
            point = self.choose(index, seed, counts, entries)
            result = self.trial(index, point, reference)
            if say is not None:
                say(f"trial {index}: {point.spec()} killed={result.killed} converged={result.converged}")
            results.append(result)
            shutil.rmtree(self.root / f"trial-{index:03d}", ignore_errors=True)
        return CrashSummary(self.directory_kind, results, counts, time.monotonic() - started)


def _differences(reference: WorldState, state: WorldState, limit: int = 5) -> list[str]:
    out = []
    for name in sorted(set(reference.metaverse) | set(state.metaverse)):
        a, b = reference.metaverse.get(name), state.metaverse.get(name)
        if a != b:
            keys = sorted(k for k in set(a or {}) | set(b or {}) if (a or {}).get(k) != (b or {}).get(k))
            out.append(f"metaverse {name}: {', '.join(keys) if a and b else 'missing' if b is None else 'extra'}")
    for sam in sorted(set(reference.directory) | set(state.directory)):
        if reference.directory.get(sam) != state.directory.get(sam):
            out.append(f"directory {sam}: thumbnailPhoto differs")
    return out[:limit] + ([f"... {len(out) - limit} more"] if len(out) > limit else [])
