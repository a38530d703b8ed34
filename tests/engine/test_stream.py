"""Import contract v2: the engine pages a connector's stream, runs its deferred work and keeps its state.

Through the real engine and store (SQLite and PostgreSQL): the state commits with the page it
belongs to, a stopped full import resumes from a checkpoint that covers only committed work, the
connector's counters reach run history, and a connector with no import method gets a clear error.
The pager's own promises (bounded memory, checkpoints that wait for earlier work) are tested on
``StreamPager`` directly.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from connector.config import config_from_dict
from connector.engine import Engine
from connector.engine._stream import _END, Page, StreamPager, _Fatal
from connector.sdk import (
    Checkpoint,
    Count,
    CSEntryChange,
    Deferred,
    ImportItem,
    ServerDownError,
    StateUpdate,
    Stop,
    Worker,
)
from connector.store import AgentStateRepository, SqlStore
from connector.store.tables import cs_object
from tests.engine.stream import STREAMS, stream_directory


@pytest.fixture
def streamed(tmp_path: Path, store_url: str) -> Iterator[tuple[Engine, dict[str, Any], str]]:
    name = uuid.uuid4().hex[:8]
    step = {"agent": "things", "page_size": 4}
    config = config_from_dict(
        {
            "store": {"url": store_url},
            "agents": {
                "things": {"type": "tests.engine.stream:StreamConnector", "settings": {"directory": name}},
                "nothing": {"type": "tests.engine.stream:NoImportConnector", "settings": {"directory": name}},
            },
            "run_profiles": {
                "full": {"steps": [{"type": "full-import", **step}]},
                "delta": {"steps": [{"type": "delta-import", **step}]},
                "nothing": {"steps": [{"type": "full-import", "agent": "nothing"}]},
                "export-things": {"steps": [{"type": "export", "agent": "things"}]},
            },
        },
        base_dir=tmp_path,
    )
    engine = Engine(config)
    data = stream_directory(name)
    data["objects"].update({f"t{i:02d}": f"e{i}" for i in range(30)})
    yield engine, data, config.store_url()
    engine.close()
    STREAMS.pop(name, None)


def _stored(store_url: str) -> tuple[set[str], dict[str, Any]]:
    store = SqlStore(store_url)
    try:
        with store.read() as conn:
            anchors = set(conn.execute(cs_object.select().with_only_columns(cs_object.c.anchor)).scalars())
            repo = AgentStateRepository("things")
            state = dict(repo.scan_after(conn, "", 10_000))
    finally:
        store.close()
    return anchors, state


def test_a_full_import_commits_each_objects_state_with_it_and_counts_through_the_channel(
    streamed: tuple[Engine, dict[str, Any], str],
) -> None:
    engine, data, url = streamed
    result = engine.run_profile("full")
    step = result.steps[0]
    assert result.status == "success", step.message
    anchors, state = _stored(url)
    assert anchors == set(data["objects"]) == set(state)
    assert state["t07"] == {"etag": "e7"}
    assert step.counters["connector.fetched"] == 30 and step.counters["adds"] == 30
    assert step.counters["pages"] >= 30 // 4  # the engine pages by page_size (entries + state updates)


def test_a_delta_reads_the_committed_state_and_fetches_only_what_changed(
    streamed: tuple[Engine, dict[str, Any], str],
) -> None:
    engine, data, url = streamed
    assert engine.run_profile("full").status == "success"
    data["fetched"].clear()
    data["objects"]["t03"] = "changed"
    del data["objects"]["t04"]
    step = engine.run_profile("delta").steps[0]
    assert step.status == "success", step.message
    assert data["fetched"] == ["t03"]
    assert step.counters["connector.unchanged"] == 28 and step.counters["deletes"] == 1
    _, state = _stored(url)
    assert state["t03"] == {"etag": "changed"} and "t04" not in state


def test_a_stopped_full_import_resumes_and_its_state_never_outruns_the_connector_space(
    streamed: tuple[Engine, dict[str, Any], str],
) -> None:
    engine, data, url = streamed
    data["stop_after_fetches"] = 17
    first = engine.run_profile("full").steps[0]
    assert first.status == "stopped-throttled"
    anchors, state = _stored(url)
    assert set(state) == anchors and 0 < len(anchors) <= 17  # each key committed with its object's page
    del data["objects"]["t29"]  # gone meanwhile: its state must be forgotten at the end
    second = engine.run_profile("full").steps[0]
    assert second.status == "success", second.message
    assert second.counters["resumed_from_step"] == first.step_id
    resumed_at = int(data["resumed_from"][-1])
    assert 0 < resumed_at <= len(anchors)  # never past an object whose work was not committed
    anchors, state = _stored(url)
    assert set(state) == set(data["objects"]) and "t29" not in state


def test_a_dry_run_reads_the_state_and_writes_nothing(streamed: tuple[Engine, dict[str, Any], str]) -> None:
    engine, data, url = streamed
    assert engine.run_profile("full").status == "success"
    data["objects"]["t05"] = "changed"
    changes: list[dict[str, Any]] = []
    step = engine.run_profile("delta", dry_run=True, emit=changes.append).steps[0]
    assert step.status == "success", step.message
    assert [c["anchor"] for c in changes] == ["t05"]  # the delta read the committed state
    assert _stored(url)[1]["t05"] == {"etag": "e5"}  # and wrote none of its own


def test_a_refused_resume_starts_over(streamed: tuple[Engine, dict[str, Any], str]) -> None:
    engine, data, url = streamed
    data["stop_after_fetches"] = 10
    assert engine.run_profile("full").status.startswith("stopped")
    data["refuse_resume"] = True
    step = engine.run_profile("full").steps[0]
    assert step.status == "success" and "started over" in step.message
    assert set(_stored(url)[1]) == set(data["objects"])


def test_a_connector_without_an_import_method_is_told_which_methods_exist(
    streamed: tuple[Engine, dict[str, Any], str],
) -> None:
    engine, _, _ = streamed
    step = engine.run_profile("nothing").steps[0]
    assert step.status == "stopped-configuration"
    assert "import_changes" in step.message and "import_page" in step.message


def test_a_step_the_connectors_capabilities_rule_out_is_refused_before_it_starts(
    streamed: tuple[Engine, dict[str, Any], str],
) -> None:
    engine, _, _ = streamed
    step = engine.run_profile("export-things").steps[0]
    assert step.status == "stopped-configuration" and "does not support export" in step.message


class _Gate(Worker[str]):
    """Holds the work of one task until the test opens the gate."""

    concurrency = 2

    def __init__(self, held: str) -> None:
        self.held = held
        self.gate = threading.Event()

    def run(self, tasks: list[Deferred[str]], cancel: threading.Event) -> list[list[ImportItem]]:
        if any(t.task == self.held for t in tasks):
            self.gate.wait(10)
        return [[CSEntryChange.add("thing", t.task, {"id": t.task})] for t in tasks]


def test_a_checkpoint_waits_for_the_work_yielded_before_it() -> None:
    slow, later = _Gate("slow"), _Gate("later")

    def stream() -> Iterator[ImportItem]:
        yield Deferred(slow, "slow")
        yield Checkpoint("after-slow")
        yield CSEntryChange.add("thing", "quick", {"id": "quick"})
        yield Deferred(later, "later")

    pages = StreamPager(stream(), page_size=1, max_ahead=10).pages()
    first = next(pages)
    assert [e.anchor for e in first.entries] == ["quick"] and first.checkpoint is None
    slow.gate.set()
    second = next(pages)
    assert [e.anchor for e in second.entries] == ["slow"] and second.checkpoint == "after-slow"
    later.gate.set()
    third = next(pages)  # still the latest valid one: what the engine saves with it stays current
    assert [e.anchor for e in third.entries] == ["later"] and third.checkpoint == "after-slow"
    assert third.last


def test_the_source_runs_at_most_max_ahead_items_ahead_of_the_commits() -> None:
    yielded = 0
    gate = _Gate("never")

    def stream() -> Iterator[ImportItem]:
        nonlocal yielded
        for i in range(10_000):
            yielded += 1
            yield Deferred(gate, f"t{i}")

    pager = StreamPager(stream(), page_size=10, max_ahead=50)
    pages = pager.pages()
    first = next(pages)  # not committed yet: nothing may be released
    assert first.weight >= 10
    assert yielded <= 51  # 50 permits, plus the item the source holds while it waits for one
    pages.close()


class _WithState(Worker[str]):
    """Each task's entry, its own state, and a run-wide key every result updates (as the Exchange
    Online import's throttling memory does): a page fills its state one key early."""

    batch_size = 3

    def run(self, tasks: list[Deferred[str]], cancel: threading.Event) -> list[list[ImportItem]]:
        return [
            [CSEntryChange.add("thing", t.task, {"id": t.task}), StateUpdate(t.task, 1), StateUpdate("run", 1)]
            for t in tasks
        ]


