"""The adaptive limiter against simulated services: it converges, backs off on 429 bursts, recovers.

The limiter is pure logic with an injectable clock, so these tests drive it with a discrete-event
simulation instead of threads and sleeps: every run is exactly repeatable, and two simulated
minutes take milliseconds. The service models are the kinds Microsoft documents loosely: a cap
on requests in flight (Outlook's "4 concurrent requests"), a token-bucket rate (a per-app rate),
and throttling that has nothing to do with this client's load (another app spending the tenant's
budget), at several latencies.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from connector.throttling import AdaptiveLimiter, Signal, Ticket


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Concurrency:
    """At most ``cap(t)`` requests in flight; the rest get 429 with Retry-After 1 (Outlook's way)."""

    cap: Callable[[float], int]
    in_flight: int = 0
    retry_after: float | None = 1.0

    def admit(self, now: float, weight: int) -> float | bool | None:
        if self.in_flight + weight > self.cap(now):
            return self.retry_after
        self.in_flight += weight
        return True

    def done(self, weight: int) -> None:
        self.in_flight -= weight


@dataclass
class Rate:
    """A token bucket of ``rate`` requests per second with a one-second burst."""

    rate: float
    level: float = field(init=False)
    stamp: float = 0.0

    def __post_init__(self) -> None:
        self.level = self.rate

    def admit(self, now: float, weight: int) -> float | bool | None:
        self.level = min(self.rate, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.level >= weight:
            self.level -= weight
            return True
        return 1.0

    def done(self, weight: int) -> None:
        pass


@dataclass
class Noise:
    """Throttles a share of requests whatever the load (a tenant budget spent by someone else)."""

    share: float
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    def admit(self, now: float, weight: int) -> float | bool | None:
        return 1.0 if self.rng.random() < self.share else True

    def done(self, weight: int) -> None:
        pass


@dataclass
class Noisy:
    """``noise`` on top of a real ``limit``: another app's push-back and this client's own wall at once."""

    noise: Noise
    limit: Concurrency | Rate

    def admit(self, now: float, weight: int) -> float | bool | None:
        verdict = self.noise.admit(now, weight)
        return self.limit.admit(now, weight) if verdict is True else verdict

    def done(self, weight: int) -> None:
        self.limit.done(weight)


@dataclass
class Figures:
    answered: int = 0
    throttled: int = 0
    limits: list[tuple[float, int]] = field(default_factory=list)

    def rate(self) -> float:
        return self.answered

    @property
    def throttled_share(self) -> float:
        total = self.answered + self.throttled
        return self.throttled / total if total else 0.0


def simulate(
    limiter: AdaptiveLimiter,
    clock: FakeClock,
    service: Concurrency | Rate | Noise | Noisy,
    *,
    seconds: float,
    latency: float,
    weight: int = 1,
    measure_from: float = 0.0,
) -> Figures:
    """Clients that always have work: send whenever the limiter has room, until ``seconds``."""
    heap: list[tuple[float, int, Ticket, float | bool | None]] = []
    order = itertools.count()
    figures = Figures()
    while clock.now < seconds:
        while limiter.paused_for() == 0 and (limiter.limit - limiter.in_flight >= weight or not limiter.in_flight):
            ticket = limiter.acquire(weight)
            verdict = service.admit(clock.now, weight)
            took = latency if verdict is True else latency / 10  # a 429 is answered at once
            heapq.heappush(heap, (clock.now + took, next(order), ticket, verdict))
        wake = heap[0][0] if heap else clock.now + limiter.paused_for()
        if limiter.paused_for() and (not heap or clock.now + limiter.paused_for() < wake):
            clock.now += limiter.paused_for()
            continue
        clock.now, _, ticket, verdict = heapq.heappop(heap)
        counted = clock.now >= measure_from
        if verdict is True:
            service.done(weight)
            limiter.release(ticket, Signal.OK)
            figures.answered += weight if counted else 0
        else:
            limiter.release(ticket, Signal.THROTTLED, retry_after=verdict if isinstance(verdict, float) else None)
            figures.throttled += weight if counted else 0
        figures.limits.append((clock.now, limiter.limit))
    return figures


def _round_trips(limiter: AdaptiveLimiter, clock: FakeClock, *, until: int | None = None, rounds: int = 500) -> None:
    """Round trips of 0.1 s with the whole limit in flight, all answered: ``rounds`` of them, or until ``until``."""
    for _ in range(rounds):
        if until is not None and limiter.limit >= until:
            return
        ticket = limiter.acquire(limiter.limit)
        clock.now += 0.1
        limiter.release(ticket, Signal.OK)


def _limiter(clock: FakeClock, ceiling: int = 200) -> AdaptiveLimiter:
    return AdaptiveLimiter("sim", ceiling=ceiling, clock=clock)


@pytest.mark.parametrize("latency", [0.02, 0.1, 0.4])
@pytest.mark.parametrize("cap", [4, 12, 50])
def test_converges_below_a_concurrency_cap(cap: int, latency: float) -> None:
    clock = FakeClock()
    limiter = _limiter(clock)
    seconds = 300 * latency + 60
    figures = simulate(limiter, clock, Concurrency(lambda t: cap), seconds=seconds, latency=latency, measure_from=20)
    ceiling_rate = cap / latency
    achieved = figures.answered / (seconds - 20)
    assert achieved >= 0.8 * ceiling_rate, (achieved, ceiling_rate, limiter.stats)
    assert figures.throttled_share <= 0.05, (figures.throttled_share, limiter.stats)
    assert limiter.limit <= cap


@pytest.mark.parametrize("rate", [40.0, 150.0, 1000.0])
def test_converges_under_a_rate_limit(rate: float) -> None:
    clock = FakeClock()
    limiter = _limiter(clock)
    figures = simulate(limiter, clock, Rate(rate), seconds=120, latency=0.1, measure_from=20)
    achieved = figures.answered / 100
    assert achieved >= 0.8 * rate, (achieved, limiter.stats)
    assert figures.throttled_share <= 0.05, (figures.throttled_share, limiter.stats)


def test_batches_weigh_four_and_still_converge() -> None:
    """A ``$batch`` holds four units; the limit is found in those units."""
    clock = FakeClock()
    limiter = _limiter(clock)
    figures = simulate(limiter, clock, Concurrency(lambda t: 12), seconds=200, latency=0.5, weight=4, measure_from=30)
    assert figures.answered / 170 >= 0.8 * 12 / 0.5
    assert figures.throttled_share <= 0.05


def test_a_burst_of_429s_from_one_window_decreases_once_and_pauses_everybody() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter("burst", ceiling=64, initial=32, clock=clock)
    tickets = [limiter.acquire() for _ in range(32)]
    for ticket in tickets:  # the whole window pushed back
        limiter.release(ticket, Signal.THROTTLED, retry_after=3.0)
    assert limiter.stats.decreases == 1
    assert limiter.limit == int(32 * 0.7)
    assert limiter.paused_for() == pytest.approx(3.0)
    clock.now += 2.9
    assert limiter.paused_for() > 0  # no new send before the Retry-After has passed
    clock.now += 0.2
    assert limiter.paused_for() == 0


def test_a_retry_after_shorter_than_a_round_trip_pauses_everybody_for_a_round_trip() -> None:
    """A rate limit's "the next token in 3 ms" is when one request may go: every thread re-sending its share
    of the limit after 3 ms sent the whole limit into the same empty bucket again (a third of a run's
    requests refused)."""
    clock = FakeClock()
    limiter = AdaptiveLimiter("exact", ceiling=64, initial=32, clock=clock)
    first = limiter.acquire(4)
    clock.now += 0.5
    limiter.release(first, Signal.OK)  # a round trip of 0.5 s (a $batch's)
    pushed_back = limiter.acquire(4)
    clock.now += 0.01
    limiter.release(pushed_back, Signal.THROTTLED, retry_after=0.003)
    assert limiter.paused_for() == pytest.approx(0.5)


def test_the_first_push_back_measures_the_cap_so_a_cold_start_pays_one_pause() -> None:
    """Slow start overshoots a cap of 50; what the service accepted of that load is the cap.

    Regrowth aimed at the overshoot (the load pushed back) would walk into the same wall and pay a
    second Retry-After pause of every thread within seconds; aimed at the census it stops below it.
    """
    clock = FakeClock()
    limiter = AdaptiveLimiter("cold", ceiling=64, initial=32, clock=clock)
    figures = simulate(limiter, clock, Concurrency(lambda t: 50), seconds=10, latency=0.5, weight=4)
    assert (limiter.stats.decreases, limiter.stats.pauses) == (1, 1), limiter.stats
    assert 44 <= limiter.limit <= 50, limiter.stats  # 12 batches of four units fit under 50
    # a Retry-After pause and five round trips of slow start in ten seconds (regrowing from the cut
    # instead of restarting at the census made this 0.83)
    assert figures.answered / (50 / 0.5 * 10) >= 0.845, limiter.stats


def test_a_census_completes_when_a_request_of_it_fails_for_another_reason() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter("census", ceiling=64, initial=20, clock=clock)
    tickets = [limiter.acquire() for _ in range(20)]
    limiter.release(tickets[0], Signal.THROTTLED, retry_after=1.0)  # the decrease: 20 in flight
    assert limiter.limit == 14  # a guess until the census is in
    limiter.release(tickets[1], Signal.THROTTLED, retry_after=1.0)
    limiter.release(tickets[2], Signal.FAILED)  # a reset says nothing about capacity
    for ticket in tickets[3:-1]:
        limiter.release(ticket, Signal.OK)
    assert (limiter.limit, limiter.wall()) == (14, None)  # one answer still out
    limiter.release(tickets[-1], Signal.OK)
    # seventeen of the twenty were carried: the service's measure, where slow start's guess of a cut
    # gives way to it (the limit restarts there rather than regrowing towards it)
    assert (limiter.limit, limiter.wall(), limiter.measurements) == (17, 17, 2)  # the decrease, the census
    clock.now += 1.0
    _round_trips(limiter, clock, rounds=100)  # ten seconds at the measured level: no growth before a probe is due
    assert limiter.limit == 17


def test_after_slow_start_a_decrease_keeps_its_cut_and_regrowth_stops_at_the_census() -> None:
    """A later wall keeps the multiplicative cut (the trial needs a cut of known size), then regrows to it."""
    clock = FakeClock()
    limiter = AdaptiveLimiter("census-late", ceiling=64, initial=20, clock=clock)
    limiter.recall(30)  # out of slow start, as an earlier run left it
    tickets = [limiter.acquire() for _ in range(30)]
    limiter.release(tickets[0], Signal.THROTTLED, retry_after=1.0)
    assert limiter.limit == 21
    for ticket in tickets[1:5]:
        limiter.release(ticket, Signal.THROTTLED, retry_after=1.0)
    for ticket in tickets[5:]:
        limiter.release(ticket, Signal.OK)
    wall = limiter.wall()
    assert wall == 25 and limiter.limit < wall  # the cut stays; the wall is what was carried
    clock.now += 1.0
    _round_trips(limiter, clock, until=25)
    assert limiter.limit == 25


def test_backs_off_when_the_cap_drops_mid_run_and_recovers_when_it_rises() -> None:
    clock = FakeClock()
    limiter = _limiter(clock)
    cap = Concurrency(lambda t: 50 if t < 120 or t >= 240 else 10)
    figures = simulate(limiter, clock, cap, seconds=240, latency=0.1)
    during = [limit for t, limit in figures.limits if 150 <= t < 240]
    # adapted down within 30 s and stayed there, but for the rare probe one unit above
    assert sum(limit <= 10 for limit in during) >= 0.95 * len(during), limiter.stats
    assert max(during) <= 11
    throttled_late = simulate(limiter, clock, Concurrency(lambda t: 10), seconds=300, latency=0.1, measure_from=245)
    assert throttled_late.throttled_share <= 0.05
    recovered = simulate(limiter, clock, Concurrency(lambda t: 50), seconds=1200, latency=0.1)
    assert max(limit for t, limit in recovered.limits if t > 900) >= 40, limiter.stats  # found the higher cap


def test_throttling_that_is_not_about_our_load_does_not_collapse_the_limit() -> None:
    """10 % of requests throttled whatever we do: only those requests wait; the limit stays high."""
    clock = FakeClock()
    limiter = AdaptiveLimiter("noise", ceiling=64, clock=clock)
    figures = simulate(limiter, clock, Noise(0.10), seconds=200, latency=0.1)
    assert limiter.limit >= 32, limiter.stats
    assert limiter.stats.isolated > limiter.stats.decreases
    # each decrease pauses every thread: a client that paused for each of those would crawl
    assert limiter.stats.pauses <= 20, limiter.stats
    assert figures.answered / 200 >= 0.7 * 64 / 0.1, limiter.stats


def test_a_push_back_met_alone_pauses_everybody_but_cuts_nothing() -> None:
    """The run's first request (the listing's first page), alone, refused: a tenant whose budget another app
    spends. No smaller load exists to answer it, so it says nothing about this client's wall.

    It cut slow start's 32 to the floor with a wall at 2, and the trial had no delivery rate from before to
    undo it by: against the emulator's storm faults the full import sent one request at a time, its first
    page committed after 66 s. Here, with 10 % of requests refused whatever the load, the limit stayed at 1.
    """
    clock = FakeClock()
    limiter = AdaptiveLimiter("alone", ceiling=64, initial=32, clock=clock)
    first = limiter.acquire()
    clock.now += 0.1
    limiter.release(first, Signal.THROTTLED, retry_after=2.0)
    assert limiter.paused_for() == pytest.approx(2.0)  # the Retry-After still holds every thread
    assert (limiter.limit, limiter.wall(), limiter.stats.decreases) == (32, None, 0)
    figures = simulate(limiter, clock, Noise(0.10), seconds=200, latency=0.1)
    assert limiter.limit >= 32, limiter.stats
    assert figures.answered / 200 >= 0.7 * 64 / 0.1, limiter.stats


@pytest.mark.parametrize("wall", [Concurrency(lambda t: 12), Rate(150.0)], ids=["cap-12", "rate-150"])
def test_endemic_push_back_does_not_wave_through_a_wall_the_limit_grows_into(wall: Concurrency | Rate) -> None:
    """10 % of requests throttled whatever we do, and a real limit too: the client stays near the wall.

    The endemic share followed every window, so a limit growing past the cap raised it as fast as the
    push-back grew, and 0.78 of all requests were refused, before a spell ended once that share passed
    ``endemic_max_share``. (Against the rate the push-back the limit adds is smaller: 0.15 before, 0.14 now.)
    """
    clock = FakeClock()
    limiter = AdaptiveLimiter("noisy-wall", ceiling=64, initial=32, clock=clock)
    figures = simulate(limiter, clock, Noisy(Noise(0.10), wall), seconds=300, latency=0.1, measure_from=30)
    assert figures.throttled_share <= 0.15, limiter.stats  # the noise's 0.10, and a little of our own
    ceiling = 12 * 0.9 / 0.1 if isinstance(wall, Concurrency) else 150.0 * 0.9
    assert figures.answered / 270 >= 0.6 * ceiling, limiter.stats


def test_an_idle_client_does_not_grow_its_limit() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter("idle", ceiling=64, initial=16, clock=clock)
    for _ in range(200):  # one request at a time: the limit of 16 is never in use
        ticket = limiter.acquire()
        clock.now += 0.1
        limiter.release(ticket, Signal.OK)
    assert limiter.limit == 16


def test_the_limit_percentage_hint_holds_then_eases_before_a_429() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter("hint", ceiling=64, initial=20, clock=clock)
    ticket = limiter.acquire(20)
    limiter.hint(ticket, 0.95)
    clock.now += 0.1
    limiter.release(ticket, Signal.OK)
    assert limiter.limit == 20  # held: no growth at 95 % of the budget
    ticket = limiter.acquire(20)
    limiter.hint(ticket, 1.2)
    limiter.release(ticket, Signal.OK)
    assert limiter.limit == 18  # eased by 10 %, no pause
    assert limiter.paused_for() == 0


def test_a_request_heavier_than_the_limit_goes_alone_and_ranges_fill_the_room() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter("room", ceiling=8, initial=6, clock=clock)
    first = limiter.acquire(4)
    second = limiter.acquire(4, at_least=1)
    assert (first.weight, second.weight) == (4, 2)
    limiter.release(first, Signal.OK)
    limiter.release(second, Signal.OK)
    small = AdaptiveLimiter("small", ceiling=2, initial=2, clock=clock)
    assert small.acquire(4).weight == 4  # alone: slower, never wedged


def _census_below_the_cut(shares: list[float], clock: FakeClock | None = None) -> AdaptiveLimiter:
    """Five batches (20 units) out of slow start, all partly refused with these shares."""
    limiter = AdaptiveLimiter("census", ceiling=64, initial=20, clock=clock or FakeClock())
    limiter.recall(40)
    tickets = [limiter.acquire(4) for _ in shares]
    for ticket, share in zip(tickets, shares, strict=True):
        limiter.release(ticket, Signal.THROTTLED, retry_after=1.0, share=share)
    return limiter


def test_a_census_below_the_cut_restarts_the_limit_there_and_brings_the_wall_down_to_the_cut() -> None:
    """A rate whose burst hid it (a token bucket): the load pushed back was far above what it carries.

    Left at that load, the wall is met again within seconds, each time a pause of every thread.
    """
    limiter = _census_below_the_cut([0.45] * 5)  # 11 of 20 units accepted; the cut went to 14
    assert (limiter.limit, limiter.wall(), limiter.measurements) == (11, 14, 2)  # the decrease, the census


def test_after_a_census_below_the_cut_the_limit_climbs_back_to_the_cut_within_a_few_round_trips() -> None:
    """A census that read low costs a few round trips, not the time until the next probe."""
    clock = FakeClock()
    limiter = _census_below_the_cut([0.9, 0.6, 0.6, 0.6, 0.6], clock)
    clock.now += 2.0  # the pause is over
    limits = [limiter.limit]
    for _ in range(4):
        _round_trips(limiter, clock, rounds=1)
        limits.append(limiter.limit)
    assert limits == [9, 11, 12, 13, 14] and limiter.wall() == 14  # half the way back per round trip


def test_a_census_below_the_cut_lowers_the_limit_by_one_more_cut_at_most() -> None:
    """A $batch runs its next item as soon as one is refused: a small overload can show as many refusals."""
    limiter = _census_below_the_cut([0.9, 0.6, 0.6, 0.6, 0.6])
    # 6.8 units accepted of 20 would restart the limit at 6; one more cut from 14 stops at 9.8
    assert (limiter.limit, limiter.wall(), limiter.measurements) == (9, 14, 2)


def test_a_refused_probe_confirms_its_wall_instead_of_measuring_it() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter("probe", ceiling=64, initial=20, clock=clock)
    limiter.recall(4)
    clock.now += 100.0  # a probe is due
    _round_trips(limiter, clock, until=5)
    single, batch = limiter.acquire(1), limiter.acquire(4)  # the batch goes out at the probed level
    limiter.release(single, Signal.OK)
    limiter.release(batch, Signal.THROTTLED, retry_after=1.0, share=0.5)  # half its items refused
    # the same wall, confirmed now (a memory of it is renewed)
    assert (limiter.limit, limiter.wall(), limiter.measurements) == (4, 4, 1)
    assert limiter.stats.probes_failed == 1


def test_a_push_back_judged_after_its_window_is_placed_by_the_load_it_met_not_by_what_is_in_flight_then() -> None:
    """The trial's verdict comes when its window closes, with the limit full again.

    A $batch refused while 4 units were in flight is over the wall by what it met then; counting what
    is in flight at the verdict made it look like a refused probe at the wall: a pause, no cut, and
    the same wall met again window after window.
    """
    clock = FakeClock()
    limiter = AdaptiveLimiter("judged", ceiling=64, initial=20, clock=clock)
    limiter.recall(20)
    clock.now = 100.0  # a probe is due
    _round_trips(limiter, clock, until=21)
    tickets = [limiter.acquire(4) for _ in range(5)] + [limiter.acquire(1)]
    limiter.release(tickets[0], Signal.THROTTLED, retry_after=1.0)  # the probe is refused: the wall holds
    for ticket in tickets[1:]:
        limiter.release(ticket, Signal.OK)
    assert (limiter.limit, limiter.wall(), limiter.stats.decreases) == (20, 20, 1)
    clock.now += 1.5  # the pause is over: the next full window is the trial's
    for _ in range(2):
        for ticket in [limiter.acquire() for _ in range(10)]:
            limiter.release(ticket, Signal.OK)
    clock.now += 0.5
    refused = limiter.acquire(4)
    limiter.release(refused, Signal.THROTTLED, retry_after=1.0)  # met 4 units: far below the wall
    singles = [limiter.acquire() for _ in range(20)]
    for ticket in singles[:14]:
        limiter.release(ticket, Signal.OK)
    singles[14:] += [limiter.acquire() for _ in range(14)]
    clock.now += 0.1
    limiter.release(singles.pop(), Signal.OK)  # the 20th answer closes the window, 19 still in flight
    assert limiter.stats.decreases == 2, limiter.stats  # still pushed back after the decrease: the next one
    assert limiter.limit <= 14 and limiter.wall() is None, limiter.stats  # a cut, and the wall measured anew


def test_slow_start_restarts_at_its_census_not_at_its_cut() -> None:
    """The cut after slow start's overshoot is a guess; the census is a measurement, so the limit goes there.

    Regrowing from the cut would only walk back up to the same wall, one $batch round trip (five of
    Graph's) at a time: seconds below the wall, a large share of a short run.
    """
    clock = FakeClock()
    limiter = AdaptiveLimiter("census-restart", ceiling=64, initial=56, clock=clock)
    tickets = [limiter.acquire(4) for _ in range(14)]  # slow start's overshoot: 56 units against a cap of 48
    for ticket in tickets[:2]:
        limiter.release(ticket, Signal.THROTTLED, retry_after=1.0)  # two batches refused outright
    assert limiter.limit == 39  # the guess: 56 x 0.7
    for ticket in tickets[2:]:
        limiter.release(ticket, Signal.OK)
    assert (limiter.limit, limiter.wall()) == (48, 48)
    clock.now += 1.0
    assert limiter.acquire(48).weight == 48  # straight after the pause, at the wall


def test_an_overstated_slow_start_census_is_measured_again_at_the_next_push_back() -> None:
    """Batches refused for a few items count most of their weight as carried: the census can overstate.

    Restarting there meets the wall at once, and that push-back is measured by a census of its own
    (the next test): the one pause that regrowth from the cut would have met a few round trips later.
    """
    clock = FakeClock()
    limiter = AdaptiveLimiter("overstated", ceiling=64, initial=56, clock=clock)
    tickets = [limiter.acquire(4) for _ in range(14)]  # slow start's overshoot: 56 units against a cap of 50
    for ticket, share in zip(tickets[:3], (0.05, 0.1, 0.1), strict=True):
        limiter.release(ticket, Signal.THROTTLED, retry_after=1.0, share=share)
    for ticket in tickets[3:]:
        limiter.release(ticket, Signal.OK)
    assert (limiter.limit, limiter.wall()) == (55, 55)  # 55 units carried, by the shares
    figures = simulate(limiter, clock, Concurrency(lambda t: 50), seconds=20, latency=0.5, weight=4)
    assert limiter.stats.decreases == 2, limiter.stats  # one more, and then none
    assert limiter.limit <= 50 and (limiter.wall() or 0) <= 50, limiter.stats
    assert figures.answered / (50 / 0.5 * 20) >= 0.85, limiter.stats
    # the first push-back at the overstated wall decreases at once: the cut's trial is void once the
    # census replaced the cut (it held that decrease for a window of refused requests: 2.7 % of them)
    assert figures.throttled_share <= 0.01, limiter.stats


def test_the_push_back_an_overstated_census_meets_restarts_the_limit_at_its_own_census() -> None:
    """The second measurement is as good as the first, so the limit restarts there too (once).

    Against a cap on items in flight, $batches in their last rounds run fewer items than they
    weigh, so a census taken while they were staggered can read a batch or so over the wall. Cut
    by 30 % and regrowing a $batch round trip at a time, a 2,000-user import lost 0.2 s more to
    that second push-back than its pause (simulated: 7.2-7.5 s before, 7.0-7.3 s now).
    """
    clock = FakeClock()
    limiter = AdaptiveLimiter("recheck", ceiling=64, initial=56, clock=clock)
    tickets = [limiter.acquire(4) for _ in range(14)]  # slow start's overshoot against a cap of 50
    for ticket, share in zip(tickets[:3], (0.05, 0.1, 0.1), strict=True):
        limiter.release(ticket, Signal.THROTTLED, retry_after=1.0, share=share)
    for ticket in tickets[3:]:
        limiter.release(ticket, Signal.OK)
    assert (limiter.limit, limiter.wall()) == (55, 55)  # overstated by the shares
    clock.now += 1.0
    tickets = [limiter.acquire(4) for _ in range(13)] + [limiter.acquire(3)]  # the restart: 55 units
    limiter.release(tickets[-1], Signal.THROTTLED, retry_after=1.0)  # refused outright
    assert limiter.limit == 38  # the cut, until the census is in
    for ticket in tickets[:12]:
        limiter.release(ticket, Signal.OK)
    limiter.release(tickets[12], Signal.THROTTLED, retry_after=1.0, share=0.5)
    assert (limiter.limit, limiter.wall()) == (50, 50)  # 48 + 2 carried: restarted there, not at 38
    # once only: the next push-back keeps its cut (the trial that tells noise from a wall needs one)
    clock.now += 1.0
    tickets = [limiter.acquire(5) for _ in range(10)]
    limiter.release(tickets[0], Signal.THROTTLED, retry_after=1.0)
    for ticket in tickets[1:]:
        limiter.release(ticket, Signal.OK)
    assert limiter.wall() == 45 and limiter.limit < 45, limiter.stats  # the cut (regrowing), not the census


def test_slow_start_lowers_its_cut_to_a_census_below_it() -> None:
    """Outlook's 4 per app against a slow start of 32: the census, not six more pauses, finds the 4."""
    clock = FakeClock()
    limiter = AdaptiveLimiter("strict", ceiling=64, initial=32, clock=clock)
    tickets = [limiter.acquire(4) for _ in range(8)]
    for ticket in tickets[1:]:  # seven batches refused outright
        limiter.release(ticket, Signal.THROTTLED, retry_after=1.0)
    limiter.release(tickets[0], Signal.OK)  # the one that got the four slots
    assert (limiter.limit, limiter.wall()) == (4, 4)


def test_a_refused_probe_keeps_the_levels_it_carried_as_the_wall() -> None:
    """A wall remembered low (a census that read partly refused $batches as 4 against a cap of 7).

    The probe was answered at 5, 6 and 7 and refused at 8. Before, the refusal "confirmed" the old wall
    and the limit went back to 4 until the next probe, which met the same fate (the import ran at 4 of
    7 for the whole run). Now the wall is the highest level answered for a round trip's worth (as many
    units as the level, sent at it or above): 6 here (6 and 8 units at 5 and 6, only 3 at 7), not a
    level one lucky answer reached.
    """
    clock = FakeClock()
    limiter = _limiter(clock, ceiling=64)
    assert limiter.recall(4)
    figures = simulate(limiter, clock, Concurrency(lambda _now: 7), seconds=60.0, latency=0.1)
    assert limiter.stats.probes_failed == 2  # at 10.5 s and 40.7 s
    assert (limiter.limit, limiter.wall()) == (6, 6)
    assert figures.limits[-1][1] == 6


@pytest.mark.parametrize(
    ("items", "refused", "wall"),
    [(20, 17 / 20, 7), (None, 17 / 20, 4), (3, 1 / 3, 6)],
    ids=["batch-of-20", "items-not-said", "ran-fewer-than-its-weight"],
)
def test_a_partly_refused_batch_counts_the_places_its_accepted_items_held(
    items: int | None, refused: float, wall: int
) -> None:
    """A cap of 7 against a slow start of 32 in batches of 20 that Graph runs four at a time.

    One batch got four places and kept them; another got three, and its fourth runner met the full
    service and was refused for each of its other seventeen items, one after another, while the three
    ran. Counted by refused share (3/20 of a weight of 4) that batch held 0.6 of a unit and the census
    read 4, so the import ran at 4 of 7 until a probe was due (seconds to minutes). Counted by what
    it ran (``items``), the census reads the 7. A caller that does not say ``items`` gets the share
    rule, and a batch that ran fewer items than it weighs (two of three) held only those.
    """
    clock = FakeClock()
    limiter = AdaptiveLimiter("cap-7", ceiling=64, initial=32, clock=clock)
    tickets = [limiter.acquire(4) for _ in range(8)]
    for ticket in tickets[2:]:  # six batches refused outright
        limiter.release(ticket, Signal.THROTTLED, retry_after=1.0, items=20)
    limiter.release(tickets[1], Signal.THROTTLED, retry_after=1.0, share=refused, items=items)
    limiter.release(tickets[0], Signal.OK)  # the batch that got four places
    assert (limiter.limit, limiter.wall()) == (wall, wall)
    assert not limiter.rate_bound  # a cap: batches stay long


def test_a_dry_token_bucket_s_refusals_are_counted_by_share_not_by_places() -> None:
    """Slow start at 32 in batches of 20 meets a token bucket as it runs dry (rate-150's burst).

    From then on every batch in flight has items refused, each after running several: by places, the
    eight batches held 32 of 32 units and the census would read the whole load pushed back as the
    wall, which every later window then met (rate-150 throttled 5.8-6.6 % so). Eight requests with
    refusals cannot fit in the load's 0 unheld places, so these refusals are a rate's, and the census
    counts the accepted share instead: 8 x 4 x 6/20 = 9.6 units, and slow start restarts there.
    """
    clock = FakeClock()
    limiter = AdaptiveLimiter("rate", ceiling=64, initial=32, clock=clock)
    tickets = [limiter.acquire(4) for _ in range(8)]
    clock.now = 0.5
    for ticket in tickets:
        limiter.release(ticket, Signal.THROTTLED, retry_after=1.0, share=14 / 20, items=20)
    assert (limiter.limit, limiter.wall()) == (9, 9)  # by places: (32, 32)
    assert limiter.rate_bound  # a rate: callers send one round per batch from now on


def test_a_cap_s_refusals_in_the_few_requests_over_it_are_counted_by_places() -> None:
    """Slow start's overshoot to 52 against a cap of 50 (the ``default`` model), in batches of 20.

    Twelve batches held their 48 places; the thirteenth got two runners in, and its other two were
    refused for item after item (18 of 20 refused). By share the census read 48.4 and the limit sat at
    48 for the run, two units (4 %) under the cap; one request with refusals fits in the 2 unheld places
    of 52, so they are a cap's, and the census counts places: 50.
    """
    clock = FakeClock()
    limiter = AdaptiveLimiter("cap", ceiling=64, initial=52, clock=clock)
    tickets = [limiter.acquire(4) for _ in range(13)]
    clock.now = 0.1
    limiter.release(tickets[-1], Signal.THROTTLED, retry_after=1.0, share=18 / 20, items=20)
    clock.now = 0.5
    for ticket in tickets[:-1]:
        limiter.release(ticket, Signal.OK)
    assert (limiter.limit, limiter.wall()) == (50, 50)
    assert not limiter.rate_bound


def test_a_bucket_that_runs_dry_as_slow_start_grows_is_told_from_a_cap_by_which_requests_it_refused() -> None:
    """A token bucket runs dry just as slow start grows to 64 in batches of 20 (traced at ``rate-150`` with
    a first wave of 48 units).

    The newest batches were refused outright, so 14 of the 64 places were never held and 13 requests had
    refusals: the count that tells a cap's refusals from a dry bucket's (``refusing <= expected - held``)
    read a cap, and the census placed the wall at the 49 places held where the bucket sustains 15. Nine of
    the thirteen, though, had filled every place they weighed before items were refused (4 to 9 of 20
    accepted): the service was out of tokens, not of room, which a cap would show on a few requests at
    most. So the census counts the accepted share: slow start restarts at 22.
    """
    clock = FakeClock()
    limiter = AdaptiveLimiter("bucket-at-growth", ceiling=64, initial=64, clock=clock)
    tickets = [limiter.acquire(4) for _ in range(16)]
    clock.now = 0.1
    for ticket in tickets[13:]:  # the newest three, refused outright: no place held
        limiter.release(ticket, Signal.THROTTLED, retry_after=1.0, items=20)
    clock.now = 0.5
    limiter.release(tickets[12], Signal.THROTTLED, retry_after=1.0, share=19 / 20, items=20)  # one place
    for refused in (16, 16, 16, 16, 12, 15, 12, 11):  # filled their four places, then out of tokens
        limiter.release(tickets.pop(0), Signal.THROTTLED, retry_after=1.0, share=refused / 20, items=20)
    limiter.release(tickets.pop(0), Signal.THROTTLED, retry_after=1.0, share=8 / 12, items=12)
    for ticket in tickets[:3]:
        limiter.release(ticket, Signal.OK)
    assert (limiter.limit, limiter.wall()) == (22, 22)  # by places: (49, 49)
    assert limiter.rate_bound


def test_once_a_census_reads_a_rate_the_limiter_stays_rate_bound_and_a_recall_says_so() -> None:
    """A later census that reads like a cap's does not make batches long again, and a warm start can say.

    Traced at 150 requests/s with 20 ms round trips: a probe's second census read a cap (the bucket
    still held a few tokens), the batches went back to twenty items, and the next dry spell refused
    553 items in one second.
    """
    clock = FakeClock()
    limiter = AdaptiveLimiter("rate", ceiling=64, initial=32, clock=clock)
    tickets = [limiter.acquire(4) for _ in range(8)]
    clock.now = 0.5
    for ticket in tickets:  # a dry bucket: every batch had items refused after filling its places
        limiter.release(ticket, Signal.THROTTLED, retry_after=0.01, share=14 / 20, items=20)
    assert limiter.rate_bound
    clock.now = 30.0
    tickets = [limiter.acquire(1) for _ in range(limiter.limit)]
    limiter.release(tickets.pop(), Signal.THROTTLED, retry_after=0.01)  # one runner without a place
    for ticket in tickets:
        limiter.release(ticket, Signal.OK)
    assert limiter.stats.decreases == 2
    assert limiter.rate_bound

    warm = AdaptiveLimiter("rate", ceiling=64, clock=clock)
    assert warm.recall(9, rate_bound=True) and warm.rate_bound
    cold = AdaptiveLimiter("cap", ceiling=64, clock=clock)
    assert cold.recall(9) and not cold.rate_bound
