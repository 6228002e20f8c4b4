"""Retry timing and a circuit breaker for calls to a remote LLM server.

Kept free of I/O so that the rules can be tested with a clock in hand: :func:`backoff_delay` says
how long to wait before the next attempt, :func:`parse_retry_after` reads a server's
``Retry-After``, :class:`CircuitBreaker` decides whether a call may go out at all, and
:class:`LatencyWindow` knows how long the server's answers take, which says when to hedge, and
:class:`RetryBudget` keeps retries and hedges to a share of the requests.
"""

from __future__ import annotations

import math
import random
import time
from collections import deque
from collections.abc import Callable
from email.utils import parsedate_to_datetime

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


def backoff_delay(
    attempt: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first retry).

    Exponential backoff with "full jitter" (a uniform draw in ``[0, base * 2**attempt]``, capped at
    ``cap``), so that many clients that failed together do not retry together. A server's
    ``Retry-After`` is a floor: the client never comes back sooner than it was asked to.

    >>> backoff_delay(3, base=0.1, cap=0.5, rng=random.Random(0)) <= 0.5
    True
    >>> backoff_delay(0, base=0.1, cap=0.5, retry_after=2.0, rng=random.Random(0)) >= 2.0
    True
    """
    draw = (rng or random).uniform(0.0, min(cap, base * (2.0**attempt)))
    return max(draw, retry_after) if retry_after is not None else draw


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (seconds or an HTTP date); ``None`` if unreadable.

    >>> parse_retry_after("3"), parse_retry_after("soon"), parse_retry_after(None)
    (3.0, None, None)
    >>> parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0)
    10.0
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if seconds == seconds else None  # NaN is unreadable


class CircuitBreaker:
    """Stops calls to a server that keeps failing, and probes it again after a while.

    Closed: calls go out; ``failure_threshold`` consecutive failures open the breaker. Open:
    calls are refused for ``reset_timeout`` seconds. Half-open: up to ``half_open_max`` trial
    calls go out; a success closes the breaker, a failure opens it again for ``reset_timeout``.

    Failures are consecutive in time, not in count: a call that was already out when a failure
    was counted (``sent_at`` at or before it) adds nothing, so that one blip hitting many
    concurrent calls at once counts once, and the breaker opens only after failures that follow
    each other (the retries, one backoff apart, of a server that stays down).

    Parameters
    ----------
    failure_threshold
        Consecutive failures that open the breaker.
    reset_timeout
        Seconds the breaker stays open before it lets a trial call through.
    half_open_max
        Trial calls allowed at once while half-open.
    clock
        A monotonic clock (seconds), replaceable to test the timing.

    >>> now = [0.0]
    >>> b = CircuitBreaker(failure_threshold=2, reset_timeout=5.0, clock=lambda: now[0])
    >>> b.record_failure(sent_at=0.0); b.record_failure(sent_at=0.0); b.state  # one blip
    'closed'
    >>> now[0] = 1.0; b.record_failure(sent_at=0.5); b.state  # sent after the counted failure
    'open'
    >>> b.allow()
    False
    >>> now[0] = 6.0; b.allow(), b.state
    (True, 'half_open')
    >>> b.record_success(); b.state
    'closed'
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        reset_timeout: float = 10.0,
        half_open_max: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failure_threshold < 1:
            raise ValueError(f"failure_threshold must be at least 1, got {failure_threshold}")
        if reset_timeout < 0:
            raise ValueError(f"reset_timeout must not be negative, got {reset_timeout}")
        if half_open_max < 1:
            raise ValueError(f"half_open_max must be at least 1, got {half_open_max}")
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.half_open_max = half_open_max
        self.clock = clock
        self._state = CLOSED
        self._failures = 0
        self._last_failure_at = float("-inf")  # clock time of the last counted failure
        self._opened_at = 0.0
        self._trials = 0
        #: How often the breaker has opened; a figure for logs and tests.
        self.times_opened = 0

    @property
    def state(self) -> str:
        return self._state

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a trial call through (0 when not open)."""
        if self._state != OPEN:
            return 0.0
        return max(0.0, self._opened_at + self.reset_timeout - self.clock())

    def allow(self) -> bool:
        """Whether a call may go out now; a ``True`` while half-open takes one trial slot."""
        if self._state == OPEN:
            if self.clock() - self._opened_at < self.reset_timeout:
                return False
            self._state = HALF_OPEN
            self._trials = 0
        if self._state == HALF_OPEN:
            if self._trials >= self.half_open_max:
                return False
            self._trials += 1
        return True

    def record_success(self) -> None:
        self._state = CLOSED
        self._failures = 0
        self._trials = 0

    def record_failure(self, sent_at: float | None = None) -> None:
        """A call failed; ``sent_at`` is the breaker's clock when it went out (None: just now)."""
        if sent_at is not None and sent_at <= self._last_failure_at:
            return  # out when the last failure was counted (or the breaker opened): same blip
        if self._state == HALF_OPEN:
            self._open()
            return
        self._last_failure_at = self.clock()
        self._failures += 1
        if self._state == CLOSED and self._failures >= self.failure_threshold:
            self._open()

    def release(self) -> None:
        """Give back a half-open trial slot whose call ended with neither verdict (cancelled)."""
        if self._state == HALF_OPEN and self._trials > 0:
            self._trials -= 1

    def _open(self) -> None:
        self._state = OPEN
        self._opened_at = self._last_failure_at = self.clock()
        self._failures = 0
        self._trials = 0
        self.times_opened += 1

    def __repr__(self) -> str:
        return (
            f"CircuitBreaker(failure_threshold={self.failure_threshold}, "
            f"reset_timeout={self.reset_timeout}, state={self._state!r})"
        )


