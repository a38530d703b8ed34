"""The pager bounds the photo bytes it holds between the workers' answers and the store's commit.

``max_ahead`` bounds objects, not bytes: 1,000 people with 8 MB photos (Graph's limit) are 8 GB. Here
the pages are taken the way the engine takes them (the next page is asked for once the last one is
committed), and one page is held uncommitted until the workers have handed over ``max_bytes_ahead``:
what the pager ever held stays within the bound plus one call's answers per worker thread, every
object arrives once, with its state, and the import ends.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from connector.engine import _stream
from connector.engine._stream import StreamPager, binary_size
from connector.sdk import AttributeChange, CSEntryChange, Deferred, ImportItem, StateUpdate, Worker

PHOTO = 1000
BATCH = 3
THREADS = 4
LIMIT = 10 * PHOTO


class _Photos(Worker[str]):
    """Answers each task with an entry holding a ``PHOTO``-byte photo and its state."""

    batch_size = BATCH
    concurrency = THREADS

    def run(self, tasks: list[Deferred[str]], cancel: threading.Event) -> list[list[ImportItem]]:
        return [
            [CSEntryChange.add("thing", t.task, {"id": t.task, "photo": bytes(PHOTO)}), StateUpdate(t.task, 1)]
            for t in tasks
        ]


def _until(condition: Callable[[], bool], what: str) -> None:
    """Bounded polling: the deadline only matters when the pager is broken."""
    deadline = time.monotonic() + 20.0
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def test_the_photo_bytes_held_before_the_commit_stay_within_max_bytes_ahead() -> None:
    worker = _Photos()

    def stream() -> Iterator[ImportItem]:
        for i in range(300):
            yield Deferred(worker, f"t{i:03d}")

    pager = StreamPager(stream(), page_size=100, max_ahead=200, max_bytes_ahead=LIMIT)
    pages = pager.pages()
    first = next(pages)  # the engine commits it: meanwhile the workers go on until the bound stops them
    _until(lambda: pager.bytes_ahead.held >= LIMIT, "the workers never handed over max_bytes_ahead")
    seen = [e.anchor for e in first.entries]
    sizes = [sum(binary_size(e) for e in first.entries)]
    for page in pages:
        assert all(e.anchor in page.state for e in page.entries), "an entry committed without its state"
        seen += [e.anchor for e in page.entries]
        sizes.append(sum(binary_size(e) for e in page.entries))
    assert sorted(seen) == [f"t{i:03d}" for i in range(300)]  # every object once: nothing lost or doubled
    # one call's answers per worker thread may go over (each checks before it starts a call) ...
    assert pager.bytes_ahead.peak <= LIMIT + THREADS * BATCH * PHOTO
    # ... and a page ends once it holds the bound (one call's answers over it at most)
    assert max(sizes) < LIMIT + BATCH * PHOTO
    assert len(sizes) > 300 * PHOTO // (LIMIT + BATCH * PHOTO)  # smaller pages than page_size: the bound acted
    assert pager.bytes_ahead.held == 0  # all of it released with the commits


def test_entries_the_source_yields_keep_their_order_and_state_under_the_bound() -> None:
    def stream() -> Iterator[ImportItem]:
        for i in range(60):
            change = AttributeChange.replace("photo", bytes(PHOTO))
            yield CSEntryChange.update("thing", f"s{i:02d}", [change])
            yield StateUpdate(f"s{i:02d}", 1)

    pager = StreamPager(stream(), page_size=50, max_ahead=100, max_bytes_ahead=4 * PHOTO)
    pages = list(pager.pages())
    anchors = [e.anchor for page in pages for e in page.entries]
    assert anchors == [f"s{i:02d}" for i in range(60)]
    assert all(e.anchor in page.state for page in pages for e in page.entries)
    assert max(sum(binary_size(e) for e in page.entries) for page in pages) <= 4 * PHOTO
    assert pages[-1].last and pager.bytes_ahead.held == 0


def test_one_photo_larger_than_the_bound_is_committed_on_its_own_page() -> None:
    worker = _Photos()

    def stream() -> Iterator[ImportItem]:
        yield Deferred(worker, "big")
        yield Deferred(worker, "next")

    pages = list(StreamPager(stream(), page_size=10, max_ahead=20, max_bytes_ahead=PHOTO // 2).pages())
    assert sorted(e.anchor for page in pages for e in page.entries) == ["big", "next"]
    assert pages[-1].last


def test_binary_size_counts_the_bytes_of_whole_objects_and_of_attribute_changes() -> None:
    whole = CSEntryChange.add("thing", "a", {"photo": b"12345", "many": [b"12", "text"], "n": 3})
    change = CSEntryChange.update("thing", "a", [AttributeChange.add("photo", b"123", "x")])
    assert (binary_size(whole), binary_size(change), binary_size(StateUpdate("a", b"1234"))) == (7, 3, 0)


class _ThreePhotos(Worker[str]):
    """Answers each task with three entries holding a photo: more than a page of two holds."""

    def run(self, tasks: list[Deferred[str]], cancel: threading.Event) -> list[list[ImportItem]]:
        return [
            [CSEntryChange.add("thing", f"{t.task}{n}", {"id": f"{t.task}{n}", "photo": bytes(PHOTO)}) for n in "abc"]
            for t in tasks
        ]


def test_each_entry_is_measured_once_whether_it_fits_its_page_or_waits_for_the_next(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An entry's binary size is measured where it is handed to the engine's thread and travels with it:
    the same number is added to the byte budget and counted into the page it joins, also when it waits
    for the next page. Before, the page measured every entry again (each photo's values walked twice).
    Entries from the source and from a worker whose every task answers three entries, pages of two
    (so a task's third entry always waits for the next page): every entry measured once, all released."""
    measured: Counter[str] = Counter()

    def counted(item: ImportItem) -> int:
        if isinstance(item, CSEntryChange):
            measured[item.anchor] += 1
        return binary_size(item)

    monkeypatch.setattr(_stream, "binary_size", counted)
    worker = _ThreePhotos()

    def stream() -> Iterator[ImportItem]:
        for i in range(6):
            yield CSEntryChange.add("thing", f"s{i}", {"id": f"s{i}", "photo": bytes(PHOTO)})
            yield Deferred(worker, f"t{i}")

    pager = StreamPager(stream(), page_size=2, max_ahead=4, max_bytes_ahead=LIMIT)
    pages = list(pager.pages())
    anchors = sorted(e.anchor for page in pages for e in page.entries)
    assert anchors == sorted([f"s{i}" for i in range(6)] + [f"t{i}{n}" for i in range(6) for n in "abc"])
    assert measured == Counter(anchors), "an entry measured more than once (or never)"
    assert pages[-1].last and pager.bytes_ahead.held == 0
