"""The circuit breaker through every transition, on a fake clock."""

import pytest

from sidecar.core.breaker import (
    BreakerConfig,
    BreakerState,
    CallResult,
    CircuitBreaker,
    Permit,
)
from sidecar.core.clock import FakeClock
from sidecar.domain.ids import ClusterName

OK = CallResult(failed=False, slow=False, detail="200")
FAIL = CallResult(failed=True, slow=False, detail="503")
SLOW = CallResult(failed=False, slow=True, detail="200 after 12s")

CONFIG = BreakerConfig(
    window_kind="count",
    window_size=10,
    minimum_calls=4,
    failure_rate_threshold=0.5,
    slow_call_rate_threshold=0.75,
    slow_call_s=10.0,
    open_wait_s=5.0,
    max_open_wait_s=30.0,
    wait_multiplier=2.0,
    half_open_trials=2,
)


def breaker(config: BreakerConfig = CONFIG) -> CircuitBreaker:
    return CircuitBreaker(ClusterName("openai-premium"), config)


def call(b: CircuitBreaker, clock: FakeClock, result: CallResult) -> None:
    permit = b.admit(clock.now()).permit
    assert permit is not None, f"breaker refused a call while {b.state.value}"
    b.record(permit, result, clock.now())


def trip(b: CircuitBreaker, clock: FakeClock) -> None:
    for _ in range(CONFIG.minimum_calls):
        if b.state is BreakerState.OPEN:
            return
        call(b, clock, FAIL)
    assert b.state is BreakerState.OPEN


def test_stays_closed_until_minimum_calls_even_if_all_fail() -> None:
    clock, b = FakeClock(), breaker()
    for _ in range(3):
        call(b, clock, FAIL)
    assert b.state is BreakerState.CLOSED, "3 calls are fewer than the minimum of 4"
    call(b, clock, FAIL)
    assert b.state is BreakerState.OPEN
    assert b.last_reason == "failure rate 100% >= 50% over 4 calls"


def test_a_failure_rate_below_threshold_keeps_it_closed() -> None:
    clock, b = FakeClock(), breaker()
    for result in [OK, OK, FAIL, OK, OK, FAIL, OK, FAIL]:  # at most 37.5% at any point
        call(b, clock, result)
    assert b.state is BreakerState.CLOSED


def test_count_window_forgets_calls_beyond_its_size() -> None:
    clock, b = FakeClock(), breaker()
    for result in [OK] * 4 + [FAIL] * 3 + [OK] * 7:  # the 3 failures stay in the last 10
        call(b, clock, result)
    assert b.rates(clock.now()) == (10, 0.3, 0.0)
    for _ in range(3):
        call(b, clock, OK)
    assert b.rates(clock.now()) == (10, 0.0, 0.0), "the failures slid out of the window"


def test_slow_calls_trip_on_their_own_threshold() -> None:
    clock, b = FakeClock(), breaker()
    for result in [SLOW, SLOW, OK, SLOW]:  # 75% slow, no failures
        call(b, clock, result)
    assert b.state is BreakerState.OPEN
    assert b.last_reason.startswith("slow-call rate 75% >= 75% over 4 calls")


def test_open_refuses_then_half_opens_after_the_wait() -> None:
    clock, b = FakeClock(), breaker()
    trip(b, clock)
    clock.advance(4.9)
    refused = b.admit(clock.now())
    assert refused.permit is None, "advance 4.9 s: still open"
    assert refused.retry_after_s == pytest.approx(0.1)
    clock.advance(0.1)
    admitted = b.admit(clock.now())
    assert admitted.permit is not None, "5 s: a trial goes through"
    assert admitted.permit.trial
    assert [(t.old, t.new) for t in admitted.transitions] == [
        (BreakerState.OPEN, BreakerState.HALF_OPEN)
    ]
    assert admitted.transitions[0].reason == "open wait of 5s elapsed"


def test_half_open_admits_only_the_trial_calls() -> None:
    clock, b = FakeClock(), breaker()
    trip(b, clock)
    clock.advance(5)
    first, second = b.admit(clock.now()), b.admit(clock.now())
    assert first.permit is not None
    assert second.permit is not None
    assert b.admit(clock.now()).permit is None, "a third call waits for the two trials"


def test_successful_trials_close_it_and_reset_the_wait() -> None:
    clock, b = FakeClock(), breaker()
    trip(b, clock)
    clock.advance(5)
    permits = [b.admit(clock.now()).permit for _ in range(2)]
    transitions = [b.record(p, OK, clock.now()) for p in permits if p is not None]
    assert b.state is BreakerState.CLOSED
    assert transitions[-1][0].reason == "2 of 2 trial calls succeeded"
    assert b.consecutive_trips == 0
    assert b.current_wait_s() == 5.0