def _every_entry_with_its_state(pages: Iterator[Page]) -> int:
    entries = 0
    for page in pages:
        for entry in page.entries:
            assert entry.anchor in page.state, f"{entry.anchor} committed in a page without its state"
        entries += len(page.entries)
    return entries


def test_a_tasks_entry_and_its_state_are_never_split_across_pages() -> None:
    worker = _WithState()

    def stream() -> Iterator[ImportItem]:
        for i in range(60):
            yield Deferred(worker, f"t{i:02d}")

    assert _every_entry_with_its_state(StreamPager(stream(), page_size=4, max_ahead=20).pages()) == 60


def test_an_entry_the_source_yields_commits_with_the_state_updates_that_follow_it() -> None:
    def stream() -> Iterator[ImportItem]:
        for i in range(30):
            yield CSEntryChange.add("thing", f"s{i:02d}", {"id": f"s{i:02d}"})
            yield StateUpdate(f"s{i:02d}", 1)
            if i % 3 == 0:
                yield StateUpdate(f"unlisted-{i}", None)  # state without an entry counts on its own
            if i % 5 == 0:
                yield Checkpoint(f"after-{i}")

    pages = list(StreamPager(stream(), page_size=2, max_ahead=10).pages())
    assert _every_entry_with_its_state(iter(pages)) == 30
    assert pages[-1].checkpoint == "after-25"


