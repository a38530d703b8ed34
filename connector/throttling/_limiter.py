"""An adaptive in-flight limit for a throttled service (Microsoft Graph, Exchange's EWS).

Why adaptive: Microsoft documents the limits that govern photo requests loosely and has changed
them (Outlook's "4 concurrent requests" per app and mailbox, then per app; Entra ID's resource-unit
buckets now that photos live there; a global per-app rate). A fixed concurrency is right for one
guess only. The limiter finds the ceiling from the service's answers instead, the way TCP finds a
path's capacity (RFC 5681 for slow start and AIMD; RFC 8312 for remembering where the last loss
happened; BBR's delivery rate for telling a limit from noise):

* **Slow start.** The limit starts small and grows by one unit per unit answered (it doubles per
  round trip) until the first push-back (HTTP 429, or 503 with Retry-After).
* **Multiplicative decrease and a client-wide pause, once per window.** A push-back multiplies the
  limit by ``backoff`` (0.7, as CUBIC) and stops *new* sends from every thread of the client until
  its ``Retry-After`` has passed (Graph keeps counting requests it throttles, so sending into a
  throttle only extends it; without Retry-After, an exponential backoff; never less than a round
  trip, since a fractional Retry-After names when *one* request may go). Requests sent before
  that decrease went into the same overload, so their push-backs neither decrease nor pause again
  (the ``epoch`` on each ticket says which window a request belongs to); each of them just waits
  its own Retry-After (the caller re-sends it). A push-back met alone (one unit in flight, the least
  load there is) while the limit allows more pauses every thread but cuts nothing: no smaller load
  answers it, so it says nothing about where this client's wall is.
* **A census, not a guess, of where the wall is.** Everything in flight when the service pushed back
  met the same overload, so what became of those requests measures the service: the units it
  accepted of that load are what it carries at once (against a cap on requests in flight, exactly
  the cap; against a rate, about the rate times the round trip). When the last of them is answered,
  the remembered ceiling is set one unit above that count (never above the load pushed back).
  Regrowth then stops below the wall instead of walking into it again, each wall costing every
  thread a whole Retry-After pause. After slow start's overshoot (up to twice the wall) the limit
  restarts at the census: that cut was a guess made before anything was measured, and regrowth from
  it only walks back up to the same wall, a round trip at a time (a ``$batch``'s is five of
  Graph's): seconds below the wall in a run that may take ten. A partly refused ``$batch`` counts
  the places its accepted items held when the refusals look like a cap's (few requests refused, most
  of them missing a place), its accepted share when they look like a dry token bucket's (nearly
  every request refused, most after filling their places); see ``_Census.carried``. A census can
  overstate (places counted for a batch that held them for part of the time only, and one in its
  last rounds runs fewer items than it weighs); then the next push-back comes at once (the cut's
  trial is void once the census replaced the cut), the pause that regrowth would have met a few
  round trips later, and its census restarts the limit too if it reads above that push-back's cut
  (once: the second measurement is as good as the first, and regrowth from the cut would take
  seconds). Later decreases keep their multiplicative cut and regrow to the wall, because only a cut
  of known size lets the delivery rate after it tell endemic push-back from a limit (below), and a
  ``$batch`` holds its units for its whole round trip while running fewer items in its last rounds,
  so a census taken at full load can overstate the cap. A census below the cut (a rate whose burst
  hid it) brings the wall down to the cut and restarts the limit at the census, but no lower than
  one more cut: a ``$batch`` runs its next item as soon as one is refused, so a small overload can
  show as many refused items, and regrowth climbs back to the cut within a few round trips. Nothing
  accepted (a whole window refused) says nothing, and a refused probe confirms its wall rather than
  measuring it.
* **A rate or a cap.** The census also tells which kind of wall it met (``_Census.drained``): a cap
  refuses the few runners without a place, a token bucket run dry refuses every request in flight. Once
  a rate is seen, ``rate_bound`` tells callers that batch to send one round per batch: against a dry
  bucket each ``$batch`` of twenty has all its queued items refused, so short batches make a push-back
  cost the units in flight instead of five times that (at 150 requests/s with 20 ms round trips, 23 %
  of requests were refused with twenty-item batches).
* **Additive increase.** Afterwards the limit grows by about one unit per round trip (``weight /
  limit`` per unit answered), and only while the limit is in use (Netflix's AIMDLimit rule: at
  least half of it in flight when the request was sent), so an idle client does not talk itself
  into a limit it never tested. A window with a push-back does not grow.
* **Remembered ceiling, rare probes.** The in-flight level of the last decrease is remembered; the
  limit stays one unit below it until a probe is due: no sooner than ``probe_min_s``, 40 round
  trips, and 30 times the pause the last push-back cost (a refused probe stops every thread for a
  Retry-After, so this keeps probing near 3 % of the run). A probe that is pushed back doubles the
  time to the next one (up to ``probe_max_s``), and the wall goes to the highest level its requests
  were answered at for a round trip's worth, if above the old one (against a cap of 7 a census had
  read 4; the probe was answered at 5, 6 and 7 and refused at 8, and the limit went back to 4 for
  the rest of the run); a probe that holds for a full window means the service's limit rose (or
  the model changed), and the memory is dropped. Against a stable limit the number of push-backs
  grows with the logarithm of the run's length, not with it.
* **Was it about us?** Not every 429 is caused by this client's load: a tenant budget spent by
  other apps, or noise, throttles a share of requests whatever we do, and a client that shrank and
  stopped for each of those would crawl without helping anybody. The answer is in the delivery
  rate (OK answers per second): over a real limit, a decrease costs nothing (the service was
  delivering its maximum anyway); with endemic throttling, it costs what it took (the rate falls to
  about ``backoff`` of what it was); when the service's own capacity fell, the rate falls much
  further. So after each decrease the first full window after the pause is compared with the
  window before it. If the rate fell by about the decrease while push-back went on, it is undone and push-back
  is *endemic* for a while (``endemic_min_s``, doubling while it stays so): then only a window
  whose pushed-back share rises clearly above the endemic share (three standard deviations, at
  least ``min_window`` answers) counts as this client's overload. The endemic share follows the
  windows, so a limit that grows into a wall during the spell raises it a window at a time, faster
  than any one window stands out; once it is above ``endemic_max_share`` (the most the verdict
  ever waves through) the spell ends, and each push-back is judged on its own again. (Without that
  end, noise on top of a cap of 12 had three of four requests refused for the rest of the spell.)
* **Early hint.** Graph's identity APIs send ``x-ms-throttle-limit-percentage`` (0.8 to 1.8) once
  an app has used more than 80 % of its budget. At or above ``hint_hold`` the limit stops growing;
  above 1.0 it is decreased gently (``hint_backoff``, once per window) before a 429 is needed.

Units: one unit is one request as the service counts it; a ``$batch`` whose items the service runs
four at a time weighs four. The limiter is thread-safe and does no I/O; callers acquire a
:class:`Ticket` before sending and release it with the :class:`Signal` the answer carried.
"""

