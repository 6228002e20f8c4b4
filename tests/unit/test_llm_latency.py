"""The latency window that says when a request is late enough to hedge, and the budget that
keeps retries and hedges to a share of the requests."""

from __future__ import annotations

import pytest

from streamcascade.models.llm.resilience import LatencyWindow, RetryBudget


def test_no_quantile_until_enough_answers() -> None:
    window = LatencyWindow(size=50, min_samples=5)
    for _ in range(4):
        window.add(0.1)
    assert window.quantile(0.95) is None
    window.add(0.1)
    assert window.quantile(0.95) == 0.1


def test_the_p95_ignores_the_slowest_twentieth() -> None:
    window = LatencyWindow(size=100, min_samples=20)
    for _ in range(95):
        window.add(0.01)
    for _ in range(5):
        window.add(2.5)
    assert window.quantile(0.95) == 0.01
    window.add(2.5)  # now six of the last hundred are slow
    assert window.quantile(0.95) == 2.5


def test_old_answers_leave_the_window() -> None:
    window = LatencyWindow(size=10, min_samples=1)
    for _ in range(10):
        window.add(3.0)
    for _ in range(10):
        window.add(0.2)
    assert window.quantile(0.99) == 0.2 and len(window) == 10


@pytest.mark.parametrize(("size", "min_samples"), [(0, 1), (10, 0), (10, 11)])
def test_bad_sizes_are_refused(size: int, min_samples: int) -> None:
    with pytest.raises(ValueError):
        LatencyWindow(size=size, min_samples=min_samples)


def test_the_budget_refills_with_requests_and_time() -> None:
    now = [0.0]
    budget = RetryBudget(ratio=0.25, reserve=3.0, per_second=0.5, clock=lambda: now[0])
    assert [budget.withdraw() for _ in range(4)] == [True, True, True, False]
    for _ in range(4):
        budget.deposit()  # four first requests buy one retry
    assert budget.withdraw() and not budget.withdraw()
    now[0] = 2.0  # two seconds at half a token a second: one more
    assert budget.withdraw() and not budget.withdraw()
    now[0] = 100.0
    assert budget.tokens == 3.0  # never more than the reserve
    assert budget.refused == 3


def test_a_negative_budget_is_refused() -> None:
    with pytest.raises(ValueError):
        RetryBudget(ratio=-0.1)
