"""The one "refused everywhere" rule every agent uses (``connector.net.RefusedEverywhere``), as pure logic:
the streak of distinct objects refused since the last success, per reason, its threshold (or every object
due, when fewer), handed back once for the caller's confirmation, and shared by threads.

The agents' own tests show the confirmations against real parts: EWS asking a mailbox read before again
(tests/agents/exchange_server), AD reading the account's rights in the refused people's OU
(tests/agents/active_directory/test_ad_export_refusals.py)."""

from __future__ import annotations

import threading

import pytest

from connector.net import RefusedEverywhere


def _refuse_all(rule: RefusedEverywhere, objects: list[str], reason: str = "denied") -> list[list[str] | None]:
    return [rule.refused(who, reason) for who in objects]


def test_a_streak_of_distinct_objects_is_handed_back_once_at_the_threshold_and_starts_again() -> None:
    rule = RefusedEverywhere(3)
    assert _refuse_all(rule, ["a", "b"]) == [None, None]
    assert rule.refused("c", "denied") == ["a", "b", "c"]  # in the order refused
    # handed back once: the caller confirms; an answer that clears the account leaves the count at zero
    assert _refuse_all(rule, ["d", "e"]) == [None, None]
    assert rule.refused("f", "denied") == ["d", "e", "f"]


def test_the_same_object_refused_again_is_no_new_evidence() -> None:
    rule = RefusedEverywhere(2)
    assert _refuse_all(rule, ["a", "a", "a"]) == [None, None, None]
    assert rule.refused("b", "denied") == ["a", "b"]


def test_a_success_ends_every_streak() -> None:
    """Refusals among successes are the objects' own: a success sets every reason's count back to zero."""
    rule = RefusedEverywhere(3)
    _refuse_all(rule, ["a", "b"], "50")
    _refuse_all(rule, ["x", "y"], "53")
    rule.worked("ok")
    assert _refuse_all(rule, ["c", "d"], "50") == [None, None]
    assert _refuse_all(rule, ["z", "w"], "53") == [None, None]
    assert rule.refused("e", "50") == ["c", "d", "e"]  # after the success: a new streak of three


def test_the_rule_catches_a_refusal_that_starts_after_successes() -> None:
    """Not "the first objects of the step" only: rights withdrawn mid-step are judged as well."""
    rule = RefusedEverywhere(2)
    for who in ("ok1", "ok2", "ok3"):
        rule.worked(who)
    assert rule.refused("a", "50") is None
    assert rule.refused("b", "50") == ["a", "b"]


def test_each_reason_counts_apart() -> None:
    rule = RefusedEverywhere(2)
    assert rule.refused("a", "50") is None
    assert rule.refused("b", "53") is None  # another reason: its own streak
    assert rule.refused("c", "53") == ["b", "c"]
    assert rule.refused("d", "50") == ["a", "d"]


@pytest.mark.parametrize(("due", "threshold"), [(1, 1), (2, 2), (9, 9), (10, 10), (500, 10), (0, 10)])
def test_when_fewer_objects_are_due_every_one_of_them_is_the_streak(due: int, threshold: int) -> None:
    rule = RefusedEverywhere(10)
    rule.plan(due)
    assert rule.threshold == threshold
    objects = [f"m{i}" for i in range(threshold)]
    assert _refuse_all(rule, objects[:-1]) == [None] * (threshold - 1)
    assert rule.refused(objects[-1], "denied") == objects


def test_what_a_confirmation_asks_is_the_latest_success_else_one_of_an_earlier_step() -> None:
    rule = RefusedEverywhere(3)
    assert rule.worked_last is None  # nothing ever worked: the caller judges without asking
    rule.plan(50, worked_before="earlier@contoso.example")
    assert rule.worked_last == "earlier@contoso.example"
    rule.worked("a@contoso.example")
    rule.worked("b@contoso.example")
    assert rule.worked_last == "b@contoso.example"


class _Caller:
    """An agent's side of the rule: each streak handed back is confirmed once (``answers``: the account
    refused when asked again?), and a refused confirmation stops the step."""

    def __init__(self, rule: RefusedEverywhere, answers: list[bool]) -> None:
        self.rule, self.answers = rule, answers
        self.asked: list[tuple[str | None, list[str]]] = []

    def refused(self, who: str) -> bool:
        streak = self.rule.refused(who, "denied")
        if streak is None:
            return False
        self.asked.append((self.rule.worked_last, streak))
        return self.answers.pop(0)


def test_a_confirmation_answered_leaves_the_refusals_each_objects_own_and_the_count_starts_again() -> None:
    rule = RefusedEverywhere(2)
    rule.worked("read-before")
    caller = _Caller(rule, answers=[False, True])
    assert [caller.refused(who) for who in ("a", "b", "c")] == [False, False, False]
    assert caller.asked == [("read-before", ["a", "b"])]  # asked once, about that streak
    assert caller.refused("d") is True  # the next streak of two: refused too when asked again, the account
    assert caller.asked[-1] == ("read-before", ["c", "d"])


def test_a_confirmation_refused_at_once_stops_on_the_first_streak() -> None:
    rule = RefusedEverywhere(3)
    rule.worked("read-before")
    caller = _Caller(rule, answers=[True])
    assert [caller.refused(who) for who in ("a", "b", "c")] == [False, False, True]
    assert caller.asked == [("read-before", ["a", "b", "c"])]


def test_a_threshold_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RefusedEverywhere(0)


def test_threads_refusing_at_once_hand_each_streak_to_one_of_them_with_no_object_twice() -> None:
    """Eight threads refuse 400 distinct objects at once (a barrier starts them together): every object is
    in exactly one streak of ten, each streak handed back to one thread only."""
    rule = RefusedEverywhere(10)
    threads, per_thread = 8, 50
    start = threading.Barrier(threads)
    streaks: list[list[str]] = []
    lock = threading.Lock()

    def refuse(t: int) -> None:
        start.wait()
        for i in range(per_thread):
            streak = rule.refused(f"t{t}-{i}", "denied")
            if streak is not None:
                with lock:
                    streaks.append(streak)

    workers = [threading.Thread(target=refuse, args=(t,)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(streaks) == threads * per_thread // 10
    assert all(len(streak) == 10 for streak in streaks)
    handed = [who for streak in streaks for who in streak]
    assert sorted(handed) == sorted(f"t{t}-{i}" for t in range(threads) for i in range(per_thread))


def test_a_success_from_another_thread_ends_the_streak_under_way() -> None:
    rule = RefusedEverywhere(3)
    _refuse_all(rule, ["a", "b"])
    other = threading.Thread(target=rule.worked, args=("read",))
    other.start()
    other.join()
    assert rule.refused("c", "denied") is None  # "a" and "b" no longer count
    assert rule.worked_last == "read"