from __future__ import annotations

import enum
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["AdaptiveLimiter", "Cancelled", "LimiterStats", "Signal", "Ticket"]


class Signal(enum.Enum):
    """What an answer says about the service's capacity."""

    #: Answered (whatever the status, as long as it was not push-back): the capacity was there.
    OK = "ok"
    #: Pushed back: 429, or 503 with Retry-After.
    THROTTLED = "throttled"
    #: Failed without saying anything about capacity (connection reset, 500, 502): neutral.
    FAILED = "failed"


class Cancelled(Exception):
    """``acquire`` gave up because the caller's cancel event was set (the step is stopping)."""


@dataclass(frozen=True, slots=True)
class Ticket:
    """One request's share of the limit; hand it back to :meth:`AdaptiveLimiter.release`."""

    weight: int
    #: The decrease window the request was sent in.
    epoch: int
    #: Units in flight (this request's included) when it was sent.
    level: int
    sent_at: float


@dataclass(slots=True)
class LimiterStats:
    """Counters for history, the benchmark and Prometheus."""

    limit: int = 0
    in_flight: int = 0
    peak_limit: int = 0
    decreases: int = 0
    #: Decreases undone because the push-back turned out to be endemic (not about our load).
    undone: int = 0
    #: Push-backs that neither decreased nor paused (answered already, or endemic).
    isolated: int = 0
    probes_failed: int = 0
    pauses: int = 0
    pause_seconds: float = 0.0
    #: Time threads spent blocked in ``acquire`` while a pause was in force.
    throttle_wait_seconds: float = 0.0

    def as_dict(self) -> dict[str, float | int]:
        return {
            "limit": self.limit,
            "in_flight": self.in_flight,
            "peak_limit": self.peak_limit,
            "decreases": self.decreases,
            "undone": self.undone,
            "isolated": self.isolated,
            "probes_failed": self.probes_failed,
            "pauses": self.pauses,
            "pause_seconds": round(self.pause_seconds, 3),
            "throttle_wait_seconds": round(self.throttle_wait_seconds, 3),
        }


@dataclass(slots=True)
class _Window:
    """Answers since ``started``; one limit's worth (at least ``min_window``) makes a window."""

    started: float
    answers: int = 0
    delivered: float = 0.0
    pushed_back: float = 0.0
    #: The window's push-back sent at the lowest level (the best estimate of where the limit is),
    #: and the longest Retry-After any push-back asked for; judged when the window closes.
    lowest: Ticket | None = None
    #: Units in flight when ``lowest`` was answered (its own included): the load it was refused for.
    lowest_load: int = 0
    retry_after: float | None = None
    hold: bool = False


