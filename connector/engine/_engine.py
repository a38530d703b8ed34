"""``Engine``: runs run profiles step by step, with locks, history and dry runs.

The engine talks to connected directories only through connectors, and to nothing else but the
store. Typical use::

    engine = Engine(load_config("mvsync.toml"))
    result = engine.run_profile("Delta Synchronization")
    print(result.status)            # success, completed-*-errors, stopped-*
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from connector import metrics
from connector.config import (
    ConfigError,
    Deprovision,
    ExportFlow,
    ImportFlow,
    MvsyncConfig,
    RunStepConfig,
    RunStepKind,
    did_you_mean,
)
from connector.engine._abandoned import close_abandoned_runs, close_abandoned_steps, run_lock
from connector.engine._agents import load_metaverse_schema, open_connector, setting_paths, trust_problem
from connector.engine._context import NullProgress, Progress, StepContext
from connector.engine._export import run_export
from connector.engine._heap import return_freed_heap
from connector.engine._import import run_import
from connector.engine._results import (
    RunResult,
    StepResult,
    StepStopped,
    interruption_message,
    run_status,
    step_status,
    tie_to_run,
)
from connector.engine._sync import run_sync
from connector.engine.transforms import TransformRunner
from connector.net import setting_key
from connector.registry import load_connector
from connector.sdk import ConfigurationError, Connector, Schema, StopRunError
from connector.store import LockHeldError, RunHistory, SqlStore, StoreConnection, StoreError

__all__ = ["CONFIGURATION_STATUS", "Engine"]

#: The run status of a run refused before its first step because of its configuration (exit 2).
CONFIGURATION_STATUS = "stopped-configuration"

log = logging.getLogger("mvsync.engine")


def _aborted(exc: BaseException) -> tuple[str, str]:
    """The status and message history records for a run that ``exc`` ended."""
    if isinstance(exc, StoreError):  # read-only, damaged or busy (stopped-locked): recorded if it can be
        return exc.status, str(exc)
    if isinstance(exc, LockHeldError):  # another process holds an agent or the metaverse
        return "stopped-locked", str(exc)
    if isinstance(exc, ConfigError | ConfigurationError):  # found by a step (a folder gone, a CA file unreadable)
        return CONFIGURATION_STATUS, str(exc)
    # Ctrl-C, a signal, or a bug: history must not say success (a bug's text stays in the log:
    # history only says that it was not an interruption)
    return "stopped-interrupted", interruption_message(exc) or (
        f"stopped by an unexpected {type(exc).__name__} (a bug: the traceback is in the error output)"
    )


def _run_note(run: RunResult) -> dict[str, str]:
    """What the record of a run lock says of its holder: the run's id in history and its profile."""
    return {"run": f"run {run.run_id} ({run.profile!r})"}


def _holder_note(run: RunResult, seq: int, step: RunStepConfig) -> dict[str, str]:
    """What a refused run reads of the run holding a lock (beside its pid and host): the run's id in
    history, its profile and its step. Why: "locked by pid 4711" sent the operator hunting for the
    process; the run's id is what ``mvsync history show`` and the console find it by."""
    holder = "a dry run" if run.dry_run else f"run {run.run_id}"
    return {"run": f"{holder} ({run.profile!r}, step {seq}: {step.agent} {step.type.value})"}


def _run_connector_step(config: MvsyncConfig, ctx: StepContext, step: RunStepConfig) -> dict[str, Any] | None:
    """An import or export step: the agent's connector opened, run, and closed (also after a failure); the
    export's deletion-threshold report, if any. A dry-run export needs no connector (nothing is sent)."""
    needs_connector = not (step.type == RunStepKind.EXPORT and ctx.dry_run)
    connector = open_connector(config, step.agent, dry_run=ctx.dry_run) if needs_connector else None
    try:
        if connector is not None:
            connector.open()
        try:
            report = None
            if step.type == RunStepKind.EXPORT:
                report = run_export(ctx, connector)
            else:
                assert connector is not None
                run_import(ctx, connector, step.type == RunStepKind.FULL_IMPORT)
            _note(ctx.result, connector)
            return report
        finally:
            if connector is not None:
                connector.close()
    except ConfigurationError as exc:
        raise _in_config(exc, config, step.agent) from None


