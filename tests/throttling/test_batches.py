"""The limiter with ``$batch``es, as the Exchange Online agent sends them, against caps and token buckets.

Why a second simulation: ``test_limiter.simulate`` sends one request per unit and answers it whole.
Graph's ``$batch`` is not that: one request of up to twenty items, run four at a time (one unit each),
and an item the service refuses is answered at once, so the batch's next item runs straight after
it. Against a cap only the runners without a place are refused; against a token bucket run dry every
item still queued in every batch in flight is refused within milliseconds. That cascade is what made
small rate walls expensive in the benchmark (23 % of requests refused at 150 requests/s with 20 ms
round trips), and the single-request simulation cannot show it.

The client side follows ``PhotoWorker.run``: a fixed number of threads, each taking twenty tasks,
asking the limiter for four units with ``at_least=1``, sending as many items as it was granted units
when that is fewer than four, and one round (as many items as units) once ``rate_bound`` holds and the
limit is below the ceiling, when ``short_batches_on_a_rate`` is set; refused items wait their Retry-After
and go again.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from dataclasses import dataclass, field, replace

import pytest

from connector.throttling import AdaptiveLimiter, Signal, Ticket
from tests.throttling.test_limiter import FakeClock

LANES = 4  # Graph runs a batch's items four at a time
BATCH = 20  # Graph's most items per $batch


@dataclass
class Service:
    """A cap on items in flight, a token bucket (``burst_s`` seconds of ``rate``), or both.

    A refused item is answered at once: 1 s Retry-After for a cap (Outlook's), the time to the next
    token for a bucket (``decimal``) or that rounded up to whole seconds. ``noise``: the share of items
    refused whatever the load (a tenant budget another app spends), with ``noise_retry_after``.
    """

    latency: float
    cap: int | None = None
    rate: float | None = None
    burst_s: float = 1.0
    decimal: bool = True
    noise: float = 0.0
    noise_retry_after: float = 2.0
    in_flight: int = 0
    tokens: float = field(init=False)
    stamp: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    def __post_init__(self) -> None:
        self.tokens = (self.rate or 0.0) * self.burst_s

    def admit(self, now: float) -> float | None:
        """None when the item runs (for ``latency``), else its Retry-After."""
        if self.noise and self.rng.random() < self.noise:
            return self.noise_retry_after
        if self.rate is not None:
            self.tokens = min(self.rate * self.burst_s, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        if self.cap is not None and self.in_flight >= self.cap:
            return 1.0
        if self.rate is not None:
            if self.tokens < 1.0:
                wait = (1.0 - self.tokens) / self.rate
                return wait if self.decimal else float(math.ceil(wait))
            self.tokens -= 1.0
        self.in_flight += 1
        return None


@dataclass
class _Batch:
    ticket: Ticket
    items: int
    started: int = 0
    answered: int = 0
    refused: int = 0
    retry_after: float = 0.0


@dataclass
class Figures:
    answered: int = 0
    refused: int = 0

    @property
    def refused_share(self) -> float:
        return self.refused / max(1, self.answered + self.refused)


def simulate_batches(
    limiter: AdaptiveLimiter,
    clock: FakeClock,
    service: Service,
    *,
    seconds: float,
    threads: int = 17,
    measure_from: float = 0.0,
    short_batches_on_a_rate: bool = True,
) -> Figures:
    """Threads that always have work send ``$batch``es whenever the limiter has room, until ``seconds``."""
    events: list[tuple[float, int, _Batch, float | None]] = []  # (when, order, batch, Retry-After if refused)
    order = itertools.count()
    retries: list[float] = []  # when each refused item may go again
    idle = threads
    figures = Figures()

    def run_next_item(batch: _Batch) -> None:
        if batch.started < batch.items:
            batch.started += 1
            refused = service.admit(clock.now)
            done = clock.now if refused is not None else clock.now + service.latency
            heapq.heappush(events, (done, next(order), batch, refused))

    def send_what_fits() -> None:
        nonlocal idle
        while idle and not limiter.paused_for() and (limiter.limit > limiter.in_flight or not limiter.in_flight):
            due = 0
            while retries and retries[0] <= clock.now and due < BATCH:
                heapq.heappop(retries)
                due += 1
            ticket = limiter.acquire(LANES, at_least=1)
            items = BATCH if ticket.weight == LANES else ticket.weight
            if short_batches_on_a_rate and limiter.rate_bound and limiter.limit < limiter.ceiling:
                items = ticket.weight
            for _ in range(max(0, due - items)):  # taken but not sent: first in line again
                heapq.heappush(retries, clock.now)
            idle -= 1
            batch = _Batch(ticket, items)
            for _ in range(min(items, LANES)):
                run_next_item(batch)

    while clock.now < seconds:
        send_what_fits()
        wake = events[0][0] if events else math.inf
        if limiter.paused_for() and clock.now + limiter.paused_for() < wake:
            clock.now += limiter.paused_for()
            continue
        clock.now, _, batch, refused = heapq.heappop(events)
        counted = clock.now >= measure_from
        batch.answered += 1
        if refused is None:
            service.in_flight -= 1
            figures.answered += counted
        else:
            batch.refused += 1
            batch.retry_after = max(batch.retry_after, refused)
            figures.refused += counted
            heapq.heappush(retries, clock.now + refused)
        run_next_item(batch)
        if batch.answered == batch.items:
            idle += 1
            if batch.refused:
                share = batch.refused / batch.items
                limiter.release(
                    batch.ticket, Signal.THROTTLED, retry_after=batch.retry_after, share=share, items=batch.items
                )
            else:
                limiter.release(batch.ticket, Signal.OK)
    return figures


def _run(service: Service, *, short: bool = True, seconds: float = 120.0) -> tuple[AdaptiveLimiter, Figures]:
    clock = FakeClock()
    limiter = AdaptiveLimiter("batches", ceiling=64, initial=32, clock=clock)  # as GraphClient sets it up
    figures = simulate_batches(
        limiter, clock, service, seconds=seconds, measure_from=20.0, short_batches_on_a_rate=short
    )
    return limiter, figures


@pytest.mark.parametrize(
    "service",
    [
        Service(latency=0.02, rate=150.0),
        Service(latency=0.05, rate=40.0, decimal=False),
        Service(latency=0.1, rate=150.0, decimal=False),
    ],
    ids=["150-per-s-20ms", "40-per-s-50ms-whole-seconds", "rate-150"],
)
def test_against_a_rate_batches_shrink_to_one_round_and_refusals_stay_near_the_units_in_flight(
    service: Service,
) -> None:
    """The census reads the dry bucket, ``rate_bound`` holds, and the batches go out one round long.

    Past the cold start (from 20 s on), each push-back (a probe, a dry spell) then costs about the units
    in flight. The same run with twenty-item batches throughout refuses at least half as many again.
    """
    limiter, short = _run(replace(service))
    _, long = _run(replace(service), short=False)
    assert limiter.rate_bound
    assert short.refused_share <= 0.02, (short, limiter.stats)
    assert short.refused_share * 1.5 <= long.refused_share, (short, long)
    rate = service.rate or 0.0
    assert short.answered / 100.0 >= 0.8 * rate, (short, limiter.stats)


@pytest.mark.parametrize("cap", [4, 12, 50])
def test_against_a_cap_batches_stay_twenty_items_long(cap: int) -> None:
    """A cap's census is not taken for a rate: long batches keep the service busy through each pause."""
    limiter, figures = _run(Service(latency=0.1, cap=cap, decimal=False))
    assert not limiter.rate_bound, limiter.stats
    assert figures.answered / 100.0 >= 0.8 * cap / 0.1, (figures, limiter.stats)
    assert figures.refused_share <= 0.05, (figures, limiter.stats)


def test_push_back_that_is_not_about_our_load_costs_little() -> None:
    """10 % of items refused whatever the load, on top of a cap of 50: the client stays near the cap."""
    limiter, figures = _run(Service(latency=0.1, cap=50, noise=0.10, noise_retry_after=1.0))
    assert figures.answered / 100.0 >= 0.8 * 0.9 * 50 / 0.1, (figures, limiter.stats)


@pytest.mark.xfail(
    strict=True,
    reason="known defect, not fixed: push-back of a third or more of all items whatever the load (the "
    "emulator's storm faults) drives the limit to the floor on any wall: a window pushed back that much "
    "is never judged endemic (endemic_max_share), and at the floor a cut takes nothing, so the trial "
    "keeps reading 'over a limit' (measured: 0.02 of what the noise leaves at a cap of 50, 0.07 at 12, the "
    "limit at 1). "
    "Tried: a verdict at any share with a spell bar relative to it passes this (0.71, 0.68) but misjudged the "
    "benchmark's rate-150 wall at 20 ms with decimal Retry-After (throttled_ratio 0.10-0.70 against 0.07-0.08)",
)
@pytest.mark.parametrize("cap", [12, 50])
def test_heavy_push_back_that_is_not_about_our_load_does_not_collapse_the_limit(cap: int) -> None:
    limiter, figures = _run(Service(latency=0.1, cap=cap, noise=0.35, noise_retry_after=2.0))
    assert figures.answered / 100.0 >= 0.5 * 0.65 * cap / 0.1, (figures, limiter.stats)