@dataclass(slots=True)
class _Census:
    """What became of the requests in flight when a decrease was made: the service's measure.

    Everything in flight then met the same overload. The part the service accepted is how much it
    carries at once (for a cap on requests in flight, exactly the cap; for a rate, the rate times the
    round trip): a far better estimate of the wall than the load that was pushed back.
    """

    epoch: int
    expected: float
    #: The decrease ended slow start: its cut was a guess about an overshoot, not a measured step.
    slow_start: bool = False
    #: The decrease was the first after a slow-start census restarted the limit: that census may have
    #: overstated the wall, and this one measures it again.
    recheck: bool = False
    #: Units accepted: whole requests, plus the accepted share of partly refused ``$batch``es.
    accepted: float = 0.0
    #: Units held: whole requests, plus the places partly refused ``$batch``es held (``_carried``).
    held: float = 0.0
    #: Requests with any item pushed back.
    refusing: int = 0
    #: Of those, the ones whose accepted items filled every place they weighed (``carried``).
    refusing_placed: int = 0
    #: Units pushed back (a ``$batch``'s refused share of its weight): the census met a wall.
    refused: float = 0.0
    #: Units answered (accepted or pushed back): the census is complete when they reach ``expected``.
    answered: float = 0.0

    def count(self, weight: int, signal: Signal, share: float, items: int | None) -> bool:
        """Count one answer (``share`` and ``items`` as ``release`` takes them); True once all are in."""
        if signal is Signal.OK:
            self.accepted += weight
            self.held += weight
        elif signal is Signal.THROTTLED:
            self.accepted += weight * (1.0 - share)
            places = _carried(weight, items, share)
            self.held += places
            self.refused += weight * share
            self.refusing += 1
            if places >= weight - 1e-9:
                self.refusing_placed += 1
        if signal is Signal.FAILED:
            self.expected -= weight  # said nothing about capacity: out of the census
        else:
            self.answered += weight
        return self.answered >= self.expected

    def carried(self) -> float:
        """What the service carried of the load: the places held, if the refusals look like a cap's.

        Against a cap on requests in flight, a partly refused ``$batch`` is one whose runners found the
        service full: those that got in held their places until they finished, while the others were
        refused item after item (a batch runs its next item as soon as one is refused). Its accepted
        share of its weight then undercounts (three of twenty accepted is 0.6 of a unit for three
        places), and the census reads the wall low for the rest of the run. Counting places is right
        only for a cap, though: when a rate's token bucket runs dry, every request in flight has items
        refused from then on, each after running a few, and counting those as places reads the load
        pushed back as the wall (rate-150's census read its whole overshoot and every later window was
        throttled). The two tell themselves apart: each request a cap refused had a runner without a
        place, so the requests with refusals are at most the load less the places held; a dry bucket
        refuses nearly every request in flight while the places still add up to nearly the load.

        That count alone sits on its boundary when a bucket runs dry just as slow start grows: the newest
        batches, refused outright, leave as many places unheld as there are refusing requests (traced at
        rate-150 with a first wave of 48 units: 13 requests refusing against 14 places unheld, read as a cap
        of 50 where 150 requests/s sustain 15 units, and five walls on the way down). What tells them apart
        then is which requests were refused. Against a cap, a refusal means no room: the request had a
        runner without a place, so its accepted items fall short of its weight. A request that filled every
        place it weighed and was refused later met the service out of tokens, not of room (a cap refuses
        such a one only when a place changed hands between two of its items). So most refusing requests must
        be short of their places for a cap.
        """
        return self.accepted if self.drained() else self.held

    def drained(self) -> bool:
        """The refusals look like a token bucket's run dry, not a cap's (see :meth:`carried`)."""
        return not (self.refusing <= self.expected - self.held and 2 * self.refusing_placed <= self.refusing)


@dataclass(slots=True)
class _Trial:
    """A decrease on probation: the delivery rate before it, and the limit to restore."""

    rate_before: float
    share_before: float
    limit_before: float
    judge_after: float