def _in_config(exc: ConfigurationError, config: MvsyncConfig, agent: str) -> ConfigurationError:
    """``exc`` naming its setting as the configuration file has it (``agents.ad.settings.ca_file``), and
    the file. Why: a connector names a setting it finds wrong during a step as its settings model spells
    it; "ca_file: ... does not exist" left the operator of several agents to guess which agent's."""
    if not exc.key or exc.key.startswith("agents."):
        return exc
    return exc.located(setting_key(agent, exc.key), exc.file or (str(config.path) if config.path else None))


def _note(result: StepResult, connector: Connector[Any] | None) -> None:
    """Add the connector's note on a step that ended normally (which server served it) to the step's
    message, after what the step already says (a resumed import says so first)."""
    note = connector.step_note() if connector is not None else None
    if note:
        result.message = f"{result.message}; {note}" if result.message else note


def _hold_run_lock(store: SqlStore, run: RunResult, held: contextlib.ExitStack) -> StoreError | None:
    """Hold the run's own lock in ``held``; the store error that kept it from being taken (a lock
    folder that cannot be used), for the run to stop with once its row is recorded: the run's history
    says why it stopped, as it did when the first step's lock was the first lock taken."""
    try:
        held.enter_context(store.locks.hold(run_lock(run.run_id), transient=True, note=_run_note(run)))
    except StoreError as exc:
        return exc
    return None


