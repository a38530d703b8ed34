"""The console's operations view says what ``mvsync history`` says of a run whose process is gone."""

from __future__ import annotations

import time
from pathlib import Path

from connector.config import config_from_dict
from connector.store import RunHistory, SqlStore
from connector.web._queries import Console


def test_a_run_left_in_progress_by_a_gone_process_reads_ended_unrecorded(tmp_path: Path) -> None:
    config = config_from_dict(
        {"store": {"url": f"sqlite:///{tmp_path / 'store.db'}"}, "agents": {"hr": {"type": "photo-folder"}}},
        base_dir=tmp_path,
    )
    store = SqlStore(config.store_url())
    try:
        with store.transaction() as conn:  # as a killed run leaves it: in progress, its run lock free
            history = RunHistory(conn)
            left = history.start_run("Delta Cycle", dry_run=False, started_at=time.time())
            history.start_step(left, 1, "hr", "delta-import", time.time())
        console = Console(config, store)
        with store.read() as conn:
            [run], _ = console.runs(conn)
            step = console.step(conn, run.steps[0].id)
    finally:
        store.close()
    assert (run.id, run.status, run.css) == (left, "ended-unrecorded", "error"), run
    assert run.message is not None and "records it as stopped-interrupted" in run.message, run
    assert [(s.status, s.css) for s in run.steps] == [("ended-unrecorded", "error")], run.steps
    assert step is not None and step[0].status == "ended-unrecorded", step