class _Sized(Worker[str]):
    """Takes ``take_size`` tasks at the end of a stream; each run waits at the gate."""

    batch_size = 20

    def __init__(self, size: int | None) -> None:
        self.size = size
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.sizes: list[int] = []

    def take_size(self, waiting: int) -> int:
        if self.size is None:
            raise RuntimeError("take_size is broken")
        return self.size

    def run(self, tasks: list[Deferred[str]], cancel: threading.Event) -> list[list[ImportItem]]:
        self.entered.set()
        self.gate.wait(10)
        self.sizes.append(len(tasks))
        return [[] for _ in tasks]


def _hold_the_worker_then_end(worker: _Sized, more: int) -> StreamPager:
    """One task taken (the worker waits at its gate), ``more`` queued, then the stream's end received."""
    pager = StreamPager(iter(()), page_size=10, max_ahead=50)
    pager._dispatch(0, Deferred(worker, "first"))
    assert worker.entered.wait(10)
    for i in range(more):
        pager._dispatch(i + 1, Deferred(worker, f"t{i}"))
    pager._receive(_END, Page())
    worker.gate.set()
    return pager


def test_once_the_stream_has_ended_a_worker_takes_its_take_size() -> None:
    worker = _Sized(2)
    pager = _hold_the_worker_then_end(worker, 6)
    for _ in range(4):
        message = pager._results.get(timeout=10)
        assert message[0] == "done"
    assert worker.sizes == [1, 2, 2, 2]  # the batch_size (20) before the end, take_size after it
    pager.stop()


def test_a_failing_take_size_stops_the_step_with_its_error_instead_of_hanging_it() -> None:
    worker = _Sized(None)
    pager = _hold_the_worker_then_end(worker, 3)
    assert pager._results.get(timeout=10)[0] == "done"  # the task it held
    fatal = pager._results.get(timeout=10)
    assert isinstance(fatal, _Fatal) and "take_size is broken" in str(fatal.error)
    pager.stop()


class _FailsAt(Worker[str]):
    """One task at a time, in order: an entry and its state per task, until ``at``, which raises
    ``error``."""

    def __init__(self, at: str, error: Exception) -> None:
        self.at = at
        self.error = error
        self.ran: list[str] = []

    def run(self, tasks: list[Deferred[str]], cancel: threading.Event) -> list[list[ImportItem]]:
        self.ran += [t.task for t in tasks]
        if any(t.task == self.at for t in tasks):
            raise self.error
        return [[CSEntryChange.add("thing", t.task, {"id": t.task}), StateUpdate(t.task, 1)] for t in tasks]


def _listed(worker: Worker[str], count: int) -> Iterator[ImportItem]:
    """A full import's shape: a checkpoint ("resume from object i") before each object's work."""
    for i in range(count):
        yield Checkpoint(str(i))
        yield Deferred(worker, f"t{i}", key=f"t{i}")


def test_a_stop_raised_by_a_worker_commits_what_finished_before_it_then_stops_the_step() -> None:
    """Graph goes down at the sixth user: the five fetched before are committed (the next run does not
    fetch them again), with a checkpoint that resumes at the sixth, and then the step stops."""
    down = ServerDownError("Graph at graph.example:443 answered with HTTP 504")
    worker = _FailsAt("t5", down)
    committed: list[Page] = []
    with pytest.raises(ServerDownError) as stopped:
        for page in StreamPager(_listed(worker, 10), page_size=100, max_ahead=100).pages():
            committed.append(page)
    assert stopped.value is down
    assert [e.anchor for p in committed for e in p.entries] == ["t0", "t1", "t2", "t3", "t4"]
    assert set(committed[-1].state) == {"t0", "t1", "t2", "t3", "t4"}
    assert committed[-1].checkpoint == "5" and not committed[-1].last  # resumes at the one not fetched
    assert worker.ran == [f"t{i}" for i in range(6)]  # and nothing was sent after the stop