class Engine:
    """Runs steps and profiles of one configuration against its store."""

    def __init__(self, config: MvsyncConfig, *, store: SqlStore | None = None) -> None:
        self.config = config
        self.store = store or SqlStore(config.store_url())
        self.transforms = TransformRunner(self.store)
        self._mv_schema: Schema | None = None

    # ------------------------------------------------------------------------------ validation
    @property
    def mv_schema(self) -> Schema:
        if self._mv_schema is None:
            self._mv_schema = load_metaverse_schema(self.config)
        return self._mv_schema

    def validate(self) -> None:
        """Check rules against the metaverse schema and resolve every transform and connector type."""
        cfg, problems = self.config, []
        where = str(cfg.path) if cfg.path else "config"
        mv_attrs = {a.name for oc in self.mv_schema.object_classes for a in oc.attributes}
        mv_types = {oc.name for oc in self.mv_schema.object_classes}
        for name, agent in cfg.agents.items():
            try:
                cls = load_connector(agent.type)
            except ConfigurationError as exc:
                problems.append(f"{where}: agents.{name}.type: {exc}")
            else:
                if agent.deprovision == Deprovision.DELETE and not cls.capabilities.deletes_objects:
                    problems.append(
                        f'{where}: agents.{name}.deprovision = "delete", but the {agent.type} agent does not delete '
                        'objects (every person deprovisioned would be an export error): set deprovision = "disconnect"'
                    )
            for i, rule in enumerate(agent.projection):
                if rule.metaverse_type not in mv_types:
                    problems.append(
                        f"{where}: agents.{name}.projection[{i}].metaverse_type: unknown type {rule.metaverse_type!r}"
                    )
            for i, jrule in enumerate(agent.join):
                if jrule.metaverse_type not in mv_types:
                    problems.append(
                        f"{where}: agents.{name}.join[{i}].metaverse_type: unknown type {jrule.metaverse_type!r}"
                    )
                for cond in jrule.match:
                    if cond.mv not in mv_attrs:
                        problems.append(
                            f"{where}: agents.{name}.join[{i}].match: unknown metaverse attribute {cond.mv!r}"
                        )
            flow_sets: tuple[tuple[str, tuple[ImportFlow | ExportFlow, ...]], ...] = (
                ("import_flow", agent.import_flow),
                ("export_flow", agent.export_flow),
            )
            for kind, flows in flow_sets:
                for i, flow in enumerate(flows):
                    if flow.mv not in mv_attrs:
                        problems.append(
                            f"{where}: agents.{name}.{kind}[{i}].mv: unknown metaverse attribute {flow.mv!r}"
                        )
                    if flow.transform:
                        try:
                            self.transforms.validate(flow.transform)
                        except ConfigurationError as exc:
                            problems.append(f"{where}: agents.{name}.{kind}[{i}].transform: {exc}")
        for attr in cfg.metaverse.precedence:
            if attr not in mv_attrs:
                problems.append(f"{where}: metaverse.precedence.{attr}: unknown metaverse attribute")
        for profile_name, profile in cfg.run_profiles.items():
            for i, step in enumerate(profile.steps):
                at = f'{where}: run_profiles."{profile_name}".steps[{i}].deletion_threshold.attributes'
                problems += self._threshold_problems(at, step)
        if problems:
            raise ConfigError("\n".join(problems))

    def _threshold_problems(self, at: str, step: RunStepConfig) -> list[str]:
        """The deletion-threshold attributes of ``step`` that no export flow of its agent writes.

        Why: the threshold counts clears by the exact name the export flow stages; a name spelled
        otherwise (``thumbnailphoto`` for the flow's ``thumbnailPhoto``, as AD itself would accept)
        counted nothing, and a mass photo removal went through a threshold the engineer believed in.
        """
        if step.deletion_threshold is None:
            return []
        if step.type != RunStepKind.EXPORT:
            return self._import_threshold_problems(at, step)
        written = sorted({flow.cs for flow in self.config.agents[step.agent].export_flow})
        problems = []
        for attr in step.deletion_threshold.attributes:
            if attr in written:
                continue
            spelled = [name for name in written if name.lower() == attr.lower()]
            hint = f"did you mean {spelled[0]!r}?" if spelled else f"they write: {', '.join(written) or 'nothing'}"
            problems.append(
                f"{at}: no export flow of agent {step.agent!r} writes {attr!r}, "
                f"so its clears would never count ({hint})"
            )
        return problems

    @staticmethod
    def _import_threshold_problems(at: str, step: RunStepConfig) -> list[str]:
        """A deletion threshold outside an export step: read by a full import (object deletes only),
        by no other step. Why refused: a setting accepted and never read protects nothing."""
        if step.type != RunStepKind.FULL_IMPORT:
            return [
                f"{at.removesuffix('.attributes')}: a {step.type.value} step reads no deletion threshold "
                "(export steps and full imports do); move it to one of those"
            ]
        assert step.deletion_threshold is not None
        if step.deletion_threshold.attributes:
            return [f"{at}: a full import's threshold counts object deletes only; remove the attributes"]
        return []

    # ------------------------------------------------------------------------------------ runs
    def run_profile(
        self,
        name: str,
        *,
        dry_run: bool = False,
        agents: set[str] | None = None,
        progress: Progress | None = None,
        emit: Callable[[dict[str, Any]], None] | None = None,
        wait_s: float = 0.0,
        step_overrides: dict[str, Any] | None = None,
    ) -> RunResult:
        """Run a configured profile (optionally only the steps of some agents)."""
        if name not in self.config.run_profiles:
            known = ", ".join(repr(p) for p in self.config.run_profiles) or "none"
            hint = did_you_mean(name, self.config.run_profiles)
            msg = f"{self.config.path or 'config'}: no run profile {name!r}{hint} (configured: {known})"
            raise ConfigError(msg)
        unknown = sorted(set(agents or ()) - set(self.config.agents))
        if unknown:
            known = ", ".join(sorted(self.config.agents)) or "none"
            msg = f"{self.config.path or 'config'}: unknown agent(s) {', '.join(unknown)} (configured agents: {known})"
            raise ConfigError(msg)
        steps = [s for s in self.config.run_profiles[name].steps if agents is None or s.agent in agents]
        if agents is not None and not steps:
            msg = f"run profile {name!r} has no steps for agent(s) {', '.join(sorted(agents))}"
            raise ConfigError(msg)
        if step_overrides:
            steps = [s.model_copy(update=step_overrides) for s in steps]
        return self.run_steps(name, steps, dry_run=dry_run, progress=progress, emit=emit, wait_s=wait_s)

    def check_run(self, steps: list[RunStepConfig]) -> None:
        """Everything a run of ``steps`` needs from the configuration, checked before its first step.

        Why: a secret's variable unset for the third step's agent used to surface after the first
        two steps had run, as an interrupted step with no message. Here the rules and transforms
        validate, every agent of the run gets its connector built (settings validated, every secret
        reference resolved) and every path its settings name is checked; the first problem of each
        kind is reported together.
        """
        self.validate()
        where = str(self.config.path) if self.config.path else "config"
        # a step changed for this run (a raised threshold) is checked as it will run
        problems = [
            problem
            for step in steps
            for problem in self._threshold_problems(
                f"{where}: deletion_threshold.attributes of this run's export step of {step.agent!r}", step
            )
        ]
        for agent in dict.fromkeys(step.agent for step in steps):
            try:
                connector = open_connector(self.config, agent, dry_run=True)
            except (ConfigError, ConfigurationError) as exc:
                problems.append(str(exc))
                continue
            for field, _path, problem in setting_paths(connector.settings, agent):
                if problem:
                    problems.append(f"{where}: agents.{agent}.settings.{field}: {problem}")
            if trust := trust_problem(connector.settings):  # (the environment's: said once for all its agents)
                problems.append(trust)
        if problems:
            raise ConfigError("\n".join(dict.fromkeys(problems)))

    def run_steps(
        self,
        profile: str,
        steps: list[RunStepConfig],
        *,
        dry_run: bool = False,
        progress: Progress | None = None,
        emit: Callable[[dict[str, Any]], None] | None = None,
        wait_s: float = 0.0,
    ) -> RunResult:
        try:
            self.check_run(steps)
        except (ConfigError, ConfigurationError) as exc:
            if not dry_run:  # a dry run leaves no history (its id would name nothing)
                tie_to_run(exc, self._record_refused(profile, CONFIGURATION_STATUS, str(exc)))
            raise
        if dry_run and emit is None:
            emit = lambda _change: None  # noqa: E731 - a dry run always has a sink
        risk = self.store.network_warning()
        if risk:
            log.warning("%s", risk)
        self.store.refuse_read_only()
        self.store.wait_writable(wait_s, on_wait=log.warning)
        piling = None if dry_run else self.store.wal_warning()
        if piling:
            log.warning("%s", piling)
        # damage a run would not read must not be written on (SQLite; daily by default: it reads the whole file)
        self.store.check_pages(every_s=self.config.store.page_check_hours * 3600.0, record=not dry_run)
        if not dry_run:
            return self._run(profile, steps, dry_run, progress or NullProgress(), emit, wait_s)
        with self.store.dry_run():
            result = self._run(profile, steps, dry_run, progress or NullProgress(), emit, wait_s)
        # the dry run's history rows were rolled back with everything else: its ids name nothing
        result.run_id = None
        for step in result.steps:
            step.step_id = None
        return result

    def _record_refused(self, profile: str, status: str, message: str) -> int | None:
        """A run that ended before its first step, in history with its status and the message; its
        id (None: the store could not record it)."""
        run_id = None
        try:
            with self.store.transaction() as conn:
                run_id = RunHistory(conn).record_refused(profile, status, message, time.time())
        except StoreError as exc:  # the refusal is what to report; the store's trouble is logged
            log.warning("run of %r not recorded in history: %s", profile, exc)
        metrics.run_refused(profile, status)
        return run_id

    def _record(self, what: str, failing: bool, write: Callable[[StoreConnection], Any]) -> None:
        """Write a history record. When the run is already failing, a store fault here is logged
        rather than raised: the first error is the one the operator must see."""
        try:
            with self.store.transaction(guarded=False) as conn:  # the run's own record, even after a lost lock
                write(conn)
        except StoreError as exc:
            if not failing:
                raise
            log.warning("%s not recorded in history: %s", what, exc)

    def _run(
        self,
        profile: str,
        steps: list[RunStepConfig],
        dry_run: bool,
        progress: Progress,
        emit: Callable[[dict[str, Any]], None] | None,
        wait_s: float,
    ) -> RunResult:
        """Run ``steps`` as one run in history, holding the run's own lock from its start to its
        recorded end: the proof, for any later run on any host, that a run left ``in-progress`` whose
        lock is free has no process left (connector/engine/_abandoned.py)."""
        result = RunResult(profile=profile, run_id=None, dry_run=dry_run, started_at=time.time())
        with contextlib.ExitStack() as held:
            unlocked = self._start_run(result, held)
            return self._run_steps(result, steps, progress, emit, wait_s, unlocked)

    def _start_run(self, result: RunResult, held: contextlib.ExitStack) -> StoreError | None:
        """The run's history row, its run lock held in ``held`` (a real run) and the runs left in
        progress closed; the error that kept the run lock from being taken, if one did. The lock is
        taken before the row is committed, so that no other run ever sees the row of a live run with
        its lock free."""
        with self.store.transaction() as conn:
            history = RunHistory(conn)
            result.run_id = history.start_run(result.profile, dry_run=result.dry_run, started_at=result.started_at)
            unlocked = None if result.dry_run else _hold_run_lock(self.store, result, held)
            lock_free = None if result.dry_run or unlocked else self.store.locks.free
            close_abandoned_runs(history, by_run=result.run_id, lock_free=lock_free)
        return unlocked

    def _run_steps(
        self,
        result: RunResult,
        steps: list[RunStepConfig],
        progress: Progress,
        emit: Callable[[dict[str, Any]], None] | None,
        wait_s: float,
        unlocked: StoreError | None = None,
    ) -> RunResult:
        """Run ``steps`` and record the run's end (logged, not raised, when a failing run cannot);
        ``unlocked``: why the run lock could not be taken, the run's error (recorded as such)."""
        dry_run = result.dry_run
        aborted: str | None = None
        message: str | None = None
        try:
            if unlocked is not None:
                raise unlocked
            for seq, step in enumerate(steps, 1):
                step_result = self._run_step(result, seq, step, progress, emit, wait_s)
                result.steps.append(step_result)
                return_freed_heap()  # what the step freed, not kept at its size for the next (see _heap)
                if step_result.status.startswith("stopped-"):
                    break
        except BaseException as exc:
            aborted, message = _aborted(exc)
            if not dry_run:  # the dry run's row is rolled back: its id would name nothing
                tie_to_run(exc, result.run_id)
                if not result.steps_begun:  # locked out, or stopped while waiting: no step metric says it
                    metrics.run_refused(result.profile, aborted)
            raise
        finally:
            self.transforms.forget()  # what it computed is stored only if its transactions were kept
            result.end()
            result.status = aborted or (run_status(result.steps) if result.steps else "success")
            self._record(
                _end_of("run", result.run_id, dry_run=dry_run),
                aborted is not None,
                lambda conn: RunHistory(conn).finish_run(result.run_id, result.status, result.ended_at, message),
            )
        return result

    @contextlib.contextmanager
    def _locks(self, step: RunStepConfig, wait_s: float, note: dict[str, str] | None = None) -> Iterator[None]:
        """The step's locks; ``note`` (:func:`_holder_note`) names the run to any run they refuse."""
        with self.store.locks.hold(f"agent:{step.agent}", wait_s=wait_s, note=note):
            if step.type in (RunStepKind.FULL_SYNC, RunStepKind.DELTA_SYNC):
                with self.store.locks.hold("metaverse", wait_s=wait_s, note=note):
                    yield
            else:
                yield

    def _start_step(self, run: RunResult, seq: int, step: RunStepConfig, started_at: float) -> int:
        """The step's history row; the locks just taken also prove that a step they guard, still in
        progress, has no process left (it is closed as interrupted)."""
        with self.store.transaction() as conn:
            history = RunHistory(conn)
            syncing = step.type in (RunStepKind.FULL_SYNC, RunStepKind.DELTA_SYNC)
            close_abandoned_steps(history, step.agent, metaverse=syncing, by_run=run.run_id)
            step_id = history.start_step(run.run_id, seq, step.agent, step.type.value, started_at)
        run.steps_begun += 1  # from here the step is in the step metrics, however it ends
        return step_id

    def _run_step(
        self,
        run: RunResult,
        seq: int,
        step: RunStepConfig,
        progress: Progress,
        emit: Callable[[dict[str, Any]], None] | None,
        wait_s: float,
    ) -> StepResult:
        result = StepResult(agent=step.agent, kind=step.type.value, started_at=time.time())
        with self._locks(step, wait_s, _holder_note(run, seq, step)):
            result.step_id = self._start_step(run, seq, step, result.started_at)
            ctx = StepContext(self.store, self.config, step, result, result.step_id, progress, emit)
            report: dict[str, Any] | None = None
            failing = False
            try:
                if step.type in (RunStepKind.FULL_SYNC, RunStepKind.DELTA_SYNC):
                    run_sync(ctx, self.mv_schema, self.transforms, step.type == RunStepKind.FULL_SYNC)
                else:
                    report = _run_connector_step(self.config, ctx, step)
                result.status = step_status(result)
            except StepStopped as exc:
                result.status, result.message = exc.status, exc.message
                report = exc.report if exc.report is not None else report
            except StopRunError as exc:
                result.status, result.message = exc.status, str(exc)
            except StoreError as exc:  # the store failed under the step: the run cannot go on
                failing = True
                exc = exc.at(self.store.where)  # a document decoded after its read names no store
                result.status, result.message = exc.status, str(exc)
                raise exc from None
            except (ConfigError, ConfigurationError) as exc:  # the setting is named: the user can fix it
                failing = True
                result.status, result.message = CONFIGURATION_STATUS, str(exc)
                raise
            except Exception as exc:  # a connector bug must not take history down with it
                log.exception("step %s of %s failed", step.type.value, step.agent)
                result.status = "stopped-connector-exception"
                result.message = f"{type(exc).__name__}: {exc}"
            except BaseException as exc:  # Ctrl-C, a signal: recorded as stopped-interrupted below
                failing = True
                why = interruption_message(exc)
                if why:  # after what the step already said (a resumed import says so first)
                    result.message = f"{result.message}; {why}" if result.message else why
                raise
            finally:
                progress.finish()
                result.end()
                counters: dict[str, Any] = dict(result.counters)
                if report is not None:
                    counters["deletion_threshold"] = report
                final = result.status if result.status != "in-progress" else "stopped-interrupted"
                self._record(
                    _end_of("step", result.step_id, dry_run=run.dry_run, seq=seq),
                    failing,
                    lambda conn: RunHistory(conn).finish_step(
                        result.step_id,
                        final,
                        result.ended_at,
                        json.dumps(counters, default=str),
                        result.message or None,
                    ),
                )
                seconds = result.ended_at - result.started_at
                metrics.step(step.agent, step.type.value, final, seconds, counters, result.error_count)
                # one line per step, with the figures as fields for JSON log shippers (--log-format json)
                log.log(
                    logging.WARNING if final.startswith("stopped") else logging.INFO,
                    "%s %s: %s in %.2f s (%d errors)%s",
                    step.agent,
                    step.type.value,
                    final,
                    seconds,
                    result.error_count,
                    f": {result.message}" if result.message else "",
                    extra={
                        "run_id": run.run_id,
                        "agent": step.agent,
                        "step": step.type.value,
                        "status": final,
                        "seconds": round(seconds, 3),
                        "errors": result.error_count,
                        "counters": json.dumps(counters, default=str),
                    },
                )
        return result

    def close(self) -> None:
        self.store.close()


def _end_of(record: str, row_id: int | None, *, dry_run: bool, seq: int | None = None) -> str:
    """How the log names the end of a run or step (``record``) that could not be written to history.

    Why not its id in a dry run: the dry run's history rows are rolled back with everything else, so
    "the end of run 5 not recorded" named a run that never was in history (and ``--json`` says
    ``run_id: null``); a dry run's step is named by its place in the run instead.
    """
    if not dry_run:
        return f"the end of {record} {row_id}"
    return "the end of the dry run" if seq is None else f"the end of the dry run's step {seq}"