def test_a_failed_trial_reopens_with_a_longer_wait_capped() -> None:
    clock, b = FakeClock(), breaker()
    trip(b, clock)
    waits = []
    for _ in range(4):
        waits.append(b.open_until - clock.now())
        clock.advance(b.open_until - clock.now())
        permit = b.admit(clock.now()).permit
        assert permit is not None
        (reopened,) = b.record(permit, FAIL, clock.now())
        assert reopened.new is BreakerState.OPEN
        assert reopened.reason == "1 of 2 trial calls failed or were slow"
    waits.append(b.open_until - clock.now())
    assert waits == [5.0, 10.0, 20.0, 30.0, 30.0], "doubling each trip, capped at 30 s"


def test_a_trial_cancelled_without_outcome_frees_its_place() -> None:
    clock, b = FakeClock(), breaker()
    trip(b, clock)
    clock.advance(5)
    first = b.admit(clock.now()).permit
    second = b.admit(clock.now()).permit
    assert first is not None
    assert second is not None
    b.abandon(first)
    replacement = b.admit(clock.now()).permit
    assert replacement is not None, "the abandoned trial's place goes to another call"


def test_a_late_outcome_from_before_the_trip_is_ignored() -> None:
    clock, b = FakeClock(), breaker()
    slow_request = b.admit(clock.now()).permit  # admitted while closed
    assert slow_request is not None
    trip(b, clock)
    clock.advance(5)
    trials = [b.admit(clock.now()).permit for _ in range(2)]
    for trial in trials:
        assert trial is not None
        b.record(trial, OK, clock.now())
    assert b.state is BreakerState.CLOSED
    # The request admitted two generations ago finally fails: it must not count now.
    assert b.record(slow_request, FAIL, clock.now()) == ()
    assert b.stale_outcomes == 1
    assert b.rates(clock.now()) == (0, 0.0, 0.0)


def test_a_late_success_cannot_close_an_open_breaker() -> None:
    clock, b = FakeClock(), breaker()
    early = b.admit(clock.now()).permit
    assert early is not None
    trip(b, clock)
    assert b.record(early, OK, clock.now()) == ()
    assert b.state is BreakerState.OPEN


def test_time_window_counts_only_recent_seconds() -> None:
    clock = FakeClock()
    b = breaker(BreakerConfig(window_kind="time", window_size=10, minimum_calls=4))
    for _ in range(3):
        call(b, clock, FAIL)
    clock.advance(10)
    assert b.rates(clock.now()) == (0, 0.0, 0.0), "advance 10 s: those failures are gone"
    for result in [OK, OK, FAIL, OK]:
        call(b, clock, result)
    assert b.state is BreakerState.CLOSED, "25% failures in the last 10 s"


def test_forged_permits_from_another_generation_change_nothing() -> None:
    clock, b = FakeClock(), breaker()
    forged = Permit(ClusterName("openai-premium"), generation=7, trial=True, admitted_at=0.0)
    assert b.record(forged, FAIL, clock.now()) == ()
    b.abandon(forged)
    assert b.state is BreakerState.CLOSED


def test_an_operator_can_hold_a_breaker_open_or_closed_and_let_it_go() -> None:
    config = BreakerConfig(window_kind="count", window_size=4, minimum_calls=2)
    breaker = CircuitBreaker(ClusterName("a"), config)
    (opened,) = breaker.force(BreakerState.OPEN, "held open by oncall: incident", now=1.0)
    assert (opened.old, opened.new) == (BreakerState.CLOSED, BreakerState.OPEN)
    assert not breaker.would_admit(10_000.0), "held open: no wait ends it"
    assert breaker.admit(10_000.0).permit is None
    (closed,) = breaker.force(BreakerState.CLOSED, "held closed by oncall: test", now=2.0)
    assert closed.new is BreakerState.CLOSED
    for _ in range(4):
        permit = breaker.admit(3.0).permit
        assert permit is not None
        assert breaker.record(permit, CallResult(failed=True, slow=False, detail="x"), 3.0) == ()
    assert breaker.state is BreakerState.CLOSED, "held closed: failures never trip it"
    assert breaker.force(None, "released by oncall", now=4.0) == (), "already closed"
    assert breaker.forced is None
    permit = breaker.admit(5.0).permit
    assert permit is not None
    breaker.record(permit, CallResult(failed=True, slow=False, detail="x"), 5.0)
    permit = breaker.admit(5.0).permit
    assert permit is not None
    (tripped,) = breaker.record(permit, CallResult(failed=True, slow=False, detail="x"), 5.0)
    assert tripped.new is BreakerState.OPEN, "judging again after the release"
