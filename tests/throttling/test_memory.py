"""Keeping a measured wall between runs: a warm start pays no pause, and a wrong memory heals itself."""

from __future__ import annotations

import time

import pytest

from connector.throttling import AdaptiveLimiter, LimitKeeper, LimitMemory, Signal
from tests.throttling.test_limiter import Concurrency, FakeClock, simulate


def _cold(clock: FakeClock, name: str = "graph:tenant") -> AdaptiveLimiter:
    return AdaptiveLimiter(name, ceiling=64, initial=32, clock=clock)


def _measured_wall(cap: int) -> LimitMemory:
    """What a cold run against ``cap`` leaves behind."""
    clock = FakeClock()
    limiter = _cold(clock)
    simulate(limiter, clock, Concurrency(lambda t: cap), seconds=10, latency=0.5, weight=4)
    memory = LimitMemory.of(limiter)
    assert memory is not None
    return memory


def test_a_cold_run_measures_the_wall_and_a_warm_run_starts_there_without_a_pause() -> None:
    memory = _measured_wall(50)
    assert 44 <= memory.wall <= 50
    assert LimitMemory.loads(memory.dumps()) == memory

    clock = FakeClock()
    warm = _cold(clock)
    assert memory.recall(warm, max_age_s=3600)
    assert warm.limit == memory.wall
    figures = simulate(warm, clock, Concurrency(lambda t: 50), seconds=10, latency=0.5, weight=4)
    assert (warm.stats.decreases, warm.stats.pauses) == (0, 0), warm.stats
    assert figures.answered / (50 / 0.5 * 10) >= 0.85, warm.stats


def test_a_memory_is_recalled_only_by_its_own_limiter_while_fresh_and_before_it_learned() -> None:
    memory = _measured_wall(50)
    clock = FakeClock()
    assert not memory.recall(_cold(clock, "graph:another-tenant"), max_age_s=3600)
    stale = LimitMemory(memory.limiter, memory.wall, time.time() - 7200)
    assert not stale.recall(_cold(clock), max_age_s=3600)
    assert not memory.recall(_cold(clock), max_age_s=0)
    learned = _cold(clock)
    simulate(learned, clock, Concurrency(lambda t: 12), seconds=10, latency=0.1)
    assert not memory.recall(learned, max_age_s=3600)  # what this process measured itself wins
    assert learned.limit <= 12


@pytest.mark.parametrize(
    "value", [None, "50", [], {}, {"limiter": "x", "wall": 0, "measured_at": 1.0}, {"limiter": 1, "wall": 5}]
)
def test_anything_but_a_memory_is_no_memory(value: object) -> None:
    assert LimitMemory.loads(value) is None


def test_a_wall_that_fell_is_met_by_one_decrease_and_measured_again() -> None:
    clock = FakeClock()
    limiter = _cold(clock)
    assert LimitMemory("graph:tenant", 50, time.time()).recall(limiter, max_age_s=3600)
    seen = limiter.measurements
    figures = simulate(limiter, clock, Concurrency(lambda t: 12), seconds=60, latency=0.1, measure_from=20)
    assert limiter.stats.decreases >= 1 and limiter.limit <= 12
    assert figures.answered / (12 / 0.1 * 40) >= 0.8, limiter.stats
    assert limiter.measurements > seen
    memory = LimitMemory.of(limiter)
    assert memory is not None and memory.wall <= 12  # the next run starts at the new wall


def test_a_wall_that_rose_is_found_by_a_probe_and_the_memory_forgotten() -> None:
    clock = FakeClock()
    limiter = _cold(clock)
    assert LimitMemory("graph:tenant", 12, time.time()).recall(limiter, max_age_s=3600)
    seen = limiter.measurements
    simulate(limiter, clock, Concurrency(lambda t: 50), seconds=30, latency=0.1)
    assert limiter.limit >= 40, limiter.stats  # within the run: the first probe is due after probe_min_s
    # the probe held above the remembered wall: the saved memory must change (to a new wall, or none)
    assert limiter.measurements > seen
    memory = LimitMemory.of(limiter)
    assert memory is None or memory.wall > 12


def test_a_run_whose_recalled_wall_is_pushed_back_forgets_it_until_it_measures_again() -> None:
    clock = FakeClock()
    limiter = _cold(clock)
    keeper = LimitKeeper(limiter)
    assert keeper.recall(LimitMemory("graph:tenant", 20, time.time()), max_age_s=3600) is not None
    assert keeper.changed() == (False, None)  # started at the memory: nothing new to keep
    tickets = [limiter.acquire() for _ in range(20)]
    limiter.release(tickets[0], Signal.THROTTLED, retry_after=1.0)  # 20 was too many today
    assert keeper.changed() == (True, None)  # forget it: the next run must not start there again
    assert keeper.changed() == (False, None)
    for ticket in tickets[1:]:
        limiter.release(ticket, Signal.OK)
    changed, value = keeper.changed()  # the census measured 19: kept is the level reached under it
    memory = LimitMemory.loads(value)
    assert changed and memory is not None and memory.wall == min(19, limiter.limit)


def test_a_wall_found_to_be_a_rate_is_kept_as_one_and_an_older_memory_reads_as_a_cap() -> None:
    """A warm run against a rate sends short batches from its first request (``rate_bound``), instead of
    learning it again from a twenty-item batch cascade; a memory written before the flag was kept has none."""
    clock = FakeClock()
    limiter = _cold(clock)
    tickets = [limiter.acquire(4) for _ in range(8)]
    clock.now = 0.5
    for ticket in tickets:  # a dry bucket's census
        limiter.release(ticket, Signal.THROTTLED, retry_after=0.01, share=14 / 20, items=20)
    memory = LimitMemory.of(limiter)
    assert memory is not None and memory.rate_bound
    kept = LimitMemory.loads(memory.dumps())
    assert kept == memory
    warm = _cold(FakeClock())
    assert kept.recall(warm, max_age_s=3600) and warm.rate_bound
    older = {key: value for key, value in memory.dumps().items() if key != "rate_bound"}
    loaded = LimitMemory.loads(older)
    assert loaded is not None and not loaded.rate_bound