class LatencyWindow:
    """The latencies of a server's recent answers, and their quantiles.

    Only answers are recorded: a request that failed fast says nothing about how long an answer
    takes, and one cut by a timeout or overtaken by its hedge has no latency to record. A quantile
    is known once ``min_samples`` answers are in; before that :meth:`quantile` is ``None``.

    >>> window = LatencyWindow(size=100, min_samples=10)
    >>> window.quantile(0.95) is None
    True
    >>> for ms in range(1, 101): window.add(ms / 1000)
    >>> window.quantile(0.95), window.quantile(0.5)
    (0.095, 0.05)
    """

    def __init__(self, size: int = 256, min_samples: int = 20) -> None:
        if size < 1 or not 1 <= min_samples <= size:
            raise ValueError(f"need 1 <= min_samples <= size, got {min_samples}, {size}")
        self.min_samples = min_samples
        self._samples: deque[float] = deque(maxlen=size)
        self._sorted: list[float] | None = None

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)
        self._sorted = None

    def quantile(self, q: float) -> float | None:
        """The ``q`` quantile (nearest rank) of the window, ``None`` while too few are in."""
        if len(self._samples) < self.min_samples:
            return None
        if self._sorted is None:
            self._sorted = sorted(self._samples)
        rank = max(1, math.ceil(q * len(self._sorted)))
        return self._sorted[rank - 1]


class RetryBudget:
    """Keeps retries and hedges to a share of the requests, so that a failing server is not sent
    several requests for every event it fails (a retry storm that keeps it down, and costs the
    client its own CPU time).

    Every first request of an event puts ``ratio`` of a token in; a retry or a hedge takes a whole
    one, and is not sent when none is left. The bucket also fills at ``per_second`` tokens a
    second, and holds at most ``reserve`` (it starts full), so that a quiet client can retry a few
    times in a row.

    >>> now = [0.0]
    >>> budget = RetryBudget(ratio=0.5, reserve=2.0, per_second=0.0, clock=lambda: now[0])
    >>> budget.withdraw(), budget.withdraw(), budget.withdraw()
    (True, True, False)
    >>> budget.deposit(); budget.deposit(); budget.withdraw()
    True
    """

    def __init__(
        self,
        ratio: float = 0.2,
        reserve: float = 10.0,
        per_second: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ratio < 0 or reserve < 0 or per_second < 0:
            raise ValueError(
                f"ratio, reserve and per_second must not be negative, got {ratio}, {reserve}, "
                f"{per_second}"
            )
        self.ratio = ratio
        self.reserve = reserve
        self.per_second = per_second
        self.clock = clock
        self._tokens = reserve
        self._filled_at = clock()
        #: Retries and hedges refused for want of a token.
        self.refused = 0

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens

    def deposit(self) -> None:
        """A first request went out."""
        self._refill()
        self._tokens = min(self.reserve, self._tokens + self.ratio)

    def withdraw(self) -> bool:
        """Whether a retry or hedge may go out now; a ``True`` spends a token."""
        self._refill()
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        self.refused += 1
        return False

    def _refill(self) -> None:
        now = self.clock()
        if self.per_second > 0:
            refill = (now - self._filled_at) * self.per_second
            self._tokens = min(self.reserve, self._tokens + refill)
        self._filled_at = now