class AdaptiveLimiter:
    """The in-flight limit of one client identity against one service (see the module docstring)."""

    def __init__(
        self,
        name: str,
        *,
        ceiling: int,
        initial: int = 4,
        floor: int = 1,
        backoff: float = 0.7,
        endemic_max_share: float = 0.35,
        hint_hold: float = 0.9,
        hint_backoff: float = 0.9,
        min_window: int = 20,
        probe_min_s: float = 10.0,
        probe_rtts: float = 40.0,
        probe_pauses: float = 30.0,
        probe_max_s: float = 300.0,
        endemic_min_s: float = 10.0,
        endemic_max_s: float = 600.0,
        pause_initial_s: float = 1.0,
        pause_max_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= floor <= ceiling:
            raise ValueError("need 1 <= floor <= ceiling")
        if not 0.0 < backoff < 1.0:
            raise ValueError("backoff must be between 0 and 1")
        self.name = name
        self.ceiling = ceiling
        self.floor = floor
        self.backoff = backoff
        self.endemic_max_share = endemic_max_share
        self.hint_hold = hint_hold
        self.hint_backoff = hint_backoff
        self.min_window = min_window
        self.probe_min_s = probe_min_s
        self.probe_rtts = probe_rtts
        self.probe_pauses = probe_pauses
        self.probe_max_s = probe_max_s
        self.endemic_min_s = endemic_min_s
        self.endemic_max_s = endemic_max_s
        self.pause_initial_s = pause_initial_s
        self.pause_max_s = pause_max_s
        self._clock = clock
        self._cond = threading.Condition()
        self._limit = float(max(floor, min(initial, ceiling)))
        self._in_flight = 0
        self._epoch = 0
        self._slow_start = True
        #: In-flight level of the last decrease, and when growing past it may be tried again.
        self._bad_level: int | None = None
        #: ``_bad_level`` is a census's measure (or recalled), not the guess made at a decrease.
        self._wall_measured = False
        self._probe_interval = probe_min_s
        self._probe_at = 0.0
        self._probe_started: float | None = None
        #: Units a probe's requests were answered for, by the level they were sent at (``_probe_carried``).
        self._probe_levels: dict[int, int] = {}
        self._paused_until = 0.0
        self._consecutive_pushbacks = 0
        #: Smoothed round trip of answered requests (RFC 6298's SRTT), for the probe interval.
        self._srtt: float | None = None
        self._window = _Window(clock())
        self._last_rate: float | None = None
        self._trial: _Trial | None = None
        self._census: _Census | None = None
        #: The limit was restarted at a slow-start census that no push-back has tested yet.
        self._census_untested = False
        #: A census read a token bucket run dry, not a cap (``rate_bound``).
        self._rate_bound = False
        #: Weight of the ticket being released (already out of ``_in_flight``), for a census.
        self._releasing = 0
        self._endemic_until = 0.0
        self._endemic_share = 0.0
        self._endemic_hold = endemic_min_s
        #: How often the answers changed what :meth:`wall` says (a census placed or a refused probe
        #: confirmed the wall; a decrease, a probe that held or an endemic verdict made it unknown): a
        #: caller keeping the wall across runs saves it on change.
        self.measurements = 0
        self.stats = LimiterStats(limit=int(self._limit), peak_limit=int(self._limit))
        self._listeners: list[Callable[[AdaptiveLimiter], None]] = []

    # -- reading --------------------------------------------------------------------------------
    @property
    def limit(self) -> int:
        """The current limit in whole units (never below ``floor``)."""
        return max(self.floor, int(self._limit))

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def rate_bound(self) -> bool:
        """A wall this service showed was a rate (a token bucket run dry), not a cap on requests in flight.

        Against a rate, every request in flight when the bucket runs dry has its items refused one after
        another: a ``$batch`` of twenty running four at a time has all its remaining items refused within
        milliseconds. A caller that batches sends one round per batch (as many items as the units it
        holds) once this holds, so a push-back costs about the units in flight, not five times that. (A
        cap refuses only the runners without a place, and long batches keep the service busy through the
        pause a push-back costs: so only a rate gets short batches.) Kept across runs with the wall
        (``LimitMemory``).
        """
        return self._rate_bound

    def paused_for(self) -> float:
        """Seconds until new sends may start again (0 when not paused)."""
        return max(0.0, self._paused_until - self._clock())

    def wall(self) -> int | None:
        """The units the service carried at its last push-back (the remembered ceiling), if measured.

        Worth keeping across processes: a scheduled run that starts at the wall (:meth:`recall`)
        skips slow start and the overshoot that costs every thread a Retry-After pause.
        """
        with self._cond:
            return self._bad_level - 1 if self._bad_level is not None and self._wall_measured else None

    def recall(self, wall: int, *, rate_bound: bool = False) -> bool:
        """Start at a wall an earlier run measured (:meth:`wall`), unless this limiter learned its own.

        The wall stands as if measured now: the limit stays below it until a probe is due (so a
        service whose limit rose is found again), and a wall that fell is met by the usual
        decrease and census. ``rate_bound``: that run found the wall a rate (:attr:`rate_bound`).
        False when the limiter already knows better (it left slow start).
        """
        with self._cond:
            if not self._slow_start or self._bad_level is not None:
                return False
            self._rate_bound = rate_bound
            level = max(self.floor, min(int(wall), self.ceiling))
            self._limit = float(level)
            self._bad_level = level + 1
            self._wall_measured = True
            self._slow_start = False
            # probing again as soon as any wall may be (no round trip is known yet to space it by): a
            # service that allows more now, or a wall that depends on the round trip (a rate), is found
            # within the run instead of after 40 assumed one-second round trips
            self._probe_at = self._clock() + self._probe_interval
            self._publish()
            return True

    def on_change(self, listener: Callable[[AdaptiveLimiter], None]) -> None:
        """Call ``listener(self)`` after the limit or a pause changes (metrics gauges)."""
        self._listeners.append(listener)

    # -- sending --------------------------------------------------------------------------------
    def acquire(self, weight: int = 1, *, at_least: int | None = None, cancel: threading.Event | None = None) -> Ticket:
        """Block until ``weight`` units (or, with ``at_least``, as many as fit, not fewer) may be sent.

        The granted weight is ``ticket.weight``; a caller that asked for a range sizes its request
        to it (a ``$batch`` of fewer items). A request heavier than the whole limit is let through
        alone, so a limit below a batch's weight slows the client down instead of wedging it.
        """
        want = max(1, weight)
        least = max(1, min(at_least if at_least is not None else want, want))
        with self._cond:
            while True:
                if cancel is not None and cancel.is_set():
                    raise Cancelled
                now = self._clock()
                if self._paused_until > now:
                    self._cond.wait(min(self._paused_until - now, 0.5))
                    self.stats.throttle_wait_seconds += self._clock() - now
                    continue
                room = self.limit - self._in_flight
                granted = min(want, room) if room >= least else (want if self._in_flight == 0 else 0)
                if granted > 0:
                    break
                self._cond.wait(0.5)
            self._in_flight += granted
            self.stats.in_flight = self._in_flight
            return Ticket(granted, self._epoch, self._in_flight, now)

    def release(
        self,
        ticket: Ticket,
        signal: Signal,
        *,
        retry_after: float | None = None,
        share: float = 1.0,
        items: int | None = None,
    ) -> None:
        """Hand the units back and learn from the answer.

        ``share`` is the part of a THROTTLED request's weight that was pushed back (a ``$batch`` with
        3 of 20 items throttled pushed back 3/20 of its weight; the rest was delivered). ``items`` is
        how many requests it carried (a ``$batch``'s items; by default its weight): what it ran
        tells the census how many units it held at the service (``_carried``).
        """
        with self._cond:
            now = self._clock()
            self._in_flight -= ticket.weight
            self.stats.in_flight = self._in_flight
            share = min(1.0, max(0.0, share)) if signal is Signal.THROTTLED else 0.0
            self._releasing = ticket.weight
            if signal is Signal.OK:
                self._on_ok(ticket, now)
            elif signal is Signal.THROTTLED:
                self._on_pushback(ticket, now, retry_after, share)
            self._releasing = 0
            self._count_census(ticket, signal, share, now, items)
            self._publish()
            self._cond.notify_all()

    def hint(self, ticket: Ticket, limit_percentage: float) -> None:
        """Graph's ``x-ms-throttle-limit-percentage`` on an answer: slow down before a 429."""
        with self._cond:
            if limit_percentage >= self.hint_hold:
                self._window.hold = True
                self._slow_start = False
                held_at = min(self._bad_level or ticket.level + 1, ticket.level + 1)
                self._wall_measured = self._wall_measured and held_at == self._bad_level
                self._bad_level = held_at
                self._probe_at = max(self._probe_at, self._clock() + self._probe_interval)
            if limit_percentage > 1.0 and ticket.epoch == self._epoch:
                self._epoch += 1
                self._limit = max(float(self.floor), self._limit * self.hint_backoff)
                self.stats.decreases += 1
            self._publish()

    def pause(self, seconds: float) -> None:
        """Stop new sends for ``seconds`` (a service-wide back-off request, e.g. EWS's BackOffMilliseconds)."""
        with self._cond:
            self._pause_locked(self._clock(), seconds)
            self._publish()

    # -- learning -------------------------------------------------------------------------------
    def _on_ok(self, ticket: Ticket, now: float) -> None:
        self._consecutive_pushbacks = 0
        rtt = max(0.0, now - ticket.sent_at)
        self._srtt = rtt if self._srtt is None else 0.875 * self._srtt + 0.125 * rtt
        held = self._window.hold
        self._tally(ticket, now, None, 0.0)
        if held or ticket.level * 2 < self._limit:
            return  # pushed back in this window, or the limit was not in use: no reason to grow
        # slow start: one unit per unit answered (doubling per round trip); then about one per round trip,
        # or, below a remembered ceiling, half the way back to it per round trip (BIC's binary search)
        per_rtt = 1.0
        if self._bad_level is not None and self._limit < self._bad_level - 1:
            per_rtt = max(1.0, (self._bad_level - 1 - self._limit) / 2)
        step = ticket.weight if self._slow_start else per_rtt * ticket.weight / max(self._limit, 1.0)
        cap = float(self.ceiling)
        if self._bad_level is not None:
            if now < self._probe_at:
                cap = min(cap, float(self._bad_level - 1))
            elif self._probe_started is None:
                self._probe_started = now
                self._probe_levels = {}
            elif ticket.level >= self._bad_level:
                self._probe_levels[ticket.level] = self._probe_levels.get(ticket.level, 0) + ticket.weight
                if sum(self._probe_levels.values()) >= max(self.min_window, 4 * self._bad_level):
                    # several windows' worth sent at or above the old push-back level and answered: the
                    # ceiling rose (one lucky answer proves little: requests finish at different times)
                    self._bad_level = None
                    self._probe_started = None
                    self._probe_interval = self.probe_min_s
                    self.measurements += 1  # a remembered wall is wrong now: forget it
        self._limit = max(self._limit, min(self._limit + step, cap))

    def _on_pushback(self, ticket: Ticket, now: float, retry_after: float | None, share: float) -> None:
        self._window.hold = True
        met = self._load(ticket)
        if ticket.epoch == self._epoch and now >= self._endemic_until and self._trial is None:
            if met <= self.floor < self._limit:
                self._pause_alone(now, retry_after)
            else:
                self._decrease(ticket, now, retry_after, met=met)
        else:
            # answered by a decrease already (whose trial window will judge what follows), or endemic
            self.stats.isolated += 1
        self._tally(ticket, now, (retry_after, met), share)

    def _tally(self, ticket: Ticket, now: float, pushback: tuple[float | None, int] | None, share: float) -> None:
        """Count an answer into the window; judge the window when it is complete.

        ``pushback`` is a push-back's Retry-After and the load it met (``None`` for an answer).
        """
        window = self._window
        window.answers += ticket.weight
        window.delivered += ticket.weight * (1.0 - share)
        if pushback is not None:
            window.pushed_back += ticket.weight * share
            lowest = window.lowest
            if lowest is None or (ticket.epoch, -ticket.level) > (lowest.epoch, -lowest.level):
                window.lowest = ticket  # the newest window's push-back sent at the lowest level
                window.lowest_load = pushback[1]
            if pushback[0] is not None:
                window.retry_after = max(window.retry_after or 0.0, pushback[0])
        if window.answers < max(self.limit, self.min_window):
            return
        rate = window.delivered / max(now - window.started, 1e-6)
        share = window.pushed_back / window.answers
        self._last_rate = rate
        if self._trial is not None and window.started >= self._trial.judge_after:
            self._judge_trial(rate, share, now, window)
        elif now < self._endemic_until and window.lowest is not None:
            self._endemic_share += 0.25 * (share - self._endemic_share)
            noise = 3.0 * math.sqrt(max(self._endemic_share * (1 - self._endemic_share), 0.01) / window.answers)
            if self._endemic_share > self.endemic_max_share:
                self._endemic_until = now  # more than the verdict waves through: not (only) the noise now
            elif share >= self._endemic_share + noise and window.lowest.epoch == self._epoch:
                # ours on top of the noise
                self._decrease(window.lowest, now, window.retry_after, met=window.lowest_load, trial=False)
        self._window = _Window(now)

    def _judge_trial(self, rate: float, share: float, now: float, window: _Window) -> None:
        """After a decrease: did it cost delivery (endemic push-back) or nothing (we were over a limit)?

        Still pushed back and not endemic: over the limit still, so the next decrease follows now.
        """
        trial = self._trial
        assert trial is not None
        self._trial = None
        ratio = rate / trial.rate_before if trial.rate_before > 0 else 1.0
        # Endemic push-back costs what the decrease took (ratio near ``backoff``); a limit we were
        # over costs nothing (near 1); a service whose capacity fell costs far more (near 0).
        lost = ratio < (1.0 + self.backoff) / 2
        # (more than ``endemic_max_share`` pushed back, before or after, is never waved through as
        # somebody else's)
        modest = max(share, trial.share_before) <= self.endemic_max_share
        if lost and share > 0 and modest and ratio >= self.backoff**2:
            self._limit = max(self._limit, trial.limit_before)
            self._bad_level = None
            self.measurements += 1  # the wall was somebody else's push-back: not ours to remember
            self._endemic_share = share
            self._endemic_until = now + self._endemic_hold
            self._endemic_hold = min(self.endemic_max_s, self._endemic_hold * 2.0)
            self.stats.undone += 1
            return
        if not lost:
            self._endemic_hold = self.endemic_min_s
        if window.lowest is not None and window.lowest.epoch == self._epoch:
            # pushed back since the decrease (an answer to a request sent before it says nothing new)
            self._decrease(window.lowest, now, window.retry_after, met=window.lowest_load)

    def _decrease(self, ticket: Ticket, now: float, retry_after: float | None, *, met: int, trial: bool = True) -> None:
        """This client is over a limit: decrease once for the window, remember where, pause everybody.

        ``met`` is the load ``ticket`` was pushed back for (answered now, or earlier for a judged
        window's push-back): it, not what is in flight now, says whether the push-back was at the wall.
        Unless ``trial`` is False, the decrease is on probation until a window after the pause shows
        what it cost (``_judge_trial``); meanwhile further push-backs only wait their own turn.
        """
        self._pause_locked(now, self._pause_seconds(retry_after))
        load = self._load(ticket)
        known_edge = self._bad_level is not None and met >= self._bad_level
        if trial:
            before = self._last_rate
            if before is None and self._window.delivered and now > self._window.started:
                before = self._window.delivered / (now - self._window.started)
            window = self._window
            share_now = window.pushed_back / window.answers if window.answers else 1.0
            self._trial = _Trial(before or 0.0, share_now, self._limit, self._paused_until)
        # a refused probe confirms the wall it probed; only a push-back below it is measured anew
        in_flight = float(self._in_flight + self._releasing)
        recheck, self._census_untested = self._census_untested, False
        self._census = (
            None if known_edge else _Census(self._epoch, in_flight, slow_start=self._slow_start, recheck=recheck)
        )
        self._epoch += 1
        carried = min(self._probe_carried(), met - 1) if self._probe_started is not None else 0
        if self._probe_started is not None:
            self.stats.probes_failed += 1
            self._probe_interval = min(self.probe_max_s, self._probe_interval * 2.0)
        self._probe_started = None
        if known_edge and carried >= (self._bad_level or 0):
            # a probe refused only above levels it was answered at: the wall is where it carried, not
            # where it was remembered (a census that read partly refused $batches low, a cap that rose)
            self._bad_level = carried + 1
            self._wall_measured = True
            self.measurements += 1
            self._limit = max(float(self.floor), min(self._limit, float(carried)))
        elif known_edge:
            # a probe at (or just past) the remembered ceiling: it still holds, so go back just below
            # it; the pause drains the overload, and a multiplicative cut would only lose throughput
            self._limit = max(float(self.floor), min(self._limit, float(self._bad_level or 1) - 1.0))
            if self._wall_measured:
                self.measurements += 1  # the wall is confirmed as of now
        else:
            # where the limit is: the load that was pushed back. (Not the level the request was sent
            # at: a $batch runs its items in rounds, so requests sent after it share the service with
            # its later items, and a batch sent at a low level is refused for the load that followed.)
            self._bad_level = max(self.floor + 1, min(load, int(self._limit) + 1))
            self._wall_measured = False
            self.measurements += 1  # a wall kept from before is wrong now, until the census places a new one
            self._limit = max(float(self.floor), min(self._limit, float(load)) * self.backoff)
        # a refused probe costs every thread a pause: probing no sooner than ``probe_pauses`` of
        # them later keeps that cost near 1/probe_pauses of the run (3 %) whatever Retry-After says
        pause = self._paused_until - now
        self._probe_at = now + max(self._probe_interval, self.probe_rtts * self._rtt(), self.probe_pauses * pause)
        self._slow_start = False
        self.stats.decreases += 1

    def _pause_alone(self, now: float, retry_after: float | None) -> None:
        """A push-back met alone (the least load this client can send) while the limit allows more.

        Why no cut: no smaller load exists to answer it, so it says nothing about where this client's
        wall is. It is what push-back that is not about this client's load looks like when it meets
        the first request of a run (the listing's first page, before any other request: a tenant
        whose budget another app is spending). Cut there, slow start's limit of 32 went to the floor
        in one step, with a wall at 2, and the trial that tells endemic push-back from a wall had no
        delivery rate from before to compare with, so it was never undone: the run sent one request
        at a time. The Retry-After still stops every thread, once for what was sent so far (a new
        window); slow start and the limit stay, and the first wave that meets a wall measures it.
        """
        self._pause_locked(now, self._pause_seconds(retry_after))
        self._epoch += 1
        self.stats.isolated += 1

    def _pause_seconds(self, retry_after: float | None) -> float:
        """How long a push-back stops every thread: its Retry-After, or an exponential backoff without one."""
        self._consecutive_pushbacks += 1
        if retry_after is None:
            seconds = self.pause_initial_s * 2.0 ** min(self._consecutive_pushbacks - 1, 8)
            return seconds * random.uniform(0.5, 1.0)
        # A Retry-After shorter than a round trip (a rate limit's "the next token in 3 ms") says when
        # *one* request may go, not every thread's: paused for less, the client re-sent its whole
        # limit into the same empty bucket each few milliseconds, a third of its requests refused
        return max(retry_after, self._rtt())

    def _load(self, ticket: Ticket) -> int:
        """The load ``ticket`` (being answered now) was pushed back for: what was in flight with it.

        (Answers come back in any order, so that is more than the level it was sent at, or less.)
        """
        return max(ticket.level, self._in_flight + ticket.weight)

    def _probe_carried(self) -> int:
        """The highest level the probe was answered at for a round trip's worth (that many units sent at
        it or above), 0 for none: one lucky answer proves little (a ``$batch`` in its last round runs
        fewer items than it weighs, so a request sent on top of it looks a unit over the wall)."""
        answered = 0
        for level in sorted(self._probe_levels, reverse=True):
            answered += self._probe_levels[level]
            if answered >= level:
                return level
        return 0

    def _count_census(self, ticket: Ticket, signal: Signal, share: float, now: float, items: int | None) -> None:
        """Count an answer to a request sent before the last decrease; when all are in, place the wall.

        The units the service accepted out of what was in flight when it pushed back are what it
        carries (see the module docstring): the remembered ceiling goes just above them. A decrease
        since undone as endemic keeps its own verdict.
        """
        census = self._census
        if census is None or ticket.epoch > census.epoch:
            return
        if not census.count(ticket.weight, signal, share, items):
            return
        self._census = None
        accepted = census.carried()
        if census.epoch != self._epoch - 1 or now < self._endemic_until or accepted < 1.0:
            return
        # once a rate, a rate for this service: a later census taken while the bucket still held a few
        # tokens reads like a cap's, and twenty-item batches would then cascade at the next dry spell
        # (traced at rate-150 with 20 ms round trips: 553 items refused in one second)
        self._rate_bound = self._rate_bound or (census.refused > 0 and census.drained())
        carried = max(self.floor, min(int(accepted), self.ceiling))
        if census.refused > 0 and (census.slow_start or (census.recheck and carried > int(self._limit))):
            # slow start's overshoot (up to twice the wall): the cut was a guess, the census is a
            # measurement, so the limit restarts there, higher or lower (an overstated census meets
            # the wall at the next push-back, which regrowth from the cut would meet too, later).
            # The cut's trial is void: it would hold that push-back's decrease for a window in which
            # a limit over the wall has every $batch's items refused one after another
            self._limit = float(carried)
            self._trial = None
            # a census taken while $batches were staggered can read a few units over the wall; the
            # first push-back at that level measures it again in the same way (once: a recheck's own
            # census is tested like any later wall)
            self._census_untested = census.slow_start
        elif carried < int(self._limit):
            # the service carried less than the cut leaves: against a rate whose burst hid it for a
            # while (a token bucket), the load pushed back was far above the rate, and a wall left there
            # is met again within seconds, so the wall comes down to the cut. The limit restarts from
            # the census, but no lower than one more cut: a $batch's refused items cascade (its next
            # item runs as soon as one is refused), so the count can read low, and regrowth's binary
            # search then climbs back towards the cut within a few round trips.
            cut = int(self._limit)
            self._limit = max(float(carried), self._limit * self.backoff, float(self.floor))
            carried = cut
        # (otherwise the cut stays, and regrowth stops below the wall)
        self._bad_level = max(self.floor + 1, carried + 1)
        self._wall_measured = True
        self.measurements += 1

    def _pause_locked(self, now: float, seconds: float) -> None:
        seconds = min(max(0.0, seconds), self.pause_max_s)
        until = now + seconds
        if until > self._paused_until:
            self.stats.pauses += 1
            self.stats.pause_seconds += until - max(now, self._paused_until)
            self._paused_until = until
            self._cond.notify_all()

    def _rtt(self) -> float:
        return self._srtt if self._srtt is not None else 1.0

    def _publish(self) -> None:
        self.stats.limit = self.limit
        self.stats.peak_limit = max(self.stats.peak_limit, self.limit)
        for listener in self._listeners:
            listener(self)


def _carried(weight: int, items: int | None, share: float) -> float:
    """The units a partly refused request held at the service: its weight, or the items it ran if fewer.

    Why not its accepted share of its weight: a ``$batch`` runs its items a few at a time and runs the
    next one as soon as one is refused, so against a full service most of its items are refused in a
    row while the few that got in hold their places until they finish. Twenty items with five accepted
    held four places (a share would say one). Counted by share, a census against a cap of 7 read 4,
    and the import ran at 4 until a probe was due. A request that ran fewer items than it weighs held
    only those.
    """
    ran = (items if items is not None else weight) * (1.0 - share)
    return min(float(weight), ran)
