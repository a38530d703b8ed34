"""``mvsync history clear`` (MIM's *Clear Runs*) on both backends: old finished runs go with their
steps and per-object errors; runs in progress and each agent's latest step of a kind stay."""

from __future__ import annotations

import json
import time
from pathlib import Path

from typer.testing import CliRunner

from connector.cli import app
from connector.store import ClearedRuns, RunHistory, SqlStore
from tests.store.test_repositories import _Error

DAY = 86_400.0


def _run(
    history: RunHistory, days_ago: float, steps: list[tuple[str, str]], *, errors: int = 2, end: bool = True
) -> int:
    started = time.time() - days_ago * DAY
    run_id = history.start_run("Delta Cycle", dry_run=False, started_at=started)
    for seq, (agent, kind) in enumerate(steps, 1):
        step_id = history.start_step(run_id, seq, agent, kind, started + seq)
        history.record_errors(step_id, [_Error(stage="import") for _ in range(errors)])
        history.finish_step(step_id, "completed-import-errors", started + seq + 1, "{}", None)
    if end:
        history.finish_run(run_id, "completed-import-errors", started + 10, None)
    return run_id


def test_old_finished_runs_go_with_their_steps_and_errors_and_the_latest_steps_stay(store_url: str) -> None:
    store = SqlStore(store_url)
    try:
        with store.transaction() as conn:
            history = RunHistory(conn)
            old = [_run(history, 100 - i, [("exo", "delta-import"), ("ad", "export")]) for i in range(25)]
            stuck = _run(history, 90, [("exo", "delta-import")], end=False)  # a process may yet end it
            only_full = _run(history, 80, [("exo", "full-import")])  # the agent's latest full import
            recent = _run(history, 1, [("exo", "delta-import")])
            latest_export = _run(history, 70, [("ad", "export")])
        cleared = ClearedRuns()
        while True:  # as the CLI does: small transactions until nothing is left to clear
            with store.transaction() as conn:
                batch = RunHistory(conn).clear_before(time.time() - 30 * DAY, limit=10)
            cleared += batch
            if not batch.runs:
                break
        assert cleared == ClearedRuns(runs=25, steps=50, errors=100)
        with store.read() as conn:
            history = RunHistory(conn)
            left = {r.id for r in history.recent_runs(100)}
            assert left == {stuck, only_full, recent, latest_export}
            assert not set(old) & left
            assert sum(history.error_counts([s.id for s in history.steps_of(sorted(left))]).values()) == 8
    finally:
        store.close()


def test_the_cli_clears_and_says_how_much(tmp_path: Path) -> None:
    url = f"sqlite:///{(tmp_path / 'mvsync.db').as_posix()}"
    store = SqlStore(url)
    try:
        with store.transaction() as conn:
            history = RunHistory(conn)
            for days in (60, 50, 40):
                _run(history, days, [("hr", "full-import")])
    finally:
        store.close()
    config = tmp_path / "mvsync.toml"
    config.write_text(f'[store]\nurl = "{url}"\n[agents.hr]\ntype = "photo-folder"\nsettings = {{ path = "p" }}\n')
    runner = CliRunner()
    result = runner.invoke(app, ["history", "clear", "--older-than", "55", "-c", str(config), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"older_than_days": 55.0, "runs": 1, "steps": 1, "errors": 2}
    result = runner.invoke(app, ["history", "clear", "--older-than", "0", "-c", str(config)])
    assert result.exit_code == 0 and "cleared 1 runs" in result.stdout  # the newest holds the latest step
    assert runner.invoke(app, ["history", "clear", "--older-than", "-1", "-c", str(config)]).exit_code == 2