def test_a_bug_in_a_worker_stops_the_step_at_once_and_commits_nothing_of_the_page() -> None:
    """Only a deliberate stop (``StopRunError``) vouches for the work before it; a bug does not."""
    worker = _FailsAt("t5", KeyError("etag"))
    committed: list[Page] = []
    with pytest.raises(KeyError):
        for page in StreamPager(_listed(worker, 10), page_size=100, max_ahead=100).pages():
            committed.append(page)
    assert committed == []


class _BatchMeetsAnOutage(Worker[str]):
    """Four tasks per call (a ``$batch``), one call at a time: "hold" waits for the test's gate; "down"
    answers Stop; "more" an entry and a follow-up task; "unsent" is handed back as it came; any other
    an entry and its state."""

    batch_size = 4

    def __init__(self, error: ServerDownError) -> None:
        self.error = error
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.ran: list[list[str]] = []

    def run(self, tasks: list[Deferred[str]], cancel: threading.Event) -> list[list[ImportItem]]:
        self.ran.append([t.task for t in tasks])
        return [self._answer(t) for t in tasks]

    def _answer(self, task: Deferred[str]) -> list[ImportItem]:
        if task.task == "hold":
            self.entered.set()
            self.gate.wait(10)
        if task.task == "down":
            return [Stop(self.error), Count("outage")]
        if task.task == "unsent":
            return [task]
        entry: list[ImportItem] = [CSEntryChange.add("thing", task.task, {"id": task.task}), StateUpdate(task.task, 1)]
        return [*entry, Deferred(self, "follow-up")] if task.task == "more" else entry


def test_a_stop_item_keeps_the_other_answers_of_its_batch_and_starts_no_more_work() -> None:
    """A ``$batch`` whose second item meets the outage: the first and third answers are committed
    (the third although the page was full), and nothing is sent after the stop."""
    down = ServerDownError("Graph at graph.example:443 answered with HTTP 503")
    worker = _BatchMeetsAnOutage(down)

    def stream() -> Iterator[ImportItem]:
        yield Checkpoint("0")
        yield Deferred(worker, "hold")  # alone in the worker's first call, which waits at the gate
        worker.entered.wait(10)
        for i, task in enumerate(("before", "down", "more", "unsent"), 1):
            yield Checkpoint(str(i))
            yield Deferred(worker, task)
        yield CSEntryChange.add("thing", "listed", {"id": "listed"})  # fills the first page (page_size 1)
        yield Checkpoint("5")
        yield Deferred(worker, "after")

    pages = StreamPager(stream(), page_size=1, max_ahead=100).pages()
    first = next(pages)
    assert [e.anchor for e in first.entries] == ["listed"]
    worker.gate.set()  # the four are queued by now: the worker's next call takes them at once
    committed: list[Page] = []
    with pytest.raises(ServerDownError) as stopped:
        while True:
            committed.append(next(pages))
    assert stopped.value is down
    assert [e.anchor for p in committed for e in p.entries] == ["hold", "before", "more"]
    assert committed[-1].counters["outage"] == 1
    # the task that met the outage, the follow-up and the unsent task are left to the next run, and the
    # checkpoint does not pass the first of them
    assert committed[-1].checkpoint == "2" and not committed[-1].last
    assert worker.ran == [["hold"], ["before", "down", "more", "unsent"]]


def test_a_stop_that_waits_for_work_under_way_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by QA: with Graph hung, Ctrl-C came back after ten silent seconds (the step waits for the
    requests under way). Past ``STOP_NOTICE_S`` the wait is said, with how to stop at once; a stop whose
    threads end in time says nothing."""
    from connector.engine import _stream

    monkeypatch.setattr(_stream, "STOP_NOTICE_S", 0.01)
    monkeypatch.setattr(_stream, "STOP_WAIT_S", 0.2)
    worker = _Sized(2)
    pager = StreamPager(iter(()), page_size=10, max_ahead=50)
    pager._dispatch(0, Deferred(worker, "hung"))
    assert worker.entered.wait(10)  # in its run, held at the gate: a request that does not come back
    with caplog.at_level(logging.WARNING, logger="mvsync.engine"):
        pager.stop()
    assert "the step is stopping: waiting up to" in caplog.text
    assert "for the requests under way to end (Ctrl-C stops at once)" in caplog.text
    worker.gate.set()

    caplog.clear()
    monkeypatch.setattr(_stream, "STOP_NOTICE_S", 5.0)  # a thread with nothing under way ends well within it
    ended = StreamPager(iter(()), page_size=10, max_ahead=50)
    quick = _Sized(2)
    quick.gate.set()
    ended._dispatch(0, Deferred(quick, "done"))
    assert quick.entered.wait(10)
    with caplog.at_level(logging.WARNING, logger="mvsync.engine"):
        ended.stop()
    assert "stopping" not in caplog.text
