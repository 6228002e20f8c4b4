"""Backoff timing, Retry-After, and the circuit breaker's states, with the clock in hand."""

from __future__ import annotations

import random

import pytest

from streamcascade.models.llm.resilience import (
    CircuitBreaker,
    backoff_delay,
    parse_retry_after,
)


def test_backoff_grows_exponentially_within_the_cap() -> None:
    rng = random.Random(1)
    for attempt in range(8):
        ceiling = min(2.0, 0.1 * 2**attempt)
        draws = [backoff_delay(attempt, base=0.1, cap=2.0, rng=rng) for _ in range(200)]
        assert min(draws) >= 0.0 and max(draws) <= ceiling
        assert max(draws) > 0.8 * ceiling  # full jitter reaches up to the ceiling


def test_backoff_is_jittered() -> None:
    rng = random.Random(2)
    assert len({backoff_delay(3, base=0.1, cap=5.0, rng=rng) for _ in range(20)}) == 20


def test_retry_after_is_a_floor() -> None:
    rng = random.Random(3)
    assert all(
        backoff_delay(0, base=0.1, cap=0.2, retry_after=1.5, rng=rng) >= 1.5 for _ in range(50)
    )


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("0", 0.0),
        ("7", 7.0),
        (" 2.5 ", 2.5),
        ("-3", 0.0),
        ("later", None),
        ("", None),
        ("nan", None),
    ],
)
def test_retry_after_values(value: str, seconds: float | None) -> None:
    assert parse_retry_after(value) == seconds


def test_retry_after_as_an_http_date() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now=1445412480.0) == 30.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412500.0) == 0.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_breaker_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=10.0, clock=Clock())
    for _ in range(2):
        breaker.record_failure()
    breaker.record_success()  # a success in between resets the count
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state == "closed" and breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open" and not breaker.allow()


def test_failures_of_calls_out_together_count_once() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=2, reset_timeout=10.0, clock=clock)
    sent = clock.now
    clock.now += 1.0
    for _ in range(5):  # five calls sent together, failing in one blip
        breaker.record_failure(sent_at=sent)
    assert breaker.state == "closed"
    breaker.record_failure(sent_at=clock.now)  # sent at the moment the blip was counted
    assert breaker.state == "closed"
    clock.now += 0.5
    breaker.record_failure(sent_at=clock.now - 0.1)  # a retry sent after it: a second failure
    assert breaker.state == "open"


def test_half_open_lets_limited_trials_through_and_decides_on_their_outcome() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=5.0, half_open_max=2, clock=clock)
    breaker.record_failure()
    clock.now += 4.9
    assert not breaker.allow() and breaker.retry_in() == pytest.approx(0.1)
    clock.now += 0.1
    assert breaker.allow() and breaker.state == "half_open"
    assert breaker.allow() and not breaker.allow()  # two trials at most
    breaker.record_failure()
    assert breaker.state == "open" and breaker.times_opened == 2
    clock.now += 5.0
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state == "closed" and breaker.allow() and breaker.allow()


def test_a_call_sent_before_the_breaker_opened_does_not_reopen_it() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=1.0, clock=clock)
    sent = clock.now
    clock.now += 0.5
    breaker.record_failure(sent_at=clock.now)
    clock.now += 1.0
    assert breaker.allow() and breaker.state == "half_open"  # the trial is out
    breaker.record_failure(sent_at=sent)  # a slow call from before: says nothing new
    assert breaker.state == "half_open" and not breaker.allow()  # one trial at a time
    breaker.record_failure(sent_at=clock.now)  # the trial fails
    assert breaker.state == "open" and breaker.times_opened == 2


def test_a_released_trial_slot_can_be_used_again() -> None:
    clock = Clock()
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=1.0, clock=clock)
    breaker.record_failure()
    clock.now += 1.0
    assert breaker.allow() and not breaker.allow()
    breaker.release()
    assert breaker.allow()


@pytest.mark.parametrize(
    "options", [{"failure_threshold": 0}, {"reset_timeout": -1.0}, {"half_open_max": 0}]
)
def test_bad_breaker_options_are_refused(options: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(**options)  # type: ignore[arg-type]
